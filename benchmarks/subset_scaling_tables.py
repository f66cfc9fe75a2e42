"""The Markdown of benchmarks/subset_scaling.py: its tables (seconds per step, peak memory, log-log
slope against D), the estimates for cells not run, the summary of what the numbers show and the
noise between repeated measurements. Measures nothing; `python -m benchmarks.subset_scaling
--from-json` rewrites the Markdown from the JSON with it."""
from __future__ import annotations

import math
import os
import platform

PHASES = ("ae", "denoiser", "sample")
PHASE_TITLES = {"ae": "Autoencoder training", "denoiser": "Latent denoiser training", "sample": "Sampling"}
DENOISER_WIDTHS = [16, 32, 64, 128]  # the pipeline's CPU default
POPULATION_RANK = 16
DDPM_STEPS = 1000


def _key(phase: str) -> str:
    return "sample_s" if phase == "sample" else "step_s"


def estimate_not_run(records: list[dict]) -> None:
    """Fill `estimate` of every not-run record: a straight line in D through the preset's two
    largest measured D of the phase (time and peak memory); where the line falls with D, the
    largest measured value instead (listed in `floored`: a lower bound, not a line)."""
    for r in records:
        if r["status"] != "not run":
            continue
        ok = sorted((m for m in records if m["status"] == "ok" and m["phase"] == r["phase"]
                     and m["preset"] == r["preset"]), key=lambda m: m["d"])
        if len(ok) < 2:
            continue
        a, b = ok[-2], ok[-1]
        est = {"from_d": [a["d"], b["d"]], "floored": []}
        for key in (_key(r["phase"]), "peak_mib"):
            line = a[key] + (b[key] - a[key]) * (r["d"] - a["d"]) / (b["d"] - a["d"])
            if line < b[key]:
                est["floored"].append(key)
            est[key] = max(line, b[key])
        r["estimate"] = est


def slope(records: list[dict], r: dict) -> float | None:
    """log-log slope of time against D from the preset's previous measured D (of this phase)."""
    if r["status"] != "ok":
        return None
    key = _key(r["phase"])
    prev = [m for m in records if m["status"] == "ok" and m["phase"] == r["phase"] and m["preset"] == r["preset"]
            and m["d"] < r["d"]]
    if not prev:
        return None
    p = max(prev, key=lambda m: m["d"])
    return math.log(r[key] / p[key]) / math.log(r["d"] / p["d"])


# --- the report ---------------------------------------------------------------------------------

def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"


def _find(records, phase, preset, d):
    return next((r for r in records if r["phase"] == phase and r["preset"] == preset and r["d"] == d), None)


def _cells(records, r, cols) -> list[str]:
    """Markdown cells of record r for the columns `cols` (time, slope, extra..., memory)."""
    if r is None:
        return ["-"] * len(cols)
    if r["status"] == "not run":
        est = r.get("estimate")
        out = []
        for c in cols:
            if est and c in est:
                out.append(f"not run (est. {'>= ' if c in est['floored'] else ''}{_num(est[c])})")
            else:
                out.append("not run")
        return out
    if r["status"] != "ok":
        return ["failed"] * len(cols)
    out = []
    for c in cols:
        if c == "slope":
            s = slope(records, r)
            out.append("-" if s is None else f"{s:.2f}")
        elif c == "latent_shape":
            out.append("x".join(str(v) for v in r[c]))
        elif c == "loop":
            out.append(f"{_num(r['loop_s'])} ({r['loop_steps']})")
        elif c == "grain":
            out.append(f"{r['grain']} x {r['denoiser_calls_per_step']}")
        elif r.get(c) is None:
            out.append("-")
        else:
            out.append(_num(r[c]))
    return out


TABLES = {
    "ae": [("step_s", "s/step"), ("slope", "slope"), ("init_s", "init (SVD) s"), ("peak_mib", "peak MiB")],
    "denoiser": [("latent_shape", "latent"), ("step_s", "s/step"), ("slope", "slope"), ("peak_mib", "peak MiB")],
    "sample": [("sample_s", "s, 1000 steps"), ("slope", "slope"), ("loop", "loop s (steps measured)"),
               ("decode_s", "decode s"), ("grain", "grain x calls/step"), ("peak_mib", "peak MiB")],
}


def _columns(records, phase, preset) -> list[tuple[str, str]]:
    """The columns of a preset: the init column only where the preset has an initialize."""
    has_init = any(r.get("init_s") is not None for r in records if r["preset"] == preset)
    return [(c, t) for c, t in TABLES[phase] if c != "init_s" or has_init]


def table(records, phase, dims, presets) -> list[str]:
    from pdiff_fast.nn.autoencoder_choice import choose_preset

    cols = {p: _columns(records, phase, p) for p in presets}
    head = ["D", "auto"] + [f"{p} {title}" for p in presets for _, title in cols[p]]
    lines = ["| " + " | ".join(head) + " |", "|---:|---|" + "---:|" * (len(head) - 2)]
    for d in dims:
        cells = [f"{d:,}", choose_preset("auto", d)]
        for p in presets:
            cells += _cells(records, _find(records, phase, p, d), [c for c, _ in cols[p]])
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(records, presets) -> list[str]:
    """What the numbers show, computed from them."""
    out = []
    for phase in PHASES:
        key = _key(phase)
        unit = "s per 1000-step sampling of K models" if phase == "sample" else "s/step"
        parts = []
        for p in presets:
            ok = sorted((r for r in records if r["status"] == "ok" and r["phase"] == phase and r["preset"] == p),
                        key=lambda r: r["d"])
            if len(ok) < 2:
                continue
            a, b = ok[0], ok[-1]
            pairs = [(s, prev["d"], r["d"]) for prev, r in zip(ok, ok[1:]) if (s := slope(records, r)) is not None]
            slopes = [s for s, _, _ in pairs]
            top, d0, d1 = max(pairs)
            growth = ("no faster than D" if top <= 1 else
                      f"faster than D between D = {d0:,} and {d1:,} (slope {top:.2f})")
            parts.append(f"`{p}` {_num(a[key])} at D = {a['d']:,} -> {_num(b[key])} at D = {b['d']:,} "
                         f"(x{b[key] / a[key]:.3g} for x{b['d'] / a['d']:.3g} in D; log-log "
                         f"{_span(slopes)}: {growth}; peak memory {_num(a['peak_mib'])} -> "
                         f"{_num(b['peak_mib'])} MiB)")
        both = [d for d in sorted({r["d"] for r in records})
                if all((m := _find(records, phase, p, d)) and m["status"] == "ok" for p in presets)]
        if len(presets) == 2 and both:
            d = both[-1]
            x, y = (_find(records, phase, p, d) for p in presets)
            parts.append(f"at D = {d:,} (the largest D both ran) `{presets[0]}` takes {x[key] / y[key]:.3g}x the "
                         f"time and {x['peak_mib'] / max(y['peak_mib'], 1e-9):.3g}x the peak memory of `{presets[1]}`")
        if parts:
            out.append(f"- {PHASE_TITLES[phase]} ({unit}): " + "; ".join(parts) + ".")
    out += noise(records)
    est = [r for r in records if r["status"] == "not run" and r.get("estimate")]
    if est:
        def val(r, key):
            return ("at least " if key in r["estimate"]["floored"] else "") + _num(r["estimate"][key])

        shown = ", ".join(f"{r['phase']} {val(r, _key(r['phase']))} s and {val(r, 'peak_mib')} MiB at D = {r['d']:,}"
                          for r in est)
        out.append(f"- Not run, estimated `{est[0]['preset']}`: {shown}.")
    return out


def _span(slopes: list[float]) -> str:
    if len(slopes) == 1:
        return f"slope {slopes[0]:.2f}"
    return f"slopes {min(slopes):.2f} to {max(slopes):.2f}"


def _same_work(r: dict):
    """What the timed loop of r computes, apart from D: equal keys run the same operations on the
    same values (the denoiser and its inputs are seeded alike; the autoencoder is not in the loop)."""
    if r["status"] != "ok" or r["phase"] == "ae":
        return None
    key = (r["preset"], r["phase"], tuple(r["latent_shape"]))
    return key + ((r["grain"], r["denoiser_calls_per_step"]) if r["phase"] == "sample" else ())


def noise(records) -> list[str]:
    """The spread of time per step among measurements that do the same work at different D: the
    run-to-run noise of the machine, to read the slopes against."""
    groups: dict = {}
    for r in records:
        if (key := _same_work(r)) is not None:
            groups.setdefault(key, []).append(r)
    out = []
    for (preset, phase, *_), group in groups.items():
        if len(group) < 2:
            continue
        v = [r["step_s"] for r in group]
        ds = ", ".join(f"{r['d']:,}" for r in group)
        out.append(f"- Run-to-run noise: `{preset}` {PHASE_TITLES[phase].lower()} does the same work at D = {ds} "
                   f"(same latent shape, denoiser weights, inputs and seeds{', grain and calls per step' if phase == 'sample' else ''}); "
                   f"its seconds per step there range {_num(min(v))} to {_num(max(v))} (x{max(v) / min(v):.2f}), "
                   "each cell from its own subprocess: slopes near 0 in that column are within this spread.")
    return out


def device_info() -> dict:
    import torch

    from benchmarks.common import cpu_model

    return {"cpu_model": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__, "python": platform.python_version()}


def markdown(meta: dict, records: list[dict]) -> str:
    dev, dims, presets, k = meta["device"], meta["dims"], meta["presets"], meta["k"]
    lines = [f"# Cost against the subset size D ({dev['cpu_model']}, {dev['cores']} cores, torch {dev['torch']})", "",
             f"`python -m benchmarks.subset_scaling` (see its docstring). K = {k} parameter vectors of D values "
             f"(mean + K x {POPULATION_RANK} random coefficients times a random basis, seed 0), presets built by "
             "`build_autoencoder(preset, D)`; `auto` is `choose_preset(\"auto\", D)`. Torch threads: "
             f"{meta['threads']} ({dev['cores']} cores). Each cell is its own fresh subprocess. **Peak memory**: "
             f"ru_maxrss of that subprocess minus {meta['baseline_mib']:.0f} MiB, the ru_maxrss of a subprocess that only imports "
             "torch and pdiff_fast; the autoencoder phase includes the (K, D) float32 population. **slope**: "
             "log-log slope of the time against D from the row above (1 = linear in D). "
             f"`small` is not run above D = {meta['small_max_d']:,}: \"not run (est. x)\" is a straight line in D "
             "through its two largest measured D (computed, not measured); where that line falls with D, \"est. >= x\" "
             "is the largest measured value instead.", ""]
    for phase in PHASES:
        lines.append(f"## {PHASE_TITLES[phase]}")
        lines.append("")
        if phase == "ae":
            lines.append("`fit_autoencoder`, full batch, default lr (1e-3). s/step: median of the timed steps (after "
                         "a 1-step warm-up call; steps 1..n of a second call, n within "
                         f"[{meta['min_steps']}, {meta['steps']}] to fit {meta['budget']:g} s). init: `lowrank`'s "
                         "`initialize` (SVD of the population) that fit_autoencoder runs before its first step, "
                         "not in s/step.")
        elif phase == "denoiser":
            lines.append(f"`fit_diffusion` of EMA(AE_CNN_bottleneck(latent, 1, channel_list={DENOISER_WIDTHS})), "
                         "DDPMScheduler(), full batch, K random latents of the preset's latent_shape(); timed as "
                         "the autoencoder.")
        else:
            lines.append(f"`generate` of K = {k} models with the default DDPM scheduler (1000 steps), chunks and "
                         "grain as generate picks them for 1000 steps (grain x calls/step: rows per denoiser call "
                         "x calls per step). **Measured**: the reverse loop over the first S timesteps (S in "
                         "brackets; loop = the generate call minus its decode) and the decode of all K latents "
                         "(ae.decode in grains, as generate does). **s, 1000 steps** = loop x 1000 / S "
                         "(extrapolated where S < 1000) + decode. slope: of that total.")
        lines.append("")
        lines += table(records, phase, dims, presets)
        lines.append("")
    lines += ["## What the numbers show", ""] + summary(records, presets)
    failed = [r for r in records if r["status"] == "failed"]
    if failed:
        lines += ["", "Failed: " + "; ".join(f"{r['preset']} D = {r['d']:,} {r['phase']} ({r['why'][:200]})"
                                             for r in failed)]
    return "\n".join(lines) + "\n"

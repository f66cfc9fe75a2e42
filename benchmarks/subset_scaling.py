"""Cost of the autoencoder presets against the subset size D (any subset size, whole-network generation).

    python -m benchmarks.subset_scaling --out benchmarks/results/            # D = 384 ... 1,000,000
    python -m benchmarks.subset_scaling --dims 100,500 --k 8 --out /tmp/ss   # a smoke run
    python -m benchmarks.subset_scaling --from-json --out benchmarks/results/  # the Markdown from the JSON

For each D in --dims and each preset in --presets (`small`, `lowrank`; built with
autoencoder_choice.build_autoencoder(preset, D)), three phases; the preset that `auto` picks at D
(choose_preset("auto", D)) is listed beside them.
- ae: pdiff_fast.train.fit_autoencoder on a (K, D) float32 population (mean + K x 16 random
  coefficients times a random 16 x D basis, seed 0: low-rank structure; the timing does not depend
  on the values), full batch, default lr. One warm-up call (1 step), then one call of n + 1 steps;
  its checkpoint callback (every step, it only reads the clock) times steps 1..n (step 0 of that
  call is dropped too). n = --budget / (the warm-up step's seconds), within [--min-steps, --steps].
  Seconds per step: the median of the n. `lowrank`'s initialize (an SVD) runs inside every
  fit_autoencoder call, before the first step: it is timed on its own (in the timed call).
- denoiser: fit_diffusion of EMA(AE_CNN_bottleneck(latent numel, 1, channel_list=[16, 32, 64, 128]))
  (the pipeline's CPU widths) with DDPMScheduler(), full batch, on K random latents of the preset's
  latent_shape() in [-1, 1]; timed as `ae`.
- sample: generate() of K models, an untrained denoiser and autoencoder (the timing does not depend
  on the weights), the default DDPM scheduler truncated to its first S timesteps (999, 998, ...);
  it keeps noise_draws() of the full 1000-step scheduler, so generate picks the chunks and grain of
  a 1000-step run. Measured: the whole call and, inside it, the decode calls (ae.decode, timed by a
  wrapper); reverse loop = call - decode (initial noise, S denoiser calls + steps per chunk).
  Reported for 1000 steps: reverse loop x 1000 / S (extrapolated when S < 1000) + the measured
  decode. S = --budget / (seconds per step of a 2-step warm-up call), within [--sample-steps, 1000];
  the S-step call runs --repeats times, the one with the fastest reverse loop is reported. The
  denoiser is seeded alike at every D, so a preset whose latent does not change with D (lowrank)
  runs the same denoiser on the same values.
Each (preset, D, phase) runs in a fresh subprocess (`--worker`, one JSON line on stdout), torch
threads = --threads (default: all cores). Peak memory: ru_maxrss of that subprocess minus ru_maxrss of a subprocess
that only imports torch and pdiff_fast (the same imports); it includes the population (K x D x 4
bytes) in the `ae` phase. `small` is not run above --small-max-d (its activations are
64 channels per parameter per model: many GB and minutes per step at D = 127k): those cells say
"not run", with an estimate extrapolated linearly (a straight line in D) through its two largest
measured D. The tables give the log-log slope of seconds per step against D between consecutive
measured D (1: linear in D).

Writes subset_scaling_<dev>.json and subset_scaling_<dev>.md (--from-json: the Markdown again from
that JSON, nothing measured).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a file: make `benchmarks` and `pdiff_fast` importable
    sys.path.insert(0, str(ROOT))

PHASES = ("ae", "denoiser", "sample")
PHASE_TITLES = {"ae": "Autoencoder training", "denoiser": "Latent denoiser training", "sample": "Sampling"}
DENOISER_WIDTHS = [16, 32, 64, 128]  # the pipeline's CPU default
POPULATION_RANK = 16
DDPM_STEPS = 1000


# --- the worker: one measurement ---------------------------------------------------------------

def _imports():
    """Everything a worker imports (the baseline subprocess imports the same)."""
    warnings.filterwarnings("ignore", message="input's size at dim=1 does not match num_features")
    import torch  # noqa: F401

    import pdiff_fast  # noqa: F401
    from pdiff_fast import autoencoder_choice, denoiser, diffusion, sample, train  # noqa: F401


def peak_rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def population(k: int, d: int, seed: int = 0):
    """(k, d) float32: mean + k x POPULATION_RANK coefficients times a random basis."""
    import torch

    g = torch.Generator().manual_seed(seed)
    mean = 0.1 * torch.randn(d, generator=g)
    basis = torch.randn(POPULATION_RANK, d, generator=g) * 0.01
    coef = torch.randn(k, POPULATION_RANK, generator=g)
    return torch.addmm(mean, coef, basis)


class _Clock:
    """A checkpoint callback that only reads the clock (called after each step but the last)."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, tensors, meta) -> None:
        self.stamps.append(time.perf_counter())


def _steps_for(budget: float, per_step: float, lo: int, hi: int) -> int:
    return max(lo, min(hi, int(budget / max(per_step, 1e-9))))


def _timed_fit(fit, budget: float, min_steps: int, max_steps: int, excluded=None) -> dict:
    """fit(steps, checkpoint, checkpoint_every): a 1-step warm-up call, then n + 1 steps with
    steps 1..n timed. `excluded()` (called after the warm-up call) returns the seconds of that
    call that are not its step (lowrank's initialize), left out of the estimate that sets n."""
    t0 = time.perf_counter()
    fit(1, None, 0)
    warm = time.perf_counter() - t0
    n = _steps_for(budget, warm - (excluded() if excluded else 0.0), min_steps, max_steps)
    clock = _Clock()
    t0 = time.perf_counter()
    fit(n + 1, clock, 1)
    end = time.perf_counter()
    stamps = clock.stamps + [end]
    per = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"step_s": statistics.median(per),
            "step_s_mean": sum(per) / len(per), "step_s_min": min(per), "step_s_all": per, "steps_timed": n,
            "warmup_call_s": warm, "first_step_of_timed_call_s": clock.stamps[0] - t0}


def measure(phase: str, preset: str, d: int, k: int, *, budget: float = 20.0, min_steps: int = 2,
            max_steps: int = 10, sample_steps: int = 20, repeats: int = 2, seed: int = 0) -> dict:
    """One measurement in this process; returns the JSON-able record (peak_rss_kib: this process's)."""
    _imports()
    import torch

    from pdiff_fast.autoencoder_choice import build_autoencoder, choose_preset
    from pdiff_fast.denoiser import EMA, AE_CNN_bottleneck
    from pdiff_fast.diffusion import DDPMScheduler
    from pdiff_fast.sample import generate
    from pdiff_fast.train import fit_autoencoder, fit_diffusion

    rec = {"phase": phase, "preset": preset, "d": d, "k": k, "auto": choose_preset("auto", d),
           "threads": torch.get_num_threads(), "status": "ok"}
    if phase == "baseline":
        rec["peak_rss_kib"] = peak_rss_kib()
        return rec
    with torch.device("meta"):  # the latent shape without allocating the autoencoder
        latent_shape = tuple(build_autoencoder(preset, d).latent_shape())
    rec["latent_shape"] = list(latent_shape)
    latent_numel = math.prod(latent_shape)

    if phase == "ae":
        x = population(k, d, seed)
        rec["population_mib"] = x.numel() * 4 / 2**20
        torch.manual_seed(seed)
        ae = build_autoencoder(preset, d)
        rec["ae_params"] = sum(p.numel() for p in ae.parameters())
        inits: list[float] = []
        if hasattr(ae, "initialize"):
            init = ae.initialize

            def timed_init(data):
                t = time.perf_counter()
                init(data)
                inits.append(time.perf_counter() - t)

            ae.initialize = timed_init  # fit_autoencoder calls ae.initialize(params)

        def fit(steps, checkpoint, every):
            fit_autoencoder(ae, x, steps=steps, progress=False, checkpoint=checkpoint, checkpoint_every=every)

        rec.update(_timed_fit(fit, budget, min_steps, max_steps, excluded=lambda: inits[-1] if inits else 0.0))
        rec["init_s"] = inits[-1] if inits else None  # the timed call's
        rec["init_warmup_s"] = inits[0] if inits else None
    elif phase == "denoiser":
        g = torch.Generator().manual_seed(seed + 1)
        latents = torch.rand((k, *latent_shape), generator=g) * 2 - 1
        torch.manual_seed(seed)
        model = EMA(AE_CNN_bottleneck(latent_numel, 1, channel_list=DENOISER_WIDTHS))
        rec["denoiser_params"] = sum(p.numel() for p in model.model.parameters())
        sched = DDPMScheduler()

        def fit(steps, checkpoint, every):
            fit_diffusion(model, latents, sched, steps=steps, seed=seed, progress=False, checkpoint=checkpoint,
                          checkpoint_every=every)

        rec.update(_timed_fit(fit, budget, min_steps, max_steps))
    elif phase == "sample":
        torch.manual_seed(seed)
        ae = build_autoencoder(preset, d).eval()
        torch.manual_seed(seed)  # the same denoiser weights at every D of a latent shape
        den = AE_CNN_bottleneck(latent_numel, 1, channel_list=DENOISER_WIDTHS).eval()
        decode = ae.decode
        calls: list[tuple[int, float]] = []

        def timed_decode(z, **kw):
            t = time.perf_counter()
            out = decode(z, **kw)
            calls.append((z.shape[0], time.perf_counter() - t))
            return out

        ae.decode = timed_decode  # generate decodes with in_grains(autoencoder.decode, grain, z)
        den_rows: list[int] = []
        den.register_forward_pre_hook(lambda m, a: den_rows.append(a[0].shape[0]))

        def run(steps: int) -> tuple[float, float]:
            calls.clear(), den_rows.clear()
            t = time.perf_counter()
            generate(ae, den, TruncatedDDPM(steps), k, device="cpu", seed=seed, progress=False)
            total = time.perf_counter() - t
            return total, sum(s for _, s in calls)

        total, dec = run(2)  # warm-up, and the per-step estimate
        s = _steps_for(budget, (total - dec) / 2, sample_steps, DDPM_STEPS)
        runs = [run(s) for _ in range(repeats)]  # the fastest loop of `repeats` calls, with its decode
        total, dec = min(runs, key=lambda r: r[0] - r[1])
        loop = total - dec
        rec.update({"loop_steps": s, "loop_s": loop, "loop_s_all": [t - d for t, d in runs], "decode_s": dec,
                    "call_s": total,
                    "step_s": loop / s, "sample_s": loop * DDPM_STEPS / s + dec, "extrapolated": s < DDPM_STEPS,
                    "grain": calls[0][0], "decode_calls": len(calls), "denoiser_calls_per_step": len(den_rows) // s})
    else:
        raise ValueError(f"unknown phase {phase!r}")
    rec["peak_rss_kib"] = peak_rss_kib()
    return rec


def TruncatedDDPM(steps: int):
    """The default DDPM scheduler, run over its first `steps` timesteps only; noise_draws() stays
    the full schedule's, so generate() sizes its chunks as for a 1000-step run."""
    from pdiff_fast.diffusion import DDPMScheduler

    class _Truncated(DDPMScheduler):
        def timesteps(self):
            return super().timesteps()[:steps]

        def noise_draws(self):
            return 1 + self.num_train_timesteps

    return _Truncated()


# --- the parent: a subprocess per measurement --------------------------------------------------

def worker_command(phase: str, preset: str, d: int, args) -> list[str]:
    return [sys.executable, "-m", "benchmarks.subset_scaling", "--worker", "--phase", phase, "--preset", preset,
            "--d", str(d), "--k", str(args.k), "--budget", str(args.budget), "--min-steps", str(args.min_steps),
            "--steps", str(args.steps), "--sample-steps", str(args.sample_steps), "--repeats", str(args.repeats),
            "--threads", str(args.threads)]


def run_subprocess(phase: str, preset: str, d: int, args) -> dict:
    """One measurement in a fresh subprocess; its JSON line, or a record of the failure."""
    threads = args.threads or os.cpu_count() or 1
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(threads)}
    try:
        proc = subprocess.run(worker_command(phase, preset, d, args), cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"phase": phase, "preset": preset, "d": d, "status": "failed", "why": f"over {args.timeout} s"}
    if proc.returncode != 0:
        return {"phase": phase, "preset": preset, "d": d, "status": "failed",
                "why": f"exit {proc.returncode}: {proc.stderr[-2000:]}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def collect(args, runner=run_subprocess, log=print) -> tuple[int, list[dict]]:
    """(baseline ru_maxrss KiB, records): every (preset, D, phase), `small` above small_max_d not run."""
    base = runner("baseline", "lowrank", 1, args)["peak_rss_kib"]
    log(f"baseline (imports only): {base / 1024:.0f} MiB")
    records = []
    for d in args.dims:
        for preset in args.presets:
            for phase in PHASES:
                if preset == "small" and d > args.small_max_d:
                    records.append({"phase": phase, "preset": preset, "d": d, "status": "not run"})
                    continue
                t = time.perf_counter()
                r = runner(phase, preset, d, args)
                if r["status"] == "ok":
                    r["peak_mib"] = (r["peak_rss_kib"] - base) / 1024
                records.append(r)
                log(f"D={d} {preset} {phase}: {_brief(r)} ({time.perf_counter() - t:.0f} s wall)")
    estimate_not_run(records)
    return base, records


def _brief(r: dict) -> str:
    if r["status"] != "ok":
        return r["status"] + (f" ({r['why'][:300]})" if "why" in r else "")
    what = f"{r['sample_s']:.3g} s for {DDPM_STEPS} steps" if r["phase"] == "sample" else f"{r['step_s']:.3g} s/step"
    return f"{what}, peak {r['peak_mib']:.0f} MiB"


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
    from pdiff_fast.autoencoder_choice import choose_preset

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


def meta_for(args, baseline_kib: int, wall_s: float) -> dict:
    return {"device": device_info(), "dims": args.dims, "presets": args.presets, "k": args.k,
            "small_max_d": args.small_max_d, "budget": args.budget, "min_steps": args.min_steps, "steps": args.steps,
            "sample_steps": args.sample_steps, "repeats": args.repeats, "ddpm_steps": DDPM_STEPS, "denoiser_widths": DENOISER_WIDTHS,
            "population_rank": POPULATION_RANK, "threads": args.threads or os.cpu_count(),
            "baseline_kib": baseline_kib, "baseline_mib": baseline_kib / 1024, "wall_s": wall_s}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dims", default="384,10000,32842,127000,1000000", help="comma-separated D values")
    p.add_argument("--presets", default="small,lowrank")
    p.add_argument("--k", type=int, default=200, help="parameter vectors (training set and models sampled)")
    p.add_argument("--small-max-d", type=int, default=32842, help="largest D `small` runs at (above: estimated)")
    p.add_argument("--budget", type=float, default=20.0, help="seconds of timed steps per measurement (about)")
    p.add_argument("--min-steps", type=int, default=3, help="fewest timed training steps")
    p.add_argument("--steps", type=int, default=10, help="most timed training steps")
    p.add_argument("--sample-steps", type=int, default=20, help="fewest reverse steps timed (at most 1000)")
    p.add_argument("--repeats", type=int, default=2, help="timed sampling calls (the fastest is reported)")
    p.add_argument("--threads", type=int, default=0, help="torch threads per measurement (0: all cores)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per measurement subprocess")
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--from-json", action="store_true",
                   help="measure nothing: rewrite the Markdown from the JSON already in --out")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--phase", help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--d", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        import torch

        torch.set_num_threads(args.threads or os.cpu_count() or 1)
        rec = measure(args.phase, args.preset, args.d, args.k, budget=args.budget, min_steps=args.min_steps,
                      max_steps=args.steps, sample_steps=args.sample_steps, repeats=args.repeats)
        print(json.dumps(rec), flush=True)
        return
    out = Path(args.out)
    if args.from_json:
        data = json.loads((out / "subset_scaling_cpu.json").read_text())
        text = markdown(data["meta"], data["results"])
        (out / "subset_scaling_cpu.md").write_text(text)
        print(text)
        return
    args.dims = [int(v) for v in args.dims.split(",")]
    args.presets = args.presets.split(",")
    _imports()
    t0 = time.perf_counter()
    base, records = collect(args)
    meta = meta_for(args, base, time.perf_counter() - t0)
    out.mkdir(parents=True, exist_ok=True)
    (out / "subset_scaling_cpu.json").write_text(json.dumps({"meta": meta, "results": records}, indent=1))
    text = markdown(meta, records)
    (out / "subset_scaling_cpu.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

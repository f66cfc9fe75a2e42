"""The sampler part of `pdiff-fast study`: the frontier of quality against denoiser evaluations.

Every setting samples the same trained models with the same seed and number of models; sampling
is timed alone, then the run's own evaluation scores the result (accuracy, novelty, verdict).
FRONTIER holds DDPM 1000 (the reference) and each few-step sampler at 5..50 steps, plus two
diagnostics that no default is chosen from: the samplers without the x_t clamp (the reference's
DDPM clamps x_t; the few-step samplers are measured with and without it) and DDPM 1000 at another
seed (how far the median moves by chance alone).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import torch

LEVEL = 0.1  # accuracy points within which a sampler "keeps" DDPM's quality (generated median)


@dataclass(frozen=True)
class Setting:
    sampler: str
    steps: int
    eta: float = 0.0
    clamp: bool = True
    seed_offset: int = 0  # 0: the run's seed; else a diagnostic at seed + seed_offset

    @classmethod
    def of(cls, s) -> "Setting":
        return s if isinstance(s, Setting) else cls(*s)

    @property
    def diagnostic(self) -> bool:
        return is_diagnostic(asdict(self))


def is_diagnostic(r: dict) -> bool:
    """A row no default is chosen from: no x_t clamp, or another seed than the run's."""
    return not r.get("clamp", True) or bool(r.get("seed_offset", 0))


STEP_COUNTS = (5, 10, 15, 20, 25, 50)
FRONTIER = (
    (Setting("ddpm", 1000),)
    + tuple(Setting(s, n) for s in ("ddim", "dpm++2m", "dpm++2m-sde", "euler-a") for n in STEP_COUNTS)
    + tuple(Setting("ddim", n, eta=1.0) for n in (10, 20, 25, 50))
    + tuple(Setting(s, 20, clamp=False) for s in ("ddim", "dpm++2m", "dpm++2m-sde", "euler-a"))
    + (Setting("ddpm", 1000, seed_offset=1),)
)


def label(r: dict) -> str:
    """'DPM++2M 20', 'DDIM 20 eta 1', 'EULER-A 20 unclamped', 'DDPM 1000 seed+1'."""
    out = f"{r['sampler'].upper()} {r['steps']}"
    if r.get("eta"):
        out += f" eta {r['eta']:g}"
    if not r.get("clamp", True):
        out += " unclamped"
    if r.get("seed_offset"):
        out += f" seed+{r['seed_offset']}"
    return out


def generated_fields(report: dict) -> dict:
    """What a study row keeps of an evaluation report: the generated set's accuracy and novelty."""
    return {"generated": report["generated"], "generated_nonfinite": report["generated_nonfinite"],
            "max_iou_mean": report["iou"]["generated_original_max_mean"],
            "novelty": report["novelty"]["sets"]["generated"],
            "verdict": {k: report["verdict"][k] for k in ("label", "accuracy", "distance_ratio")}}



def sample_timed(p, models, setting: Setting, n: int, seed: int):
    """(flat parameters, seconds) of one setting on the run's trained models (p.load_models())."""
    from ..diffusion.sample import generate
    from ..diffusion.samplers import make_scheduler

    ae, model, std = models
    scheduler = make_scheduler(setting.sampler, setting.steps, setting.eta, clamp_sample=setting.clamp)
    t0 = time.perf_counter()
    flat = generate(ae, model.ema, scheduler, n, device=p.device, seed=seed, grain=p.config.sample_grain,
                    memory_budget_bytes=p.config.memory_budget_mb << 20, progress=False)
    if p.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return (std.inverse(flat) if std is not None else flat), seconds


def run_samplers(p, samplers=FRONTIER, log=print, seed_offsets=(0,)) -> list[dict]:
    """One row per setting and seed offset (the run's seed plus each; a setting's own seed_offset
    adds to it): the generated set's accuracy and novelty (generated_fields)."""
    from ..evaluation.judge import evaluate
    from .collect import rebuild_base

    c = p.config
    pop = p.population()
    base, data = rebuild_base(p.new_model(), pop).to(p.device), p.data.to(p.device)
    models = p.load_models()  # once: every setting samples the same trained models
    rows = []
    for setting in map(Setting.of, samplers):
        for extra in seed_offsets:
            setting_k = replace(setting, seed_offset=setting.seed_offset + extra)
            flat, seconds = sample_timed(p, models, setting_k, c.num_samples, c.seed + setting_k.seed_offset)
            report = evaluate(base, pop.spec, pop.params.to(p.device), flat.to(p.device), data.x_test, data.y_test,
                              noise_sigmas=[], seed=c.seed, memory_budget_bytes=c.memory_budget_mb << 20)
            row = {**asdict(setting_k), "nfe": setting.steps, "seconds": seconds, **generated_fields(report)}
            rows.append(row)
            log(f"study: sampler {label(row)}: {seconds:.2f} s, generated median {report['generated']['median']:.2f}")
    return rows


def fewest_level_steps(rows: list[dict]) -> dict | None:
    """The setting with the fewest denoiser evaluations whose generated median is within LEVEL
    points of the first row's (DDPM 1000) and whose novelty verdict is the same (ties: the higher
    median, then the shorter time); diagnostic rows excluded. None when there are no rows."""
    if not rows:
        return None
    ref = rows[0]
    ok = [r for r in rows if not is_diagnostic(r) and math.isfinite(r["generated"]["median"]) and r["generated"]["median"] >= ref["generated"]["median"] - LEVEL
          and r["verdict"]["label"] == ref["verdict"]["label"]]
    return min(ok, key=lambda r: (r.get("nfe", r["steps"]), -r["generated"]["median"], r["seconds"])) if ok else None


def read_samplers(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    ref = rows[0]
    out = []
    for r in rows[1:]:
        out.append(f"{label(r)}: median {r['generated']['median']:.2f} "
                   f"({r['generated']['median'] - ref['generated']['median']:+.2f} against {label(ref)}), "
                   f"mean {r['generated']['mean']:.2f}, {ref['seconds'] / max(r['seconds'], 1e-9):.1f}x faster; "
                   f"verdict {r['verdict']['label']}.")
    best = fewest_level_steps(rows)
    if best is not None:
        out.append(f"Fewest denoiser evaluations within {LEVEL} points of {label(ref)}'s median, same verdict: "
                   f"{label(best)} ({best['seconds']:.2f} s against {ref['seconds']:.2f} s).")
    return out


def format_samplers(rows: list[dict], ratio, acc) -> list[str]:
    lines = ["## Sampler trade-off", "",
             "| sampler | denoiser evaluations | eta | x_t clamp | seed | sampling time (s) | generated best / mean / median "
             "| nonfinite | nearest-original distance / tau | max IoU (mean) | verdict |",
             "|---|---:|---:|---|---|---:|---|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['sampler']} | {r['steps']} | {r.get('eta', 0.0):g} | {'yes' if r.get('clamp', True) else 'no'} "
                     f"| {'+' + str(r['seed_offset']) if r.get('seed_offset') else 'run'} | {r['seconds']:.2f} | "
                     f"{acc(r['generated'])} | {r['generated_nonfinite']} | {ratio(r['novelty']['distance_ratio'])} | "
                     f"{r['max_iou_mean']:.3f} | {r['verdict']['label']} |")
    return lines + [""] + [f"- {s}" for s in read_samplers(rows)] + [""]


def plot_samplers(rows: list[dict], path):
    """Generated median accuracy against denoiser evaluations, one line per sampler (the frontier)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .report import _save

    ref = rows[0]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.axhspan(ref["generated"]["median"] - LEVEL, ref["generated"]["median"] + LEVEL, color="0.9",
               label=f"{label(ref)} median ± {LEVEL}")
    lines: dict[str, list] = {}
    for r in rows:
        key = label({**r, "steps": ""}).replace("  ", " ").strip()
        lines.setdefault(key, []).append(r)
    for i, (key, rs) in enumerate(lines.items()):
        rs = sorted(rs, key=lambda r: r["steps"])
        style = ":" if any(not r.get("clamp", True) or r.get("seed_offset") for r in rs) else "-"
        ax.plot([r["steps"] for r in rs], [r["generated"]["median"] for r in rs], style, marker="o", ms=4,
                label=key.lower(), color=f"C{i % 10}")
    ax.set_xscale("log")
    ax.set_xlabel("denoiser evaluations per model")
    ax.set_ylabel("generated median test accuracy (%)")
    best = fewest_level_steps(rows)
    ax.set_title(f"Fewest evaluations within {LEVEL} points of {label(ref)}: " + (label(best) if best else "none"),
                 fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    out = _save(fig, path)
    plt.close(fig)
    return out

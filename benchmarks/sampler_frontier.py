"""The sampler frontier on both default runs: quality against denoiser evaluations, and the default
sampler chosen from it.

    python -m benchmarks.sampler_frontier --write          # -> benchmarks/results/samplers_<device>.{md,json,png}

Every setting runs at SEEDS seeds (the run's seed and the next ones) and is judged on the mean over
them: one seed moves DDPM 1000's own held-out mean by a point, more than the bound the choice uses.

1. The default p-diff run (Config(); trained into --pdiff-run unless a report is there): every
   setting of pdiff_fast.pipeline.study_samplers.FRONTIER on the same trained models, scored by the
   run's own evaluation (generated best / mean / median, novelty, verdict, non-finite share,
   sampling time).
2. The default dataset-conditioned run (TaskConfig(); --tasks-run): the same settings generate the
   held-out tasks' models (guidance as configured); each task's mean test accuracy over its models,
   averaged over the tasks as the tasks report does.
3. The choice: the setting with the fewest denoiser evaluations (diagnostics excluded: no x_t clamp)
   whose p-diff median (mean over seeds) is within LEVEL (0.1) points of DDPM 1000's with the same
   verdict at every seed, and whose held-out mean (mean over seeds) is within TASK_LEVEL (0.3)
   points of DDPM 1000's (ties: the higher p-diff median, then the higher held-out mean). The config
   defaults name it; tests/diffusion/test_frontier_default.py keeps them equal.
"""
from __future__ import annotations

import argparse
import math
import platform
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pdiff_fast.config import Config
from pdiff_fast.diffusion.samplers import make_scheduler
from pdiff_fast.io import save_json, save_text
from pdiff_fast.pipeline.pdiff import PDiff
from pdiff_fast.pipeline.study_samplers import FRONTIER, LEVEL, label, run_samplers
from pdiff_fast.tasks.config import TaskConfig
from pdiff_fast.tasks.pdiff import TaskPDiff

RESULTS = Path(__file__).resolve().parent / "results"
TASK_LEVEL = 0.3  # held-out mean accuracy points (the bound for the tasks run)
SEEDS = 3
SETTINGS = tuple(s for s in FRONTIER if not s.seed_offset)  # seeds are replicated for every setting here


def pdiff_rows(run_dir: Path, log) -> list[dict]:
    p = PDiff(Config(), run_dir, progress=False, log=None)
    if not (run_dir / "report.json").is_file():
        log(f"frontier: training the default p-diff run in {run_dir}")
        p.run()
    return run_samplers(p, SETTINGS, log=log, seed_offsets=range(SEEDS))


def task_rows(run_dir: Path, log) -> list[dict]:
    p = TaskPDiff(TaskConfig(), run_dir, progress=False, log=None)
    if not (run_dir / "report.json").is_file():
        log(f"frontier: training the default tasks run in {run_dir}")
        p.run()
    loaded = p.load_generator()
    c, n = p.config, p.config.samples_per_task
    rows = []
    for setting in SETTINGS:
        for k in range(SEEDS):
            p.config = c.replace(seed=c.seed + k)
            t0 = time.perf_counter()
            flat = p.generate(p.held_out, loaded=loaded,
                              scheduler=make_scheduler(setting.sampler, setting.steps, setting.eta, setting.clamp)).cpu()
            seconds = time.perf_counter() - t0
            p.config = c
            finite = torch.isfinite(flat).all(1)
            scores = [float(p.accuracy(t, flat[i * n:(i + 1) * n]).mean()) for i, t in enumerate(p.held_out)]
            row = {**asdict(setting), "seed_offset": k, "nfe": setting.steps, "seconds": seconds,
                   "mean": sum(scores) / len(scores), "worst": min(scores), "nonfinite": int((~finite).sum())}
            rows.append(row)
            log(f"frontier: tasks {label(row)}: {seconds:.2f} s, held-out mean {row['mean']:.2f}")
    return rows


def _key(r: dict) -> tuple:
    return r["sampler"], r["steps"], r["eta"], r["clamp"]


def _mean(values) -> float | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else None


def aggregate(rows: list[dict], tasks: bool) -> list[dict]:
    """One row per setting (in order of first appearance): the mean over its seeds, and the range."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(_key(r), []).append(r)
    out = []
    for key, rs in groups.items():
        a = {"sampler": key[0], "steps": key[1], "eta": key[2], "clamp": key[3], "seed_offset": 0,
             "nfe": rs[0]["nfe"], "seeds": len(rs), "seconds": _mean(r["seconds"] for r in rs)}
        if tasks:
            a.update(mean=_mean(r["mean"] for r in rs), range=[min(r["mean"] for r in rs), max(r["mean"] for r in rs)],
                     worst=_mean(r["worst"] for r in rs), nonfinite=sum(r["nonfinite"] for r in rs))
        else:
            med = [r["generated"]["median"] for r in rs]
            labels = sorted({r["verdict"]["label"] for r in rs})
            a.update(generated={f: _mean(r["generated"][f] for r in rs) for f in ("best", "mean", "median")},
                     range=[min(med), max(med)], generated_nonfinite=sum(r["generated_nonfinite"] for r in rs),
                     distance_ratio=_mean(r["novelty"]["distance_ratio"] for r in rs),
                     max_iou_mean=_mean(r["max_iou_mean"] for r in rs),
                     verdict={"label": labels[0] if len(labels) == 1 else "mixed: " + ", ".join(labels)})
        out.append(a)
    return out


def choose(pdiff: list[dict], tasks: list[dict]) -> dict | None:
    """The fewest-evaluation setting that holds both runs' quality (module docstring), from the
    seed-averaged rows of `aggregate`."""
    ref_p, ref_t = pdiff[0], tasks[0]
    by_key = {_key(r): r for r in tasks}
    ok = []
    for r in pdiff:
        t = by_key.get(_key(r))
        if not r["clamp"] or t is None:
            continue
        if (math.isfinite(r["generated"]["median"]) and r["generated"]["median"] >= ref_p["generated"]["median"] - LEVEL
                and r["verdict"]["label"] == ref_p["verdict"]["label"] and t["mean"] >= ref_t["mean"] - TASK_LEVEL):
            ok.append((r, t))
    if not ok:
        return None
    r, t = min(ok, key=lambda rt: (rt[0]["nfe"], -rt[0]["generated"]["median"], -rt[1]["mean"]))
    return {"sampler": r["sampler"], "steps": r["steps"], "eta": r["eta"], "label": label(r),
            "pdiff_median": r["generated"]["median"], "tasks_mean": t["mean"],
            "pdiff_seconds": r["seconds"], "tasks_seconds": t["seconds"]}


def _acc(g: dict) -> str:
    return f"{g['best']:.2f} / {g['mean']:.2f} / {g['median']:.2f}"


def format_md(result: dict) -> str:
    pd, tk, ch = result["pdiff"], result["tasks"], result["chosen"]
    ref_p, ref_t = pd[0], tk[0]
    n_models = result["pdiff_seeds"][0]["generated"]["n"] + result["pdiff_seeds"][0]["generated_nonfinite"]
    lines = [f"# Sampler frontier ({result['device']}, torch {result['torch']}, {result['cpus']} CPUs)", "",
             f"Every setting samples the same trained models at {result['seeds']} seeds (the run's and the next "
             f"ones); each number is the mean over the seeds, the range is that of the medians (p-diff) or of the "
             f"held-out means (tasks). Rows without the x_t clamp are diagnostics, never chosen.", "",
             f"## Default p-diff run ({n_models} models per seed)", "",
             "| setting | denoiser evaluations | sampling time (s) | generated best / mean / median | median range | "
             "vs DDPM 1000 | nonfinite | distance / tau | max IoU (mean) | verdict |",
             "|---|---:|---:|---|---|---:|---:|---:|---:|---|"]
    for r in pd:
        g, lo_hi, ratio = r["generated"], r["range"], r["distance_ratio"]
        lines.append(f"| {label(r)} | {r['nfe']} | {r['seconds']:.2f} | {g['best']:.2f} / {g['mean']:.2f} / "
                     f"{g['median']:.2f} | {lo_hi[0]:.2f}–{lo_hi[1]:.2f} | {g['median'] - ref_p['generated']['median']:+.2f} | "
                     f"{r['generated_nonfinite']} | {'–' if ratio is None else f'{ratio:.2f}'} | "
                     f"{r['max_iou_mean']:.3f} | {r['verdict']['label']} |")
    lines += ["", f"## Default dataset-conditioned run: {len(result['held_out'])} held-out tasks", "",
              "| setting | denoiser evaluations | sampling time (s) | held-out mean | range | vs DDPM 1000 | worst task | "
              "nonfinite |", "|---|---:|---:|---:|---|---:|---:|---:|"]
    for r in tk:
        lines.append(f"| {label(r)} | {r['nfe']} | {r['seconds']:.2f} | {r['mean']:.2f} | {r['range'][0]:.2f}–"
                     f"{r['range'][1]:.2f} | {r['mean'] - ref_t['mean']:+.2f} | {r['worst']:.2f} | {r['nonfinite']} |")
    lines += ["", "## Choice", ""]
    rule = (f"p-diff median within {LEVEL} points of DDPM 1000's and the same verdict at every seed; held-out mean "
            f"within {TASK_LEVEL} points")
    if ch is None:
        lines.append(f"No setting holds both runs' quality ({rule}): the default stays DDPM 1000.")
    else:
        lines.append(f"Fewest denoiser evaluations that hold both runs' quality ({rule}): **{ch['label']}** — p-diff "
                     f"median {ch['pdiff_median']:.2f} (DDPM 1000: {ref_p['generated']['median']:.2f}), held-out mean "
                     f"{ch['tasks_mean']:.2f} (DDPM 1000: {ref_t['mean']:.2f}); sampling {ch['pdiff_seconds']:.2f} s "
                     f"against {ref_p['seconds']:.2f} s for the p-diff run's models, {ch['tasks_seconds']:.2f} s "
                     f"against {ref_t['seconds']:.2f} s for the held-out tasks' "
                     f"({ref_p['seconds'] / max(ch['pdiff_seconds'], 1e-9):.0f}x and "
                     f"{ref_t['seconds'] / max(ch['tasks_seconds'], 1e-9):.0f}x).")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, rows, key, level, title in ((axes[0], result["pdiff"], lambda r: r["generated"]["median"], LEVEL,
                                         f"default p-diff run: generated median (mean of {result['seeds']} seeds)"),
                                        (axes[1], result["tasks"], lambda r: r["mean"], TASK_LEVEL,
                                         "held-out tasks: mean accuracy")):
        ref = key(rows[0])
        ax.axhspan(ref - level, ref + level, color="0.9", label=f"DDPM 1000 ± {level}")
        groups: dict[str, list] = {}
        for r in rows[1:]:
            name = label({**r, "steps": ""}).replace("  ", " ").strip().lower()  # one line per sampler
            groups.setdefault(name, []).append(r)
        for i, (name, rs) in enumerate(groups.items()):
            rs.sort(key=lambda r: r["nfe"])
            ax.errorbar([r["nfe"] for r in rs], [key(r) for r in rs],
                        yerr=[[key(r) - r["range"][0] for r in rs], [r["range"][1] - key(r) for r in rs]],
                        fmt="-o" if rs[0]["clamp"] else ":o", ms=4, capsize=2, color=f"C{i % 10}", label=name)
        ax.errorbar([1000], [ref], yerr=[[ref - rows[0]["range"][0]], [rows[0]["range"][1] - ref]], fmt="*",
                    ms=10, color="k", label="ddpm 1000")
        ax.set_xscale("log")
        ax.set_xlabel("denoiser evaluations per model")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title, fontsize=9)
    axes[0].legend(fontsize=6, ncol=2)
    ch = result["chosen"]
    fig.suptitle("Chosen default: " + (ch["label"] if ch else "none (DDPM 1000)"), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pdiff-run", type=Path, default=Path("runs/frontier/default"))
    ap.add_argument("--tasks-run", type=Path, default=Path("runs/frontier/tasks"))
    ap.add_argument("--write", action="store_true", help="write benchmarks/results/samplers_<device>.{md,json,png}")
    args = ap.parse_args(argv)
    log = lambda m: print(m, flush=True)  # noqa: E731
    pd_seeds = pdiff_rows(args.pdiff_run, log)
    tp = TaskPDiff(TaskConfig(), args.tasks_run, progress=False, log=None)
    tk_seeds = task_rows(args.tasks_run, log)
    pd, tk = aggregate(pd_seeds, tasks=False), aggregate(tk_seeds, tasks=True)
    device = "cpu" if not torch.cuda.is_available() else torch.cuda.get_device_name().lower().replace(" ", "-")
    result = {"device": device, "torch": torch.__version__, "cpus": __import__("os").cpu_count(),
              "machine": platform.machine(), "seeds": SEEDS, "pdiff": pd, "tasks": tk, "pdiff_seeds": pd_seeds,
              "tasks_seeds": tk_seeds, "held_out": [t.name for t in tp.held_out], "level": LEVEL,
              "task_level": TASK_LEVEL, "chosen": choose(pd, tk)}
    md = format_md(result)
    print(md)
    if args.write:
        stem = RESULTS / f"samplers_{'cpu' if device == 'cpu' else device}"
        save_json(stem.with_suffix(".json"), result)
        save_text(stem.with_suffix(".md"), md)
        plot(result, stem.with_suffix(".png"))
    return result


if __name__ == "__main__":
    main()

"""What a prompted task run is judged by (PromptedTaskPDiff.evaluate), per split (seen / held-out tasks):

- calibration: for each prompt, each task's median validation accuracy over its models of that
  prompt, then the median over the split's tasks (and the worst task); the test accuracy likewise
  (scored only, never used to choose);
- a prompt is honoured when that median is within HONOURED_WITHIN points of it (as
  pdiff_fast.prompted.calibration); prompts above the zoo's best validation accuracy are the
  extrapolation rows, reported as measured;
- at the highest prompt honoured (none: the one missed by least, said so), the generated models'
  mean test accuracy (over tasks, of each task's mean) against the baselines of the tasks report:
  random initialisation, the zoo's weight mean, the nearest seen task's zoo checkpoints and, for a
  seen task, its own — both only the checkpoints whose validation accuracy reaches the prompt
  (>= prompt - HONOURED_WITHIN; none: the best two), as the p-diff report judges against the
  checkpoints that reach it.
"""
from __future__ import annotations

import math
import os
import statistics
from pathlib import Path

from .calibration import HONOURED_WITHIN, finish_axes, save_calibration

SPLITS = ("held out", "seen")  # the order of the tables: as the tasks report
REACHING = ("nearest task", "zoo (own task)")  # baselines cut to the checkpoints that reach the prompt


def _of_prompt(values: list[float], prompts: list[float], p: float) -> list[float]:
    return [v for v, q in zip(values, prompts) if q == p]


def _reaching(test: list[float], labels: list[float], p: float) -> list[float]:
    """The test accuracies of the checkpoints labelled >= p - HONOURED_WITHIN; none: of the best two labels."""
    keep = [t for t, v in zip(test, labels) if v >= p - HONOURED_WITHIN]
    if keep:
        return keep
    best = sorted(range(len(labels)), key=lambda i: -labels[i])[:2]
    return [test[i] for i in best]


def _split(tasks: dict, lo: float, hi: float) -> dict:
    prompts = sorted({p for e in tasks.values() for p in e["prompt"]})
    rows = []
    for p in prompts:
        val = [statistics.median(_of_prompt(e["val"], e["prompt"], p)) for e in tasks.values()]
        test = [_of_prompt(e["test"]["generated"], e["prompt"], p) for e in tasks.values()]
        median = statistics.median(val)
        rows.append({"prompt": p, "tasks": len(val), "val_median": median, "val_worst": min(val),
                     "test_median": statistics.median(statistics.median(t) for t in test),
                     "test_mean": statistics.fmean(statistics.fmean(t) for t in test), "miss": median - p,
                     "honoured": abs(median - p) <= HONOURED_WITHIN, "extrapolation": p > hi})
    honoured = [r for r in rows if r["honoured"]]
    judged = max(honoured, key=lambda r: r["prompt"]) if honoured else min(rows, key=lambda r: abs(r["miss"]))
    p = judged["prompt"]
    per_method: dict[str, list[float]] = {"generated": [statistics.fmean(_of_prompt(e["test"]["generated"], e["prompt"], p))
                                                        for e in tasks.values()]}
    for e in tasks.values():
        for name, test in e["test"].items():
            if name == "generated":
                continue
            rows_ = _reaching(test, e["labels"][name], p) if name in REACHING else test
            per_method.setdefault(name, []).append(statistics.fmean(rows_))
    compare = {name: {"mean": statistics.fmean(v), "worst": min(v), "tasks": len(v)} for name, v in per_method.items()}
    gen = compare["generated"]["mean"]
    return {"calibration": rows, "highest_honoured": p if honoured else None, "judged_prompt": p,
            "compare": compare, "above": sorted(n for n, c in compare.items() if n != "generated" and gen > c["mean"]),
            "not_above": sorted(n for n, c in compare.items() if n != "generated" and gen <= c["mean"])}


def calibrate(per_task: dict, lo: float, hi: float) -> dict:
    """per_task: {task: {"split", "prompt": [per model], "val": [per model], "test": {method: [per row]},
    "labels": {method: [validation accuracy per row]} for the REACHING methods}} -> the summary of the
    module docstring, per split present."""
    out = {"honoured_within": HONOURED_WITHIN, "prompt_range": [lo, hi], "splits": {}}
    for split in SPLITS:
        tasks = {n: e for n, e in per_task.items() if e["split"] == split}
        if tasks:
            out["splits"][split] = _split(tasks, lo, hi)
    return out


def _f(v, fmt=".2f") -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def format_report(report: dict) -> str:
    pr, zoo = report["prompted"], report["zoo"]
    lo, hi = pr["prompt_range"]
    lines = [f"# Prompted dataset-conditioned generation: {len(report['tasks']['held out'])} held-out and "
             f"{len(report['tasks']['seen'])} seen tasks", "",
             f"The zoo's {zoo['models']} checkpoints span {lo:.2f}..{hi:.2f}% validation accuracy on their tasks (median "
             f"{zoo['val_median']:.2f}; test median {zoo['test_median']:.2f}). A prompt is honoured when the median over "
             f"the tasks of each task's median validation accuracy is within {pr['honoured_within']:g} points of it."]
    for split in (x for x in SPLITS if x in pr["splits"]):  # a fixed order: report.json's keys come back sorted
        s = pr["splits"][split]
        lines += ["", f"## {split.capitalize()} tasks", "",
                  "| prompt (val %) | tasks | val median | worst task | test median | test mean | miss | honoured |",
                  "|---:|---:|---:|---:|---:|---:|---:|---|"]
        for r in s["calibration"]:
            tag = ("yes" if r["honoured"] else "no") + (" (above every checkpoint)" if r["extrapolation"] else "")
            lines.append(f"| {r['prompt']:.2f} | {r['tasks']} | {r['val_median']:.2f} | {r['val_worst']:.2f} | "
                         f"{r['test_median']:.2f} | {r['test_mean']:.2f} | {r['miss']:+.2f} | {tag} |")
        p = s["judged_prompt"]
        lines += ["", (f"Highest prompt honoured: {p:.2f}." if s["highest_honoured"] is not None else
                       f"No prompt was honoured; the comparison uses prompt {p:.2f}, the one missed by least."),
                  "", f"| method (test %, at prompt {p:.2f}) | mean over tasks | worst task |", "|---|---:|---:|"]
        for name in ["generated", *sorted(n for n in s["compare"] if n != "generated")]:
            c = s["compare"][name]
            cut = ", checkpoints reaching the prompt" if name in REACHING else ""
            lines.append(f"| {name}{cut} | {c['mean']:.2f} | {c['worst']:.2f} |")
        gen = s["compare"]["generated"]["mean"]
        lines += ["", f"Generated ({gen:.2f}) is above: {', '.join(s['above']) or 'none'}; not above: "
                      f"{', '.join(s['not_above']) or 'none'}."]
        above = [r for r in s["calibration"] if r["extrapolation"]]
        if above:
            lines.append("Above every checkpoint: " + "; ".join(
                f"prompt {r['prompt']:.2f} gave validation median {r['val_median']:.2f}, test mean {r['test_mean']:.2f}"
                for r in above) + ".")
    return "\n".join(lines) + "\n"


def plot_calibration(report: dict, out_dir: str | os.PathLike) -> Path:
    """calibration.png: per split, each task's median validation accuracy against the prompt, the median over
    tasks joined, the test median, the diagonal and the zoo's range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pr = report["prompted"]
    splits = [x for x in SPLITS if x in pr["splits"]]
    fig, axes = plt.subplots(1, len(splits), figsize=(5.5 * len(splits), 4.5), squeeze=False)
    for ax, split in zip(axes[0], splits):
        s = pr["splits"][split]
        ps = [r["prompt"] for r in s["calibration"]]
        for e in report["per_task"].values():
            if e["split"] == split:
                meds = [statistics.median(_of_prompt(e["val"], e["prompt"], p)) for p in ps]
                ax.plot(ps, meds, color="C0", alpha=0.15, linewidth=0.8)
        ax.plot(ps, [r["val_median"] for r in s["calibration"]], "o-", color="C0", label="validation, median over tasks")
        ax.plot(ps, [r["test_median"] for r in s["calibration"]], "s--", color="C1", label="test, median over tasks")
        finish_axes(ax, ps, pr["prompt_range"], "zoo's validation range")
        ax.set_title(f"{split} tasks ({s['calibration'][0]['tasks']}): thin lines one task each", fontsize=10)
    return save_calibration(fig, out_dir)

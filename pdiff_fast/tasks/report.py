"""The measures, table and plots of a dataset-conditioned run (pdiff_fast.tasks.pdiff).

Zero-shot (no training): per task, the test accuracy of every model of each method; a method's
task score is the mean over its models; the table gives, over the tasks of a split, the mean
and the worst of those scores and the mean of each task's best model.

Fine-tuning (held-out tasks): every start row is trained on its task (pdiff_fast.tasks.zoo), its test
accuracy recorded along the way. A row reaches 95% of its final accuracy at the first recorded
step where its accuracy is at least 0.95 x its accuracy at the last step; the table gives the
median over rows of that step, and the mean final accuracy.

Targets (issue 15): on held-out tasks, generated weights above random initialisation and the zoo
mean before any training, and reaching 95% of the final accuracy in at most half the steps that
random initialisation needs. Each is computed from the numbers, met or not.
"""
from __future__ import annotations

import os
import statistics
from pathlib import Path

from ..pipeline.report import _save

METHODS = ("generated", "unconditional", "random init", "zoo mean", "nearest task", "zoo (own task)")
SPLITS = ("held out", "seen")
STARTS = ("generated", "random", "nearest task")  # fine-tuning starts


def _mean(v):
    v = [a for a in v if a == a]
    return sum(v) / len(v) if v else None


def summarize_zero_shot(per_task: dict) -> dict:
    """{split: {method: {"mean", "worst", "best_mean", "tasks"}}} from per_task[name]["accuracy"][method] lists."""
    out = {}
    for split in SPLITS:
        rows = [r for r in per_task.values() if r["split"] == split]
        out[split] = {}
        for m in METHODS:
            scores = [_mean(r["accuracy"][m]) for r in rows if m in r["accuracy"]]
            scores = [s for s in scores if s is not None]
            if not scores:
                continue
            best = [max(a for a in r["accuracy"][m] if a == a) for r in rows if m in r["accuracy"]
                    and any(a == a for a in r["accuracy"][m])]
            out[split][m] = {"mean": _mean(scores), "worst": min(scores), "best_mean": _mean(best),
                             "tasks": len(scores)}
    return out


def steps_to_fraction(curve: list[float], steps: list[int], fraction: float = 0.95) -> int | None:
    """The first recorded step at which the accuracy is >= fraction x the last one (None: not finite)."""
    final = curve[-1]
    if final != final:
        return None
    for s, a in zip(steps, curve):
        if a == a and a >= fraction * final:
            return s
    return steps[-1]


def summarize_finetune(steps: list[int], curves: dict[str, list[list[float]]]) -> dict:
    """curves[start] = per-row accuracy lists along `steps` -> {start: {"mean_curve", "final", "start",
    "steps_to_95"}}."""
    out = {}
    for name, rows in curves.items():
        reach = [steps_to_fraction(r, steps) for r in rows]
        reach = [s for s in reach if s is not None]
        out[name] = {"mean_curve": [_mean([r[j] for r in rows]) for j in range(len(steps))],
                     "start": _mean([r[0] for r in rows]), "final": _mean([r[-1] for r in rows]),
                     "steps_to_95": statistics.median(reach) if reach else None, "rows": len(rows)}
    return out


def targets(zero_shot: dict, finetune: dict) -> dict:
    held = zero_shot.get("held out", {})
    gen = held.get("generated", {}).get("mean")
    out = {}
    for other in ("random init", "zoo mean"):
        base = held.get(other, {}).get("mean")
        out[f"above {other}"] = {"generated": gen, other: base,
                                 "met": None if gen is None or base is None else gen > base}
    g, r = finetune.get("generated", {}).get("steps_to_95"), finetune.get("random", {}).get("steps_to_95")
    out["half the steps of random init"] = {"generated": g, "random": r,
                                            "met": None if g is None or r is None else g <= 0.5 * r}
    return out


def _starts(finetune: dict) -> list[tuple[str, dict]]:
    """The fine-tuning starts in a fixed order (JSON files keep keys sorted)."""
    order = {name: i for i, name in enumerate(STARTS)}
    return sorted(finetune.items(), key=lambda kv: order.get(kv[0], len(order)))


def _f(v, digits=2):
    return "—" if v is None else f"{v:.{digits}f}"


def format_report(report: dict) -> str:
    zs, ft = report["zero_shot"], report["finetune"]
    lines = [f"# Dataset-conditioned generation: {len(report['tasks']['held out'])} held-out and "
             f"{len(report['tasks']['seen'])} seen tasks", "",
             "## No training: test accuracy (%)", "",
             "| method | held out: mean | worst task | best model (mean) "
             "| seen: mean | worst task | best model (mean) |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for m in METHODS:
        cells = []
        for split in SPLITS:
            s = zs.get(split, {}).get(m)
            cells += [_f(s and s["mean"]), _f(s and s["worst"]), _f(s and s["best_mean"])]
        if any(c != "—" for c in cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    zoo = report.get("zoo", {})
    if zoo.get("loop_models_per_second"):
        lines += ["", f"Zoo: {zoo['models']} models trained at once, {zoo['models_per_second']:.1f} models/s "
                      f"({zoo['loop_models_per_second']:.1f} models/s one at a time, "
                      f"{zoo['models_per_second'] / zoo['loop_models_per_second']:.1f}x); median test accuracy "
                      f"{zoo['median_accuracy']:.2f}."]
    sweep = report.get("guidance_sweep")
    if sweep:
        lines += ["", "## Guidance scale (held-out tasks, no training)", "",
                  "| scale | mean accuracy | worst task |", "|---:|---:|---:|"]
        lines += [f"| {k} | {_f(v['mean'])} | {_f(v['worst'])} |" for k, v in sweep.items()]
        lines.append(f"\nThe table above uses scale {report['config']['guidance']:g}.")
    lines += ["", f"## Fine-tuning on the held-out tasks ({report['finetune_steps']} SGD steps, batch "
                  f"{report['batch_size']}, lr {report['finetune_lr']})", "",
              "| start | rows | accuracy at step 0 | final accuracy | steps to 95% of final (median) |",
              "|---|---:|---:|---:|---:|"]
    for name, s in _starts(ft):
        lines.append(f"| {name} | {s['rows']} | {_f(s['start'])} | {_f(s['final'])} | {_f(s['steps_to_95'], 0)} |")
    lines += ["", "## Targets (held-out tasks)", ""]
    for name, t in report["targets"].items():
        verdict = {True: "met", False: "not met", None: "undetermined"}[t["met"]]
        nums = ", ".join(f"{k} {_f(v, 2 if 'above' in name else 0)}" for k, v in t.items() if k != "met")
        lines.append(f"- generated {name}: **{verdict}** ({nums})")
    if report.get("timings"):
        lines += ["", "## Wall time (s)", "", "| step | s |", "|---|---:|"]
        lines += [f"| {k} | {v:.1f} |" for k, v in report["timings"].items()]
    return "\n".join(lines) + "\n"


def titles(report: dict) -> dict[str, str]:
    held = report["zero_shot"].get("held out", {})
    parts = [f"{m} {held[m]['mean']:.1f}" for m in ("generated", "random init", "zoo mean", "nearest task")
             if m in held]
    ft = report["finetune"]
    steps = [f"{n} {_f(s['steps_to_95'], 0)}" for n, s in _starts(ft)]
    return {"zero_shot": "Held-out tasks, no training, mean accuracy: " + ", ".join(parts),
            "finetune": "Held-out tasks: steps to 95% of the final accuracy (median): " + ", ".join(steps)}


def plot_report(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    title = titles(report)
    paths = []

    fig, ax = plt.subplots(figsize=(7, 4))
    zs = report["zero_shot"]
    width = 0.38
    for k, split in enumerate(SPLITS):
        methods = [m for m in METHODS if m in zs.get(split, {})]
        xs = [METHODS.index(m) + (k - 0.5) * width for m in methods]
        ax.bar(xs, [zs[split][m]["mean"] for m in methods], width, label=f"{split} tasks (mean)")
        ax.scatter(xs, [zs[split][m]["worst"] for m in methods], color="k", s=10, zorder=3,
                   label="worst task" if k == 0 else None)
    ax.set_xticks(range(len(METHODS)), METHODS, rotation=20, fontsize=8)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title["zero_shot"], fontsize=8)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "zero_shot.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    steps = report["finetune_record"]
    for name, s in _starts(report["finetune"]):
        ax.plot(steps, s["mean_curve"], marker="o", ms=3, label=f"from {name} (n={s['rows']})")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("SGD steps on the held-out task")
    ax.set_ylabel("test accuracy (%), mean over rows")
    ax.set_title(title["finetune"], fontsize=8)
    ax.legend(fontsize=7)
    paths.append(_save(fig, out_dir / "finetune.png"))
    plt.close(fig)
    return paths

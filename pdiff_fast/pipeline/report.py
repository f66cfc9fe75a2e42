"""Plots of a run: accuracy distributions (original vs generated), the paper's figure of max IoU
to the originals against accuracy, and distance to the nearest original against accuracy.
Titles state numbers taken from the report, never a conclusion written in advance."""
from __future__ import annotations

import os
from pathlib import Path

from ..io import save_figure as _save


def _finish(fig, ax, xlabel: str, title: str, path: Path) -> Path:
    """Accuracy on y, the labels, a small legend; saved and closed."""
    import matplotlib.pyplot as plt

    ax.set_xlabel(xlabel)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)
    return path


def _baselines(report: dict) -> dict:
    """Every baseline with per-model values: fixed-σ noise, then the others (ensemble excluded: no parameters)."""
    out = {f"original + noise σ={s}": b for s, b in report.get("noise_baselines", {}).items()}
    out.update({name: b for name, b in report.get("baselines", {}).items() if b.get("nn_distance") is not None})
    return out


def titles(report: dict) -> dict[str, str]:
    """The three plot titles, each built from the report's numbers."""
    gen_acc, orig_acc = report["generated"]["median"], report["original"]["median"]
    base = report.get("baselines", {})
    iou = f"Mean max IoU to the originals: generated {report['iou']['generated_original_max_mean']:.3f}"
    for name in ("noise matched", "interpolation"):
        if name in base:
            iou += f", {name} {base[name]['max_iou_mean']:.3f}"
    out = {"accuracy": f"Median test accuracy: generated {gen_acc:.2f}, original {orig_acc:.2f}", "iou": iou}
    v, tau = report.get("verdict"), report.get("novelty", {}).get("tau")
    if v and v.get("distance_ratio") is not None:
        out["distance"] = (f"Generated: median distance to the nearest original {v['distance_ratio']:.2f}x "
                           f"the originals' spacing ({tau:.3g}); verdict: {v['label']}")
    elif v and "median_distance" in v:
        out["distance"] = f"Generated: median distance to the nearest original {v['median_distance']:.3g}"
    else:
        out["distance"] = "Distance to the nearest original"
    return out


def plot_report(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pm = report["per_model"]
    title = titles(report)
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    orig, gen = pm["original_accuracy"], [a for a in pm["generated_accuracy"] if a == a]
    lo, hi = min(orig + gen), max(orig + gen)
    bins = [lo + (hi - lo + 1e-9) * i / 30 for i in range(31)]
    ax.hist(orig, bins=bins, alpha=0.6, label=f"original (n={len(orig)})")
    ax.hist(gen, bins=bins, alpha=0.6, label=f"generated (n={len(gen)})")
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("models")
    ax.set_title(title["accuracy"], fontsize=10)
    ax.legend()
    paths.append(_save(fig, out_dir / "accuracy_distribution.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    ax.scatter(pm["generated_max_iou"], pm["generated_accuracy"], s=12, label="generated", zorder=3)
    for name, b in _baselines(report).items():
        ax.scatter(b["max_iou"], b["accuracy"], s=12, alpha=0.6, label=name)
    ax.axhline(max(orig), color="gray", linestyle="--", linewidth=1, label="best original")
    paths.append(_finish(fig, ax, "max IoU of wrong predictions to the originals", title["iou"],
                         out_dir / "iou_vs_accuracy.png"))

    if "generated_nn_distance" in pm:
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        ax.scatter(pm["generated_nn_distance"], pm["generated_accuracy"], s=12, label="generated", zorder=3)
        ax.scatter(pm["original_nn_distance"], pm["original_accuracy"], s=12, marker="x",
                   label="original (to the nearest other original)")
        for name, b in _baselines(report).items():
            ax.scatter(b["nn_distance"], b["accuracy"], s=12, alpha=0.6, label=name)
        tau = report.get("novelty", {}).get("tau")
        if tau is not None and tau == tau:
            ax.axvline(tau, color="gray", linestyle=":", linewidth=1, label="originals' spacing (tau)")
        ax.set_xscale("symlog", linthresh=max(1e-4, (tau or 1e-3) / 10))  # linear near 0: copies stay on the plot
        ax.set_xlim(left=0)
        paths.append(_finish(fig, ax, "distance to the nearest original (RMS, standardised per tensor)",
                             title["distance"], out_dir / "distance_vs_accuracy.png"))
    return paths

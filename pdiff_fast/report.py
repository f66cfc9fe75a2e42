"""Plots of a run: accuracy distributions (original vs generated) and the paper's figure of
max IoU to the originals against accuracy."""
from __future__ import annotations

import os
from pathlib import Path


def _save(fig, path: Path) -> Path:
    from .io import _write_atomic

    _write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
    return path


def plot_report(report: dict, out_dir: str | os.PathLike) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pm = report["per_model"]
    paths = []

    fig, ax = plt.subplots(figsize=(6, 4))
    orig, gen = pm["original_accuracy"], [a for a in pm["generated_accuracy"] if a == a]
    lo, hi = min(orig + gen), max(orig + gen)
    bins = [lo + (hi - lo + 1e-9) * i / 30 for i in range(31)]
    ax.hist(orig, bins=bins, alpha=0.6, label=f"original (n={len(orig)})")
    ax.hist(gen, bins=bins, alpha=0.6, label=f"generated (n={len(gen)})")
    ax.set_xlabel("test accuracy (%)")
    ax.set_ylabel("models")
    ax.set_title("Accuracy of original and p-diff generated models")
    ax.legend()
    paths.append(_save(fig, out_dir / "accuracy_distribution.png"))
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter(pm["generated_max_iou"], pm["generated_accuracy"], s=12, label="generated")
    for sigma, b in report.get("noise_baselines", {}).items():
        ax.scatter(b["max_iou"], b["accuracy"], s=12, alpha=0.6, label=f"original + noise σ={sigma}")
    ax.axhline(max(orig), color="gray", linestyle="--", linewidth=1, label="best original")
    ax.set_xlabel("max IoU of wrong predictions to the originals")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs similarity of wrong predictions to the originals")
    ax.legend(fontsize=8)
    paths.append(_save(fig, out_dir / "iou_vs_accuracy.png"))
    plt.close(fig)
    return paths

"""What a prompted run is judged by (PromptedPDiff.evaluate): does the generator give the accuracy it
is asked for, and, at the highest accuracy it gives on request, does it beat what needs no learning?

- calibration: for each prompt, the generated models' validation accuracy (the split the prompts
  are labelled on) and test accuracy (scored only), as G.pt's prompted-vs-achieved figure;
- a prompt is honoured when its models' median validation accuracy is within HONOURED_WITHIN points
  of it; prompts above the best checkpoint's validation accuracy are the extrapolation rows, reported
  as measured;
- the judged prompt: the highest honoured one (none honoured: the one missed by least, said so). Its
  models are judged by pdiff_fast.evaluation.judge against the checkpoints that reach that prompt on
  validation (validation accuracy >= prompt - HONOURED_WITHIN; at least the best two): the originals,
  their noise, interpolation, weight mean and output ensemble, the novelty measures and the verdict.
  Judging against the whole span population (most of it far below) would flatter the prompt.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from torch import nn

from ..evaluation.judge import evaluate, evaluate_rows
from ..evaluation.novelty import summary
from ..pipeline.collect import Population

HONOURED_WITHIN = 1.0  # points of validation accuracy between a prompt and its models' median


def _stats(acc: torch.Tensor) -> dict:
    s = summary(acc)
    finite = acc[torch.isfinite(acc)].double()
    s["std"] = finite.std().item() if finite.numel() > 1 else math.nan
    return s


def calibrate(base_model: nn.Module, pop: Population, generated: torch.Tensor, prompt: torch.Tensor,
              x_val: torch.Tensor, y_val: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
              noise_sigmas, seed: int, memory_budget_bytes: int) -> dict:
    """The report of the module docstring: judge.evaluate's report at the judged prompt, plus
    report["prompted"] (calibration rows, honoured prompts, the judged prompt and its originals)."""
    if prompt.shape != (generated.shape[0],):
        raise ValueError(f"one prompt per generated model is needed, got {tuple(prompt.shape)} for "
                         f"{generated.shape[0]} models")
    spec, budget = pop.spec, memory_budget_bytes
    val = evaluate_rows(base_model, spec, generated, x_val, y_val, budget, shard=True).accuracy.cpu()
    test = evaluate_rows(base_model, spec, generated, x_test, y_test, budget, shard=True).accuracy.cpu()
    lo, hi = float(pop.val_accuracy.min()), float(pop.val_accuracy.max())
    rows = []
    for p in sorted(set(prompt.tolist())):
        mine = prompt == p
        v, t = _stats(val[mine]), _stats(test[mine])
        miss = v["median"] - p
        rows.append({"prompt": p, "n": int(mine.sum()), "val": v, "test": t, "miss": miss,
                     "honoured": bool(abs(miss) <= HONOURED_WITHIN), "extrapolation": p > hi})
    honoured = [r for r in rows if r["honoured"]]
    judged = max(honoured, key=lambda r: r["prompt"]) if honoured else min(
        rows, key=lambda r: abs(r["miss"]) if r["miss"] == r["miss"] else math.inf)
    p = judged["prompt"]
    reach = pop.val_accuracy >= p - HONOURED_WITHIN
    if int(reach.sum()) < 2:
        reach = torch.zeros_like(reach)
        reach[pop.val_accuracy.topk(min(2, len(reach))).indices] = True
    report = evaluate(base_model, spec, pop.params[reach].to(generated.device), generated[prompt == p],
                      x_test, y_test, noise_sigmas=noise_sigmas, seed=seed, memory_budget_bytes=budget, shard=True)
    report["prompted"] = {
        "calibration": rows, "honoured_within": HONOURED_WITHIN,
        "highest_honoured": judged["prompt"] if honoured else None, "judged_prompt": p,
        "judged_originals": int(reach.sum()), "prompt_range": [lo, hi],
        "original_val": _stats(pop.val_accuracy), "original_test": _stats(pop.accuracy),
        "best_original_val": {"val": hi, "test": float(pop.accuracy[pop.val_accuracy.argmax()])},
        "per_model": {"prompt": prompt.tolist(), "val_accuracy": val.tolist(), "test_accuracy": test.tolist()},
    }
    return report


def _f(v, fmt=".2f") -> str:
    return "—" if v is None or v != v else format(v, fmt)


def format_calibration(report: dict) -> str:
    """The calibration table and a sentence per finding, all from report["prompted"]."""
    pr = report["prompted"]
    lo, hi = pr["prompt_range"]
    lines = [f"Prompted generation: the checkpoints' validation accuracy spans {lo:.2f}..{hi:.2f} (median "
             f"{pr['original_val']['median']:.2f}, n = {pr['original_val']['n']}); a prompt is honoured when its "
             f"models' median validation accuracy is within {pr['honoured_within']:g} points of it.", "",
             "| prompt (val %) | models | val median | val mean ± std | test median | test best | miss | honoured |",
             "|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in pr["calibration"]:
        tag = "yes" if r["honoured"] else "no"
        if r["extrapolation"]:
            tag += " (above every checkpoint)"
        lines.append(f"| {r['prompt']:.2f} | {r['n']} | {_f(r['val']['median'])} | {_f(r['val']['mean'])} ± "
                     f"{_f(r['val']['std'])} | {_f(r['test']['median'])} | {_f(r['test']['best'])} | "
                     f"{_f(r['miss'], '+.2f')} | {tag} |")
    lines.append("")
    if pr["highest_honoured"] is None:
        lines.append(f"No prompt was honoured; the table below judges the models of prompt {pr['judged_prompt']:.2f}, "
                     "the one missed by least.")
    else:
        lines.append(f"Highest prompt honoured: {pr['highest_honoured']:.2f}. The table below judges its models "
                     f"against the {pr['judged_originals']} checkpoints whose validation accuracy reaches it "
                     f"(>= prompt - {pr['honoured_within']:g}) and the baselines made from them, on the test set.")
    above = [r for r in pr["calibration"] if r["extrapolation"]]
    if above:
        best = pr["best_original_val"]
        lines.append("Above every checkpoint (best checkpoint: validation " f"{best['val']:.2f}, test {best['test']:.2f}): "
                     + "; ".join(f"prompt {r['prompt']:.2f} gave validation median {_f(r['val']['median'])}, test "
                                 f"median {_f(r['test']['median'])}" for r in above) + ".")
    return "\n".join(lines)


def plot_calibration(report: dict, out_dir: str | os.PathLike) -> Path:
    """calibration.png: each model's achieved validation and test accuracy against its prompt, the
    medians joined, the diagonal (a perfect answer) and the checkpoints' range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pr = report["prompted"]
    pm = pr["per_model"]
    fig, ax = plt.subplots(figsize=(6, 4.5))
    ax.scatter(pm["prompt"], pm["val_accuracy"], s=8, alpha=0.35, label="generated, validation")
    ax.scatter(pm["prompt"], pm["test_accuracy"], s=8, alpha=0.35, marker="x", label="generated, test")
    ps = [r["prompt"] for r in pr["calibration"]]
    ax.plot(ps, [r["val"]["median"] for r in pr["calibration"]], "o-", label="validation median")
    ax.plot(ps, [r["test"]["median"] for r in pr["calibration"]], "s--", label="test median")
    finish_axes(ax, ps, pr["prompt_range"], "checkpoints' validation range")
    ax.set_title("accuracy asked for vs accuracy given", fontsize=10)
    return save_calibration(fig, out_dir)


def finish_axes(ax, prompts: list[float], prompt_range, range_label: str) -> None:
    """What every calibration panel has: the diagonal (a perfect answer), the labelled range, axes, legend."""
    ax.plot([min(prompts), max(prompts)], [min(prompts), max(prompts)], color="gray", linewidth=1,
            label="achieved = prompted")
    ax.axvspan(*prompt_range, color="gray", alpha=0.1, label=range_label)
    ax.set_xlabel("prompted validation accuracy (%)")
    ax.set_ylabel("achieved accuracy (%)")
    ax.legend(fontsize=7)


def save_calibration(fig, out_dir: str | os.PathLike) -> Path:
    """fig as <out_dir>/calibration.png, then closed."""
    import matplotlib.pyplot as plt

    from ..io import save_figure

    fig.tight_layout()
    path = Path(out_dir) / "calibration.png"
    save_figure(fig, path)
    plt.close(fig)
    return path

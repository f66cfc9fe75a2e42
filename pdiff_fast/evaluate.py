"""Evaluation of generated parameters and the paper's memorisation analysis.

Accuracy of every original and generated model on the test set (batched, see population.py),
best / mean / median, and the IoU of the sets of wrongly predicted test samples:
original-original, generated-generated, generated-original (mean, and each generated model's
max over the originals), with noise-added originals as baselines.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .params import ParamSpec

NOISE_SIGMAS = (0.01, 0.05, 0.1)


def summary(acc: torch.Tensor) -> dict[str, float]:
    acc = acc[torch.isfinite(acc)].double()
    if acc.numel() == 0:
        return {"best": math.nan, "mean": math.nan, "median": math.nan, "n": 0}
    return {"best": acc.max().item(), "mean": acc.mean().item(), "median": acc.median().item(), "n": acc.numel()}


def _off_diagonal_mean(m: torch.Tensor) -> float:
    n = m.shape[0]
    if n < 2:
        return math.nan
    mask = ~torch.eye(n, dtype=torch.bool, device=m.device)
    return m[mask].double().mean().item()


def evaluate(base_model: nn.Module, spec: ParamSpec, original: torch.Tensor, generated: torch.Tensor,
             x_test: torch.Tensor, y_test: torch.Tensor, *, noise_sigmas=NOISE_SIGMAS, seed: int = 0,
             memory_budget_bytes: int = 1 << 30) -> dict:
    """Judge generated (N, D) parameters against the original (K, D) checkpoints."""
    from .population import evaluate_population, iou_matrix

    for name, t in (("original", original), ("generated", generated)):
        if t.dim() != 2 or t.shape[1] != spec.dim:
            raise ValueError(f"{name} parameters must be (N, {spec.dim}), got {tuple(t.shape)}")
    run = lambda flat: evaluate_population(base_model, spec, flat, x_test, y_test,  # noqa: E731
                                           memory_budget_bytes=memory_budget_bytes)
    orig, gen = run(original), run(generated)
    oo = iou_matrix(orig.wrong, orig.wrong)
    gg = iou_matrix(gen.wrong, gen.wrong)
    go = iou_matrix(gen.wrong, orig.wrong)  # (N, K)
    gen_max_iou = go.max(dim=1).values  # (N,)
    report = {
        "original": summary(orig.accuracy),
        "generated": summary(gen.accuracy),
        "generated_nonfinite": int((~gen.finite).sum().item()),
        "iou": {
            "original_original_mean": _off_diagonal_mean(oo),
            "generated_generated_mean": _off_diagonal_mean(gg),
            "generated_original_mean": go.double().mean().item(),
            "generated_original_max_mean": gen_max_iou.double().mean().item(),
            "generated_original_max": gen_max_iou.max().item(),
        },
        "per_model": {
            "original_accuracy": orig.accuracy.tolist(),
            "generated_accuracy": gen.accuracy.tolist(),
            "generated_max_iou": gen_max_iou.tolist(),
        },
        "noise_baselines": {},
    }
    gen_t = torch.Generator(device=original.device).manual_seed(seed)
    for sigma in noise_sigmas:
        noisy = original + sigma * torch.randn(original.shape, generator=gen_t, device=original.device)
        res = run(noisy)
        max_iou = iou_matrix(res.wrong, orig.wrong).max(dim=1).values
        report["noise_baselines"][str(sigma)] = {
            **summary(res.accuracy),
            "max_iou_mean": max_iou.double().mean().item(),
            "accuracy": res.accuracy.tolist(),
            "max_iou": max_iou.tolist(),
        }
    return report


def format_table(report: dict) -> str:
    """The paper's table: original vs generated best / mean / median, and the IoU figures."""
    o, g, iou = report["original"], report["generated"], report["iou"]
    lines = [
        "| models | n | best | mean | median |",
        "|---|---:|---:|---:|---:|",
        f"| original | {o['n']} | {o['best']:.2f} | {o['mean']:.2f} | {o['median']:.2f} |",
        f"| generated (p-diff) | {g['n']} | {g['best']:.2f} | {g['mean']:.2f} | {g['median']:.2f} |",
    ]
    for sigma, b in report.get("noise_baselines", {}).items():
        lines.append(f"| original + noise σ={sigma} | {b['n']} | {b['best']:.2f} | {b['mean']:.2f} | {b['median']:.2f} |")
    lines += [
        "",
        "| IoU of wrong predictions | value |",
        "|---|---:|",
        f"| original - original (mean) | {iou['original_original_mean']:.3f} |",
        f"| generated - generated (mean) | {iou['generated_generated_mean']:.3f} |",
        f"| generated - original (mean) | {iou['generated_original_mean']:.3f} |",
        f"| generated - original (max, mean over generated) | {iou['generated_original_max_mean']:.3f} |",
        f"| generated - original (max) | {iou['generated_original_max']:.3f} |",
    ]
    for sigma, b in report.get("noise_baselines", {}).items():
        lines.append(f"| original + noise σ={sigma} - original (max, mean) | {b['max_iou_mean']:.3f} |")
    return "\n".join(lines)

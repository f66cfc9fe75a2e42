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

from . import distributed
from .params import ParamSpec

NOISE_SIGMAS = (0.01, 0.05, 0.1)


def summary(acc: torch.Tensor) -> dict[str, float]:
    acc = acc[torch.isfinite(acc)].double()
    if acc.numel() == 0:
        return {"best": math.nan, "mean": math.nan, "median": math.nan, "n": 0}
    return {"best": acc.max().item(), "mean": acc.mean().item(), "median": acc.median().item(), "n": acc.numel()}


def evaluate(base_model: nn.Module, spec: ParamSpec, original: torch.Tensor, generated: torch.Tensor,
             x_test: torch.Tensor, y_test: torch.Tensor, *, noise_sigmas=NOISE_SIGMAS, seed: int = 0,
             memory_budget_bytes: int = 1 << 30, shard: bool = False) -> dict:
    """Judge generated (N, D) parameters against the original (K, D) checkpoints.

    Memory: the working memory of each step (a tile of activations, a block of the IoU
    matrices) stays within memory_budget_bytes whatever N: the (N, N) and (N, K) IoU matrices
    are reduced block by block (iou_stats) and never held whole. Besides the inputs, what grows
    with N is O(N * (n_test / 8 + 4 * n_test / 1024 + 100)) bytes: the packed wrong-prediction
    bitsets, the smallest top-2 gap per test batch and a few per-model values (accuracy, max
    IoU, the report's per-model Python lists): about 2 MB for 15,000 models on 200 samples.

    Raises ValueError, before any work, on inputs of the wrong shape, test inputs holding
    NaN / Inf, or test labels outside [0, num_classes).

    shard=True, in a process group (pdiff_fast.distributed): each rank evaluates its share of
    every population and the results are gathered; the report is the one-process report."""
    from .population import check_test_set, iou_stats

    for name, t in (("original", original), ("generated", generated)):
        if t.dim() != 2 or t.shape[1] != spec.dim:
            raise ValueError(f"{name} parameters must be (N, {spec.dim}), got {tuple(t.shape)}")
    if x_test.shape[0] != y_test.shape[0] or y_test.dim() != 1 or x_test.shape[0] == 0:
        raise ValueError(f"x_test {tuple(x_test.shape)} and y_test {tuple(y_test.shape)} must hold the "
                         f"same (non-zero) number of samples, y_test 1-D")
    check_test_set(base_model, x_test, y_test)
    budget = memory_budget_bytes
    run = lambda flat: evaluate_rows(base_model, spec, flat, x_test, y_test, budget, shard)  # noqa: E731
    orig, gen = run(original), run(generated)
    oo = iou_stats(orig.wrong, row_max=False, memory_budget_bytes=budget)  # off-diagonal
    gg = iou_stats(gen.wrong, row_max=False, memory_budget_bytes=budget)  # off-diagonal
    go = iou_stats(gen.wrong, orig.wrong, memory_budget_bytes=budget)  # (N, K), row max over K
    report = {
        "original": summary(orig.accuracy),
        "generated": summary(gen.accuracy),
        "generated_nonfinite": int((~gen.finite).sum().item()),
        "iou": {
            "original_original_mean": oo.mean,
            "generated_generated_mean": gg.mean,
            "generated_original_mean": go.mean,
            "generated_original_max_mean": go.row_max.double().mean().item(),
            "generated_original_max": go.max,
        },
        "per_model": {
            "original_accuracy": orig.accuracy.tolist(),
            "generated_accuracy": gen.accuracy.tolist(),
            "generated_max_iou": go.row_max.tolist(),
        },
        "noise_baselines": {},
    }
    del gen
    gen_t = torch.Generator(device=original.device).manual_seed(seed)
    for sigma in noise_sigmas:
        noisy = original + sigma * torch.randn(original.shape, generator=gen_t, device=original.device)
        res = run(noisy)
        max_iou = iou_stats(res.wrong, orig.wrong, memory_budget_bytes=budget).row_max
        report["noise_baselines"][str(sigma)] = {
            **summary(res.accuracy),
            "max_iou_mean": max_iou.double().mean().item(),
            "accuracy": res.accuracy.tolist(),
            "max_iou": max_iou.tolist(),
        }
    return report


def evaluate_rows(base_model: nn.Module, spec: ParamSpec, flat: torch.Tensor, x_test: torch.Tensor,
                  y_test: torch.Tensor, memory_budget_bytes: int, shard: bool = False):
    """evaluate_population without predictions; shard=True: this rank's rows, gathered from every
    rank (a model's predictions do not depend on the models evaluated beside it)."""
    from .population import PopulationResult, evaluate_population

    if not (shard and distributed.active()):
        return evaluate_population(base_model, spec, flat, x_test, y_test,
                                   memory_budget_bytes=memory_budget_bytes, keep_predictions=False)
    n = flat.shape[0]
    start, stop = distributed.shard(n)
    if stop > start:
        mine = evaluate_population(base_model, spec, flat[start:stop], x_test, y_test,
                                   memory_budget_bytes=memory_budget_bytes, keep_predictions=False)
    else:  # more ranks than models
        width = (x_test.shape[0] + 7) // 8
        mine = PopulationResult(torch.empty(0), torch.empty((0, width), dtype=torch.uint8), None,
                                torch.empty(0, dtype=torch.bool))
    return PopulationResult(distributed.gather_rows(mine.accuracy, n), distributed.gather_rows(mine.wrong, n),
                            None, distributed.gather_rows(mine.finite, n), distributed.sum_int(mine.rechecked))


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

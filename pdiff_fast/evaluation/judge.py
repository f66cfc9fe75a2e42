"""Evaluation of generated parameters and the paper's memorisation analysis.

Accuracy of every original and generated model on the test set (batched, see population.py),
best / mean / median, and the IoU of the sets of wrongly predicted test samples:
original-original, generated-generated, generated-original (mean, and each generated model's
max over the originals). Beside them, the baselines a generator has to beat (originals + noise
of fixed sigmas and of the generated set's own distance, interpolations of two originals, the
weight mean, the output ensemble), each set's distance to the nearest original, and a verdict
computed from those numbers (pdiff_fast.evaluation.novelty says how).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .. import distributed
from . import novelty
from .novelty import summary  # noqa: F401 (judge.summary: its old home)
from ..params import ParamSpec

NOISE_SIGMAS = (0.01, 0.05, 0.1)
BASELINES = novelty.BASELINES


def _in_order(sets: dict) -> list[str]:
    """generated, original, the fixed-σ noise sets by σ, then BASELINES."""
    def rank(name: str):
        if name.startswith("noise σ="):
            return (2, float(name.split("=", 1)[1]))
        return ({"generated": 0, "original": 1}.get(name, 3 + BASELINES.index(name) if name in BASELINES else 9), 0)
    return sorted(sets, key=rank)



def evaluate(base_model: nn.Module, spec: ParamSpec, original: torch.Tensor, generated: torch.Tensor,
             x_test: torch.Tensor, y_test: torch.Tensor, *, noise_sigmas=NOISE_SIGMAS, seed: int = 0,
             memory_budget_bytes: int = 1 << 30, shard: bool = False) -> dict:
    """Judge generated (N, D) parameters against the original (K, D) checkpoints.

    Memory: the working memory of each step (a tile of activations, a block of the IoU
    matrices) stays within memory_budget_bytes whatever N: the (N, N) and (N, K) IoU matrices
    are reduced block by block (iou_stats) and never held whole. Besides the inputs, what grows
    with N is O(N * (n_test / 8 + 4 * n_test / 1024 + 100)) bytes: the packed wrong-prediction
    bitsets, the smallest top-2 gap per test batch and a few per-model values (accuracy, max
    IoU, distance to the nearest original, the report's per-model Python lists): about 2 MB for
    15,000 models on 200 samples. Each baseline holds K models (the weight mean and the ensemble
    one), whatever N.

    Raises ValueError, before any work, on inputs of the wrong shape, test inputs holding
    NaN / Inf, or test labels outside [0, num_classes).

    shard=True, in a process group (pdiff_fast.distributed): each rank evaluates its share of
    every population and the results are gathered; the report is the one-process report."""
    from .population import check_test_set, iou_stats, pack_bits

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
    oo = iou_stats(orig.wrong, memory_budget_bytes=budget)  # off-diagonal, row max over the other originals
    gg = iou_stats(gen.wrong, row_max=False, memory_budget_bytes=budget)  # off-diagonal
    go = iou_stats(gen.wrong, orig.wrong, memory_budget_bytes=budget)  # (N, K), row max over K
    std = novelty.standardizer(spec, original)
    nearest = lambda flat, **kw: novelty.nearest_distance(  # noqa: E731
        flat, original, transform=std.transform, memory_budget_bytes=budget, **kw)[0]
    orig_nn, gen_nn = nearest(original, exclude_self=True), nearest(generated)
    tau = orig_nn.nanmedian().item() if original.shape[0] > 1 else math.nan
    bar = summary(orig.accuracy)["median"]
    measures = lambda acc, dist, max_iou: novelty.set_measures(  # noqa: E731
        acc, dist, max_iou, tau=tau, accuracy_bar=bar)
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
            "original_nn_distance": orig_nn.tolist(),
            "original_max_iou": oo.row_max.tolist(),
            "generated_nn_distance": gen_nn.tolist(),
        },
        "noise_baselines": {},
        "baselines": {},
    }
    sets = {"generated": measures(gen.accuracy, gen_nn, go.row_max),
            "original": measures(orig.accuracy, orig_nn, oo.row_max)}
    del gen
    gen_t = torch.Generator(device=original.device).manual_seed(seed)

    def baseline(flat: torch.Tensor) -> dict:
        res = run(flat)
        max_iou = iou_stats(res.wrong, orig.wrong, memory_budget_bytes=budget).row_max
        dist = nearest(flat)
        return {**summary(res.accuracy), "max_iou_mean": max_iou.double().mean().item(),
                "accuracy": res.accuracy.tolist(), "max_iou": max_iou.tolist(), "nn_distance": dist.tolist(),
                "_measures": measures(res.accuracy, dist, max_iou)}

    for sigma in noise_sigmas:
        noisy = original + sigma * torch.randn(original.shape, generator=gen_t, device=original.device)
        report["noise_baselines"][str(sigma)] = baseline(noisy)
    matched_rms = sets["generated"]["nn_distance"]["median"]
    for name, flat in novelty.baseline_sets(original, std, matched_rms, seed + 1).items():
        report["baselines"][name] = baseline(flat)
    if "noise matched" in report["baselines"]:
        report["baselines"]["noise matched"]["rms"] = matched_rms
    ens_mask = novelty.ensemble_predictions(base_model, spec, original, x_test) != y_test.cpu()
    ens_wrong, ens_acc = pack_bits(ens_mask[None]), torch.tensor([100.0 * (1 - ens_mask.double().mean().item())])
    ens_iou = iou_stats(ens_wrong, orig.wrong, memory_budget_bytes=budget).row_max
    report["baselines"]["ensemble"] = {**summary(ens_acc), "max_iou_mean": ens_iou.double().mean().item(),
                                       "accuracy": ens_acc.tolist(), "max_iou": ens_iou.tolist(), "nn_distance": None,
                                       "_measures": measures(ens_acc, None, ens_iou)}
    for group in ("noise_baselines", "baselines"):
        for name, b in report[group].items():
            sets[f"noise σ={name}" if group == "noise_baselines" else name] = b.pop("_measures")
    report["novelty"] = {"distance": "RMS over the subset, each tensor standardised by the originals' mean / std; "
                                     "to the nearest original",
                         "tau": tau, "extent": novelty.spread(original, std.transform), "accuracy_bar": bar,
                         "sets": sets}
    report["verdict"] = novelty.verdict(sets, tau, report["novelty"]["extent"])
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


def _pct(v) -> str:
    return "–" if v is None or v != v else f"{100 * v:.1f}%"


def _num(v, fmt: str) -> str:
    return "–" if v is None or v != v else format(v, fmt)


def format_table(report: dict) -> str:
    """The paper's table: original vs generated best / mean / median and the IoU figures, then
    the baselines, each set's distance to the nearest original, and the verdict."""
    o, g, iou = report["original"], report["generated"], report["iou"]
    row = lambda name, b: f"| {name} | {b['n']} | {b['best']:.2f} | {b['mean']:.2f} | {b['median']:.2f} |"  # noqa: E731
    lines = [
        "| models | n | best | mean | median |",
        "|---|---:|---:|---:|---:|",
        row("original", o),
        row("generated (p-diff)", g),
    ]
    for sigma, b in report.get("noise_baselines", {}).items():
        lines.append(row(f"original + noise σ={sigma}", b))
    for name in _in_order(report.get("baselines", {})):
        b = report["baselines"][name]
        label = {"noise matched": f"original + noise, distance matched (RMS {b.get('rms', math.nan):.3g})",
                 "interpolation": "interpolation of two originals", "weight mean": "mean of the originals' weights",
                 "ensemble": "output ensemble of the originals"}.get(name, name)
        lines.append(row(label, b))
    dropped = report.get("generated_nonfinite", 0)
    if dropped:
        lines += ["", f"{dropped} of {g['n'] + dropped} generated models have NaN or Inf parameters: they are left "
                      "out of every figure here (n counts the others)."]
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
    nov = report.get("novelty")
    if nov:
        lines += [
            "",
            f"Distance: {nov['distance']}. Originals' spacing tau (median distance of an original to its nearest "
            f"other original) = {_num(nov['tau'], '.4g')}; their extent (median distance between two originals) = "
            f"{_num(nov.get('extent'), '.4g')}. New and better: accuracy above the originals' median "
            f"({nov['accuracy_bar']:.2f}) and farther than tau from every original.",
            "",
            "| set | median accuracy | median distance to nearest original | / tau | max IoU to originals (mean) "
            "| new and better |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name in _in_order(nov["sets"]):
            m = nov["sets"][name]
            dist = m["nn_distance"]["median"] if m["nn_distance"] else None
            lines.append(f"| {name} | {m['accuracy']['median']:.2f} | {_num(dist, '.4g')} | "
                         f"{_num(m['distance_ratio'], '.3f')} | {m['max_iou_mean']:.3f} | "
                         f"{_pct(m['new_and_better'])} |")
    if "verdict" in report:
        v = report["verdict"]
        beats = ", ".join(v.get("beats", [])) or "none"
        lines += ["", f"**Verdict: {v['label']}; median accuracy {v['accuracy']} the originals'; above these "
                      f"baselines: {beats}.** {v['text']}"]
    return "\n".join(lines)

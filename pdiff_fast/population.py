"""Evaluate N parameter sets of one base model on a test set in one batched pass.

    res = evaluate_population(base_model, spec, flat, x_test, y_test)   # flat: (N, D)
    res.accuracy (N,) %, res.predictions (N, n_test), res.wrong (N, W) bitset, res.finite (N,)
    iou = iou_matrix(res.wrong, res.wrong)                               # (N, N)

How it runs (the model in eval mode: BatchNorm uses the base model's running statistics):
1. The model is cut into a chain of stages: the children of an nn.Sequential (nested ones
   expanded), or the top-level children of any module whose forward is checked, with forward
   hooks on a probe batch, to call them one after the other. The stages before the first one
   that reads a generated parameter (the prefix) run ONCE per test batch, shared by all models.
2. The rest runs for a chunk of models at once, stage by stage, on (m, B, ...) activations:
   stages without generated parameters fold the model axis into the batch (one conv / linear
   call for m * B samples, same kernels as one model); a BatchNorm / LayerNorm whose affine is
   generated, and the ReLU after it, is one `norm_affine_act` call of the extension; any
   other stage runs under torch.func.vmap(functional_call) with only the generated parameters
   batched. A model that is not such a chain runs whole under vmap.
3. Chunks of models and sub-batches of samples are sized to the memory budget (and to the
   cache). Models whose parameters hold NaN/Inf are not run: finite False, accuracy NaN,
   predictions -1, every sample marked wrong (so accuracy summaries must filter on finite).
4. Predictions equal those of `evaluate_one_by_one` (same batch size): the batched logits of
   the first model (and the last, from 64 models on) are compared with the reference's on the
   first batch; every (model, batch) holding a sample whose top-2 logit gap is within 64x the
   largest difference seen (an exact tie when the logits are bitwise equal, as they are for the
   BatchNorm / LayerNorm + ReLU CNNs and MLPs here) is recomputed by the reference. A
   calibrated check, not a proof: it assumes no other model strays 64x further than those.

On CPU, the first call runs `warm_allocator()` (see there: glibc page-faults multi-MB tensors
in again on every allocation otherwise).

Memory: besides the activations of one tile (bounded by memory_budget_bytes), a call keeps
per model only its wrong-prediction bitset (ceil(n_test / 8) bytes), a few scalars and the
smallest top-2 gap of each test batch (4 bytes per batch); the generated parameters are
unflattened chunk by chunk (all at once when they take under a quarter of the budget).
`predictions` (N, n_test) int64 is kept only when keep_predictions=True (the default;
evaluate() does not keep them).

`evaluate_one_by_one` is the slow reference (one model at a time, as the original code).

Where the parts live (all importable from here, as before):
- steps 1-2, the stage planner and the per-model suffix: pdiff_fast.population_plan;
- the fused norm affine + activation: pdiff_fast.ops.norm_affine_act (`norm_affine_act_torch`);
- the bitsets and their IoU: pdiff_fast.ops.iou_matrix: `pack_bits` / `unpack_bits`,
  `iou_matrix` (|A & B| / |A | B|, 1.0 for two empty sets, with the popcount kernel of the
  extension), its reference `iou_matrix_torch` on bool tensors, and `iou_stats`, the IoU matrix
  of two populations (or of one with itself, diagonal left out) reduced to its mean, row maxima
  and maximum block by block, within a memory budget, never holding the whole (Na, Nb) matrix.
"""
from __future__ import annotations

import contextlib
import copy
import math
import sys
from dataclasses import dataclass

import torch
from torch import nn

# the names marked F401 moved to pdiff_fast.ops (iou_matrix.py, norm_affine_act.py) and are
# re-exported: importable from here as before
from .ops.iou_matrix import (
    IOU_BLOCK_BYTES_PER_VALUE,  # noqa: F401
    IOU_TORCH_BYTES_PER_BIT,  # noqa: F401
    IOU_TORCH_BYTES_PER_VALUE,  # noqa: F401
    IoUStats,  # noqa: F401
    iou_matrix,  # noqa: F401
    iou_matrix_torch,  # noqa: F401
    iou_stats,  # noqa: F401
    pack_bits,
    unpack_bits,  # noqa: F401
)
from .ops.norm_affine_act import norm_affine_act_torch  # noqa: F401
from .params import ParamSpec
from .population_plan import _Plan, _plan, _run_suffix

CACHE_TILE_BYTES = 8 << 20  # widest activation of one (models x samples) tile: stays in cache
MEMORY_SAFETY = 4  # live activations per stage ~ input + output + temporaries
CALIBRATION_MARGIN = 64.0  # recheck gaps within 64x the observed batched-vs-reference difference


@dataclass
class PopulationResult:
    accuracy: torch.Tensor  # (N,) float32, percent; NaN where finite is False
    wrong: torch.Tensor  # (N, W) uint8, W = ceil(n_test / 8): bit k of byte w = sample 8w + k wrong
    predictions: torch.Tensor | None  # (N, n_test) int64; -1 where finite is False; None unless kept
    finite: torch.Tensor  # (N,) bool: all parameters finite (the model was evaluated)
    rechecked: int = 0  # (model, batch) pairs recomputed by the reference path


# --- evaluation ------------------------------------------------------------------------------

_ALLOCATOR_WARMED = False


def warm_allocator() -> None:
    """Let glibc serve the evaluator's activations (a few MB each) from its heap.

    glibc returns blocks above its mmap threshold (128 KiB at start) straight to the OS, so
    every such tensor is page-faulted in again on first touch, which in a VM can cost more than
    the convolution that fills it. Freeing one 31 MiB block raises glibc's own adaptive
    threshold to 31 MiB (and its trim threshold to 62 MiB): later blocks up to that size are
    reused. Process-wide and idempotent; benchmarks call it before timing any path.
    """
    global _ALLOCATOR_WARMED
    if _ALLOCATOR_WARMED or not sys.platform.startswith("linux"):
        return
    block = torch.empty(31 << 20, dtype=torch.uint8)
    block[:: 4096] = 0  # touch it, as a real allocation would be
    del block
    _ALLOCATOR_WARMED = True


@contextlib.contextmanager
def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _check(spec: ParamSpec, flat: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor):
    if flat.dim() != 2 or flat.shape[1] != spec.dim:
        raise ValueError(f"expected parameters of shape (N, {spec.dim}), got {tuple(flat.shape)}")
    if flat.shape[0] == 0:
        raise ValueError("no parameter sets given (N = 0)")
    if x_test.shape[0] != y_test.shape[0] or y_test.dim() != 1 or x_test.shape[0] == 0:
        raise ValueError(f"x_test {tuple(x_test.shape)} and y_test {tuple(y_test.shape)} must hold the "
                         f"same (non-zero) number of samples, y_test 1-D")


def check_test_set(base_model: nn.Module, x_test: torch.Tensor, y_test: torch.Tensor) -> None:
    """Raise ValueError when the test inputs hold NaN / Inf (every model would be scored on
    garbage) or a label lies outside [0, num_classes), num_classes read from the model's
    output on one sample. Cheap: one pass over x_test (in chunks of about 16 MB of masks) and
    y_test, one forward of one sample."""
    if x_test.is_floating_point() or x_test.is_complex():
        step = max(1, (16 << 20) // max(1, x_test[0].numel()))
        bad = sum(int((~torch.isfinite(x_test[i:i + step])).sum()) for i in range(0, x_test.shape[0], step))
        if bad:
            raise ValueError(f"test inputs contain NaN or Inf: {bad} non-finite values in x_test "
                             f"{tuple(x_test.shape)}")
    if y_test.dtype == torch.bool or y_test.is_complex() or y_test.numel() == 0 or x_test.shape[0] == 0:
        return
    device = next(base_model.parameters()).device
    with torch.no_grad(), _eval_mode(base_model):
        out = base_model(x_test[:1].to(device))
    if not isinstance(out, torch.Tensor) or out.dim() != 2:
        return  # evaluate_population reports outputs that are not (batch, classes) logits
    num_classes = out.shape[1]
    outside = ~((y_test >= 0) & (y_test < num_classes))  # NaN labels count as outside
    if outside.any():
        first = outside.nonzero()[0, 0].item()
        raise ValueError(f"test labels must lie in [0, {num_classes}) (the model outputs {num_classes} "
                         f"classes): {int(outside.sum())} do not, e.g. y_test[{first}] = {y_test[first].item()}")


_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def _wrong_counts(bits: torch.Tensor, budget: int = 64 << 20) -> torch.Tensor:
    """(N, W) uint8 bitsets -> (N,) int64 number of set bits, in row blocks."""
    table = _POPCOUNT.to(bits.device)
    step = max(1, budget // (16 * max(1, bits.shape[1])))
    return torch.cat([table[bits[i:i + step].long()].sum(1) for i in range(0, bits.shape[0], step)])


def _accuracy(wrong: torch.Tensor, finite: torch.Tensor, n_test: int) -> torch.Tensor:
    """Percent correct from the wrong bitsets; NaN where finite is False. Same float32 values
    as (preds == y).float().mean(1) * 100: the count is exact, then one division."""
    accuracy = (n_test - _wrong_counts(wrong)).float() / n_test * 100
    accuracy[~finite] = float("nan")
    return accuracy


def _write_bits(bits: torch.Tensor, rows, c0: int, mask: torch.Tensor) -> None:
    """Set bits[rows] columns c0 .. c0 + n to the (m, n) bool mask, leaving the others."""
    n = mask.shape[1]
    lo, w0, w1 = c0 % 8, c0 // 8, (c0 + n + 7) // 8
    padded = torch.zeros(mask.shape[0], (w1 - w0) * 8, dtype=torch.bool)
    padded[:, lo:lo + n] = mask.cpu()
    keep = torch.ones(1, (w1 - w0) * 8, dtype=torch.bool)
    keep[:, lo:lo + n] = False
    bits[rows, w0:w1] = (bits[rows, w0:w1] & pack_bits(keep)) | pack_bits(padded)


def _result(preds: torch.Tensor, finite: torch.Tensor, y_test: torch.Tensor, rechecked: int) -> PopulationResult:
    wrong = pack_bits(preds != y_test.to(preds.device))  # (N, W)
    return PopulationResult(_accuracy(wrong, finite, preds.shape[1]), wrong, preds, finite, rechecked)


def evaluate_one_by_one(base_model: nn.Module, spec: ParamSpec, flat: torch.Tensor, x_test: torch.Tensor,
                        y_test: torch.Tensor, *, batch_size: int = 1024) -> PopulationResult:
    """The slow reference: one deep copy of the base model, each row loaded into it and run
    over the test set in batches of `batch_size` (eval mode), one model at a time."""
    _check(spec, flat, x_test, y_test)
    check_test_set(base_model, x_test, y_test)
    device = next(base_model.parameters()).device
    model = copy.deepcopy(base_model).eval()
    finite = torch.isfinite(flat).all(1).cpu()
    preds = torch.full((flat.shape[0], x_test.shape[0]), -1, dtype=torch.int64)
    with torch.no_grad():
        for i in range(flat.shape[0]):
            if not finite[i]:
                continue
            spec.load_into(model, flat[i].to(device))
            for s in range(0, x_test.shape[0], batch_size):
                logits = model(x_test[s:s + batch_size].to(device))
                preds[i, s:s + batch_size] = logits.argmax(-1).cpu()
    return _result(preds, finite, y_test.cpu(), 0)


def _top2_gap(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(..., K) -> argmax (...), top-1 minus top-2 (inf for K = 1, NaN for non-finite logits)."""
    pred = logits.argmax(-1)
    if logits.shape[-1] == 1:
        return pred, torch.full(pred.shape, math.inf, device=logits.device)
    top = logits.topk(2, dim=-1).values
    gap = (top[..., 0] - top[..., 1]).float()
    gap[~torch.isfinite(logits).all(-1)] = math.nan
    return pred, gap


class _Rows:
    """The models to run, n_run rows of flat (the finite ones), fetched chunk by chunk: no
    copy of all of them is made."""

    def __init__(self, flat: torch.Tensor, finite: torch.Tensor):
        self.flat = flat
        self.all = bool(finite.all())
        self.idx = None if self.all else finite.nonzero().flatten()  # rows of flat, on the CPU
        self.n = flat.shape[0] if self.all else self.idx.numel()

    def out_rows(self, r0: int, r1: int):
        """Rows r0 .. r1 of the run, as rows of the result tensors (a slice or an index)."""
        return slice(r0, r1) if self.all else self.idx[r0:r1]

    def get(self, r0: int, r1: int) -> torch.Tensor:
        return self.flat[r0:r1] if self.all else self.flat[self.idx[r0:r1].to(self.flat.device)]


def _batched_pass(plan: _Plan, spec: ParamSpec, rows: _Rows, x_test: torch.Tensor, y_test: torch.Tensor, device,
                  wrong: torch.Tensor, preds: torch.Tensor | None, *, batch_size: int, tile: int,
                  max_models_per_chunk: int | None, calib: tuple[int, ...], memory_budget_bytes: int):
    """Steps 1-3: writes the wrong bits (and predictions, when kept) of every model run; returns
    the smallest top-2 logit gap of each (model run, test batch) (n_run, n_batches) and the
    logits of the calibration models on the first batch."""
    n_run, n_test = rows.n, x_test.shape[0]
    min_gaps = torch.full((n_run, -(-n_test // batch_size)), math.inf)
    calib_logits: dict[int, list[torch.Tensor]] = {}
    all_params = None  # unflattened once when they take under a quarter of the budget, else per chunk
    if n_run * spec.dim * rows.flat.element_size() <= memory_budget_bytes // 4:
        all_params = spec.unflatten_stacked(rows.get(0, n_run).to(device))
    for s in range(0, n_test, batch_size):
        h = x_test[s:s + batch_size].to(device)
        b = h.shape[0]
        for st in plan.prefix:
            h = st.module(h)  # (b, ...) shared by all models
        m = max(1, min(n_run, tile // b, max_models_per_chunk or n_run))  # models per chunk
        sub = max(1, min(b, tile // m)) if plan.per_sample else b
        sub = -(-b // -(-b // sub))  # samples per tile, balanced: 1000 -> 2 x 500, not 964 + 36
        for m0 in range(0, n_run, m):
            m1 = min(n_run, m0 + m)
            if all_params is not None:
                params = {k: v[m0:m1] for k, v in all_params.items()}  # {name: (m, *shape)}
            else:
                params = spec.unflatten_stacked(rows.get(m0, m1).to(device))
            out_rows = rows.out_rows(m0, m1)
            for u in range(0, b, sub):
                out = _run_suffix(plan, h[u:u + sub], params, m1 - m0)  # (m, sub, K)
                if out.dim() != 3:
                    raise ValueError(f"evaluate_population: the model must output (batch, classes) "
                                     f"logits, got {tuple(out.shape[1:])} per model")
                p, g = _top2_gap(out)
                p = p.cpu()
                c0 = s + u
                _write_bits(wrong, out_rows, c0, p != y_test[c0:c0 + p.shape[1]])
                if preds is not None:
                    preds[out_rows, c0:c0 + p.shape[1]] = p
                g = torch.where(torch.isnan(g), -math.inf, g).amin(1).cpu()  # NaN: always rechecked
                torch.minimum(min_gaps[m0:m1, s // batch_size], g, out=min_gaps[m0:m1, s // batch_size])
                for c in calib:
                    if s == 0 and m0 <= c < m1:
                        calib_logits.setdefault(c, []).append(out[c - m0].float().cpu())
            del params
    return min_gaps, {c: torch.cat(parts) for c, parts in calib_logits.items()}


def _recheck(ref_model: nn.Module, spec: ParamSpec, rows: _Rows, x_test: torch.Tensor, y_test: torch.Tensor,
             device, wrong: torch.Tensor, preds: torch.Tensor | None, min_gaps: torch.Tensor,
             calib_logits: dict[int, torch.Tensor], batch_size: int) -> int:
    """Step 4: measure how far the batched logits are from the reference's on the first batch,
    then recompute with the reference every (model, batch) with a top-2 gap within 64x that
    distance (every exact tie when there is none). Updates the wrong bits (and predictions);
    returns the pairs redone."""
    diff = 0.0
    for c, got in calib_logits.items():
        spec.load_into(ref_model, rows.get(c, c + 1)[0].to(device))
        ref = ref_model(x_test[:batch_size].to(device)).float().cpu()
        delta = (ref - got).abs()
        delta[(ref.isnan() & got.isnan()) | ((ref == got) & ref.isinf())] = 0  # same non-finite
        diff = max(diff, delta.max().item() if torch.isfinite(delta).all() else math.inf)
    ambiguous = ~(min_gaps > CALIBRATION_MARGIN * diff)  # (n_run, n_batches); NaN gaps count too
    redone = 0
    for r in ambiguous.any(1).nonzero().flatten().tolist():
        spec.load_into(ref_model, rows.get(r, r + 1)[0].to(device))
        out_rows = rows.out_rows(r, r + 1)
        for bi in ambiguous[r].nonzero().flatten().tolist():
            s = bi * batch_size
            p = ref_model(x_test[s:s + batch_size].to(device)).argmax(-1).cpu()[None]  # (1, b)
            _write_bits(wrong, out_rows, s, p != y_test[s:s + p.shape[1]])
            if preds is not None:
                preds[out_rows, s:s + p.shape[1]] = p
            redone += 1
    return redone


def _finite_rows(flat: torch.Tensor, budget: int) -> torch.Tensor:
    """(N, D) -> (N,) bool on the CPU: all of the row finite; in row blocks (no (N, D) mask)."""
    step = max(1, budget // (4 * max(1, flat.shape[1])))
    return torch.cat([torch.isfinite(flat[i:i + step]).all(1).cpu() for i in range(0, flat.shape[0], step)])


def evaluate_population(base_model: nn.Module, spec: ParamSpec, flat: torch.Tensor, x_test: torch.Tensor,
                        y_test: torch.Tensor, *, batch_size: int = 1024, max_models_per_chunk: int | None = None,
                        memory_budget_bytes: int = 2 ** 30, keep_predictions: bool = True) -> PopulationResult:
    """Accuracy, predictions and wrong-prediction bitsets of N parameter sets (rows of flat,
    laid out by spec) in base_model, on (x_test, y_test). Same predictions as
    evaluate_one_by_one(..., batch_size=batch_size); see the module docstring for how.

    memory_budget_bytes bounds the activations of one (models x samples) tile (at least one
    model on one sample, or on a whole batch when the model mixes samples);
    max_models_per_chunk caps the models per tile. Besides, the result holds per model its
    wrong bitset (n_test / 8 bytes) and, with keep_predictions (the default), its predictions
    (8 * n_test bytes; predictions is None otherwise).

    Raises ValueError when x_test holds NaN / Inf or y_test a label outside [0, classes)."""
    _check(spec, flat, x_test, y_test)
    check_test_set(base_model, x_test, y_test)
    spec.check(base_model)
    device = next(base_model.parameters()).device
    n, n_test = flat.shape[0], x_test.shape[0]
    y_cpu = y_test.cpu()
    finite = _finite_rows(flat, memory_budget_bytes)
    wrong = torch.zeros(n, (n_test + 7) // 8, dtype=torch.uint8)
    if not finite.all():  # models not run: every sample wrong, padding bits clear
        wrong[~finite] = pack_bits(torch.ones(1, n_test, dtype=torch.bool))
    preds = torch.full((n, n_test), -1, dtype=torch.int64) if keep_predictions else None
    rows = _Rows(flat, finite)
    redone = 0
    if rows.n:
        if device.type == "cpu":
            warm_allocator()
        with torch.no_grad(), _eval_mode(base_model):
            plan = _plan(base_model, spec, x_test[:2].to(device))
            tile = max(1, min(memory_budget_bytes // (MEMORY_SAFETY * plan.pair_bytes),
                              CACHE_TILE_BYTES // plan.pair_bytes))
            calib = (0, rows.n - 1) if rows.n >= 64 else (0,)
            min_gaps, calib_logits = _batched_pass(
                plan, spec, rows, x_test, y_cpu, device, wrong, preds, batch_size=batch_size, tile=tile,
                max_models_per_chunk=max_models_per_chunk, calib=calib, memory_budget_bytes=memory_budget_bytes)
            ref_model = copy.deepcopy(base_model).eval()
            redone = _recheck(ref_model, spec, rows, x_test, y_cpu, device, wrong, preds, min_gaps,
                              calib_logits, batch_size)
    return PopulationResult(_accuracy(wrong, finite, n_test), wrong, preds, finite, redone)

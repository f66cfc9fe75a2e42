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
3. Tiles (a chunk of models x a sub-batch of samples) are sized per device by
   `tile_pairs_for`: on CPU to the memory budget and to the cache (CACHE_TILE_BYTES); on CUDA
   to the budget alone, by default half the free device memory, so that 1000 small models x a
   whole batch are one tile (the cache tile made that 2000 tiles of 1 model x 500 samples).
   Everything a tile yields (wrong bits, predictions, smallest top-2 gaps, calibration logits)
   is accumulated on the device: no host sync per tile; the results are copied to the host
   once, at the end (a call syncs a fixed handful of times, 11 for 1000 models where the
   cache tile made it 6013: benchmarks/results/population_counts_cpu.md). Models whose
   parameters hold NaN/Inf are not run: finite False, accuracy NaN, predictions -1, every
   sample marked wrong (so accuracy summaries must filter on finite).
4. Predictions equal those of `evaluate_one_by_one` (same batch size): the batched logits of
   the first model (and the last, from 64 models on) are compared with the reference's on the
   first batch; every (model, batch) holding a sample whose top-2 logit gap is within 64x the
   largest difference seen (an exact tie when the logits are bitwise equal, as they are for the
   BatchNorm / LayerNorm + ReLU CNNs and MLPs here) is recomputed by the reference. A
   calibrated check, not a proof: it assumes no other model strays 64x further than those.
   The mask of such pairs is computed on the device; the recheck runs once, after all tiles.
   The fallback is observable: `rechecked` counts the pairs redone and `max_logit_diff` the
   calibration distance; a distance beyond rounding (FAST_PATH_TOLERANCE of the logits' scale)
   also warns, since then the fast path is broken and every pair gets redone the slow way.

On CPU, the first call runs `warm_allocator()` (see there: glibc page-faults multi-MB tensors
in again on every allocation otherwise).

Memory: besides the activations of one tile (bounded by memory_budget_bytes), a call keeps
per model only its wrong-prediction bitset (ceil(n_test / 8) bytes), a few scalars and the
smallest top-2 gap of each test batch (4 bytes per batch), on the device; the generated
parameters are unflattened chunk by chunk (all at once when they take under a quarter of the
budget), the test inputs moved to the device once when they take under a quarter of it.
`predictions` (N, n_test) int64 is kept only when keep_predictions=True (the default;
evaluate() does not keep them), as int32 on the device until the end.

`evaluate_one_by_one` is the slow reference (one model at a time, as the original code).

Where the parts live (all importable from here, as before):
- steps 1-2, the stage planner and the per-model suffix: pdiff_fast.evaluation.population_plan;
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
import warnings
from dataclasses import dataclass

import torch
from torch import nn

# the names marked F401 moved to pdiff_fast.ops (iou_matrix.py, norm_affine_act.py) and are
# re-exported: importable from here as before
from ..ops.iou_matrix import (
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
from ..ops.norm_affine_act import norm_affine_act_torch  # noqa: F401
from ..params import ParamSpec
from .bitsets import _accuracy, _write_bits
from .population_plan import _Plan, _plan, _run_suffix

CACHE_TILE_BYTES = 8 << 20  # CPU: widest activation of one (models x samples) tile stays in cache
MEMORY_SAFETY = 4  # live activations per stage ~ input + output + temporaries
CPU_MEMORY_BUDGET = 1 << 30  # default memory_budget_bytes off CUDA
DEVICE_MEMORY_FRACTION = 0.5  # CUDA: default budget, of the free device memory (the caller may hold the rest)
CALIBRATION_MARGIN = 64.0  # recheck gaps within 64x the observed batched-vs-reference difference
FAST_PATH_TOLERANCE = 1e-2  # relative logit difference beyond rounding (TF32 convs ~1e-3): a broken fast path


@dataclass
class PopulationResult:
    accuracy: torch.Tensor  # (N,) float32, percent; NaN where finite is False
    wrong: torch.Tensor  # (N, W) uint8, W = ceil(n_test / 8): bit k of byte w = sample 8w + k wrong
    predictions: torch.Tensor | None  # (N, n_test) int64; -1 where finite is False; None unless kept
    finite: torch.Tensor  # (N,) bool: all parameters finite (the model was evaluated)
    rechecked: int = 0  # (model, batch) pairs recomputed by the reference path
    max_logit_diff: float = 0.0  # largest |batched - reference| logit on the calibration models' first batch


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


def _eval_mode(model: nn.Module):
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


_eval_mode = contextlib.contextmanager(_eval_mode)  # not the decorator, the same: mutmut leaves decorated functions unmutated


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
    return pred, torch.where(torch.isfinite(logits).all(-1), gap, math.nan)  # a boolean index would sync


def default_memory_budget(device, *, free_bytes: int | None = None) -> int:
    """memory_budget_bytes when none is given: on CUDA DEVICE_MEMORY_FRACTION of the memory free
    for new tensors (free on the device plus what the caching allocator holds unused; free_bytes
    stands in for it, e.g. to size CUDA tiles on a CPU); elsewhere CPU_MEMORY_BUDGET."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU_MEMORY_BUDGET
    if free_bytes is None:
        free, _ = torch.cuda.mem_get_info(device)
        free_bytes = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return max(1, int(DEVICE_MEMORY_FRACTION * free_bytes))


def tile_pairs_for(pair_bytes: int, device, memory_budget_bytes: int | None = None, *,
                   free_bytes: int | None = None) -> int:
    """(model, sample) pairs per tile for a model of `pair_bytes` activation bytes per pair
    (_Plan.pair_bytes) on `device` (a name works: 'cuda' sizes CUDA tiles on a CPU with
    free_bytes). CPU: within the budget and CACHE_TILE_BYTES (cache-sized tiles are fastest
    there). Other devices: within the budget only (by default a fraction of the free device
    memory on CUDA): on a GPU a tile is one batch of launches and the bigger the better."""
    device = torch.device(device)
    budget = memory_budget_bytes if memory_budget_bytes is not None else \
        default_memory_budget(device, free_bytes=free_bytes)
    pairs = budget // (MEMORY_SAFETY * pair_bytes)
    if device.type == "cpu":
        pairs = min(pairs, CACHE_TILE_BYTES // pair_bytes)
    return max(1, pairs)


class _Rows:
    """The models to run, n_run rows of flat (the finite ones), fetched chunk by chunk: no
    copy of all of them is made."""

    def __init__(self, flat: torch.Tensor, finite: torch.Tensor):
        self.flat = flat
        self.all = bool(finite.all())
        self.idx = None if self.all else finite.nonzero().flatten()  # rows of flat, on the CPU
        self.idx_flat = None if self.all else self.idx.to(flat.device)  # uploaded once, not per chunk
        self.n = flat.shape[0] if self.all else self.idx.numel()

    def out_rows(self, r0: int, r1: int):
        """Rows r0 .. r1 of the run, as rows of the result tensors (a slice or an index)."""
        return slice(r0, r1) if self.all else self.idx[r0:r1]

    def get(self, r0: int, r1: int) -> torch.Tensor:
        return self.flat[r0:r1] if self.all else self.flat[self.idx_flat[r0:r1]]


@dataclass
class _Pass:
    """What the batched pass leaves on the device, per model run (rows 0 .. n_run of the run)."""
    wrong: torch.Tensor  # (n_run, W) uint8
    preds: torch.Tensor | None  # (n_run, n_test) int32, or None
    min_gaps: torch.Tensor  # (n_run, n_batches) float32: smallest top-2 gap, -inf where NaN
    calib_logits: dict[int, torch.Tensor]  # model run -> its logits on the first batch


def _batched_pass(plan: _Plan, spec: ParamSpec, rows: _Rows, x_test: torch.Tensor, y_dev: torch.Tensor, device,
                  *, batch_size: int, tile: int, max_models_per_chunk: int | None, calib: tuple[int, ...],
                  keep_predictions: bool, memory_budget_bytes: int) -> _Pass:
    """Steps 1-3 for the models run, on the device, with no host sync (x_test may be on the
    host: it is then moved a batch at a time)."""
    n_run, n_test = rows.n, x_test.shape[0]
    out = _Pass(torch.zeros(n_run, (n_test + 7) // 8, dtype=torch.uint8, device=device),
                torch.empty(n_run, n_test, dtype=torch.int32, device=device) if keep_predictions else None,
                torch.full((n_run, -(-n_test // batch_size)), math.inf, device=device), {})
    calib_parts: dict[int, list[torch.Tensor]] = {}
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
            for u in range(0, b, sub):
                logits = _run_suffix(plan, h[u:u + sub], params, m1 - m0)  # (m, sub, K)
                if logits.dim() != 3:
                    raise ValueError(f"evaluate_population: the model must output (batch, classes) "
                                     f"logits, got {tuple(logits.shape[1:])} per model")
                p, g = _top2_gap(logits)
                c0, c1 = s + u, s + u + p.shape[1]
                _write_bits(out.wrong, slice(m0, m1), c0, p != y_dev[c0:c1])
                if out.preds is not None:
                    out.preds[m0:m1, c0:c1] = p
                g = torch.where(torch.isnan(g), -math.inf, g).amin(1)  # NaN: always rechecked
                col = out.min_gaps[m0:m1, s // batch_size]
                torch.minimum(col, g, out=col)
                for c in calib:
                    if s == 0 and m0 <= c < m1:
                        # a copy, not a view that would keep the whole tile alive
                        calib_parts.setdefault(c, []).append(logits[c - m0].to(torch.float32, copy=True))
            del params
    out.calib_logits = {c: torch.cat(parts) for c, parts in calib_parts.items()}
    return out


def _recheck(ref_model: nn.Module, spec: ParamSpec, rows: _Rows, x_test: torch.Tensor, y_dev: torch.Tensor,
             device, res: _Pass, batch_size: int) -> tuple[int, float, float]:
    """Step 4, once after all tiles: measure how far the batched logits are from the
    reference's on the first batch, then recompute with the reference every (model, batch) with
    a top-2 gap within 64x that distance (every exact tie when there is none). Updates res's
    wrong bits (and predictions) on the device. Two host syncs in all (the distance and the
    list of pairs); returns (pairs redone, the distance, the reference logits' largest |value|)."""
    diffs, scales = [], []
    for c, got in res.calib_logits.items():
        spec.load_into(ref_model, rows.get(c, c + 1)[0].to(device))
        ref = ref_model(x_test[:batch_size].to(device)).float()
        delta = (ref - got).abs()
        same = (ref.isnan() & got.isnan()) | ((ref == got) & ref.isinf())  # the same non-finite value
        delta = torch.where(same, 0.0, delta)
        diffs.append(torch.where(torch.isfinite(delta).all(), delta.max(), math.inf))
        scales.append(torch.where(torch.isfinite(ref), ref.abs(), 0.0).max())
    diff = torch.stack(diffs).max()  # a device scalar: the mask below needs no sync
    ambiguous = ~(res.min_gaps > CALIBRATION_MARGIN * diff)  # (n_run, n_batches); NaN gaps count too
    diff_f, scale = torch.stack([diff, torch.stack(scales).max()]).tolist()
    pairs = ambiguous.nonzero().tolist()
    loaded = None
    for r, bi in pairs:  # row-major: each model loaded once
        if r != loaded:
            spec.load_into(ref_model, rows.get(r, r + 1)[0].to(device))
            loaded = r
        s = bi * batch_size
        p = ref_model(x_test[s:s + batch_size].to(device)).argmax(-1)[None]  # (1, b)
        _write_bits(res.wrong, slice(r, r + 1), s, p != y_dev[s:s + p.shape[1]])
        if res.preds is not None:
            res.preds[r:r + 1, s:s + p.shape[1]] = p
    return len(pairs), diff_f, scale


def _finite_rows(flat: torch.Tensor, budget: int) -> torch.Tensor:
    """(N, D) -> (N,) bool on the CPU: all of the row finite; in row blocks (no (N, D) mask)."""
    step = max(1, budget // (4 * max(1, flat.shape[1])))
    return torch.cat([torch.isfinite(flat[i:i + step]).all(1).cpu() for i in range(0, flat.shape[0], step)])


def evaluate_population(base_model: nn.Module, spec: ParamSpec, flat: torch.Tensor, x_test: torch.Tensor,
                        y_test: torch.Tensor, *, batch_size: int = 1024, max_models_per_chunk: int | None = None,
                        memory_budget_bytes: int | None = None, keep_predictions: bool = True,
                        tile_pairs: int | None = None) -> PopulationResult:
    """Accuracy, predictions and wrong-prediction bitsets of N parameter sets (rows of flat,
    laid out by spec) in base_model, on (x_test, y_test). Same predictions as
    evaluate_one_by_one(..., batch_size=batch_size); see the module docstring for how.

    memory_budget_bytes bounds the activations of one (models x samples) tile (at least one
    model on one sample, or on a whole batch when the model mixes samples); None: 1 GiB, or on
    CUDA half the free device memory (default_memory_budget). max_models_per_chunk caps the
    models per tile; tile_pairs, when given, replaces the (model, sample) pairs per tile that
    tile_pairs_for picks for the device. Besides, the result holds per model its wrong bitset
    (n_test / 8 bytes) and, with keep_predictions (the default), its predictions (8 * n_test
    bytes; predictions is None otherwise).

    Raises ValueError when x_test holds NaN / Inf or y_test a label outside [0, classes);
    warns (RuntimeWarning) when the batched logits differ from the reference's beyond rounding."""
    _check(spec, flat, x_test, y_test)
    check_test_set(base_model, x_test, y_test)
    spec.check(base_model)
    device = next(base_model.parameters()).device
    budget = memory_budget_bytes if memory_budget_bytes is not None else default_memory_budget(device)
    n, n_test = flat.shape[0], x_test.shape[0]
    finite = _finite_rows(flat, budget)
    wrong = torch.zeros(n, (n_test + 7) // 8, dtype=torch.uint8)
    if not finite.all():  # models not run: every sample wrong, padding bits clear
        wrong[~finite] = pack_bits(torch.ones(1, n_test, dtype=torch.bool))
    preds = torch.full((n, n_test), -1, dtype=torch.int64) if keep_predictions else None
    rows = _Rows(flat, finite)
    redone, diff = 0, 0.0
    if rows.n:
        if device.type == "cpu":
            warm_allocator()
        if x_test.numel() * x_test.element_size() <= budget // 4:
            x_test = x_test.to(device)  # once, not a copy (and on CUDA a sync) per batch
        y_dev = y_test.to(device)
        with torch.no_grad(), _eval_mode(base_model):
            plan = _plan(base_model, spec, x_test[:2].to(device))
            tile = tile_pairs if tile_pairs is not None else tile_pairs_for(plan.pair_bytes, device, budget)
            calib = (0, rows.n - 1) if rows.n >= 64 else (0,)
            res = _batched_pass(plan, spec, rows, x_test, y_dev, device, batch_size=batch_size, tile=tile,
                                max_models_per_chunk=max_models_per_chunk, calib=calib,
                                keep_predictions=keep_predictions, memory_budget_bytes=budget)
            ref_model = copy.deepcopy(base_model).eval()
            redone, diff, scale = _recheck(ref_model, spec, rows, x_test, y_dev, device, res, batch_size)
        run = rows.out_rows(0, rows.n)
        wrong[run] = res.wrong.cpu()  # the one copy of the results to the host
        if preds is not None:
            preds[run] = res.preds.cpu().long()
        if not diff <= FAST_PATH_TOLERANCE * max(1.0, scale):
            warnings.warn(f"evaluate_population: the batched logits differ from the reference's by {diff:.3g} "
                          f"(logits up to {scale:.3g}): the fast path is wrong, and {redone} (model, batch) "
                          f"pairs were recomputed one model at a time to keep the predictions right",
                          RuntimeWarning, stacklevel=2)
    return PopulationResult(_accuracy(wrong, finite, n_test), wrong, preds, finite, redone, diff)

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

`evaluate_one_by_one` is the slow reference (one model at a time, as the original code), and
`iou_matrix` the IoU of wrong-prediction sets (|A & B| / |A | B|, 1.0 for two empty sets) with
the popcount kernel of the extension; `iou_matrix_torch` is its reference on bool tensors.
`iou_stats` reduces the IoU matrix of two populations (or of one with itself, diagonal left
out) to its mean, row maxima and maximum block by block, within a memory budget, without ever
holding the whole (Na, Nb) matrix.
"""
from __future__ import annotations

import contextlib
import copy
import math
import sys
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from . import backend
from .params import ParamSpec

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


# --- bitsets and IoU -------------------------------------------------------------------------

def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(N, n) bool -> (N, ceil(n / 8)) uint8, bit k of byte w = column 8w + k."""
    n_rows, n = mask.shape
    width = (n + 7) // 8
    padded = torch.zeros(n_rows, width * 8, dtype=torch.uint8, device=mask.device)
    padded[:, :n] = mask
    weights = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8, device=mask.device)
    return (padded.view(n_rows, width, 8) * weights).sum(-1).to(torch.uint8)  # (N, W)


def unpack_bits(bits: torch.Tensor, n: int | None = None) -> torch.Tensor:
    """(N, W) uint8 or int64 words -> (N, n) bool (n defaults to every bit)."""
    as_bytes = bits.contiguous().view(torch.uint8)  # little-endian words: bytes in bit order
    shifts = torch.arange(8, dtype=torch.uint8, device=bits.device)
    out = ((as_bytes.unsqueeze(-1) >> shifts) & 1).bool().flatten(1)
    return out if n is None else out[:, :n]


def iou_matrix_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(Na, n), (Nb, n) bool -> (Na, Nb) float32 IoU of the sets, 1.0 for two empty sets."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    inter = a64 @ b64.T  # exact counts
    union = a64.sum(1, keepdim=True) + b64.sum(1) - inter
    iou = inter.float() / union.float()
    return torch.where(union == 0, torch.ones_like(iou), iou)


def _check_bitsets(op: str, wrong_a: torch.Tensor, wrong_b: torch.Tensor) -> None:
    if wrong_a.dim() != 2 or wrong_b.dim() != 2 or wrong_a.shape[1] != wrong_b.shape[1]:
        raise ValueError(f"{op}: expected (Na, W) and (Nb, W) bitsets, got "
                         f"{tuple(wrong_a.shape)} and {tuple(wrong_b.shape)}")
    if wrong_a.dtype != wrong_b.dtype:
        raise ValueError(f"{op}: mismatched dtypes {wrong_a.dtype} and {wrong_b.dtype}")


def iou_matrix(wrong_a: torch.Tensor, wrong_b: torch.Tensor) -> torch.Tensor:
    """(Na, W), (Nb, W) packed bitsets (uint8 / int64) -> (Na, Nb) float32 IoU."""
    _check_bitsets("iou_matrix", wrong_a, wrong_b)
    if backend.choose("iou_matrix", wrong_a.device, ("ext",)) == "ext":
        return backend.load_extension().iou_matrix(wrong_a, wrong_b)
    return iou_matrix_torch(unpack_bits(wrong_a), unpack_bits(wrong_b))


@dataclass
class IoUStats:
    """What the memorisation analysis needs of an (Na, Nb) IoU matrix (see iou_stats)."""
    mean: float  # mean over the pairs (a self-comparison leaves out the diagonal); NaN without pairs
    max: float  # largest IoU of any pair; NaN without pairs
    row_max: torch.Tensor | None  # (Na,) float32 max of each row's pairs (NaN for a row without any)
    pairs: int  # number of pairs averaged


IOU_BLOCK_BYTES_PER_VALUE = 24  # float32 IoU (4) + the float64 copy sum(dtype=float64) makes (8), x2 slack
IOU_TORCH_BYTES_PER_BIT = 34  # unpacking path: (uint8 + bool + float64) per bit of a row, both sides
IOU_TORCH_BYTES_PER_VALUE = 48  # unpacking path: float64 inter / union / iou per pair


def _iou_blocks(na: int, nb: int, n_bits: int, use_ext: bool, budget: int) -> tuple[int, int]:
    """Rows and columns of one IoU block whose working memory stays within budget bytes."""
    budget = max(1, budget)
    if use_ext:  # the popcount kernel reads the packed bits: only the (rows, cols) output counts
        cols = min(nb, max(1, budget // IOU_BLOCK_BYTES_PER_VALUE))
        rows = min(na, max(1, budget // (IOU_BLOCK_BYTES_PER_VALUE * cols)))
        return rows, cols
    # torch reference: both sides unpacked to float64: s * n_bits * 34 + s^2 * 48 <= budget
    a, b = IOU_TORCH_BYTES_PER_VALUE, IOU_TORCH_BYTES_PER_BIT * n_bits
    side = int((-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a))
    return min(na, max(1, side)), min(nb, max(1, side))


def iou_stats(wrong_a: torch.Tensor, wrong_b: torch.Tensor | None = None, *, row_max: bool = True,
              memory_budget_bytes: int = 2 ** 30, block_rows: int | None = None,
              block_cols: int | None = None) -> IoUStats:
    """Mean, maximum and row maxima of iou_matrix(wrong_a, wrong_b) (Na, Nb), computed in
    blocks of rows (and of columns when needed) sized to memory_budget_bytes, never holding
    the whole matrix: each block is one iou_matrix call (the extension's popcount kernel when
    available) reduced on the spot.

    wrong_b None: wrong_a against itself, the diagonal (each model with itself) left out of
    the mean and the maxima; with row_max=False only the upper triangle is computed (the IoU
    is symmetric), half the work. block_rows / block_cols override the sizes (tests).

    The mean is the exactly rounded sum of the per-row float64 sums divided by the number of
    pairs: each row sum of float32 IoUs (multiples of 2^-(23 + ceil(log2 n_bits))) is exact
    while Nb * n_bits <= 2^29, so the result then depends neither on the block sizes nor on
    the order of the blocks, and equals the mean of the whole matrix in float64.
    """
    self_pairs = wrong_b is None
    b_bits = wrong_a if self_pairs else wrong_b
    _check_bitsets("iou_stats", wrong_a, b_bits)
    na, nb = wrong_a.shape[0], b_bits.shape[0]
    device = wrong_a.device
    triangle = self_pairs and not row_max
    use_ext = backend.choose("iou_matrix", device, ("ext",)) == "ext"
    n_bits = wrong_a.shape[1] * wrong_a.element_size() * 8
    rows, cols = _iou_blocks(na, nb, n_bits, use_ext, memory_budget_bytes)
    rows, cols = max(1, block_rows or rows), max(1, block_cols or cols)
    row_sum = torch.zeros(na, dtype=torch.float64, device=device)
    rmax = torch.full((na,), -math.inf, device=device) if row_max else None
    best = -math.inf
    for r0 in range(0, na, rows):
        r1 = min(na, r0 + rows)
        for c0 in range(r0 if triangle else 0, nb, cols):
            c1 = min(nb, c0 + cols)
            block = iou_matrix(wrong_a[r0:r1], b_bits[c0:c1])  # (r, c) float32
            if triangle:
                if c0 < r1:  # keep column j > row i only
                    block.triu_(r0 - c0 + 1)
                row_sum[r0:r1] += block.sum(1, dtype=torch.float64)
                best = max(best, block.max().item())
                continue
            lo, hi = max(r0, c0), min(r1, c1)
            diag = torch.arange(lo, hi, device=device) if self_pairs and lo < hi else None
            if diag is not None:
                block[diag - r0, diag - c0] = 0.0
            row_sum[r0:r1] += block.sum(1, dtype=torch.float64)
            if diag is not None:
                block[diag - r0, diag - c0] = -math.inf
            block_max = block.amax(1)
            if rmax is not None:
                torch.maximum(rmax[r0:r1], block_max, out=rmax[r0:r1])
            best = max(best, block_max.max().item())
    pairs = na * nb - (na if self_pairs else 0)
    if triangle:
        pairs = na * (na - 1)
    total = math.fsum(row_sum.tolist()) * (2 if triangle else 1)
    if rmax is not None:
        rmax[torch.isinf(rmax)] = math.nan  # rows without a pair (a self-comparison of one model)
    if pairs == 0:
        return IoUStats(math.nan, math.nan, rmax, 0)
    return IoUStats(total / pairs, best, rmax, pairs)


# --- fused norm affine + activation ----------------------------------------------------------

_ACTS = {"identity": lambda y, s: y, "relu": lambda y, s: F.relu(y),
         "leaky_relu": lambda y, s: F.leaky_relu(y, s)}


def norm_affine_act_torch(x, weight, bias, running_mean=None, running_var=None, eps=1e-5,
                          act="relu", negative_slope=0.01) -> torch.Tensor:
    """Reference of the extension's norm_affine_act: x (B, C, L) or (N, B, C, L), weight/bias
    (N, C) -> act(x * scale + shift) (N, B, C, L); BatchNorm terms when running stats are given."""
    scale, shift = weight, bias  # (N, C)
    if running_mean is not None:
        scale = weight * (1 / torch.sqrt(running_var + eps))
        shift = bias - running_mean * scale
    y = x * scale[:, None, :, None] + shift[:, None, :, None]  # (N, B, C, L)
    return _ACTS[act](y, negative_slope)


def _norm_affine_act(x, weight, bias, mean, var, eps, act, slope):
    supported = x.dtype in (torch.float32, torch.float64)
    if supported and backend.choose("norm_affine_act", x.device, ("ext",)) == "ext":
        return backend.load_extension().norm_affine_act(x, weight, bias, mean, var, eps, act, slope)
    return norm_affine_act_torch(x, weight, bias, mean, var, eps, act, slope)


# --- the model as a chain of stages ----------------------------------------------------------

_PER_SAMPLE = (
    nn.modules.conv._ConvNd, nn.Linear, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.ReLU, nn.LeakyReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Tanh, nn.Sigmoid, nn.ELU, nn.Softplus,
    nn.Hardtanh, nn.Hardswish, nn.Mish, nn.PReLU,
    nn.modules.dropout._DropoutNd, nn.Dropout,
    nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.LayerNorm, nn.GroupNorm, nn.modules.instancenorm._InstanceNorm,
    nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.Sequential, nn.ModuleList,
    nn.modules.linear.NonDynamicallyQuantizableLinear,
)


def _per_sample(module: nn.Module) -> bool:
    """Whether the module (eval mode) treats every sample on its own, so the model axis can be
    folded into the batch. Conservative: known leaf types only."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.running_mean is None:  # batch statistics even in eval mode
                return False
        elif isinstance(m, nn.Flatten):
            if m.start_dim == 0:
                return False
        elif not isinstance(m, _PER_SAMPLE) and any(True for _ in m.children()):
            continue  # a container: judged by its leaves
        elif not isinstance(m, _PER_SAMPLE):
            return False
    return True


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward


def _expand(name: str, module: nn.Module) -> list[tuple[str, nn.Module]]:
    if _is_plain_sequential(module):
        out = []
        for child_name, child in module.named_children():
            out += _expand(f"{name}.{child_name}" if name else child_name, child)
        return out
    return [(name, module)]


def _chain(model: nn.Module, probe: torch.Tensor) -> list[tuple[str, nn.Module]] | None:
    """The model's forward as a list of (qualified name, module) applied one after the other,
    or None when it is not such a chain."""
    if _is_plain_sequential(model):
        return _expand("", model)
    children = list(model.named_children())
    if not children:
        return None
    calls: list[tuple[str, tuple, object]] = []
    hooks = [m.register_forward_hook(lambda m, i, o, n=n: calls.append((n, i, o)))
             for n, m in children]
    try:
        with torch.no_grad():
            out = model(probe)
    except Exception:
        return None
    finally:
        for h in hooks:
            h.remove()
    names = [n for n, _, _ in calls]
    if not calls or len(set(names)) != len(names):
        return None
    current = probe
    for _, inputs, output in calls:
        if len(inputs) != 1 or inputs[0] is not current:
            return None
        current = output
    if out is not current:
        return None
    called = dict(children)
    stages = []
    for n in names:
        stages += _expand(n, called[n])
    return stages


@dataclass
class _Stage:
    name: str
    module: nn.Module
    generated: dict[str, str]  # local parameter name -> full name, for the generated ones


@dataclass
class _Plan:
    prefix: list[_Stage]  # shared, run once per test batch
    suffix: list[_Stage]  # per model
    whole_model: bool  # not a chain: the suffix is the whole model under vmap
    per_sample: bool  # the suffix may run on sub-batches of a test batch
    pair_bytes: int  # activation bytes per (model, sample): the widest layer, input + output


def _widest_output(model: nn.Module, probe: torch.Tensor) -> int:
    """Largest number of values per sample that any module of the model outputs."""
    sizes = [probe[0].numel()]

    def record(module, inputs, output):
        if isinstance(output, torch.Tensor):
            sizes.append(output.numel() // max(1, probe.shape[0]))
    hooks = [m.register_forward_hook(record) for m in model.modules()]
    try:
        model(probe)
    finally:
        for h in hooks:
            h.remove()
    return max(sizes)


def _plan(model: nn.Module, spec: ParamSpec, probe: torch.Tensor) -> _Plan:
    generated = set(spec.names)
    names_of: dict[int, list[str]] = {}
    for n, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(n)
    tied = any(len(ns) > 1 and generated.intersection(ns) for ns in names_of.values())
    pair_bytes = 2 * _widest_output(model, probe) * probe.element_size()
    chain = None if tied else _chain(model, probe)
    if chain is not None:
        stages = []
        for n, m in chain:
            pre = f"{n}." if n else ""
            stages.append(_Stage(n, m, {full[len(pre):]: full for full in generated if full.startswith(pre)}))
        covered = set().union(*(s.generated.values() for s in stages))
        first = next((i for i, s in enumerate(stages) if s.generated), None)
        if covered == generated and first is not None:
            suffix = stages[first:]
            return _Plan(stages[:first], suffix, False, all(_per_sample(s.module) for s in suffix), pair_bytes)
    whole = _Stage("", model, {n: n for n in generated})
    return _Plan([], [whole], True, _per_sample(model), pair_bytes)


# --- running the suffix for a chunk of models ------------------------------------------------

def _fold(module: nn.Module, h: torch.Tensor) -> torch.Tensor:
    m, b = h.shape[:2]
    out = module(h.reshape(m * b, *h.shape[2:]))
    return out.reshape(m, b, *out.shape[1:])


def _vmapped(module: nn.Module, params: dict[str, torch.Tensor], h: torch.Tensor, batched: bool):
    def one(p, x):
        return functional_call(module, p, (x,))
    with warnings.catch_warnings():  # e.g. "no batching rule for _transformer_encoder_layer_fwd"
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        return vmap(one, in_dims=(0, 0 if batched else None))(params, h)


def _affine_of(stage: _Stage, params: dict[str, torch.Tensor], m: int, like: torch.Tensor):
    mod = stage.module
    out = []
    for local, default in (("weight", mod.weight), ("bias", mod.bias)):
        if local in stage.generated:
            out.append(params[stage.generated[local]].reshape(m, -1).to(like.dtype))
        elif default is not None:
            out.append(default.detach().reshape(1, -1).to(like.dtype).expand(m, -1).contiguous())
        else:
            out.append(torch.zeros(m, out[0].shape[1], dtype=like.dtype, device=like.device))
    return out  # (m, C), (m, C)


def _fusable_norm(stage: _Stage) -> str | None:
    mod = stage.module
    if not set(stage.generated) <= {"weight", "bias"}:
        return None
    if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.affine and mod.running_mean is not None:
        return "batch"
    if isinstance(mod, nn.LayerNorm) and mod.elementwise_affine:
        return "layer"
    return None


def _activation_of(stage: _Stage | None) -> tuple[str, float] | None:
    if stage is None or stage.generated:
        return None
    if type(stage.module) is nn.ReLU:
        return "relu", 0.0
    if type(stage.module) is nn.LeakyReLU:
        return "leaky_relu", float(stage.module.negative_slope)
    if type(stage.module) is nn.Identity:
        return "identity", 0.0
    return None


def _run_norm(kind, stage, nxt, h, batched, params, m):
    """BatchNorm / LayerNorm with a generated affine (+ the ReLU after it): (m, B, ...)."""
    act = _activation_of(nxt)
    name, slope = act if act else ("identity", 0.0)
    mod = stage.module
    w, b = _affine_of(stage, params, m, h)
    lead = h.shape[:2] if batched else h.shape[:1]  # (m, B) or (B,)
    if kind == "batch":
        c = h.shape[len(lead)]
        x = h.reshape(*lead, c, -1)  # (m?, B, C, L)
        y = _norm_affine_act(x, w, b, mod.running_mean.to(h.dtype), mod.running_var.to(h.dtype),
                             float(mod.eps), name, slope)
        out_shape = h.shape[len(lead):]
    else:
        x_hat = F.layer_norm(h, mod.normalized_shape, None, None, mod.eps)
        features = math.prod(mod.normalized_shape)
        x = x_hat.reshape(*lead[:-1], -1, features, 1)  # (m?, R, F, 1), R = B * other dims
        y = _norm_affine_act(x, w, b, None, None, 0.0, name, slope)
        out_shape = h.shape[len(lead):]
    batch = h.shape[len(lead) - 1]
    return y.reshape(m, batch, *out_shape), (1 if act else 0)


def _run_suffix(plan: _Plan, h: torch.Tensor, params: dict[str, torch.Tensor], m: int) -> torch.Tensor:
    """Shared activations h (B, ...) -> outputs of m models (m, B, ...)."""
    batched = False
    i = 0
    while i < len(plan.suffix):
        st = plan.suffix[i]
        nxt = plan.suffix[i + 1] if i + 1 < len(plan.suffix) else None
        kind = _fusable_norm(st) if st.generated and not plan.whole_model else None
        if kind is not None:
            h, skip = _run_norm(kind, st, nxt, h, batched, params, m)
            batched = True
            i += 1 + skip
            continue
        if st.generated:
            local = {loc: params[full] for loc, full in st.generated.items()}
            h = _vmapped(st.module, local, h, batched)
            batched = True
        elif not batched:
            h = st.module(h)
        elif _per_sample(st.module):
            h = _fold(st.module, h)
        else:
            h = _vmapped(st.module, {}, h, True)
        i += 1
    return h


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

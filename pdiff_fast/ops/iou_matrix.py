"""iou_matrix: IoU of wrong-prediction sets stored as packed bitsets, and its blocked reduction.

    bits = pack_bits(mask)                         # (N, n) bool -> (N, ceil(n / 8)) uint8
    iou = iou_matrix(bits_a, bits_b)               # (Na, Nb) float32: |A & B| / |A | B|
    s = iou_stats(bits_a)                          # mean / max / row maxima, never the whole matrix

`iou_matrix` uses the popcount kernel of the extension `pdiff_fast._C` (`ext` backend), the torch
op `torch.ops.pdiff_fast.iou_matrix(Tensor a_bits, Tensor b_bits) -> Tensor`, on (N, W) uint8 or
int64 words (its fake kernel, for torch.compile / torch.export, is registered below);
`iou_matrix_torch` is its reference on bool tensors (1.0 for two empty sets). `iou_stats` reduces
the IoU matrix of two populations (or of one with itself, diagonal left out) to its mean, row
maxima and maximum block by block, within a memory budget, without ever holding the whole (Na, Nb)
matrix.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import backend
from .extension_ops import extension_op, register_fakes


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """(N, n) bool -> (N, ceil(n / 8)) uint8, bit k of byte w = column 8w + k."""
    n_rows, n = mask.shape
    width = (n + 7) // 8
    if n % 8:
        as_bytes = torch.zeros(n_rows, width * 8, dtype=torch.uint8, device=mask.device)
        as_bytes[:, :n] = mask
    else:  # whole bytes: no padded copy
        as_bytes = mask.to(torch.uint8)
    # shifts made on the device (a table from host data would be an upload, a sync, per call on CUDA)
    shifts = torch.arange(8, dtype=torch.uint8, device=mask.device)
    return (as_bytes.reshape(n_rows, width, 8) << shifts).sum(-1, dtype=torch.uint8)  # (N, W)


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
    if backend.choose("iou_matrix", wrong_a.device) == "ext":
        return extension_op("iou_matrix")(wrong_a, wrong_b)
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
    use_ext = backend.choose("iou_matrix", device) == "ext"
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


def _iou_matrix_fake(a_bits, b_bits):
    torch._check(a_bits.dim() == 2 and b_bits.dim() == 2,
                 lambda: f"iou_matrix: a_bits and b_bits must be 2-D (N, W) packed bitsets, got "
                         f"{tuple(a_bits.shape)} and {tuple(b_bits.shape)}")
    return a_bits.new_empty((a_bits.shape[0], b_bits.shape[0]), dtype=torch.float32)


FAKE_REGISTERED = register_fakes({"iou_matrix": _iou_matrix_fake})

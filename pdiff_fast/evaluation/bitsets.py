"""Wrong-prediction bitsets of the population evaluator (population.py): bits written a tile at a
time on the device, and the accuracy counted from them."""
from __future__ import annotations

import torch

from ..ops.iou_matrix import pack_bits

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
    """Set bits[rows] columns c0 .. c0 + n to the (m, n) bool mask, leaving the others; on the
    bits' device (mask moved there), without a host sync."""
    mask = mask.to(bits.device)
    n = mask.shape[1]
    lo, w0, w1 = c0 % 8, c0 // 8, (c0 + n + 7) // 8
    if lo == 0 and n % 8 == 0:  # whole bytes: overwrite
        bits[rows, w0:w1] = pack_bits(mask)
        return
    padded = torch.zeros(mask.shape[0], (w1 - w0) * 8, dtype=torch.bool, device=bits.device)
    padded[:, lo:lo + n] = mask
    inside = torch.zeros(1, (w1 - w0) * 8, dtype=torch.bool, device=bits.device)
    inside[:, lo:lo + n] = True
    bits[rows, w0:w1] = (bits[rows, w0:w1] & ~pack_bits(inside)) | pack_bits(padded)

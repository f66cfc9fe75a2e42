"""noise: the in-kernel standard normal noise shared by ddpm_step, ddim_step and q_sample.

Contract: the noise at element (r, c) of a (B, M) batch is a pure function of
(seed, seed_offset, row_offset + r, c), so a model index gets the same noise whatever chunk it is
sampled in, and whatever the tile sizes or the Triton version (3.6 and 3.9 share the Philox code):

    key     = seed ^ ((seed_offset * 0x9E3779B9 mod 2**32) << 32)       (64-bit Philox key)
    counter = (row_offset + r) * cdiv(M, 4) + c // 4                    (64-bit Philox counter)
    noise   = tl.randn4x(key, counter)[c % 4]

The key packs seed_offset into the high word instead of adding it to the seed, so
(seed=0, step=1) and (seed=1, step=0) draw different streams; for seeds below 2**32 every
(seed, step < 2**32) pair has its own key. One Philox call gives the 4 normals of 4 neighbouring
columns (`randn4x`), and only a per-program scalar is 64-bit: the per-element counter is a 32-bit
add with carry, which is what `tl.randn4x` computes for a 64-bit offset, at 32-bit cost.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from pdiff_fast.ops.noise import seed_tensor

GOLDEN = tl.constexpr(0x9E3779B9)  # odd: seed_offset -> seed_offset * GOLDEN mod 2**32 is a bijection


@triton.jit
def philox_key(seed_ptr, seed, seed_offset, SEED_FROM_PTR: tl.constexpr):
    """The 64-bit Philox key of (seed, seed_offset); the seed is *seed_ptr when SEED_FROM_PTR."""
    if SEED_FROM_PTR:
        s = tl.load(seed_ptr).to(tl.uint64)
    else:
        s = seed.to(tl.uint64)
    mix = (seed_offset.to(tl.uint64) * GOLDEN) & 0xFFFFFFFF
    return s ^ (mix << 32)


@triton.jit
def first_row(row_offset_ptr, row_offset, ROW_OFFSET_FROM_PTR: tl.constexpr):
    """The global index of the batch's first row (int64): *row_offset_ptr or row_offset."""
    if ROW_OFFSET_FROM_PTR:
        r = tl.load(row_offset_ptr).to(tl.int64)
    else:
        r = row_offset.to(tl.int64)
    return r


@triton.jit
def randn_tile(
    key,  # uint64 Philox key from philox_key
    row0,  # int64 global index of the tile's first row
    col0,  # first column of the tile, a multiple of 4
    M,  # elements per row
    ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,  # a multiple of 4
):
    """(ROWS, BLOCK_M) float32 standard normals at global rows row0 + i, columns col0 + j."""
    GROUPS: tl.constexpr = BLOCK_M // 4
    m4 = tl.cdiv(M, 4)
    base = (row0 * m4 + col0 // 4).to(tl.uint64)  # counter of the tile's first element
    base_lo = (base & 0xFFFFFFFF).to(tl.uint32)
    base_hi = (base >> 32).to(tl.uint32)
    # < 2**31: several rows per program only when a row fits in one tile
    local = tl.arange(0, ROWS)[:, None] * m4 + tl.arange(0, GROUPS)[None, :]  # (ROWS, GROUPS)
    lo = base_lo + local.to(tl.uint32)  # wraps mod 2**32
    hi = base_hi + (lo < base_lo).to(tl.uint32)  # the carry
    zero = lo * 0
    i1, i2, i3, i4 = tl.philox(key, lo, hi, zero, zero)
    n1, n2 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(i1), tl.uint_to_uniform_float(i2))
    n3, n4 = tl.pair_uniform_to_normal(tl.uint_to_uniform_float(i3), tl.uint_to_uniform_float(i4))
    # column 4q + j takes n_{j+1}[q]
    return tl.interleave(tl.interleave(n1, n3), tl.interleave(n2, n4))  # (ROWS, BLOCK_M)


@triton.jit
def batch_randn_tile(
    seed_ptr,  # (1,) int64 device seed; read when SEED_FROM_PTR
    row_offset_ptr,  # (1,) int64 global index of the batch's row 0; read when ROW_OFFSET_FROM_PTR
    seed, seed_offset, row_offset,  # ints: the seed (unless SEED_FROM_PTR), step, row 0 (unless ...PTR)
    row0,  # the tile's first row within the batch
    col0,  # the tile's first column, a multiple of 4
    M,  # elements per row
    SEED_FROM_PTR: tl.constexpr,
    ROW_OFFSET_FROM_PTR: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    """randn_tile for the noise arguments of a kernel launch (see NoiseArgs): the (ROWS, BLOCK_M)
    normals at the batch's rows row0 + i, columns col0 + j."""
    key = philox_key(seed_ptr, seed, seed_offset, SEED_FROM_PTR)
    grow0 = first_row(row_offset_ptr, row_offset, ROW_OFFSET_FROM_PTR) + row0
    return randn_tile(key, grow0, col0, M, ROWS, BLOCK_M)


class NoiseArgs(NamedTuple):
    """The noise arguments of a kernel launch, in the kernels' order."""

    seed_ptr: torch.Tensor  # (1,) int64, or a placeholder pointer
    row_offset_ptr: torch.Tensor  # (1,) int64, or a placeholder pointer
    seed: int
    seed_offset: int
    row_offset: int
    seed_from_ptr: bool
    row_offset_from_ptr: bool


def noise_args(seed, seed_offset, row_offset, generator, placeholder: torch.Tensor) -> NoiseArgs:
    """Check and split the noise arguments. seed: int in [0, 2**63), a (1,) int64 tensor on the
    data's device, or None (an int drawn from `generator`, else torch's default CPU generator);
    seed_offset: int in [0, 2**32); row_offset: int >= 0 or a (1,) int64 tensor on the device."""
    device = placeholder.device
    seed_offset = int(seed_offset)
    if not 0 <= seed_offset < 2**32:
        raise ValueError(f"seed_offset must be in [0, 2**32), got {seed_offset}")
    seed_ptr, row_ptr, seed_val, row_val = placeholder, placeholder, 0, 0
    if isinstance(seed, torch.Tensor):
        _check_scalar_tensor(seed, "seed", device)
        seed_ptr = seed
    else:
        seed_val = draw_seed(generator) if seed is None else int(seed)
        if not 0 <= seed_val < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {seed_val}")
    if isinstance(row_offset, torch.Tensor):
        _check_scalar_tensor(row_offset, "row_offset", device)
        row_ptr = row_offset
    else:
        row_val = int(row_offset)
        if row_val < 0:
            raise ValueError(f"row_offset must be >= 0, got {row_val}")
    return NoiseArgs(seed_ptr, row_ptr, seed_val, seed_offset, row_val,
                     isinstance(seed, torch.Tensor), isinstance(row_offset, torch.Tensor))


def noise_source(scale: float, noise, seed, seed_offset, row_offset, generator, x_c: torch.Tensor):
    """(noise tensor, NOISE mode, NoiseArgs) of an elementwise step whose noise term is `scale`
    times standard normal noise: mode 0 (scale 0: none; x_c stands in for the unread pointer),
    1 (`noise` given, read), 2 (drawn in the kernel from seed / seed_offset / row_offset)."""
    if scale == 0.0:
        return x_c, 0, no_noise_args(x_c)
    if noise is not None:
        return noise.contiguous(), 1, no_noise_args(x_c)
    return x_c, 2, noise_args(seed, seed_offset, row_offset, generator, x_c)


def no_noise_args(placeholder: torch.Tensor) -> NoiseArgs:
    """The noise arguments of a launch that draws no noise: `placeholder` as both pointers (never
    read), zeros elsewhere; draws nothing from any generator."""
    return noise_args(0, 0, 0, None, placeholder)


def _check_scalar_tensor(v: torch.Tensor, name: str, device: torch.device) -> None:
    # no silent .to(device): a copy made during CUDA graph capture would not follow later writes
    if v.numel() != 1 or v.dtype != torch.int64 or v.device != device:
        raise ValueError(f"{name}: expected a one-element int64 tensor on {device}, "
                         f"got {v.dtype} {tuple(v.shape)} on {v.device}")


def draw_seed(generator: torch.Generator | None = None) -> int:
    """A Philox seed from torch's RNG (`generator`, else the default CPU one), so results follow
    torch.manual_seed."""
    return int(seed_tensor(generator).item())

"""ddim_step: one DDIM step (Song et al. 2021, eq. 12) as a single Triton kernel.

    x0    = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t),  clamped to [-1, 1] if clip
    eps'  = (x_t - sqrt(a_t) * x0) / sqrt(1 - a_t)    (re-derived after the clamp, if clip)
    sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    x     = sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma^2) * eps' + sigma * noise
    x     = clamp(x, -1, 1)                         (if clamp)

Same semantics as `pdiff_fast.ops.ddim_step.ddim_step_torch`: a_t and a_prev are Python
floats shared by the whole batch, so the scalar coefficients are computed on the host in
float64 and the kernel is an elementwise pass over (rows, columns) tiles. With eta > 0 the noise
is either given or drawn inside the kernel (kernels/noise.py: a function of the global row and
the column, as in ddpm_step), which removes the separate randn launch.

Floor (bytes moved per call, fp32, N = numel):
    sigma > 0, noise given:      read x_t, eps, noise + write x_prev, pred_x0 = 5 * 4 * N bytes
    sigma == 0 or noise drawn:   read x_t, eps        + write x_prev, pred_x0 = 4 * 4 * N bytes
Non-contiguous inputs cost one extra copy each. No backward (sampling runs under no_grad).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .tiles import row_tile
from .noise import batch_randn_tile, noise_source


@triton.jit(do_not_specialize=["seed", "seed_offset", "row_offset", "B"])
def _ddim_step_kernel(
    x_ptr,  # (B, M) x_t
    eps_ptr,  # (B, M) predicted noise
    noise_ptr,  # (B, M) standard normal; unused unless NOISE == 1
    x_prev_ptr,  # (B, M) output x_{t_prev}
    x0_ptr,  # (B, M) output pred_x0
    seed_ptr,  # (1,) int64 device seed; unused unless SEED_FROM_PTR
    row_offset_ptr,  # (1,) int64 global index of row 0; unused unless ROW_OFFSET_FROM_PTR
    seed,  # int Philox seed (unless SEED_FROM_PTR)
    seed_offset,  # int, e.g. the step index: mixed into the Philox key
    row_offset,  # int global index of row 0 (unless ROW_OFFSET_FROM_PTR)
    B,  # rows
    M,  # elements per row
    sqrt_a,  # sqrt(a_t)
    sqrt_1ma,  # sqrt(1 - a_t)
    sqrt_a_prev,  # sqrt(a_prev)
    direction,  # sqrt(max(1 - a_prev - sigma^2, 0))
    sigma,  # noise scale
    CLIP: tl.constexpr,  # clamp pred_x0 and re-derive eps
    CLAMP: tl.constexpr,  # clamp x_prev
    NOISE: tl.constexpr,  # 0: none, 1: read noise_ptr, 2: draw in the kernel (kernels/noise.py)
    SEED_FROM_PTR: tl.constexpr,
    ROW_OFFSET_FROM_PTR: tl.constexpr,
    ROWS: tl.constexpr,  # rows per program
    BLOCK_M: tl.constexpr,  # columns per program, a multiple of 4
):
    row0, col0, rows, row_ok, mask, base, offs = row_tile(B, M, ROWS, BLOCK_M)
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)

    # 1. x0 prediction; with clipping, the eps consistent with the clipped x0
    x0 = (x - sqrt_1ma * eps) / sqrt_a
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
        eps = (x - sqrt_a * x0) / sqrt_1ma

    # 2. eq. 12: predicted x0, direction pointing to x_t, random noise
    x_prev = sqrt_a_prev * x0 + direction * eps
    if NOISE == 1:
        x_prev += sigma * tl.load(noise_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    elif NOISE == 2:
        x_prev += sigma * batch_randn_tile(seed_ptr, row_offset_ptr, seed, seed_offset, row_offset, row0, col0, M,
                                           SEED_FROM_PTR, ROW_OFFSET_FROM_PTR, ROWS, BLOCK_M)
    if CLAMP:
        x_prev = tl.minimum(tl.maximum(x_prev, -1.0), 1.0)

    tl.store(x_prev_ptr + base + offs, x_prev, mask=mask)
    tl.store(x0_ptr + base + offs, x0, mask=mask)


def sigma_of(a_t: float, a_prev: float, eta: float) -> float:
    """The DDIM noise scale eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)."""
    return eta * ((1.0 - a_prev) / (1.0 - a_t)) ** 0.5 * max(1.0 - a_t / a_prev, 0.0) ** 0.5


@launch.on_input_device
def ddim_step(
    x_t: torch.Tensor,  # (B, ...)
    eps: torch.Tensor,  # (B, ...)
    a_t: float,  # alphas_cumprod[t]
    a_prev: float,  # alphas_cumprod[t_prev], or 1.0 for the last step
    noise: torch.Tensor | None,  # (B, ...) standard normal, or None (drawn in-kernel if needed)
    eta: float = 0.0,
    clip: bool = True,
    *,
    clamp: bool = False,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    seed_offset: int = 0,
    row_offset: int | torch.Tensor = 0,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDIM step; returns (x_prev, pred_x0), both shaped like x_t.

    generator / seed / seed_offset / row_offset: as in `ddpm_step`; only used when sigma > 0
    and noise is None (the same noise as ddpm_step and q_sample for the same arguments).
    clamp: clamp x_prev to [-1, 1] (the reference's x_t clamping).
    out: optional contiguous (x_prev, pred_x0) buffers shaped like x_t (x_prev may be x_t).
    """
    if eps.shape != x_t.shape or (noise is not None and noise.shape != x_t.shape):
        raise ValueError("ddim_step: x_t, eps and noise must have the same shape")
    a_t, a_prev, eta = float(a_t), float(a_prev), float(eta)
    sigma = sigma_of(a_t, a_prev, eta)
    direction = max(1.0 - a_prev - sigma**2, 0.0) ** 0.5
    x_prev, x0 = launch.output_buffers(
        x_t, out, 2, "ddim_step: out buffers must be contiguous, on x_t's device, shaped like x_t")
    x_c = x_t.contiguous()
    noise_c, mode, rng = noise_source(sigma, noise, seed, seed_offset, row_offset, generator, x_c)
    if x_t.numel() == 0:
        return x_prev, x0
    B, M = launch.rows_and_columns(x_t)
    rows, block_m = launch.elementwise_tile(B, M)
    _ddim_step_kernel[launch.elementwise_grid(B, M, rows, block_m)](
        x_c, eps.contiguous(), noise_c, x_prev, x0,
        rng.seed_ptr, rng.row_offset_ptr, rng.seed, rng.seed_offset, rng.row_offset, B, M,
        a_t**0.5, (1.0 - a_t) ** 0.5, a_prev**0.5, direction, sigma,
        CLIP=bool(clip), CLAMP=bool(clamp), NOISE=mode, SEED_FROM_PTR=rng.seed_from_ptr,
        ROW_OFFSET_FROM_PTR=rng.row_offset_from_ptr, ROWS=rows, BLOCK_M=block_m, num_warps=4,
    )
    return x_prev, x0

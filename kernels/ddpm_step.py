"""ddpm_step: one ancestral DDPM step (Ho et al. 2020) as a single Triton kernel.

    x0   = sqrt_recip_ac[t] * x_t - sqrt_recipm1_ac[t] * eps     (eq. 15)
    x0   = clamp(x0, -1, 1)                                       (if clip)
    mean = coef1[t] * x0 + coef2[t] * x_t                         (posterior mean, eq. 7)
    x    = clamp(mean + [t > 0] * exp(0.5 * logvar[t]) * noise, -1, 1)

Same semantics as the reference `pdiff_fast.ops.ddpm_step.ddpm_step_torch`; `coefs` is the
(5, T) table described there. The noise is either given, or drawn inside the kernel with
Philox (`tl.randn`), which removes the separate `torch.randn` launch and its B*M write+read.

Floor (bytes moved per call, fp32, N = B*M elements):
    noise given:     read x_t, eps, noise + write x_prev, pred_x0 = 5 * 4 * N bytes
    in-kernel noise: read x_t, eps        + write x_prev, pred_x0 = 4 * 4 * N bytes
plus the coefficient gathers (5 floats and one int64 per sample, cached). Non-contiguous
inputs cost one extra copy each (`.contiguous()`). There is no backward: sampling runs
under torch.no_grad(), and the outputs never carry a grad_fn.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .tiles import row_tile
from .noise import batch_randn_tile, no_noise_args, noise_args


@triton.jit(do_not_specialize=["seed", "seed_offset", "row_offset", "B"])
def _ddpm_step_kernel(
    x_ptr,  # (B, M) x_t
    eps_ptr,  # (B, M) predicted noise
    noise_ptr,  # (B, M) standard normal noise; unused unless NOISE == 1
    t_ptr,  # (B,) int64 timesteps
    coefs_ptr,  # (5, T) float32, rows as in the module docstring
    x_prev_ptr,  # (B, M) output x_{t-1}
    x0_ptr,  # (B, M) output pred_x0
    seed_ptr,  # (1,) int64 device seed; unused unless SEED_FROM_PTR
    row_offset_ptr,  # (1,) int64 global index of row 0; unused unless ROW_OFFSET_FROM_PTR
    seed,  # int Philox seed (unless SEED_FROM_PTR)
    seed_offset,  # int, e.g. the step index: mixed into the Philox key
    row_offset,  # int global index of row 0 (unless ROW_OFFSET_FROM_PTR)
    B,  # rows
    M,  # elements per row
    T,  # number of timesteps (row length of coefs)
    CLIP: tl.constexpr,  # clamp pred_x0 to [-1, 1]
    NOISE: tl.constexpr,  # 1: read noise_ptr, 2: draw in the kernel (kernels/noise.py)
    SEED_FROM_PTR: tl.constexpr,
    ROW_OFFSET_FROM_PTR: tl.constexpr,
    ROWS: tl.constexpr,  # rows per program
    BLOCK_M: tl.constexpr,  # columns per program, a multiple of 4
):
    row0, col0, rows, row_ok, mask, base, offs = row_tile(B, M, ROWS, BLOCK_M)

    # 1. per-sample coefficients, gathered once per row
    t = tl.load(t_ptr + rows, mask=row_ok, other=0)  # (ROWS,)
    c_recip = tl.load(coefs_ptr + t, mask=row_ok, other=0.0)[:, None]
    c_recipm1 = tl.load(coefs_ptr + T + t, mask=row_ok, other=0.0)[:, None]
    c_mean1 = tl.load(coefs_ptr + 2 * T + t, mask=row_ok, other=0.0)[:, None]
    c_mean2 = tl.load(coefs_ptr + 3 * T + t, mask=row_ok, other=0.0)[:, None]
    logvar = tl.load(coefs_ptr + 4 * T + t, mask=row_ok, other=0.0)
    sigma = tl.where(t > 0, tl.exp(0.5 * logvar), 0.0)[:, None]  # no noise at t == 0

    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)

    # 2. x0 prediction (eq. 15), optionally clipped
    x0 = c_recip * x - c_recipm1 * eps
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)

    # 3. posterior mean (eq. 7) plus fixed-variance noise, then the reference's clamp
    mean = c_mean1 * x0 + c_mean2 * x
    if NOISE == 1:
        z = tl.load(noise_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        z = batch_randn_tile(seed_ptr, row_offset_ptr, seed, seed_offset, row_offset, row0, col0, M,
                             SEED_FROM_PTR, ROW_OFFSET_FROM_PTR, ROWS, BLOCK_M)
    x_prev = tl.minimum(tl.maximum(mean + sigma * z, -1.0), 1.0)

    tl.store(x_prev_ptr + base + offs, x_prev, mask=mask)
    tl.store(x0_ptr + base + offs, x0, mask=mask)


@launch.on_input_device
def ddpm_step(
    x_t: torch.Tensor,  # (B, ...)
    eps: torch.Tensor,  # (B, ...)
    t: torch.Tensor,  # (B,) int64
    noise: torch.Tensor | None,  # (B, ...) standard normal, or None: drawn in the kernel
    coefs: torch.Tensor,  # (5, T) float32
    clip: bool = True,
    *,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    seed_offset: int = 0,
    row_offset: int | torch.Tensor = 0,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One DDPM step; returns (x_prev, pred_x0), both shaped like x_t.

    Noise (only when noise is None), element (i, j) of the (B, M) view: a pure function of
    (seed, seed_offset, row_offset + i, j), see kernels/noise.py.
    seed: an int, a one-element int64 tensor on x_t's device (read inside the kernel, so a
        captured CUDA graph can be re-seeded between replays), or None: an int drawn from
        `generator` (else torch's default CPU generator).
    seed_offset: e.g. the step index, so one seed serves a whole loop; mixed into the key.
    row_offset: the global index of row 0 (int or one-element int64 device tensor), so a
        sample gets the same noise whatever chunk of a larger batch it is drawn in.
    out: optional contiguous (x_prev, pred_x0) buffers shaped like x_t; x_prev may be x_t
        itself (every element is read before it is written, by the same program).
    """
    if eps.shape != x_t.shape or (noise is not None and noise.shape != x_t.shape):
        raise ValueError("ddpm_step: x_t, eps and noise must have the same shape")
    B, M = launch.rows_and_columns(x_t)
    if t.shape != (B,):
        raise ValueError(f"ddpm_step: t must have shape ({B},), got {tuple(t.shape)}")
    if coefs.dim() != 2 or coefs.shape[0] != 5:
        raise ValueError(f"ddpm_step: coefs must be (5, T), got {tuple(coefs.shape)}")
    x_prev, x0 = launch.output_buffers(
        x_t, out, 2, "ddpm_step: out buffers must be contiguous, on x_t's device, shaped like x_t")
    x_c = x_t.contiguous()
    t_c = t.to(device=x_t.device, dtype=torch.int64).contiguous()
    if noise is not None:
        noise_c, mode = noise.contiguous(), 1
        rng = no_noise_args(t_c)
    else:
        noise_c, mode = x_c, 2  # x_c: a placeholder pointer, never read
        rng = noise_args(seed, seed_offset, row_offset, generator, t_c)
    if x_t.numel() == 0:
        return x_prev, x0
    coefs_c = coefs.to(device=x_t.device, dtype=torch.float32).contiguous()

    rows, block_m = launch.elementwise_tile(B, M)
    _ddpm_step_kernel[launch.elementwise_grid(B, M, rows, block_m)](
        x_c, eps.contiguous(), noise_c, t_c, coefs_c, x_prev, x0,
        rng.seed_ptr, rng.row_offset_ptr, rng.seed, rng.seed_offset, rng.row_offset,
        B, M, coefs_c.shape[1],
        CLIP=bool(clip), NOISE=mode, SEED_FROM_PTR=rng.seed_from_ptr,
        ROW_OFFSET_FROM_PTR=rng.row_offset_from_ptr, ROWS=rows, BLOCK_M=block_m, num_warps=4,
    )
    return x_prev, x0

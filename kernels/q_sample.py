"""q_sample: forward noising with the noise drawn in the same Triton kernel (training).

    noise ~ N(0, I);  x_t = sqrt_alphas_cumprod[t] * x0 + sqrt_one_minus_alphas_cumprod[t] * noise

Same semantics as `pdiff_fast.ops.q_sample.q_sample_torch`; `coefs` is the (2, T) table
described there. Returns (x_t, noise): the noise actually used, so the epsilon target is exact.
When noise is None it is drawn inside the kernel (kernels/noise.py, the same noise as ddpm_step
for the same seed arguments) instead of a separate torch.randn launch whose output is read back.

Floor (bytes moved per call, fp32, N = B*M elements):
    noise drawn:  read x0        + write x_t, noise = 3 * 4 * N bytes   (torch: 4 * 4 * N, 2 launches)
    noise given:  read x0, noise + write x_t        = 3 * 4 * N bytes
plus the coefficient gathers (2 floats and one int64 per sample). The backward (when x0 or a
given noise requires grad) reads the upstream gradient and writes each needed gradient:
2 * 4 * N bytes per gradient.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch
from .tiles import row_tile
from .noise import batch_randn_tile, no_noise_args, noise_args


@triton.jit(do_not_specialize=["seed", "seed_offset", "row_offset", "B"])
def _q_sample_fwd_kernel(
    x0_ptr,  # (B, M) clean sample
    noise_ptr,  # (B, M) noise: read when NOISE == 1, written when NOISE == 2
    t_ptr,  # (B,) int64 timesteps
    coefs_ptr,  # (2, T) float32: sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod
    x_t_ptr,  # (B, M) output
    seed_ptr,  # (1,) int64 device seed; unused unless SEED_FROM_PTR
    row_offset_ptr,  # (1,) int64 global index of row 0; unused unless ROW_OFFSET_FROM_PTR
    seed,  # int Philox seed (unless SEED_FROM_PTR)
    seed_offset,  # int, e.g. the training step: mixed into the Philox key
    row_offset,  # int global index of row 0 (unless ROW_OFFSET_FROM_PTR)
    B,  # rows
    M,  # elements per row
    T,  # number of timesteps
    NOISE: tl.constexpr,  # 1: read noise_ptr, 2: draw in the kernel and store to noise_ptr
    SEED_FROM_PTR: tl.constexpr,
    ROW_OFFSET_FROM_PTR: tl.constexpr,
    ROWS: tl.constexpr,  # rows per program
    BLOCK_M: tl.constexpr,  # columns per program, a multiple of 4
):
    row0, col0, rows, row_ok, mask, base, offs = row_tile(B, M, ROWS, BLOCK_M)

    t = tl.load(t_ptr + rows, mask=row_ok, other=0)  # (ROWS,)
    c_signal = tl.load(coefs_ptr + t, mask=row_ok, other=0.0)[:, None]
    c_noise = tl.load(coefs_ptr + T + t, mask=row_ok, other=0.0)[:, None]

    x0 = tl.load(x0_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    if NOISE == 1:
        z = tl.load(noise_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    else:
        z = batch_randn_tile(seed_ptr, row_offset_ptr, seed, seed_offset, row_offset, row0, col0, M,
                             SEED_FROM_PTR, ROW_OFFSET_FROM_PTR, ROWS, BLOCK_M)
        # x_t is built from the noise as returned (rounded to its dtype), so that in fp16 / bf16 the
        # training target is the noise that went into x_t
        z = z.to(noise_ptr.dtype.element_ty).to(tl.float32)
        tl.store(noise_ptr + base + offs, z, mask=mask)
    tl.store(x_t_ptr + base + offs, c_signal * x0 + c_noise * z, mask=mask)


@triton.jit
def _q_sample_bwd_kernel(
    grad_ptr,  # (B, M) upstream gradient wrt x_t
    t_ptr,  # (B,) int64
    coefs_ptr,  # (2, T) float32
    grad_x0_ptr,  # (B, M) output: sqrt_alphas_cumprod[t] * grad; unused unless NEED_X0
    grad_noise_ptr,  # (B, M) output: sqrt_one_minus_alphas_cumprod[t] * grad; unused unless NEED_NOISE
    B,  # rows
    M,  # elements per row
    T,  # number of timesteps
    NEED_X0: tl.constexpr,
    NEED_NOISE: tl.constexpr,
    ROWS: tl.constexpr,
    BLOCK_M: tl.constexpr,
):
    pid = tl.program_id(0)
    n_col_blocks = tl.cdiv(M, BLOCK_M)
    rows = (pid // n_col_blocks) * ROWS + tl.arange(0, ROWS)  # (ROWS,)
    cols = (pid % n_col_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)  # (BLOCK_M,)
    row_ok = rows < B
    mask = row_ok[:, None] & (cols < M)[None, :]
    offs = rows.to(tl.int64)[:, None] * M + cols[None, :]
    t = tl.load(t_ptr + rows, mask=row_ok, other=0)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if NEED_X0:
        c_signal = tl.load(coefs_ptr + t, mask=row_ok, other=0.0)[:, None]
        tl.store(grad_x0_ptr + offs, c_signal * g, mask=mask)
    if NEED_NOISE:
        c_noise = tl.load(coefs_ptr + T + t, mask=row_ok, other=0.0)[:, None]
        tl.store(grad_noise_ptr + offs, c_noise * g, mask=mask)


def _q_sample_forward(x0, t, coefs, noise, rng, x_t, noise_out):
    """Launch the forward kernel on contiguous x0; fills x_t and (when drawn) noise_out."""
    if x0.numel() == 0:
        return
    B, M = launch.rows_and_columns(x0)
    noise_ptr, mode = (noise, 1) if noise is not None else (noise_out, 2)
    rows, block_m = launch.elementwise_tile(B, M)
    _q_sample_fwd_kernel[launch.elementwise_grid(B, M, rows, block_m)](
        x0, noise_ptr, t, coefs, x_t, rng.seed_ptr, rng.row_offset_ptr,
        rng.seed, rng.seed_offset, rng.row_offset, B, M, coefs.shape[1],
        NOISE=mode, SEED_FROM_PTR=rng.seed_from_ptr, ROW_OFFSET_FROM_PTR=rng.row_offset_from_ptr,
        ROWS=rows, BLOCK_M=block_m, num_warps=4,
    )


def _q_sample_backward(grad, t, coefs, need_x0, need_noise):
    grad = grad.contiguous()
    grad_x0 = torch.empty_like(grad) if need_x0 else None
    grad_noise = torch.empty_like(grad) if need_noise else None
    if grad.numel() == 0:
        return grad_x0, grad_noise
    B, M = launch.rows_and_columns(grad)
    rows, block_m = launch.elementwise_tile(B, M)
    _q_sample_bwd_kernel[launch.elementwise_grid(B, M, rows, block_m)](
        grad, t, coefs, grad_x0 if need_x0 else grad, grad_noise if need_noise else grad,
        B, M, coefs.shape[1],
        NEED_X0=need_x0, NEED_NOISE=need_noise, ROWS=rows, BLOCK_M=block_m, num_warps=4,
    )
    return grad_x0, grad_noise


class QSampleFunction(torch.autograd.Function):
    """x_t = c_signal[t] * x0 + c_noise[t] * noise; differentiable in x0 and a given noise."""

    @staticmethod
    def forward(ctx, x0, noise, noise_out, t, coefs, rng):
        x0 = x0.contiguous()
        x_t = torch.empty_like(x0)
        _q_sample_forward(x0, t, coefs, noise, rng, x_t, noise_out)
        ctx.save_for_backward(t, coefs)
        ctx.mark_non_differentiable(noise_out)
        return x_t, noise_out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x_t, _grad_noise_out):
        t, coefs = ctx.saved_tensors
        need_x0, need_noise = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        if grad_x_t is None or not (need_x0 or need_noise):
            return (None,) * 6
        grad_x0, grad_noise = _q_sample_backward(grad_x_t, t, coefs, need_x0, need_noise)
        return grad_x0, grad_noise, None, None, None, None


@launch.on_input_device
def q_sample(
    x0: torch.Tensor,  # (B, ...)
    t: torch.Tensor,  # (B,) int64
    coefs: torch.Tensor,  # (2, T) float32
    noise: torch.Tensor | None = None,  # (B, ...) or None: drawn in the kernel
    generator: torch.Generator | None = None,
    *,
    seed: int | torch.Tensor | None = None,
    seed_offset: int = 0,
    row_offset: int | torch.Tensor = 0,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise x0 to timestep t; returns (x_t, noise), both shaped like x0.

    When noise is None the kernel draws it as in `ddpm_step` (kernels/noise.py): element (i, j)
    is a function of (seed, seed_offset, row_offset + i, j). seed: an int, a one-element int64
    device tensor read in the kernel, or None: an int drawn with torch.randint from `generator`
    (default: torch's CPU generator). out: an optional contiguous buffer for x_t (only without
    autograd).
    """
    B = x0.shape[0] if x0.dim() > 0 else 1
    if noise is not None and noise.shape != x0.shape:
        raise ValueError("q_sample: noise must have the shape of x0")
    if t.shape != (B,):
        raise ValueError(f"q_sample: t must have shape ({B},), got {tuple(t.shape)}")
    if coefs.dim() != 2 or coefs.shape[0] < 2:
        raise ValueError(f"q_sample: coefs must be (2, T), got {tuple(coefs.shape)}")
    t_c = t.to(device=x0.device, dtype=torch.int64).contiguous()
    coefs_c = coefs[:2].to(device=x0.device, dtype=torch.float32).contiguous()
    noise_c = noise.contiguous() if noise is not None else None
    noise_out = torch.empty_like(x0, memory_format=torch.contiguous_format) if noise is None else None
    rng = noise_args(seed, seed_offset, row_offset, generator, t_c) if noise is None else no_noise_args(t_c)

    needs_grad = torch.is_grad_enabled() and (
        x0.requires_grad or (noise is not None and noise.requires_grad))
    if needs_grad:
        if out is not None:
            raise ValueError("q_sample: out= is not supported when x0 or noise requires grad")
        placeholder = noise_out if noise_out is not None else torch.empty(0, device=x0.device)
        x_t, _ = QSampleFunction.apply(x0, noise_c, placeholder, t_c, coefs_c, rng)
        return x_t, (noise_out if noise is None else noise)

    (out,) = launch.output_buffers(x0, None if out is None else (out,), 1,
                                   "q_sample: out must be contiguous, on x0's device, shaped like x0")
    _q_sample_forward(x0.contiguous(), t_c, coefs_c, noise_c, rng, out, noise_out)
    return out, (noise_out if noise is None else noise)

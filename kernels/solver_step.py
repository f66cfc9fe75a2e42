"""solver_step: one step of a few-step sampler (DPM-Solver++ 2M and its SDE, Euler ancestral) as
a single Triton kernel.

    x0  = (x_t - b * eps) / a,  clamped to [-1, 1] if clip
    out = cx * x_t + c0 * x0 + c1 * x0_prev + cz * noise,  clamped to [-1, 1] if clamp

Same semantics as `pdiff_fast.ops.solver_step.solver_step_torch`; the scalars come from the host
(computed once per schedule in float64), so the kernel is an elementwise pass over (rows, columns)
tiles like ddim_step. The x0_prev term is compiled in only for second-order steps (HAS_PREV), the
noise only for stochastic ones: given, or drawn in the kernel from (seed, step, global row, column)
(kernels/noise.py), which keeps a model's noise independent of its chunk.

Floor (bytes moved per call, fp32, N = numel): read x_t, eps [+ x0_prev] [+ noise] and write out,
x0: 4 * 4 * N to 6 * 4 * N bytes. No backward (sampling runs under no_grad).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pdiff_fast.ops.solver_step import StepCoefs, check_inputs

from . import launch
from .tiles import row_tile
from .noise import batch_randn_tile, noise_source


@triton.jit(do_not_specialize=["seed", "seed_offset", "row_offset", "B"])
def _solver_step_kernel(
    x_ptr,  # (B, M) x_t
    eps_ptr,  # (B, M) predicted noise
    prev_ptr,  # (B, M) the previous step's x0; read when HAS_PREV
    noise_ptr,  # (B, M) standard normal; read when NOISE == 1
    out_ptr,  # (B, M) output: the next x
    x0_ptr,  # (B, M) output: this step's x0
    seed_ptr, row_offset_ptr,  # (1,) int64 device seed / first row; read when ..._FROM_PTR
    seed, seed_offset, row_offset,  # ints: the in-kernel noise's seed, step and first row
    B, M,  # rows, elements per row
    a, b, cx, c0, c1, cz,  # the step's scalars (module docstring)
    CLIP: tl.constexpr,  # clamp x0
    CLAMP: tl.constexpr,  # clamp the output
    HAS_PREV: tl.constexpr,  # add c1 * x0_prev
    NOISE: tl.constexpr,  # 0: none, 1: read noise_ptr, 2: draw in the kernel
    SEED_FROM_PTR: tl.constexpr,
    ROW_OFFSET_FROM_PTR: tl.constexpr,
    ROWS: tl.constexpr,  # rows per program
    BLOCK_M: tl.constexpr,  # columns per program, a multiple of 4
):
    row0, col0, rows, row_ok, mask, base, offs = row_tile(B, M, ROWS, BLOCK_M)
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    eps = tl.load(eps_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)

    x0 = (x - b * eps) / a
    if CLIP:
        x0 = tl.minimum(tl.maximum(x0, -1.0), 1.0)
    out = cx * x + c0 * x0
    if HAS_PREV:
        out += c1 * tl.load(prev_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    if NOISE == 1:
        out += cz * tl.load(noise_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    elif NOISE == 2:
        out += cz * batch_randn_tile(seed_ptr, row_offset_ptr, seed, seed_offset, row_offset, row0, col0, M,
                                     SEED_FROM_PTR, ROW_OFFSET_FROM_PTR, ROWS, BLOCK_M)
    if CLAMP:
        out = tl.minimum(tl.maximum(out, -1.0), 1.0)
    tl.store(out_ptr + base + offs, out, mask=mask)
    tl.store(x0_ptr + base + offs, x0, mask=mask)


@launch.on_input_device
def solver_step(
    x_t: torch.Tensor,  # (B, ...)
    eps: torch.Tensor,  # (B, ...)
    coefs: StepCoefs,
    x0_prev: torch.Tensor | None = None,  # (B, ...) when coefs.c1 != 0
    noise: torch.Tensor | None = None,  # (B, ...) standard normal, or None (drawn in-kernel if cz > 0)
    clip: bool = True,
    clamp: bool = True,
    *,
    generator: torch.Generator | None = None,
    seed: int | torch.Tensor | None = None,
    seed_offset: int = 0,
    row_offset: int | torch.Tensor = 0,
    out: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One solver step; returns (out, x0), both shaped like x_t. generator / seed / seed_offset /
    row_offset: as in `ddpm_step`, used only when cz > 0 and noise is None. out: optional
    contiguous (out, x0) buffers shaped like x_t (the first may be x_t)."""
    coefs = StepCoefs(*map(float, coefs))
    check_inputs(x_t, eps, coefs, x0_prev, noise)
    x_next, x0 = launch.output_buffers(
        x_t, out, 2, "solver_step: out buffers must be contiguous, on x_t's device, shaped like x_t")
    x_c = x_t.contiguous()
    has_prev = coefs.c1 != 0.0
    prev_c = x0_prev.contiguous() if has_prev else x_c
    noise_c, mode, rng = noise_source(coefs.cz, noise, seed, seed_offset, row_offset, generator, x_c)
    if x_t.numel() == 0:
        return x_next, x0
    B, M = launch.rows_and_columns(x_t)
    rows, block_m = launch.elementwise_tile(B, M)
    _solver_step_kernel[launch.elementwise_grid(B, M, rows, block_m)](
        x_c, eps.contiguous(), prev_c, noise_c, x_next, x0,
        rng.seed_ptr, rng.row_offset_ptr, rng.seed, rng.seed_offset, rng.row_offset, B, M, *coefs,
        CLIP=bool(clip), CLAMP=bool(clamp), HAS_PREV=has_prev, NOISE=mode, SEED_FROM_PTR=rng.seed_from_ptr,
        ROW_OFFSET_FROM_PTR=rng.row_offset_from_ptr, ROWS=rows, BLOCK_M=block_m, num_warps=4,
    )
    return x_next, x0

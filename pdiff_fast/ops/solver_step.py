"""solver_step: one step of a few-step sampler (DPM-Solver++, Euler ancestral) as a linear update.

    x0  = (x_t - b * eps) / a                       (a = sqrt(alphas_cumprod[t]), b = sqrt(1 - that))
    x0  = clamp(x0, -1, 1)                          (if clip: the reference's x0 clipping)
    out = cx * x_t + c0 * x0 + c1 * x0_prev + cz * noise
    out = clamp(out, -1, 1)                         (if clamp: the reference clamps x_t too)

Every such sampler's step is this update with scalar coefficients that depend on the schedule
alone (host floats, computed once per schedule in float64): the solvers differ only in how they
compute (cx, c0, c1, cz), see pdiff_fast/diffusion/few_step.py. x0_prev is the previous step's
x0 (the second-order term of a multistep solver; unused when c1 == 0), noise is standard normal
(unused when cz == 0).
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from .. import backend
from .noise import randn_like


class StepCoefs(NamedTuple):
    """The scalars of one solver_step (see the module docstring)."""

    a: float
    b: float
    cx: float
    c0: float
    c1: float = 0.0
    cz: float = 0.0


def solver_step_torch(
    x_t: torch.Tensor,  # (B, ...)
    eps: torch.Tensor,  # (B, ...)
    coefs: StepCoefs,
    x0_prev: torch.Tensor | None = None,  # (B, ...) when coefs.c1 != 0
    noise: torch.Tensor | None = None,  # (B, ...) when coefs.cz != 0
    clip: bool = True,
    clamp: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = (x_t - coefs.b * eps) / coefs.a
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    out = coefs.cx * x_t + coefs.c0 * x0
    if coefs.c1 != 0.0:
        out = out + coefs.c1 * x0_prev
    if coefs.cz != 0.0:
        out = out + coefs.cz * noise
    return (out.clamp(-1.0, 1.0) if clamp else out), x0


def check_inputs(x_t, eps, coefs: StepCoefs, x0_prev, noise) -> None:
    if eps.shape != x_t.shape:
        raise ValueError(f"solver_step: eps {tuple(eps.shape)} and x_t {tuple(x_t.shape)} differ in shape")
    if coefs.c1 != 0.0 and (x0_prev is None or x0_prev.shape != x_t.shape):
        raise ValueError("solver_step: a second-order step (c1 != 0) needs x0_prev shaped like x_t")
    if noise is not None and noise.shape != x_t.shape:
        raise ValueError("solver_step: noise must be shaped like x_t")
    if not coefs.a > 0.0:
        raise ValueError(f"solver_step: a = sqrt(alphas_cumprod[t]) must be positive, got {coefs.a}")


def solver_step(x_t, eps, coefs: StepCoefs, x0_prev=None, noise=None, clip: bool = True, clamp: bool = True, *,
                generator=None, seed=None, seed_offset: int = 0, row_offset=0):
    """Dispatching entry point; returns (out, x0). With cz > 0 and noise=None the noise is drawn
    on the device: in the fused kernel on Triton (from seed, seed_offset, row_offset, the same
    noise as ddpm_step / ddim_step for the same arguments), torch.randn(generator=...) on torch."""
    coefs = StepCoefs(*map(float, coefs))
    check_inputs(x_t, eps, coefs, x0_prev, noise)
    if (not torch.compiler.is_compiling() and backend.choose("solver_step", x_t.device) == "triton"
            and backend.triton_dtypes(x_t, eps, x0_prev, noise)):
        return backend.load_triton_op("solver_step").solver_step(
            x_t, eps, coefs, x0_prev, noise, clip, clamp, generator=generator, seed=seed,
            seed_offset=seed_offset, row_offset=row_offset)
    if noise is None and coefs.cz != 0.0:
        noise = randn_like(x_t, generator)
    return solver_step_torch(x_t, eps, coefs, x0_prev, noise, clip, clamp)

"""ddpm_step: one ancestral DDPM step with the reference p-diff semantics.

    x0   = sqrt_recip_ac[t] * x_t - sqrt_recipm1_ac[t] * eps     (Ho et al. eq. 15)
    x0   = clamp(x0, -1, 1)                                       (if clip)
    mean = coef1[t] * x0 + coef2[t] * x_t                         (posterior mean, eq. 7)
    x    = mean + [t > 0] * exp(0.5 * logvar[t]) * noise
    x    = clamp(x, -1, 1)                                        (reference clamps x_t too)

`coefs` is a (5, T) float32 tensor on the device, rows in that order:
sqrt_recip_alphas_cumprod, sqrt_recipm1_alphas_cumprod, posterior_mean_coef1,
posterior_mean_coef2, model_log_variance (fixed-large or fixed-small).
"""
from __future__ import annotations

import torch

from .. import backend
from . import triton_ops
from .noise import randn_like


def _gather(row: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return row.gather(0, t).view(-1, *([1] * (like.dim() - 1)))  # (B, 1, ...)


def ddpm_step_torch(
    x_t: torch.Tensor,  # (B, ...)
    eps: torch.Tensor,  # (B, ...) model output
    t: torch.Tensor,  # (B,) int64
    noise: torch.Tensor,  # (B, ...) standard normal
    coefs: torch.Tensor,  # (5, T)
    clip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    x0 = _gather(coefs[0], t, x_t) * x_t - _gather(coefs[1], t, x_t) * eps
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
    mean = _gather(coefs[2], t, x_t) * x0 + _gather(coefs[3], t, x_t) * x_t
    nonzero = (t > 0).to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
    x_prev = mean + nonzero * torch.exp(0.5 * _gather(coefs[4], t, x_t)) * noise
    return x_prev.clamp(-1.0, 1.0), x0


def ddpm_step(x_t, eps, t, noise, coefs, clip: bool = True, *, generator=None, seed=None, seed_offset: int = 0,
              row_offset=0):
    """Dispatching entry point; returns (x_prev, pred_x0).

    noise=None draws it on the device. On Triton, inside the fused kernel: element (i, j) of the
    (B, M) view is a pure function of (seed, seed_offset, row_offset + i, j) (kernels/noise.py);
    seed and row_offset may be one-element int64 device tensors (re-seeding a captured CUDA
    graph); seed=None draws an int seed from `generator` (else torch's CPU generator). On the
    torch path: torch.randn(generator=...); seed, seed_offset and row_offset are not used.
    """
    if (backend.choose("ddpm_step", x_t.device) == "triton"
            and backend.triton_dtypes(x_t, eps, noise)):
        impl = triton_ops.implementation("ddpm_step")
        return impl.ddpm_step(
            x_t, eps, t, noise, coefs, clip, generator=generator, seed=seed, seed_offset=seed_offset,
            row_offset=row_offset)
    if noise is None:
        noise = randn_like(x_t, generator)
    return ddpm_step_torch(x_t, eps, t, noise, coefs, clip)

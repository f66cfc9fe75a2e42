"""ddim_step: one DDIM step (Song et al. 2021, eq. 12) from timestep t to t_prev.

    x0    = (x_t - sqrt(1 - a_t) * eps) / sqrt(a_t),  clamped to [-1, 1] if clip
    eps'  = (x_t - sqrt(a_t) * x0) / sqrt(1 - a_t)    (eps re-derived after the clamp)
    sigma = eta * sqrt((1 - a_prev) / (1 - a_t)) * sqrt(1 - a_t / a_prev)
    x     = sqrt(a_prev) * x0 + sqrt(1 - a_prev - sigma^2) * eps' + sigma * noise
    x     = clamp(x, -1, 1)                         (if clamp: as the reference's DDPM step clamps x_t)

a_t = alphas_cumprod[t]; a_prev = alphas_cumprod[t_prev], or 1 when t_prev < 0.
"""
from __future__ import annotations

import torch

from .. import backend
from . import triton_ops
from .noise import randn_like


def ddim_step_torch(
    x_t: torch.Tensor,  # (B, ...)
    eps: torch.Tensor,  # (B, ...)
    a_t: float,
    a_prev: float,
    noise: torch.Tensor | None,  # (B, ...) or None when eta == 0
    eta: float = 0.0,
    clip: bool = True,
    clamp: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    sqrt_a, sqrt_1ma = a_t**0.5, (1.0 - a_t) ** 0.5
    x0 = (x_t - sqrt_1ma * eps) / sqrt_a
    if clip:
        x0 = x0.clamp(-1.0, 1.0)
        eps = (x_t - sqrt_a * x0) / sqrt_1ma
    sigma = eta * ((1.0 - a_prev) / (1.0 - a_t)) ** 0.5 * (1.0 - a_t / a_prev) ** 0.5
    direction = max(1.0 - a_prev - sigma**2, 0.0) ** 0.5
    x_prev = a_prev**0.5 * x0 + direction * eps
    if sigma > 0:
        x_prev = x_prev + sigma * noise
    return (x_prev.clamp(-1.0, 1.0) if clamp else x_prev), x0


def ddim_step(x_t, eps, a_t: float, a_prev: float, noise, eta: float = 0.0, clip: bool = True, *,
              clamp: bool = False, generator=None, seed=None, seed_offset: int = 0, row_offset=0):
    """Dispatching entry point; returns (x_prev, pred_x0).

    With eta > 0 and noise=None the noise is drawn on the device, as in `ddpm_step`: in the
    fused kernel on Triton (from seed, seed_offset, row_offset; seed=None draws an int seed from
    `generator`), with torch.randn(generator=...) on the torch path.
    """
    if (backend.choose("ddim_step", x_t.device) == "triton"
            and backend.triton_dtypes(x_t, eps, noise)):
        impl = triton_ops.implementation("ddim_step")
        return impl.ddim_step(
            x_t, eps, a_t, a_prev, noise, eta, clip, clamp=clamp, generator=generator, seed=seed, seed_offset=seed_offset,
            row_offset=row_offset)
    if noise is None and eta > 0:
        noise = randn_like(x_t, generator)
    return ddim_step_torch(x_t, eps, a_t, a_prev, noise, eta, clip, clamp)

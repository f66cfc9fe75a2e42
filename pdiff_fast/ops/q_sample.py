"""q_sample: forward noising with the noise drawn in the same pass (training).

    noise ~ N(0, I);  x_t = sqrt_alphas_cumprod[t] * x0 + sqrt_one_minus_alphas_cumprod[t] * noise

Returns (x_t, noise); the noise is needed as the epsilon-prediction target.
`coefs` is a (2, T) float32 tensor: sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod.
"""
from __future__ import annotations

import torch

from .. import backend
from . import triton_ops
from .noise import randn_like


def q_sample_torch(
    x0: torch.Tensor,  # (B, ...)
    t: torch.Tensor,  # (B,) int64
    coefs: torch.Tensor,  # (2, T)
    noise: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if noise is None:
        noise = randn_like(x0, generator)
    shape = (-1,) + (1,) * (x0.dim() - 1)
    x_t = coefs[0].gather(0, t).view(shape) * x0 + coefs[1].gather(0, t).view(shape) * noise
    return x_t, noise


def q_sample(x0, t, coefs, noise=None, generator=None, *, seed=None, seed_offset: int = 0, row_offset=0):
    """Dispatching entry point; returns (x_t, noise).

    noise=None: drawn in the fused kernel on Triton, as in `ddpm_step` (from seed, seed_offset,
    row_offset; seed=None draws an int seed from `generator`); torch.randn(generator=...) on the
    torch path, where seed, seed_offset and row_offset are not used.
    """
    if (backend.choose("q_sample", x0.device) == "triton"
            and backend.triton_dtypes(x0, noise)):
        impl = triton_ops.implementation("q_sample")
        return impl.q_sample(
            x0, t, coefs, noise, generator, seed=seed, seed_offset=seed_offset, row_offset=row_offset)
    return q_sample_torch(x0, t, coefs, noise, generator)

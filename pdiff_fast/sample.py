"""Generation: sample latents from noise with the denoiser, decode them into parameter vectors.

All noise is drawn on the device. N models are sampled in one batch, split into chunks that fit
a memory budget, so thousands work.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from .diffusion import DDPMScheduler


@torch.no_grad()
def sample_latents(denoiser: nn.Module, scheduler: DDPMScheduler, n: int, latent_shape: tuple[int, ...],
                   device, generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Run the reverse process for n samples at once; returns (n, *latent_shape) in [-1, 1]."""
    x = torch.randn((n, *latent_shape), device=device, generator=generator)
    for t in tqdm(scheduler.timesteps(), desc=f"sample {n}", disable=not progress, leave=False):
        tt = torch.full((n,), t, device=device, dtype=torch.long)
        x = scheduler.step(denoiser(x, tt), tt, x, generator=generator).prev_sample
    return x


def chunk_size_for(latent_numel: int, in_dim: int, budget_bytes: int, denoiser_width: int = 512) -> int:
    """Samples per chunk: the widest activation (denoiser and decoder) times 4 bytes, a few times over."""
    per_sample = 4 * 8 * max(latent_numel * denoiser_width, in_dim * 64)
    return max(1, budget_bytes // per_sample)


@torch.no_grad()
def generate(autoencoder: nn.Module, denoiser: nn.Module, scheduler: DDPMScheduler, n: int = 200, *,
             device=None, seed: int | None = 0, memory_budget_bytes: int = 1 << 30, chunk_size: int | None = None,
             progress: bool = True) -> torch.Tensor:
    """Sample n parameter vectors: latents by diffusion, then the autoencoder's decoder. Returns (n, D)."""
    if n < 1:
        raise ValueError("generate: n must be at least 1")
    device = torch.device(device or next(denoiser.parameters()).device)
    latent_shape = autoencoder.latent_shape()
    if chunk_size is None:
        chunk_size = chunk_size_for(int(torch.Size(latent_shape).numel()), autoencoder.in_dim, memory_budget_bytes)
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    autoencoder.eval(), denoiser.eval()
    out = []
    for start in tqdm(range(0, n, chunk_size), desc="generate", disable=not progress):
        m = min(chunk_size, n - start)
        z = sample_latents(denoiser, scheduler, m, latent_shape, device, gen)
        out.append(autoencoder.decode(z))
    return torch.cat(out)  # (n, D)

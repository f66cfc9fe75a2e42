"""Generation: sample latents from noise with the denoiser, decode them into parameter vectors.

All noise is drawn on the device. N models are sampled in one batch, split into chunks that fit
a memory budget, so thousands work.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from . import backend
from .diffusion import DDIMScheduler, DDPMScheduler


@torch.no_grad()
def sample_latents(denoiser: nn.Module, scheduler: DDPMScheduler, n: int, latent_shape: tuple[int, ...],
                   device, generator: torch.Generator | None = None, progress: bool = False) -> torch.Tensor:
    """Run the reverse process for n samples at once; returns (n, *latent_shape) in [-1, 1]."""
    x = torch.randn((n, *latent_shape), device=device, generator=generator)
    for t in tqdm(scheduler.timesteps(), desc=f"sample {n}", disable=not progress, leave=False):
        tt = torch.full((n,), t, device=device, dtype=torch.long)
        x = scheduler.step(denoiser(x, tt), tt, x, generator=generator).prev_sample
    return x


class GraphedLatentSampler:
    """The whole reverse process for a fixed batch, captured once as a CUDA graph and replayed
    (CUDA + Triton only): noise is drawn inside the fused step kernel from a seed tensor that is
    rewritten before each replay, so one replay samples a fresh batch with no host work per step."""

    def __init__(self, denoiser: nn.Module, scheduler: DDPMScheduler, n: int, latent_shape, device,
                 generator: torch.Generator | None = None):
        if isinstance(scheduler, DDIMScheduler):
            raise ValueError("CUDA-graph sampling is implemented for the DDPM sampler")
        graphs = backend.load_triton_op("sample_graph")
        if isinstance(graphs, Exception):
            raise RuntimeError(f"CUDA-graph sampling needs Triton ({graphs})")
        self.seed = torch.zeros(1, dtype=torch.int64, device=device)
        steps = [torch.full((n,), t, device=device, dtype=torch.long) for t in scheduler.timesteps()]

        def run(x):
            for i, tt in enumerate(steps):
                x = scheduler.step(denoiser(x, tt), tt, x, seed=self.seed, seed_offset=i).prev_sample
            return x

        with backend.use_backend("triton"):
            example = torch.zeros((n, *latent_shape), device=device)
            self.graphed = graphs.GraphedSampler(run, example, seed=self.seed, generator=generator)
        self.shape, self.device = (n, *latent_shape), device

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        x = torch.randn(self.shape, device=self.device, generator=generator)
        return self.graphed.sample(x)


def chunk_size_for(latent_numel: int, in_dim: int, budget_bytes: int, denoiser_width: int = 512) -> int:
    """Samples per chunk: the widest activation (denoiser and decoder) times 4 bytes, a few times over."""
    per_sample = 4 * 8 * max(latent_numel * denoiser_width, in_dim * 64)
    return max(1, budget_bytes // per_sample)


@torch.no_grad()
def generate(autoencoder: nn.Module, denoiser: nn.Module, scheduler: DDPMScheduler, n: int = 200, *,
             device=None, seed: int | None = 0, memory_budget_bytes: int = 1 << 30, chunk_size: int | None = None,
             cuda_graph: bool = False, progress: bool = True) -> torch.Tensor:
    """Sample n parameter vectors: latents by diffusion, then the autoencoder's decoder. Returns (n, D).

    cuda_graph=True (CUDA + Triton, DDPM): capture the whole loop once per chunk size and replay it.
    """
    if n < 1:
        raise ValueError("generate: n must be at least 1")
    device = torch.device(device or next(denoiser.parameters()).device)
    latent_shape = autoencoder.latent_shape()
    if chunk_size is None:
        chunk_size = chunk_size_for(int(torch.Size(latent_shape).numel()), autoencoder.in_dim, memory_budget_bytes)
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    autoencoder.eval(), denoiser.eval()
    if cuda_graph and device.type != "cuda":
        raise ValueError("cuda_graph=True needs a CUDA device")
    graphed: dict[int, GraphedLatentSampler] = {}
    out = []
    for start in tqdm(range(0, n, chunk_size), desc="generate", disable=not progress):
        m = min(chunk_size, n - start)
        if cuda_graph:
            if m not in graphed:
                graphed[m] = GraphedLatentSampler(denoiser, scheduler, m, latent_shape, device)
            z = graphed[m].sample(gen)
        else:
            z = sample_latents(denoiser, scheduler, m, latent_shape, device, gen)
        out.append(autoencoder.decode(z))
    return torch.cat(out)  # (n, D)

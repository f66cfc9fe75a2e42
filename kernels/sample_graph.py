"""sample_graph: replay a whole sampling loop as one CUDA graph.

A p-diff sampling loop is hundreds of tiny launches (denoiser + one fused step per timestep)
on small tensors, so it is bound by launch latency, not bandwidth. Captured once into a
torch.cuda.CUDAGraph, the whole loop replays with a single host call.

    def run(x):                                    # static shapes, CUDA tensors, no host sync
        for i, t in enumerate(timesteps):          # t: precomputed CUDA tensors
            eps = denoiser(x, t)
            x, _ = ddpm_step(x, eps, t, None, coefs, seed=seed, seed_offset=i)
        return x

    seed = torch.zeros(1, dtype=torch.int64, device="cuda")
    sampler = GraphedSampler(run, torch.randn(B, C, L, device="cuda"), seed=seed)
    x = sampler.sample(torch.randn(B, C, L, device="cuda"))

Rules for `run` (those of CUDA graph capture, see the torch.cuda.graphs documentation):
static shapes; no host synchronisation (.item(), printing, CPU<->GPU copies) and no
host-side decisions on tensor values; in-kernel noise instead of torch.randn-per-step.
Anything computed on the host during capture (an int seed drawn by the launcher, for
instance) is frozen into the graph: every replay reuses it. For fresh noise on each replay,
pass a one-element int64 CUDA tensor as `seed` to the kernels and to GraphedSampler, which
rewrites it before every replay.
"""
from __future__ import annotations

from typing import Callable

import torch


class GraphedSampler:
    """Capture `run(x_init) -> x_final` once, then replay it for new initial noise."""

    def __init__(
        self,
        run: Callable[[torch.Tensor], torch.Tensor],
        example_x: torch.Tensor,  # a CUDA tensor of the shape and dtype of x_init
        seed: torch.Tensor | None = None,  # (1,) int64 CUDA tensor that `run` reads as its seed
        warmup_iters: int = 3,
        generator: torch.Generator | None = None,  # CPU generator for the per-replay seeds
    ):
        if not example_x.is_cuda:
            raise ValueError("GraphedSampler needs CUDA tensors")
        if seed is not None and (not seed.is_cuda or seed.dtype != torch.int64 or seed.numel() != 1):
            raise ValueError("GraphedSampler: seed must be a one-element int64 CUDA tensor")
        self.run = run
        self.seed = seed
        self.generator = generator
        self.static_x = example_x.detach().clone()

        # Warm up on a side stream (compiles Triton kernels, initialises cuBLAS workspaces and
        # lazily allocated buffers) so none of that lands inside the capture.
        # Sampling is inference: no autograd graph is recorded in warmup or capture.
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup_iters):
                    run(self.static_x)
            torch.cuda.current_stream().wait_stream(side)

            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = run(self.static_x)

    @torch.no_grad()
    def sample(self, x_init: torch.Tensor) -> torch.Tensor:
        """Run the captured loop from x_init; returns a fresh tensor (not the graph's buffer)."""
        if x_init.shape != self.static_x.shape:
            raise ValueError(f"GraphedSampler: captured for shape {tuple(self.static_x.shape)}, "
                             f"got {tuple(x_init.shape)}")
        self.static_x.copy_(x_init)
        if self.seed is not None:
            fresh = torch.randint(0, 2**31 - 1, (1,), generator=self.generator, dtype=torch.int64)
            self.seed.copy_(fresh)
        self.graph.replay()
        return self.static_out.clone()

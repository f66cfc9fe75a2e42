"""sample_graph: replay a whole sampling loop as one CUDA graph.

A p-diff sampling loop is hundreds of tiny launches (denoiser + one fused step per timestep)
on small tensors, so it is bound by launch latency, not bandwidth. Captured once into a
torch.cuda.CUDAGraph, the whole loop replays with a single host call.

    def run(x):                                    # static shapes, CUDA tensors, no host sync
        for i, t in enumerate(timesteps):          # t: precomputed CUDA tensors
            eps = denoiser(x, t)
            x, _ = ddpm_step(x, eps, t, None, coefs, seed=seed, seed_offset=i, row_offset=row_offset)
        return x

    seed = torch.zeros(1, dtype=torch.int64, device="cuda")
    row_offset = torch.zeros(1, dtype=torch.int64, device="cuda")
    sampler = GraphedSampler(run, torch.randn(B, C, L, device="cuda"), seed=seed, row_offset=row_offset,
                             warmup=first_step)        # optional: warm up on part of the loop
    x = sampler.sample(x_init, seed=1234, row_offset=start)   # models start .. start + B - 1

Rules for `run` (those of CUDA graph capture, see the torch.cuda.graphs documentation):
static shapes; no host synchronisation (.item(), printing, CPU<->GPU copies) and no
host-side decisions on tensor values; in-kernel noise instead of torch.randn-per-step.
Anything computed on the host during capture (an int seed drawn by the launcher, for
instance) is frozen into the graph: every replay reuses it. To choose the noise of each replay,
pass one-element int64 CUDA tensors as `seed` (and `row_offset`) to the kernels and to
GraphedSampler; `sample` writes the values it is given into them before the replay (explicit
values, no global RNG), so a replay draws exactly the noise of the uncaptured loop.
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
        row_offset: torch.Tensor | None = None,  # (1,) int64 CUDA tensor: `run`'s global row 0
        warmup: Callable[[torch.Tensor], torch.Tensor] | None = None,  # run before capture; default `run`
    ):
        if not example_x.is_cuda:
            raise ValueError("GraphedSampler needs CUDA tensors")
        for name, v in (("seed", seed), ("row_offset", row_offset)):
            if v is not None and (not v.is_cuda or v.dtype != torch.int64 or v.numel() != 1):
                raise ValueError(f"GraphedSampler: {name} must be a one-element int64 CUDA tensor")
        self.run = run
        self.seed = seed
        self.row_offset = row_offset
        self.static_x = example_x.detach().clone()

        # Warm up on a side stream so that nothing lazy lands inside the capture: compiling the
        # Triton kernels, cuBLAS / cuDNN workspaces, cached allocations. That takes one launch of
        # each kernel specialisation, not the whole loop: a sampling loop's steps differ only in
        # do_not_specialize ints (seed, seed_offset, row_offset), float scalars and tensor values,
        # so `warmup` can be a step or two of it (GraphedLatentSampler: the first and the last).
        # Sampling is inference: no autograd graph is recorded.
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                (warmup or run)(self.static_x)
            torch.cuda.current_stream().wait_stream(side)

            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.static_out = run(self.static_x)

    @torch.no_grad()
    def sample(self, x_init: torch.Tensor, seed: int | None = None, row_offset: int = 0) -> torch.Tensor:
        """Run the captured loop from x_init with the noise of (seed, row_offset); returns a fresh
        tensor (not the graph's buffer). seed is required when the sampler has a seed tensor."""
        if x_init.shape != self.static_x.shape:
            raise ValueError(f"GraphedSampler: captured for shape {tuple(self.static_x.shape)}, "
                             f"got {tuple(x_init.shape)}")
        if (seed is None) != (self.seed is None):
            raise ValueError("GraphedSampler: pass seed exactly when the sampler was built with a seed tensor")
        if row_offset and self.row_offset is None:
            raise ValueError("GraphedSampler: row_offset needs a row_offset tensor at construction")
        self.static_x.copy_(x_init)
        # fill_ on the device: no host-to-device copy, no sync
        if self.seed is not None:
            self.seed.fill_(int(seed))
        if self.row_offset is not None:
            self.row_offset.fill_(int(row_offset))
        self.graph.replay()
        return self.static_out.clone()

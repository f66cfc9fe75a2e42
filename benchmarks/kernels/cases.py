"""Inputs shared by the per-op kernel benchmarks (one file per op in this folder, mirroring
tests/kernels/ and kernels/).

Shapes of the elementwise DDPM ops, (rows, 1, M):
  sample  (1000, 1, 12): one reverse step for 1000 models of the resnet18 configuration's latent;
          launch-bound, what sampling runs 1000 times
  stream  (65536, 1, 1024) on CUDA (64 Mi elements, 256 MiB per tensor), (4096, 1, 256) on CPU:
          large enough that the time is the memory traffic, the case the bandwidth floor is for
"""
from __future__ import annotations

import pytest
import torch

from pdiff_fast import DDPMScheduler

from .. import common

SHAPES = ("sample", "stream")
# the fused op (auto, Triton on CUDA) and the torch reference op run in CI's quick pass too
PEERS = (pytest.param("auto", marks=pytest.mark.quick), pytest.param("torch", marks=pytest.mark.quick), "compile")


def shape(name: str, device: torch.device) -> tuple[int, int, int]:
    if name == "sample":
        return (1000, 1, 12)
    return (65536, 1, 1024) if device.type == "cuda" else (4096, 1, 256)


def inputs(name: str, device: torch.device, seed: int = 0) -> dict:
    """x in [-1, 1], eps ~ N(0, 1), t in [1, 999], and the (2, T) / (5, T) coefficient tables."""
    g = torch.Generator().manual_seed(seed)
    s = shape(name, device)
    noising, step = DDPMScheduler().tables(device)
    return {"x": (torch.rand(s, generator=g) * 2 - 1).to(device), "eps": torch.randn(s, generator=g).to(device),
            "t": torch.randint(1, 1000, (s[0],), generator=g).to(device), "noising": noising, "step": step}


def elementwise_work(x: torch.Tensor, tensors_read: int, tensors_written: int) -> dict:
    """The fewest bytes of an elementwise op over x's shape (fp32, noise drawn in registers) and the
    per-row timestep read; FLOPs are a few per element and never the bound, so 0 here."""
    return {"numel": x.numel(), "flops": 0,
            "bytes_min": 4 * x.numel() * (tensors_read + tensors_written) + 8 * x.shape[0]}


def time_elementwise(benchmark, fn, *, op: str, shape: str, x: torch.Tensor, device: torch.device, sizes,
                     peer: str, info: dict) -> None:
    """common.time_op for one elementwise op on one of SHAPES, grouped as op/shape[dims]."""
    common.time_op(benchmark, fn, device=device, sizes=sizes, peer=peer, stage=op,
                   group=f"{op}/{shape}{list(x.shape)}", info=info)

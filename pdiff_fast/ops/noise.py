"""Standard-normal noise for the torch paths of the noising / denoising ops."""
from __future__ import annotations

import torch


def randn_like(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """torch.randn of x's shape and dtype on x's device, drawn from `generator`.

    A generator on another device (a CPU generator for CUDA tensors, as the Triton paths accept)
    draws there and the noise is copied over, instead of torch's "Expected a 'cuda' device type
    for generator" error; the same generator then gives the same noise on every device.
    """
    if generator is None or generator.device.type == x.device.type:
        return torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    return torch.randn(x.shape, device=generator.device, dtype=x.dtype, generator=generator).to(x.device)


SEED_HIGH = 2**31 - 1  # in-kernel noise seeds are drawn from [0, SEED_HIGH)


def seed_tensor(generator: torch.Generator | None = None) -> torch.Tensor:
    """A (1,) int64 Philox seed for the Triton kernels' in-kernel noise, drawn from `generator`
    (else torch's default CPU generator) on its device, so results follow torch.manual_seed.
    Eager launchers take its value as an int; compiled calls pass the tensor (no .item())."""
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randint(0, SEED_HIGH, (1,), generator=generator, device=device)

"""eps_mse: the epsilon-prediction loss, mean((pred - target)^2) over everything.

The reference takes the per-sample mean then the batch mean; with equal-size samples
that is the plain mean.
"""
from __future__ import annotations

import torch

from .. import backend
from . import triton_ops


def eps_mse_torch(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return torch.mean((pred - target) ** 2)


def eps_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Dispatching entry point; a 0-dim tensor that backpropagates into `pred`."""
    if pred.shape != target.shape:
        raise ValueError(f"eps_mse: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if backend.choose("eps_mse", pred.device) == "triton" and backend.triton_dtypes(pred, target):
        impl = triton_ops.implementation("eps_mse")
        return impl.eps_mse(pred, target)
    return eps_mse_torch(pred, target)

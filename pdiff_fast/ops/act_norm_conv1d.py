"""act_norm_conv1d: the half-block every 1D-conv module here is made of.

    h = x + add                       # time embedding (denoiser), optional
    h = leaky_relu(h)                 # optional ("pre_act")
    h = instance_norm(h)              # per (sample, channel) over the length, no affine
    y = conv1d(h) | conv_transpose1d(h)
    y = y + residual                  # skip connection (denoiser decoder), optional
    y = tanh(y)                       # optional (last autoencoder encoder block)

Reference AE / denoiser blocks are two of these in a row. The torch function below is the
ground truth; `pdiff_fast.kernels.act_norm_conv1d` is the fused Triton version.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backend
from . import triton_ops

NEGATIVE_SLOPE = 0.01  # nn.LeakyReLU default, as in the reference
EPS = 1e-5  # nn.InstanceNorm1d default


def act_norm_conv1d_torch(
    x: torch.Tensor,  # (B, Cin, L)
    weight: torch.Tensor,  # (Cout, Cin, K), or (Cin, Cout, K) when transposed
    bias: torch.Tensor | None,  # (Cout,)
    *,
    stride: int = 1,
    padding: int = 0,
    transposed: bool = False,
    pre_act: bool = False,
    add: torch.Tensor | None = None,  # broadcastable to x: (B|1, 1|Cin, L)
    residual: torch.Tensor | None = None,  # (B, Cout, Lout)
    post_tanh: bool = False,
) -> torch.Tensor:
    h = x if add is None else x + add
    if pre_act:
        h = F.leaky_relu(h, NEGATIVE_SLOPE)
    h = F.instance_norm(h, eps=EPS)
    if transposed:
        y = F.conv_transpose1d(h, weight, bias, stride=stride, padding=padding)
    else:
        y = F.conv1d(h, weight, bias, stride=stride, padding=padding)
    if residual is not None:
        y = y + residual
    if post_tanh:
        y = torch.tanh(y)
    return y  # (B, Cout, Lout)


def act_norm_conv1d(x, weight, bias, **kwargs) -> torch.Tensor:
    """Dispatching entry point; same arguments as `act_norm_conv1d_torch`."""
    if x.dim() != 3:
        raise ValueError(f"act_norm_conv1d expects x of shape (B, C, L), got {tuple(x.shape)}")
    # "auto" trains on torch: on an H100 (triton 3.6) the fused forward + backward took 3.3x the
    # time of eager PyTorch per autoencoder training step (benchmarks/results/nvidia-h100.md);
    # without autograd (sampling) the fused kernels are 4.5x faster than eager
    training = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (x, weight, bias, kwargs.get("add"), kwargs.get("residual")))
    if (backend.choose("act_norm_conv1d", x.device, auto=not training) == "triton"
            and backend.triton_dtypes(x, weight, bias, kwargs.get("add"), kwargs.get("residual"))):
        impl = triton_ops.implementation("act_norm_conv1d")
        return impl.act_norm_conv1d(x, weight, bias, **kwargs)
    return act_norm_conv1d_torch(x, weight, bias, **kwargs)

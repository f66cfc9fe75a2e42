"""norm_affine_act: a per-model affine (generated BatchNorm / LayerNorm weight and bias)
and the activation after it, for N models at once.

    y[n] = act(x[n] * scale[n] + shift[n])          # x (B, C, L) shared, or (N, B, C, L)
    scale = weight * (1 / sqrt(running_var + eps))  # BatchNorm (running stats given), else weight
    shift = bias - running_mean * scale             # BatchNorm, else bias

act is "identity", "relu" or "leaky_relu" (negative_slope). The torch function is the
reference; the extension `pdiff_fast._C` fuses it into one pass (`ext` backend, float32 and
float64), the torch op `torch.ops.pdiff_fast.norm_affine_act(Tensor x, Tensor weight, Tensor bias,
Tensor? running_mean, Tensor? running_var, float eps, str act, float negative_slope) -> Tensor`
(its fake kernel, for torch.compile / torch.export, is registered below).
pdiff_fast.population_plan calls it for a normalisation layer whose affine is generated (for
LayerNorm: after F.layer_norm without affine, x (R, F, 1) or (N, R, F, 1), no running stats).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import backend
from .extension_ops import extension_op, register_fakes

_ACTS = {"identity": lambda y, s: y, "relu": lambda y, s: F.relu(y),
         "leaky_relu": lambda y, s: F.leaky_relu(y, s)}


def norm_affine_act_torch(x, weight, bias, running_mean=None, running_var=None, eps=1e-5,
                          act="relu", negative_slope=0.01) -> torch.Tensor:
    """Reference of the extension's norm_affine_act: x (B, C, L) or (N, B, C, L), weight/bias
    (N, C) -> act(x * scale + shift) (N, B, C, L); BatchNorm terms when running stats are given."""
    if act not in _ACTS:
        raise ValueError(f"norm_affine_act: unknown activation {act!r}; choose {', '.join(_ACTS)}")
    scale, shift = weight, bias  # (N, C)
    if running_mean is not None:
        scale = weight * (1 / torch.sqrt(running_var + eps))
        shift = bias - running_mean * scale
    y = x * scale[:, None, :, None] + shift[:, None, :, None]  # (N, B, C, L)
    return _ACTS[act](y, negative_slope)


def norm_affine_act(x, weight, bias, running_mean=None, running_var=None, eps=1e-5,
                    act="relu", negative_slope=0.01) -> torch.Tensor:
    """Dispatching entry point; same arguments as `norm_affine_act_torch`."""
    supported = x.dtype in (torch.float32, torch.float64)
    if supported and backend.choose("norm_affine_act", x.device) == "ext":
        return extension_op("norm_affine_act")(x, weight, bias, running_mean, running_var, eps, act,
                                                negative_slope)
    return norm_affine_act_torch(x, weight, bias, running_mean, running_var, eps, act, negative_slope)


def _norm_affine_act_fake(x, weight, bias, running_mean=None, running_var=None, eps=1e-5, act="relu",
                          negative_slope=0.01):
    torch._check(x.dim() in (3, 4), lambda: f"norm_affine_act: x must be (B, C, L) or (N, B, C, L), "
                                            f"got {tuple(x.shape)}")
    torch._check(weight.dim() == 2, lambda: f"norm_affine_act: weight must be (N, C), got {tuple(weight.shape)}")
    return x.new_empty((weight.shape[0], *x.shape[-3:]))


FAKE_REGISTERED = register_fakes({"norm_affine_act": _norm_affine_act_fake})

"""flatten_params / unflatten_params: gather a parameter subset of N models into one
(N, D) tensor and scatter it back.

A segment table (offset, numel per tensor) describes where each tensor lives in a row.
The torch functions are the reference; the extension `pdiff_fast._C` does all segments of
all models in one launch (`ext` backend).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import backend


def _check_sources(sources: Sequence[Sequence[torch.Tensor]], numels: Sequence[int]) -> None:
    if len(sources) == 0:
        raise ValueError("flatten_params: no models given (N = 0)")
    for i, tensors in enumerate(sources):
        if len(tensors) != len(numels):
            raise ValueError(f"flatten_params: model {i} has {len(tensors)} tensors, the spec has {len(numels)}")
        for j, (t, n) in enumerate(zip(tensors, numels)):
            if t.numel() != n:
                raise ValueError(f"flatten_params: model {i} tensor {j} has {t.numel()} values, the spec says {n}")


def flatten_params_torch(sources, numels, dtype=torch.float32) -> torch.Tensor:
    rows = [torch.cat([t.detach().reshape(-1).to(dtype) for t in tensors]) for tensors in sources]
    return torch.stack(rows)  # (N, D)


def unflatten_params_torch(flat: torch.Tensor, shapes, dtypes) -> list[torch.Tensor]:
    out, offset = [], 0
    for shape, dtype in zip(shapes, dtypes):
        n = 1
        for s in shape:
            n *= s
        out.append(flat[:, offset:offset + n].reshape(flat.shape[0], *shape).to(dtype).contiguous())
        offset += n
    return out  # each (N, *shape)


def unflatten_into_torch(flat: torch.Tensor, targets) -> None:
    for row, tensors in zip(flat, targets):
        offset = 0
        for t in tensors:
            n = t.numel()
            with torch.no_grad():
                t.copy_(row[offset:offset + n].view_as(t))
            offset += n


def flatten_params(sources, numels, dtype=torch.float32) -> torch.Tensor:
    """sources[i] lists model i's subset tensors in spec order -> (N, D) tensor of `dtype`."""
    _check_sources(sources, numels)
    device = sources[0][0].device
    if backend.choose("flatten_params", device, ("ext",)) == "ext":
        return backend.load_extension().flatten_params(sources, list(numels), dtype)
    return flatten_params_torch(sources, numels, dtype)


def unflatten_params(flat: torch.Tensor, shapes, dtypes) -> list[torch.Tensor]:
    """(N, D) -> one stacked tensor (N, *shape) per segment, cast to each segment's dtype."""
    D = sum(int(torch.Size(s).numel()) for s in shapes)
    if flat.dim() != 2 or flat.shape[1] != D:
        raise ValueError(f"unflatten_params: expected a (N, {D}) tensor, got {tuple(flat.shape)}")
    if flat.shape[0] == 0:
        raise ValueError("unflatten_params: no rows (N = 0)")
    if backend.choose("unflatten_params", flat.device, ("ext",)) == "ext":
        return backend.load_extension().unflatten_params(flat, [list(s) for s in shapes], list(dtypes))
    return unflatten_params_torch(flat, shapes, dtypes)


def unflatten_into(flat: torch.Tensor, targets) -> None:
    """Copy row i of `flat` into model i's tensors `targets[i]` (in place)."""
    _check_sources(targets, [t.numel() for t in targets[0]] if targets else [])
    D = sum(t.numel() for t in targets[0])
    if flat.dim() != 2 or flat.shape != (len(targets), D):
        raise ValueError(f"unflatten_into: expected a ({len(targets)}, {D}) tensor, got {tuple(flat.shape)}")
    if backend.choose("unflatten_into", flat.device, ("ext",)) == "ext":
        return backend.load_extension().unflatten_into(flat, targets)
    return unflatten_into_torch(flat, targets)

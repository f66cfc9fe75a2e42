"""flatten_params / unflatten_params: gather a parameter subset of N models into one
(N, D) tensor and scatter it back.

A segment table (offset, numel per tensor) describes where each tensor lives in a row.
The torch functions are the reference; the extension `pdiff_fast._C` does all segments of
all models in one launch (`ext` backend).

The extension's three are torch ops, so torch.compile / torch.export trace through them:

    torch.ops.pdiff_fast.flatten_params(Tensor[] sources, int n_models, int[] numels, ScalarType dtype) -> Tensor
    torch.ops.pdiff_fast.unflatten_params(Tensor flat, int[] sizes, int[] ndims, int[] dtype_codes) -> Tensor[]
    torch.ops.pdiff_fast.unflatten_into(Tensor flat, Tensor(a!)[] targets, int n_models) -> ()

Schemas take no nested lists: N models' tensors come as one flat list (model i's tensor j at
index i * n_segments + j), the segments' shapes as their sizes end to end plus each one's
number of dims, their dtypes as c10::ScalarType codes (DTYPE_CODES; torch accepts a
`ScalarType[]` schema argument but torch.export cannot serialize one). `*_ext` below turn the
nested arguments of the Python API into these. The ops
are not differentiable (outputs never require grad; writing into live parameters is allowed).
Their fake (meta) implementations are registered here when the extension is built
(pdiff_fast/ops/extension_ops.py).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import backend
from .extension_ops import extension_op, register_fakes


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


def flatten_params_ext(sources, numels, dtype=torch.float32) -> torch.Tensor:
    """torch.ops.pdiff_fast.flatten_params on sources[i][j] (model i's tensor j); no Python checks."""
    flat_sources = [t for tensors in sources for t in tensors]
    return extension_op("flatten_params")(flat_sources, len(sources), list(numels), dtype)


# c10::ScalarType codes (the enum's values, as TorchScript gives dtypes); the extension takes
# float16 / bfloat16 / float32 / float64 and names any other dtype in its error
DTYPE_CODES = {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4,
               torch.float16: 5, torch.float32: 6, torch.float64: 7, torch.complex64: 9,
               torch.complex128: 10, torch.bool: 11, torch.bfloat16: 15}
_CODE_DTYPES = {code: dtype for dtype, code in DTYPE_CODES.items()}


def dtype_code(dtype: torch.dtype) -> int:
    """The c10::ScalarType code of `dtype` (unflatten_params' dtype_codes)."""
    if dtype not in DTYPE_CODES:
        raise ValueError(f"unflatten_params: dtype {dtype} is not supported; supported dtypes are float16, "
                         "bfloat16, float32 and float64")
    return DTYPE_CODES[dtype]


def _shape_lists(shapes) -> tuple[list[int], list[int]]:
    """[(2, 3), (), (5,)] -> sizes [2, 3, 5], ndims [2, 0, 1]."""
    return [int(s) for shape in shapes for s in shape], [len(shape) for shape in shapes]


def unflatten_params_ext(flat: torch.Tensor, shapes, dtypes) -> list[torch.Tensor]:
    """torch.ops.pdiff_fast.unflatten_params with nested shapes; no Python checks."""
    sizes, ndims = _shape_lists(shapes)
    return extension_op("unflatten_params")(flat, sizes, ndims, [dtype_code(d) for d in dtypes])


def unflatten_into_ext(flat: torch.Tensor, targets) -> None:
    """torch.ops.pdiff_fast.unflatten_into on targets[i][j] (model i's tensor j); no Python checks."""
    extension_op("unflatten_into")(flat, [t for tensors in targets for t in tensors], len(targets))


def flatten_params(sources, numels, dtype=torch.float32) -> torch.Tensor:
    """sources[i] lists model i's subset tensors in spec order -> (N, D) tensor of `dtype`."""
    _check_sources(sources, numels)
    device = sources[0][0].device if len(sources[0]) else torch.device("cpu")
    if backend.choose("flatten_params", device) == "ext":
        return flatten_params_ext(sources, numels, dtype)
    return flatten_params_torch(sources, numels, dtype)


def unflatten_params(flat: torch.Tensor, shapes, dtypes) -> list[torch.Tensor]:
    """(N, D) -> one stacked tensor (N, *shape) per segment, cast to each segment's dtype."""
    D = sum(int(torch.Size(s).numel()) for s in shapes)
    if flat.dim() != 2 or flat.shape[1] != D:
        raise ValueError(f"unflatten_params: expected a (N, {D}) tensor, got {tuple(flat.shape)}")
    if flat.shape[0] == 0:
        raise ValueError("unflatten_params: no rows (N = 0)")
    if backend.choose("unflatten_params", flat.device) == "ext":
        return unflatten_params_ext(flat, shapes, dtypes)
    return unflatten_params_torch(flat, shapes, dtypes)


def unflatten_into(flat: torch.Tensor, targets) -> None:
    """Copy row i of `flat` into model i's tensors `targets[i]` (in place)."""
    _check_sources(targets, [t.numel() for t in targets[0]] if targets else [])
    D = sum(t.numel() for t in targets[0])
    if flat.dim() != 2 or flat.shape != (len(targets), D):
        raise ValueError(f"unflatten_into: expected a ({len(targets)}, {D}) tensor, got {tuple(flat.shape)}")
    if backend.choose("unflatten_into", flat.device) == "ext":
        return unflatten_into_ext(flat, targets)
    return unflatten_into_torch(flat, targets)


# --- fake (meta) implementations: output shapes and dtypes for torch.compile / torch.export ---

def _flatten_params_fake(sources, n_models, numels, dtype):
    torch._check(len(sources) == n_models * len(numels),
                 lambda: f"flatten_params: sources has {len(sources)} tensors, expected n_models * "
                         f"n_segments = {n_models} * {len(numels)}")
    device = sources[0].device if len(sources) else torch.device("cpu")
    return torch.empty((n_models, sum(numels)), dtype=dtype, device=device)


def _unflatten_params_fake(flat, sizes, ndims, dtype_codes):
    torch._check(len(ndims) == len(dtype_codes),
                 lambda: f"unflatten_params: {len(ndims)} shapes but {len(dtype_codes)} dtypes")
    torch._check(sum(ndims) == len(sizes),
                 lambda: f"unflatten_params: the ndims add up to {sum(ndims)} but {len(sizes)} sizes were given")
    outs, first = [], 0
    for ndim, code in zip(ndims, dtype_codes):
        torch._check(code in _CODE_DTYPES, lambda: f"unflatten_params: dtype code {code} is not supported")
        outs.append(flat.new_empty((flat.shape[0], *sizes[first:first + ndim]), dtype=_CODE_DTYPES[code]))
        first += ndim
    return outs


def _unflatten_into_fake(flat, targets, n_models):
    return None  # writes into targets; no outputs


FAKES_REGISTERED = register_fakes({"flatten_params": _flatten_params_fake,
                                   "unflatten_params": _unflatten_params_fake,
                                   "unflatten_into": _unflatten_into_fake})

"""The extension's torch ops: how the op files reach them and register their fake kernels.

Importing `pdiff_fast._C` registers the ops in the `pdiff_fast` library (csrc/*.cpp,
TORCH_LIBRARY); Python calls them only as torch.ops.pdiff_fast.<name>, so torch.compile and
torch.export trace through them once each op file has registered a fake (meta) kernel, which
gives output shapes and dtypes without running the op.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import backend


def extension_op(name: str):
    """torch.ops.pdiff_fast.<name>, which importing the extension registers; a clear error when
    the extension is not built or is an older build without the op."""
    if hasattr(torch.ops.pdiff_fast, name):
        return getattr(torch.ops.pdiff_fast, name)
    ext = backend.load_extension()
    if isinstance(ext, Exception):
        raise RuntimeError(f"pdiff_fast: {name} needs the extension pdiff_fast._C, which is not built ({ext})")
    raise RuntimeError(f"pdiff_fast: the extension pdiff_fast._C has no torch op pdiff_fast::{name}; "
                       "it is an older build: rebuild it (pip install --no-build-isolation -e .)")


def register_fakes(fakes: dict[str, Callable]) -> bool:
    """torch.library.register_fake for each op of `fakes` that the built extension has; False
    when the extension is not built (the package imports without it) or has none of them."""
    if isinstance(backend.load_extension(), Exception):
        return False
    registered = False
    for name, fake in fakes.items():
        if hasattr(torch.ops.pdiff_fast, name):  # an older build may lack the op
            torch.library.register_fake(f"pdiff_fast::{name}", fake)
            registered = True
    return registered

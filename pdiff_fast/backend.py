"""The one dispatch point: which implementation runs each hot op.

Backends:
  "torch"  - plain PyTorch reference (ground truth, CPU path)
  "triton" - fused Triton kernels from `pdiff_fast.kernels` (CUDA tensors; CPU tensors only
             under TRITON_INTERPRET=1)
  "ext"    - the C++/CUDA extension `pdiff_fast._C` (flatten/unflatten, population evaluation)
  "auto"   - the fastest one available for the tensor's device (Triton only for CUDA tensors)

`FAST_BACKENDS` is the one registry of the ops that have a fast path and which ones; an op
file calls `choose(op, device)` and gets "torch", "triton" or "ext".

Selection, strongest first: the `use_backend(...)` context manager, the environment variable
PDIFF_FAST_BACKEND, then "auto". An explicit backend applies to the ops that have it and the
others run torch (so `use_backend("triton")` can wrap a whole pipeline, whose flatten/unflatten
have no Triton kernel); an explicit backend that an op has but cannot run here (no CUDA, not
built) raises. "auto" falls back to torch with one warning per op, and leaves to torch the calls
an op marks as measured slower on its fast path (`choose(..., auto=False)`).

torch.compile traces `choose` (fullgraph): kernel modules and the extension are imported once and
looked up after, and the selection's inputs (use_backend, the environment, the device) are
guarded, so changing them recompiles instead of reusing a stale choice.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import threading
import warnings

import torch

BACKENDS = ("auto", "torch", "triton", "ext")
ENV_VAR = "PDIFF_FAST_BACKEND"

_state = threading.local()
_warned: set[str] = set()


def _requested() -> str:
    forced = getattr(_state, "backend", None)
    if forced is not None:
        return forced
    name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"{ENV_VAR}={name!r} is not a backend; choose one of {BACKENDS}")
    return name


def use_backend(name: str):
    """Force one backend for every op inside the block: `with use_backend("torch"): ...`."""
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; choose one of {BACKENDS}")
    previous = getattr(_state, "backend", None)
    _state.backend = name
    try:
        yield
    finally:
        _state.backend = previous


# decorators applied as calls (the same wrappers): mutmut leaves decorated functions unmutated
use_backend = contextlib.contextmanager(use_backend)


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# module name -> the module, or the exception its import raised. Imported once per process: a
# failed import is not retried (it would fail again, slowly), and a dict lookup is what lets
# torch.compile trace `choose` and the dispatchers (it will not trace importlib).
_imports: dict[str, object] = {}


def _import_or_none(module: str):
    if module not in _imports:
        _imports[module] = _import_now(module)
    return _imports[module]


def _import_now(module: str):
    try:
        return importlib.import_module(module)
    except Exception as exc:  # missing triton, missing kernel module, broken build
        return exc


def load_triton_op(op: str):
    """The Triton implementation of `op` (module `pdiff_fast.kernels.<op>`), or the import error."""
    return _import_or_none(f"pdiff_fast.kernels.{op}")


def load_extension():
    """The compiled extension `pdiff_fast._C`, or the import error."""
    return _import_or_none("pdiff_fast._C")


def _triton_import_error(op: str) -> str:
    """Why op's Triton kernel cannot be imported ("" when it can). A constant of the process (the
    import is done once), so torch.compile runs it while tracing, outside the graph, instead of
    tracing the import; every other input of `choose` (use_backend's thread-local, the environment
    variables, the device) stays traced and guarded, so a change recompiles."""
    mod = load_triton_op(op)
    return str(mod) if isinstance(mod, Exception) else ""


def _extension_error(cuda: bool) -> str:
    """Why the extension cannot run (on CUDA tensors when `cuda`), "" when it can; a constant of
    the process, as `_triton_import_error`."""
    ext = load_extension()
    if isinstance(ext, Exception):
        return f"the extension pdiff_fast._C is not built ({ext})"
    if cuda and not getattr(ext, "has_cuda", lambda: False)():
        return "the extension was built without CUDA"
    return ""


_triton_import_error = torch.compiler.assume_constant_result(_triton_import_error)  # as use_backend
_extension_error = torch.compiler.assume_constant_result(_extension_error)


TRITON_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_dtypes(*tensors) -> bool:
    """True when every given tensor (None skipped) has a dtype the Triton kernels take; they
    compute in fp32, so fp64 and others go to torch."""
    return all(x is None or x.dtype in TRITON_DTYPES for x in tensors)


def _warn_once(op: str, message: str) -> None:
    if op not in _warned:
        _warned.add(op)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


# The registry: every op with a fast path and its fast backends besides "torch", best first.
# A Triton op lives in kernels/<op>.py, the extension's in csrc/ (torch.ops.pdiff_fast.<op>).
FAST_BACKENDS: dict[str, tuple[str, ...]] = {
    "act_norm_conv1d": ("triton",),
    "ddpm_step": ("triton",),
    "ddim_step": ("triton",),
    "solver_step": ("triton",),
    "q_sample": ("triton",),
    "eps_mse": ("triton",),
    "flatten_params": ("ext",),
    "unflatten_params": ("ext",),
    "unflatten_into": ("ext",),
    "iou_matrix": ("ext",),
    "norm_affine_act": ("ext",),
}


def choose(op: str, device: torch.device, *, auto: bool = True) -> str:
    """Pick the backend for registered `op` on `device`: "torch", "triton" or "ext".

    auto=False: this call is one that "auto" runs on torch (an explicit backend still applies).
    """
    if op not in FAST_BACKENDS:
        raise KeyError(f"{op!r} is not a registered op; registered: {', '.join(FAST_BACKENDS)}")
    available = FAST_BACKENDS[op]
    requested = _requested()
    if requested == "torch" or (requested == "auto" and not auto):
        return "torch"
    if requested != "auto":
        if requested not in available:
            # an explicit request for a backend this op does not have: use torch, the op has no other
            return "torch"
        problem = _problem(requested, op, device)
        if problem:
            raise RuntimeError(f"backend {requested!r} was requested for {op} but {problem}")
        return requested
    for name in available:
        if name == "triton" and device.type != "cuda":
            continue  # auto never runs Triton's CPU interpreter: it is for tests, and slow
        problem = _problem(name, op, device)
        if problem is None:
            return name
        if name == "ext":  # one warning for the whole extension, not one per op
            _warn_once("ext", f"pdiff_fast: falling back to PyTorch for the extension ops because {problem}")
        elif device.type == "cuda":
            _warn_once(op, f"pdiff_fast: {op} falls back to PyTorch because {problem}")
    return "torch"


def _problem(name: str, op: str, device: torch.device) -> str | None:
    """None when backend `name` can run `op` on `device`, else why not."""
    if name == "triton":
        if device.type != "cuda" and not triton_interpreted():
            return "Triton kernels need CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors)"
        error = _triton_import_error(op)
        return f"its Triton kernel could not be imported ({error})" if error else None
    if name == "ext":
        return _extension_error(device.type == "cuda") or None
    return f"unknown backend {name!r}"

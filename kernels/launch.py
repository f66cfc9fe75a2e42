"""Host-side launch helpers shared by the kernel files: buffers, tile and grid sizes, and the dot
precision that follows torch's TF32 setting.

Kernel files call these through the module (`launch.alloc(...)`, not a `from` import), so a test
that patches `launch.alloc` or `launch.target_programs` reaches every launcher.
"""
from __future__ import annotations

import functools

import torch

MAX_SPLITS = 1024  # cap on programs along a split axis (grid axes 1 and 2 are limited to 65535 on CUDA)


def alloc(shape, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer the launchers create (outputs, partials); tests swap in a NaN-filled version
    to prove that the kernels write each element."""
    return torch.empty(shape, dtype=dtype, device=device)


# Set by benchmarks/kernel_report.py: the launchers then pick tiles, grids and dot precision as on
# a CUDA device with this many SMs while the tensors stay on the CPU and a compile-only Triton
# driver turns each launch into a compile for sm_90a (see that file). None: the tensor's device rules.
COMPILE_ONLY_SMS: int | None = None


def on_gpu(device: torch.device) -> bool:
    """True for CUDA tensors, and for every tensor while the compiled-code report runs."""
    return device.type == "cuda" or COMPILE_ONLY_SMS is not None


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of `device` (of the report's target under COMPILE_ONLY_SMS)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return COMPILE_ONLY_SMS or 1


def target_programs(device: torch.device) -> int:
    """Programs worth launching to fill the device (few under the CPU interpreter)."""
    return 4 * sm_count(device) if on_gpu(device) else 4


def stream_tile(device: torch.device, gpu: int, interpreted: int) -> int:
    """A streaming tile size: `gpu` on CUDA; larger under the CPU interpreter, which pays per
    program and per loop trip rather than per element."""
    return gpu if on_gpu(device) else interpreted


# Plain-int versions of triton.cdiv / triton.next_power_of_2 for host code: in Triton 3.6 those are
# constexpr functions costing 6-7 us per host call (these: ~0.1 us), and launchers make many per step.
# Inside @triton.jit code keep tl.cdiv etc.

def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for ints (b > 0)."""
    return -(-int(a) // int(b))


def next_pow2(n: int) -> int:
    """The smallest power of two >= n for n >= 1 (0 for 0), as triton.next_power_of_2."""
    n = int(n)
    return n if n <= 1 else 1 << (n - 1).bit_length()


def pow2(n: int, lo: int, hi: int) -> int:
    """The power of two >= n, clamped to [lo, hi]."""
    return max(lo, min(hi, next_pow2(max(int(n), 1))))


def dot_precision(dtype: torch.dtype, device: torch.device) -> str:
    """tl.dot's input_precision for operands of `dtype`: fp32 follows torch's conv (TF32 on CUDA
    when torch's conv allows it); 16-bit operands take Triton's default, which they ignore."""
    if dtype != torch.float32 or (on_gpu(device) and conv_allows_tf32()):
        return "tf32"
    return "ieee"


def conv_allows_tf32() -> bool:
    """torch's conv TF32 setting. Recent torch has the fp32_precision API ("ieee" / "tf32", or
    "none": inherit from the level above), and reading the old allow_tf32 flag raises there once
    the two APIs were mixed; older torch only has the flag."""
    levels = [getattr(getattr(torch.backends.cudnn, "conv", None), "fp32_precision", None),
              getattr(torch.backends.cudnn, "fp32_precision", None),
              getattr(torch.backends, "fp32_precision", None)]
    if levels[0] is None:
        return bool(torch.backends.cudnn.allow_tf32)
    for level in levels:
        if level is not None and level != "none":
            return level == "tf32"
    return False


INDEX_LIMIT = 2**31 - 1  # the kernels index (b, position) pairs in int32: launches stay below this


def batch_chunks(B: int, per_sample: int, block: int) -> list[tuple[int, int]]:
    """[(b0, b1), ...] covering range(B) so that each launch's flattened (b, position) index,
    rounded up to whole `block`-wide tiles, stays below INDEX_LIMIT (one chunk unless B * L
    nears 2^31: a whole network's K = 200 vectors at D > ~10M)."""
    if per_sample + block > INDEX_LIMIT:
        raise ValueError(f"one sample of {per_sample} positions is too long for int32 indexing")
    step = max(1, (INDEX_LIMIT - block) // max(per_sample, 1))
    return [(b0, min(B, b0 + step)) for b0 in range(0, B, step)]


# ------------------------------------------------------------------------------------------------
# Elementwise (B, M) ops: q_sample, ddpm_step, ddim_step
# ------------------------------------------------------------------------------------------------

ELEMENTWISE_TILE = 2048  # elements per program (rows * columns) of the elementwise ops


def rows_and_columns(x: torch.Tensor) -> tuple[int, int]:
    """(B, M): x seen as B rows (its first dimension; 1 for a 0-dim tensor) of M elements."""
    B = x.shape[0] if x.dim() > 0 else 1
    return B, x.numel() // max(B, 1)


def elementwise_tile(B: int, M: int) -> tuple[int, int]:
    """(ROWS, BLOCK_M) for a (B, M) elementwise op: whole short rows per program, or a slice of a
    long row; BLOCK_M >= 4 so in-kernel noise comes 4 columns per Philox call (kernels/noise.py)."""
    block_m = max(4, min(next_pow2(M), ELEMENTWISE_TILE))
    rows = min(next_pow2(B), max(1, ELEMENTWISE_TILE // block_m))
    return rows, block_m


def elementwise_grid(B: int, M: int, rows: int, block_m: int) -> tuple[int]:
    """The 1-D grid of a (B, M) op tiled (rows, block_m), row-tile major."""
    return (cdiv(B, rows) * cdiv(M, block_m),)


def output_buffers(like: torch.Tensor, out, count: int, error: str) -> tuple[torch.Tensor, ...]:
    """`count` contiguous buffers shaped like `like`: the caller's `out` after a check (ValueError
    `error` when one is not contiguous, on like's device and of like's shape), else new ones."""
    if out is None:
        return tuple(torch.empty_like(like, memory_format=torch.contiguous_format) for _ in range(count))
    for buf in out:
        if buf.shape != like.shape or not buf.is_contiguous() or buf.device != like.device:
            raise ValueError(error)
    return tuple(out)


# ------------------------------------------------------------------------------------------------
# Device of a launch
# ------------------------------------------------------------------------------------------------


def on_input_device(launcher):
    """Decorates a public launcher whose first argument is a tensor: Triton launches on the current
    CUDA device, so a tensor on another GPU (cuda:1 while cuda:0 is current) would be read from the
    wrong device. The check costs one current_device() call; the switch only happens when needed."""
    @functools.wraps(launcher)
    def run(x, *args, **kwargs):
        if x.device.type == "cuda" and x.device.index is not None and x.device.index != torch.cuda.current_device():
            with torch.cuda.device(x.device):
                return launcher(x, *args, **kwargs)
        return launcher(x, *args, **kwargs)
    return run

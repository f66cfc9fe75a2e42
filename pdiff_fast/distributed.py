"""Many processes on PyTorch's own engine: `torchrun` starts them, torch.distributed connects them.

    torchrun --standalone --nproc_per_node=2 -m pdiff_fast run --run-dir runs/a   # one machine
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=HOST:29500 \\
        -m pdiff_fast sample --run-dir runs/a                                      # several

`init(device)` joins the process group torchrun describes in the environment (WORLD_SIZE > 1):
NCCL for CUDA (one process per GPU, the GPU of LOCAL_RANK), gloo for CPU. Without torchrun it
does nothing and every helper below is the one-process identity.

The split of work never changes a result: work is dealt out in whole blocks (`shard`) whose
results do not depend on which process computes them (sampling: model i's noise is a function of
(seed, i) and the networks run on `grain`-row batches; evaluation: a model's predictions do not
depend on the other models in its batch), then gathered in model order (`gather_rows`). Rank 0
writes every file; the other ranks wait at a barrier until it is written.
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def launched() -> bool:
    """Started by torchrun (or any launcher that sets WORLD_SIZE) with more than one process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device, timeout_s: float = 1800) -> torch.device:
    """Join the launcher's process group (once); returns this process's device: for CUDA the
    GPU numbered LOCAL_RANK, which becomes the current device."""
    if not launched():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return device


def barrier() -> None:
    if active():
        dist.barrier()


def shard(n: int, block: int = 1, *, rank_: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Rows [start, stop) of n that this rank (or `rank_` of `world`) works on: contiguous runs of
    whole `block`s, dealt as evenly as the blocks allow (a rank may get none)."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    blocks = -(-n // block)
    first, last = r * blocks // w, (r + 1) * blocks // w
    return min(n, first * block), min(n, last * block)


def _comm_device(t: torch.Tensor) -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(t: torch.Tensor, n: int, block: int = 1) -> torch.Tensor:
    """Every rank's rows shard(n, block) of a tensor (rows [start, stop) of this rank in `t`,
    shape (stop - start, ...)) put together in order on every rank: (n, ...) on t's device."""
    if not active():
        return t
    w = world_size()
    spans = [shard(n, block, rank_=r, world=w) for r in range(w)]
    longest = max(stop - start for start, stop in spans)
    as_bool = t.dtype == torch.bool  # gloo and NCCL move bytes; bool travels as uint8
    padded = torch.zeros((longest, *t.shape[1:]), dtype=torch.uint8 if as_bool else t.dtype,
                         device=_comm_device(t))
    padded[:t.shape[0]] = t.to(padded.device, padded.dtype)
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:stop - start] for p, (start, stop) in zip(parts, spans)])
    return out.to(t.device, torch.bool if as_bool else t.dtype)


def sum_int(value: int) -> int:
    """The sum of an int over the ranks."""
    if not active():
        return value
    t = torch.tensor([value], dtype=torch.int64, device=_comm_device(torch.empty(0)))
    dist.all_reduce(t)
    return int(t.item())


def on_main(write):
    """Run `write()` on rank 0 only, then let every rank go on once it is done; returns its
    result on rank 0, None elsewhere."""
    out = write() if is_main() else None
    barrier()
    return out

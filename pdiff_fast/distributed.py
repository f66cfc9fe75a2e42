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
import json
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
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise ValueError(f"torchrun started process {local} of this machine, which has "
                             f"{torch.cuda.device_count()} GPU(s): one process per GPU (--nproc_per_node), "
                             "or --device cpu")
        device = torch.device("cuda", local)
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


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def gather_rows(t: torch.Tensor, n: int | None = None, block: int = 1) -> torch.Tensor:
    """Every rank's rows of a tensor put together in rank order, on every rank, on t's device.
    With n: rank r holds rows shard(n, block) (no sizes exchanged); without: any number of rows
    each (their counts are gathered first). Trailing dims and dtype must agree across ranks."""
    if not active():
        return t
    w = world_size()
    if n is not None:
        counts = [stop - start for start, stop in (shard(n, block, rank_=r, world=w) for r in range(w))]
    else:
        counts = _all_ints(t.shape[0])
    longest = max(counts)
    as_bool = t.dtype == torch.bool  # gloo and NCCL move bytes; bool travels as uint8
    padded = torch.zeros((longest, *t.shape[1:]), dtype=torch.uint8 if as_bool else t.dtype,
                         device=_comm_device())
    padded[:t.shape[0]] = t.to(padded.device, padded.dtype)
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:c] for p, c in zip(parts, counts)])
    return out.to(t.device, t.dtype)  # bool again when it travelled as uint8


def _all_ints(value: int) -> list[int]:
    """Each rank's value of an int, in rank order."""
    mine = torch.tensor([value], dtype=torch.int64, device=_comm_device())
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return [int(p.item()) for p in parts]


def broadcast_json(obj=None):
    """Rank 0's JSON-able `obj` (a digest, a list of numbers) on every rank; the other ranks'
    arguments are ignored. JSON, not pickle, crosses the wire."""
    if not active():
        return obj
    dev = _comm_device()
    data = json.dumps(obj).encode() if is_main() else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    dist.broadcast(size, src=0)
    buf = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(dev) if is_main() \
        else torch.empty(int(size.item()), dtype=torch.uint8, device=dev)
    dist.broadcast(buf, src=0)
    return json.loads(bytes(buf.cpu().tolist()).decode())


def broadcast_tensors(tensors: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Rank 0's dict of tensors (e.g. a state dict) on every rank, each on its rank-0 device type
    (cpu, or this rank's GPU)."""
    if not active():
        return tensors
    header = broadcast_json([[k, list(v.shape), str(v.dtype).removeprefix("torch."), v.device.type]
                             for k, v in tensors.items()] if is_main() else None)
    out = {}
    dev = _comm_device()
    for name, shape, dtype, device_type in header:
        t = tensors[name].to(dev) if is_main() else torch.empty(shape, dtype=getattr(torch, dtype), device=dev)
        as_bool = t.dtype == torch.bool
        t = t.to(torch.uint8) if as_bool else t.contiguous()
        dist.broadcast(t, src=0)
        t = t.bool() if as_bool else t
        out[name] = t.cpu() if device_type == "cpu" else t.to(torch.device("cuda", torch.cuda.current_device()))
    return tensors if is_main() else out


def sum_int(value: int) -> int:
    """The sum of an int over the ranks."""
    return sum(_all_ints(value)) if active() else value


def on_main(write):
    """Run `write()` on rank 0 only, then let every rank go on once it is done; returns its
    result on rank 0, None elsewhere."""
    out = write() if is_main() else None
    barrier()
    return out


def all_mean(t: torch.Tensor) -> torch.Tensor:
    """The mean over the ranks of a tensor (its sum / world size), on every rank."""
    if not active():
        return t
    out = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out)
    return (out / world_size()).to(t.device)


def shutdown() -> None:
    """Leave the process group cleanly: wait for every rank, then destroy it (a process that exits
    holding a gloo group can abort in its C++ teardown)."""
    if active():
        dist.barrier()
        dist.destroy_process_group()

"""Sizes checked before work: a step whose result cannot fit in memory or on disk stops at once,
with the numbers, instead of after hours of work (the memory budget bounds the chunks a step
works in, not the result it gathers and saves)."""
from __future__ import annotations

import os
import shutil
from pathlib import Path


MEMINFO = "/proc/meminfo"


class DoesNotFit(ValueError):
    """A step's result is larger than the memory or the disk it needs."""


def human(nbytes: float) -> str:
    nbytes = float(nbytes)  # a huge int would overflow the divisions below
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(nbytes) < 1000 or unit == "TB":
            return f"{nbytes:.3g} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1000
    raise AssertionError("unreachable")


def available_memory() -> int | None:
    """Bytes of memory a new allocation can get (Linux MemAvailable), or None where it is unknown."""
    try:
        with open(MEMINFO, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def free_disk(folder: str | os.PathLike) -> int:
    """Free bytes on the filesystem of `folder` (or of its nearest existing parent)."""
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def available_device_memory(device) -> int | None:
    """Free bytes on a CUDA device (None on a CPU)."""
    import torch

    if getattr(device, "type", str(device)) != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.mem_get_info(device)[0]


def check_fits(what: str, rows: int, values: int, folder: str | os.PathLike, *, copies: int = 2,
               device=None, bytes_per_value: int = 4) -> int:
    """Refuse (DoesNotFit) a result of rows x values numbers that cannot fit: `copies` of it in memory
    (the pieces and the gathered whole), one on `device` when it is a GPU, one on the disk of `folder`.
    Returns the result's size in bytes."""
    size = rows * values * bytes_per_value
    need = size * copies
    memory = available_memory()
    if memory is not None and need > memory:
        raise DoesNotFit(f"{what}: {rows} x {values} values are {human(size)}, {human(need)} in memory while they are "
                         f"gathered, but this machine has {human(memory)} available; ask for fewer")
    gpu = available_device_memory(device)
    if gpu is not None and size > gpu:
        raise DoesNotFit(f"{what}: {rows} x {values} values are {human(size)}, but {device} has {human(gpu)} free; "
                         "ask for fewer")
    disk = free_disk(folder)
    if size > disk:
        raise DoesNotFit(f"{what}: {rows} x {values} values are {human(size)} on disk, but {folder} has {human(disk)} "
                         "free; ask for fewer or free some space")
    return size

"""One writer per run directory: an advisory lock that the `pdiff-fast` commands hold while they run.

The lock is `fcntl.flock` on `<run_dir>/.pdiff_fast.lock`, a file that also names its holder (pid,
host, step, start time). A second writer fails at once with one line naming the holder, or waits
for it (`wait=True`, `--wait`). The kernel drops the lock when its holder dies, however it dies
(kill -9 included), so a lock left by a killed process is never in the way: the next writer takes
it over and says whose it was. Under torchrun rank 0 holds it for the whole job (the other ranks
write nothing).

Shared filesystems: on NFS (v4, or v3 with lockd) Linux maps flock to NFS byte-range locks, so the
lock holds across machines; a crashed client's lock is released when its lease ends (about 90 s
on NFSv4). A filesystem without locks (Lustre mounted without `flock`, some FUSE mounts) refuses
flock: the command warns that it runs unlocked and goes on.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from contextlib import contextmanager
from pathlib import Path

LOCK_NAME = ".pdiff_fast.lock"
NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)  # a filesystem without flock


class RunDirectoryBusy(OSError):
    """Another process is writing to this run directory."""


def _holder(fd: int) -> dict:
    """What the lock file says about its last holder ({} when it says nothing readable)."""
    try:
        found = json.loads(os.pread(fd, 4096, 0).decode("utf-8") or "{}")
    except (ValueError, OSError, RecursionError):
        return {}
    return found if isinstance(found, dict) else {}


def describe(holder: dict) -> str:
    if not holder:
        return "another process"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("since", 0)))
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (`pdiff-fast {holder.get('step', '?')}`, "
            f"since {since})")


def run_dir_lock(run_dir: str | os.PathLike, step: str, wait: bool = False, log=None, poll_s: float = 0.5,
                 main: bool | None = None):
    """Hold the run directory's lock for the body. `main`: whether this process writes (default: rank 0
    of a torchrun job, read from RANK; the other ranks take no lock)."""
    main = int(os.environ.get("RANK", "0")) == 0 if main is None else main
    if not main:
        yield
        return
    log = log or (lambda msg: None)
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir}: the run directory is a file, not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
    try:
        locked = _acquire(fd, run_dir, wait, log, poll_s)
        if locked:
            left = _holder(fd)
            if left:  # a holder that ended cleanly empties the file: this one was stopped mid-step
                log(f"{run_dir}: taking over the lock of {describe(left)}, which stopped without releasing it")
            me = {"pid": os.getpid(), "host": socket.gethostname(), "step": step, "since": time.time()}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        try:
            yield
        finally:
            if locked:
                os.ftruncate(fd, 0)  # a clean end: nothing to take over
    finally:
        os.close(fd)  # releases the lock


# contextmanager applied as a call, not with the decorator syntax (the same wrapper): mutmut leaves
# decorated functions unmutated
run_dir_lock = contextmanager(run_dir_lock)


def _acquire(fd: int, run_dir: Path, wait: bool, log, poll_s: float) -> bool:
    """True once the lock is held; False on a filesystem without locks (after a warning)."""
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            holder = describe(_holder(fd))
            if not wait:
                raise RunDirectoryBusy(f"{run_dir}: in use by {holder}; wait for it to finish, pass --wait to "
                                       "queue behind it, or use another --run-dir") from None
            if not said:
                log(f"{run_dir}: waiting for {holder} to finish")
                said = True
            time.sleep(poll_s)
        except OSError as exc:
            if exc.errno not in NO_LOCKS:
                raise
            log(f"warning: {run_dir}: this filesystem has no file locks ({exc.strerror}); running without the "
                "run directory's lock, so keep to one writer")
            return False

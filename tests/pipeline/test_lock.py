"""The run directory's lock (pdiff_fast/pipeline/lock.py): a second writer stops at once naming the
holder or waits for it, a lock whose holder was killed is taken over, torchrun's other ranks take
none, a filesystem without locks warns and goes on."""
import errno
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pdiff_fast import cli
from pdiff_fast.pipeline import lock as lock_lib
from pdiff_fast.pipeline.lock import LOCK_NAME, RunDirectoryBusy, run_dir_lock

ROOT = Path(__file__).resolve().parents[2]
HOLD = """
import sys, time
from pdiff_fast.pipeline.lock import run_dir_lock
with run_dir_lock(sys.argv[1], "train", main=True):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(run_dir: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the lock of run_dir for `seconds` (returns once it holds it)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), str(seconds)], cwd=ROOT,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_stops_at_once_naming_the_holder(tmp_path):
    proc = _holder(tmp_path, 60)
    try:
        start = time.monotonic()
        with pytest.raises(RunDirectoryBusy) as exc:
            with run_dir_lock(tmp_path, "sample", main=True):
                pytest.fail("the body ran while another process held the lock")
        assert time.monotonic() - start < 5
        msg = str(exc.value)
        assert msg.startswith(f"{tmp_path}: in use by pid {proc.pid} on {socket.gethostname()} (`pdiff-fast train`")
        assert "pass --wait" in msg
    finally:
        proc.kill()
        proc.wait()


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path, capsys):
    proc = _holder(tmp_path, 60)
    try:
        assert cli.main(["report", "--run-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"pdiff-fast report: error: {tmp_path}: in use by pid {proc.pid}")
    finally:
        proc.kill()
        proc.wait()


def test_wait_queues_behind_the_holder(tmp_path):
    proc = _holder(tmp_path, 1.5)
    said, start = [], time.monotonic()
    with run_dir_lock(tmp_path, "sample", wait=True, log=said.append, poll_s=0.05, main=True):
        assert time.monotonic() - start >= 1.0  # it waited for the holder's 1.5 s
    assert len(said) == 1 and said[0].startswith(f"{tmp_path}: waiting for pid {proc.pid}")
    proc.wait()


def test_a_killed_holders_lock_is_taken_over(tmp_path):
    proc = _holder(tmp_path, 60)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    said = []
    with run_dir_lock(tmp_path, "sample", log=said.append, main=True):
        pass
    assert len(said) == 1 and said[0].startswith(f"{tmp_path}: taking over the lock of pid {proc.pid}")
    said.clear()
    with run_dir_lock(tmp_path, "sample", log=said.append, main=True):  # that one ended cleanly
        pass
    assert said == [] and (tmp_path / LOCK_NAME).read_bytes() == b""


def test_the_lock_is_released_when_the_body_raises(tmp_path):
    with pytest.raises(KeyError):
        with run_dir_lock(tmp_path, "train", main=True):
            raise KeyError("x")
    with run_dir_lock(tmp_path, "train", main=True):
        pass


def test_one_process_cannot_hold_it_twice(tmp_path):
    """flock belongs to an open file: a second lock in the same process is a second writer too."""
    with run_dir_lock(tmp_path, "train", main=True):
        with pytest.raises(RunDirectoryBusy, match=f"pid {os.getpid()}"):
            with run_dir_lock(tmp_path, "sample", main=True):
                pass


def test_other_torchrun_ranks_take_no_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    with run_dir_lock(tmp_path / "r", "train"):
        pass
    assert not (tmp_path / "r").exists()
    monkeypatch.setenv("RANK", "0")
    with run_dir_lock(tmp_path / "r", "train"):
        assert (tmp_path / "r" / LOCK_NAME).stat().st_size > 0


def test_a_filesystem_without_locks_warns_and_goes_on(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(lock_lib.fcntl, "flock", no_locks)
    said, ran = [], []
    with run_dir_lock(tmp_path, "train", log=said.append, main=True):
        ran.append(1)
    assert ran == [1] and len(said) == 1 and said[0].startswith(f"warning: {tmp_path}: this filesystem has no file")


def test_a_symlink_at_the_lock_is_refused(tmp_path):
    (tmp_path / LOCK_NAME).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError) as exc:
        with run_dir_lock(tmp_path, "train", main=True):
            pass
    assert exc.value.errno == errno.ELOOP
    assert not (tmp_path / "elsewhere").exists()


def test_a_run_directory_that_is_a_file_is_named(tmp_path):
    f = tmp_path / "run"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="the run directory is a file"):
        with run_dir_lock(f, "train", main=True):
            pass


def test_the_holder_is_described_from_its_file():
    import datetime

    when = 1_800_000_000.0
    stamp = datetime.datetime.fromtimestamp(when).strftime("%Y-%m-%d %H:%M:%S")
    assert lock_lib.describe({"pid": 12, "host": "node7", "step": "tasks train", "since": when}) == \
        f"pid 12 on node7 (`pdiff-fast tasks train`, since {stamp})"
    epoch = datetime.datetime.fromtimestamp(0).strftime("%Y-%m-%d %H:%M:%S")
    assert lock_lib.describe({"pid": 3}) == f"pid 3 on ? (`pdiff-fast ?`, since {epoch})"
    assert lock_lib.describe({"host": "h"}) == f"pid ? on h (`pdiff-fast ?`, since {epoch})"
    assert lock_lib.describe({}) == "another process"


@pytest.mark.parametrize("content", [b"[1, 2]", b"not json", b"\xff\xfe", b'"text"'])
def test_a_lock_file_that_names_no_holder_says_another_process(tmp_path, content):
    proc = _holder(tmp_path, 60)
    try:
        (tmp_path / LOCK_NAME).write_bytes(content)  # the holder's lock is on the file, not on what it says
        with pytest.raises(RunDirectoryBusy) as exc:
            with run_dir_lock(tmp_path, "sample", main=True):
                pass
        assert str(exc.value) == (f"{tmp_path}: in use by another process; wait for it to finish, pass --wait to "
                                  "queue behind it, or use another --run-dir")
    finally:
        proc.kill()
        proc.wait()


def test_without_locks_nothing_is_written_to_the_lock_file(tmp_path, monkeypatch):
    def no_locks(fd, op):
        raise OSError(errno.EOPNOTSUPP, "Operation not supported")
    monkeypatch.setattr(lock_lib.fcntl, "flock", no_locks)
    said = []
    with run_dir_lock(tmp_path, "train", log=said.append, main=True):
        assert (tmp_path / LOCK_NAME).read_bytes() == b""  # no holder to name: it holds nothing
    assert said == [f"warning: {tmp_path}: this filesystem has no file locks (Operation not supported); running "
                    "without the run directory's lock, so keep to one writer"]


def test_another_flock_error_is_raised(tmp_path, monkeypatch):
    def broken(fd, op):
        raise OSError(errno.EBADF, "Bad file descriptor")
    monkeypatch.setattr(lock_lib.fcntl, "flock", broken)
    with pytest.raises(OSError) as exc:
        with run_dir_lock(tmp_path, "train", main=True):
            pass
    assert exc.value.errno == errno.EBADF

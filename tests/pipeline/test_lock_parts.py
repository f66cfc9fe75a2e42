"""pdiff_fast.pipeline.lock's details in one process (flock locks an open file, so a second open of the
lock file in the same process stands for another writer): the default wait between polls, who takes
the lock, the directory made, the file's permissions and what it says of its holder. Written against
the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_lock.py runs real
second processes."""
import fcntl
import json
import os
import socket
import time

import pytest

from pdiff_fast.pipeline import lock as lock_lib
from pdiff_fast.pipeline.lock import LOCK_NAME, run_dir_lock


def test_waiting_polls_every_half_second_by_default(tmp_path, monkeypatch):
    (tmp_path / "run").mkdir()
    other = os.open(tmp_path / "run" / LOCK_NAME, os.O_RDWR | os.O_CREAT)
    fcntl.flock(other, fcntl.LOCK_EX)
    slept, logged = [], []

    def sleep(seconds):
        slept.append(seconds)
        os.close(other)  # the other writer finishes
    monkeypatch.setattr(lock_lib.time, "sleep", sleep)
    with run_dir_lock(tmp_path / "run", "train", wait=True, log=logged.append):
        pass
    assert slept == [0.5] and logged == [f"{tmp_path / 'run'}: waiting for another process to finish"]


def test_main_decides_over_rank(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    with run_dir_lock(tmp_path / "a", "train", main=False):
        assert not (tmp_path / "a").exists()  # told it is not the writer: no lock, nothing made
    monkeypatch.setenv("RANK", "1")
    with run_dir_lock(tmp_path / "b", "train", main=True):
        assert (tmp_path / "b" / LOCK_NAME).is_file()
    with run_dir_lock(tmp_path / "c", "train"):
        assert not (tmp_path / "c").exists()  # rank 1 of a torchrun job
    monkeypatch.delenv("RANK")
    with run_dir_lock(tmp_path / "d", "train"):
        assert (tmp_path / "d" / LOCK_NAME).is_file()


def test_missing_parents_are_made(tmp_path):
    with run_dir_lock(tmp_path / "a" / "b" / "run", "collect"):
        assert (tmp_path / "a" / "b" / "run" / LOCK_NAME).is_file()
    with run_dir_lock(tmp_path / "a" / "b" / "run", "collect"):  # and an existing one is fine
        pass


def test_the_lock_file_is_readable_by_all_and_names_its_holder(tmp_path):
    old = os.umask(0o022)
    try:
        before = time.time()
        with run_dir_lock(tmp_path / "run", "sample"):
            path = tmp_path / "run" / LOCK_NAME
            assert path.stat().st_mode & 0o777 == 0o644  # 0o666 under the umask
            holder = json.loads(path.read_text())
            assert set(holder) == {"pid", "host", "step", "since"}
            assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname() and holder["step"] == "sample"
            assert before <= holder["since"] <= time.time()
        assert path.read_text() == ""  # a clean end leaves nothing to take over
    finally:
        os.umask(old)
    os.umask(0o000)
    try:
        with run_dir_lock(tmp_path / "open", "sample"):
            assert (tmp_path / "open" / LOCK_NAME).stat().st_mode & 0o777 == 0o666
    finally:
        os.umask(old)

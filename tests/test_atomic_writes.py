"""Every writer of pdiff_fast.io is atomic: a write that fails halfway (the underlying writer puts
part of the bytes down, then raises) leaves the old file whole and no temporary behind, and a
symlink planted at the target is replaced, never written through. A writer that wrote straight to
its target would leave a truncated file here."""
import json
import os
from pathlib import Path

import pytest
import torch

import pdiff_fast.io as io


class _Fig:
    """Stands in for a matplotlib figure: savefig writes the bytes given (or fails halfway)."""

    def __init__(self, payload: bytes, fail: bool = False):
        self.payload, self.fail = payload, fail

    def savefig(self, path, **kw):
        with open(path, "wb") as f:
            f.write(self.payload[: len(self.payload) // 2] if self.fail else self.payload)
        if self.fail:
            raise OSError(28, "No space left on device")


def _half_then_fail(path, data: bytes):
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    raise OSError(28, "No space left on device")


# name -> (write the old version, write the new one failing halfway (monkeypatch given), read it back)
WRITERS = {
    "save_tensors": (
        lambda p: io.save_tensors(p, {"a": torch.arange(1000.0)}),
        lambda p, mp: (mp.setattr(io, "save_file", lambda t, path, metadata=None: _half_then_fail(path, b"x" * 4096)),
                       io.save_tensors(p, {"a": torch.zeros(1000)})),
        lambda p: io.load_tensors(p)[0]["a"].sum().item(),
    ),
    "save_json": (
        lambda p: io.save_json(p, {"old": list(range(100))}),
        lambda p, mp: (mp.setattr(io.json, "dump", lambda obj, f, **kw: (f.write('{"new": [1, 2'), f.flush(),
                                                                           _raise())), io.save_json(p, {"new": 1})),
        lambda p: json.loads(Path(p).read_text()),
    ),
    "save_text": (
        lambda p: io.save_text(p, "old text\n" * 50),
        lambda p, mp: (mp.setattr(Path, "write_text", lambda self, text, **kw: _half_then_fail(self, text.encode())),
                       io.save_text(p, "new text\n" * 50)),
        lambda p: Path(p).read_text(),
    ),
    "save_figure": (
        lambda p: io.save_figure(_Fig(b"old png" * 100), p),
        lambda p, mp: io.save_figure(_Fig(b"new png" * 100, fail=True), p),
        lambda p: Path(p).read_bytes(),
    ),
}


def _raise():
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_write_failing_halfway_keeps_the_old_file(name, tmp_path, monkeypatch):
    write_old, write_new_failing, read = WRITERS[name]
    p = tmp_path / f"artifact.{name}"
    write_old(p)
    before = read(p)
    with pytest.raises(OSError, match="No space left"):
        write_new_failing(p, monkeypatch)
    monkeypatch.undo()
    assert read(p) == before
    assert sorted(os.listdir(tmp_path)) == [p.name]  # no temporary left behind


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_a_symlink_at_the_target_is_replaced_not_written_through(name, tmp_path):
    write_old, _, read = WRITERS[name]
    victim = tmp_path / "elsewhere"
    victim.write_bytes(b"must not change")
    p = tmp_path / f"artifact.{name}"
    p.symlink_to(victim)
    write_old(p)
    assert victim.read_bytes() == b"must not change"
    assert not p.is_symlink() and p.is_file()
    read(p)

"""pdiff_fast.io's integrity guarantees: every load recomputes a tensor file's digest (damage is
refused, naming the file), the same tensors and metadata give the same bytes in any process, a
writer's failure is an OSError naming the file (safetensors raises its own error on a full disk),
and every way a JSON file can be unreadable is one ValueError naming it."""
import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

from pdiff_fast import io
from pdiff_fast.io import DamagedFile, load_artifact, load_json, read_meta, save_tensors

ROOT = Path(__file__).resolve().parents[1]


def _payload_offset(path: Path) -> int:
    """Where the tensor bytes start (after the 8-byte length and the JSON header)."""
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_flipped_payload_bit_is_refused_naming_the_file(tmp_path, where):
    p = tmp_path / "x.safetensors"
    digest = save_tensors(p, {"a": torch.randn(257), "b": torch.arange(7)}, {"k": 1})
    data = bytearray(p.read_bytes())
    start = _payload_offset(p)
    i = {"first": start, "middle": (start + len(data)) // 2, "last": len(data) - 1}[where]
    data[i] ^= 0x01  # the header is untouched: only a recomputed digest can see this
    p.write_bytes(bytes(data))
    assert read_meta(p) == ({"k": 1}, digest)  # the header alone still reads
    with pytest.raises(DamagedFile) as exc:
        load_artifact(p)
    assert str(exc.value).startswith(f"{p}: damaged: its contents do not match the digest written with them")
    assert f"recorded {digest}" in str(exc.value)
    tensors, _, _ = load_artifact(p, verify=False)  # what a caller that asks not to verify gets
    assert tensors["a"].numel() == 257


def test_changed_metadata_is_damage_too(tmp_path):
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"a": torch.ones(3)}, {"n": 200})
    raw = p.read_bytes()
    edited = raw.replace(b'\\"n\\": 200', b'\\"n\\": 900')  # same length: the header still parses
    assert edited != raw
    p.write_bytes(edited)
    with pytest.raises(DamagedFile):
        load_artifact(p)


def test_an_intact_file_loads_on_the_device_asked_for(tmp_path):
    p = tmp_path / "x.safetensors"
    t = {"a": torch.randn(5, 3), "h": torch.randn(4).to(torch.bfloat16), "e": torch.zeros(0)}
    d = save_tensors(p, t, {"m": [1.5, "x"]})
    back, meta, digest = load_artifact(p, device="cpu")
    assert digest == d and meta == {"m": [1.5, "x"]}
    assert all(torch.equal(back[k], t[k]) for k in t)


def test_metadata_that_json_reshapes_still_verifies(tmp_path):
    """Tuples and integer keys come back from JSON as lists and strings: the digest is of what reads back."""
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"a": torch.ones(2)}, {"shape": (2, 3), "by": {10: "a", 2: "b"}})
    _, meta, _ = load_artifact(p)
    assert meta == {"shape": [2, 3], "by": {"10": "a", "2": "b"}}


def test_files_written_before_the_one_entry_header_still_verify(tmp_path):
    p = tmp_path / "old.safetensors"
    t, meta = {"a": torch.arange(4.0)}, {"old": True}
    save_file(t, str(p), metadata={io.META_KEY: json.dumps(meta), io.DIGEST_KEY: io.digest_tensors(t, meta)})
    back, got, _ = load_artifact(p)
    assert got == meta and torch.equal(back["a"], t["a"])
    save_file(t, str(p), metadata={io.META_KEY: json.dumps(meta), io.DIGEST_KEY: "0" * 32})
    with pytest.raises(DamagedFile):
        load_artifact(p)


SAVE_IN_A_PROCESS = """
import sys, torch
from pdiff_fast.io import save_tensors
g = torch.Generator().manual_seed(0)
meta = {f"key{i}": i for i in range(40)}
save_tensors(sys.argv[1], {f"t{i}": torch.randn(5, generator=g) for i in range(20)}, meta)
"""


def test_the_same_tensors_and_metadata_give_the_same_bytes_in_any_process(tmp_path):
    """safetensors writes several metadata entries in a random order per process; one entry cannot move."""
    outs = []
    for i in range(3):
        out = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", SAVE_IN_A_PROCESS, str(out)], check=True, cwd=ROOT)
        outs.append(out.read_bytes())
    assert outs[0] == outs[1] == outs[2]
    from safetensors import safe_open

    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as f:
        assert list(f.metadata()) == [io.HEADER_KEY]


def test_a_full_disk_in_safetensors_is_an_oserror_naming_the_file(tmp_path, monkeypatch):
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"a": torch.arange(10.0)})
    old = p.read_bytes()

    def full(tensors, path, metadata=None):  # what safetensors 0.8 raises on ENOSPC (seen on a 64 KB tmpfs)
        Path(path).write_bytes(b"\x00" * 100)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(io, "save_file", full)
    with pytest.raises(OSError) as exc:
        save_tensors(p, {"a": torch.zeros(10)})
    assert exc.value.errno == errno.ENOSPC and exc.value.filename == str(p)
    assert exc.value.strerror == "could not write it: No space left on device"
    assert p.read_bytes() == old and [q.name for q in tmp_path.iterdir()] == ["x.safetensors"]


@pytest.mark.parametrize("error, errno_, strerror", [
    (SafetensorError("something else"), errno.EIO, "could not write it: something else"),
    (OSError("plain words"), None, "could not write it: plain words"),  # an OSError without strerror
])
def test_another_writer_error_keeps_its_text(tmp_path, monkeypatch, error, errno_, strerror):
    def broken(tensors, path, metadata=None):
        raise error
    monkeypatch.setattr(io, "save_file", broken)
    with pytest.raises(OSError) as exc:
        save_tensors(tmp_path / "y.safetensors", {"a": torch.zeros(1)})
    assert exc.value.errno == errno_ and exc.value.strerror == strerror


def test_a_folder_that_cannot_be_made_is_an_oserror_naming_the_file(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as exc:
        io.save_json(blocker / "sub" / "r.json", {})
    assert exc.value.filename == str(blocker / "sub" / "r.json")


@pytest.mark.parametrize("case", ["nested list", "nested object", "fifo", "too big", "directory"])
def test_every_unreadable_json_file_is_one_valueerror_naming_it(tmp_path, monkeypatch, case):
    p = tmp_path / "c.json"
    if case == "nested list":
        p.write_text("[" * 100_000 + "]" * 100_000)
        want = "nested too deeply"
    elif case == "nested object":
        p.write_text('{"a":' * 50_000 + "1" + "}" * 50_000)
        want = "nested too deeply"
    elif case == "fifo":
        os.mkfifo(p)  # reading it would block forever
        want = "not a regular file"
    elif case == "too big":
        monkeypatch.setattr(io, "MAX_JSON_BYTES", 10)
        p.write_text('{"a": [1, 2, 3, 4]}')
        want = "more than a JSON file can be"
    else:
        p.mkdir()
        with pytest.raises(IsADirectoryError) as exc:  # no step can replace it: the user moves it
            load_json(p)
        assert exc.value.filename == str(p) and exc.value.strerror == "is a directory, not a JSON file"
        return
    with pytest.raises(ValueError) as exc:
        load_json(p)
    assert str(exc.value).startswith(f"{p}: ") and want in str(exc.value)


def test_nested_metadata_in_a_tensor_file_is_a_corrupt_file(tmp_path):
    p = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(1)}, str(p), metadata={io.META_KEY: "[" * 100_000})
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_artifact(p)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_meta(p)


def test_the_same_metadata_in_another_key_order_gives_the_same_bytes(tmp_path):
    t = {"a": torch.arange(3.0)}
    save_tensors(tmp_path / "1.safetensors", t, {"b": 1, "a": {"y": 2, "x": 3}})
    save_tensors(tmp_path / "2.safetensors", t, {"a": {"x": 3, "y": 2}, "b": 1})
    assert (tmp_path / "1.safetensors").read_bytes() == (tmp_path / "2.safetensors").read_bytes()


@pytest.mark.parametrize("entry, ok", [('{"digest": null}', True), ("[1]", False), ('{"meta": [1]}', False),
                                       ('"text"', False)])
def test_a_header_entry_that_is_not_an_object_with_a_meta_object_is_corrupt(tmp_path, entry, ok):
    p = tmp_path / "x.safetensors"
    save_file({"a": torch.ones(1)}, str(p), metadata={io.HEADER_KEY: entry})
    if ok:
        assert read_meta(p) == ({}, None)
        return
    with pytest.raises(ValueError) as exc:
        read_meta(p)
    assert str(exc.value) == (f"{p}: corrupt or truncated safetensors file (its {io.HEADER_KEY} entry is not an "
                              "object with a meta object)")


def test_the_damage_message_in_full(tmp_path):
    p = tmp_path / "x.safetensors"
    digest = save_tensors(p, {"a": torch.arange(8.0)}, {"m": 1})
    _flip(p)
    found = io.digest_tensors(load_artifact(p, verify=False)[0], {"m": 1})
    with pytest.raises(DamagedFile) as exc:
        load_artifact(p)
    head = (f"{p}: damaged: its contents do not match the digest written with them (recorded {digest}, found "
            f"{found}: bit rot, a partial copy or an edit)")
    assert str(exc.value) == head and (exc.value.path, exc.value.recorded, exc.value.found) == (p, digest, found)
    again = DamagedFile(p, digest, found, remake="pdiff-fast train")
    assert str(again) == head + "; rerun `pdiff-fast train` to remake it"


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[_payload_offset(path)] ^= 0x01
    path.write_bytes(bytes(data))


def test_tensors_go_to_the_device_asked_for(tmp_path):
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"a": torch.ones(2)})
    assert load_artifact(p, device="meta")[0]["a"].device.type == "meta"
    assert load_artifact(p, device=torch.device("cpu"))[0]["a"].device.type == "cpu"


def test_a_folder_that_cannot_be_made_keeps_the_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as exc:
        save_tensors(blocker / "x.safetensors", {"a": torch.zeros(1)})
    assert exc.value.errno == errno.EEXIST and exc.value.strerror == "could not write it: File exists"  # mkdir of it


def test_a_json_file_at_the_size_limit_is_read(tmp_path, monkeypatch):
    p = tmp_path / "c.json"
    p.write_text('{"a": 1}')
    monkeypatch.setattr(io, "MAX_JSON_BYTES", 8)
    assert load_json(p) == {"a": 1}

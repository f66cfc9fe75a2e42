import json
import os
import re
import stat
import subprocess
import sys
import time
from io import BytesIO
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pdiff_fast import io
from pdiff_fast.io import load_json, load_tensors, save_json, save_tensors


def test_round_trip_with_metadata(tmp_path):
    t = {"a": torch.randn(3, 4), "b": torch.arange(5)}
    save_tensors(tmp_path / "x.safetensors", t, {"k": [1, 2], "s": "v"})
    back, meta = load_tensors(tmp_path / "x.safetensors")
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])
    assert meta == {"k": [1, 2], "s": "v"}
    assert [p.name for p in tmp_path.iterdir()] == ["x.safetensors"]  # no temporary left behind


def test_truncated_and_corrupt_files_are_clear_errors(tmp_path):
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"a": torch.randn(100)})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_tensors(p)
    p.write_bytes(b"\x00" * 7)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_tensors(p)
    with pytest.raises(FileNotFoundError):
        load_tensors(tmp_path / "missing.safetensors")


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"a": torch.ones(2)})
    with pytest.raises(Exception):
        save_tensors(p, {"a": "not a tensor"})  # fails while writing
    back, _ = load_tensors(p)
    assert torch.equal(back["a"], torch.ones(2))
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"]


def test_json_round_trip_and_bad_json(tmp_path):
    save_json(tmp_path / "c.json", {"a": 1})
    assert load_json(tmp_path / "c.json") == {"a": 1}
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_json(tmp_path / "bad.json")


# --- values, names, modes and messages (the mutants mutmut left alive, docs/mutation-scores.md)

def test_the_temporary_sits_beside_the_target_under_a_hidden_name(tmp_path, monkeypatch):
    seen = []
    real_replace = os.replace
    monkeypatch.setattr(io.os, "replace", lambda src, dst: (seen.append((Path(src), Path(dst))), real_replace(src, dst)))
    target = tmp_path / "a" / "b" / "report.json"  # parents made as needed
    save_json(target, {"x": 1})
    (tmp, dst), = seen
    assert dst == target and tmp.parent == target.parent
    assert tmp.name.startswith(".report.json.") and tmp.name.endswith(io.TMP_SUFFIX)


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_files_get_0666_minus_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        for i, write in enumerate([lambda p: save_json(p, {}), lambda p: io.save_text(p, "x"),
                                   lambda p: save_tensors(p, {"a": torch.zeros(1)})]):
            path = tmp_path / f"f{i}"
            write(path)
            assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
        assert io._umask() == umask and os.umask(umask) == umask  # reading it leaves it as it was
    finally:
        os.umask(old)


def test_digest_covers_the_metadata_in_any_key_order():
    t = {"w": torch.arange(4.0)}
    d = io.digest_tensors(t, {"a": 1, "b": 2})
    assert len(d) == 32 and d == io.digest_tensors(t, {"b": 2, "a": 1})
    assert d != io.digest_tensors(t, {"a": 1, "b": 3}) and io.digest_tensors(t) == io.digest_tensors(t, {})
    assert io.digest_tensors(t) != d


def test_the_stored_digest_is_the_digest_of_tensors_and_metadata(tmp_path):
    t, meta = {"w": torch.arange(6.0).view(2, 3)}, {"k": 3, "name": "σ"}
    digest = save_tensors(tmp_path / "t.safetensors", t, meta)
    assert digest == io.digest_tensors(t, meta) != io.digest_tensors(t)
    tensors, got_meta, got_digest = io.load_artifact(tmp_path / "t.safetensors")  # device defaults to the CPU
    assert got_meta == meta and got_digest == digest and tensors["w"].device.type == "cpu"
    assert io.read_meta(tmp_path / "t.safetensors") == (meta, digest)
    assert io.read_digest(tmp_path / "t.safetensors") == digest
    assert io.read_meta(tmp_path / "none.safetensors") is None and io.read_digest(tmp_path / "none") is None


def test_a_foreign_safetensors_file_has_empty_metadata_and_no_digest(tmp_path):
    save_file({"w": torch.ones(2)}, str(tmp_path / "plain.safetensors"))
    tensors, meta, digest = io.load_artifact(tmp_path / "plain.safetensors")
    assert meta == {} and digest is None and torch.equal(tensors["w"], torch.ones(2))
    assert io.read_meta(tmp_path / "plain.safetensors") == ({}, None)


def test_missing_and_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(tmp_path / 'x.safetensors'))}: no such file$"):
        io.load_artifact(tmp_path / "x.safetensors")
    with pytest.raises(FileNotFoundError, match=rf"^{re.escape(str(tmp_path / 'x.json'))}: no such file$"):
        load_json(tmp_path / "x.json")
    with pytest.raises(IsADirectoryError, match=r"^\[Errno 21\] is a directory, not a JSON file: "):
        load_json(tmp_path)
    (tmp_path / "latin1.json").write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(ValueError, match=rf"^{re.escape(str(tmp_path / 'latin1.json'))}: not UTF-8 text \("):
        load_json(tmp_path / "latin1.json")
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{broken}")
    with pytest.raises(ValueError, match="bad.safetensors: corrupt or truncated"):
        io.read_meta(tmp_path / "bad.safetensors")
    logs = []
    assert io.load_checkpoint(tmp_path / "bad.safetensors", logs.append) is None
    assert len(logs) == 1 and logs[0].startswith("ignoring an unreadable checkpoint (") and "bad.safetensors" in logs[0]
    save_tensors(tmp_path / "ok.safetensors", {"w": torch.ones(1)}, {"step": 5})
    tensors, meta = io.load_checkpoint(tmp_path / "ok.safetensors", logs.append)
    assert meta == {"step": 5} and torch.equal(tensors["w"], torch.ones(1)) and len(logs) == 1


def test_json_and_text_files_hold_exactly_what_was_asked(tmp_path):
    obj = {"b": [1, 2], "a": {"σ": 0.5}}
    save_json(tmp_path / "o.json", obj)
    assert (tmp_path / "o.json").read_text(encoding="utf-8") == json.dumps(obj, indent=2, sort_keys=True) + "\n"
    io.save_text(tmp_path / "t.md", "σ = 0.5\n")
    assert (tmp_path / "t.md").read_bytes() == "σ = 0.5\n".encode("utf-8")


def test_a_figure_is_the_png_matplotlib_writes_at_120_dpi_tight(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(2, 1))
    ax.plot([0, 1], [1, 0])
    io.save_figure(fig, tmp_path / "f.png")
    want = BytesIO()
    fig.savefig(want, dpi=120, bbox_inches="tight", format="png")
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes() == want.getvalue()


def test_clean_stale_temporaries_removes_only_old_temporaries(tmp_path):
    old, new = tmp_path / ".a.json.x1.tmp", tmp_path / ".b.json.x2.tmp"
    kept = [tmp_path / "a.json.tmp", tmp_path / ".a.json", tmp_path / ".link.tmp"]
    for p in (old, new, *kept[:2]):
        p.write_text("x")
    kept[2].symlink_to(old)
    past = time.time() - 120
    for p in (old, *kept[:2]):
        os.utime(p, (past, past))
    assert io.clean_stale_temporaries(tmp_path) == [old]
    assert new.exists() and all(p.is_symlink() or p.exists() for p in kept)
    assert io.clean_stale_temporaries(tmp_path, older_than_s=0.0) == [new]
    assert io.clean_stale_temporaries(tmp_path / "missing") == []


def test_text_files_are_utf8_under_an_ascii_locale(tmp_path):
    """Not the locale's encoding: a C locale without coercion or UTF-8 mode encodes as ASCII."""
    io.save_text(tmp_path / "here.md", "σ")  # in this process too (mutation testing sees which tests call it)
    code = ("import sys; from pdiff_fast import io; io.save_text(sys.argv[1] + '/t.md', '\\u03c3'); "
            "io.save_json(sys.argv[1] + '/o.json', {'\\u03c3': 1})")
    env = {**os.environ, "LC_ALL": "C", "PYTHONCOERCECLOCALE": "0", "PYTHONUTF8": "0",
           "PYTHONPATH": str(Path(io.__file__).parents[1])}  # this package, wherever it was imported from
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "t.md").read_bytes() == "σ".encode("utf-8")
    assert load_json(tmp_path / "o.json") == {"σ": 1}


def test_stale_means_at_least_60_seconds_old(tmp_path, monkeypatch):
    monkeypatch.setattr(io.time, "time", lambda: 1000.0)
    exactly, younger = tmp_path / ".a.json.1.tmp", tmp_path / ".b.json.2.tmp"
    for p, mtime in ((exactly, 940.0), (younger, 940.5)):
        p.write_text("x")
        os.utime(p, (mtime, mtime))
    assert io.clean_stale_temporaries(tmp_path) == [exactly] and younger.exists()

import os

import pytest
import torch

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

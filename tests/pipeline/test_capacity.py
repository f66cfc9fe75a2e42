"""Sizes checked before work (pdiff_fast/pipeline/capacity.py): a result that cannot fit in memory or on
disk is refused at once, with the numbers, and `sample` / `collect` check before they start."""
import json
import time

import pytest

from pdiff_fast import cli
from pdiff_fast.pipeline import capacity
from pdiff_fast.pipeline.capacity import DoesNotFit, check_fits, human


def test_human_sizes():
    assert [human(x) for x in (0, 999, 1000, 123_456_789, 4e12, 5e15)] == \
        ["0 B", "999 B", "1 KB", "123 MB", "4 TB", "5e+03 TB"]


def test_memory_disk_and_gpu_limits_are_named_with_the_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(capacity, "available_memory", lambda: 10_000)
    monkeypatch.setattr(capacity, "free_disk", lambda folder: 1_000_000)
    assert check_fits("x", 10, 100, tmp_path, copies=2) == 4000  # 8 KB in memory: fits
    with pytest.raises(DoesNotFit) as exc:
        check_fits("sample: 20 models", 20, 100, tmp_path, copies=2)
    assert str(exc.value) == ("sample: 20 models: 20 x 100 values are 8 KB, 16 KB in memory while they are "
                              "gathered, but this machine has 10 KB available; ask for fewer")
    monkeypatch.setattr(capacity, "available_memory", lambda: None)  # unknown: the disk still counts
    with pytest.raises(DoesNotFit, match=f"are 1.2 MB on disk, but {tmp_path} has 1 MB free"):
        check_fits("y", 300, 1000, tmp_path)
    monkeypatch.setattr(capacity, "available_device_memory", lambda device: 100)
    with pytest.raises(DoesNotFit, match="but cuda has 100 B free"):
        check_fits("z", 1, 100, tmp_path, device="cuda")


def test_the_real_machine_numbers_are_positive(tmp_path):
    assert capacity.available_memory() > 0 and capacity.free_disk(tmp_path / "not" / "made") > 0
    assert capacity.available_device_memory("cpu") is None


def test_a_billion_samples_stop_before_any_work(tmp_path, capsys):
    """Only the population's header is read: the check comes before the models load or sampling starts."""
    from pdiff_fast.io import save_tensors
    import torch

    run = tmp_path / "run"
    spec = {"names": ["w"], "shapes": [[1000]], "dtypes": ["torch.float32"]}
    save_tensors(run / "population.safetensors", {"params": torch.zeros(2, 1000)}, {"spec": spec})
    start = time.monotonic()
    assert cli.main(["sample", "--run-dir", str(run), "--num-samples", str(10**9), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pdiff-fast sample: error: sample: 1000000000 models: "
                                               "1000000000 x 1000 values are 4 TB")
    assert time.monotonic() - start < 30
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".")) == ["population.safetensors"]


def test_collect_checks_k_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(capacity, "free_disk", lambda folder: 1000)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"dataset": "digits", "model": "mlp", "k": 50}))
    assert cli.main(["collect", "--run-dir", str(tmp_path / "r"), "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "collect: k=50 checkpoints: 50 x" in err and "has 1 KB free" in err
    assert not (tmp_path / "r" / "population.safetensors").exists()


def test_collect_checks_the_samples_to_come(tmp_path, capsys):
    """`run` with a num_samples that cannot fit stops in collect, not after training."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"dataset": "digits", "model": "mlp", "num_samples": 10**12}))
    assert cli.main(["run", "--run-dir", str(tmp_path / "r"), "--config", str(cfg), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("pdiff-fast run: error: sample: 1000000000000 models: 1000000000000 x ")
    assert not (tmp_path / "r" / "population.safetensors").exists()


def test_memory_is_memavailable_from_meminfo(tmp_path, monkeypatch):
    fake = tmp_path / "meminfo"
    fake.write_text("MemTotal:       1000 kB\nMemFree:         300 kB\nMemAvailable:    12345 kB\nBuffers: 1 kB\n")
    monkeypatch.setattr(capacity, "MEMINFO", str(fake))
    assert capacity.available_memory() == 12345 * 1024


def test_memory_without_meminfo_is_free_pages_times_page_size(tmp_path, monkeypatch):
    monkeypatch.setattr(capacity, "MEMINFO", str(tmp_path / "missing"))
    pages = {"SC_AVPHYS_PAGES": 7, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(capacity.os, "sysconf", lambda name: pages[name] if name in pages else
                        (_ for _ in ()).throw(ValueError(f"unknown {name}")))
    assert capacity.available_memory() == 7 * 4096
    monkeypatch.setattr(capacity.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert capacity.available_memory() is None


def test_the_real_meminfo_is_read(monkeypatch):
    """With sysconf broken, only /proc/meminfo can give a number."""
    monkeypatch.setattr(capacity.os, "sysconf", lambda name: (_ for _ in ()).throw(ValueError(name)))
    assert capacity.MEMINFO == "/proc/meminfo" and capacity.available_memory() > 0


def test_free_disk_is_asked_of_the_nearest_existing_folder(tmp_path, monkeypatch):
    asked = []
    monkeypatch.setattr(capacity.shutil, "disk_usage", lambda p: (asked.append(p), type("U", (), {"free": 5}))[1])
    assert capacity.free_disk(tmp_path / "a" / "b") == 5
    assert asked == [tmp_path]


def test_gpu_memory_is_the_free_memory_of_cuda_devices_only(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (100, 1000))  # (free, total)
    assert capacity.available_device_memory(torch.device("cuda:0")) == 100
    assert capacity.available_device_memory("cuda") == 100
    assert capacity.available_device_memory(torch.device("cpu")) is None
    assert capacity.available_device_memory("cpu") is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert capacity.available_device_memory(torch.device("cuda")) is None


def test_the_limits_are_inclusive_and_two_copies_by_default(tmp_path, monkeypatch):
    monkeypatch.setattr(capacity, "available_memory", lambda: 800)
    monkeypatch.setattr(capacity, "free_disk", lambda folder: 400)
    monkeypatch.setattr(capacity, "available_device_memory", lambda device: 400)
    assert check_fits("x", 10, 10, tmp_path) == 400  # 800 B in memory, 400 B on the GPU and the disk: all fit
    with pytest.raises(DoesNotFit, match="1.2 KB in memory"):
        check_fits("x", 10, 10, tmp_path, copies=3)
    monkeypatch.setattr(capacity, "available_memory", lambda: 10**9)
    monkeypatch.setattr(capacity, "available_device_memory", lambda device: 399)
    with pytest.raises(DoesNotFit) as exc:
        check_fits("x", 10, 10, tmp_path, device="cuda:1")
    assert str(exc.value) == "x: 10 x 10 values are 400 B, but cuda:1 has 399 B free; ask for fewer"
    monkeypatch.setattr(capacity, "available_device_memory", lambda device: None)
    monkeypatch.setattr(capacity, "free_disk", lambda folder: 399)
    with pytest.raises(DoesNotFit) as exc:
        check_fits("x", 10, 10, tmp_path)
    assert str(exc.value) == f"x: 10 x 10 values are 400 B on disk, but {tmp_path} has 399 B free; ask for fewer or " \
                             "free some space"


def test_every_unit():
    assert [human(x) for x in (5e3, 5e6, 5e9, 5e12)] == ["5 KB", "5 MB", "5 GB", "5 TB"]

"""Fault injection on a whole `pdiff-fast run` (a tiny config, about 5 s a run): kill -9 at random
points, a full disk at every write, every artifact damaged (truncated, a payload bit flipped,
swapped with another run's), every JSON file nested, bloated or replaced by a FIFO, two writers at
once. After each, the next command either finishes with the same final report as an uninterrupted
run, or stops with one line (exit 2) that says what to rerun, and following it gives that report.
Nothing is lost and nothing prints a traceback.

The seeds of the random kill times are listed (KILL_SEEDS): a seed that ever finds a failure stays
in the list as a regression case. docs/run-directory.md states the counts."""
import errno
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import SafetensorError

from pdiff_fast import cli, io

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "dataset": "digits", "model": "mlp", "epochs": 3, "k": 12, "ae_steps": 30, "diffusion_steps": 30,
    "denoiser_channels": [8, 8, 16, 16], "sampler": "ddim", "sample_steps": 5, "num_samples": 9,
    "noise_sigmas": [0.05], "recipe": "v2", "checkpoint_every": 10, "device": "cpu",
}
KILL_SEEDS = list(range(8))  # each: KILLS_PER_SEED kills of one run directory, then a run to the end
KILLS_PER_SEED = 3
TENSOR_FILES = ["population", "autoencoder", "diffusion", "generated"]
READ_BY = {"population": "train", "autoencoder": "sample", "diffusion": "sample", "generated": "evaluate"}
ORDER = ["collect", "train", "sample", "evaluate"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
# One thread everywhere: another thread count rounds training differently, so reports compare only
# between runs made alike (subprocesses with OMP_NUM_THREADS=1, in-process runs under set_num_threads(1)).
pytestmark = pytest.mark.usefixtures("one_thread")


def _cmd(step: str, run_dir: Path, config: Path | None = None) -> list[str]:
    return [sys.executable, "-m", "pdiff_fast", step, "--run-dir", str(run_dir), "--quiet"] + \
        (["--config", str(config)] if config else [])


def final(run_dir: Path) -> tuple[str, dict]:
    """What must not change: the table, and report.json without the timings."""
    report = json.loads((run_dir / "report.json").read_text())
    report.pop("timings")
    return (run_dir / "report.md").read_text(), report


def leftovers(run_dir: Path) -> list[str]:
    return [p.name for p in run_dir.iterdir() if p.name.endswith(io.TMP_SUFFIX)]


def one_error_line(err: str, step: str) -> str:
    """The one error line, the last thing printed (progress lines such as `subset: ...` may come before)."""
    lines = [x for x in err.strip().splitlines() if x]
    errors = [x for x in lines if ": error: " in x]
    assert "Traceback" not in err
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith(f"pdiff-fast {step}: error: "), err
    return errors[0]


def rerun_from(line: str) -> str:
    found = re.search(r"rerun `pdiff-fast (\w+)`", line)
    assert found, f"the error says nothing about what to rerun: {line}"
    return found.group(1)


@pytest.fixture(scope="module")
def config(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY))
    return path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, config):
    """An uninterrupted run (a subprocess, as the kills' runs) and how long it took."""
    d = tmp_path_factory.mktemp("baseline")
    start = time.monotonic()
    subprocess.run(_cmd("run", d, config), check=True, env=ENV, cwd=ROOT, capture_output=True)
    return d, time.monotonic() - start


@pytest.fixture(scope="module")
def in_process(tmp_path_factory, config):
    """An uninterrupted run in this process, one thread: what the in-process faults' runs compare with."""
    import torch

    d, threads = tmp_path_factory.mktemp("in_process"), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert cli.main(["run", "--run-dir", str(d), "--config", str(config), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    return d


@pytest.fixture(scope="module")
def other_seed(tmp_path_factory, config):
    d = tmp_path_factory.mktemp("seed1")
    subprocess.run(_cmd("run", d, config) + ["--seed", "1"], check=True, env=ENV, cwd=ROOT, capture_output=True)
    return d


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_killed_at_random_points_then_run_again(seed, baseline, config, tmp_path):
    base_dir, seconds = baseline
    rng = random.Random(seed)
    d = tmp_path / "run"
    for _ in range(KILLS_PER_SEED):
        proc = subprocess.Popen(_cmd("run", d, config), env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.3, seconds))
        proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate()
        assert "Traceback" not in err
    done = subprocess.run(_cmd("run", d, config), env=ENV, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert final(d) == final(base_dir)
    for name in TENSOR_FILES:  # byte for byte, resumed training included
        assert (d / f"{name}.safetensors").read_bytes() == (base_dir / f"{name}.safetensors").read_bytes(), name
    assert leftovers(d) == [] or all(time.time() - (d / n).stat().st_mtime < 60 for n in leftovers(d))


def _count_writes(monkeypatch, run) -> list[str]:
    names, commit = [], io._commit
    monkeypatch.setattr(io, "_commit", lambda tmp, path: (names.append(Path(path).name), commit(tmp, path))[1])
    run()
    monkeypatch.setattr(io, "_commit", commit)
    return names


def _in_process(step: str, d: Path, config: Path) -> int:
    return cli.main([step, "--run-dir", str(d), "--config", str(config), "--quiet"])


def test_a_full_disk_at_every_write(in_process, config, tmp_path, monkeypatch, capsys):
    """Each write of a whole run fails in turn, as a full disk fails it (safetensors' own error for tensor
    files, ENOSPC for the rest). A failed artifact stops the run with one line naming the file; failed
    bookkeeping (config.json, timings.json) warns and the run goes on. Then `run` again finishes."""
    writes = _count_writes(monkeypatch, lambda: _in_process("run", tmp_path / "count", config))
    capsys.readouterr()
    assert len(writes) >= 20 and "generated.safetensors" in writes
    commit = io._commit
    for i, name in enumerate(writes):
        d = tmp_path / f"w{i}"
        calls = []

        def full(tmp, path):
            calls.append(path)
            if len(calls) - 1 == i:
                if str(path).endswith(".safetensors"):
                    raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
                raise OSError(errno.ENOSPC, "No space left on device")
            return commit(tmp, path)
        monkeypatch.setattr(io, "_commit", full)
        rc = _in_process("run", d, config)
        monkeypatch.setattr(io, "_commit", commit)
        err = capsys.readouterr().err
        assert "Traceback" not in err and leftovers(d) == []
        if name in ("config.json", "timings.json"):
            assert rc == 0, err
            warned = [x for x in err.splitlines() if x.startswith("warning:")]
            assert len(warned) == 1 and "could not be updated" in warned[0] and "No space left" in warned[0]
        else:
            line = one_error_line(err, "run")
            assert f"{d / name}: could not write it: No space left on device" in line, (i, name, line)
        assert _in_process("run", d, config) == 0
        capsys.readouterr()
        assert final(d) == final(in_process), (i, name)


def files(d: Path) -> dict[str, bytes]:
    """Every file of the run directory but the lock (which a command creates, empty)."""
    return {p.name: p.read_bytes() for p in d.iterdir() if p.is_file() and p.name != ".pdiff_fast.lock"}


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".pdiff_fast.lock"))
    return dst


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(data[:8], "little")
    data[(start + len(data)) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _follow(line: str, d: Path, config: Path, capsys) -> None:
    """Do what the error line says, then the steps after it, as a user would."""
    step = rerun_from(line)
    for s in ORDER[ORDER.index(step):]:
        assert _in_process(s, d, config) == 0, capsys.readouterr().err
    capsys.readouterr()


@pytest.mark.parametrize("artifact", TENSOR_FILES)
@pytest.mark.parametrize("damage", ["truncate", "flip", "swap"])
def test_every_damaged_artifact_stops_its_reader_with_one_line(artifact, damage, in_process, other_seed, config,
                                                                tmp_path, capsys):
    d = _copy(in_process, tmp_path / "run")
    path = d / f"{artifact}.safetensors"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size * 2 // 3])
    elif damage == "flip":
        _flip(path)
    else:
        shutil.copyfile(other_seed / path.name, path)
    before = files(d)
    reader = READ_BY[artifact] if not (damage == "swap" and artifact == "population") else "sample"
    assert _in_process(reader, d, config) == 2
    line = one_error_line(capsys.readouterr().err, reader)
    assert files(d) == before  # nothing touched
    if damage != "swap":
        assert str(path) in line
        assert _in_process("report", d, config) == 2 or artifact not in ("population", "generated")
        capsys.readouterr()
        _follow(line, d, config, capsys)
        assert final(d) == final(in_process)


@pytest.mark.parametrize("name", ["config.json", "report.json", "timings.json"])
@pytest.mark.parametrize("damage", ["nested", "bloated", "fifo", "directory"])
def test_every_damaged_json_file_stops_with_one_line_or_is_replaced(name, damage, in_process, config, tmp_path,
                                                                      capsys, monkeypatch):
    d = _copy(in_process, tmp_path / "run")
    path = d / name
    path.unlink()
    if damage == "nested":
        path.write_text("[" * 200_000 + "]" * 200_000)
    elif damage == "bloated":
        # limits above the run's own files (config.json: about 1 kB) and below the bloated one
        monkeypatch.setattr(io, "MAX_JSON_BYTES", 4000)
        import pdiff_fast.config as config_lib
        monkeypatch.setattr(config_lib, "MAX_CONFIG_BYTES", 4000)
        path.write_text(json.dumps({"x": "y" * 5000}))
    elif damage == "fifo":
        os.mkfifo(path)  # a reader that opens it blocks forever
    else:
        path.mkdir()
    step = {"config.json": "sample", "report.json": "report", "timings.json": "sample"}[name]
    rc = _in_process(step, d, config)
    err = capsys.readouterr().err
    if name == "timings.json" and damage in ("nested", "bloated", "fifo"):
        assert rc == 0 and "Traceback" not in err  # bookkeeping: replaced by this step's timings
        assert set(json.loads(path.read_text())) == {"sample"}
        return
    if name == "timings.json":  # a directory where timings.json goes: the artifact stays, a warning
        assert rc == 0 and "Traceback" not in err
        assert len([x for x in err.splitlines() if x.startswith("warning: generated.safetensors is saved")]) == 1
        return
    line = one_error_line(err, step)
    assert str(path) in line
    if name == "report.json" and damage != "directory":  # a directory there is the user's to move
        monkeypatch.undo()
        _follow(line, d, config, capsys)
        assert final(d) == final(in_process)


@pytest.mark.parametrize("wait", [False, True])
def test_two_writers_at_once(wait, baseline, config, tmp_path):
    d = tmp_path / "run"
    extra = ["--wait"] if wait else []
    procs = [subprocess.Popen(_cmd("run", d, config) + extra, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _ in results)
    assert all("Traceback" not in err for _, err in results)
    if wait:
        assert codes == [0, 0]
    else:
        assert codes == [0, 2]
        err = next(err for rc, err in results if rc == 2)
        assert re.fullmatch(rf"pdiff-fast run: error: {re.escape(str(d))}: in use by pid \d+ .*\n", err), err
    assert final(d) == final(baseline[0])


def test_runs_made_alike_agree_byte_for_byte(baseline, in_process):
    """A subprocess run and an in-process one (both one thread): the same report and the same tensor files,
    so either can stand for an uninterrupted run."""
    assert final(in_process) == final(baseline[0])
    for name in TENSOR_FILES:
        assert (in_process / f"{name}.safetensors").read_bytes() == (baseline[0] / f"{name}.safetensors").read_bytes()

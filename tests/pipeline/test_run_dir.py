"""Trust the run directory: the reliability issue's probes, replayed.

Artifacts that do not belong together are refused, crashes lose no finished work and training
resumes to the uninterrupted result, diverging training keeps the good models, user errors are
one line and exit 2, Ctrl-C exits 130, and files are written atomically with normal permissions.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from pdiff_fast import Config, PDiff
from pdiff_fast.cli import main
from pdiff_fast.io import load_artifact, load_json, read_digest

TINY = {
    "dataset": "digits", "model": "mlp", "epochs": 2, "k": 10, "ae_steps": 40, "diffusion_steps": 40,
    "denoiser_channels": [4, 4, 8, 8], "sampler": "ddim", "sample_steps": 4, "num_samples": 6,
    "noise_sigmas": [0.05], "recipe": "v2", "checkpoint_every": 10,
}
ROOT = Path(__file__).resolve().parents[2]


def cli(*args, timeout=300, prefix=(), **popen):
    """Run `python -m pdiff_fast ARGS` in a subprocess (after the `prefix` command, if any); returns
    CompletedProcess."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*prefix, sys.executable, "-m", "pdiff_fast", *map(str, args), "--quiet"],
                          capture_output=True, text=True, timeout=timeout, env=env, **popen)


def one_error_line(proc, *words):
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines and all(ln.startswith("pdiff-fast ") and ": error: " in ln for ln in lines), proc.stderr
    for w in words:
        assert w in proc.stderr, (w, proc.stderr)
    return proc.stderr


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    d = tmp_path_factory.mktemp("finished")
    (d / "cfg.json").write_text(json.dumps(TINY))
    assert main(["run", "--run-dir", str(d / "run"), "--config", str(d / "cfg.json"), "--quiet"]) == 0
    return d / "run"


@pytest.fixture
def run(finished, tmp_path):
    """A private copy of the finished run."""
    dst = tmp_path / "run"
    shutil.copytree(finished, dst)
    return dst


def digests(run_dir):
    return {p.name: read_digest(p) for p in sorted(run_dir.glob("*.safetensors"))}


# --- artifacts that do not belong together --------------------------------------------------
def test_recollect_then_evaluate_refuses_the_old_generated_models(run):
    proc = cli("collect", "--run-dir", run, "--seed", "1")
    assert proc.returncode == 0, proc.stderr
    one_error_line(cli("evaluate", "--run-dir", run), "generated.safetensors is stale",
                   "population.safetensors", "pdiff-fast sample")
    assert main(["evaluate", "--run-dir", str(run), "--quiet", "--allow-stale"]) == 0  # the explicit override


def test_a_failed_save_between_the_two_models_is_caught(run, monkeypatch, capsys):
    run_dir = sys.modules["pdiff_fast.pipeline.run_dir"]  # where PDiff's artifacts are saved
    real = run_dir.save_tensors

    def no_space(path, *a, **k):
        if Path(path).name == "diffusion.safetensors":
            raise OSError(28, "No space left on device", str(path))
        return real(path, *a, **k)

    monkeypatch.setattr(run_dir, "save_tensors", no_space)
    assert main(["train", "--run-dir", str(run), "--quiet", "--ae-steps", "41"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    monkeypatch.undo()
    assert main(["sample", "--run-dir", str(run), "--quiet"]) == 2  # new autoencoder beside the old denoiser
    assert "diffusion.safetensors is stale" in capsys.readouterr().err


def test_config_json_is_not_rewritten_by_report_or_a_failed_step(run, tmp_path):
    before = (run / "config.json").read_text()
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"k": 999}))
    assert cli("report", "--run-dir", run, "--config", other).returncode == 0  # report renders report.json only
    assert (run / "config.json").read_text() == before
    one_error_line(cli("train", "--run-dir", run, "--config", other),
                   "population.safetensors was made with k=10 but the config says k=999")
    assert (run / "config.json").read_text() == before


def test_config_json_follows_what_is_on_disk(run):
    assert main(["sample", "--run-dir", str(run), "--quiet", "--num-samples", "3"]) == 0
    cfg = load_json(run / "config.json")
    assert cfg["num_samples"] == 3 and cfg["k"] == 10
    _, meta, _ = load_artifact(run / "generated.safetensors")
    assert meta["config"]["num_samples"] == 3 and set(meta["inputs"]) == {"population", "autoencoder", "diffusion"}


def test_changed_upstream_settings_are_refused_with_the_step_to_rerun(run):
    with pytest.raises(ValueError, match="autoencoder.safetensors was made with ae_steps=40 .* rerun `pdiff-fast train`"):
        PDiff(Config(**{**TINY, "ae_steps": 80}), run, progress=False).sample()
    PDiff(Config(**{**TINY, "seed": 5}), run, progress=False).sample()  # a new seed is a new draw, not stale


def test_report_of_changed_artifacts_is_stale(run):
    assert main(["sample", "--run-dir", str(run), "--quiet", "--seed", "3"]) == 0
    with pytest.raises(ValueError, match="report.json is stale"):
        PDiff.from_run_dir(run, progress=False).report()


# --- crashes lose no work -------------------------------------------------------------------
def _wait_for(path: Path, proc, timeout=120):
    end = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_kill_9_during_diffusion_training_resumes_to_the_uninterrupted_result(finished, tmp_path):
    slow = {**TINY, "diffusion_steps": 600, "checkpoint_every": 50}
    cfg = tmp_path / "slow.json"
    cfg.write_text(json.dumps(slow))
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    for d in (reference, killed):
        d.mkdir()
        shutil.copy(finished / "population.safetensors", d)
        shutil.copy(finished / "config.json", d)
    assert main(["train", "--run-dir", str(reference), "--config", str(cfg), "--quiet"]) == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "pdiff_fast", "train", "--run-dir", str(killed), "--config",
                             str(cfg), "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(killed / "diffusion.ckpt.safetensors", proc)
    ae_digest = read_digest(killed / "autoencoder.safetensors")  # saved as soon as it was trained
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "diffusion.safetensors").exists()

    resumed = cli("train", "--run-dir", killed, "--config", cfg)
    assert resumed.returncode == 0, resumed.stderr
    assert "keeping the trained autoencoder" in resumed.stderr and "resuming diffusion training from step" in resumed.stderr
    assert read_digest(killed / "autoencoder.safetensors") == ae_digest
    a, meta_a, _ = load_artifact(reference / "diffusion.safetensors")
    b, meta_b, _ = load_artifact(killed / "diffusion.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bitwise
    assert meta_a["losses"] == meta_b["losses"]
    assert not (killed / "diffusion.ckpt.safetensors").exists()  # removed once the model is saved


def test_train_only_diffusion_keeps_the_autoencoder(run):
    ae = read_digest(run / "autoencoder.safetensors")
    dm = read_digest(run / "diffusion.safetensors")
    assert main(["train", "--run-dir", str(run), "--quiet", "--only", "diffusion", "--diffusion-steps", "20"]) == 0
    assert read_digest(run / "autoencoder.safetensors") == ae and read_digest(run / "diffusion.safetensors") != dm
    assert main(["sample", "--run-dir", str(run), "--quiet"]) == 0


def test_stale_temporaries_are_cleaned_at_start(run):
    junk = run / ".autoencoder.safetensors.x1y2.tmp"
    junk.write_bytes(b"half a file")
    old = time.time() - 3600
    os.utime(junk, (old, old))
    fresh = run / ".report.json.abcd.tmp"  # another process's write in progress: left alone
    fresh.write_text("{")
    assert main(["report", "--run-dir", str(run), "--quiet"]) == 0
    assert not junk.exists() and fresh.exists()


def test_ctrl_c_exits_130_quietly(finished, tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    shutil.copy(finished / "population.safetensors", d)
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**TINY, "ae_steps": 100000}))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    # SIG_DFL in the child, as in a terminal: a shell without job control starts background jobs
    # (`cmd &`) with SIGINT ignored, the child would inherit that and rightly never see the Ctrl-C
    proc = subprocess.Popen([sys.executable, "-m", "pdiff_fast", "train", "--run-dir", str(d), "--config", str(cfg),
                             "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    _wait_for(d / "autoencoder.ckpt.safetensors", proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err and "interrupted" in err


# --- training that diverges -----------------------------------------------------------------
@pytest.mark.parametrize("field", ["ae_lr", "diffusion_lr"])
def test_divergence_keeps_the_good_models(run, field):
    before = digests(run)
    proc = cli("train", "--run-dir", run, "--config", _write(run.parent / "lr.json", {field: 1e6}))
    one_error_line(proc, "diverged", f"{field}=1e+06", "learning rate")
    after = digests(run)
    for name in ("autoencoder.safetensors", "diffusion.safetensors", "generated.safetensors"):
        if field == "ae_lr" or name != "autoencoder.safetensors":
            assert after[name] == before[name], name


def test_nan_in_test_inputs_is_refused(run, monkeypatch):
    from pdiff_fast import data as data_lib

    real = data_lib.load_dataset

    def broken(name, cache_dir=None):
        d = real(name, cache_dir)
        d.x_test[0, 0] = float("nan")
        return d

    monkeypatch.setattr(data_lib, "load_dataset", broken)
    with pytest.raises(ValueError, match="NaN or Inf"):
        PDiff.from_run_dir(run, progress=False).evaluate()


# --- config and file-system errors: one line, exit 2, before any work -------------------------
def _write(path, obj):
    Path(path).write_text(json.dumps(obj))
    return path


def test_bad_config_fields_are_refused_before_any_work(tmp_path):
    cfg = _write(tmp_path / "bad.json", {**TINY, "k": "abc", "epochs": "3", "ae_lr": "0.001", "seed": "x",
                                         "device": "tpu", "noise_sigmas": 0.01, "diffusion_batch_size": 0,
                                         "typo_field": 1})
    start = time.time()
    err = one_error_line(cli("run", "--run-dir", tmp_path / "r", "--config", cfg))
    assert time.time() - start < 60
    for field in ("'k'", "'epochs'", "'ae_lr'", "'seed'", "'device'", "'noise_sigmas'", "'diffusion_batch_size'",
                  "unknown field 'typo_field'"):
        assert f"bad.json: {'field ' if field.startswith(chr(39)) else ''}{field}" in err, field
    assert not (tmp_path / "r" / "config.json").exists()


@pytest.mark.parametrize("fields,words", [
    ({"ae_steps": -5}, "'ae_steps': must be at least 1"),
    ({"epochs": -1}, "'epochs': must be at least 1"),
    ({"sample_steps": 0}, "'sample_steps': must be at least 1"),
    ({"memory_budget_mb": 0}, "'memory_budget_mb'"),
    ({"batch_size": 0}, "'batch_size'"),
    ({"num_samples": 0}, "'num_samples'"),
])
def test_out_of_range_fields_name_the_field(run, fields, words, capsys):
    before = digests(run)
    cfg = _write(run.parent / "c.json", fields)
    assert main(["train", "--run-dir", str(run), "--config", str(cfg), "--quiet"]) == 2
    assert words in capsys.readouterr().err
    assert digests(run) == before


def test_a_subset_too_small_for_the_autoencoder_fails_before_collection(tmp_path, capsys):
    start = time.time()
    assert main(["collect", "--run-dir", str(tmp_path / "r"), "--dataset", "digits", "--model", "mlp",
                 "--subset", "*.bias", "--epochs", "50", "--quiet"]) in (0, 2)
    err = capsys.readouterr().err
    if "too short" in err:
        assert not (tmp_path / "r" / "population.safetensors").exists() and time.time() - start < 30


def test_file_system_problems_are_one_line(tmp_path, run):
    a_file = tmp_path / "file"
    a_file.write_text("x")
    one_error_line(cli("report", "--run-dir", a_file), "is a file, not a directory")
    one_error_line(cli("train", "--run-dir", run, "--config", tmp_path), "is a directory")
    raw = tmp_path / "raw.json"
    raw.write_bytes(b'{"k": "\xff"}')
    one_error_line(cli("train", "--run-dir", run, "--config", raw), "not UTF-8")
    shutil.copy(run / "population.safetensors", run / "autoencoder.safetensors")  # valid file, wrong artifact
    one_error_line(cli("sample", "--run-dir", run), "autoencoder.safetensors")


def as_unprivileged() -> list[str]:
    """The prefix that makes a read-only directory read-only to the command: nothing for a normal
    user; for root (CI runs as root), setpriv drops the capabilities that let root write anywhere."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without util-linux's setpriv to drop CAP_DAC_OVERRIDE")
    return [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]


def test_read_only_run_dir(run):
    os.chmod(run, 0o555)
    try:
        one_error_line(cli("report", "--run-dir", run, prefix=as_unprivileged()), "not writable")
    finally:
        os.chmod(run, 0o755)


# --- how files are written ------------------------------------------------------------------
def test_report_replaces_a_planted_symlink_instead_of_following_it(run, tmp_path):
    outside = tmp_path / "outside.md"
    outside.write_text("precious")
    (run / "report.md").unlink()
    (run / "report.md").symlink_to(outside)
    assert main(["evaluate", "--run-dir", str(run), "--quiet"]) == 0
    assert outside.read_text() == "precious" and not (run / "report.md").is_symlink()


def test_artifacts_and_report_share_normal_permissions(finished):
    umask = os.umask(0)
    os.umask(umask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in finished.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes

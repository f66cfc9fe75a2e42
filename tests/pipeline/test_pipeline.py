"""End to end: a short pipeline through the CLI, and bad input on the way."""
import json
import math

import pytest
import torch

from pdiff_fast import Config, PDiff
from pdiff_fast.cli import main
from pdiff_fast.evaluation import novelty
from pdiff_fast.io import load_json, load_tensors, save_tensors
from pdiff_fast.params import ParamSpec

TINY = {
    "dataset": "digits", "model": "mlp", "epochs": 3, "k": 12, "ae_steps": 30, "diffusion_steps": 30,
    "denoiser_channels": [8, 8, 16, 16], "sampler": "ddim", "sample_steps": 5, "num_samples": 9,
    "noise_sigmas": [0.05], "recipe": "v2",
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    cfg = d / "cfg.json"
    cfg.write_text(json.dumps(TINY))
    assert main(["run", "--run-dir", str(d), "--config", str(cfg), "--quiet"]) == 0
    return d


def test_run_writes_every_artifact(run_dir):
    for name in ["config.json", "population.safetensors", "autoencoder.safetensors", "diffusion.safetensors",
                 "generated.safetensors", "report.json", "report.md", "timings.json",
                 "accuracy_distribution.png", "iou_vs_accuracy.png", "distance_vs_accuracy.png"]:
        assert (run_dir / name).is_file(), name
    hidden = [p.name for p in run_dir.iterdir() if p.name.startswith(".")]
    assert hidden == [".pdiff_fast.lock"]  # no temporaries left; the lock stays, empty: no holder
    assert (run_dir / ".pdiff_fast.lock").read_bytes() == b""


def test_report_has_the_paper_figures(run_dir):
    r = load_json(run_dir / "report.json")
    assert r["original"]["n"] == 12 and r["generated"]["n"] + r["generated_nonfinite"] == 9
    for key in ["original_original_mean", "generated_generated_mean", "generated_original_mean",
                "generated_original_max"]:
        assert 0.0 <= r["iou"][key] <= 1.0
    assert set(r["noise_baselines"]) == {"0.05"}
    assert set(r["baselines"]) == {"noise matched", "interpolation", "weight mean", "ensemble"}
    assert r["verdict"]["label"] in ("copies", "close", "new")
    table = (run_dir / "report.md").read_text()
    assert "| generated (p-diff) |" in table and f"**Verdict: {r['verdict']['label']};" in table


def test_the_verdict_is_what_the_saved_parameters_give(run_dir):
    """Recomputed from the run's tensor files, not read back: nearest-original distances by
    torch.cdist in the originals' standardised space, tau, their ratio and the label by the
    thresholds; the accuracy and IoU summaries from the per-model rows."""
    r = load_json(run_dir / "report.json")
    pop, meta = load_tensors(run_dir / "population.safetensors")
    gen, _ = load_tensors(run_dir / "generated.safetensors")
    std = novelty.standardizer(ParamSpec.from_dict(meta["spec"]), pop["params"])
    originals, generated = std.transform(pop["params"]).double(), std.transform(gen["params"]).double()
    generated = generated[torch.isfinite(generated).all(1)]

    def rms(a, b):
        return torch.cdist(a, b) / math.sqrt(a.shape[1])

    tau = rms(originals, originals).fill_diagonal_(math.inf).min(1).values.median().item()
    median = rms(generated, originals).min(1).values.median().item()
    ratio = median / tau
    label = "copies" if ratio <= 0.1 else ("close" if ratio < 1 else "new")
    assert r["verdict"]["label"] == label
    assert r["novelty"]["tau"] == pytest.approx(tau, rel=1e-6)
    assert r["verdict"]["median_distance"] == pytest.approx(median, rel=1e-6)
    per_model = r["per_model"]
    assert r["generated"]["median"] == torch.tensor(per_model["generated_accuracy"]).median().item()
    assert r["original"]["median"] == torch.tensor(per_model["original_accuracy"]).median().item()
    assert r["iou"]["generated_original_max"] == max(per_model["generated_max_iou"])
    assert r["iou"]["generated_original_max_mean"] == pytest.approx(
        sum(per_model["generated_max_iou"]) / len(per_model["generated_max_iou"]))


def test_diffusion_state_dict_holds_model_and_ema(run_dir):
    sd, meta = load_tensors(run_dir / "diffusion.safetensors")
    assert any(k.startswith("ema.") for k in sd) and any(k.startswith("model.") for k in sd)
    assert meta["latent_shape"]


def test_steps_run_separately_and_resample(run_dir):
    assert main(["sample", "--run-dir", str(run_dir), "--num-samples", "4", "--quiet"]) == 0
    t, _ = load_tensors(run_dir / "generated.safetensors")
    assert t["params"].shape[0] == 4
    assert main(["evaluate", "--run-dir", str(run_dir), "--quiet"]) == 0


def test_help_on_every_subcommand(capsys):
    for cmd in ["collect", "train", "sample", "evaluate", "report", "run"]:
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
    assert "--run-dir" in capsys.readouterr().out


def test_corrupt_artifact_is_a_clear_error_and_nothing_else_is_lost(run_dir, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for name in ["config.json", "population.safetensors"]:
        (bad / name).write_bytes((run_dir / name).read_bytes())
    data = (bad / "population.safetensors").read_bytes()
    (bad / "population.safetensors").write_bytes(data[: len(data) // 3])
    assert main(["train", "--run-dir", str(bad), "--quiet"]) == 2
    assert "corrupt or truncated" in capsys.readouterr().err
    assert (bad / "population.safetensors").stat().st_size == len(data) // 3  # left as it was


def test_nan_in_the_population_is_refused(run_dir, tmp_path):
    p = PDiff(Config(**TINY), tmp_path / "nan", progress=False)
    t, meta = load_tensors(run_dir / "population.safetensors")
    t["params"][0, 0] = float("nan")
    save_tensors(p.path("population"), t, meta)
    with pytest.raises(ValueError, match="NaN or Inf"):
        p.fit()


def test_bad_subset_and_config_are_clear_errors(tmp_path, capsys):
    assert main(["collect", "--run-dir", str(tmp_path / "x"), "--dataset", "digits", "--model", "mlp",
                 "--subset", "nothing.*", "--quiet"]) == 2
    assert "matches no parameter" in capsys.readouterr().err
    cfg = tmp_path / "c.json"
    cfg.write_text('{"epochs": 1, "learning_rate": 3}')
    assert main(["run", "--run-dir", str(tmp_path / "y"), "--config", str(cfg)]) == 2
    assert "c.json: unknown field 'learning_rate'" in capsys.readouterr().err


def test_nan_loss_stops_training_with_a_named_error():
    from pdiff_fast.nn.autoencoder import small
    from pdiff_fast.pipeline.train import fit_autoencoder

    with pytest.raises(FloatingPointError, match="autoencoder loss is inf at step 0.*training data is the likely cause"):
        fit_autoencoder(small(100), torch.randn(4, 100) * 1e30, steps=2, progress=False)

"""`pdiff-fast study` on a tiny config: the ablation variants run (in worker processes too) and
are reused when current, the sampler and fine-tuning parts, the computed readings, bad input."""
import json

import pytest

from pdiff_fast.pipeline import study as study_lib
from pdiff_fast.cli import main
from pdiff_fast.config import Config
from pdiff_fast.io import load_json

TINY = {
    "dataset": "digits", "model": "mlp", "epochs": 3, "k": 12, "ae_steps": 30, "diffusion_steps": 30,
    "denoiser_channels": [8, 8, 16, 16], "sampler": "ddim", "sample_steps": 5, "num_samples": 9,
    "noise_sigmas": [0.05], "recipe": "v2", "device": "cpu",
}
FEW_SAMPLERS = (("ddpm", 1000), ("ddim", 10), ("ddim", 2))


@pytest.fixture(scope="module")
def ablation(tmp_path_factory):
    d = tmp_path_factory.mktemp("study")
    rows = study_lib.run_ablation(Config.from_dict(TINY), d, names=["default", "no noise", "K=1"], jobs=2,
                                  log=lambda m: None)
    return d, rows


def test_every_variant_is_a_valid_config():
    for name, changes in study_lib.VARIANTS.items():
        cfg = study_lib.variant_config(Config(), name)
        assert all(getattr(cfg, k) == v for k, v in changes.items())
    assert len({study_lib.slug(n) for n in study_lib.VARIANTS}) == len(study_lib.VARIANTS)


def test_ablation_rows_come_from_each_variants_own_run(ablation):
    d, rows = ablation
    assert [r["variant"] for r in rows] == ["default", "no noise", "K=1"]
    for r in rows:
        report = load_json(d / "variants" / study_lib.slug(r["variant"]) / "report.json")
        assert r["generated"] == report["generated"] and r["verdict"]["label"] == report["verdict"]["label"]
        assert r["seconds"] > 0 and r["dim"] > 0
    cfg = load_json(d / "variants" / "no-noise" / "config.json")
    assert cfg["input_noise"] == 0.0 and cfg["latent_noise"] == 0.0
    assert rows[2]["k"] == 1 and rows[2]["original"]["n"] == 1 and rows[2]["tau"] != rows[2]["tau"]  # NaN


def test_current_variants_are_reused_and_changed_ones_rerun(ablation, monkeypatch):
    d, rows = ablation
    ran = []
    monkeypatch.setattr(study_lib, "_run_variant", lambda cfg, run_dir, threads: ran.append(run_dir))
    again = study_lib.run_ablation(Config.from_dict(TINY), d, names=["default", "no noise"], jobs=1,
                                   log=lambda m: None)
    assert ran == [] and again[0]["generated"] == rows[0]["generated"]
    with pytest.raises(RuntimeError, match="left no current report"):  # another config: rerun (here: a no-op)
        study_lib.run_ablation(Config.from_dict({**TINY, "seed": 5}), d, names=["default"], jobs=1,
                               log=lambda m: None)
    assert ran == [str(d / "variants" / "default")]


def test_sampler_and_finetune_parts(ablation):
    d, _ = ablation
    result = study_lib.run_study(Config.from_dict(TINY), d, parts=("sampler", "finetune"), finetune_models=3,
                                 samplers=FEW_SAMPLERS, log=lambda m: None)
    rows = result["sampler"]
    assert [(r["sampler"], r["steps"]) for r in rows] == list(FEW_SAMPLERS)
    assert all(r["seconds"] > 0 and r["generated"]["n"] + r["generated_nonfinite"] == 9 for r in rows)
    assert rows[0]["seconds"] > rows[2]["seconds"]  # 1000 denoiser calls against 2
    ft = result["finetune"]
    assert set(ft["starts"]) == {"generated", "original", "random"} and ft["epochs"] == [0, 1, 5]
    text = (d / "study.md").read_text()
    assert "## Sampler trade-off" in text and "## Fine-tuning" in text and "DDIM 2:" in text
    for name in ("study_sampler.png", "study_finetune.png"):
        assert (d / name).stat().st_size > 1000
    saved = json.loads((d / "study.json").read_text())
    assert saved["sampler"] == json.loads(json.dumps(rows))


def test_fewest_level_steps_and_readings():
    def row(sampler, steps, seconds, median):
        return {"sampler": sampler, "steps": steps, "seconds": seconds, "verdict": {"label": "close"},
                "generated": {"median": median, "mean": median - 1, "best": median + 1}}
    rows = [row("ddpm", 1000, 10.0, 97.0), row("ddim", 50, 0.5, 96.95), row("ddim", 10, 0.1, 96.0)]
    assert study_lib.fewest_level_steps(rows)["steps"] == 50
    rows[1]["generated"]["median"] = 96.5
    assert study_lib.fewest_level_steps(rows)["steps"] == 1000
    text = " ".join(study_lib.read_samplers(rows))
    assert "DDIM 10: median 96.00 (-1.00 against DDPM 1000)" in text and "100.0x faster" in text
    rows[1]["generated"]["median"] = 97.0
    rows[1]["verdict"] = {"label": "copies"}  # level accuracy, another verdict: not kept
    assert study_lib.fewest_level_steps(rows)["steps"] == 1000
    rows[1]["verdict"] = {"label": "close"}
    rows += [row("ddpm", 1000, 10.0, 97.5), row("dpm++2m", 10, 0.1, 97.0), row("dpm++2m", 5, 0.05, 97.0)]
    rows[-3]["seed_offset"] = 1  # the diagnostics: another seed, no x_t clamp; never chosen
    rows[-1]["clamp"] = False
    assert study_lib.fewest_level_steps(rows)["sampler"] == "dpm++2m" and study_lib.fewest_level_steps(rows)["steps"] == 10
    rows[-2]["generated"]["median"] = 96.89  # just outside LEVEL = 0.1 of 97.0
    assert study_lib.fewest_level_steps(rows)["steps"] == 50
    rows[-2]["generated"]["median"] = 96.9  # just inside
    assert study_lib.fewest_level_steps(rows)["steps"] == 10
    ab = [{"variant": "default", "generated": {"mean": 96.0, "median": 97.0, "best": 97.5},
           "verdict": {"label": "close"}},
          {"variant": "no noise", "generated": {"mean": 90.0, "median": 95.5, "best": 97.0},
           "verdict": {"label": "copies"}}]
    assert study_lib.read_ablation(ab) == ["no noise: generated mean 90.00 (-6.00 against the default), median "
                                           "95.50 (-1.50), best 97.00; verdict copies (default: close)."]


def test_cli_study_and_bad_input(ablation, tmp_path, capsys):
    d, _ = ablation
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    assert main(["study", "--run-dir", str(d), "--config", str(cfg), "--only", "ablation", "--variant", "default",
                 "--variant", "K=1", "--quiet"]) == 0  # both on disk: reused
    out = capsys.readouterr().out
    assert "## Ablation" in out and "| default |" in out and "| K=1 |" in out and "| no noise |" not in out
    assert (d / "study_ablation.png").stat().st_size > 1000
    assert main(["study", "--run-dir", str(d), "--jobs", "0", "--quiet"]) == 2
    assert "--jobs must be at least 1" in capsys.readouterr().err
    assert main(["study", "--run-dir", str(d), "--variant", "K=2", "--quiet"]) == 2
    assert "unknown variant(s) ['K=2']" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown part"):
        study_lib.run_study(Config.from_dict(TINY), d, parts=("ablation", "plots"))


def test_prompted_part_runs_the_prompted_variant_and_reads_its_report(ablation, capsys):
    d, rows = ablation
    cfg = Config.from_dict({**TINY, "trajectories": 2, "k": 16, "num_samples": 16})
    study = study_lib.run_study(cfg, d / "p", parts=("prompted",), log=lambda m: None)
    pr = study["prompted"]
    run_dir = d / "p" / "variants" / "prompted"
    report = load_json(run_dir / "report.json")
    assert load_json(run_dir / "config.json") == cfg.replace(**study_lib.PROMPTED).to_dict()
    assert [r["val_median"] for r in pr["calibration"]] == [r["val"]["median"] for r in report["prompted"]["calibration"]]
    assert pr["judged_prompt"] == report["prompted"]["judged_prompt"] and pr["generated"] == report["generated"]
    md = (d / "p" / "study.md").read_text()
    assert "## Prompted generation" in md and f"verdict {report['verdict']['label']}" in md
    # a current prompted run is reused; a prompted base config runs as it is, and the p-diff parts refuse it
    log = []
    study_lib.run_study(cfg, d / "p", parts=("prompted",), log=log.append)
    assert any("reusing" in m for m in log)
    prompted = cfg.replace(**study_lib.PROMPTED)
    assert study_lib.prompted_config(prompted) is prompted
    with pytest.raises(ValueError, match="runs the part 'prompted' only"):
        study_lib.run_study(prompted, d / "q", parts=("ablation", "prompted"))


def test_read_prompted_is_computed_from_the_numbers():
    pr = {"calibration": [{"prompt": 50.0, "miss": 0.5, "honoured": True, "extrapolation": False},
                          {"prompt": 70.0, "miss": -3.5, "honoured": False, "extrapolation": False},
                          {"prompt": 91.0, "miss": -9.0, "honoured": False, "extrapolation": True}],
          "judged_prompt": 50.0, "judged_originals": 12, "generated": {"median": 51.0}, "original": {"median": 72.0},
          "baselines": {"noise": 70.0, "interpolation": 50.5, "weight mean": 52.0}, "verdict": {"label": "new"}}
    assert study_lib.read_prompted(pr) == [
        "1 of 3 prompts honoured (50.00); mean absolute miss over the 2 prompts in the checkpoints' range 2.00 points.",
        "At prompt 50.00: generated median 51.00 against 72.00 for the 12 checkpoints that reach it; above 1 of 3 "
        "baselines' medians; verdict new."]

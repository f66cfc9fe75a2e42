"""pdiff_fast.pipeline.study one part at a time, with the runs faked: a variant's "run" plants its
config.json, report.json and population header, so what the study reuses, reruns, reads and writes
is checked without training anything; the readings, tables and plots are checked against numbers
given by hand. Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md); test_study.py runs a real study on a tiny config."""
import concurrent.futures as cf
import json
import os
from pathlib import Path

import pytest
import torch

from pdiff_fast.config import Config, ConfigError
from pdiff_fast.io import load_json, read_digest, save_json, save_tensors
from pdiff_fast.params import ParamSpec
from pdiff_fast.pipeline import study as study_lib
from pdiff_fast.pipeline.run_dir import RunDirectory
from tests.fakes import Clock

BASE = Config(device="cpu", k=12, dataset="digits", model="mlp")


def summary(best, mean, median, n=5):
    return {"best": best, "mean": mean, "median": median, "n": n}


def report_for(cfg: Config, median=90.0, label="new", tau=0.5, **extra):
    return {"original": summary(95.0, 93.0, 94.0), "generated": summary(96.0, median - 1, median),
            "generated_nonfinite": 0, "iou": {"generated_original_max_mean": 0.8765},
            "novelty": {"tau": tau, "sets": {"generated": {"distance_ratio": 1.234, "new_and_better": 0.25}}},
            "verdict": {"label": label, "accuracy": "above", "distance_ratio": 1.234, "other": 1},
            "timings": {"collect": 1.0, "train_autoencoder": 2.0, "train_diffusion": 3.0, "sample": 4.0,
                        "evaluate": 5.0, "report": 100.0},
            "inputs": {}, **extra}


def spec_of(dim):
    return ParamSpec.from_dict({"names": ["w"], "shapes": [[dim]], "dtypes": ["torch.float32"]})


def plant_run(run_dir: Path, cfg: Config, dim=7, **report_kw):
    """What a finished pipeline run leaves that the study reads: config.json, report.json, the population."""
    run_dir.mkdir(parents=True, exist_ok=True)
    save_json(run_dir / "config.json", cfg.to_dict())
    spec = spec_of(dim)
    save_tensors(run_dir / "population.safetensors", {"params": torch.zeros(1, dim)}, {"spec": spec.to_dict()})
    report = report_for(cfg, **report_kw)
    report["inputs"] = {"population": read_digest(run_dir / "population.safetensors")}
    save_json(run_dir / "report.json", report)
    return report


@pytest.fixture
def fake_runs(monkeypatch):
    """_run_variant replaced: records (config, run_dir, threads) and plants the run's files."""
    ran = []

    def run_variant(config, run_dir, threads):
        ran.append((config, run_dir, threads))
        plant_run(Path(run_dir), Config.from_dict(config), median=80.0 + len(ran))
    monkeypatch.setattr(study_lib, "_run_variant", run_variant)
    return ran


# --- names and configs -----------------------------------------------------------------------

def test_slug():
    assert study_lib.slug("no input noise") == "no-input-noise" and study_lib.slug("K=10") == "k-10"
    assert study_lib.slug("  Last norm!! ") == "last-norm" and study_lib.slug("default") == "default"
    assert [study_lib.slug(n) for n in study_lib.VARIANTS] == [
        "default", "no-input-noise", "no-latent-noise", "no-noise", "k-1", "k-10", "k-50", "last-norm-layer-only"]


def test_variants_and_their_configs(monkeypatch):
    assert study_lib.VARIANTS["no noise"] == {"input_noise": 0.0, "latent_noise": 0.0}
    cfg = study_lib.variant_config(BASE.replace(trajectories=3), "K=1")
    assert (cfg.k, cfg.trajectories) == (1, 1) and study_lib.variant_config(BASE, "default") == BASE
    assert study_lib.variant_config(BASE, "last norm layer only").subset == "last-1-norm-layers"
    monkeypatch.setitem(study_lib.VARIANTS, "bad", {"k": 0})
    with pytest.raises(ConfigError, match="study variant 'bad'"):
        study_lib.variant_config(BASE, "bad")
    assert study_lib.FINETUNE_EPOCHS == (0, 1, 5) and study_lib.PARTS == ("ablation", "sampler", "finetune", "prompted")
    assert study_lib.PROMPTED == {"recipe": "span", "prompted": True}


def test_prompted_config():
    cfg = study_lib.prompted_config(BASE)
    assert cfg.prompted and cfg.recipe == "span" and cfg.replace(prompted=False, recipe=BASE.recipe) == BASE
    prompted = BASE.replace(prompted=True, recipe="span", val_fraction=0.3)
    assert study_lib.prompted_config(prompted) is prompted


def test_default_jobs(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    assert study_lib.default_jobs("cpu") == 4 and study_lib.default_jobs("cuda") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert study_lib.default_jobs("auto") == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert study_lib.default_jobs("auto") == 4
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert study_lib.default_jobs("cpu") == len(study_lib.VARIANTS) == 8
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert study_lib.default_jobs("cpu") == 1


# --- a variant's run and its report ----------------------------------------------------------

def test_current_report(tmp_path):
    d = tmp_path / "v"
    assert study_lib._current_report(d, BASE) is None  # nothing there
    report = plant_run(d, BASE)
    assert study_lib._current_report(d, BASE) == report
    assert study_lib._current_report(d, BASE.replace(seed=1)) is None  # made with another config
    save_json(d / "report.json", {k: v for k, v in report.items() if k != "verdict"})
    assert study_lib._current_report(d, BASE) is None  # unfinished
    save_json(d / "report.json", [report])
    assert study_lib._current_report(d, BASE) is None
    (d / "report.json").write_text("{broken")
    assert study_lib._current_report(d, BASE) is None
    plant_run(d, BASE)
    save_tensors(d / "population.safetensors", {"params": torch.ones(1, 7)}, {"spec": spec_of(7).to_dict()})
    assert study_lib._current_report(d, BASE) is None  # its population changed since
    plant_run(d, BASE)
    (d / "config.json").unlink()
    assert study_lib._current_report(d, BASE) is None


def test_run_variant_runs_the_configs_pipeline(monkeypatch, tmp_path):
    import pdiff_fast.pipeline.pdiff as pdiff_mod

    made, threads = [], []

    class Fake:
        def __init__(self, cfg, run_dir, progress=True, log=print):
            made.append((cfg, run_dir, progress, log))

        def run(self):
            made.append("run")
    monkeypatch.setattr(pdiff_mod, "PIPELINES", {False: Fake, True: "unused"})
    monkeypatch.setattr(torch, "set_num_threads", threads.append)
    study_lib._run_variant(BASE.to_dict(), "somewhere", 3)
    assert made == [(BASE, "somewhere", False, None), "run"] and threads == [3]
    study_lib._run_variant(BASE.to_dict(), "somewhere", None)
    assert threads == [3]


def test_row_reads_the_report_and_the_population(tmp_path):
    cfg = study_lib.variant_config(BASE, "no noise")
    report = plant_run(tmp_path / "v", cfg, dim=11)
    row = study_lib._row("no noise", cfg, tmp_path / "v", report)
    assert row == {"variant": "no noise", "changes": {"input_noise": 0.0, "latent_noise": 0.0},
                   "run_dir": str(tmp_path / "v"), "k": 12, "dim": 11, "input_noise": 0.0, "latent_noise": 0.0,
                   "original": report["original"], "generated": report["generated"], "generated_nonfinite": 0,
                   "max_iou_mean": 0.8765, "novelty": {"distance_ratio": 1.234, "new_and_better": 0.25},
                   "verdict": {"label": "new", "accuracy": "above", "distance_ratio": 1.234}, "tau": 0.5,
                   "seconds": 15.0}  # the five steps, not the report's own time
    assert study_lib._row("other", cfg, tmp_path / "v", report)["changes"] == {}
    del report["timings"]
    assert study_lib._row("other", cfg, tmp_path / "v", report)["seconds"] == 0
    assert study_lib._spec_dim(tmp_path / "v") == 11


# --- the ablation ----------------------------------------------------------------------------

def test_ablation_one_at_a_time_runs_what_is_not_current(tmp_path, fake_runs):
    logs = []
    rows = study_lib.run_ablation(BASE, tmp_path, names=["default", "K=1"], jobs=1, log=logs.append)
    assert [(Config.from_dict(c), r, t) for c, r, t in fake_runs] == [
        (BASE, str(tmp_path / "variants" / "default"), None),
        (study_lib.variant_config(BASE, "K=1"), str(tmp_path / "variants" / "k-1"), None)]
    assert [r["variant"] for r in rows] == ["default", "K=1"] and [r["generated"]["median"] for r in rows] == [81, 82]
    assert logs[0] == "study: ablation: running 2 variant(s), 1 at a time: default, K=1"
    assert logs[1].startswith("study: ablation 'default' done in ") and logs[1].endswith(" s")
    assert logs[2].startswith("study: ablation 'K=1' done in ")
    logs.clear()
    again = study_lib.run_ablation(BASE, tmp_path, names=["K=1", "default"], jobs=1, log=logs.append)
    assert len(fake_runs) == 2 and [r["variant"] for r in again] == ["K=1", "default"]
    assert logs == [f"study: ablation 'K=1': reusing {tmp_path / 'variants' / 'k-1'}",
                    f"study: ablation 'default': reusing {tmp_path / 'variants' / 'default'}"]
    study_lib.run_ablation(BASE, tmp_path, names=["default"], jobs=1, fresh=True, log=logs.append)
    assert len(fake_runs) == 3


def test_ablation_names_default_to_every_variant(tmp_path, fake_runs, monkeypatch):
    monkeypatch.setattr(study_lib, "default_jobs", lambda device: 1)
    rows = study_lib.run_ablation(BASE, tmp_path, log=lambda m: None)
    assert [r["variant"] for r in rows] == list(study_lib.VARIANTS) and len(fake_runs) == 8


def test_a_variant_that_leaves_no_report_stops_the_study(tmp_path, monkeypatch):
    monkeypatch.setattr(study_lib, "_run_variant", lambda *a: None)
    with pytest.raises(RuntimeError, match=rf"^study: variant 'default' left no current report in "
                                           rf"{tmp_path / 'variants' / 'default'}$"):
        study_lib.run_ablation(BASE, tmp_path, names=["default"], jobs=1, log=lambda m: None)


class InlinePool:
    """ProcessPoolExecutor run in this process (records its arguments)."""
    made = []

    def __init__(self, max_workers, mp_context):
        InlinePool.made.append((max_workers, mp_context.get_start_method()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        f = cf.Future()
        try:
            f.set_result(fn(*args))
        except Exception as e:
            f.set_exception(e)
        return f


def test_ablation_in_worker_processes(tmp_path, fake_runs, monkeypatch):
    monkeypatch.setattr(study_lib.cf, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    InlinePool.made = []
    logs = []
    rows = study_lib.run_ablation(BASE, tmp_path, names=["default", "K=10", "K=50"], jobs=3, log=logs.append)
    assert InlinePool.made == [(3, "spawn")] and sorted(t for _, _, t in fake_runs) == [2, 2, 2]  # 8 cores / 3 jobs
    assert [r["variant"] for r in rows] == ["default", "K=10", "K=50"]
    assert logs[0] == "study: ablation: running 3 variant(s), 3 at a time: default, K=10, K=50"
    assert sorted(logs[1:]) == ["study: ablation 'K=10' done", "study: ablation 'K=50' done", "study: ablation 'default' done"]
    InlinePool.made = []
    study_lib.run_ablation(BASE, tmp_path, names=["default"], jobs=3, log=logs.append)
    assert InlinePool.made == []  # nothing to run: no pool
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    study_lib.run_ablation(BASE, tmp_path, names=["K=1"], jobs=4, log=logs.append)
    assert fake_runs[-1][2] == 1  # at least one thread each


def test_a_failed_worker_stops_the_ablation_with_its_error(tmp_path, monkeypatch):
    monkeypatch.setattr(study_lib.cf, "ProcessPoolExecutor", InlinePool)

    def boom(*a):
        raise FloatingPointError("diverged")
    monkeypatch.setattr(study_lib, "_run_variant", boom)
    with pytest.raises(FloatingPointError, match="diverged"):
        study_lib.run_ablation(BASE, tmp_path, names=["default"], jobs=2, log=lambda m: None)


def test_default_run_is_trained_only_when_missing(tmp_path, fake_runs, monkeypatch):
    import pdiff_fast.pipeline.pdiff as pdiff_mod

    made = []
    monkeypatch.setattr(pdiff_mod, "PDiff", lambda cfg, run_dir, progress=True, log=print: made.append(
        (cfg, run_dir, progress, log)) or "P")
    assert study_lib._default_run(BASE, tmp_path, False, print) == "P" and len(fake_runs) == 1
    assert made == [(BASE, tmp_path / "variants" / "default", False, None)]
    study_lib._default_run(BASE, tmp_path, False, print)
    assert len(fake_runs) == 1
    study_lib._default_run(BASE, tmp_path, True, print)
    assert len(fake_runs) == 2 and fake_runs[-1][2] is None


# --- fine-tuning -----------------------------------------------------------------------------

def test_finetune_starts_and_settings(monkeypatch):
    import pdiff_fast.evaluation.finetuning as ft_mod
    import pdiff_fast.pipeline.collect as collect_mod

    spec = spec_of(3)
    pop = type("Pop", (), {"params": torch.arange(30.0).view(10, 3), "spec": spec})()
    gen = torch.arange(300.0, 345.0).view(15, 3)
    asked = {}

    class P:
        config = BASE.replace(subset_lr=0.02, batch_size=7, seed=5, memory_budget_mb=2)
        device = torch.device("cpu")
        data = type("D", (), {"to": lambda self, device: "DATA"})()

        def _population(self):
            return pop, "DIGEST"

        def _load(self, name, digests):
            asked["load"] = (name, digests)
            return {"params": gen}, {}, "G"

        def new_model(self):
            return torch.nn.Linear(1, 1)

    monkeypatch.setattr(ft_mod, "random_starts", lambda s, params, n, seed: asked.setdefault("random", (s, params, n, seed))
                        and torch.zeros(n, 3))
    monkeypatch.setattr(collect_mod, "rebuild_base", lambda model, p: torch.nn.Linear(2, 2))

    def finetune(model, s, data, starts, **kw):
        asked["finetune"] = (s, data, starts, kw)
        return {"epochs": kw["epochs"]}
    monkeypatch.setattr(ft_mod, "finetune", finetune)
    logs = []
    result = study_lib.run_finetune(P(), 4, epochs=(0, 2), log=logs.append)
    assert asked["load"] == ("generated", {"population": "DIGEST"})
    s, data, starts, kw = asked["finetune"]
    assert s is spec and data == "DATA" and kw == {"epochs": (0, 2), "lr": 0.02, "batch_size": 7, "seed": 5,
                                                   "memory_budget_bytes": 2 << 20}
    assert torch.equal(starts["generated"], gen[:4])
    assert torch.equal(starts["original"], pop.params[[0, 3, 6, 9]])  # evenly over the collection
    assert asked["random"][2:] == (4, 5) and torch.equal(asked["random"][1], pop.params)
    assert result["epochs"] == (0, 2) and result["seconds"] >= 0
    assert logs == [f"study: fine-tuning 12 models for 2 epochs: {result['seconds']:.0f} s"]
    study_lib.run_finetune(P(), 20, log=logs.append)  # more than K originals: each once
    assert torch.equal(asked["finetune"][2]["original"], pop.params) and asked["finetune"][3]["epochs"] == (0, 1, 5)
    with pytest.raises(ValueError, match=r"^study: the fine-tuning needs at least one model per start, got 0$"):
        study_lib.run_finetune(P(), 0)


# --- the prompted part -----------------------------------------------------------------------

def prompted_report(cfg):
    rep = report_for(cfg)
    rep["baselines"] = {"noise": {"median": 85.0}, "ensemble": {"median": 95.0}}
    rep["prompted"] = {
        "prompt_range": [80.0, 96.5], "highest_honoured": 90.0, "judged_prompt": 90.0, "judged_originals": 6,
        "calibration": [
            {"prompt": 80.0, "n": 4, "miss": -1.5, "honoured": False, "extrapolation": False,
             "val": {"median": 78.5}, "test": {"median": 77.0}, "extra": 1},
            {"prompt": 90.0, "n": 4, "miss": 0.5, "honoured": True, "extrapolation": False,
             "val": {"median": 90.5}, "test": {"median": 89.0}},
            {"prompt": 99.0, "n": 2, "miss": -3.0, "honoured": False, "extrapolation": True,
             "val": {"median": 96.0}, "test": {"median": 95.0}}]}
    return rep


def test_prompted_part_runs_once_and_keeps_what_the_study_shows(tmp_path, monkeypatch):
    ran = []

    def run_variant(config, run_dir, threads):
        cfg = Config.from_dict(config)
        ran.append((cfg, run_dir, threads))
        plant_run(Path(run_dir), cfg)
        rep = prompted_report(cfg)
        rep["inputs"] = load_json(Path(run_dir) / "report.json")["inputs"]
        save_json(Path(run_dir) / "report.json", rep)
    monkeypatch.setattr(study_lib, "_run_variant", run_variant)
    logs = []
    out = study_lib.run_prompted(BASE, tmp_path, log=logs.append)
    cfg = study_lib.prompted_config(BASE)
    assert ran == [(cfg, str(tmp_path / "variants" / "prompted"), None)]
    assert logs[0].startswith("study: prompted run done in ") and logs[0].endswith(" s")
    assert out["run_dir"] == str(tmp_path / "variants" / "prompted") and out["changes"] == study_lib.PROMPTED
    assert out["calibration"][0] == {"prompt": 80.0, "n": 4, "miss": -1.5, "honoured": False, "extrapolation": False,
                                     "val_median": 78.5, "test_median": 77.0}
    assert (out["prompt_range"], out["highest_honoured"], out["judged_prompt"], out["judged_originals"]) == (
        [80.0, 96.5], 90.0, 90.0, 6)
    assert out["baselines"] == {"noise": 85.0, "ensemble": 95.0} and out["generated"]["median"] == 90.0
    assert out["original"]["median"] == 94.0 and out["verdict"]["label"] == "new"
    logs.clear()
    assert study_lib.run_prompted(BASE, tmp_path, log=logs.append) == out and len(ran) == 1
    assert logs == [f"study: prompted: reusing {tmp_path / 'variants' / 'prompted'}"]
    study_lib.run_prompted(BASE, tmp_path, fresh=True, log=logs.append)
    assert len(ran) == 2
    prompted = BASE.replace(prompted=True, recipe="span")
    assert study_lib.run_prompted(prompted, tmp_path / "p", log=logs.append)["changes"] == {}
    monkeypatch.setattr(study_lib, "_run_variant", lambda *a: None)
    with pytest.raises(RuntimeError, match=r"^study: the prompted run left no current report in .*variants/prompted$"):
        study_lib.run_prompted(BASE, tmp_path / "q", log=logs.append)


# --- readings --------------------------------------------------------------------------------

def row(variant, mean, median, best, label, k=12):
    return {"variant": variant, "k": k, "dim": 64, "original": summary(97.0, 96.0, 96.5),
            "generated": summary(best, mean, median), "verdict": {"label": label, "accuracy": "within", "distance_ratio": 0.5},
            "novelty": {"distance_ratio": 0.456, "new_and_better": 0.125}, "max_iou_mean": 0.91234, "seconds": 12.4}


def test_read_ablation():
    rows = [row("default", 90.0, 91.0, 95.0, "new"), row("K=1", 88.5, 92.25, 94.0, "copies")]
    assert study_lib.read_ablation(rows) == [
        "K=1: generated mean 88.50 (-1.50 against the default), median 92.25 (+1.25), best 94.00; verdict copies "
        "(default: new)."]
    assert study_lib.read_ablation(rows[1:]) == [] and study_lib._delta(1.0, 1.0) == "+0.00"


def test_read_finetune():
    assert study_lib.read_finetune({}) == []
    ft = {"epochs": [5, 0, 1], "starts": {
        "generated": {"summary": {"0": {"median": 90.0}, "5": {"median": 95.125}}},
        "random": {"summary": {"0": {"median": 10.0}, "5": {"median": 50.0}}}}}
    assert study_lib.read_finetune(ft) == [
        "Median test accuracy after 0 -> 5 epochs: generated: 90.00 -> 95.12; random: 10.00 -> 50.00."]


def kept_prompted():
    return {"calibration": [
        {"prompt": 80.0, "n": 4, "miss": -1.5, "honoured": False, "extrapolation": False, "val_median": 78.5,
         "test_median": 77.0},
        {"prompt": 90.0, "n": 4, "miss": 0.5, "honoured": True, "extrapolation": False, "val_median": 90.5,
         "test_median": 89.0},
        {"prompt": 99.0, "n": 2, "miss": -3.0, "honoured": True, "extrapolation": True, "val_median": 96.0,
         "test_median": 95.0}],
        "generated": summary(96.0, 89.0, 90.0), "original": summary(95.0, 93.0, 94.0), "judged_prompt": 90.0,
        "judged_originals": 6, "baselines": {"noise": 85.0, "ensemble": 95.0, "best": 90.0},
        "verdict": {"label": "new"}, "prompt_range": [80.0, 96.5], "changes": {"recipe": "span", "prompted": True}}


def test_read_prompted():
    pr = kept_prompted()
    assert study_lib.read_prompted(pr) == [
        "2 of 3 prompts honoured (90.00, 99.00); mean absolute miss over the 2 prompts in the checkpoints' range 1.00 "
        "points.",
        "At prompt 90.00: generated median 90.00 against 94.00 for the 6 checkpoints that reach it; above 1 of 3 "
        "baselines' medians; verdict new."]
    ablation = [row("K=1", 1, 2, 3, "x"), row("default", 90.0, 91.0, 95.0, "new")]
    assert study_lib.read_prompted(pr, ablation)[2] == \
        "The unprompted default run's generated median: 91.00 (its originals 96.50)."
    assert len(study_lib.read_prompted(pr, ablation[:1])) == 2
    for r in pr["calibration"]:
        r["honoured"], r["extrapolation"] = False, True
    assert study_lib.read_prompted(pr)[0] == \
        "0 of 3 prompts honoured; mean absolute miss over the 0 prompts in the checkpoints' range 0.00 points."


# --- the table and the plots -----------------------------------------------------------------

def test_format_study(monkeypatch):
    ft = {"epochs": [0, 1], "starts": {"generated": {"summary": {"0": {"median": 90.0}, "1": {"median": 91.0}}}}}
    study = {"device": "cpu", "torch": "2.x", "cpus": 2, "jobs": 3,
             "ablation": [row("default", 90.0, 91.0, 95.0, "new"),
                          {**row("K=1", 88.5, 92.25, 94.0, "copies"),
                           "novelty": {"distance_ratio": float("nan"), "new_and_better": None}}],
             "finetune": ft, "prompted": kept_prompted(), "seconds": {"ablation": 12.4, "prompted": 3.6}}
    import pdiff_fast.evaluation.finetuning as ft_mod

    monkeypatch.setattr(ft_mod, "format_finetune_table", lambda ft: "FT TABLE")
    text = study_lib.format_study(study)
    lines = text.split("\n")
    assert lines[0] == "# p-diff study (cpu, torch 2.x, 2 CPUs, ablation variants 3 at a time)"
    assert lines[4] == ("| variant | K | D | original best / mean / median | generated best / mean / median | "
                        "nearest-original distance / tau | max IoU (mean) | new and better | verdict | time (s) |")
    assert lines[6] == ("| default | 12 | 64 | 97.00 / 96.00 / 96.50 | 95.00 / 90.00 / 91.00 | 0.46 | 0.912 | 12.5% | "
                        "new, accuracy within the originals | 12 |")
    assert lines[7] == ("| K=1 | 12 | 64 | 97.00 / 96.00 / 96.50 | 94.00 / 88.50 / 92.25 | – | 0.912 | – | copies, "
                        "accuracy within the originals | 12 |")
    assert lines[9] == "- " + study_lib.read_ablation(study["ablation"])[0]
    assert "## Fine-tuning from generated parameters\n\n" + ft_mod.format_finetune_table(ft) + "\n\n- " + \
        study_lib.read_finetune(ft)[0] in text
    assert ("## Prompted generation\n\nThe base config with recipe span, prompted True, in variants/prompted; the "
            "checkpoints' validation accuracy spans 80.00..96.50.\n\n"
            "| prompt (val %) | models | val median | test median | miss | honoured |\n|---:|---:|---:|---:|---:|---|\n"
            "| 80.00 | 4 | 78.50 | 77.00 | -1.50 | no |\n| 90.00 | 4 | 90.50 | 89.00 | +0.50 | yes |\n"
            "| 99.00 | 2 | 96.00 | 95.00 | -3.00 | yes (above every checkpoint) |\n\n- ") in text
    assert text.endswith("Wall time of the parts run by this call: ablation 12 s, prompted 4 s.\n")
    pr = {**kept_prompted(), "changes": {}}
    assert "The base config (prompted) as it is, in variants/prompted" in study_lib.format_study({"prompted": pr})
    assert study_lib.format_study({}) == "# p-diff study (?, torch ?, ? CPUs)\n\n"
    assert study_lib._ratio(None) == "–" and study_lib._ratio(float("nan")) == "–" and study_lib._ratio(0.125) == "0.12"


def test_format_study_samplers_section(monkeypatch):
    asked = []
    monkeypatch.setattr(study_lib, "format_samplers", lambda rows, ratio, acc: asked.append((rows, ratio, acc)) or
                        ["SAMPLERS"])
    text = study_lib.format_study({"sampler": ["r"], "device": "cpu"})
    assert asked == [(["r"], study_lib._ratio, study_lib._acc)] and "\nSAMPLERS\n" in text
    assert text.startswith("# p-diff study (cpu, torch ?, ? CPUs)\n")  # no ablation: no jobs


def test_plot_study_ablation_figure(tmp_path, monkeypatch):
    import pdiff_fast.pipeline.report as report_mod

    figs = []
    monkeypatch.setattr(report_mod, "_save", lambda fig, path: figs.append((fig, path)) or path)
    rows = [row("default", 90.0, 91.0, 95.0, "new"), row("K=1", 93.0, 92.0, 94.0, "copies"),
            row("K=10", 80.0, 85.5, 89.0, "new")]
    paths = study_lib.plot_study({"ablation": rows}, tmp_path)
    assert paths == [tmp_path / "study_ablation.png"]
    ax = figs[0][0].axes[0]
    assert ax.get_title() == "Generated median accuracy: highest K=1 92.00, lowest K=10 85.50"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["default", "K=1", "K=10"]
    assert ax.get_ylabel() == "test accuracy (%)"
    assert sorted(t.get_text() for t in ax.get_legend().get_texts()) == [
        "generated best", "generated median (bar: to mean)", "original median"]
    bars = ax.containers[0]
    assert list(bars.lines[0].get_ydata()) == [91.0, 92.0, 85.5]
    segments = bars.lines[2][0].get_segments()  # down to the mean when it is lower, else none
    assert [tuple(s[:, 1]) for s in segments] == [(90.0, 91.0), (92.0, 92.0), (80.0, 85.5)]
    assert [list(c.get_offsets()[:, 1]) for c in ax.collections if c.get_offsets().shape == (3, 2)][-2:] == [
        [95.0, 94.0, 89.0], [96.5, 96.5, 96.5]]


def test_plot_study_other_parts(tmp_path, monkeypatch):
    import pdiff_fast.evaluation.finetuning as ft_mod

    monkeypatch.setattr(study_lib, "plot_samplers", lambda rows, path: ("S", rows, path))
    monkeypatch.setattr(ft_mod, "plot_finetune", lambda ft, path: ("F", ft, path))
    assert study_lib.plot_study({"sampler": [1], "finetune": {"x": 1}}, tmp_path) == [
        ("S", [1], tmp_path / "study_sampler.png"), ("F", {"x": 1}, tmp_path / "study_finetune.png")]
    assert study_lib.plot_study({}, tmp_path) == []


# --- the whole study -------------------------------------------------------------------------

@pytest.fixture
def parts(monkeypatch):
    """Every part faked: records the order and arguments."""
    calls = []
    monkeypatch.setattr(study_lib, "run_ablation", lambda base, d, names=None, jobs=None, fresh=False, log=print:
                        calls.append(("ablation", names, jobs, fresh)) or [row("default", 90.0, 91.0, 95.0, "new")])
    monkeypatch.setattr(study_lib, "run_prompted", lambda base, d, fresh, log: calls.append(("prompted", fresh)) or
                        kept_prompted())
    monkeypatch.setattr(study_lib, "_default_run", lambda base, d, fresh, log: calls.append(("default", fresh)) or "P")
    monkeypatch.setattr(study_lib, "run_samplers", lambda p, samplers, log: calls.append(("sampler", p, samplers)) or [])
    monkeypatch.setattr(study_lib, "run_finetune", lambda p, n, log: calls.append(("finetune", p, n)) or {})
    monkeypatch.setattr(study_lib, "plot_study", lambda study, d: calls.append("plot") or [])
    return calls


def test_run_study_runs_the_parts_in_order_and_writes_after_each(tmp_path, parts, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 6)
    written = []
    real = study_lib.format_study
    monkeypatch.setattr(study_lib, "format_study", lambda s: written.append(sorted(k for k in s if k in study_lib.PARTS))
                        or real(s))
    study = study_lib.run_study(BASE, tmp_path / "s", parts=("finetune", "ablation", "sampler"), jobs=2, fresh=True,
                                finetune_models=3, samplers=("x",), variants=["default"], log=lambda m: None)
    assert parts == [("ablation", ["default"], 2, True), "plot", ("default", False), ("sampler", "P", ("x",)), "plot",
                     ("default", False), ("finetune", "P", 3), "plot"]
    assert written == [["ablation"], ["ablation", "sampler"], ["ablation", "finetune", "sampler"]]
    assert list(study["seconds"]) == ["ablation", "sampler", "finetune"]
    assert (study["device"], study["cpus"], study["jobs"], study["torch"]) == ("cpu", 6, 2, torch.__version__)
    assert study["config"] == BASE.to_dict() and load_json(tmp_path / "s" / "study.json") == json.loads(json.dumps(study))
    assert (tmp_path / "s" / "study.md").read_text() == real(study)


def test_run_study_fresh_defaults_without_ablation(tmp_path, parts, monkeypatch):
    monkeypatch.setattr(study_lib, "default_jobs", lambda device: 5)
    study = study_lib.run_study(BASE, tmp_path, parts=("sampler",), fresh=True, log=lambda m: None)
    assert parts == [("default", True), ("sampler", "P", study_lib.SAMPLERS), "plot"] and study["jobs"] == 5
    parts.clear()
    study_lib.run_study(BASE, tmp_path, parts=("finetune",), log=lambda m: None)
    assert parts == [("default", False), ("finetune", "P", 20), "plot"]


def test_run_study_keeps_the_parts_of_an_earlier_call_with_the_same_config(tmp_path, parts):
    study_lib.run_study(BASE, tmp_path, parts=("ablation",), log=lambda m: None)
    study = study_lib.run_study(BASE, tmp_path, parts=("prompted",), log=lambda m: None)
    assert "ablation" in study and "prompted" in study and list(study["seconds"]) == ["prompted"]
    assert parts[-2] == ("prompted", False)
    study = study_lib.run_study(BASE.replace(seed=1), tmp_path, parts=("prompted",), log=lambda m: None)
    assert "ablation" not in study  # another config: nothing kept
    study_lib.run_study(BASE.replace(seed=1), tmp_path, parts=("ablation",), log=lambda m: None)
    study = study_lib.run_study(BASE.replace(seed=1), tmp_path, parts=("prompted",), fresh=True, log=lambda m: None)
    assert "ablation" not in study  # fresh: nothing kept
    save_json(tmp_path / "study.json", [1, 2])
    assert "ablation" not in study_lib.run_study(BASE.replace(seed=1), tmp_path, parts=("prompted",), log=lambda m: None)


def test_run_study_defaults_run_every_part(tmp_path, parts):
    study_lib.run_study(BASE, tmp_path, log=lambda m: None)
    assert [c[0] if isinstance(c, tuple) else c for c in parts] == [
        "ablation", "plot", "default", "sampler", "plot", "default", "finetune", "plot", "prompted", "plot"]
    assert parts[0] == ("ablation", None, None, False) and parts[-2] == ("prompted", False)


def test_run_study_refuses_unknown_parts_variants_and_mixed_prompted(tmp_path, parts):
    with pytest.raises(ValueError, match=r"^study: unknown part\(s\) \['x', 'y'\]; choose from \['ablation', 'sampler', "
                                         r"'finetune', 'prompted'\]$"):
        study_lib.run_study(BASE, tmp_path, parts=("y", "ablation", "x"))
    with pytest.raises(ValueError, match=r"^study: unknown variant\(s\) \['K=2'\]; choose from \['default', "):
        study_lib.run_study(BASE, tmp_path, variants=["default", "K=2"])
    prompted = BASE.replace(prompted=True, recipe="span")
    with pytest.raises(ValueError, match=r"^study: a prompted config runs the part 'prompted' only \(asked for "
                                         r"ablation, prompted\): the other parts are p-diff's; give an unprompted "
                                         r"config, whose prompted part is made from it$"):
        study_lib.run_study(prompted, tmp_path, parts=("ablation", "prompted"))
    with pytest.raises(ConfigError):
        study_lib.run_study(BASE.replace(k=0), tmp_path)
    assert parts == [] and not (tmp_path / "study.json").exists()
    study_lib.run_study(prompted, tmp_path, parts=("prompted",), log=lambda m: None)
    assert parts[0] == ("prompted", False)


# --- what the first mutation run left alive --------------------------------------------------

def test_a_report_without_inputs_is_current(tmp_path):
    report = plant_run(tmp_path / "v", BASE)
    del report["inputs"]
    save_json(tmp_path / "v" / "report.json", report)
    assert study_lib._current_report(tmp_path / "v", BASE) == report


def test_a_prompted_part_that_cannot_be_made_says_so():
    with pytest.raises(ConfigError, match=r"^study part 'prompted': field 'prompted': needs the AE_CNN_bottleneck "
                                          r"denoiser, got 'ODUnet'$"):
        study_lib.prompted_config(BASE.replace(denoiser="ODUnet"))


def test_times_in_the_logs(tmp_path, fake_runs, monkeypatch):
    monkeypatch.setattr(study_lib.time, "perf_counter", Clock(100.0, 103.4))
    logs = []
    study_lib.run_ablation(BASE, tmp_path, names=["default"], jobs=1, log=logs.append)
    assert logs[-1] == "study: ablation 'default' done in 3 s"

    def run_variant(config, run_dir, threads):
        cfg = Config.from_dict(config)
        plant_run(Path(run_dir), cfg)
        rep = prompted_report(cfg)
        rep["inputs"] = load_json(Path(run_dir) / "report.json")["inputs"]
        save_json(Path(run_dir) / "report.json", rep)
    monkeypatch.setattr(study_lib, "_run_variant", run_variant)
    monkeypatch.setattr(study_lib.time, "perf_counter", Clock(50.0, 57.6))
    study_lib.run_prompted(BASE, tmp_path, log=logs.append)
    assert logs[-1] == "study: prompted run done in 8 s"


def test_the_default_run_logs_through_the_given_log(tmp_path, fake_runs, monkeypatch):
    import pdiff_fast.pipeline.pdiff as pdiff_mod

    monkeypatch.setattr(pdiff_mod, "PDiff", lambda *a, **k: "P")
    logs = []
    study_lib._default_run(BASE, tmp_path, False, logs.append)
    assert logs[0] == "study: ablation: running 1 variant(s), 1 at a time: default"


def test_two_jobs_split_the_cores(tmp_path, fake_runs, monkeypatch):
    monkeypatch.setattr(study_lib.cf, "ProcessPoolExecutor", InlinePool)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    study_lib.run_ablation(BASE, tmp_path, names=["default", "K=1"], jobs=2, log=lambda m: None)
    assert [t for _, _, t in fake_runs] == [4, 4]


def test_finetune_edges(monkeypatch):
    import inspect

    import pdiff_fast.evaluation.finetuning as ft_mod
    import pdiff_fast.pipeline.collect as collect_mod

    assert inspect.signature(study_lib.run_finetune).parameters["n_models"].default == 20
    spec = spec_of(3)
    pop = type("Pop", (), {"params": torch.arange(30.0).view(10, 3), "spec": spec})()
    asked = {}

    class P:
        config = BASE
        device = torch.device("cpu")
        data = type("D", (), {"to": lambda self, device: "DATA"})()

        def _population(self):
            return pop, "DIGEST"

        def _load(self, name, digests):
            return {"params": torch.ones(5, 3)}, {}, "G"

        def new_model(self):
            return "NEW MODEL"

    monkeypatch.setattr(ft_mod, "random_starts", lambda s, params, n, seed: asked.setdefault("random_spec", s) and
                        torch.zeros(n, 3))
    monkeypatch.setattr(collect_mod, "rebuild_base", lambda model, p: asked.setdefault("rebuild", (model, p)) and
                        torch.nn.Linear(1, 1))
    monkeypatch.setattr(ft_mod, "finetune", lambda model, s, data, starts, **kw: asked.setdefault("starts", starts) and {})
    monkeypatch.setattr(study_lib.time, "perf_counter", Clock(10.0, 12.5))
    logs = []
    result = study_lib.run_finetune(P(), 1, log=logs.append)  # one model per start is enough
    assert result["seconds"] == 2.5 and logs == ["study: fine-tuning 3 models for 5 epochs: 2 s"]
    assert sorted(asked["starts"]) == ["generated", "original", "random"] and asked["random_spec"] is spec
    assert asked["rebuild"] == ("NEW MODEL", pop)
    assert torch.equal(asked["starts"]["original"], pop.params[:1])


def test_read_prompted_with_one_prompt_in_range():
    pr = kept_prompted()
    pr["calibration"] = pr["calibration"][:1]
    assert study_lib.read_prompted(pr)[0] == ("0 of 1 prompts honoured; mean absolute miss over the 1 prompts in the "
                                              "checkpoints' range 1.50 points.")


def test_format_study_whole_text(monkeypatch):
    import pdiff_fast.evaluation.finetuning as ft_mod

    monkeypatch.setattr(ft_mod, "format_finetune_table", lambda ft: f"FT {sorted(ft)}")
    ablation = [row("default", 90.0, 91.0, 95.0, "new"), row("K=1", 88.5, 92.25, 94.0, "copies")]
    ft = {"epochs": [0, 1], "starts": {"generated": {"summary": {"0": {"median": 90.0}, "1": {"median": 91.0}}}}}
    text = study_lib.format_study({"ablation": ablation, "finetune": ft, "prompted": kept_prompted()})
    want = "\n".join([
        "# p-diff study (?, torch ?, ? CPUs, ablation variants ? at a time)", "",
        "## Ablation", "",
        "| variant | K | D | original best / mean / median | generated best / mean / median | nearest-original "
        "distance / tau | max IoU (mean) | new and better | verdict | time (s) |",
        "|---|---:|---:|---|---|---:|---:|---:|---|---:|",
        "| default | 12 | 64 | 97.00 / 96.00 / 96.50 | 95.00 / 90.00 / 91.00 | 0.46 | 0.912 | 12.5% | new, accuracy "
        "within the originals | 12 |",
        "| K=1 | 12 | 64 | 97.00 / 96.00 / 96.50 | 94.00 / 88.50 / 92.25 | 0.46 | 0.912 | 12.5% | copies, accuracy "
        "within the originals | 12 |",
        "", "- " + study_lib.read_ablation(ablation)[0], "",
        "## Fine-tuning from generated parameters", "", "FT ['epochs', 'starts']", "",
        "- " + study_lib.read_finetune(ft)[0], "",
        "## Prompted generation", "",
        "The base config with recipe span, prompted True, in variants/prompted; the checkpoints' validation accuracy "
        "spans 80.00..96.50.", "",
        "| prompt (val %) | models | val median | test median | miss | honoured |", "|---:|---:|---:|---:|---:|---|",
        "| 80.00 | 4 | 78.50 | 77.00 | -1.50 | no |", "| 90.00 | 4 | 90.50 | 89.00 | +0.50 | yes |",
        "| 99.00 | 2 | 96.00 | 95.00 | -3.00 | yes (above every checkpoint) |", "",
        *[f"- {s}" for s in study_lib.read_prompted(kept_prompted(), ablation)], "", ""])
    assert text == want
    assert len(study_lib.read_prompted(kept_prompted(), ablation)) == 3  # the default run's sentence is there


def test_plot_study_styles(tmp_path, monkeypatch):
    import pdiff_fast.pipeline.report as report_mod

    figs = []
    monkeypatch.setattr(report_mod, "_save", lambda fig, path: figs.append(fig) or path)
    study_lib.plot_study({"ablation": [row("default", 90.0, 91.0, 95.0, "new"), row("K=1", 93.0, 92.0, 94.0, "x")]},
                         tmp_path)
    fig = figs[0]
    ax = fig.axes[0]
    assert tuple(fig.get_size_inches()) == (7.0, 4.0)
    assert ax.title.get_fontsize() == 9 and all(t.get_fontsize() == 7 for t in ax.get_legend().get_texts())
    labels = ax.get_xticklabels()
    assert all(t.get_rotation() == 30 and t.get_ha() == "right" and t.get_fontsize() == 8 for t in labels)
    line = ax.containers[0].lines[0]
    assert line.get_marker() == "o" and line.get_linestyle() == "None"
    best, orig = [c for c in ax.collections if c.get_offsets().shape == (2, 2)][-2:]
    import matplotlib.markers as mmarkers

    want = {m: (lambda ms: ms.get_path().transformed(ms.get_transform()).vertices.tolist())(mmarkers.MarkerStyle(m))
            for m in ("^", "x")}
    assert best.get_paths()[0].vertices.tolist() == want["^"] and orig.get_paths()[0].vertices.tolist() == want["x"]


def test_run_study_hands_its_arguments_to_the_parts(tmp_path, monkeypatch):
    seen = []
    log = lambda m: None  # noqa: E731
    monkeypatch.setattr(study_lib, "run_ablation", lambda base, d, names=None, jobs=None, fresh=False, log=print:
                        seen.append(("ablation", base, d, log)) or [])
    monkeypatch.setattr(study_lib, "run_prompted", lambda base, d, fresh, log: seen.append(("prompted", base, d, log)) or
                        kept_prompted())
    monkeypatch.setattr(study_lib, "_default_run", lambda base, d, fresh, log: seen.append(("default", base, d, log)) or
                        "P")
    monkeypatch.setattr(study_lib, "run_samplers", lambda p, samplers, log=print: seen.append(("sampler", log)) or [])
    monkeypatch.setattr(study_lib, "run_finetune", lambda p, n, log=print: seen.append(("finetune", log)) or {})
    monkeypatch.setattr(study_lib, "plot_study", lambda study, d: seen.append(("plot", sorted(study), d)) or [])
    study_lib.run_study(BASE, tmp_path / "s", log=log)
    d = tmp_path / "s"
    assert seen[0] == ("ablation", BASE, d, log) and seen[2] == ("default", BASE, d, log) and seen[3] == ("sampler", log)
    assert seen[6] == ("finetune", log) and seen[8] == ("prompted", BASE, d, log)
    assert seen[1] == ("plot", ["ablation", "config", "cpus", "device", "jobs", "seconds", "torch"], d)


def test_run_study_seconds(tmp_path, parts, monkeypatch):
    monkeypatch.setattr(study_lib.time, "perf_counter", Clock(10.0, 14.5))
    study = study_lib.run_study(BASE, tmp_path, parts=("prompted",), log=lambda m: None)
    assert study["seconds"] == {"prompted": 4.5}

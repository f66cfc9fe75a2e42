"""pdiff_fast.pipeline.pdiff's steps with their heavy collaborators faked (the collection recipe, the
sampler, the evaluator, the plots) on planted run directories: what each step checks first, what it
asks its collaborators for, what it writes with which record, and the errors it names. Written
against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_pipeline.py
runs the real steps end to end."""
import json

import pytest
import torch

from pdiff_fast import Config, distributed
from pdiff_fast.io import load_artifact, load_json, read_digest
from pdiff_fast.params import Standardizer
from pdiff_fast.pipeline import pdiff as pdiff_lib
from pdiff_fast.pipeline.collect import Population
from pdiff_fast.pipeline.pdiff import PIPELINES, PDiff, pipeline_for
from pdiff_fast.pipeline.run_dir import StaleArtifact
from tests.pipeline.test_parts_parts import plant_models, plant_population, tiny_config, tiny_data


def make(tmp_path, **cfg):
    return PDiff(tiny_config(**cfg), tmp_path / "run", data=tiny_data(), progress=False, log=None)


@pytest.fixture
def fits(monkeypatch):
    """check_fits recorded (what, rows, values, folder, copies, device)."""
    calls = []

    def check_fits(what, rows, values, folder, *, copies=2, device=None):
        calls.append((what, rows, values, folder, copies, device))
    monkeypatch.setattr(pdiff_lib, "check_fits", check_fits)
    return calls


# --- collect ---------------------------------------------------------------------------------

@pytest.fixture
def recipe(monkeypatch):
    """Every recipe replaced by one that records its arguments and the RNG's next draw."""
    calls = []

    def fake(model, data, spec, **kw):
        calls.append({"model": model, "data": data, "spec": spec, "draw": torch.rand(1).item(), **kw})
        return Population(torch.ones(2, spec.dim), torch.tensor([50.0, 60.0]), spec, dict(model.state_dict()),
                          {"recipe": "fake"})
    monkeypatch.setattr(pdiff_lib, "RECIPES", {name: fake for name in ("v1", "v2", "span")})
    return calls


def test_collect_asks_the_recipe_for_the_configs_collection(tmp_path, fits, recipe):
    logged = []
    run = PDiff(tiny_config(epochs=4, k=6, lr=0.2, subset_lr=0.03, batch_size=5, trajectories=2, num_samples=9),
                tmp_path / "run", data=tiny_data(), progress=False, log=logged.append)
    pop = run.collect()
    (call,) = recipe
    assert {k: v for k, v in call.items() if k not in ("model", "data", "spec", "draw")} == {
        "epochs": 4, "k": 6, "lr": 0.2, "subset_lr": 0.03, "batch_size": 5, "seed": 3, "progress": False,
        "trajectories": 2}
    assert call["data"] is run.data and call["spec"].dim == 256
    torch.manual_seed(3)
    fresh = run.new_model()
    want_draw = torch.rand(1).item()  # the RNG as the seeded model left it: building the autoencoder drew nothing
    assert call["draw"] == want_draw
    assert all(torch.equal(a, b) for a, b in zip(call["model"].state_dict().values(), fresh.state_dict().values()))
    assert fits == [("collect: k=6 checkpoints", 6, 256, run.run_dir, 2, None),
                    ("sample: 9 models", 9, 256, run.run_dir, 3, None)]
    assert logged == ["subset: 256 values; autoencoder 'auto' -> small"]
    assert pop.meta == {"recipe": "fake", "dataset": "tiny", "model": "mlp", "model_kwargs": {},
                        **run._record("population", {})}
    saved = Population.load(run.path("population"))
    assert torch.equal(saved.params, pop.params) and saved.meta["config"] == run._fields("population")
    assert load_json(run.path("config")) == run.config.to_dict()
    assert "collect" in run.timings and "collect" in load_json(run.path("timings"))


def test_collect_passes_the_span_settings_to_span_only(tmp_path, fits, recipe):
    make(tmp_path, recipe="span", val_fraction=0.3, span_noise=0.5).collect()
    assert recipe[0]["val_fraction"] == 0.3 and recipe[0]["span_noise"] == 0.5
    make(tmp_path / "b", recipe="v1").collect()
    assert "val_fraction" not in recipe[1] and "span_noise" not in recipe[1]


def test_collect_says_when_the_autoencoder_pads_the_subset(tmp_path, fits, recipe):
    logged = []
    run = PDiff(tiny_config(subset=["2.bias"], autoencoder="small"), tmp_path / "run", data=tiny_data(),
                progress=False, log=logged.append)
    run.collect()
    assert logged == ["subset: 64 values; autoencoder 'small' -> small, its input zero padded to 81 values"]


def test_collect_refuses_a_bad_recipe_and_bad_data_before_collecting(tmp_path, fits, recipe):
    run = make(tmp_path)
    run.config.recipe = "v3"
    with pytest.raises(ValueError, match=r"^unknown recipe 'v3'; choose from \['span', 'v1', 'v2'\]$"):
        run.collect()
    for split in ("train", "test"):
        for bad in (float("nan"), float("inf")):
            run = make(tmp_path)
            getattr(run.data, f"x_{split}")[1, 2] = bad
            with pytest.raises(ValueError, match=rf"^dataset 'tiny': the {split} inputs contain NaN or Inf$"):
                run.collect()
    assert recipe == [] and not (tmp_path / "run" / "population.safetensors").exists()


def test_only_rank_0_writes_the_population(tmp_path, fits, recipe, monkeypatch):
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    run = make(tmp_path)
    assert run.collect().params.shape == (2, 256) and not run.path("population").exists()


# --- sample ----------------------------------------------------------------------------------

@pytest.fixture
def planted(tmp_path):
    run = make(tmp_path, num_samples=5, sampler="ddpm", sample_grain=7, memory_budget_mb=3, cuda_graph=False)
    pop = plant_population(run)
    plant_models(run, pop)
    return run, pop


def test_sample_generates_with_the_configs_settings_and_saves_in_population_space(planted, fits, monkeypatch):
    run, pop = planted
    asked = []

    def generate(ae, denoiser, scheduler, n, **kw):
        asked.append((ae, denoiser, scheduler, n, kw))
        return torch.full((n, pop.spec.dim), 0.5)
    monkeypatch.setattr(pdiff_lib, "generate", generate)
    monkeypatch.setattr(run, "scheduler", lambda: "SCHED")
    out = run.sample()
    (ae, denoiser, scheduler, n, kw) = asked[0]
    assert scheduler == "SCHED" and n == 5 and denoiser is not None and not denoiser.training
    assert ae is not None and ae.preset == "small" and not ae.training  # the run's autoencoder
    assert kw == {"device": run.device, "seed": 3, "grain": 7, "memory_budget_bytes": 3 << 20, "cuda_graph": False,
                  "progress": False, "shard": True}
    std = Standardizer.fit(pop.spec, pop.params)
    assert torch.allclose(out, std.inverse(torch.full((5, pop.spec.dim), 0.5)))
    assert fits == [("sample: 5 models", 5, 256, run.run_dir, 3, run.device)]
    tensors, meta, digest = load_artifact(run.path("generated"))
    assert torch.equal(tensors["params"], out) and meta["n"] == 5 and meta["sampler"] == "ddpm"
    assert meta["config"]["num_samples"] == 5 and meta["inputs"] == {
        "population": read_digest(run.path("population")), "autoencoder": read_digest(run.path("autoencoder")),
        "diffusion": read_digest(run.path("diffusion"))}
    assert load_json(run.path("config"))["num_samples"] == 5 and "sample" in load_json(run.path("timings"))
    run.sample(2)
    assert asked[1][3] == 2 and load_artifact(run.path("generated"))[1]["config"]["num_samples"] == 2


def test_sample_inputs_check_the_size_only_when_the_subset_is_known(tmp_path, fits, monkeypatch):
    run = make(tmp_path, num_samples=4)
    monkeypatch.setattr(run, "load_models", lambda digests: digests.update(x="y") or "MODELS")
    assert run._sample_inputs(None) == (4, {"x": "y"}, "MODELS") and fits == []
    plant_population(run)
    assert run._sample_inputs(6)[0] == 6 and fits == [("sample: 6 models", 6, 256, run.run_dir, 3, run.device)]


def test_save_generated_without_a_standardizer_and_with_extra_tensors(tmp_path):
    run = make(tmp_path, sampler="ddim")
    flat = torch.randn(3, 4)
    out = run._save_generated(flat, None, 3, {"diffusion": "D"}, {"prompts": torch.arange(3.0)}, {"guidance": 2})
    assert out is flat
    tensors, meta, _ = load_artifact(run.path("generated"))
    assert torch.equal(tensors["params"], flat) and torch.equal(tensors["prompts"], torch.arange(3.0))
    assert meta["n"] == 3 and meta["sampler"] == "ddim" and meta["guidance"] == 2
    assert meta["inputs"] == {"diffusion": "D"} and meta["config"]["num_samples"] == 3


def test_generated_names_the_missing_tensors(planted):
    run, pop = planted
    run._save_generated(torch.zeros(2, 256), None, 2, {"population": read_digest(run.path("population"))})
    got_pop, pop_digest, gen_t, gen_meta, gen_digest = run._generated()
    assert torch.equal(got_pop.params, pop.params) and pop_digest == read_digest(run.path("population"))
    assert gen_t["params"].shape == (2, 256) and gen_meta["n"] == 2 and gen_digest == read_digest(run.path("generated"))
    with pytest.raises(ValueError, match=r"generated\.safetensors: not a generated-parameters file of this run \(no "
                                         r"'prompts', 'x' tensor\); rerun `pdiff-fast sample`$"):
        run._generated(("params", "prompts", "x"))
    plant_population(run, k=3)
    with pytest.raises(StaleArtifact, match="generated.safetensors is stale"):
        run._generated()


# --- evaluate and report ---------------------------------------------------------------------

def test_evaluate_asks_the_judge_and_writes_the_report_with_its_provenance(planted, monkeypatch):
    run, pop = planted
    run.config.noise_sigmas = [0.2, 0.4]
    run.config.seed = 3
    run._save_generated(torch.ones(2, 256), None, 2, {"population": read_digest(run.path("population"))})
    asked = []

    def evaluate(base, spec, params, generated, x_test, y_test, **kw):
        asked.append((base, spec, params, generated, x_test, y_test, kw))
        return {"per_model": [1]}
    monkeypatch.setattr(pdiff_lib, "evaluate", evaluate)
    monkeypatch.setattr(pdiff_lib, "format_table", lambda report: f"TABLE {sorted(report)}")
    run.timings["earlier"] = 1.5
    config_json = run.path("config").read_bytes()
    report = run.evaluate()
    base, spec, params, generated, x_test, y_test, kw = asked[0]
    assert not base.training and spec.dim == 256 and torch.equal(params, pop.params)
    assert torch.equal(generated, torch.ones(2, 256)) and torch.equal(x_test, run.data.x_test)
    assert torch.equal(y_test, run.data.y_test)
    assert kw == {"noise_sigmas": [0.2, 0.4], "seed": 3, "memory_budget_bytes": 3 << 20, "shard": True}
    assert report["device"] == "cpu" and report["timings"]["earlier"] == 1.5 and "evaluate" in report["timings"]
    assert report["inputs"] == {"population": read_digest(run.path("population")),
                                "generated": read_digest(run.path("generated"))}
    assert report["settings"] == {"population": pop.meta["config"],
                                  "generated": load_artifact(run.path("generated"))[1]["config"],
                                  "evaluate": {"noise_sigmas": [0.2, 0.4], "seed": 3}}
    assert load_json(run.path("report")) == report
    assert run.path("table").read_text() == "TABLE ['per_model']\n"  # the table as evaluate returned it
    assert "evaluate" in load_json(run.path("timings"))
    assert run.path("config").read_bytes() == config_json  # evaluate leaves config.json alone


def test_report_reads_the_report_and_plots_it(planted, monkeypatch):
    run, _ = planted
    plotted = []
    from pdiff_fast.pipeline import report as report_lib

    monkeypatch.setattr(report_lib, "plot_report", lambda report, run_dir: plotted.append((report, run_dir)))
    monkeypatch.setattr(pdiff_lib, "format_table", lambda report: f"TABLE {report['per_model']}")
    run.path("report").write_text(json.dumps({"per_model": [3], "inputs": {}}))
    assert run.report() == "TABLE [3]" and plotted == [({"per_model": [3], "inputs": {}}, run.run_dir)]
    assert run.format_report({"per_model": 7}) == "TABLE 7"
    for exc in (KeyError, TypeError, AttributeError, IndexError, ValueError):
        def broken(report, exc=exc):
            raise exc("bad field")
        monkeypatch.setattr(pdiff_lib, "format_table", broken)
        with pytest.raises(ValueError, match=rf"report\.json: not a report this version can read \({exc.__name__}: "
                                             r".*bad field.*\); rerun `pdiff-fast evaluate`$"):
            run.report()
    monkeypatch.setattr(pdiff_lib, "format_table", lambda report: "T")
    monkeypatch.setattr(report_lib, "plot_report", lambda report, run_dir: {}["missing"])
    with pytest.raises(ValueError, match=r"not a report this version can read \(KeyError: 'missing'\)"):
        run.report()
    monkeypatch.setattr(report_lib, "plot_report", lambda report, run_dir: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # not a report problem: not dressed as one
        run.report()


def test_report_refuses_what_is_not_a_report(planted):
    run, _ = planted
    for text in ("[1, 2]", '{"table": 1}'):
        run.path("report").write_text(text)
        with pytest.raises(ValueError, match=r"report\.json: not a pdiff_fast report \(rerun `pdiff-fast evaluate`\)$"):
            run.report()
    run.path("report").write_text("{not json")
    with pytest.raises(ValueError, match="rerun `pdiff-fast evaluate` to remake it"):
        run.report()
    run.path("report").write_text(json.dumps({"per_model": [], "inputs": {"population": "0" * 64}}))
    with pytest.raises(StaleArtifact, match=r"report\.json is stale: population\.safetensors changed since it was "
                                            r"evaluated; rerun `pdiff-fast evaluate`"):
        run.report()


def test_run_does_the_steps_in_order(tmp_path, monkeypatch):
    run, order = make(tmp_path), []
    for step in ("collect", "fit", "sample", "report"):
        monkeypatch.setattr(run, step, lambda step=step: order.append(step))
    monkeypatch.setattr(run, "evaluate", lambda: order.append("evaluate") or {"the": "report"})
    assert run.run() == {"the": "report"} and order == ["collect", "fit", "sample", "evaluate", "report"]


def test_pipeline_for(monkeypatch):
    assert pipeline_for(Config()) is PDiff
    monkeypatch.setattr(pdiff_lib, "PIPELINES", {False: PDiff})
    with pytest.raises(ValueError, match=r"^a prompted config needs pdiff_fast\.prompted\.PromptedPDiff: import "
                                         r"pdiff_fast\.prompted$"):
        pipeline_for(Config(prompted=True, recipe="span"))
    monkeypatch.setattr(pdiff_lib, "PIPELINES", {False: PDiff, True: "PROMPTED"})
    assert pipeline_for(Config(prompted=True, recipe="span")) == "PROMPTED"
    assert PIPELINES[False] is PDiff

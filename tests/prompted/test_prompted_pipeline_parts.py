"""pdiff_fast.prompted.pipeline (PromptedPDiff) one piece at a time, with its heavy collaborators faked
(the conditional trainer, the sampler, the calibration and its plots): the prompt range and its
refusal, the prompted denoiser it builds, the diffusion file it writes with its records, the prompts
it asks for, what the sampler is given, and what evaluate hands the calibration. Written against the
mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_prompted_pipeline.py trains
and judges whole prompted runs."""
import json
from types import SimpleNamespace

import pytest
import torch

from pdiff_fast.data import carve_validation
from pdiff_fast.io import load_artifact
from pdiff_fast.nn import denoiser as dn_lib
from pdiff_fast.pipeline.pdiff import PIPELINES, PDiff, pipeline_for
from pdiff_fast.prompted import calibration
from pdiff_fast.prompted import pipeline as pp
from pdiff_fast.prompted.encoder import AccuracyEncoder
from pdiff_fast.prompted.pipeline import PromptedPDiff
from pdiff_fast.prompted.prompts import check_prompts, default_prompts, normalise, spread
from pdiff_fast.tasks.conditional import ConditionedDenoiser, Guided
from tests.pipeline.test_parts_parts import tiny_config, tiny_data


def cfg(**kw):
    return tiny_config(**({"recipe": "span", "prompted": True, "denoiser": "AE_CNN_bottleneck", "ema_decay": 0.75,
                           "seed": 3, "diffusion_steps": 5, "diffusion_lr": 0.01, "diffusion_weight_decay": 0.125,
                           "diffusion_batch_size": 6, "cond_drop": 0.25, "checkpoint_every": 2,
                           "memory_budget_mb": 3, "guidance": 2.0, "sample_grain": 7} | kw))


def make(tmp_path, config=None, **kw):
    logged = []
    run = PromptedPDiff(config or cfg(), tmp_path / "run", data=tiny_data(), progress=False, log=logged.append, **kw)
    run.logged = logged
    return run


def pop_with(val, meta=None):
    return SimpleNamespace(val_accuracy=None if val is None else torch.tensor(val), meta=meta or {})


def test_the_prompted_pipeline_is_registered():
    assert PIPELINES[True] is PromptedPDiff and PIPELINES[False] is PDiff
    assert pipeline_for(cfg()) is PromptedPDiff and PromptedPDiff.PROMPTED is True
    assert issubclass(PromptedPDiff, PDiff)


# --- train ---------------------------------------------------------------------------------------

def test_prompt_range(tmp_path):
    run = make(tmp_path)
    lo, hi = run.prompt_range(pop_with([60.0, 42.5, 80.25, 70.0]))
    assert (lo, hi) == (42.5, 80.25) and type(lo) is float and type(hi) is float
    with pytest.raises(ValueError) as e:
        run.prompt_range(pop_with(None))
    assert str(e.value) == (f"{run.path('population')}: its checkpoints carry no validation accuracy; "
                            "rerun `pdiff-fast collect` with recipe \"span\"")


def test_build_prompted(tmp_path):
    run = make(tmp_path, cfg(denoiser_channels=[2, 3, 4, 5]))
    torch.manual_seed(0)
    ema = run.build_prompted(8)
    assert isinstance(ema, dn_lib.EMA) and ema.decay == 0.75
    cd = ema.model
    assert isinstance(cd, ConditionedDenoiser) and cd.mode == "blocks" and isinstance(cd.encoder, AccuracyEncoder)
    assert cd.denoiser.in_dim == 8 and cd.denoiser.channel_list == [2, 3, 4, 5]
    assert cd.encoder.out_dim == AccuracyEncoder().out_dim
    torch.manual_seed(0)
    want = run.build_denoiser(8).model
    assert all(torch.equal(a, b) for a, b in zip(cd.denoiser.state_dict().values(), want.state_dict().values()))
    assert run.build_prompted(6, [3, 4, 5, 6]).model.denoiser.channel_list == [3, 4, 5, 6]


def test_denoiser_for(tmp_path):
    run = make(tmp_path)
    asked = []
    run.build_prompted = lambda numel, channels=None: asked.append((numel, channels)) or "MODEL"
    assert run.denoiser_for({"prompt_range": [1, 2], "latent_shape": [3, 4], "channels": [2, 3, 4, 5]}) == "MODEL"
    assert run.denoiser_for({"prompt_range": [1, 2], "latent_shape": [5]}) == "MODEL"
    assert asked == [(12, [2, 3, 4, 5]), (5, None)] and type(asked[0][0]) is int
    with pytest.raises(ValueError) as e:
        run.denoiser_for({"latent_shape": [3, 4]})
    assert str(e.value) == (f"{run.path('diffusion')}: not a prompted diffusion model (no prompt_range in its "
                            "metadata); rerun `pdiff-fast train`")


class FakeAE:
    """encode: (K, D) -> (K, 1, 4) latents whose values are the row's first value."""

    def __init__(self):
        self.training = True
        self.modes = []

    def eval(self):
        self.modes.append("eval")
        self.training = False
        return self

    def encode(self, x):
        assert not torch.is_grad_enabled()
        return x[:, :1, None].expand(-1, 1, 4).clone()


def test_fit_diffusion_trains_the_prompted_model_and_saves_it(tmp_path, monkeypatch):
    run = make(tmp_path, cfg(denoiser_channels=[2, 3, 4, 5]))
    pop = pop_with([40.0, 80.0, 60.0])
    run.population = lambda: pop
    ae = FakeAE()
    x = torch.tensor([[1.0, 9.0], [2.0, 9.0], [3.0, 9.0]])
    asked = {}
    run._checkpoint_state = lambda artifact, inputs, restart: asked.setdefault("state", (artifact, inputs, restart)) \
        and "RESUME"
    run._checkpointer = lambda artifact, inputs: asked.setdefault("ckpt", (artifact, inputs)) and "CHECKPOINT"
    built = []
    real_build = run.build_prompted
    run.build_prompted = lambda numel: built.append((numel, torch.rand(1).item())) or real_build(numel)

    def fit(model, latents, rows, cond, scheduler, **kw):
        asked["fit"] = (model, latents, rows, cond(torch.tensor([2, 0]), None), scheduler, kw)
        return [0.5, 0.25]
    monkeypatch.setattr(pp, "fit_conditional", fit)
    run.path("diffusion_ckpt").write_text("left by an interrupted run")
    model = run._fit_diffusion(ae, "AE", "POP", x, True)

    torch.manual_seed(4)  # seed + 1
    assert built == [(4, torch.rand(1).item())] and ae.modes == ["eval"]
    assert asked["state"] == ("diffusion", {"autoencoder": "AE", "population": "POP"}, True)
    assert asked["ckpt"] == ("diffusion", {"autoencoder": "AE", "population": "POP"})
    m, latents, rows, cond, scheduler, kw = asked["fit"]
    assert m is model and isinstance(model.model, ConditionedDenoiser)
    assert latents[:, 0, 0].tolist() == [1.0, 2.0, 3.0] and latents.shape == (3, 1, 4)
    assert rows.tolist() == [0, 1, 2]
    assert torch.equal(cond, torch.tensor([[0.5], [0.0]]))  # rows 2 and 0: 60% and 40% of 40..80
    assert type(scheduler).__name__ == "DDPMScheduler"
    assert kw == {"steps": 5, "lr": 0.01, "weight_decay": 0.125, "batch_size": 6, "drop": 0.25, "seed": 3,
                  "progress": False, "checkpoint": "CHECKPOINT", "checkpoint_every": 2, "resume": "RESUME"}
    assert "train_diffusion" in run.timings
    tensors, meta, _ = load_artifact(run.path("diffusion"))
    assert tensors.keys() == model.state_dict().keys()
    assert all(torch.equal(tensors[k], v) for k, v in model.state_dict().items())
    assert meta["denoiser"] == "AE_CNN_bottleneck" and meta["channels"] == [2, 3, 4, 5]
    assert meta["latent_shape"] == [1, 4] and meta["losses"] == [0.5, 0.25] and meta["prompt_range"] == [40.0, 80.0]
    assert meta["inputs"] == {"autoencoder": "AE", "population": "POP"}
    assert meta["config"] == run._fields("diffusion")
    assert not run.path("diffusion_ckpt").exists()
    assert json.loads(run.path("timings").read_text()).keys() == {"train_diffusion"}
    assert json.loads(run.path("config").read_text())["diffusion_steps"] == 5


def test_fit_diffusion_without_a_checkpoint_left(tmp_path, monkeypatch):
    run = make(tmp_path, cfg(denoiser_channels=[2, 3, 4, 5]))
    run.population = lambda: pop_with([40.0, 80.0])
    monkeypatch.setattr(pp, "fit_conditional", lambda *a, **kw: [1.0])
    run._fit_diffusion(FakeAE(), "AE", "POP", torch.ones(1, 3), False)  # one row: its latent's size is read
    meta = load_artifact(run.path("diffusion"))[1]
    assert meta["losses"] == [1.0] and meta["latent_shape"] == [1, 4]


# --- sample ----------------------------------------------------------------------------------------

def test_prompts(tmp_path):
    assert make(tmp_path).prompts(40.0, 80.0) == default_prompts(40.0, 80.0)
    run = make(tmp_path, cfg(prompt_accuracy=[50, 70.5]))
    got = run.prompts(40.0, 80.0)
    assert got == [50.0, 70.5] and got == check_prompts([50, 70.5], 40.0, 80.0, False)
    with pytest.raises(ValueError, match="90"):
        make(tmp_path, cfg(prompt_accuracy=[90.0])).prompts(40.0, 80.0)
    assert make(tmp_path, cfg(prompt_accuracy=[90.0], prompt_extrapolate=True)).prompts(40.0, 80.0) == [90.0]


class FakeNet:
    def __init__(self):
        self.embedded = []

    def eval(self):
        self.evaluated = True
        return self

    def embed(self, a):
        assert not torch.is_grad_enabled()
        self.embedded.append(a)
        return a * 10


@pytest.fixture
def sampler(monkeypatch):
    calls = []

    def generate(ae, guided, scheduler, n, **kw):
        assert not torch.is_grad_enabled()
        calls.append((ae, guided, scheduler, n, kw))
        return torch.arange(n * 2, dtype=torch.float32).reshape(n, 2)
    monkeypatch.setattr(pp, "generate", generate)
    return calls


def test_generate_prompted_asks_the_sampler(tmp_path, sampler):
    run = make(tmp_path)
    run.scheduler = lambda: "SCHEDULER"
    net = FakeNet()
    model = SimpleNamespace(ema=net)
    out = run.generate_prompted("AE", model, torch.tensor([40.0, 60.0, 80.0]), 40.0, 80.0)
    assert out.shape == (3, 2) and net.evaluated
    (ae, guided, scheduler, n, kw), = sampler
    assert ae == "AE" and scheduler == "SCHEDULER" and n == 3
    assert isinstance(guided, Guided) and guided.model is net and guided.scale == 2.0
    assert torch.equal(net.embedded[0], torch.tensor([[0.0], [0.5], [1.0]]))
    assert torch.equal(kw.pop("cond"), torch.tensor([[0.0], [5.0], [10.0]]))
    assert kw == {"device": run.device, "seed": 3, "grain": 7, "memory_budget_bytes": 3 << 20, "cuda_graph": False,
                  "progress": False, "shard": True}


def test_generate_prompted_with_its_own_guidance_seed_and_cuda_graph(tmp_path, sampler):
    run = make(tmp_path, cfg(cuda_graph=True))
    run.scheduler = lambda: "SCHEDULER"
    run.generate_prompted("AE", SimpleNamespace(ema=FakeNet()), torch.tensor([50.0]), 40.0, 80.0, guidance=0.0, seed=9)
    (_, guided, _, _, kw), = sampler
    assert guided.scale == 0.0 and kw["seed"] == 9 and kw["cuda_graph"] is True
    sampler.clear()
    make(tmp_path, cfg(cuda_graph=False)).generate_prompted(
        "AE", SimpleNamespace(ema=FakeNet()), torch.tensor([50.0]), 40.0, 80.0)
    assert sampler[0][4]["cuda_graph"] is False


def test_sample_spreads_the_prompts_and_saves_them(tmp_path):
    run = make(tmp_path, cfg(prompt_accuracy=[50.0, 70.0]))
    sizes = []
    run._sample_inputs = lambda n: sizes.append(n) or (4, {"d": 1}, ("AE", "MODEL", "STD"))
    run.population = lambda: pop_with([40.0, 80.0])
    asked = []

    def generate_prompted(ae, model, per_model, lo, hi):
        asked.append((ae, model, per_model, lo, hi))
        return torch.ones(4, 2)
    run.generate_prompted = generate_prompted
    saved = []
    run._save_generated = lambda *a: saved.append(a) or "FLAT"
    assert run.sample(4) == "FLAT" and sizes == [4]
    (ae, model, per_model, lo, hi), = asked
    assert (ae, model, lo, hi) == ("AE", "MODEL", 40.0, 80.0)
    assert torch.equal(per_model, spread([50.0, 70.0], 4)) and per_model.tolist() == [50.0, 50.0, 70.0, 70.0]
    (flat, std, n, digests, tensors, meta), = saved
    assert torch.equal(flat, torch.ones(4, 2)) and std == "STD" and n == 4 and digests == {"d": 1}
    assert tensors.keys() == {"prompt"} and torch.equal(tensors["prompt"], per_model)
    assert meta == {"prompt_range": [40.0, 80.0]} and "sample" in run.timings


def test_sample_passes_n_on(tmp_path):
    run = make(tmp_path)
    asked = []
    run._sample_inputs = lambda n: asked.append(n) or (12, {}, ("AE", "MODEL", None))
    run.population = lambda: pop_with([40.0, 80.0])
    run.generate_prompted = lambda ae, model, per_model, lo, hi: torch.zeros(len(per_model), 2)
    run._save_generated = lambda flat, std, n, *a: (flat, n)
    flat, n = run.sample(None)
    assert asked == [None] and n == 12 and flat.shape == (12, 2)


# --- evaluate ----------------------------------------------------------------------------------------

def test_evaluate_hands_the_calibration_the_split_collect_labelled_with(tmp_path, monkeypatch):
    run = make(tmp_path, cfg(val_fraction=0.25, noise_sigmas=[0.5, 1.5]))
    pop = pop_with([40.0, 80.0], meta={"val_fraction": 0.5, "seed": 7})
    gen = {"params": torch.ones(2, 3), "prompt": torch.tensor([50.0, 60.0])}
    required = []
    run._generated = lambda req: required.append(req) or (pop, "POP", gen, {"m": 1}, "GEN")
    run.base_model = lambda: "BASE"
    asked = []

    def calibrate(base, p, generated, prompt, x_val, y_val, x_test, y_test, **kw):
        asked.append((base, p, generated, prompt, x_val, y_val, x_test, y_test, kw))
        return {"R": 1}
    monkeypatch.setattr(pp, "calibrate", calibrate)
    monkeypatch.setattr(pp, "format_calibration", lambda report: f"CAL {report['R']}")
    monkeypatch.setattr(pp, "format_table", lambda report: f"TABLE {report['R']}")
    written = []
    run._write_report = lambda *a: written.append(a) or "REPORT"
    assert run.evaluate() == "REPORT"
    assert required == [("params", "prompt")]
    (base, p, generated, prompt, x_val, y_val, x_test, y_test, kw), = asked
    _, want_x, want_y = carve_validation(run.data, 0.5, 7)
    assert base == "BASE" and p is pop and generated is not None and torch.equal(generated, gen["params"])
    assert torch.equal(prompt, gen["prompt"]) and torch.equal(x_val, want_x) and torch.equal(y_val, want_y)
    assert torch.equal(x_test, run.data.x_test) and torch.equal(y_test, run.data.y_test)
    assert kw == {"noise_sigmas": [0.5, 1.5], "seed": 3, "memory_budget_bytes": 3 << 20}
    assert written == [({"R": 1}, "CAL 1\n\nTABLE 1", pop, "POP", {"m": 1}, "GEN")]
    assert "evaluate" in run.timings


def test_evaluate_falls_back_to_the_config_split(tmp_path, monkeypatch):
    run = make(tmp_path, cfg(val_fraction=0.25))
    pop = pop_with([40.0, 80.0])
    run._generated = lambda req: (pop, "POP", {"params": torch.ones(2, 3), "prompt": torch.ones(2)}, {}, "GEN")
    run.base_model = lambda: "BASE"
    asked = []
    monkeypatch.setattr(pp, "calibrate", lambda *a, **kw: asked.append(a) or {})
    monkeypatch.setattr(pp, "format_calibration", lambda report: "")
    monkeypatch.setattr(pp, "format_table", lambda report: "")
    run._write_report = lambda *a: None
    run.evaluate()
    _, want_x, want_y = carve_validation(run.data, 0.25, 3)
    assert torch.equal(asked[0][4], want_x) and torch.equal(asked[0][5], want_y)


def test_format_report_puts_the_calibration_first_and_plots_it(tmp_path, monkeypatch):
    run = make(tmp_path)
    plotted = []
    monkeypatch.setattr(calibration, "plot_calibration", lambda report, folder: plotted.append((report, folder)))
    monkeypatch.setattr(pp, "format_calibration", lambda report: f"CAL {report['x']}")
    monkeypatch.setattr(pp, "format_table", lambda report: f"TABLE {report['x']}")
    assert run.format_report({"x": 1}) == "CAL 1\n\nTABLE 1"
    assert plotted == [({"x": 1}, run.run_dir)]

"""pdiff_fast.tasks.generator's GeneratorStep one part at a time, with the step's collaborators faked
(nothing of TaskParts' __init__ runs; the two training loops and the sampler are replaced by recorders,
so no model is trained or sampled): the generator's modules built from the config, the support sets
drawn for the zoo's rows, the train step's arguments, files, checkpoint, resume and logs, the
checkpoint's checks, the generator loaded back, the embeddings and generate's call. Written against
the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_task_pipeline.py runs
the real step end to end."""
import re

import pytest
import torch
from torch import nn

from pdiff_fast import io
from pdiff_fast.diffusion.schedulers import DDIMScheduler, DDPMScheduler
from pdiff_fast.nn.denoiser import EMA, AE_CNN_bottleneck
from pdiff_fast.nn.lowrank_autoencoder import LowRankAutoencoder
from pdiff_fast.nn.set_encoder import SetEncoder
from pdiff_fast.params import ParamSpec, Standardizer
from pdiff_fast.tasks import generator as gen
from pdiff_fast.tasks.conditional import ConditionedDenoiser
from pdiff_fast.tasks.config import TaskConfig
from pdiff_fast.tasks.generator import CHECKPOINT, GeneratorStep
from pdiff_fast.tasks.zoo import Zoo

pytestmark = pytest.mark.usefixtures("one_thread")


def exact(msg):
    return "^" + re.escape(msg) + "$"


class FakeFamily:
    input_shape = (2, 1)  # 2 values
    num_classes = 3  # features of a support sample: 2 + 3


def make_zoo():
    torch.manual_seed(0)
    spec = ParamSpec.from_model(nn.Linear(4, 3), "all")  # D = 15
    g = torch.Generator().manual_seed(1)
    params = torch.randn(6, spec.dim, generator=g) * torch.linspace(0.5, 3, spec.dim) + 2
    return Zoo(params=params, task=torch.tensor([0, 1, 0, 1, 1, 0]), run=torch.tensor([0, 0, 1, 1, 2, 2]),
               accuracy=torch.full((6,), 50.0), init=torch.zeros(spec.dim), spec=spec, tasks=["t0", "t1"])


class Step(GeneratorStep):
    """GeneratorStep with its collaborators faked (nothing of TaskParts' __init__ runs)."""

    def __init__(self, tmp_path, **config):
        self.config = TaskConfig(**{"rank": 8, "denoiser_channels": [2, 3, 4, 5], "encoder_width": 4, "embed_dim": 3,
                                    "support": 5, "input_noise": 0.125, "latent_noise": 0.375, "ema_decay": 0.5,
                                    "conditioning": "time", "diffusion_steps": 7, "diffusion_lr": 0.25,
                                    "diffusion_batch_size": 3, "cond_drop": 0.375, "ae_steps": 9, "ae_lr": 0.0625,
                                    "checkpoint_every": 4, "seed": 13, "samples_per_task": 2, "guidance": 2.5,
                                    "sampler": "ddim", "sample_steps": 6, "eta": 0.5, "memory_budget_mb": 3,
                                    **config})
        self.family = FakeFamily()
        self.seen, self.held_out = ["t0", "t1"], ["t2"]
        self.device = torch.device("cpu")
        self.run_dir = tmp_path
        self.progress = False
        self.allow_stale = False
        self.timings = {}
        self.logs = []
        self.log = self.logs.append
        self.zoo_ = make_zoo()
        self.stacked_calls = []

    def load_zoo(self):
        return self.zoo_, "zoo-digest"

    def stacked(self, tasks, split="train"):
        self.stacked_calls.append((list(tasks), split))
        return "sx", "sy", "counts"

    def support_sets(self, tasks):
        return torch.stack([torch.full((4, 5), float(self.seen.index(t) if t in self.seen else 7)) for t in tasks])


# --- the modules -----------------------------------------------------------------------------------

def test_build_generator_from_the_config(tmp_path):
    step = Step(tmp_path)
    zoo = step.zoo_
    torch.manual_seed(3)
    ae, model = step._build_generator(zoo)
    assert isinstance(ae, LowRankAutoencoder) and (ae.in_dim, ae.rank) == (15, 8)
    assert (ae.input_noise_factor, ae.latent_noise_factor) == (0.125, 0.375)
    assert isinstance(model, EMA) and model.decay == 0.5
    net = model.model
    assert isinstance(net, ConditionedDenoiser) and net.mode == "time"
    assert isinstance(net.denoiser, AE_CNN_bottleneck) and net.denoiser.in_dim == 8
    assert list(net.denoiser.channel_list) == [2, 3, 4, 5]
    assert isinstance(net.encoder, SetEncoder) and (net.encoder.in_features, net.encoder.out_dim) == (5, 3)
    assert net.encoder.query.shape == (1, 1, 4)  # width 4
    out = model(torch.zeros(2, 1, 8), torch.tensor([1, 2]), torch.zeros(2, 3))  # one latent channel in and out
    assert out.shape == (2, 1, 8)
    assert ae.encode(zoo.params).shape[1:] == (1, 8)
    blocks = Step(tmp_path, conditioning="blocks")._build_generator(zoo)[1].model
    assert blocks.mode == "blocks"
    enc = step._condition_encoder(11)
    assert (enc.in_features, enc.out_dim, enc.query.shape[2]) == (11, 3, 4)


def test_conditions_are_the_zoos_tasks_and_their_support_sets(tmp_path, monkeypatch):
    step = Step(tmp_path)
    calls = []
    monkeypatch.setattr(gen, "support", lambda *a: calls.append(a) or "sets")
    keys, draw = step._conditions(step.zoo_)
    assert torch.equal(keys, step.zoo_.task) and step.stacked_calls == [(["t0", "t1"], "train")]
    g = torch.Generator()
    assert draw("rows", g) == "sets"
    assert calls == [("sx", "sy", "counts", "rows", 5, g, 3)]


# --- train -----------------------------------------------------------------------------------------

class Fits:
    """fit_autoencoder and fit_conditional faked: they record their arguments; the conditional one
    saves one checkpoint through the callback and reads it back."""

    def __init__(self, monkeypatch, step):
        self.ae_calls, self.cond_calls, self.checkpoints = [], [], []
        self.step = step
        monkeypatch.setattr(gen, "fit_autoencoder", self.fit_autoencoder)
        monkeypatch.setattr(gen, "fit_conditional", self.fit_conditional)

    def fit_autoencoder(self, ae, x, steps, lr, **kw):
        self.ae_calls.append(dict(ae=ae, x=x.clone(), steps=steps, lr=lr, **kw))
        with torch.no_grad():
            ae.encoder.weight.mul_(2)
        return [1.0]

    def fit_conditional(self, model, latents, keys, draw, scheduler, steps, lr, **kw):
        self.cond_calls.append(dict(model=model, latents=latents, keys=keys, draw=draw, scheduler=scheduler,
                                    steps=steps, lr=lr, timings=dict(self.step.timings), **kw))
        kw["checkpoint"]({"model.w": torch.ones(2)}, {"step": 5})
        self.checkpoints.append(io.load_artifact(self.step.run_dir / CHECKPOINT))
        with torch.no_grad():
            model.model.null.fill_(0.5)
        return [0.75, 0.25]


@pytest.mark.parametrize("standardize", [True, False])
def test_train_from_the_start(tmp_path, monkeypatch, standardize):
    step = Step(tmp_path, standardize=standardize)
    zoo = step.zoo_
    fits = Fits(monkeypatch, step)
    step.train()
    std = Standardizer.fit(zoo.spec, zoo.params) if standardize else None
    x = std.transform(zoo.params) if standardize else zoo.params
    (a,) = fits.ae_calls
    torch.testing.assert_close(a["x"], x)
    assert (a["steps"], a["lr"], a["seed"], a["progress"]) == (9, 0.0625, 13, False)
    assert "train_autoencoder" in step.timings
    # the modules are built right after torch.manual_seed(seed)
    torch.manual_seed(13)
    ref_ae, ref_model = step._build_generator(zoo)
    assert torch.equal(a["ae"].encoder.weight, 2 * ref_ae.encoder.weight)
    (c,) = fits.cond_calls
    ae = a["ae"]
    assert torch.equal(c["latents"], ae.encode(x)) and not c["latents"].requires_grad
    assert torch.equal(c["keys"], zoo.task)
    monkeypatch.setattr(gen, "support", lambda sx, sy, counts, rows, n, g, classes: ("support", rows, n, g, classes))
    g = torch.Generator()
    assert c["draw"]("rows", g) == ("support", "rows", 5, g, 3)  # the zoo's tasks' support sets
    assert type(c["scheduler"]) is DDPMScheduler
    assert (c["steps"], c["lr"], c["batch_size"], c["drop"], c["seed"], c["progress"], c["checkpoint_every"]) == (
        7, 0.25, 3, 0.375, 13, False, 4)
    assert c["resume"] is None and "train_autoencoder" in c["timings"]
    for k, v in ref_model.state_dict().items():
        if k != "model.null":  # the faked loop set it
            assert torch.equal(c["model"].state_dict()[k], v), k
    # the checkpoint: the loop's tensors, the autoencoder's, and what they were made from
    (ck_tensors, ck_meta, _), = fits.checkpoints
    assert torch.equal(ck_tensors["model.w"], torch.ones(2))
    assert {k for k in ck_tensors if k.startswith("ae.")} == {f"ae.{k}" for k in ae.state_dict()}
    assert torch.equal(ck_tensors["ae.encoder.weight"], ae.encoder.weight)
    assert ck_meta["step"] == 5 and ck_meta["config"] == step._fields("generator")
    assert ck_meta["inputs"] == {"zoo": "zoo-digest"} and ck_meta["device"] == "cpu"
    assert not (tmp_path / CHECKPOINT).exists()  # removed once the generator is saved
    # the generator file
    tensors, meta, digest = io.load_artifact(tmp_path / "generator.safetensors")
    assert meta["diffusion_losses"] == [0.75, 0.25] and meta["inputs"] == {"zoo": "zoo-digest"}
    assert meta["config"] == step._fields("generator")
    want = {f"ae.{k}" for k in ae.state_dict()} | {f"denoiser.{k}" for k in c["model"].state_dict()}
    if standardize:
        want |= {f"std.{k}" for k in std.state_dict()}
    assert set(tensors) == want
    assert torch.equal(tensors["ae.encoder.weight"], ae.encoder.weight)
    assert torch.equal(tensors["denoiser.model.null"], torch.full((3,), 0.5))
    if standardize:
        for k, v in std.state_dict().items():
            assert torch.equal(tensors[f"std.{k}"], v), k
    assert "train_diffusion" in step.timings and "train_autoencoder" in step.timings
    assert step.logs == ["trained the conditioned generator -> " + str(tmp_path / "generator.safetensors")]


def test_train_without_a_checkpoint_written(tmp_path, monkeypatch):
    """checkpoint_every 0 (or a run shorter than it): no checkpoint to remove at the end."""
    step = Step(tmp_path, checkpoint_every=0)
    fits = Fits(monkeypatch, step)
    monkeypatch.setattr(gen, "fit_conditional", lambda *a, **kw: fits.cond_calls.append(kw) or [0.5])
    step.train()
    assert fits.cond_calls[0]["checkpoint_every"] == 0
    assert io.load_artifact(tmp_path / "generator.safetensors")[1]["diffusion_losses"] == [0.5]
    assert not (tmp_path / CHECKPOINT).exists()


def plant_checkpoint(step, ae_scale=3.0, **meta):
    torch.manual_seed(99)
    ae, model = step._build_generator(step.zoo_)
    with torch.no_grad():
        ae.encoder.weight.fill_(ae_scale)
    tensors = {**{f"ae.{k}": v for k, v in ae.state_dict().items()}, "model.x": torch.arange(3.0)}
    io.save_tensors(step.run_dir / CHECKPOINT, tensors,
                    {"step": 4, "config": step._fields("generator"), "inputs": {"zoo": "zoo-digest"}, "device": "cpu",
                     **meta})
    return ae


def test_train_resumes_from_a_checkpoint(tmp_path, monkeypatch):
    step = Step(tmp_path)
    planted = plant_checkpoint(step)
    fits = Fits(monkeypatch, step)
    step.train()
    assert fits.ae_calls == [] and "train_autoencoder" not in step.timings
    (c,) = fits.cond_calls
    tensors, meta = c["resume"]
    assert list(tensors) == ["model.x"] and torch.equal(tensors["model.x"], torch.arange(3.0))
    assert meta["step"] == 4
    # the autoencoder is the checkpoint's: its latents
    std = Standardizer.fit(step.zoo_.spec, step.zoo_.params)
    torch.testing.assert_close(c["latents"], planted.encode(std.transform(step.zoo_.params)))
    assert step.logs[0] == "resuming the conditioned generator's training at step 4"
    gen_tensors = io.load_artifact(tmp_path / "generator.safetensors")[0]
    assert torch.equal(gen_tensors["ae.encoder.weight"], torch.full((8, 15), 3.0))


def test_restart_ignores_the_checkpoint(tmp_path, monkeypatch):
    step = Step(tmp_path)
    plant_checkpoint(step)
    fits = Fits(monkeypatch, step)
    step.train(restart=True)
    assert len(fits.ae_calls) == 1 and fits.cond_calls[0]["resume"] is None
    assert not any("resuming" in line for line in step.logs)


def test_checkpoint_checks(tmp_path):
    step = Step(tmp_path)
    assert step._checkpoint("zoo-digest") is None and step.logs == []
    (tmp_path / CHECKPOINT).mkdir()
    assert step._checkpoint("zoo-digest") is None and step.logs == []  # not a file
    (tmp_path / CHECKPOINT).rmdir()
    (tmp_path / CHECKPOINT).write_bytes(b"not a tensor file")
    assert step._checkpoint("zoo-digest") is None
    assert len(step.logs) == 1 and step.logs[0].startswith("ignoring an unreadable checkpoint")
    plant_checkpoint(step)
    tensors, meta = step._checkpoint("zoo-digest")
    assert meta["step"] == 4 and torch.equal(tensors["model.x"], torch.arange(3.0))
    stale = f"{CHECKPOINT} was made from another zoo or with other settings; training from the start"
    cases = [dict(config={**step._fields("generator"), "rank": 4}), dict(inputs={"zoo": "other"}),
             dict(inputs={}), dict(device="cuda")]
    for meta in cases:
        step.logs.clear()
        plant_checkpoint(step, **meta)
        assert step._checkpoint("zoo-digest") is None and step.logs == [stale]
    step.logs.clear()
    plant_checkpoint(step)
    assert step._checkpoint("another-digest") is None and step.logs == [stale]
    assert step._checkpoint(None) is None
    assert CHECKPOINT == "generator.ckpt.safetensors"


# --- the generator loaded back -------------------------------------------------------------------------

@pytest.mark.parametrize("standardize", [True, False])
def test_load_generator(tmp_path, monkeypatch, standardize):
    step = Step(tmp_path, standardize=standardize)
    fits = Fits(monkeypatch, step)
    step.train()
    trained_ae, trained = fits.ae_calls[0]["ae"], fits.cond_calls[0]["model"]
    zoo, ae, ema, std, digest = step.load_generator()
    assert zoo is step.zoo_ and digest == io.read_digest(tmp_path / "generator.safetensors")
    for k, v in trained_ae.state_dict().items():
        assert torch.equal(ae.state_dict()[k], v), k
    assert ema is not trained.ema and isinstance(ema, ConditionedDenoiser)
    for k, v in trained.ema.state_dict().items():
        assert torch.equal(ema.state_dict()[k], v), k
    assert not ae.training and not ema.training
    if standardize:
        ref = Standardizer.fit(zoo.spec, zoo.params)
        assert std.spec is zoo.spec
        for k, v in ref.state_dict().items():
            assert torch.equal(std.state_dict()[k], v), k
    else:
        assert std is None


def test_load_generator_checks_the_zoo(tmp_path, monkeypatch):
    step = Step(tmp_path)
    Fits(monkeypatch, step)
    step.train()
    step.load_zoo = lambda: (step.zoo_, "other-digest")
    with pytest.raises(Exception, match="stale"):
        step.load_generator()


# --- embeddings and generation ---------------------------------------------------------------------

def test_embed_is_the_models_embedding_of_the_support_sets(tmp_path):
    step = Step(tmp_path)
    net = step._build_generator(step.zoo_)[1].model
    emb = step.embed(net, ["t1", "t0"])
    assert not emb.requires_grad
    torch.testing.assert_close(emb, net.embed(step.support_sets(["t1", "t0"])))


class FakeStd:
    def inverse(self, flat):
        return flat * 10


@pytest.mark.parametrize("standardize", [True, False])
def test_generate(tmp_path, monkeypatch, standardize):
    step = Step(tmp_path)
    net = step._build_generator(step.zoo_)[1].model
    calls = []

    def generate_conditioned(ae, model, scheduler, emb, scale, **kw):
        calls.append(dict(ae=ae, model=model, scheduler=scheduler, emb=emb, scale=scale, **kw))
        return torch.arange(float(emb.shape[0]))[:, None]

    monkeypatch.setattr(gen, "generate_conditioned", generate_conditioned)
    std = FakeStd() if standardize else None
    loaded = ("zoo", "ae", net, std, "digest")
    out = step.generate(["t1", "t2"], loaded=loaded)
    base = torch.arange(4.0)[:, None]
    torch.testing.assert_close(out, base * 10 if standardize else base)
    (c,) = calls
    assert c["ae"] == "ae" and c["model"] is net and c["scale"] == 2.5
    emb = step.embed(net, ["t1", "t2"])
    torch.testing.assert_close(c["emb"], emb.repeat_interleave(2, 0))
    s = c["scheduler"]
    assert type(s) is DDIMScheduler and s.num_inference_steps == 6 and s.eta == 0.5
    assert c["seed"] == 13 and c["device"] == torch.device("cpu") and c["memory_budget_bytes"] == 3 << 20
    assert c["progress"] is False
    # n, guidance and the scheduler given
    mine = object()
    step.generate(["t0"], n=3, guidance=0.0, loaded=loaded, scheduler=mine)
    assert calls[1]["emb"].shape == (3, 3) and calls[1]["scale"] == 0.0 and calls[1]["scheduler"] is mine
    step.generate(["t0"], guidance=1.5, loaded=loaded)
    assert calls[2]["scale"] == 1.5 and calls[2]["emb"].shape == (2, 3)


def test_generate_loads_the_generator_when_not_given(tmp_path, monkeypatch):
    step = Step(tmp_path)
    net = step._build_generator(step.zoo_)[1].model
    monkeypatch.setattr(step, "load_generator", lambda: ("zoo", "the-ae", net, None, "digest"), raising=False)
    monkeypatch.setattr(gen, "generate_conditioned", lambda ae, model, *a, **kw: (ae, model))
    assert step.generate(["t0"]) == ("the-ae", net)

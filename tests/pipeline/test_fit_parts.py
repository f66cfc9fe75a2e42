"""pdiff_fast.pipeline.fit's parts: the `train` step with the run around it faked (the population,
the run directory's saving and checkpoints, the training loops), so that what each part is asked
is checked: which models are trained or kept, with which seeds, settings, inputs and resumed state,
what is saved with which record, and the order of the writes. Written against the mutants mutmut
left alive (tests/mutation, docs/mutation-scores.md); test_pipeline.py and test_train.py run the
real step end to end."""
import types

import pytest
import torch
from torch import nn

from pdiff_fast import distributed
from pdiff_fast.pipeline import fit as fit_lib
from pdiff_fast.pipeline.fit import FitStep


class TinyAE(nn.Module):
    preset, padded_dim = "lowrank", 9

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.randn(2))

    def encode(self, x):
        return x[:, None, :3] * 0.5  # (K, 1, 3)


class TinyDenoiser(nn.Module):
    def __init__(self, n):
        super().__init__()
        self.n, self.v = n, nn.Parameter(torch.randn(1))


class FakeStd:
    def transform(self, params):
        return params + 100

    def state_dict(self):
        return {"standardizer.mean": torch.zeros(1)}


class Run(FitStep):
    """FitStep with every collaborator recorded."""

    def __init__(self, tmp_path, std=True, current=False):
        self.events = []
        self.config = types.SimpleNamespace(seed=5, ae_steps=11, ae_lr=0.1, ae_weight_decay=0.2, diffusion_steps=12,
                                            diffusion_lr=0.3, diffusion_weight_decay=0.4, diffusion_batch_size=13,
                                            checkpoint_every=14, denoiser="cnn")
        self.device, self.progress, self.timings = torch.device("cpu"), "PROGRESS", {}
        self.pop = types.SimpleNamespace(spec=types.SimpleNamespace(dim=6), params=torch.arange(24.0).reshape(4, 6))
        self.std, self.current, self.dir = (FakeStd() if std else None), current, tmp_path
        self.loaded = TinyAE()

    def log(self, line):
        self.events.append(("log", line))

    def _population(self):
        return self.pop, "POP"

    def standardizer(self, pop):
        assert pop is self.pop
        return self.std

    def _autoencoder_is_current(self, digest):
        self.events.append(("current?", digest))
        return self.current

    def _load_autoencoder(self, pop, digest):
        assert pop is self.pop
        self.events.append(("load ae", digest))
        return self.loaded, None, "AE-ON-DISK"

    def build_autoencoder(self, dim):
        self.ae_draw = torch.rand(1).item()  # after the seed
        self.events.append(("build ae", dim))
        self.built = TinyAE()
        return self.built

    def build_denoiser(self, n):
        self.dn_draw = torch.rand(1).item()
        self.events.append(("build denoiser", n))
        self.denoiser = TinyDenoiser(n)
        return self.denoiser

    def denoiser_channels(self):
        return [1, 2]

    def _checkpoint_state(self, artifact, inputs, restart):
        self.events.append(("resume?", artifact, inputs, restart))
        return f"STATE-{artifact}"

    def _checkpointer(self, artifact, inputs):
        return ("CKPT", artifact, tuple(inputs.items()))

    def _timed(self, name, fn):
        self.events.append(("timed", name))
        return fn()

    def _save(self, artifact, tensors, meta, inputs):
        self.events.append(("save", artifact, sorted(tensors), meta, inputs))
        self.events.append(("checkpoint kept while saving", artifact, self.path(f"{artifact}_ckpt").exists()))
        return f"DIGEST-{artifact}"

    def path(self, what):
        return self.dir / f"{what}.st"

    def _bookkeeping(self, artifact):
        self.events.append(("bookkeeping", artifact, self.path(f"{artifact}_ckpt").exists()))


@pytest.fixture
def trainers(monkeypatch):
    calls = []

    def fit_autoencoder(ae, x, *args, **kwargs):
        calls.append(("ae", ae, x.clone(), args, kwargs))
        return [1.0, 0.5]

    def fit_diffusion(model, latents, scheduler, *args, **kwargs):
        calls.append(("diffusion", model, latents.clone(), scheduler, args, kwargs))
        return [2.0]

    monkeypatch.setattr(fit_lib, "fit_autoencoder", fit_autoencoder)
    monkeypatch.setattr(fit_lib, "fit_diffusion", fit_diffusion)
    barriers = []
    monkeypatch.setattr(distributed, "barrier", lambda: barriers.append(1))
    return calls, barriers


def test_only_names_a_model(tmp_path, trainers):
    with pytest.raises(ValueError, match=r"^fit: only must be 'autoencoder' or 'diffusion', not 'both'$"):
        Run(tmp_path).fit("both")
    assert trainers[0] == []


def test_a_whole_fit_trains_both_with_their_settings(tmp_path, trainers):
    calls, barriers = trainers
    run = Run(tmp_path)
    for name in ("autoencoder", "diffusion"):
        run.path(f"{name}_ckpt").write_text("old checkpoint")
    ae, model = run.fit(restart=True)
    assert ae is run.built and model is run.denoiser
    (_, ae_arg, x, args, kwargs), (_, dn_arg, latents, scheduler, dargs, dkwargs) = calls
    assert ae_arg is run.built and torch.equal(x, run.pop.params + 100)  # standardised
    assert args == (11, 0.1, 0.2)
    assert kwargs == {"seed": 5, "progress": "PROGRESS", "checkpoint": ("CKPT", "autoencoder", (("population", "POP"),)),
                      "checkpoint_every": 14, "resume": "STATE-autoencoder", "shard": True}
    assert dn_arg is run.denoiser and torch.equal(latents, ((run.pop.params + 100)[:, None, :3]) * 0.5)
    assert type(scheduler).__name__ == "DDPMScheduler" and scheduler.num_train_timesteps == 1000
    assert dargs == (12, 0.3, 0.4, 13)
    inputs = (("autoencoder", "DIGEST-autoencoder"), ("population", "POP"))
    assert dkwargs == {"seed": 5, "progress": "PROGRESS", "checkpoint": ("CKPT", "diffusion", inputs),
                       "checkpoint_every": 14, "resume": "STATE-diffusion", "shard": True}
    # the seeds: the autoencoder from the run's seed, the denoiser from seed + 1
    torch.manual_seed(5)
    assert run.ae_draw == torch.rand(1).item()
    torch.manual_seed(6)
    assert run.dn_draw == torch.rand(1).item()
    assert ("build ae", 6) in run.events and ("build denoiser", 3) in run.events
    saves = [e for e in run.events if e[0] == "save"]
    assert saves == [
        ("save", "autoencoder", ["standardizer.mean", "w"], {"preset": "lowrank", "in_dim": 6, "padded_dim": 9,
                                                             "losses": [1.0, 0.5]}, {"population": "POP"}),
        ("save", "diffusion", ["v"], {"denoiser": "cnn", "channels": [1, 2], "latent_shape": [1, 3], "losses": [2.0]},
         {"autoencoder": "DIGEST-autoencoder", "population": "POP"})]
    # the checkpoint removed after the artifact is saved, then the bookkeeping
    assert ("checkpoint kept while saving", "autoencoder", True) in run.events
    assert ("checkpoint kept while saving", "diffusion", True) in run.events
    assert ("bookkeeping", "autoencoder", False) in run.events and ("bookkeeping", "diffusion", False) in run.events
    assert [e for e in run.events if e[0] in ("resume?", "timed")] == [
        ("resume?", "autoencoder", {"population": "POP"}, True), ("timed", "train_autoencoder"),
        ("resume?", "diffusion", {"autoencoder": "DIGEST-autoencoder", "population": "POP"}, True),
        ("timed", "train_diffusion")]
    assert ("current?", "POP") not in run.events  # restart: not asked
    assert len(barriers) == 3  # after each write (on_main), then before any rank reads the files


def test_without_a_standardiser_the_parameters_are_trained_on_as_they_are(tmp_path, trainers):
    calls, _ = trainers
    run = Run(tmp_path, std=None)
    run.fit(only="autoencoder")
    assert torch.equal(calls[0][2], run.pop.params)
    assert [e[2] for e in run.events if e[0] == "save"] == [["w"]]


def test_only_the_autoencoder(tmp_path, trainers):
    calls, barriers = trainers
    run = Run(tmp_path, current=True)
    ae, model = run.fit("autoencoder")
    assert model is None and ae is run.built and [c[0] for c in calls] == ["ae"] and len(barriers) == 2
    assert ("current?", "POP") not in run.events and not any(e[0] == "log" for e in run.events)


def test_only_the_diffusion_keeps_the_autoencoder(tmp_path, trainers):
    calls, barriers = trainers
    run = Run(tmp_path, current=False)
    ae, model = run.fit("diffusion", restart=True)
    assert ae is run.loaded and model is run.denoiser and [c[0] for c in calls] == ["diffusion"]
    assert ("load ae", "POP") in run.events and not any(e[0] == "log" for e in run.events)
    assert dict(calls[0][5]["checkpoint"][2])["autoencoder"] == "AE-ON-DISK"
    assert [e for e in run.events if e[0] == "resume?"] == [
        ("resume?", "diffusion", {"autoencoder": "AE-ON-DISK", "population": "POP"}, True)]


def test_an_interrupted_train_keeps_a_current_autoencoder(tmp_path, trainers):
    calls, _ = trainers
    run = Run(tmp_path, current=True)
    ae, model = run.fit()
    assert ae is run.loaded and [c[0] for c in calls] == ["diffusion"]
    assert ("log", "keeping the trained autoencoder (an interrupted `train` is resumed)") in run.events
    assert [e for e in run.events if e[0] == "resume?"][0][3] is False
    stale = Run(tmp_path, current=False)
    stale.fit()
    assert ("current?", "POP") in stale.events and [c[0] for c in calls][1:] == ["ae", "diffusion"]


def test_one_checkpoint_is_enough(tmp_path, trainers):
    calls, _ = trainers
    run = Run(tmp_path)
    run.pop.params = run.pop.params[:1]
    ae, model = run.fit()
    assert ("build denoiser", 3) in run.events and calls[1][2].shape == (1, 1, 3)

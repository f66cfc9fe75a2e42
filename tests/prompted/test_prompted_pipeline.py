"""A prompted run end to end on a model that records every input it sees: the validation split
never overlaps the test set or the training reads, the labels are the validation accuracies, a
model's prompt changes only that model, guidance 0 is the unprompted path, prompting is
reproducible, and bad prompts get one clear line."""
import json

import pytest
import torch
from torch import nn

from pdiff_fast import Config, PDiff
from pdiff_fast.cli import main
from pdiff_fast.data import digits
from pdiff_fast.io import load_json, load_tensors, read_digest
from pdiff_fast.pipeline.collect import accuracy
from pdiff_fast.pipeline.run_dir import StaleArtifact
from pdiff_fast.prompted import PromptedPDiff
from pdiff_fast.prompted.calibration import HONOURED_WITHIN
from pdiff_fast.data import carve_validation

TINY = {"dataset": "digits", "model": "mlp", "recipe": "span", "prompted": True, "epochs": 3, "k": 16, "trajectories": 2,
        "ae_steps": 30, "diffusion_steps": 40, "denoiser_channels": [8, 8, 16, 16], "sampler": "ddim",
        "sample_steps": 5, "num_samples": 16, "noise_sigmas": [0.05], "subset_lr": 0.1}
TEST_ID = 100_000
READS: list = []  # (training, ids) of every forward of a Recorder, wherever its copies are


class Recorder(nn.Module):
    """Column 0 of every input is the sample's id: recorded, then dropped."""

    def forward(self, x):
        READS.append((self.training, x[:, 0].detach().long().tolist()))
        return x[:, 1:]


def recording_model():
    torch.manual_seed(0)
    return nn.Sequential(Recorder(), nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10),
                         nn.BatchNorm1d(10))


def id_data():
    d = digits()
    ids = lambda n, start: torch.arange(start, start + n, dtype=torch.float32)[:, None]  # noqa: E731
    d.x_train = torch.cat([ids(len(d.y_train), 0), d.x_train.flatten(1)], 1)
    d.x_test = torch.cat([ids(len(d.y_test), TEST_ID), d.x_test.flatten(1)], 1)
    return d


def reads(training=None) -> set:
    return {i for t, ids in READS if training is None or t == training for i in ids}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("prompted")
    data = id_data()
    p = PromptedPDiff(Config.from_dict(TINY), d, model=recording_model(), data=data, progress=False, log=None)
    seen = {}
    for step in ("collect", "fit", "sample", "evaluate"):
        READS.clear()
        getattr(p, step)()
        seen[step] = {"train": reads(True), "eval": reads(False)}
        if step == "collect":  # two prompts a third and two thirds up the population's range
            lo, hi = p.prompt_range(p.population())
            p.config = p.config.replace(prompt_accuracy=[round(lo + (hi - lo) / 3, 2), round(lo + 2 * (hi - lo) / 3, 2)])
    return p, data, seen


def test_validation_never_overlaps_the_test_set_or_training(run):
    p, data, seen = run
    rest, x_val, _ = carve_validation(data, p.config.val_fraction, p.config.seed)
    val = set(x_val[:, 0].long().tolist())
    train = set(rest.x_train[:, 0].long().tolist())
    test = set(range(TEST_ID, TEST_ID + len(data.y_test)))
    assert len(val) == round(len(data.y_train) * p.config.val_fraction) and not val & train
    c = seen["collect"]
    assert c["train"] == train  # the base model and the checkpoints train on the rest, all of it, only it
    assert c["eval"] == val | test  # checkpoints labelled on validation, scored on test
    assert seen["fit"] == {"train": set(), "eval": set()} and seen["sample"] == {"train": set(), "eval": set()}
    assert seen["evaluate"]["train"] == set() and seen["evaluate"]["eval"] == val | test


def test_labels_are_the_checkpoints_validation_accuracy(run):
    p, data, _ = run
    pop = p.population()
    _, x_val, y_val = carve_validation(data, p.config.val_fraction, p.config.seed)
    base = p.base_model()
    for i in (0, 7, 15):
        m = pop.spec.load_into(base, pop.params[i])
        assert pop.val_accuracy[i].item() == pytest.approx(accuracy(m, x_val, y_val))
        assert pop.accuracy[i].item() == pytest.approx(accuracy(m, data.x_test, data.y_test))
    assert pop.val_accuracy.max() - pop.val_accuracy.min() > 10  # the span recipe spans accuracy
    assert pop.meta["recipe"] == "span" and pop.meta["n_val"] == len(y_val)


def test_the_span_fields_of_the_config_shape_the_population(tmp_path):
    cfg = Config.from_dict({**TINY, "k": 4, "val_fraction": 0.25, "span_noise": 0.0})
    p = PromptedPDiff(cfg, tmp_path, model=recording_model(), data=id_data(), progress=False, log=None)
    pop = p.collect()
    assert pop.meta["val_fraction"] == 0.25 and pop.meta["span_noise"] == 0.0
    assert pop.meta["n_val"] == round(len(p.data.y_train) * 0.25)
    q = PromptedPDiff(cfg.replace(span_noise=1.0), tmp_path / "noisy", model=recording_model(), data=id_data(),
                      progress=False, log=None)
    assert pop.val_accuracy.min() > q.collect().val_accuracy.min()  # no noise: the runs start at the base model


def test_report_calibration_is_what_the_models_give(run):
    p, _, _ = run
    r = load_json(p.path("report"))
    pr = r["prompted"]
    pm = pr["per_model"]
    a, b = p.config.prompt_accuracy
    assert pm["prompt"] == pytest.approx([a] * 8 + [b] * 8)
    for row in pr["calibration"]:
        vals = torch.tensor([v for q, v in zip(pm["prompt"], pm["val_accuracy"]) if q == row["prompt"]])
        assert row["val"]["median"] == pytest.approx(vals.median().item())
        assert row["honoured"] == (abs(vals.median().item() - row["prompt"]) <= HONOURED_WITHIN)
    assert r["generated"]["n"] + r["generated_nonfinite"] == 8  # the judged prompt's models only
    assert set(r["baselines"]) == {"noise matched", "interpolation", "weight mean", "ensemble"}
    pop = p.population()
    assert r["original"]["n"] == pr["judged_originals"] == max(
        2, int((pop.val_accuracy >= pr["judged_prompt"] - HONOURED_WITHIN).sum()))
    assert "| prompt (val %) |" in p.path("table").read_text()
    text = p.report()
    assert (p.run_dir / "calibration.png").is_file() and "Verdict" in text


def test_a_models_prompt_changes_only_that_model(run):
    p, _, _ = run
    ae, model, _ = p.load_models()
    lo, hi = p.prompt_range(p.population())
    prompts = torch.full((6,), 65.0)
    a = p.generate_prompted(ae, model, prompts, lo, hi, guidance=2.0)
    prompts[3] = 75.0
    b = p.generate_prompted(ae, model, prompts, lo, hi, guidance=2.0)
    differs = (a != b).any(1)
    assert differs.tolist() == [False, False, False, True, False, False]


def test_guidance_zero_is_the_unprompted_path(run):
    p, _, _ = run
    ae, model, _ = p.load_models()
    lo, hi = p.prompt_range(p.population())
    low = p.generate_prompted(ae, model, torch.full((4,), lo), lo, hi, guidance=0.0)
    high = p.generate_prompted(ae, model, torch.full((4,), hi), lo, hi, guidance=0.0)
    assert torch.equal(low, high)
    from pdiff_fast.diffusion.sample import generate

    net = model.ema

    class Unprompted(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x, t, emb):
            return self.net(x, t, self.net.unconditional(x.shape[0]))
    plain = generate(ae, Unprompted(), p.scheduler(), 4, device=p.device, seed=p.config.seed,
                     grain=p.config.sample_grain, cuda_graph=False, progress=False,
                     cond=torch.zeros(4, net.null.shape[0]))
    assert torch.equal(plain, low)
    assert not torch.equal(p.generate_prompted(ae, model, torch.full((4,), lo), lo, hi, guidance=1.0), low)


def test_prompting_is_reproducible(run, tmp_path):
    p, _, _ = run
    before = read_digest(p.path("generated"))
    p.sample()
    assert read_digest(p.path("generated")) == before


def test_changed_prompting_settings_make_the_right_files_stale(run):
    p, data, _ = run
    q = PromptedPDiff(p.config.replace(cond_drop=0.2), p.run_dir, model=recording_model(), data=data,
                      progress=False, log=None)
    with pytest.raises(StaleArtifact, match="cond_drop=0.1 but the config says cond_drop=0.2"):
        q.sample()
    q = PromptedPDiff(p.config.replace(span_noise=0.5), p.run_dir, model=recording_model(), data=data,
                      progress=False, log=None)
    with pytest.raises(StaleArtifact, match="span_noise"):
        q.fit()


def test_bad_prompts_get_one_line(tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({k: v for k, v in TINY.items() if k != "prompt_accuracy"}))
    d = str(tmp_path / "run")
    assert main(["run", "--config", str(cfg), "--run-dir", d, "--quiet"]) == 0
    out = capsys.readouterr().out
    t, meta = load_tensors(tmp_path / "run" / "generated.safetensors")
    lo, hi = meta["prompt_range"]
    assert sorted(set(t["prompt"].tolist())) == pytest.approx([lo + (hi - lo) * i / 5 for i in range(6)] + [hi + 1, hi + 2])
    assert "(above every checkpoint)" in out and "Highest prompt honoured" in out or "No prompt was honoured" in out
    for flags, match in [(["nan"], "accuracies in [0, 100]"), (["101"], "accuracies in [0, 100]"),
                         ([str(hi + 5)], "outside the population's validation accuracies")]:
        assert main(["sample", "--run-dir", d, "--quiet", "--prompt-accuracy", *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert match in err and len(err.splitlines()) == 1, err
    assert main(["sample", "--run-dir", d, "--quiet", "--prompt-accuracy", str(hi + 5), "--extrapolate"]) == 0
    t, _ = load_tensors(tmp_path / "run" / "generated.safetensors")
    assert t["prompt"].tolist() == [hi + 5] * 16


def test_prompting_needs_its_pipeline_and_a_span_population(tmp_path):
    with pytest.raises(ValueError, match="needs pdiff_fast.prompted.PromptedPDiff, not PDiff"):
        PDiff(Config.from_dict(TINY), tmp_path / "a", progress=False, log=None)
    with pytest.raises(ValueError, match="needs pdiff_fast.PDiff, not PromptedPDiff"):
        PromptedPDiff(Config(), tmp_path / "b", progress=False, log=None)
    with pytest.raises(ValueError, match="needs recipe \"span\""):
        Config.from_dict({**TINY, "recipe": "v2"})
    with pytest.raises(ValueError, match="needs the AE_CNN_bottleneck denoiser"):
        Config.from_dict({**TINY, "denoiser": "ODUnet", "denoiser_channels": None})


def test_prompting_works_with_the_lowrank_autoencoder(tmp_path):
    p = PromptedPDiff(Config.from_dict({**TINY, "autoencoder": "lowrank", "k": 8, "num_samples": 8}), tmp_path,
                      model=recording_model(), data=id_data(), progress=False, log=None)
    p.collect()
    ae, _ = p.fit()
    assert ae.preset == "lowrank"
    flat = p.sample()
    t, meta = load_tensors(p.path("generated"))
    assert torch.isfinite(flat).all() and t["prompt"].unique().numel() == 8  # the default sweep, one model each
    assert load_tensors(p.path("autoencoder"))[1]["preset"] == "lowrank"


def test_prompts_without_prompting_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="field 'prompt_accuracy': asks for prompts, but the config has no prompting"):
        Config.from_dict({"prompt_accuracy": [90.0]})
    with pytest.raises(ValueError, match="field 'prompt_extrapolate'"):
        Config.from_dict({"prompt_extrapolate": True})
    assert main(["sample", "--run-dir", str(tmp_path), "--prompt-accuracy", "90"]) == 2
    assert "asks for prompts" in capsys.readouterr().err


def test_interrupted_prompted_training_resumes_to_the_same_denoiser(run, tmp_path, monkeypatch):
    import pdiff_fast.pipeline.run_dir as rd

    p, data, _ = run
    cfg = p.config.replace(diffusion_steps=24, checkpoint_every=8)
    dirs = {}
    for name in ("whole", "interrupted"):
        d = dirs[name] = tmp_path / name
        d.mkdir()
        for f in ("population.safetensors", "autoencoder.safetensors"):
            (d / f).write_bytes((p.run_dir / f).read_bytes())
    PromptedPDiff(cfg, dirs["whole"], model=recording_model(), data=data, progress=False, log=None).fit(only="diffusion")

    saved, real_save = [], rd.save_tensors

    def save_then_stop(path, tensors, meta=None):
        out = real_save(path, tensors, meta)
        if path.name == "diffusion.ckpt.safetensors":
            saved.append(meta.get("step"))
            if meta.get("step") == 16:
                raise KeyboardInterrupt
        return out

    monkeypatch.setattr(rd, "save_tensors", save_then_stop)
    q = PromptedPDiff(cfg, dirs["interrupted"], model=recording_model(), data=data, progress=False, log=None)
    with pytest.raises(KeyboardInterrupt):
        q.fit(only="diffusion")
    monkeypatch.setattr(rd, "save_tensors", real_save)
    assert saved == [8, 16] and not (dirs["interrupted"] / "diffusion.safetensors").exists()
    logs = []
    PromptedPDiff(cfg, dirs["interrupted"], model=recording_model(), data=data, progress=False,
                  log=logs.append).fit(only="diffusion")
    assert any("resuming diffusion training from step 16" in line for line in logs)  # not trained again from 0
    a, meta_a = load_tensors(dirs["whole"] / "diffusion.safetensors")
    b, meta_b = load_tensors(dirs["interrupted"] / "diffusion.safetensors")
    assert a.keys() == b.keys() and meta_a["prompt_range"] == meta_b["prompt_range"]
    for k in a:
        assert torch.equal(a[k], b[k]), k

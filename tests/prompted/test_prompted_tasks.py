"""Prompted dataset-conditioned generation (pdiff_fast.prompted.tasks) end to end at toy size: the
validation split is carved from the training images and never trained on, the test set never
chooses a checkpoint, the zoo's labels are validation accuracies, a model's prompt changes that
model only, guidance 0 ignores the prompt, sampling is reproducible, bad prompts get one line, and
the report's numbers are those of its per-task records."""
import json
import math
import statistics

import pytest
import torch

from pdiff_fast import cli
from pdiff_fast.data import carve_validation, digits
from pdiff_fast.io import load_json, read_digest
from pdiff_fast.nn.set_encoder import SetEncoder
from pdiff_fast.prompted import PromptedTaskPDiff
from pdiff_fast.prompted import tasks as prompted_tasks
from pdiff_fast.prompted import task_calibration
from pdiff_fast.prompted.encoder import AccuracyEncoder, TaskAndAccuracy
from pdiff_fast.tasks import TaskConfig, TaskPDiff
from pdiff_fast.tasks import parts as task_parts
from pdiff_fast.tasks.zoo import Zoo

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"prompted": True, "zoo_runs": 2, "zoo_steps": 6, "zoo_lr": 0.02, "span_keep": 3, "rank": 8, "ae_steps": 5,
        "denoiser_channels": [4, 4, 4, 4], "encoder_width": 8, "embed_dim": 4, "support": 8, "diffusion_steps": 5,
        "diffusion_batch_size": 32, "sampler": "ddim", "sample_steps": 3, "samples_per_task": 8, "device": "cpu"}


def _ids(x: torch.Tensor) -> list[bytes]:
    return [r.numpy().tobytes() for r in x.reshape(len(x), -1)]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A toy run through the CLI, recording the images every training call and every evaluation reads."""
    run_dir = tmp_path_factory.mktemp("tasks-prompted")
    cfg = run_dir / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    seen: dict[str, list] = {"train": [], "support": [], "scored": []}
    mp = pytest.MonkeyPatch()
    train, sup, evaluate = prompted_tasks.train_models, prompted_tasks.support, task_parts.evaluate_population

    def rec_train(model, spec, starts, x, y, counts, *a, **k):
        seen["train"] += [i for t in range(len(x)) for i in _ids(x[t, :int(counts[t])])]
        return train(model, spec, starts, x, y, counts, *a, **k)

    def rec_support(x, y, counts, *a, **k):
        seen["support"] += [i for t in range(len(x)) for i in _ids(x[t, :int(counts[t])])]
        return sup(x, y, counts, *a, **k)

    def rec_evaluate(model, spec, flat, x, y, **k):
        seen["scored"] += _ids(x)
        return evaluate(model, spec, flat, x, y, **k)

    mp.setattr(prompted_tasks, "train_models", rec_train)
    mp.setattr(prompted_tasks, "support", rec_support)
    mp.setattr(task_parts, "evaluate_population", rec_evaluate)
    try:
        for step in ("zoo", "train", "sample", "evaluate"):
            assert cli.main(["tasks", step, "--run-dir", str(run_dir), "--config", str(cfg), "--quiet"]) == 0
    finally:
        mp.undo()
    return run_dir, seen


def _pipeline(run_dir, **changes) -> PromptedTaskPDiff:
    return PromptedTaskPDiff(TaskConfig.from_dict({**TINY, **changes}), run_dir, progress=False, log=None)


def test_validation_is_carved_from_training_and_only_scored(run):
    run_dir, seen = run
    d = digits()
    rest, x_val, _ = carve_validation(d, TINY.get("val_fraction", 0.2), 0)
    train_ids, val_ids, test_ids = set(_ids(rest.x_train)), set(_ids(x_val)), set(_ids(d.x_test))
    clash = (train_ids & val_ids) | (train_ids & test_ids) | (val_ids & test_ids)  # identical images across splits
    assert len(clash) < 10
    val_only, test_only = val_ids - clash, test_ids - clash
    assert seen["train"] and seen["support"]
    for what in ("train", "support"):  # zoo training and the generator's support sets: the rest only
        assert set(seen[what]) <= train_ids, what
        assert not set(seen[what]) & (val_only | test_only), what
    scored = set(seen["scored"])
    assert val_only <= scored and test_only <= scored  # every validation and test image is scored
    assert not scored & (train_ids - clash)  # ... and no training image
    p = _pipeline(run_dir)
    assert len(p.family.source.y_train) + len(p.validation.source.y_train) == len(d.y_train)
    assert torch.equal(p.validation.source.x_train, x_val)


def test_zoo_labels_are_validation_accuracies_of_chosen_steps(run):
    run_dir, _ = run
    p = _pipeline(run_dir)
    zoo, _ = p.load_zoo()
    runs = TINY["zoo_runs"] * len(p.seen)
    assert len(zoo) == runs * TINY["span_keep"]
    assert int(zoo.step.min()) >= 1 and int(zoo.step.max()) <= TINY["zoo_steps"]
    for i in (0, len(p.seen) - 1):
        rows = zoo.task == i
        assert torch.allclose(zoo.val_accuracy[rows], p.val_accuracy(p.seen[i], zoo.params[rows]))
        assert torch.allclose(zoo.accuracy[rows], p.accuracy(p.seen[i], zoo.params[rows]))
    assert float(zoo.val_accuracy.max() - zoo.val_accuracy.min()) > 10  # the zoo spans accuracy


def test_the_test_set_never_chooses_a_checkpoint(tmp_path, monkeypatch):
    """The same zoo with the test labels scrambled: the same checkpoints and labels, other test scores."""
    cfg = {**TINY, "held_out_pairs": 40}  # 10 seen tasks: quick
    a = _pipeline(tmp_path / "a", **cfg).zoo()
    d = digits()
    scrambled = type(d)(d.name, d.x_train, d.y_train, d.x_test, (d.y_test + 1) % 10, d.num_classes)
    monkeypatch.setattr("pdiff_fast.tasks.family.digits", lambda: scrambled)
    b = _pipeline(tmp_path / "b", **cfg).zoo()
    assert torch.equal(a.params, b.params) and torch.equal(a.step, b.step)
    assert torch.equal(a.val_accuracy, b.val_accuracy)
    assert not torch.equal(a.accuracy, b.accuracy)


def test_a_prompt_changes_only_its_model_and_guidance_0_ignores_prompts(run):
    run_dir, _ = run
    p = _pipeline(run_dir, samples_per_task=2)
    zoo = p.load_zoo()[0]
    lo, hi = p.prompt_range(zoo)
    mid = (lo + hi) / 2
    task = p.held_out[:1]
    loaded = p.load_generator()
    gen = lambda q, **kw: _pipeline(run_dir, samples_per_task=2, prompt_accuracy=q, **kw).generate(  # noqa: E731
        task, loaded=loaded)
    ab, ac = gen([lo, mid]), gen([lo, hi])
    assert torch.equal(ab[0], ac[0]) and not torch.allclose(ab[1], ac[1])
    assert torch.equal(gen([lo, mid], guidance=0.0), gen([hi, lo], guidance=0.0))


def test_run_report_is_computed_from_its_records(run, capsys):
    run_dir, _ = run
    for name in ("report.json", "report.md", "calibration.png", "generated.safetensors"):
        assert (run_dir / name).is_file(), name
    report = load_json(run_dir / "report.json")
    splits = report["prompted"]["splits"]
    assert set(splits) == {"seen", "held out"}
    held = [e for e in report["per_task"].values() if e["split"] == "held out"]
    assert len(held) == 18 and all("zoo (own task)" not in e["test"] for e in held)
    row = splits["held out"]["calibration"][1]
    p = row["prompt"]
    meds = [statistics.median(v for v, q in zip(e["val"], e["prompt"]) if q == p) for e in held]
    assert row["val_median"] == pytest.approx(statistics.median(meds))
    assert row["honoured"] == (abs(row["val_median"] - p) <= 1.0)
    judged = splits["held out"]["judged_prompt"]
    gen = [statistics.fmean(t for t, q in zip(e["test"]["generated"], e["prompt"]) if q == judged) for e in held]
    assert splits["held out"]["compare"]["generated"]["mean"] == pytest.approx(statistics.fmean(gen))
    assert cli.main(["tasks", "report", "--run-dir", str(run_dir), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Held out tasks" in out and "calibration.png" in out


def test_sampling_is_reproducible(run):
    run_dir, _ = run
    before = read_digest(run_dir / "generated.safetensors")
    assert cli.main(["tasks", "sample", "--run-dir", str(run_dir), "--quiet"]) == 0
    assert read_digest(run_dir / "generated.safetensors") == before


@pytest.mark.parametrize("args, says", [
    (["--prompt-accuracy", "nan"], "prompt_accuracy"),
    (["--prompt-accuracy", "150"], "prompt_accuracy"),
    (["--prompt-accuracy", "100.5", "--extrapolate"], "prompt_accuracy"),
    (["--prompt-accuracy", "0.5"], "outside the population's validation accuracies"),
])
def test_bad_prompts_get_one_line(run, args, says, capsys):
    run_dir, _ = run
    assert cli.main(["tasks", "sample", "--run-dir", str(run_dir), "--quiet", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert says in err and len(err.splitlines()) == 1


def test_prompted_and_unprompted_pipelines_refuse_each_others_configs(tmp_path):
    with pytest.raises(ValueError, match="PromptedTaskPDiff"):
        TaskPDiff(TaskConfig(prompted=True), tmp_path / "a", progress=False, log=None)
    with pytest.raises(ValueError, match="TaskPDiff"):
        PromptedTaskPDiff(TaskConfig(), tmp_path / "b", progress=False, log=None)
    with pytest.raises(ValueError, match="span_keep=7"):
        _pipeline(tmp_path / "c", span_keep=7).zoo()


def test_task_and_accuracy_adds_the_two_embeddings():
    torch.manual_seed(0)
    enc = TaskAndAccuracy(SetEncoder(5, 8, 4), AccuracyEncoder(out_dim=4))
    sets, a = torch.randn(3, 6, 5), torch.rand(3, 1)
    assert torch.allclose(enc((sets, a)), enc.sets(sets) + enc.accuracy(a))
    with pytest.raises(ValueError, match="must match"):
        TaskAndAccuracy(SetEncoder(5, 8, 4), AccuracyEncoder(out_dim=3))
    with pytest.raises(ValueError, match="2 accuracies"):
        enc((sets, a[:2]))


def test_zoo_keeps_its_validation_labels_and_steps(tmp_path, run):
    zoo, _ = _pipeline(run[0]).load_zoo()
    zoo.save(tmp_path / "z.safetensors")
    back = Zoo.load(tmp_path / "z.safetensors")
    assert torch.equal(back.val_accuracy, zoo.val_accuracy) and torch.equal(back.step, zoo.step)
    with pytest.raises(ValueError, match="val_accuracy must be None or a torch.float32"):
        Zoo(**{**vars(zoo), "val_accuracy": zoo.val_accuracy[:-1]})


def test_calibration_judges_the_highest_honoured_prompt_against_checkpoints_reaching_it():
    def task(split, val, gen_test, labels):
        return {"split": split, "prompt": [60.0, 60.0, 80.0, 80.0], "val": val,
                "test": {"generated": gen_test, "random init": [50.0], "nearest task": [70.0, 90.0]},
                "labels": {"nearest task": labels}}
    per_task = {"a": task("held out", [59.5, 60.5, 79.0, 80.0], [61.0, 63.0, 82.0, 84.0], [70.0, 85.0]),
                "b": task("held out", [60.0, 61.0, 70.0, 72.0], [60.0, 62.0, 71.0, 73.0], [50.0, 55.0])}
    s = task_calibration.calibrate(per_task, 50.0, 90.0)["splits"]["held out"]
    # prompt 60: task medians 60.0 and 60.5 -> 60.25, honoured; prompt 80: 79.5 and 71 -> 75.25, missed
    assert [r["honoured"] for r in s["calibration"]] == [True, False]
    assert s["judged_prompt"] == 60.0 and s["highest_honoured"] == 60.0
    assert s["compare"]["generated"]["mean"] == pytest.approx((62.0 + 61.0) / 2)
    # a: both nearest checkpoints reach 59 -> mean 80; b: none does -> its best two (both) -> 80
    assert s["compare"]["nearest task"]["mean"] == pytest.approx(80.0)
    assert s["above"] == ["random init"] and s["not_above"] == ["nearest task"]
    assert not math.isnan(s["calibration"][1]["test_mean"])


def test_interrupted_prompted_training_resumes_to_the_same_generator(run, tmp_path, monkeypatch):
    import pdiff_fast.tasks.generator as tp  # the train step and its checkpoint
    from pdiff_fast.io import load_tensors

    changes = {"diffusion_steps": 6, "checkpoint_every": 3}
    dirs = {}
    for name in ("whole", "interrupted"):
        d = dirs[name] = tmp_path / name
        d.mkdir()
        (d / "zoo.safetensors").write_bytes((run[0] / "zoo.safetensors").read_bytes())
    _pipeline(dirs["whole"], **changes).train()
    real_save = tp.save_tensors

    def save_then_stop(path, tensors, meta=None):
        out = real_save(path, tensors, meta)
        if meta.get("step") == 3:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(tp, "save_tensors", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        _pipeline(dirs["interrupted"], **changes).train()
    monkeypatch.setattr(tp, "save_tensors", real_save)
    logs = []
    PromptedTaskPDiff(TaskConfig.from_dict({**TINY, **changes}), dirs["interrupted"], progress=False,
                      log=logs.append).train()
    assert any("resuming" in line and "step 3" in line for line in logs)
    a, _ = load_tensors(dirs["whole"] / "generator.safetensors")
    b, _ = load_tensors(dirs["interrupted"] / "generator.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("denoiser.model.encoder.accuracy.") for k in a)
    for k in a:
        assert torch.equal(a[k], b[k]), k

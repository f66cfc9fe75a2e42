"""`pdiff-fast tasks`: the dataset-conditioned pipeline end to end at toy size, its provenance
checks, and that held-out tasks never reach training (pdiff_fast.tasks.pdiff)."""
import json

import pytest
import torch

from pdiff_fast import cli
from pdiff_fast.io import load_json, load_tensors
from pdiff_fast.pipeline.run_dir import StaleArtifact
from pdiff_fast.tasks.pdiff import TaskConfig, TaskPDiff
from pdiff_fast.tasks.family import TaskFamily
from pdiff_fast.tasks.zoo import Zoo

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"zoo_runs": 2, "zoo_steps": 5, "rank": 8, "ae_steps": 5, "denoiser_channels": [4, 4, 4, 4],
        "encoder_width": 8, "embed_dim": 4, "support": 8, "diffusion_steps": 5, "diffusion_batch_size": 32,
        "sampler": "ddim", "sample_steps": 3, "samples_per_task": 2, "finetune_models": 1, "finetune_steps": 3,
        "device": "cpu"}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One toy run through the CLI; returns (run dir, the tasks whose data zoo + train read)."""
    run_dir = tmp_path_factory.mktemp("tasks")
    cfg = run_dir / "tiny.json"
    cfg.write_text(json.dumps(TINY))
    read: dict[str, set] = {}
    original = TaskFamily.data

    def recording(self, task):
        read.setdefault(phase[0], set()).add(task.name)
        return original(self, task)

    phase = ["zoo"]
    mp = pytest.MonkeyPatch()
    mp.setattr(TaskFamily, "data", recording)
    try:
        for step in ("zoo", "train", "sample", "evaluate"):
            phase[0] = step
            assert cli.main(["tasks", step, "--run-dir", str(run_dir), "--config", str(cfg), "--quiet"]) == 0
    finally:
        mp.undo()
    return run_dir, read


def test_run_writes_the_report(run, capsys):
    run_dir, _ = run
    for name in ("zoo.safetensors", "generator.safetensors", "generated.safetensors", "report.json", "report.md",
                 "zero_shot.png", "finetune.png", "config.json", "timings.json"):
        assert (run_dir / name).is_file(), name
    report = load_json(run_dir / "report.json")
    assert len(report["tasks"]["held out"]) == 18 and len(report["tasks"]["seen"]) == 72
    held = report["zero_shot"]["held out"]
    assert {"generated", "unconditional", "random init", "zoo mean", "nearest task"} <= set(held)
    assert "zoo (own task)" not in held and "zoo (own task)" in report["zero_shot"]["seen"]
    # a task-independent model scores exactly 50% on average over a split: both orders of a pair are in it
    for split in ("held out", "seen"):
        for m in ("random init", "zoo mean", "unconditional"):
            assert report["zero_shot"][split][m]["mean"] == pytest.approx(50.0, abs=1e-6)
    assert set(report["finetune"]) == {"generated", "random", "nearest task"}
    for start in report["finetune"].values():
        assert start["rows"] == 18 and len(start["mean_curve"]) == len(report["finetune_record"])
    assert report["finetune_record"][0] == 0 and report["finetune_record"][-1] == TINY["finetune_steps"]
    assert set(report["guidance_sweep"]) == {"0", "1", "2", "4"}
    assert all(t["met"] in (True, False, None) for t in report["targets"].values())
    assert cli.main(["tasks", "report", "--run-dir", str(run_dir)]) == 0
    assert "held out: mean" in capsys.readouterr().out


def test_zoo_holds_seen_tasks_only_and_training_never_reads_held_out_data(run):
    run_dir, read = run
    p = TaskPDiff(TaskConfig.from_dict(TINY), run_dir, progress=False, log=None)
    zoo = Zoo.load(run_dir / "zoo.safetensors")
    held = {t.name for t in p.held_out}
    assert zoo.tasks == [t.name for t in p.seen] and not held & set(zoo.tasks)
    assert len(zoo) == 72 * TINY["zoo_runs"]
    # the zoo step also trains a few rows one at a time: the same models, and its speed is recorded
    assert zoo.meta["loop_max_abs_difference"] < 1e-4
    timings = json.loads((run_dir / "timings.json").read_text())  # speeds live there: the zoo file is reproducible
    assert timings["zoo_models_per_second"] > 0 and timings["zoo_loop_models_per_second"] > 0
    assert "models_per_second" not in zoo.meta
    assert read["zoo"] and not read["zoo"] & held
    assert read["train"] and not read["train"] & held
    assert read["evaluate"] & held  # the held-out tasks are used where they should be


def test_generated_rows_and_sample_for_one_task(run, capsys):
    run_dir, _ = run
    t, _ = load_tensors(run_dir / "generated.safetensors")
    assert t["params"].shape[0] == 90 * TINY["samples_per_task"] and torch.isfinite(t["params"]).all()
    assert torch.bincount(t["task"]).tolist() == [TINY["samples_per_task"]] * 90
    assert cli.main(["tasks", "sample", "--run-dir", str(run_dir), "--task", "3-8"]) == 0
    assert "3-8: 2 models" in capsys.readouterr().out
    s, _ = load_tensors(run_dir / "samples" / "3-8.safetensors")
    assert s["params"].shape == (2, t["params"].shape[1]) and s["accuracy"].shape == (2,)
    assert cli.main(["tasks", "sample", "--run-dir", str(run_dir), "--task", "3-3"]) == 2
    assert "unknown task '3-3'" in capsys.readouterr().err


def test_stale_artifacts_are_refused(run, tmp_path, capsys):
    run_dir, _ = run
    p = TaskPDiff(TaskConfig.from_dict({**TINY, "zoo_steps": 6}), run_dir, progress=False, log=None)
    with pytest.raises(StaleArtifact, match="zoo_steps=5"):
        p.train()
    p = TaskPDiff(TaskConfig.from_dict({**TINY, "diffusion_steps": 7}), run_dir, progress=False, log=None)
    with pytest.raises(StaleArtifact, match="rerun `pdiff-fast tasks train`"):
        p.sample()
    assert cli.main(["tasks", "evaluate", "--run-dir", str(tmp_path / "empty")]) == 2
    assert "run `pdiff-fast tasks zoo` first" in capsys.readouterr().err


def test_bad_config_is_refused(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"zoo_runs": 0, "conditioning": "film", "nope": 1, "encoder_width": 10}))
    assert cli.main(["tasks", "zoo", "--run-dir", str(tmp_path / "r"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    for word in ("unknown field 'nope'", "'zoo_runs'", "'conditioning'", "multiple of 4"):
        assert word in err


def test_interrupted_training_resumes_to_the_same_generator(run, tmp_path, monkeypatch):
    import pdiff_fast.tasks.generator as tp  # the train step and its checkpoint
    from pdiff_fast.io import load_tensors as load

    run_dir, _ = run
    cfg = TaskConfig.from_dict({**TINY, "diffusion_steps": 12, "checkpoint_every": 4})
    dirs = {}
    for name in ("whole", "interrupted"):
        d = dirs[name] = tmp_path / name
        d.mkdir()
        (d / "zoo.safetensors").write_bytes((run_dir / "zoo.safetensors").read_bytes())
    TaskPDiff(cfg, dirs["whole"], progress=False, log=None).train()

    saved = []
    real_save = tp.save_tensors

    def save_then_stop(path, tensors, meta=None):
        out = real_save(path, tensors, meta)
        saved.append(meta.get("step"))
        if meta.get("step") == 8:
            raise KeyboardInterrupt
        return out

    monkeypatch.setattr(tp, "save_tensors", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        TaskPDiff(cfg, dirs["interrupted"], progress=False, log=None).train()
    monkeypatch.setattr(tp, "save_tensors", real_save)
    assert saved == [4, 8] and (dirs["interrupted"] / tp.CHECKPOINT).is_file()
    assert not (dirs["interrupted"] / "generator.safetensors").exists()
    logs = []
    TaskPDiff(cfg, dirs["interrupted"], progress=False, log=logs.append).train()
    assert any("resuming" in line and "step 8" in line for line in logs)
    assert not (dirs["interrupted"] / tp.CHECKPOINT).exists()
    a, _ = load(dirs["whole"] / "generator.safetensors")
    b, _ = load(dirs["interrupted"] / "generator.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_run_keeps_a_current_zoo_and_retrains_a_changed_one(run, monkeypatch):
    """`tasks run` after an interruption does not train a zoo that is current again."""
    import pdiff_fast.tasks.pdiff as task_pdiff

    run_dir, _ = run
    p = TaskPDiff(TaskConfig.from_dict(TINY), run_dir, progress=False, log=None)
    zoo = p.current_zoo()
    assert zoo is not None and zoo.tasks == [t.name for t in p.seen]

    def no_training(*a, **k):
        raise AssertionError("the current zoo was trained again")
    monkeypatch.setattr(task_pdiff, "train_models", no_training)
    kept = p.zoo_unless_current()
    assert torch.equal(kept.params, zoo.params)
    changed = TaskPDiff(TaskConfig.from_dict({**TINY, "zoo_steps": TINY["zoo_steps"] + 1}), run_dir, progress=False,
                        log=None)
    assert changed.current_zoo() is None
    with pytest.raises(AssertionError, match="trained again"):
        changed.zoo_unless_current()

"""pdiff_fast.tasks.pdiff's steps (TaskPDiff: zoo, sample, report, run, and sample_tasks) with their heavy
collaborators faked on planted run directories: the batched trainer, the one-at-a-time loop, the
capacity checks, the generator and the accuracy are fakes that record what they are asked and answer
with values that say which rows went where; the zoo, the generated file, the samples and report.json
are written for real and read back. Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md); test_task_pipeline.py runs the real steps end to end."""
import json

import pytest
import torch

from pdiff_fast.io import load_artifact, save_json
from pdiff_fast.pipeline.run_dir import StaleArtifact
from pdiff_fast.tasks import parts as parts_lib
from pdiff_fast.tasks import pdiff as pd
from pdiff_fast.tasks import report as task_report
from pdiff_fast.tasks.config import TaskConfig
from pdiff_fast.tasks.pdiff import LOOP_ROWS, TaskPDiff, sample_tasks
from pdiff_fast.tasks.zoo import Zoo
from tests.fakes import Clock


@pytest.fixture(autouse=True)
def no_warm_up(monkeypatch):
    monkeypatch.setattr(parts_lib, "warm_allocator", lambda: None)


def cfg(**kw):
    # held_out_pairs=44: one pair seen (2 seen tasks), 88 tasks held out
    return TaskConfig(**({"device": "cpu", "hidden": [3], "seed": 5, "held_out_pairs": 44, "zoo_runs": 3,
                          "zoo_steps": 7, "zoo_lr": 0.25, "batch_size": 9, "memory_budget_mb": 3,
                          "samples_per_task": 2, "guidance": 2.5} | kw))


def make(tmp_path, config=None, **kw):
    logged = []
    run = TaskPDiff(config or cfg(), tmp_path / "run", progress=False, log=logged.append, **kw)
    run.logged = logged
    return run


@pytest.fixture
def fakes(monkeypatch):
    """check_fits, train_models and train_one faked: the calls recorded; row r of the batched result is
    r + 1 in every value, and the loop's row r differs from it by r / 4."""
    calls = {"fits": [], "batched": [], "loop": []}

    def check_fits(what, rows, values, folder, **kw):
        calls["fits"].append((what, rows, values, folder, kw))
        return 0

    def train_models(model, spec, starts, x, y, counts, task, **kw):
        calls["batched"].append((model, spec, starts, x, y, counts, task, kw))
        final = (torch.arange(len(starts), dtype=torch.float32) + 1)[:, None].expand(-1, spec.dim).clone()
        return [torch.zeros_like(final), final - 1, final]  # the last is the result

    def train_one(model, spec, start, x, y, **kw):
        calls["loop"].append((model, spec, start, x, y, kw))
        r = kw["row"]
        return [torch.zeros(spec.dim), torch.full((spec.dim,), 0.5), torch.full((spec.dim,), r + 1 + r / 4)]

    monkeypatch.setattr(pd, "check_fits", check_fits)
    monkeypatch.setattr(pd, "train_models", train_models)
    monkeypatch.setattr(pd, "train_one", train_one)
    return calls


def fake_accuracy(run):
    """accuracy of a row: its first value (its row number + 1) plus 10 x the task's family index."""
    asked = []

    def accuracy(task, flat):
        asked.append((task.name, flat.clone()))
        return flat[:, 0] + 10 * run.family.tasks.index(task)
    run.accuracy = accuracy
    return asked


# --- zoo --------------------------------------------------------------------------------------------

def test_zoo_trains_every_run_of_every_seen_task_at_once(tmp_path, fakes, monkeypatch):
    run = make(tmp_path)
    asked = fake_accuracy(run)
    monkeypatch.setattr(pd.time, "perf_counter", Clock(100.0, 102.0, 200.0, 203.0))
    seen = [run.family.tasks.index(t) for t in run.seen]
    assert len(seen) == 2 and len(run.held_out) == 88
    spec = run.spec()
    init = spec.flatten([run.base_model()])[0]
    zoo = run.zoo()

    # capacity: the zoo's training, then what `sample` will make (no device for the second)
    assert fakes["fits"] == [("tasks zoo: 3 runs x 2 tasks", 6, spec.dim, run.run_dir, {"copies": 4, "device": run.device}),
                             ("tasks sample: 2 models x 90 tasks", 180, spec.dim, run.run_dir, {"copies": 3})]
    # the batched trainer: every row from the shared start, rows task-major
    (model, sp, starts, x, y, counts, task, kw), = fakes["batched"]
    assert model is run.base_model() and sp.names == spec.names
    assert torch.equal(starts, init.expand(6, -1))
    want_x, want_y, want_counts = run.family.stacked(run.seen)
    assert torch.equal(x, want_x) and torch.equal(y, want_y) and torch.equal(counts, want_counts)
    assert task.tolist() == [0, 0, 0, 1, 1, 1]
    assert kw == {"steps": 7, "lr": 0.25, "batch_size": 9, "seed": 5, "memory_budget_bytes": 3 << 20}
    # the loop: rows 0..5, each on its own task's data
    assert [c[5]["row"] for c in fakes["loop"]] == list(range(6))
    for r, (model, sp, start, xr, yr, kw) in enumerate(fakes["loop"]):
        t = r // 3
        assert model is run.base_model() and torch.equal(start, init)
        assert torch.equal(xr, want_x[t, :want_counts[t]]) and torch.equal(yr, want_y[t, :want_counts[t]])
        assert kw == {"steps": 7, "lr": 0.25, "batch_size": 9, "seed": 5, "row": r}
    # accuracy: each seen task asked about its own rows
    assert [name for name, _ in asked] == [t.name for t in run.seen]
    assert asked[0][1][:, 0].tolist() == [1, 2, 3] and asked[1][1][:, 0].tolist() == [4, 5, 6]

    assert zoo.params[:, 0].tolist() == [1, 2, 3, 4, 5, 6] and zoo.params.shape == (6, spec.dim)
    assert zoo.task.tolist() == [0, 0, 0, 1, 1, 1] and zoo.run.tolist() == [0, 1, 2, 0, 1, 2]
    assert zoo.accuracy.tolist() == [1 + 10 * seen[0], 2 + 10 * seen[0], 3 + 10 * seen[0],
                                     4 + 10 * seen[1], 5 + 10 * seen[1], 6 + 10 * seen[1]]
    assert torch.equal(zoo.init, init) and zoo.tasks == [t.name for t in run.seen]
    assert zoo.meta == {"family": "digit-pairs", "held_out": [t.name for t in run.held_out],
                        "loop_max_abs_difference": 1.25, "config": run._fields("zoo"), "inputs": {}}
    assert run.timings == {"zoo_train": 2.0, "zoo_models_per_second": 3.0, "zoo_loop_models_per_second": 2.0}

    saved = Zoo.load(run.path("zoo"))
    assert torch.equal(saved.params, zoo.params) and saved.meta == zoo.meta and torch.equal(saved.task, zoo.task)
    assert json.loads(run.path("timings").read_text()) == run.timings
    assert json.loads(run.path("config").read_text()) == run.config.to_dict()
    assert run.logged == [
        "zoo: training 6 models (3 per seen task, 2 tasks) at once",
        f"zoo: 6 models in 2.0 s (3.0 models/s; a loop of one model at a time: 2.0 models/s); test accuracy "
        f"median {zoo.accuracy.median():.2f}"]


def test_the_loop_trains_at_most_loop_rows(tmp_path, fakes, monkeypatch):
    assert LOOP_ROWS == 16
    run = make(tmp_path, cfg(zoo_runs=9))
    fake_accuracy(run)
    monkeypatch.setattr(pd.time, "perf_counter", Clock(0.0, 1.0, 10.0, 14.0))
    zoo = run.zoo()
    assert [c[5]["row"] for c in fakes["loop"]] == list(range(16))
    assert run.timings["zoo_loop_models_per_second"] == 4.0 and run.timings["zoo_models_per_second"] == 18.0
    assert zoo.meta["loop_max_abs_difference"] == 15 / 4
    # the loop's tasks: rows 9.. are the second seen task's
    x, _, counts = run.family.stacked(run.seen)
    assert torch.equal(fakes["loop"][9][3], x[1, :counts[1]]) and torch.equal(fakes["loop"][8][3], x[0, :counts[0]])


def test_loop_rate_of_fewer_rows(tmp_path, fakes, monkeypatch):
    run = make(tmp_path)
    spec = run.spec()
    starts = torch.zeros(6, spec.dim)
    x, y, counts = run.family.stacked(run.seen)
    task = torch.tensor([0, 0, 0, 1, 1, 1])
    params = (torch.arange(6.0) + 1)[:, None].expand(-1, spec.dim)
    monkeypatch.setattr(pd.time, "perf_counter", Clock(5.0, 9.0))
    rate, gap = run._loop_rate(run.base_model(), spec, starts, x, y, counts, task, params, rows=2)
    assert rate == 0.5 and gap == 0.25 and len(fakes["loop"]) == 2


# --- current_zoo and zoo_unless_current ------------------------------------------------------------

def plant_zoo(run, **fields):
    spec = run.spec()
    zoo = Zoo(torch.randn(2, spec.dim), torch.tensor([0, 1]), torch.zeros(2, dtype=torch.int64),
              torch.tensor([50.0, 60.0]), torch.zeros(spec.dim), spec, [t.name for t in run.seen], {})
    zoo.meta["config"], zoo.meta["inputs"] = {**run._fields("zoo"), **fields}, {}
    zoo.save(run.path("zoo"))
    return zoo


def test_current_zoo(tmp_path):
    run = make(tmp_path)
    assert run.current_zoo() is None  # missing
    planted = plant_zoo(run)
    got = run.current_zoo()
    assert got is not None and torch.equal(got.params, planted.params)
    plant_zoo(run, zoo_steps=1)
    assert run.current_zoo() is None  # made with other fields
    run.allow_stale = True
    assert run.current_zoo() is None  # stale is allowed for reading, but run trains it again
    run.path("zoo").write_text("junk")
    assert run.current_zoo() is None  # damaged
    run.path("zoo").unlink()
    run.path("zoo").mkdir()
    assert run.current_zoo() is None


def test_current_zoo_does_not_swallow_other_errors(tmp_path):
    run = make(tmp_path)

    def broken():
        raise RuntimeError("boom")
    run.load_zoo = broken
    with pytest.raises(RuntimeError, match="boom"):
        run.current_zoo()


def test_zoo_unless_current(tmp_path):
    run = make(tmp_path)
    run.zoo = lambda: "NEW"
    assert run.zoo_unless_current() == "NEW" and run.logged == []
    planted = plant_zoo(run)
    kept = run.zoo_unless_current()
    assert isinstance(kept, Zoo) and torch.equal(kept.params, planted.params)
    assert run.logged == [f"keeping the zoo in {run.path('zoo')} (made with this config)"]


def test_run_does_the_steps_in_order(tmp_path):
    run = make(tmp_path)
    order = []
    run.zoo_unless_current = lambda: order.append("zoo")
    run.train = lambda: order.append("train")
    run.sample = lambda: order.append("sample")
    run.evaluate = lambda: order.append("evaluate") or {"report": 1}
    assert run.run() == {"report": 1} and order == ["zoo", "train", "sample", "evaluate"]


# --- sample -----------------------------------------------------------------------------------------

def fake_generator(run):
    """load_generator and generate faked: generate's row i of task k is 1000 k + i (+ 0.5 unconditioned)."""
    calls = []
    loaded = ("zoo", "ae", "model", "std", "GEN-DIGEST")
    run.load_generator = lambda: calls.append("load") or loaded

    def generate(tasks, n=None, guidance=None, loaded=None):
        calls.append(([t.name for t in tasks], n, guidance, loaded))
        n = n or run.config.samples_per_task
        out = torch.cat([torch.arange(n, dtype=torch.float32) + 1000 * run.family.tasks.index(t) for t in tasks])
        if guidance == 0.0:
            out = out + 0.5
        return out[:, None].expand(-1, 3).clone()
    run.generate = generate
    return calls, loaded


def test_sample(tmp_path, fakes, monkeypatch):
    run = make(tmp_path)
    calls, loaded = fake_generator(run)
    monkeypatch.setattr(pd.time, "perf_counter", Clock(1.0, 4.0))
    out = run.sample()
    tasks = run.seen + run.held_out
    assert fakes["fits"] == [("tasks sample: 2 models x 90 tasks", 180, run.spec().dim, run.run_dir,
                              {"copies": 3, "device": run.device})]
    assert calls == ["load", ([t.name for t in tasks], None, None, loaded), ([tasks[0].name], None, 0.0, loaded)]
    index = [run.family.tasks.index(t) for t in tasks]
    assert out["task"].tolist() == [i for i in index for _ in range(2)]
    assert out["params"][:, 0].tolist() == [1000.0 * i + j for i in index for j in range(2)]
    assert out["unconditional"][:, 0].tolist() == [1000.0 * index[0] + 0.5, 1000.0 * index[0] + 1.5]
    tensors, meta, _ = load_artifact(run.path("generated"))
    assert all(torch.equal(tensors[k], out[k]) for k in ("params", "task", "unconditional")) and len(tensors) == 3
    assert meta["tasks"] == run.family.names and meta["inputs"] == {"generator": "GEN-DIGEST"}
    assert meta["config"] == run._fields("generated")
    assert run.timings == {"sample": 3.0} and json.loads(run.path("timings").read_text()) == {"sample": 3.0}
    assert run.logged == [f"generated 180 models (2 for each of 90 tasks) in 3.0 s -> {run.path('generated')}"]


# --- report -----------------------------------------------------------------------------------------

def test_report_of_a_missing_or_damaged_or_foreign_file(tmp_path):
    run = make(tmp_path)
    with pytest.raises(FileNotFoundError) as e:
        run.report()
    assert str(e.value) == f"{run.path('report')}: missing; run `pdiff-fast tasks evaluate` first"
    run.path("report").mkdir()
    with pytest.raises(FileNotFoundError, match="missing; run `pdiff-fast tasks evaluate` first"):
        run.report()
    run.path("report").rmdir()
    run.path("report").write_text("{not json")
    with pytest.raises(ValueError, match=r"rerun `pdiff-fast tasks evaluate` to remake it$"):
        run.report()
    run.path("report").write_text("[1, 2]")
    with pytest.raises(ValueError) as e:
        run.report()
    assert str(e.value) == f"{run.path('report')}: not a report of this package; rerun `pdiff-fast tasks evaluate`"


def test_report_checks_its_inputs(tmp_path):
    run = make(tmp_path)
    run._save("generated", {"params": torch.ones(1, 3)}, {}, {})
    save_json(run.path("report"), {"inputs": {"generated": "another digest"}})
    with pytest.raises(StaleArtifact, match="rerun `pdiff-fast tasks evaluate` \\(or pass --allow-stale\\)"):
        run.report()


def test_report_formats_and_plots(tmp_path, monkeypatch):
    run = make(tmp_path)
    plotted = []
    monkeypatch.setattr(task_report, "plot_report", lambda report, folder: plotted.append((report, folder)))
    monkeypatch.setattr(task_report, "format_report", lambda report: f"TABLE {report['x']}")
    save_json(run.path("report"), {"x": 7, "inputs": {}})
    assert run.report() == "TABLE 7" and plotted == [({"x": 7, "inputs": {}}, run.run_dir)]
    assert run.format_report({"x": 8}) == "TABLE 8"


@pytest.mark.parametrize("error", [KeyError, TypeError, AttributeError, IndexError, ValueError])
def test_a_report_this_version_cannot_read(tmp_path, monkeypatch, error):
    run = make(tmp_path)

    def broken(report):
        raise error("the detail")
    monkeypatch.setattr(run, "format_report", broken)
    save_json(run.path("report"), {"inputs": {}})
    with pytest.raises(ValueError) as e:
        run.report()
    detail = "'the detail'" if error is KeyError else "the detail"
    assert str(e.value) == (f"{run.path('report')}: not a report this version can read ({error.__name__}: {detail}); "
                            "rerun `pdiff-fast tasks evaluate`")
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_a_report_error_of_another_kind_is_not_hidden(tmp_path, monkeypatch):
    run = make(tmp_path)
    monkeypatch.setattr(run, "format_report", lambda report: 1 / 0)
    save_json(run.path("report"), {"inputs": {}})
    with pytest.raises(ZeroDivisionError):
        run.report()


# --- sample_tasks -----------------------------------------------------------------------------------

def test_sample_tasks_saves_each_tasks_models_with_their_accuracy(tmp_path):
    run = make(tmp_path)
    calls, loaded = fake_generator(run)
    asked = fake_accuracy(run)
    seen, held = run.seen[1], run.held_out[3]
    out = sample_tasks(run, [held.name, seen.name], n=3, guidance=1.5)
    assert calls == ["load", ([held.name, seen.name], 3, 1.5, loaded)]
    ih, i_s = run.family.tasks.index(held), run.family.tasks.index(seen)
    assert [name for name, _ in asked] == [held.name, seen.name]
    assert asked[0][1][:, 0].tolist() == [1000.0 * ih + j for j in range(3)]
    assert out == {held.name: [1000.0 * ih + j + 10 * ih for j in range(3)],
                   seen.name: [1000.0 * i_s + j + 10 * i_s for j in range(3)]}
    for task, split, index in ((held, "held out", ih), (seen, "seen", i_s)):
        tensors, meta, _ = load_artifact(run.run_dir / "samples" / f"{task.name}.safetensors")
        assert tensors["params"][:, 0].tolist() == [1000.0 * index + j for j in range(3)]
        assert tensors["accuracy"].tolist() == out[task.name] and tensors["params"].shape == (3, 3)
        assert meta["task"] == task.name and meta["guidance"] == 1.5 and meta["split"] == split
        assert meta["spec"] == run.spec().to_dict() and meta["inputs"] == {"generator": "GEN-DIGEST"}


def test_sample_tasks_defaults_to_the_config(tmp_path):
    run = make(tmp_path)
    calls, loaded = fake_generator(run)
    fake_accuracy(run)
    task = run.seen[0]
    out = sample_tasks(run, [task.name])
    assert calls == ["load", ([task.name], 2, None, loaded)] and len(out[task.name]) == 2
    _, meta, _ = load_artifact(run.run_dir / "samples" / f"{task.name}.safetensors")
    assert meta["guidance"] == 2.5
    with pytest.raises(ValueError, match="unknown task 'nine-ten'"):
        sample_tasks(run, ["nine-ten"])

"""pdiff_fast.tasks.evaluate's parts, value by value, with the step's collaborators faked (no model is
trained or sampled): every model row carries its identity in its first value and the fake accuracy of
a row on a task is that value plus a quarter of the task's index, so each number of the report says
which rows were scored on which task. Checked: the random initialisations' seeds, the nearest seen
task (never the task itself), every set of the zero-shot table, the guidance sweep (the configured
scale from the generated file, the others sampled), the fine-tuning starts, record steps and curves,
and the report as written. Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md); test_task_pipeline.py runs the real step end to end."""
import json
import math

import pytest
import torch

from pdiff_fast.data import TensorData
from pdiff_fast.tasks import evaluate as ev
from pdiff_fast.tasks import report as task_report
from pdiff_fast.tasks.config import TaskConfig
from pdiff_fast.tasks.evaluate import FINETUNE_RECORD, GUIDANCE_SWEEP, RANDOM_INIT_SEED, EvaluateStep, _cycle
from pdiff_fast.tasks.family import Task, TaskFamily

D = 3


def rows(*firsts):
    """Model rows whose first value is given (the rest 0.5, a value no check reads)."""
    out = torch.full((len(firsts), D), 0.5)
    out[:, 0] = torch.tensor(firsts, dtype=torch.float32)
    return out


class FakeModel:
    def __init__(self, seed):
        self.seed = seed


class FakeSpec:
    def flatten(self, models):
        assert len(models) == 1
        return rows(models[0].seed)


class FakeZoo:
    def __init__(self):
        # seen task 0: rows 400, 401; seen task 1: rows 410, 411, 412
        self.params = rows(400, 410, 401, 411, 412)
        self.task = torch.tensor([0, 1, 0, 1, 1])
        self.accuracy = torch.tensor([50.0, 60.0, 70.0, 80.0, 90.0])
        self.meta = {"models_per_second": 5.0, "loop_models_per_second": 2.0}

    def rows_of(self, i):
        return self.params[self.task == i]


EMBEDDING = {"0-1": 0.0, "1-0": 0.9, "2-3": 3.0, "3-1": 2.0}


class Step(EvaluateStep):
    """EvaluateStep with its collaborators faked (nothing of TaskParts' __init__ runs)."""

    def __init__(self, tmp_path, **config):
        src = TensorData("toy", torch.zeros(6, 2), torch.tensor([0, 1, 2, 3, 1, 0]), torch.zeros(4, 2),
                         torch.tensor([0, 1, 2, 3]), 4)
        self.family = TaskFamily([Task("0-1", (0, 1)), Task("1-0", (1, 0)), Task("2-3", (2, 3)), Task("3-1", (3, 1))],
                                  src)
        t = self.family.tasks
        self.seen, self.held_out = [t[0], t[2]], [t[1], t[3]]
        self.config = TaskConfig(**{"samples_per_task": 2, "finetune_models": 3, "finetune_steps": 5, "guidance": 4.0,
                                    "finetune_lr": 0.25, "batch_size": 7, "seed": 11, "memory_budget_mb": 3, **config})
        self.device = torch.device("cpu")
        self.run_dir = tmp_path
        self.timings = {}
        self.zoo_ = FakeZoo()
        self.loaded = (self.zoo_, "ae", "model", "std", "gen-digest")
        n = self.config.samples_per_task
        # generated rows of every family task, not in task order: task k's rows are 200 + 10 k + j
        order = [2, 0, 3, 1]
        self.generated = {"params": torch.cat([rows(*(200 + 10 * k + j for j in range(n))) for k in order]),
                          "task": torch.tensor(order).repeat_interleave(n),
                          "unconditional": rows(300, 301)}
        self.calls = []
        self.the_spec = FakeSpec()

    # the collaborators
    def spec(self):
        return self.the_spec

    def new_model(self, seed=None):
        return FakeModel(seed)

    def base_model(self):
        return "base"

    def load_generator(self):
        return self.loaded

    def _load(self, artifact, inputs):
        self.calls.append(("load", artifact, inputs))
        return self.generated, {}, "generated-digest"

    def embed(self, model, tasks):
        assert model == "model"
        return torch.tensor([[EMBEDDING[t.name]] for t in tasks])

    def accuracy(self, task, flat):
        return flat[:, 0].double() + 0.25 * self.family.tasks.index(task)

    def generate(self, tasks, n=None, guidance=None, loaded=None, scheduler=None):
        assert tasks == self.held_out and loaded is self.loaded and n is None and scheduler is None
        self.calls.append(("generate", guidance))
        k = self.config.samples_per_task
        return rows(*(1000 * guidance + 10 * i + j for i in range(len(tasks)) for j in range(k)))

    def saved_timings(self):
        return {"zoo_models_per_second": 7.0, "train": 1.5}

    def path(self, what):
        return self.run_dir / {"report": "report.json", "table": "report.md"}[what]

    def _bookkeeping(self, artifact, config=True):
        self.calls.append(("bookkeeping", artifact, config))


def fake_train_models(calls):
    def train(model, spec, starts, x, y, counts, task_of_row, **kw):
        calls.append({"model": model, "spec": spec, "starts": starts.clone(), "x": x, "y": y, "counts": counts,
                      "task_of_row": task_of_row.clone(), **kw})
        # snapshot s of a row: its first value + 0.5 s
        return [starts + 0.5 * s for s in range(len(kw["record_at"]))]
    return train


def test_constants():
    assert RANDOM_INIT_SEED == 10_000 and GUIDANCE_SWEEP == (0.0, 1.0, 2.0, 4.0)
    assert FINETUNE_RECORD[:6] == (0, 1, 2, 3, 4, 6) and FINETUNE_RECORD[-1] == 512


def test_cycle_repeats_rows_in_order():
    r = rows(1, 2)
    assert _cycle(r, 5)[:, 0].tolist() == [1, 2, 1, 2, 1]
    assert _cycle(r, 1)[:, 0].tolist() == [1]
    assert _cycle(rows(1, 2, 3), 2)[:, 0].tolist() == [1, 2]


def test_random_inits_are_seeded_apart_from_the_zoo(tmp_path):
    r = Step(tmp_path).random_inits(3)
    assert r[:, 0].tolist() == [10000, 10001, 10002] and r.shape == (3, D) and r.device.type == "cpu"


def test_nearest_seen_is_never_the_task_itself(tmp_path):
    s = Step(tmp_path)
    t = s.family.tasks
    # seen: 0-1 at 0.0 and 2-3 at 3.0; 1-0 at 0.9 and 3-1 at 2.0
    assert s.nearest_seen("model", [t[0], t[2], t[1], t[3]]) == [1, 0, 0, 1]
    assert s.nearest_seen("model", [t[3]]) == [1]
    s.seen = [t[0], t[1], t[2]]
    assert s.nearest_seen("model", [t[1], t[3]]) == [0, 2]


def test_guidance_sweep_takes_the_configured_scale_from_the_generated_file(tmp_path):
    s = Step(tmp_path, guidance=1.5)
    out = s._guidance_sweep(s.generated, s.loaded)
    assert [c[1] for c in s.calls] == [0.0, 1.0, 2.0, 4.0]  # sampled, 1.5 is not
    assert list(out) == ["0", "1", "1.5", "2", "4"]
    # task 1-0 (index 1) is scored on rows 1000 g + 0, 1, task 3-1 (index 3) on 1000 g + 10, 11
    for g in (0, 1, 2, 4):
        a, b = 1000 * g + 0.5 + 0.25, 1000 * g + 10.5 + 0.75
        assert out[f"{g:g}"] == {"mean": (a + b) / 2, "worst": a}
    a, b = 210.5 + 0.25, 230.5 + 0.75  # the generated rows of tasks 1 and 3
    assert out["1.5"] == {"mean": (a + b) / 2, "worst": a}


def test_guidance_sweep_at_a_scale_of_the_sweep(tmp_path):
    s = Step(tmp_path, guidance=2.0)
    out = s._guidance_sweep(s.generated, s.loaded)
    assert [c[1] for c in s.calls] == [0.0, 1.0, 4.0] and list(out) == ["0", "1", "2", "4"]
    assert out["2"] == {"mean": (210.75 + 231.25) / 2, "worst": 210.75}


def test_guidance_sweep_worst_is_the_lowest_task(tmp_path):
    s = Step(tmp_path, guidance=4.0)
    s.held_out = [s.family.tasks[3], s.family.tasks[1]]
    out = s._guidance_sweep(s.generated, s.loaded)
    assert out["4"] == {"mean": (231.25 + 210.75) / 2, "worst": 210.75}


@pytest.mark.parametrize("steps, record", [(5, [0, 1, 2, 3, 4, 5]), (7, [0, 1, 2, 3, 4, 6, 7]),
                                           (6, [0, 1, 2, 3, 4, 6]), (1, [0, 1])])
def test_finetune_records_at_the_fixed_steps_below_and_the_last(tmp_path, monkeypatch, steps, record):
    calls = []
    monkeypatch.setattr(ev, "train_models", fake_train_models(calls))
    s = Step(tmp_path, finetune_steps=steps)
    got, _ = s._finetune(s.generated, rows(10000, 10001, 10002), s.zoo_, [1, 0])
    assert got == record and [c["record_at"] for c in calls] == [record] * 3


def test_finetune_starts_and_curves(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(ev, "train_models", fake_train_models(calls))
    s = Step(tmp_path)
    record, curves = s._finetune(s.generated, rows(10000, 10001, 10002, 10003), s.zoo_, [1, 0])
    assert record == [0, 1, 2, 3, 4, 5]
    starts = {name: c["starts"][:, 0].tolist() for name, c in zip(task_report.STARTS, calls)}
    # held-out 1-0 (family index 1) then 3-1 (index 3), three rows each
    assert starts == {"generated": [210, 211, 210, 230, 231, 230],
                      "random": [10000, 10001, 10002, 10000, 10001, 10002],
                      "nearest task": [410, 411, 412, 400, 401, 400]}
    x, y, counts = s.family.stacked(s.held_out)
    for c in calls:
        assert c["model"] == "base" and c["spec"] is s.the_spec and c["task_of_row"].tolist() == [0, 0, 0, 1, 1, 1]
        assert torch.equal(c["x"], x) and torch.equal(c["y"], y) and torch.equal(c["counts"], counts)
        assert (c["steps"], c["lr"], c["batch_size"], c["seed"], c["memory_budget_bytes"]) == (5, 0.25, 7, 12, 3 << 20)
    assert list(curves) == ["generated", "random", "nearest task"]
    for name, firsts in starts.items():
        task_offset = [0.25] * 3 + [0.75] * 3
        assert curves[name] == [[f + o + 0.5 * k for k in range(6)] for f, o in zip(firsts, task_offset)]


def test_evaluate_writes_the_report(tmp_path, monkeypatch):
    calls, plotted = [], []
    monkeypatch.setattr(ev, "train_models", fake_train_models(calls))
    monkeypatch.setattr(task_report, "plot_report", lambda report, out: plotted.append((report, out)))
    clock = iter([100.0, 100.5, 200.0, 202.0, 300.0, 304.0])  # the step's three timed parts, start and end
    monkeypatch.setattr(ev.time, "perf_counter", lambda: next(clock))
    s = Step(tmp_path)
    report = s.evaluate()
    assert next(clock, "no more") == "no more"
    assert s.calls[0] == ("load", "generated", {"generator": "gen-digest"})
    assert s.calls[-1] == ("bookkeeping", "report", False)
    assert plotted == [(report, tmp_path)]
    assert json.loads((tmp_path / "report.json").read_text()) == json.loads(json.dumps(report))
    assert (tmp_path / "report.md").read_text() == task_report.format_report(report)

    pt = report["per_task"]
    assert list(pt) == ["0-1", "2-3", "1-0", "3-1"]  # seen, then held out
    # 0-1 (index 0, seen task 0, nearest seen 2-3); 2-3 (index 2, seen task 1, nearest 0-1)
    assert pt["0-1"] == {"split": "seen", "nearest": "2-3", "accuracy": {
        "generated": [200.0, 201.0], "unconditional": [300.0, 301.0], "random init": [10000.0, 10001.0],
        "zoo mean": pt["0-1"]["accuracy"]["zoo mean"], "nearest task": [410.0, 411.0, 412.0],
        "zoo (own task)": [400.0, 401.0]}}
    assert pt["2-3"] == {"split": "seen", "nearest": "0-1", "accuracy": {
        "generated": [220.5, 221.5], "unconditional": [300.5, 301.5], "random init": [10000.5, 10001.5],
        "zoo mean": pt["2-3"]["accuracy"]["zoo mean"], "nearest task": [400.5, 401.5], "zoo (own task)": [410.5, 411.5, 412.5]}}
    # held out: 1-0 (index 1, nearest 0-1), 3-1 (index 3, nearest 2-3); no own zoo rows
    assert pt["1-0"] == {"split": "held out", "nearest": "0-1", "accuracy": {
        "generated": [210.25, 211.25], "unconditional": [300.25, 301.25], "random init": [10000.25, 10001.25],
        "zoo mean": pt["1-0"]["accuracy"]["zoo mean"], "nearest task": [400.25, 401.25]}}
    assert pt["3-1"]["nearest"] == "2-3" and pt["3-1"]["accuracy"]["nearest task"] == [410.75, 411.75, 412.75]
    assert pt["3-1"]["accuracy"]["generated"] == [230.75, 231.75]
    # the zoo's mean row (first values 400, 410, 401, 411, 412), one per task
    for name, offset in (("0-1", 0), ("1-0", 0.25), ("2-3", 0.5), ("3-1", 0.75)):
        assert pt[name]["accuracy"]["zoo mean"] == [pytest.approx(406.8 + offset, abs=1e-4)]

    assert report["zero_shot"] == task_report.summarize_zero_shot(pt)
    assert report["zero_shot"]["held out"]["generated"]["mean"] == pytest.approx((210.75 + 231.25) / 2)
    assert report["guidance_sweep"] == {"0": {"mean": (0.75 + 11.25) / 2, "worst": 0.75},
                                        "1": {"mean": (1000.75 + 1011.25) / 2, "worst": 1000.75},
                                        "2": {"mean": (2000.75 + 2011.25) / 2, "worst": 2000.75},
                                        "4": {"mean": (210.75 + 231.25) / 2, "worst": 210.75}}
    assert report["finetune_record"] == [0, 1, 2, 3, 4, 5]
    assert report["finetune_curves"]["random"][0] == [10000.25 + 0.5 * k for k in range(6)]
    # the held-out tasks' nearest seen tasks: 1-0's is 0-1 (zoo rows 400, 401), 3-1's is 2-3 (410, 411, 412)
    assert [c[0] for c in report["finetune_curves"]["nearest task"]] == [400.25, 401.25, 400.25, 410.75, 411.75, 412.75]
    assert [c[0] for c in report["finetune_curves"]["generated"]] == [210.25, 211.25, 210.25, 230.75, 231.75, 230.75]
    assert report["finetune"] == task_report.summarize_finetune(report["finetune_record"], report["finetune_curves"])
    assert report["targets"] == task_report.targets(report["zero_shot"], report["finetune"])
    assert report["config"] == s.config.to_dict() and report["device"] == "cpu"
    assert report["tasks"] == {"seen": ["0-1", "2-3"], "held out": ["1-0", "3-1"]}
    assert report["zoo"] == {"models": 5, "models_per_second": 7.0, "loop_models_per_second": 2.0,
                             "median_accuracy": 70.0}
    assert (report["finetune_steps"], report["finetune_lr"], report["batch_size"]) == (5, 0.25, 7)
    assert report["inputs"] == {"generator": "gen-digest", "generated": "generated-digest"}
    t = report["timings"]
    assert t == {"zoo_models_per_second": 7.0, "train": 1.5, "evaluate_zero_shot": 0.5, "guidance_sweep": 2.0,
                 "finetune": 4.0}
    assert list(t) == ["zoo_models_per_second", "train", "evaluate_zero_shot", "guidance_sweep", "finetune"]
    assert s.timings == {"evaluate_zero_shot": 0.5, "guidance_sweep": 2.0, "finetune": 4.0}


def test_evaluate_zoo_speeds_from_the_timings_or_the_zoo(tmp_path, monkeypatch):
    monkeypatch.setattr(ev, "train_models", fake_train_models([]))
    monkeypatch.setattr(task_report, "plot_report", lambda report, out: None)
    s = Step(tmp_path, samples_per_task=3, finetune_models=2)
    s.generated["unconditional"] = rows(300)
    s.saved_timings = lambda: {"zoo_loop_models_per_second": 0.5}
    report = s.evaluate()
    assert report["zoo"]["models_per_second"] == 5.0 and report["zoo"]["loop_models_per_second"] == 0.5
    # three random inits for the table (more than the two fine-tuned)
    assert report["per_task"]["1-0"]["accuracy"]["random init"] == [10000.25, 10001.25, 10002.25]
    assert report["finetune_curves"]["random"][0][0] == 10000.25 and len(report["finetune_curves"]["random"]) == 4
    assert report["per_task"]["1-0"]["accuracy"]["generated"] == [210.25, 211.25, 212.25]
    assert math.isfinite(report["zoo"]["median_accuracy"])

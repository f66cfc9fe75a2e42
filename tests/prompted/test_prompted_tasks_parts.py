"""pdiff_fast.prompted.tasks (PromptedTaskPDiff) one piece at a time, with its heavy collaborators faked
(the batched trainer, the capacity check, the checkpoint choice, the generator, the scorers and the
calibration): the validation split it carves, the span zoo it keeps with each row's records, the
prompt range, the conditions it trains on, the prompts and embeddings it samples with, the generated
file, and every number of the report as written. Model rows carry their identity in their first
value, and the fake scorers answer with it, so each value says which rows were scored on what.
Written against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md);
test_prompted_tasks.py trains, samples and judges whole prompted task runs."""
import json
from types import SimpleNamespace

import pytest
import torch

from pdiff_fast.data import carve_validation, digits
from pdiff_fast.diffusion import samplers
from pdiff_fast.io import load_artifact
from pdiff_fast.prompted import tasks as pt
from pdiff_fast.prompted.encoder import AccuracyEncoder, TaskAndAccuracy
from pdiff_fast.prompted.prompts import check_prompts, default_prompts, normalise, spread
from pdiff_fast.prompted.tasks import PromptedTaskPDiff
from pdiff_fast.nn.set_encoder import SetEncoder
from pdiff_fast.tasks import conditional
from pdiff_fast.tasks import parts as parts_lib
from pdiff_fast.tasks.config import TaskConfig
from pdiff_fast.tasks.family import support
from pdiff_fast.tasks.pdiff import TaskPDiff
from pdiff_fast.tasks.zoo import Zoo
from tests.fakes import Clock


@pytest.fixture(autouse=True)
def no_warm_up(monkeypatch):
    monkeypatch.setattr(parts_lib, "warm_allocator", lambda: None)


def cfg(**kw):
    # held_out_pairs=44: one pair seen (2 seen tasks), 88 tasks held out
    return TaskConfig(**({"prompted": True, "device": "cpu", "hidden": [3], "seed": 5, "held_out_pairs": 44,
                          "zoo_runs": 2, "zoo_steps": 4, "span_keep": 2, "zoo_lr": 0.25, "batch_size": 9,
                          "memory_budget_mb": 3, "samples_per_task": 2, "guidance": 2.5, "val_fraction": 0.25,
                          "support": 3, "embed_dim": 6, "encoder_width": 8} | kw))


def make(tmp_path, config=None, **kw):
    logged = []
    run = PromptedTaskPDiff(config or cfg(), tmp_path / "run", progress=False, log=logged.append, **kw)
    run.logged = logged
    return run


def test_the_validation_split_is_carved_before_the_tasks(tmp_path):
    run = make(tmp_path)
    assert isinstance(run, TaskPDiff) and PromptedTaskPDiff.PROMPTED is True
    train, x_val, y_val = carve_validation(digits(), 0.25, 5)
    src = run.family.source
    assert torch.equal(src.x_train, train.x_train) and torch.equal(src.y_train, train.y_train)
    assert torch.equal(src.x_test, train.x_test) and run.family.tasks == run.validation.tasks
    v = run.validation.source
    assert v.name == f"{train.name} validation" and v.num_classes == train.num_classes == 10
    assert torch.equal(v.x_train, x_val) and torch.equal(v.y_train, y_val)
    assert torch.equal(v.x_test, x_val) and torch.equal(v.y_test, y_val)
    other = make(tmp_path / "b", cfg(val_fraction=0.5, seed=6)).validation.source
    assert torch.equal(other.y_train, carve_validation(digits(), 0.5, 6)[2])


def test_val_accuracy_scores_on_the_tasks_validation_rows(tmp_path):
    run = make(tmp_path)
    asked = []
    run.scored = lambda d, flat: asked.append((d, flat)) or "ACC"
    task = run.family.tasks[3]
    assert run.val_accuracy(task, "FLAT") == "ACC"
    (d, flat), = asked
    assert d is run.validation.data(task) and flat == "FLAT"


# --- zoo -----------------------------------------------------------------------------------------

@pytest.fixture
def trainer(monkeypatch):
    """check_fits and train_models faked: run r's snapshot at step s (1-based) is 100 r + s in every value."""
    calls = {"fits": [], "train": []}

    def check_fits(what, rows, values, folder, **kw):
        calls["fits"].append((what, rows, values, folder, kw))

    def train_models(model, spec, starts, x, y, counts, task, **kw):
        calls["train"].append((model, spec, starts, x, y, counts, task, kw))
        runs = len(starts)
        return [(100 * torch.arange(runs, dtype=torch.float32) + s)[:, None].expand(-1, spec.dim).clone()
                for s in kw["record_at"]]
    monkeypatch.setattr(pt, "check_fits", check_fits)
    monkeypatch.setattr(pt, "train_models", train_models)
    return calls


def scorers(run):
    """val_accuracy: the row's value mod 100 (its step) x 10 + the task's family index; accuracy: the row's
    value + 0.5 + 1000 x the task's family index."""
    asked = {"val": [], "test": []}

    def val_accuracy(task, flat):
        asked["val"].append((task.name, flat.clone()))
        return (flat[:, 0] % 100) * 10 + run.family.tasks.index(task)

    def accuracy(task, flat):
        asked["test"].append((task.name, flat.clone()))
        return flat[:, 0] + 0.5 + 1000 * run.family.tasks.index(task)
    run.val_accuracy, run.accuracy = val_accuracy, accuracy
    return asked


def test_zoo_keeps_span_keep_checkpoints_of_every_run(tmp_path, trainer, monkeypatch):
    run = make(tmp_path)
    asked = scorers(run)
    chosen = []

    def even(acc, n):
        chosen.append((acc, n))
        return [0, 3] if len(chosen) % 2 else [1, 2]  # runs 0 and 2: steps 1, 4; runs 1 and 3: steps 2, 3
    monkeypatch.setattr(pt, "even_in_accuracy", even)
    monkeypatch.setattr(pt.time if hasattr(pt, "time") else parts_lib.time, "perf_counter", Clock(10.0, 12.0))
    spec = run.spec()
    init = spec.flatten([run.base_model()])[0]
    ti = [run.family.tasks.index(t) for t in run.seen]
    zoo = run.zoo()

    assert trainer["fits"] == [("tasks zoo: 4 runs x 4 recorded steps", 16, spec.dim, run.run_dir,
                                {"copies": 2, "device": run.device})]
    (model, sp, starts, x, y, counts, task, kw), = trainer["train"]
    assert model is run.base_model() and sp.names == spec.names and torch.equal(starts, init.expand(4, -1))
    want = run.family.stacked(run.seen)
    assert all(torch.equal(a, b) for a, b in zip((x, y, counts), want))
    assert task.tolist() == [0, 0, 1, 1]
    assert kw == {"steps": 4, "lr": 0.25, "batch_size": 9, "seed": 5, "record_at": [1, 2, 3, 4],
                  "memory_budget_bytes": 3 << 20}
    # validation: each seen task's runs at every step, step-major
    assert [name for name, _ in asked["val"]] == [t.name for t in run.seen]
    assert asked["val"][0][1][:, 0].tolist() == [1, 101, 2, 102, 3, 103, 4, 104]
    assert asked["val"][1][1][:, 0].tolist() == [201, 301, 202, 302, 203, 303, 204, 304]
    # the choice: each run's validation accuracies over the steps
    assert chosen == [([10.0 * s + ti[0] for s in (1, 2, 3, 4)], 2), ([10.0 * s + ti[0] for s in (1, 2, 3, 4)], 2),
                      ([10.0 * s + ti[1] for s in (1, 2, 3, 4)], 2), ([10.0 * s + ti[1] for s in (1, 2, 3, 4)], 2)]
    kept = [1, 4, 102, 103, 201, 204, 302, 303]
    assert zoo.params[:, 0].tolist() == kept and zoo.params.shape == (8, spec.dim)
    assert zoo.task.tolist() == [0, 0, 0, 0, 1, 1, 1, 1] and zoo.run.tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert zoo.step.tolist() == [1, 4, 2, 3, 1, 4, 2, 3]
    assert zoo.val_accuracy.tolist() == [10.0 * (v % 100) + ti[i // 4] for i, v in enumerate(kept)]
    # test accuracy: each seen task's kept rows
    assert [name for name, _ in asked["test"]] == [t.name for t in run.seen]
    assert asked["test"][0][1][:, 0].tolist() == kept[:4] and asked["test"][1][1][:, 0].tolist() == kept[4:]
    assert zoo.accuracy.tolist() == [v + 0.5 + 1000 * ti[i // 4] for i, v in enumerate(kept)]
    assert torch.equal(zoo.init, init) and zoo.tasks == [t.name for t in run.seen]
    assert zoo.meta == {"family": "digit-pairs", "held_out": [t.name for t in run.held_out], "recipe": "span",
                        "n_val": len(run.validation.source.y_train), "val_fraction": 0.25,
                        "config": run._fields("zoo"), "inputs": {}}
    assert run.timings == {"zoo_train": 2.0, "zoo_models_per_second": 2.0}
    saved = Zoo.load(run.path("zoo"))
    assert torch.equal(saved.params, zoo.params) and torch.equal(saved.step, zoo.step) and saved.meta == zoo.meta
    assert torch.equal(saved.val_accuracy, zoo.val_accuracy)
    assert json.loads(run.path("timings").read_text()) == run.timings
    assert json.loads(run.path("config").read_text()) == run.config.to_dict()
    lo, hi = zoo.val_accuracy.min(), zoo.val_accuracy.max()
    assert run.logged == ["zoo: training 4 runs (2 per seen task) at once, every step recorded",
                          f"zoo: 8 checkpoints (2 per run) spanning {lo:.2f}..{hi:.2f}% on validation in 2.0 s"]


def test_zoo_with_the_real_choice(tmp_path, trainer):
    run = make(tmp_path, cfg(span_keep=4))
    scorers(run)
    zoo = run.zoo()
    assert zoo.step.tolist() == [1, 2, 3, 4] * 4 and len(zoo) == 16


def test_span_keep_cannot_exceed_the_steps(tmp_path, trainer):
    run = make(tmp_path, cfg(span_keep=5, zoo_steps=4))
    with pytest.raises(ValueError) as e:
        run.zoo()
    assert str(e.value) == "span_keep=5 checkpoints per run cannot be chosen from zoo_steps=4 steps"
    assert trainer["fits"] == []
    scorers(run)
    run.config.span_keep = 4
    assert len(run.zoo()) == 16  # span_keep == zoo_steps: every step kept


# --- prompts and conditions -------------------------------------------------------------------------

def fake_zoo(val=(40.0, 80.0, 60.0), task=(0, 1, 0)):
    return SimpleNamespace(val_accuracy=None if val is None else torch.tensor(val), task=torch.tensor(task),
                           __len__=None)


def test_prompt_range(tmp_path):
    lo, hi = PromptedTaskPDiff.prompt_range(fake_zoo((60.0, 42.5, 80.25)))
    assert (lo, hi) == (42.5, 80.25) and type(lo) is float and type(hi) is float
    with pytest.raises(ValueError) as e:
        PromptedTaskPDiff.prompt_range(fake_zoo(None))
    assert str(e.value) == "the zoo carries no validation accuracy; rerun `pdiff-fast tasks zoo` with prompted: true"


def test_condition_encoder_adds_the_accuracy_encoder(tmp_path):
    run = make(tmp_path)
    enc = run._condition_encoder(11)
    assert isinstance(enc, TaskAndAccuracy) and isinstance(enc.sets, SetEncoder)
    assert isinstance(enc.accuracy, AccuracyEncoder) and enc.accuracy.out_dim == 6 and enc.out_dim == 6
    assert enc.sets.out_dim == 6


class Sized(SimpleNamespace):
    def __len__(self):
        return len(self.task)


def test_conditions_are_a_support_set_and_the_normalised_accuracy(tmp_path):
    run = make(tmp_path)
    zoo = Sized(val_accuracy=torch.tensor([40.0, 80.0, 60.0, 50.0]), task=torch.tensor([0, 1, 0, 1]))
    keys, draw = run._conditions(zoo)
    assert keys.tolist() == [0, 1, 2, 3]
    sets, a = draw(torch.tensor([2, 1]), torch.Generator().manual_seed(7))
    sx, sy, counts = run.family.stacked(run.seen)
    want = support(sx, sy, counts, torch.tensor([0, 1]), 3, torch.Generator().manual_seed(7), 2)
    assert torch.equal(sets, want) and sets.shape == (2, 3, 66)
    assert torch.equal(a, torch.tensor([[0.5], [1.0]]))


def test_prompts_and_their_spread(tmp_path):
    run = make(tmp_path)
    assert run.prompts(40.0, 80.0) == default_prompts(40.0, 80.0)
    assert torch.equal(run.per_model_prompts(fake_zoo(), 20), spread(default_prompts(40.0, 80.0), 20))
    run = make(tmp_path, cfg(prompt_accuracy=[50, 70.5]))
    assert run.prompts(40.0, 80.0) == [50.0, 70.5] == check_prompts([50, 70.5], 40.0, 80.0, False)
    assert run.per_model_prompts(fake_zoo(), 4).tolist() == [50.0, 50.0, 70.5, 70.5]
    with pytest.raises(ValueError, match="90"):
        make(tmp_path, cfg(prompt_accuracy=[90.0])).prompts(40.0, 80.0)
    assert make(tmp_path, cfg(prompt_accuracy=[90.0], prompt_extrapolate=True)).prompts(40.0, 80.0) == [90.0]


class FakeEncoder:
    """sets: a support set -> its first value (x 1, + 0 in the other 2 columns); accuracy: a -> 100 a."""

    def sets(self, s):
        assert not torch.is_grad_enabled()
        return torch.stack([s[:, :, :64].sum((1, 2)), torch.zeros(len(s))], 1)

    def accuracy(self, a):
        assert not torch.is_grad_enabled()
        return torch.cat([torch.zeros_like(a), 100 * a], 1)


def test_embed_is_the_support_sets_embedding(tmp_path):
    run = make(tmp_path)
    tasks = [run.held_out[0], run.seen[1]]
    got = run.embed(SimpleNamespace(encoder=FakeEncoder()), tasks)
    sets = run.support_sets(tasks)
    assert torch.equal(got[:, 0], sets[:, :, :64].sum((1, 2))) and got.shape == (2, 2)


@pytest.fixture
def conditioned(monkeypatch):
    calls = []

    def generate_conditioned(ae, model, scheduler, emb, guidance, **kw):
        calls.append((ae, model, scheduler, emb, guidance, kw))
        return emb[:, :1] + torch.zeros(len(emb), 3)
    monkeypatch.setattr(conditional, "generate_conditioned", generate_conditioned)
    monkeypatch.setattr(samplers, "make_scheduler", lambda *a: ("SCHEDULER", *a))
    return calls


class FakeStd:
    def inverse(self, flat):
        return flat * -1


def test_generate_adds_each_prompts_embedding_to_each_tasks(tmp_path, conditioned):
    run = make(tmp_path, cfg(prompt_accuracy=[50.0, 70.0], sampler="ddim", sample_steps=4, eta=0.5))
    zoo = fake_zoo((40.0, 80.0))
    model = SimpleNamespace(encoder=FakeEncoder())
    tasks = [run.held_out[0], run.seen[1]]
    out = run.generate(tasks, 4, loaded=(zoo, "AE", model, FakeStd(), "D"))
    (ae, m, scheduler, emb, guidance, kw), = conditioned
    assert ae == "AE" and m is model and scheduler == ("SCHEDULER", "ddim", 4, 0.5) and guidance == 2.5
    assert kw == {"seed": 5, "device": run.device, "memory_budget_bytes": 3 << 20, "progress": False}
    sets = run.support_sets(tasks)[:, :, :64].sum((1, 2))
    assert emb.shape == (8, 2)
    assert torch.equal(emb[:, 0], sets.repeat_interleave(4))  # task-major
    assert torch.allclose(emb[:, 1], torch.tensor([25.0, 25.0, 75.0, 75.0] * 2))  # prompts 50, 50, 70, 70
    assert torch.equal(out, -(emb[:, :1] + torch.zeros(8, 3)))


def test_generate_defaults(tmp_path, conditioned):
    run = make(tmp_path, cfg(prompt_accuracy=[50.0, 70.0]))
    zoo = fake_zoo((40.0, 80.0))
    model = SimpleNamespace(encoder=FakeEncoder())
    run.load_generator = lambda: (zoo, "AE", model, None, "D")
    out = run.generate([run.seen[0]], guidance=0.0, scheduler="MINE")
    (_, _, scheduler, emb, guidance, _), = conditioned
    assert scheduler == "MINE" and guidance == 0.0 and emb.shape == (2, 2) and out.shape == (2, 3)
    assert torch.equal(out, emb[:, :1] + torch.zeros(2, 3))  # no standardizer: as sampled


# --- sample ---------------------------------------------------------------------------------------

def test_sample_saves_the_prompts_with_the_models(tmp_path, monkeypatch):
    run = make(tmp_path, cfg(prompt_accuracy=[50.0, 70.0], samples_per_task=4))
    fits = []
    monkeypatch.setattr(pt, "check_fits", lambda *a, **kw: fits.append((a, kw)))
    zoo = fake_zoo((40.0, 80.0))
    loaded = (zoo, "AE", "MODEL", None, "GEN-DIGEST")
    run.load_generator = lambda: loaded
    asked = []

    def generate(tasks, loaded=None):
        asked.append(([t.name for t in tasks], loaded))
        return torch.cat([torch.arange(4.0) + 10 * run.family.tasks.index(t) for t in tasks])[:, None].expand(-1, 3)
    run.generate = generate
    monkeypatch.setattr(parts_lib.time, "perf_counter", Clock(1.0, 3.0))
    out = run.sample()
    tasks = run.seen + run.held_out
    assert fits == [(("tasks sample: 4 models x 90 tasks", 360, run.spec().dim, run.run_dir),
                     {"copies": 3, "device": run.device})]
    assert asked == [([t.name for t in tasks], loaded)]
    index = [run.family.tasks.index(t) for t in tasks]
    assert out["task"].tolist() == [i for i in index for _ in range(4)]
    assert out["params"][:, 0].tolist() == [10.0 * i + j for i in index for j in range(4)]
    assert out["prompt"].tolist() == [50.0, 50.0, 70.0, 70.0] * 90
    tensors, meta, _ = load_artifact(run.path("generated"))
    assert tensors.keys() == {"params", "task", "prompt"} and all(torch.equal(tensors[k], out[k]) for k in out)
    assert meta["tasks"] == run.family.names and meta["prompt_range"] == [40.0, 80.0]
    assert meta["inputs"] == {"generator": "GEN-DIGEST"} and meta["config"] == run._fields("generated")
    assert run.timings == {"sample": 2.0}
    assert run.logged == [f"generated 360 models (4 for each of 90 tasks, over 2 prompts) in 2.0 s -> "
                          f"{run.path('generated')}"]


# --- evaluate -------------------------------------------------------------------------------------

def rows(*firsts, dim):
    out = torch.zeros(len(firsts), dim)
    out[:, 0] = torch.tensor(firsts, dtype=torch.float32)
    return out


def plant_for_evaluate(run, monkeypatch):
    spec = run.spec()
    d = spec.dim
    # zoo: seen task 0 rows 400, 402; seen task 1 rows 410, 412, 416 (mean 408)
    zoo = Zoo(rows(400, 410, 402, 412, 416, dim=d), torch.tensor([0, 1, 0, 1, 1]), torch.zeros(5, dtype=torch.int64),
              torch.tensor([50.0, 60.0, 70.0, 80.0, 90.0]), torch.zeros(d), spec, [t.name for t in run.seen], {},
              val_accuracy=torch.tensor([41.0, 42.0, 43.0, 44.0, 46.0]), step=torch.arange(5))
    tasks = run.seen + run.held_out
    index = [run.family.tasks.index(t) for t in tasks]
    n = run.config.samples_per_task
    gen = {"params": torch.cat([rows(*(1000 * i + j for j in range(n)), dim=d) for i in index]),
           "task": torch.tensor(index).repeat_interleave(n), "prompt": torch.tensor([50.0, 70.0]).repeat(len(tasks))}
    run._save("generated", gen, {}, {"generator": "GEN"})
    run.load_generator = lambda: (zoo, "AE", "MODEL", "STD", "GEN")
    # nearest seen task: task i's is seen task (i % 2)
    run.nearest_seen = lambda model, ts: [i % 2 if model == "MODEL" else 0 for i in range(len(ts))]
    run.random_inits = lambda k: rows(*(300 + j for j in range(k)), dim=d)
    asked = {"test": [], "val": []}

    def accuracy(task, flat):
        asked["test"].append(task.name)
        return flat[:, 0] + 0.5

    def val_accuracy(task, flat):
        asked["val"].append(task.name)
        return flat[:, 0] + 0.25
    run.accuracy, run.val_accuracy = accuracy, val_accuracy
    calls = {}
    monkeypatch.setattr(pt.task_calibration, "calibrate",
                        lambda per_task, lo, hi: calls.setdefault("calibrate", (per_task, lo, hi)) and {"CAL": 1})
    monkeypatch.setattr(pt.task_calibration, "format_report", lambda report: f"TABLE {sorted(report)}")
    monkeypatch.setattr(pt.task_calibration, "plot_calibration",
                        lambda report, folder: calls.setdefault("plots", []).append((report, folder)))
    return zoo, gen, tasks, asked, calls


def test_evaluate_writes_every_tasks_numbers(tmp_path, monkeypatch):
    run = make(tmp_path)
    zoo, gen, tasks, asked, calls = plant_for_evaluate(run, monkeypatch)
    run.path("timings").write_text('{"zoo_train": 9.0, "sample": 1.0}')
    run.path("config").unlink()  # written by the planting
    run.timings = {"sample": 2.0}
    report = run.evaluate()
    assert asked["test"] == [t.name for t in tasks] and asked["val"] == [t.name for t in tasks]
    seen0, seen1 = run.seen
    i0 = run.family.tasks.index(seen0)
    assert report["per_task"][seen0.name] == {
        "split": "seen", "nearest": seen0.name, "prompt": [50.0, 70.0],
        "val": [1000 * i0 + 0.25, 1000 * i0 + 1.25],
        "test": {"generated": [1000 * i0 + 0.5, 1000 * i0 + 1.5], "random init": [300.5, 301.5],
                 "zoo mean": [408.5], "nearest task": [400.5, 402.5], "zoo (own task)": [400.5, 402.5]},
        "labels": {"nearest task": [41.0, 43.0], "zoo (own task)": [41.0, 43.0]}}
    i1 = run.family.tasks.index(seen1)
    assert report["per_task"][seen1.name]["nearest"] == seen1.name
    assert report["per_task"][seen1.name]["test"]["zoo (own task)"] == [410.5, 412.5, 416.5]
    assert report["per_task"][seen1.name]["labels"] == {"nearest task": [42.0, 44.0, 46.0],
                                                        "zoo (own task)": [42.0, 44.0, 46.0]}
    assert report["per_task"][seen1.name]["test"]["generated"] == [1000 * i1 + 0.5, 1000 * i1 + 1.5]
    held = run.held_out[1]  # tasks[3]: nearest is seen task 1
    ih = run.family.tasks.index(held)
    assert report["per_task"][held.name] == {
        "split": "held out", "nearest": seen1.name, "prompt": [50.0, 70.0],
        "val": [1000 * ih + 0.25, 1000 * ih + 1.25],
        "test": {"generated": [1000 * ih + 0.5, 1000 * ih + 1.5], "random init": [300.5, 301.5],
                 "zoo mean": [408.5], "nearest task": [410.5, 412.5, 416.5]},
        "labels": {"nearest task": [42.0, 44.0, 46.0]}}
    assert list(report["per_task"]) == [t.name for t in tasks]
    assert report["config"] == run.config.to_dict() and report["device"] == "cpu"
    assert report["tasks"] == {"seen": [t.name for t in run.seen], "held out": [t.name for t in run.held_out]}
    assert report["zoo"] == {"models": 5, "val_range": [41.0, 46.0], "val_median": 43.0, "test_median": 70.0}
    assert report["prompted"] == {"CAL": 1} and calls["calibrate"] == (report["per_task"], 41.0, 46.0)
    assert report["timings"] == {"zoo_train": 9.0, "sample": 2.0}
    digest = load_artifact(run.path("generated"))[2]
    assert report["inputs"] == {"generator": "GEN", "generated": digest}
    assert json.loads(run.path("report").read_text()) == json.loads(json.dumps(report))
    assert run.path("table").read_text() == f"TABLE {sorted(report)}"
    assert calls["plots"] == [(report, run.run_dir)]
    assert not run.path("config").exists()  # the report changes no config field
    assert json.loads(run.path("timings").read_text()) == {"zoo_train": 9.0, "sample": 2.0}


def test_evaluate_refuses_a_file_without_prompts_or_from_another_generator(tmp_path, monkeypatch):
    run = make(tmp_path)
    plant_for_evaluate(run, monkeypatch)
    run.load_generator = lambda: ("ZOO", "AE", "MODEL", "STD", "OTHER")
    with pytest.raises(ValueError, match="made from another generator.safetensors"):
        run.evaluate()
    run.load_generator = lambda: ("ZOO", "AE", "MODEL", "STD", "GEN")
    run._save("generated", {"params": torch.ones(2, 3)}, {}, {"generator": "GEN"})
    with pytest.raises(ValueError) as e:
        run.evaluate()
    assert str(e.value) == (f"{run.path('generated')}: not a prompted generated-models file (no 'prompt' tensor); "
                            "rerun `pdiff-fast tasks sample`")


def test_format_report_plots_and_formats(tmp_path, monkeypatch):
    run = make(tmp_path)
    plotted = []
    monkeypatch.setattr(pt.task_calibration, "plot_calibration", lambda report, folder: plotted.append((report, folder)))
    monkeypatch.setattr(pt.task_calibration, "format_report", lambda report: f"TABLE {report['x']}")
    assert run.format_report({"x": 3}) == "TABLE 3" and plotted == [({"x": 3}, run.run_dir)]

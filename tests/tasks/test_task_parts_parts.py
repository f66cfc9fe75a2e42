"""pdiff_fast.tasks.parts (TaskParts) one piece at a time, on planted run directories (no model is
trained): what the constructor sets up, the files' names, the provenance records of each artifact
and every refusal with its message, the timings and config.json bookkeeping, the task network and
its shared initialisation, the support sets and their seeds, the zoo loaded back, and the accuracy
asked of the population evaluator. Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md); test_task_pipeline.py runs the same parts through real runs."""
import json

import pytest
import torch

from pdiff_fast.diffusion.sample import model_seed
from pdiff_fast.io import load_artifact, save_tensors
from pdiff_fast.nn.models import MLP
from pdiff_fast.params import ParamSpec
from pdiff_fast.pipeline.run_dir import DamagedFile, StaleArtifact
from pdiff_fast.tasks import parts as parts_lib
from pdiff_fast.tasks.config import STEP_FIELDS, TaskConfig
from pdiff_fast.tasks.family import digit_pair_tasks, fixed_support, split_tasks
from pdiff_fast.tasks.parts import TaskParts
from pdiff_fast.tasks.zoo import Zoo


@pytest.fixture(autouse=True)
def warmed(monkeypatch):
    """warm_allocator faked (it takes a second): the calls are recorded."""
    calls = []
    monkeypatch.setattr(parts_lib, "warm_allocator", lambda: calls.append(1))
    return calls


def cfg(**kw):
    return TaskConfig(**({"device": "cpu", "hidden": [3], "seed": 5, "support": 4, "held_out_pairs": 3,
                          "split_seed": 2, "memory_budget_mb": 3} | kw))


def make(tmp_path, config=None, **kw):
    return TaskParts(config or cfg(), tmp_path / "run", progress=False, log=None, **kw)


# --- construction ----------------------------------------------------------------------------

def test_the_constructor_sets_up_the_run(tmp_path, monkeypatch, warmed):
    picked = []
    monkeypatch.setattr(parts_lib, "pick_device", lambda name: picked.append(name) or torch.device("cpu"))
    logged = []
    c = cfg(device="auto")
    run = TaskParts(c, str(tmp_path / "a" / "run"), log=logged.append, allow_stale=True)
    assert run.config is c and picked == ["auto"] and run.device == torch.device("cpu")
    assert run.run_dir == tmp_path / "a" / "run" and run.run_dir.is_dir()
    assert run.progress is True and run.allow_stale is True and run.timings == {} and run._base is None
    assert warmed == [1]
    run.log("hello")
    assert logged == ["hello"]
    assert run.family.tasks == digit_pair_tasks() and run.family.num_classes == 2
    assert (run.seen, run.held_out) == split_tasks(digit_pair_tasks(), 3, 2)
    assert len(run.held_out) == 6 and len(run.seen) == 84
    run = TaskParts(c, tmp_path / "b", progress=False, log=None)
    assert run.progress is False and run.allow_stale is False
    run.log("silent")  # log=None: nothing, no error
    assert logged == ["hello"]


def test_the_default_log_is_print(tmp_path, capsys):
    run = TaskParts(cfg(), tmp_path / "run")
    run.log("to stdout")
    assert capsys.readouterr().out == "to stdout\n"


def test_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(parts_lib, "pick_device", lambda name: torch.device("cpu"))
    run = TaskParts()
    assert run.config == TaskConfig() and run.run_dir == parts_lib.Path("runs/tasks")
    assert (tmp_path / "runs" / "tasks").is_dir()
    assert (run.seen, run.held_out) == split_tasks(digit_pair_tasks(), 9, 0)


def test_the_config_is_validated(tmp_path):
    with pytest.raises(ValueError, match="held_out_pairs"):
        make(tmp_path, cfg(held_out_pairs=0))


def test_a_cuda_run_does_not_warm_the_cpu_allocator(tmp_path, monkeypatch, warmed):
    monkeypatch.setattr(parts_lib, "pick_device", lambda name: torch.device("cuda"))
    assert make(tmp_path).device.type == "cuda" and warmed == []


def test_a_prompted_config_needs_the_prompted_class(tmp_path):
    with pytest.raises(ValueError) as e:
        make(tmp_path, cfg(prompted=True))
    assert str(e.value) == "config prompted=true needs pdiff_fast.prompted.PromptedTaskPDiff, not TaskParts"

    class Prompted(TaskParts):
        PROMPTED = True

    with pytest.raises(ValueError) as e:
        Prompted(cfg(), tmp_path / "run")
    assert str(e.value) == "config prompted=false needs pdiff_fast.tasks.TaskPDiff, not Prompted"


def test_files(tmp_path):
    run = make(tmp_path)
    names = {"config": "config.json", "zoo": "zoo.safetensors", "generator": "generator.safetensors",
             "generated": "generated.safetensors", "report": "report.json", "table": "report.md",
             "timings": "timings.json"}
    assert TaskParts.FILES == names and TaskParts.PROMPTED is False
    for what, name in names.items():
        assert run.path(what) == tmp_path / "run" / name


# --- provenance --------------------------------------------------------------------------------

def test_fields_of_each_artifact(tmp_path):
    run = make(tmp_path, cfg(denoiser_channels=[2, 3, 4, 5], guidance=2.5))
    d = run.config.to_dict()
    assert run._fields("zoo") == {f: d[f] for f in STEP_FIELDS["zoo"]}
    assert run._fields("generated") == {f: d[f] for f in STEP_FIELDS["generated"]}
    assert run._fields("generated")["guidance"] == 2.5 and "denoiser_channels" not in run._fields("zoo")
    gen = run._fields("generator")
    assert gen == {f: d[f] for f in STEP_FIELDS["generator"]} | {"denoiser_channels": [2, 3, 4, 5]}
    # the generator records the channels in use: the device's default when the config leaves them None
    assert make(tmp_path, cfg())._fields("generator")["denoiser_channels"] == [16, 32, 64, 128]


def test_save_records_the_fields_and_inputs_and_does_the_bookkeeping(tmp_path):
    run = make(tmp_path, cfg(guidance=2.5))
    run.timings["sample"] = 1.5
    digest = run._save("generated", {"params": torch.ones(2, 3)}, {"tasks": ["a"]}, {"generator": "G"})
    tensors, meta, on_disk = load_artifact(run.path("generated"))
    assert digest == on_disk and torch.equal(tensors["params"], torch.ones(2, 3))
    assert meta["tasks"] == ["a"] and meta["inputs"] == {"generator": "G"}
    assert meta["config"] == run._fields("generated")
    assert json.loads(run.path("timings").read_text()) == {"sample": 1.5}
    assert json.loads(run.path("config").read_text()) == run.config.to_dict()


def test_load_gives_tensors_meta_and_digest_after_the_checks(tmp_path):
    run = make(tmp_path)
    digest = run._save("generated", {"params": torch.ones(2, 3)}, {"x": 1}, {"generator": "G"})
    tensors, meta, got = run._load("generated", {"generator": "G"})
    assert torch.equal(tensors["params"], torch.ones(2, 3)) and meta["x"] == 1 and got == digest
    with pytest.raises(StaleArtifact, match="made from another generator.safetensors"):
        run._load("generated", {"generator": "H"})


def test_a_missing_artifact_names_the_step_that_makes_it(tmp_path):
    run = make(tmp_path)
    for artifact, step in (("zoo", "zoo"), ("generator", "train"), ("generated", "sample")):
        with pytest.raises(FileNotFoundError) as e:
            run._load(artifact, {})
        assert str(e.value) == f"{run.path(artifact)}: missing; run `pdiff-fast tasks {step}` first"
    run.path("generator").mkdir()  # not a file
    with pytest.raises(FileNotFoundError, match="generator.safetensors: missing; run `pdiff-fast tasks train`"):
        run._existing("generator")


def test_a_damaged_artifact_names_the_step_that_remakes_it(tmp_path):
    run = make(tmp_path)
    run._save("generator", {"w": torch.arange(64.0)}, {}, {})
    raw = bytearray(run.path("generator").read_bytes())
    raw[-3] ^= 0xFF
    run.path("generator").write_bytes(bytes(raw))
    with pytest.raises(DamagedFile, match="pdiff-fast tasks train"):
        run._load("generator", {})
    run.path("generated").write_text("not safetensors")
    with pytest.raises(ValueError, match=r"rerun `pdiff-fast tasks sample` to remake it"):
        run._load("generated", {})
    # _read hands the path to the reader it is given
    assert run._read("generated", lambda path: path) == run.path("generated")


def test_check_refuses_other_fields_with_the_step_to_rerun(tmp_path):
    run = make(tmp_path, cfg(guidance=2.5))
    meta = {"config": {**run._fields("generated"), "guidance": 1.0}}
    with pytest.raises(StaleArtifact) as e:
        run._check("generated", meta, {})
    assert str(e.value) == ("generated.safetensors was made with guidance=1.0 but the config says guidance=2.5: "
                            "rerun `pdiff-fast tasks sample`, or leave guidance unchanged")
    meta = {"config": {**run._fields("zoo"), "hidden": [7]}}
    with pytest.raises(StaleArtifact) as e:
        run._check("zoo", meta, {})
    assert str(e.value) == ("zoo.safetensors was made with hidden=[7] but the config says hidden=[3]: "
                            "rerun `pdiff-fast tasks zoo`, or leave hidden unchanged")
    # a field this version does not know, and a record without config or inputs: no complaint
    run._check("generated", {"config": {**run._fields("generated"), "retired_field": 1}}, {"generator": "G"})
    run._check("generated", {}, {"generator": "G"})
    run.allow_stale = True
    run._check("generated", {"config": {**run._fields("generated"), "guidance": 1.0}}, {})


def test_check_refuses_other_inputs_unless_a_digest_is_unknown(tmp_path):
    run = make(tmp_path)
    meta = {"config": run._fields("generator"), "inputs": {"zoo": "Z1"}}
    with pytest.raises(StaleArtifact) as e:
        run._check("generator", meta, {"zoo": "Z2"})
    assert str(e.value) == ("generator.safetensors is stale: it was made from another zoo.safetensors; rerun "
                            "`pdiff-fast tasks train` (or pass --allow-stale)")
    run._check("generator", meta, {"zoo": "Z1"})
    run._check("generator", meta, {"zoo": None})  # the digest on disk is unknown
    run._check("generator", {"config": run._fields("generator"), "inputs": {"zoo": None}}, {"zoo": "Z2"})
    run._check("generator", {"config": run._fields("generator")}, {"zoo": "Z2"})
    run.allow_stale = True
    run._check("generator", meta, {"zoo": "Z2"})


# --- timings and config.json ---------------------------------------------------------------------

def test_timed_keeps_the_time_and_returns_the_result(tmp_path, monkeypatch):
    run = make(tmp_path)
    clock = iter([10.0, 13.5])
    monkeypatch.setattr(parts_lib.time, "perf_counter", lambda: next(clock))
    assert run._timed("step", lambda: "out") == "out"
    assert run.timings == {"step": 3.5}


def test_saved_timings(tmp_path):
    run = make(tmp_path)
    assert run.saved_timings() == {}
    run.path("timings").write_text('{"zoo_train": 2.0}')
    assert run.saved_timings() == {"zoo_train": 2.0}


def test_bookkeeping_merges_timings_and_config_and_warns_with_the_artifact(tmp_path):
    logged = []
    run = TaskParts(cfg(), tmp_path / "run", log=logged.append)
    run.path("timings").write_text('{"old": 1.0, "zoo_train": 9.0}')
    run.timings["zoo_train"] = 2.0
    run._bookkeeping("report", config=False)
    assert json.loads(run.path("timings").read_text()) == {"old": 1.0, "zoo_train": 2.0}
    assert not run.path("config").exists() and logged == []
    run._bookkeeping("generated")
    assert json.loads(run.path("config").read_text()) == run.config.to_dict()
    run.path("timings").unlink()
    run.path("timings").mkdir()  # the timings cannot be written: a warning naming the saved artifact
    run._bookkeeping("zoo")
    assert len(logged) == 1 and logged[0].startswith("warning: zoo.safetensors is saved, but config.json")


def test_save_config_keeps_the_other_steps_fields_from_disk(tmp_path):
    run = make(tmp_path, cfg(guidance=2.5, zoo_steps=7))
    on_disk = {**run.config.to_dict(), "guidance": 1.0, "zoo_steps": 3}
    run.path("config").write_text(json.dumps(on_disk))
    run._save_config("generated")  # the generated file's fields from this config, the zoo's from disk
    saved = json.loads(run.path("config").read_text())
    assert saved == {**run.config.to_dict(), "zoo_steps": 3}
    run._save_config("zoo")
    assert json.loads(run.path("config").read_text()) == run.config.to_dict()


def test_save_config_without_a_file_or_over_a_damaged_one_writes_this_config(tmp_path):
    run = make(tmp_path, cfg(guidance=2.5))
    run._save_config("zoo")
    assert json.loads(run.path("config").read_text()) == run.config.to_dict()
    run.path("config").write_text("{not json")
    run._save_config("zoo")
    assert json.loads(run.path("config").read_text()) == run.config.to_dict()


# --- the network ---------------------------------------------------------------------------------

def reference_mlp(seed, hidden=(3,)):
    torch.manual_seed(seed)
    return MLP(64, 2, hidden=hidden)


def same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_new_model_is_the_digits_mlp_seeded(tmp_path):
    run = make(tmp_path, cfg(hidden=[3, 4]))
    m = run.new_model()
    assert isinstance(m, MLP) and m[1].in_features == 64 and m[1].out_features == 3 and m[4].out_features == 4
    assert m[-1].out_features == 2
    assert same_weights(m, reference_mlp(5, (3, 4)))
    assert same_weights(run.new_model(9), reference_mlp(9, (3, 4)))
    assert not same_weights(run.new_model(9), m)
    assert next(m.parameters()).device == torch.device("cpu")


def test_the_new_model_goes_to_the_run_device(tmp_path, monkeypatch):
    run = make(tmp_path)
    moved = []
    monkeypatch.setattr(MLP, "to", lambda self, device: moved.append(device) or self, raising=False)
    run.device = "DEVICE"
    run.new_model()
    assert moved == ["DEVICE"]


def test_base_model_is_built_once_and_leaves_the_rng_alone(tmp_path):
    run = make(tmp_path)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    base = run.base_model()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert same_weights(base, reference_mlp(5)) and run.base_model() is base and run._base is base


def test_base_model_forks_the_cpu_rng_only(tmp_path, monkeypatch):
    forked = []
    real = torch.random.fork_rng

    def fork_rng(*args, **kw):
        forked.append((args, kw))
        return real(*args, **kw)
    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    run = make(tmp_path)
    run.base_model()
    run.base_model()
    assert forked == [((), {"devices": []})]


def test_spec_is_every_parameter_of_the_base_model(tmp_path):
    run = make(tmp_path)
    spec = run.spec()
    assert spec.names == ParamSpec.from_model(reference_mlp(5), "all").names
    assert spec.dim == 64 * 3 + 3 + 3 + 3 + 3 * 2 + 2


def test_denoiser_channels(tmp_path):
    run = make(tmp_path, cfg(denoiser_channels=[2, 3, 4, 5]))
    got = run.denoiser_channels()
    assert got == [2, 3, 4, 5] and type(got) is list
    got.append(6)
    assert run.config.denoiser_channels == [2, 3, 4, 5]  # a copy
    run = make(tmp_path)
    assert run.denoiser_channels() == [16, 32, 64, 128]
    run.device = torch.device("cuda")
    assert run.denoiser_channels() == [64, 128, 256, 512]


# --- support sets ---------------------------------------------------------------------------------

def test_stacked_is_the_familys_on_the_device(tmp_path, monkeypatch):
    run = make(tmp_path)
    tasks = run.seen[:2]
    for split in ("train", "test"):
        want = run.family.stacked(tasks, split)
        got = run.stacked(tasks, split)
        assert len(got) == 3 and all(torch.equal(a, b) for a, b in zip(got, want))
    assert all(torch.equal(a, b) for a, b in zip(run.stacked(tasks), run.family.stacked(tasks, "train")))
    moved = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device: moved.append(device) or self)
    run.device = "DEVICE"
    run.stacked(tasks)
    assert moved == ["DEVICE"] * 3


def test_task_seeds_follow_the_family_index(tmp_path):
    run = make(tmp_path)
    t = run.family.tasks
    assert run.task_seeds([t[7], t[0], t[89]]) == [model_seed(5, 7), model_seed(5, 0), model_seed(5, 89)]
    assert len(set(run.task_seeds(t))) == 90


def test_support_sets(tmp_path):
    run = make(tmp_path)
    tasks = [run.family.tasks[3], run.family.tasks[40]]
    x, y, counts = run.family.stacked(tasks)
    want = fixed_support(x, y, counts, 4, [model_seed(5, 3), model_seed(5, 40)], 2)
    got = run.support_sets(tasks)
    assert got.shape == (2, 4, 66) and torch.equal(got, want)


# --- the zoo ---------------------------------------------------------------------------------------

def plant_zoo(run, tasks=None, fields=None):
    spec = run.spec()
    names = [t.name for t in run.seen] if tasks is None else tasks
    r = len(names)
    zoo = Zoo(torch.randn(r, spec.dim), torch.arange(r), torch.zeros(r, dtype=torch.int64), torch.full((r,), 50.0),
              torch.zeros(spec.dim), spec, names, {"family": "digit-pairs"})
    zoo.meta["config"], zoo.meta["inputs"] = run._fields("zoo") if fields is None else fields, {}
    return zoo.save(run.path("zoo"))


def test_load_zoo(tmp_path):
    run = make(tmp_path)
    digest = plant_zoo(run)
    zoo, got = run.load_zoo()
    assert got == digest and zoo.tasks == [t.name for t in run.seen] and zoo.meta["family"] == "digit-pairs"


def test_load_zoo_refuses_another_config_or_other_tasks(tmp_path):
    run = make(tmp_path)
    plant_zoo(run, fields={**run._fields("zoo"), "zoo_steps": 1})
    with pytest.raises(StaleArtifact, match="zoo.safetensors was made with zoo_steps=1"):
        run.load_zoo()
    plant_zoo(run, tasks=[t.name for t in run.seen[1:]])
    with pytest.raises(StaleArtifact) as e:
        run.load_zoo()
    assert str(e.value) == ("zoo.safetensors holds other tasks than this config's seen tasks; rerun "
                            "`pdiff-fast tasks zoo`")
    with pytest.raises(FileNotFoundError, match="run `pdiff-fast tasks zoo` first"):
        make(tmp_path / "other").load_zoo()
    run.path("zoo").write_text("junk")
    with pytest.raises(ValueError, match="rerun `pdiff-fast tasks zoo` to remake it"):
        run.load_zoo()


# --- accuracy ------------------------------------------------------------------------------------

def test_accuracy_asks_the_population_evaluator(tmp_path, monkeypatch):
    run = make(tmp_path, cfg(memory_budget_mb=3))
    asked = []

    class Result:
        accuracy = torch.tensor([12.5, 75.0])

    def fake(model, spec, flat, x, y, memory_budget_bytes, keep_predictions):
        asked.append((model, spec.names, flat, x, y, memory_budget_bytes, keep_predictions))
        return Result()

    monkeypatch.setattr(parts_lib, "evaluate_population", fake)
    task = run.family.tasks[4]
    flat = torch.randn(2, run.spec().dim)
    got = run.accuracy(task, flat)
    assert torch.equal(got, Result.accuracy)
    (model, names, f, x, y, budget, keep), = asked
    d = run.family.data(task)
    assert model is run.base_model() and names == run.spec().names and torch.equal(f, flat)
    assert torch.equal(x, d.x_test) and torch.equal(y, d.y_test) and not torch.equal(d.x_test, d.x_train[:len(x)])
    assert budget == 3 * 2**20 and keep is False


def test_accuracy_moves_the_rows_and_the_test_split_to_the_run_device(tmp_path, monkeypatch):
    run = make(tmp_path)
    run.base_model()  # built before Tensor.to is faked
    asked = []

    class Result:
        accuracy = torch.tensor([1.0])

    monkeypatch.setattr(parts_lib, "evaluate_population", lambda *a, **kw: asked.append(a) or Result())
    flat, d = torch.ones(1, 2), run.family.data(run.family.tasks[0])
    monkeypatch.setattr(torch.Tensor, "to", lambda self, device: ("MOVED", device, self))
    run.device = "DEVICE"
    run.scored(d, flat)
    (_, _, f, x, y), = asked
    assert f[:2] == x[:2] == y[:2] == ("MOVED", "DEVICE")
    assert f[2] is flat and x[2] is d.x_test and y[2] is d.y_test


def test_accuracy_of_real_models(tmp_path):
    run = make(tmp_path)
    base = run.spec().flatten([run.base_model()])
    task = run.family.tasks[0]
    d = run.family.data(task)
    with torch.no_grad():
        want = (run.base_model()(d.x_test).argmax(1) == d.y_test).float().mean() * 100
    got = run.accuracy(task, base.repeat(2, 1))
    assert got.device.type == "cpu" and torch.allclose(got, want.repeat(2))
    assert torch.allclose(run.scored(d, base), want.reshape(1))

import math

import pytest
import torch
from safetensors.torch import save_file
from test_distributed import _join, spawn_ranks  # tests/ is on sys.path (rootdir, no package)
from torch import nn

from pdiff_fast.pipeline import collect as collect_lib
from pdiff_fast import distributed
from pdiff_fast.pipeline.collect import RECIPES, Population, collect_v1, collect_v2, rebuild_base
from pdiff_fast.data import digits
from pdiff_fast.nn.models import build_model
from pdiff_fast.params import ParamSpec


@pytest.fixture(scope="module")
def small_digits():
    d = digits()
    d.x_train, d.y_train = d.x_train[:400], d.y_train[:400]
    return d


@pytest.mark.parametrize("recipe", [collect_v1, collect_v2])
def test_recipes_save_k_checkpoints_that_only_change_the_subset(recipe, small_digits, tmp_path):
    torch.manual_seed(0)
    m = build_model("mlp", small_digits.input_shape, 10, hidden=(32, 32))
    spec = ParamSpec.from_model(m)
    pop = recipe(m, small_digits, spec, epochs=3, k=5, progress=False)
    assert pop.params.shape == (5, spec.dim) and pop.accuracy.shape == (5,)
    assert (pop.accuracy > 50).all()
    assert not torch.equal(pop.params[0], pop.params[-1])  # the subset kept training
    base_w = pop.base_state["1.weight"]  # not in the subset: identical to the trained model's
    assert torch.equal(base_w, dict(m.named_parameters())["1.weight"].detach())
    pop.save(tmp_path / "pop.safetensors")
    back = Population.load(tmp_path / "pop.safetensors")
    assert torch.equal(back.params, pop.params) and back.spec == spec and back.meta["recipe"] == pop.meta["recipe"]
    model = rebuild_base(build_model("mlp", small_digits.input_shape, 10, hidden=(32, 32)), back)
    spec.load_into(model, back.params[2])
    from pdiff_fast.pipeline.collect import accuracy
    assert accuracy(model, small_digits.x_test, small_digits.y_test) == pytest.approx(pop.accuracy[2].item())


def test_population_file_checks(tmp_path):
    from pdiff_fast.io import save_tensors
    save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a pdiff_fast population"):
        Population.load(tmp_path / "x.safetensors")
    spec = ParamSpec(["w"], [(3,)], [torch.float32])
    with pytest.raises(ValueError, match=r"\(K, 3\)"):
        Population(torch.zeros(2, 4), torch.zeros(2), spec, {})


def test_k_must_be_positive(small_digits):
    m = build_model("mlp", small_digits.input_shape, 10)
    with pytest.raises(ValueError, match="k must be"):
        collect_v1(m, small_digits, ParamSpec.from_model(m), epochs=0, k=0, progress=False)


# --- trajectories: independent subset runs from one base model ---------------------------------

def _bn_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))


def _tiny_digits():
    d = digits()
    d.x_train, d.y_train = d.x_train[:300], d.y_train[:300]
    return d


def _collect(recipe, data, k, trajectories=None):
    """Collect from the BatchNorm model (subset: its norm layer); returns (population, model)."""
    m = _bn_model()
    kw = {} if trajectories is None else {"trajectories": trajectories}
    pop = RECIPES[recipe](m, data, ParamSpec.from_model(m, "last-1-norm-layers"), epochs=2, k=k,
                          subset_lr=0.05, progress=False, **kw)
    return pop, m


def _single_run_of_before(recipe, data, k):
    """The recipes as they were before trajectories (one run, generator seed + 1), verbatim."""
    m = _bn_model()
    spec = ParamSpec.from_model(m, "last-1-norm-layers")
    collect_lib.train_base(m, data, 2, 0.1, 128, 0, False)
    base = {n: t.detach().clone() for n, t in m.state_dict().items()}
    gen = torch.Generator().manual_seed(1)
    opt = collect_lib._sgd(collect_lib._subset_params(m, spec), 0.05)
    rows, accs = [], []
    if recipe == "v1":
        for _ in range(k):
            collect_lib._epoch(m, opt, data, 128, gen, freeze_norm=True)
            rows.append(spec.flatten([m])[0])
            accs.append(collect_lib.accuracy(m, data.x_test, data.y_test))
        return torch.stack(rows), torch.tensor(accs), base, list(range(k))
    bs = min(128, max(1, len(data.y_train) // k))
    save_at = set(torch.linspace(0, -(-len(data.y_train) // bs) - 1, k).round().long().tolist())

    def on_step(step):
        if step in save_at:
            rows.append(spec.flatten([m])[0])
            accs.append(collect_lib.accuracy(m, data.x_test, data.y_test))
            collect_lib._set_norm_eval(m)

    collect_lib._epoch(m, opt, data, bs, gen, on_step=on_step, freeze_norm=True)
    return torch.stack(rows), torch.tensor(accs), base, sorted(save_at)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("recipe", ["v1", "v2"])
def test_one_trajectory_is_the_single_run_of_before(recipe):
    data = _tiny_digits()
    params, acc, base, steps = _single_run_of_before(recipe, data, 4)
    for pop, m in (_collect(recipe, data, 4), _collect(recipe, data, 4, trajectories=1)):  # default: 1
        assert torch.equal(pop.params, params) and torch.equal(pop.accuracy, acc)  # bitwise
        assert pop.base_state.keys() == base.keys() and all(torch.equal(pop.base_state[n], base[n]) for n in base)
        assert pop.trajectory.tolist() == [0] * 4 and pop.step.tolist() == steps
        assert pop.meta["trajectories"] == 1
        assert all(torch.equal(t, base[n]) for n, t in m.state_dict().items())  # model left at the base
        assert not m.training and all(p.requires_grad for p in m.parameters())


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("recipe", ["v1", "v2"])
def test_trajectories_share_k_and_keep_their_provenance(recipe):
    data = _tiny_digits()
    pop, m = _collect(recipe, data, 7, trajectories=3)
    assert pop.params.shape == (7, pop.spec.dim) and pop.accuracy.shape == (7,)
    assert pop.trajectory.tolist() == [0, 0, 0, 1, 1, 2, 2]  # 7 // 3 each, one more for the first 7 % 3
    assert pop.trajectory.dtype == pop.step.dtype == torch.int64 and pop.meta["trajectories"] == 3
    if recipe == "v1":
        assert pop.step.tolist() == [0, 1, 2, 0, 1, 0, 1]  # epochs within each run
    else:  # every run at the batch size of the largest share (3): 300 // 3 -> 100, 3 steps in the epoch
        assert pop.meta["batch_size"] == 100 and pop.step.tolist() == [0, 1, 2, 0, 2, 0, 2]
    # trajectory 0 is the one run of k = 3 (same base, same seed); the others start from the same
    # base with other data orders, so they differ
    one, _ = _collect(recipe, data, 3)
    assert torch.equal(pop.params[:3], one.params) and torch.equal(pop.accuracy[:3], one.accuracy)
    assert all(torch.equal(pop.base_state[n], t) for n, t in one.base_state.items())
    first = {j: pop.params[pop.trajectory == j][0] for j in range(3)}
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert all(torch.equal(t, pop.base_state[n]) for n, t in m.state_dict().items())


def test_k_must_cover_the_trajectories(small_digits):
    m = build_model("mlp", small_digits.input_shape, 10)
    spec = ParamSpec.from_model(m)
    for recipe in (collect_v1, collect_v2):
        with pytest.raises(ValueError, match=r"k = 2 .*trajectories = 3"):
            recipe(m, small_digits, spec, epochs=0, k=2, trajectories=3, progress=False)
        with pytest.raises(ValueError, match="trajectories must be a positive int"):
            recipe(m, small_digits, spec, epochs=0, k=2, trajectories=0, progress=False)


def test_provenance_is_saved_and_old_files_load(tmp_path):
    from pdiff_fast.io import save_tensors
    spec = ParamSpec(["w"], [(3,)], [torch.float32])
    pop = Population(torch.randn(4, 3), torch.rand(4) * 100, spec, {"w": torch.zeros(3)}, {"recipe": "v2"},
                     torch.tensor([0, 0, 1, 1]), torch.tensor([0, 5, 0, 5]))
    pop.save(tmp_path / "pop.safetensors")
    back = Population.load(tmp_path / "pop.safetensors")
    assert torch.equal(back.trajectory, pop.trajectory) and torch.equal(back.step, pop.step)
    assert torch.equal(back.params, pop.params) and back.meta == {"recipe": "v2"}
    # a file written before provenance: one run, checkpoints 0..K-1
    save_tensors(tmp_path / "old.safetensors",
                 {"params": pop.params, "accuracy": pop.accuracy, "base.w": torch.zeros(3)},
                 {"spec": spec.to_dict(), "recipe": "v1"})
    old = Population.load(tmp_path / "old.safetensors")
    assert old.trajectory.tolist() == [0, 0, 0, 0] and old.step.tolist() == [0, 1, 2, 3]
    assert old.trajectory.dtype == old.step.dtype == torch.int64 and torch.equal(old.params, pop.params)
    with pytest.raises(ValueError, match="trajectory must be int64"):
        Population(pop.params, pop.accuracy, spec, {}, {}, torch.zeros(3, dtype=torch.int64))


# --- 2 gloo processes collect the population of one ---------------------------------------------

def _collect_worker(rank: int, port: int, out: str) -> None:
    _join(rank, port)
    data = _tiny_digits()
    got = {}
    for recipe, k, trajectories in (("v1", 5, 3), ("v2", 7, 3), ("v2", 3, 1)):  # T = 1: rank 1 has no run
        pop, m = _collect(recipe, data, k, trajectories)
        tag = f"{recipe}.{trajectories}"
        got.update({f"{tag}.params": pop.params, f"{tag}.accuracy": pop.accuracy,
                    f"{tag}.trajectory": pop.trajectory, f"{tag}.step": pop.step})
        got.update({f"{tag}.base.{n}": t for n, t in pop.base_state.items()})
        got.update({f"{tag}.model.{n}": t.detach().clone() for n, t in m.state_dict().items()})
    save_file({n: t.contiguous() for n, t in got.items()}, f"{out}.{rank}.safetensors")
    distributed.shutdown()


@pytest.mark.usefixtures("one_thread")
def test_two_processes_collect_the_population_of_one(tmp_path):
    ranks = spawn_ranks(_collect_worker, str(tmp_path / "collect"))
    data = _tiny_digits()
    for recipe, k, trajectories in (("v1", 5, 3), ("v2", 7, 3), ("v2", 3, 1)):
        pop, _ = _collect(recipe, data, k, trajectories)
        tag = f"{recipe}.{trajectories}"
        want = {"params": pop.params, "accuracy": pop.accuracy, "trajectory": pop.trajectory, "step": pop.step}
        want.update({f"base.{n}": t for n, t in pop.base_state.items()})
        want.update({f"model.{n}": t for n, t in pop.base_state.items()})  # every rank's model: the base
        for got in ranks:  # bitwise, on every rank
            assert {n.removeprefix(tag + ".") for n in got if n.startswith(tag + ".")} == want.keys()
            for n, t in want.items():
                assert torch.equal(got[f"{tag}.{n}"], t), (tag, n)


# --- v2's learning rate for subsets beyond norm layers (collect.v2_subset_lr) -------------------

def test_v2_subset_lr_rule():
    m = _bn_model()  # Flatten, Linear(64, 16), BatchNorm1d, ReLU, Linear(16, 10)
    rule = collect_lib.v2_subset_lr
    norm = ParamSpec.from_model(m, "last-1-norm-layers")
    for sl in (0.05, None):  # norm layers only: subset_lr as given, whatever the batch
        assert rule(m, norm, sl, 0.1, 10, 128, 20) is sl
    last_epoch = 0.1 * (1 + math.cos(math.pi * 9 / 10)) / 2  # cosine over 10 epochs, its last one
    for selector in ("all", "4.*", ["2.weight", "4.bias"]):  # any other parameter: capped and scaled
        spec = ParamSpec.from_model(m, selector)
        assert rule(m, spec, 0.05, 0.1, 10, 128, 20) == pytest.approx(last_epoch * 20 / 128)
        assert rule(m, spec, 0.05, 0.1, 10, 128, 128) == pytest.approx(last_epoch)  # batch not shrunk
        assert rule(m, spec, 1e-4, 0.1, 10, 128, 32) == pytest.approx(1e-4 / 4)  # below the cap
        assert rule(m, spec, None, 0.1, 1, 128, 64) == pytest.approx(0.01 / 2)  # lr / 10; one epoch: cap lr
        assert rule(m, spec, 0.05, 0.1, 0, 128, 64) == pytest.approx(0.025)  # no base training: no cap
    # MLP: LayerNorm parameters count as norm layers too
    mlp = build_model("mlp", (1, 8, 8), 10)
    assert rule(mlp, ParamSpec.from_model(mlp, "last-2-norm-layers"), 0.01, 0.1, 10, 128, 7) == 0.01
    assert rule(mlp, ParamSpec.from_model(mlp, "all"), 0.01, 0.1, 10, 128, 7) < 0.01 * 7 / 128


@pytest.mark.usefixtures("one_thread")
def test_v2_trains_at_the_rule_lr(monkeypatch):
    data = _tiny_digits()  # 300 samples, k = 4: bs 75 < 128
    used = []
    sgd = collect_lib._sgd
    monkeypatch.setattr(collect_lib, "_sgd", lambda params, lr, *a, **kw: used.append(lr) or sgd(params, lr, *a, **kw))
    for selector, expected in (("last-1-norm-layers", 0.05),
                               ("all", 0.1 * (1 + math.cos(math.pi / 2)) / 2 * 75 / 128)):
        m = _bn_model()
        used.clear()
        pop = collect_v2(m, data, ParamSpec.from_model(m, selector), epochs=2, k=4, subset_lr=0.05, progress=False)
        assert pop.meta["batch_size"] == 75 and pop.meta["subset_lr"] == pytest.approx(expected)
        assert used[-1] == pytest.approx(expected)  # base training first (lr 0.1), then the subset run
    assert used[-1] != 0.05
    v1 = collect_v1(_bn_model(), data, ParamSpec.from_model(_bn_model(), "all"), epochs=1, k=1, subset_lr=0.05,
                    progress=False)
    assert used[-1] == 0.05 and "subset_lr" not in v1.meta  # v1 unchanged

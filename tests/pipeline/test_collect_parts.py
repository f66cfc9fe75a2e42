"""pdiff_fast.pipeline.collect one part at a time, on a tiny MLP and a few dozen samples (each
test well under a second): the population file's checks, accuracy, one training epoch against a
hand-written loop, the base training, the checkpoint shares, the base state under a faked
process group, the trajectories' seeds, learning rates and provenance, v1's and v2's checkpoint
steps and records, and rebuilding the base model. Written against the mutants mutmut left alive
(tests/mutation, docs/mutation-scores.md); test_collect.py runs the recipes on the digits."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdiff_fast import distributed
from pdiff_fast.data import TensorData
from pdiff_fast.params import ParamSpec
from pdiff_fast.pipeline import collect as collect_lib
from pdiff_fast.pipeline.collect import (Population, _collect, _epoch, _shares, accuracy, collect_v1, collect_v2,
                                         rebuild_base, train_base, v2_subset_lr)


def tiny_data(n_train=24, n_test=10):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n_train + n_test, 5, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # learnable: 3 classes
    return TensorData("tiny", x[:n_train], y[:n_train], x[n_train:], y[n_train:], 3)


def tiny_model(seed=0):
    """Two norm layers for the default subset (BatchNorm 1, LayerNorm 4: D = 24); only BatchNorm freezes."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 6), nn.LayerNorm(6), nn.ReLU(),
                         nn.Linear(6, 3))


def same_state(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- the population file ---------------------------------------------------------------------

def test_population_checks_and_defaults():
    spec = ParamSpec.from_model(tiny_model())  # the norm layers' 24 values
    pop = Population(torch.zeros(3, spec.dim), torch.zeros(3), spec, {})
    assert pop.trajectory.tolist() == [0, 0, 0] and pop.trajectory.dtype == torch.int64
    assert pop.step.tolist() == [0, 1, 2] and pop.step.dtype == torch.int64
    assert pop.meta == {} and pop.val_accuracy is None
    with pytest.raises(ValueError, match=r"^population params must be \(K, 24\), got \(3, 23\)$"):
        Population(torch.zeros(3, 23), torch.zeros(3), spec, {})
    with pytest.raises(ValueError, match=r"^population params must be \(K, 24\), got \(24,\)$"):
        Population(torch.zeros(24), torch.zeros(1), spec, {})
    with pytest.raises(ValueError, match="^population: one accuracy per checkpoint is needed$"):
        Population(torch.zeros(3, 24), torch.zeros(2), spec, {})
    with pytest.raises(ValueError, match="^population: one validation accuracy per checkpoint is needed$"):
        Population(torch.zeros(3, 24), torch.zeros(3), spec, {}, val_accuracy=torch.zeros(4))
    for name in ("trajectory", "step"):
        with pytest.raises(ValueError, match=rf"^population: {name} must be int64 of shape \(3,\), got torch.int32 "
                                             r"\(3,\)$"):
            Population(torch.zeros(3, 24), torch.zeros(3), spec, {}, **{name: torch.zeros(3, dtype=torch.int32)})
        with pytest.raises(ValueError, match=rf"^population: {name} must be int64 of shape \(3,\), got torch.int64 "
                                             r"\(2,\)$"):
            Population(torch.zeros(3, 24), torch.zeros(3), spec, {}, **{name: torch.zeros(2, dtype=torch.int64)})


def test_population_round_trip_keeps_everything(tmp_path):
    model = tiny_model()
    spec = ParamSpec.from_model(model)
    pop = Population(torch.randn(2, spec.dim), torch.tensor([1.0, 2.0]), spec, dict(model.state_dict()),
                     {"recipe": "v2", "k": 2}, torch.tensor([0, 1]), torch.tensor([5, 7]), torch.tensor([3.0, 4.0]))
    pop.save(tmp_path / "p.safetensors")
    back = Population.load(tmp_path / "p.safetensors")
    assert torch.equal(back.params, pop.params) and torch.equal(back.accuracy, pop.accuracy) and back.spec == spec
    assert same_state(back.base_state, pop.base_state) and back.meta == {"recipe": "v2", "k": 2}
    assert back.trajectory.tolist() == [0, 1] and back.step.tolist() == [5, 7]
    assert back.val_accuracy.tolist() == [3.0, 4.0]
    pop.val_accuracy = None
    pop.save(tmp_path / "q.safetensors")
    assert Population.load(tmp_path / "q.safetensors").val_accuracy is None


def test_population_load_names_a_foreign_file(tmp_path):
    from pdiff_fast.io import save_tensors

    spec = ParamSpec.from_model(tiny_model()).to_dict()
    for tensors, meta in (({"accuracy": torch.zeros(1)}, {"spec": spec}), ({"params": torch.zeros(1, 12)}, {"spec": spec}),
                          ({"params": torch.zeros(1, 12), "accuracy": torch.zeros(1)}, {})):
        save_tensors(tmp_path / "x.safetensors", tensors, meta)
        with pytest.raises(ValueError, match=r"x\.safetensors: not a pdiff_fast population file \(missing params, "
                                             r"accuracy or spec\)$"):
            Population.load(tmp_path / "x.safetensors")


# --- accuracy and one epoch ------------------------------------------------------------------

class Fixed(nn.Module):
    """Predicts class (input's first value) and records the batch sizes it saw."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def forward(self, x):
        self.sizes.append(len(x))
        return F.one_hot(x[:, 0].long(), 3).float()


def test_accuracy_in_batches_and_the_mode_restored():
    m = Fixed()
    x = torch.tensor([[0.0], [1.0], [2.0], [1.0], [0.0]])
    y = torch.tensor([0, 1, 1, 1, 2])
    assert accuracy(m, x, y, batch_size=2) == 60.0 and m.sizes == [2, 2, 1] and m.training
    m.eval()
    assert accuracy(m, x, y) == 60.0 and m.sizes[-1] == 5 and not m.training
    seen = []
    m.forward = lambda x: seen.append(m.training or torch.is_grad_enabled()) or F.one_hot(x[:, 0].long(), 3).float()
    m.train()
    accuracy(m, x, y)
    assert seen == [False]  # evaluated in eval mode, without autograd


def test_epoch_is_the_plain_loop():
    data = tiny_data()
    a, b = tiny_model(), tiny_model()
    opt_a = torch.optim.SGD(a.parameters(), lr=0.1)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1)
    steps = []
    _epoch(a, opt_a, data, 7, torch.Generator().manual_seed(3), on_step=steps.append)
    perm = torch.randperm(24, generator=torch.Generator().manual_seed(3))
    b.train()
    for i in range(0, 24, 7):
        idx = perm[i:i + 7]
        opt_b.zero_grad()
        F.cross_entropy(b(data.x_train[idx]), data.y_train[idx]).backward()
        opt_b.step()
    assert steps == [0, 1, 2, 3] and a.training and same_state(a.state_dict(), b.state_dict())


def test_epoch_freezes_the_norm_layers_on_request():
    data, m = tiny_data(), tiny_model()
    modes = []
    m[1].register_forward_hook(lambda mod, i, o: modes.append(mod.training))
    _epoch(m, torch.optim.SGD(m.parameters(), lr=0.1), data, 12, torch.Generator())
    _epoch(m, torch.optim.SGD(m.parameters(), lr=0.1), data, 12, torch.Generator(), freeze_norm=True)
    assert modes == [True, True, False, False] and m[0].training and m[4].training  # BatchNorm only


def test_epoch_stops_on_a_non_finite_loss():
    data, m = tiny_data(), tiny_model()
    with torch.no_grad():
        m[6].weight.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match=r"^training loss became nan \(lower the learning rate\)$"):
        _epoch(m, torch.optim.SGD(m.parameters(), lr=0.1), data, 8, torch.Generator())


def test_train_base_is_sgd_with_momentum_weight_decay_and_cosine_decay():
    data = tiny_data()
    a, b = tiny_model(), tiny_model()
    assert train_base(a, data, 3, lr=0.2, batch_size=10, seed=4, progress=False) is a and not a.training
    gen = torch.Generator().manual_seed(4)
    opt = torch.optim.SGD(b.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 3)
    for _ in range(3):
        _epoch(b, opt, data, 10, gen)
        sched.step()
    assert same_state(a.state_dict(), b.state_dict())
    c = tiny_model()
    train_base(c, data, 0, progress=False)  # no epochs: untouched, in eval mode
    assert same_state(c.state_dict(), tiny_model().state_dict()) and not c.training


def test_train_base_defaults():
    data = tiny_data(n_train=300)
    a, b = tiny_model(), tiny_model()
    train_base(a, data, 1)
    train_base(b, data, 1, lr=0.1, batch_size=128, seed=0, progress=True)
    assert same_state(a.state_dict(), b.state_dict())


# --- shares and the base state ---------------------------------------------------------------

def test_shares():
    assert _shares(7, 3) == [3, 2, 2] and _shares(6, 3) == [2, 2, 2] and _shares(1, 1) == [1] and _shares(5, 5) == [1] * 5
    with pytest.raises(ValueError, match="^collect: k must be at least 1$"):
        _shares(0, 1)
    for bad in (0, -1, 1.0, True, "2"):
        with pytest.raises(ValueError, match=rf"^collect: trajectories must be a positive int, got {bad!r}$"):
            _shares(3, bad)
    with pytest.raises(ValueError, match=r"^collect: k = 2 checkpoints cannot be shared by trajectories = 3 runs "
                                         r"\(each needs at least one: k >= trajectories\)$"):
        _shares(2, 3)


def test_progress_only_on_rank_0(monkeypatch):
    assert collect_lib._progress(True) is True and collect_lib._progress(False) is False
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    assert collect_lib._progress(True) is False


def test_base_state_is_a_copy_of_the_trained_model():
    data, m = tiny_data(), tiny_model()
    spec = ParamSpec.from_model(m)
    state = collect_lib._train_base_state(m, data, spec, 2, 0.1, 8, 0, False)
    want = train_base(tiny_model(), data, 2, 0.1, 8, 0, False).state_dict()
    assert same_state(state, want) and same_state(m.state_dict(), want)
    assert all(state[k].data_ptr() != v.data_ptr() for k, v in m.state_dict().items())
    with pytest.raises(ValueError, match="spec does not fit"):
        collect_lib._train_base_state(nn.Sequential(nn.Linear(5, 3)), data, spec, 1, 0.1, 8, 0, False)


@pytest.fixture
def two_ranks(monkeypatch):
    """distributed as rank `rank` of 2 sees it: broadcasts recorded, rank 0's answers given."""
    sent = []

    def setup(rank, error=None, state=None):
        monkeypatch.setattr(distributed, "active", lambda: True)
        monkeypatch.setattr(distributed, "is_main", lambda: rank == 0)
        monkeypatch.setattr(distributed, "broadcast_json",
                            lambda obj=None: sent.append(("json", obj)) or (obj if rank == 0 else error))
        monkeypatch.setattr(distributed, "broadcast_tensors",
                            lambda t=None: sent.append(("tensors", t)) or (t if rank == 0 else state))
        return sent
    return setup


def test_base_state_on_rank_0_is_trained_and_sent(two_ranks):
    sent = two_ranks(0)
    data, m = tiny_data(), tiny_model()
    state = collect_lib._train_base_state(m, data, ParamSpec.from_model(m), 1, 0.1, 8, 0, False)
    want = train_base(tiny_model(), data, 1, 0.1, 8, 0, False).state_dict()
    assert same_state(state, want) and [kind for kind, _ in sent] == ["json", "tensors"] and sent[0][1] is None
    assert same_state(sent[1][1], want)


def test_base_state_on_another_rank_is_received(two_ranks):
    want = train_base(tiny_model(), tiny_data(), 1, 0.1, 8, 0, False).state_dict()
    sent = two_ranks(1, state={k: v.clone() for k, v in want.items()})
    m = tiny_model(seed=9)
    m.train()
    state = collect_lib._train_base_state(m, tiny_data(), ParamSpec.from_model(m), 1, 0.1, 8, 0, False)
    assert same_state(state, want) and same_state(m.state_dict(), want) and not m.training
    assert sent == [("json", None), ("tensors", None)]  # it trained nothing, sent nothing of its own


def test_a_failed_base_training_is_told_to_every_rank(two_ranks, monkeypatch):
    sent = two_ranks(0)

    def fail(*a, **k):
        raise FloatingPointError("loss became nan")
    monkeypatch.setattr(collect_lib, "train_base", fail)
    m = tiny_model()
    with pytest.raises(FloatingPointError, match="loss became nan"):
        collect_lib._train_base_state(m, tiny_data(), ParamSpec.from_model(m), 1, 0.1, 8, 0, False)
    assert sent == [("json", "FloatingPointError: loss became nan")]
    sent.clear()
    two_ranks(1, error="FloatingPointError: loss became nan")
    with pytest.raises(RuntimeError, match=r"^collect: rank 0 failed to train the base model \(FloatingPointError: "
                                           r"loss became nan\)$"):
        collect_lib._train_base_state(m, tiny_data(), ParamSpec.from_model(m), 1, 0.1, 8, 0, False)
    assert sent == [("json", None)]


# --- the trajectories ------------------------------------------------------------------------

def recording_run(log):
    """A run that records its model, optimizer lr and generator's first draw, then saves n times, nudging the subset."""
    def run(model, opt, gen, n, save):
        log.append({"model": model, "lr": opt.param_groups[0]["lr"], "draw": torch.rand(1, generator=gen).item(),
                    "n": n, "params": [id(p) for p in opt.param_groups[0]["params"]]})
        for step in range(n):
            with torch.no_grad():
                model[1].weight.add_(1.0)
            save(10 * step)
    return run


def replayed_accuracy(model, adds, x, y):
    """The accuracy of `model` after recording_run's first `adds` nudges."""
    m = copy.deepcopy(model)
    with torch.no_grad():
        m[1].weight.add_(float(adds))
    return accuracy(m, x, y)


def test_collect_runs_each_trajectory_from_a_fresh_copy(monkeypatch):
    data, model = tiny_data(), tiny_model()
    spec = ParamSpec.from_model(model)
    log = []
    params, acc, traj, step, val = _collect(model, data, spec, [2, 1], recording_run(log), 0.5, None, 7, "d", False)
    assert [r["n"] for r in log] == [2, 1] and all(r["lr"] == 0.05 for r in log)  # lr / 10 without subset_lr
    assert [r["draw"] for r in log] == [torch.rand(1, generator=torch.Generator().manual_seed(s)).item() for s in (8, 9)]
    assert all(r["model"] is not model for r in log) and log[0]["model"] is not log[1]["model"]
    subset_ids = {id(p) for n, p in log[0]["model"].named_parameters() if n in spec.names}
    assert set(log[0]["params"]) == subset_ids  # only the subset trains
    base = spec.flatten([model])[0]
    assert torch.equal(params, torch.stack([base + torch.tensor([1.0] * 6 + [0.0] * 18),
                                            base + torch.tensor([2.0] * 6 + [0.0] * 18), base + torch.tensor([1.0] * 6 + [0.0] * 18)]))
    assert traj.tolist() == [0, 0, 1] and step.tolist() == [0, 10, 0] and val is None
    assert traj.dtype == step.dtype == torch.int64 and acc.dtype == torch.float32
    assert torch.equal(acc, torch.tensor([replayed_accuracy(model, n, data.x_test, data.y_test) for n in (1, 2, 1)]))
    assert torch.equal(spec.flatten([model])[0], base)  # the base model itself untouched
    log.clear()
    _collect(model, data, spec, [1], recording_run(log), 0.5, 0.03, 7, "d", False)
    assert log[0]["lr"] == 0.03


def test_collect_labels_with_the_validation_split_when_given():
    data, model = tiny_data(), tiny_model()
    spec = ParamSpec.from_model(model)
    x_val, y_val = data.x_train[:9], data.y_train[:9]
    log = []
    *_, val = _collect(model, data, spec, [2], recording_run(log), 0.5, None, 0, "d", False, val=(x_val, y_val))
    want = torch.tensor([replayed_accuracy(model, n, x_val, y_val) for n in (1, 2)], dtype=torch.float32)
    assert val.dtype == torch.float32 and torch.equal(val, want)
    test = torch.tensor([replayed_accuracy(model, n, data.x_test, data.y_test) for n in (1, 2)], dtype=torch.float32)
    assert not torch.equal(val, test)  # the validation split, not the test set


def test_collect_takes_this_ranks_trajectories_and_gathers_them(monkeypatch):
    data, model = tiny_data(), tiny_model()
    spec = ParamSpec.from_model(model)
    monkeypatch.setattr(distributed, "shard", lambda n: (1, 3))
    gathered = []
    monkeypatch.setattr(distributed, "gather_rows", lambda t: gathered.append(t) or t)
    log = []
    params, acc, traj, step, _ = _collect(model, data, spec, [1, 2, 1], recording_run(log), 0.5, None, 0, "d", False)
    assert [r["n"] for r in log] == [2, 1] and traj.tolist() == [1, 1, 2] and step.tolist() == [0, 10, 0]
    assert log[0]["draw"] == torch.rand(1, generator=torch.Generator().manual_seed(2)).item()
    assert len(gathered) == 4 and gathered[3].shape == (3, 2)  # params, acc, val, provenance (trajectory, step)
    monkeypatch.setattr(distributed, "shard", lambda n: (3, 3))  # a rank with no trajectory
    params, acc, traj, step, _ = _collect(model, data, spec, [1, 2, 1], recording_run(log), 0.5, None, 0, "d", False)
    assert params.shape == (0, 24) and params.dtype == torch.float32 and acc.shape == (0,) and traj.shape == (0,)
    assert traj.dtype == step.dtype == torch.int64  # an empty list is no int: the dtype is asked for


# --- the recipes -----------------------------------------------------------------------------

def test_v1_trains_the_subset_one_epoch_per_checkpoint(monkeypatch):
    data = tiny_data()
    epochs = []
    real = collect_lib._epoch
    monkeypatch.setattr(collect_lib, "_epoch", lambda *a, **k: epochs.append((a[3], k)) or real(*a, **k))
    m = tiny_model()
    spec = ParamSpec.from_model(m)
    pop = collect_v1(m, data, spec, epochs=2, k=3, lr=0.2, subset_lr=0.05, batch_size=8, seed=1, trajectories=2,
                     progress=False)
    assert [e for e in epochs if e[1].get("freeze_norm")] == [(8, {"freeze_norm": True})] * 3
    assert len(epochs) == 5  # 2 base epochs, then 2 + 1 subset epochs
    assert pop.step.tolist() == [0, 1, 0] and pop.trajectory.tolist() == [0, 0, 1]
    assert pop.meta == {"recipe": "v1", "epochs": 2, "k": 3, "lr": 0.2, "batch_size": 8, "seed": 1, "trajectories": 2}
    assert same_state(pop.base_state, train_base(tiny_model(), data, 2, 0.2, 8, 1, False).state_dict())
    assert same_state(m.state_dict(), pop.base_state)  # the model is left in the base state
    assert len(set(map(tuple, pop.params.tolist()))) == 3


def test_v2_spreads_the_checkpoints_over_one_epoch(monkeypatch):
    data = tiny_data()  # 24 samples
    m = tiny_model()
    spec = ParamSpec.from_model(m)
    pop = collect_v2(m, data, spec, epochs=1, k=4, lr=0.2, subset_lr=0.05, batch_size=10, seed=2, progress=False)
    # bs = min(10, 24 // 4) = 6: 4 steps, checkpoints at linspace(0, 3, 4)
    assert pop.step.tolist() == [0, 1, 2, 3] and pop.meta == {
        "recipe": "v2", "epochs": 1, "k": 4, "lr": 0.2, "batch_size": 6, "seed": 2, "trajectories": 1,
        "subset_lr": 0.05}
    pop = collect_v2(tiny_model(), data, spec, epochs=1, k=3, lr=0.2, batch_size=4, seed=2, trajectories=2,
                     progress=False)
    # shares [2, 1], bs = min(4, 24 // 2) = 4: 6 steps; 2 checkpoints at steps 0 and 5, 1 at step 0
    assert pop.step.tolist() == [0, 5, 0] and pop.trajectory.tolist() == [0, 0, 1]
    assert pop.meta["batch_size"] == 4 and pop.meta["subset_lr"] == pytest.approx(0.02)  # lr / 10


def test_v2_keeps_the_norm_layers_frozen_after_each_checkpoint(monkeypatch):
    modes = []
    real = collect_lib.accuracy

    def accuracy_then_look(model, x, y, batch_size=2048):
        out = real(model, x, y, batch_size)
        model[1].register_forward_hook(lambda mod, i, o: modes.append(mod.training)) if not modes else None
        return out
    monkeypatch.setattr(collect_lib, "accuracy", accuracy_then_look)
    m = tiny_model()
    collect_v2(m, tiny_data(), ParamSpec.from_model(m), epochs=0, k=2, batch_size=6, progress=False)
    assert modes and not any(modes)  # the steps after a checkpoint still see the norm layer in eval mode


def test_v2_refuses_more_checkpoints_than_steps():
    m = tiny_model()
    data = tiny_data(n_train=3)
    with pytest.raises(ValueError, match=r"^collect v2: one epoch of 3 samples cannot hold 4 checkpoints$"):
        collect_v2(m, data, ParamSpec.from_model(m), epochs=0, k=4, progress=False)


def test_v2_subset_lr_by_hand():
    m = tiny_model()
    norm = ParamSpec.from_model(m)
    weights = ParamSpec.from_model(m, ["3.weight"])
    assert v2_subset_lr(m, norm, 0.05, 0.1, 10, 128, 20) == 0.05 and v2_subset_lr(m, norm, None, 0.1, 10, 128, 20) is None
    # cosine's last epoch of 4 at lr 0.1: 0.1 (1 + cos(3 pi / 4)) / 2 = 0.01464...
    last = 0.1 * (1 + torch.cos(torch.tensor(3 * torch.pi / 4, dtype=torch.float64)).item()) / 2
    assert v2_subset_lr(m, weights, 0.05, 0.1, 4, 100, 25) == pytest.approx(last * 25 / 100, rel=1e-12)
    assert v2_subset_lr(m, weights, 0.001, 0.1, 4, 100, 25) == pytest.approx(0.001 / 4, rel=1e-12)
    assert v2_subset_lr(m, weights, None, 0.1, 1, 100, 50) == pytest.approx(0.01 / 2, rel=1e-12)  # last epoch at 0.1
    assert v2_subset_lr(m, weights, None, 0.1, 0, 10, 10) == pytest.approx(0.01, rel=1e-12)  # no epochs: no cap
    assert collect_lib._only_norm_affine(m, norm) and not collect_lib._only_norm_affine(m, weights)
    assert not collect_lib._only_norm_affine(m, ParamSpec.from_model(m, ["1.weight", "0.bias"]))


def test_only_norm_affine_at_the_top_level():
    m = nn.Sequential(nn.BatchNorm1d(3))
    m.extra = nn.Parameter(torch.zeros(2))  # a parameter of the root module, which is no norm layer
    assert collect_lib._only_norm_affine(m, ParamSpec.from_model(m, ["0.weight"]))
    assert not collect_lib._only_norm_affine(m, ParamSpec.from_model(m, ["extra"]))
    bn = nn.BatchNorm1d(3)
    assert collect_lib._only_norm_affine(bn, ParamSpec.from_model(bn, ["weight"]))  # the root is the norm layer


def test_recipes_registered():
    assert collect_lib.RECIPES == {"v1": collect_v1, "v2": collect_v2}


# --- rebuilding the base ---------------------------------------------------------------------

def test_rebuild_base_loads_a_copy_in_eval_mode():
    trained = train_base(tiny_model(), tiny_data(), 1, progress=False)
    spec = ParamSpec.from_model(trained)
    pop = Population(spec.flatten([trained]), torch.zeros(1), spec, copy.deepcopy(trained.state_dict()))
    fresh = tiny_model(seed=5)
    fresh.train()
    out = rebuild_base(fresh, pop)
    assert out is not fresh and not out.training and same_state(out.state_dict(), trained.state_dict())
    assert not same_state(fresh.state_dict(), trained.state_dict())  # the given model untouched
    with pytest.raises(ValueError, match=r"^base state does not fit the model: missing \['0\.weight', '0\.bias', "
                                         r"'1\.weight'\], unexpected \['x\.weight', 'x\.bias'\]$"):
        rebuild_base(tiny_model(), Population(torch.zeros(1, 24), torch.zeros(1), spec,
                                              {"x.weight": torch.zeros(1), "x.bias": torch.zeros(1)}))
    other = ParamSpec.from_model(nn.Sequential(nn.LayerNorm(7)), ["0.weight"])
    with pytest.raises(ValueError, match="spec does not fit"):
        rebuild_base(tiny_model(), Population(torch.zeros(1, other.dim), torch.zeros(1), other,
                                              copy.deepcopy(trained.state_dict())))


# --- progress bars, defaults and edges -------------------------------------------------------

class Bars:
    """tqdm recorded: each bar's arguments and updates."""

    def __init__(self):
        self.made = []

    def __call__(self, iterable=None, **kw):
        bar = {"iterable": iterable, **kw, "updates": [], "closed": False}
        self.made.append(bar)
        if iterable is not None:
            return iterable
        return type("Bar", (), {"update": lambda s, n: bar["updates"].append(n),
                                "close": lambda s: bar.update(closed=True)})()


@pytest.fixture
def bars(monkeypatch):
    b = Bars()
    monkeypatch.setattr(collect_lib, "tqdm", b)
    return b


def test_progress_bars(bars, monkeypatch):
    data, m = tiny_data(), tiny_model()
    spec = ParamSpec.from_model(m)
    train_base(m, data, 2, progress=True)
    assert bars.made == [{"iterable": range(2), "desc": "train base model", "disable": False, "updates": [],
                          "closed": False}]
    train_base(m, data, 1, progress=False)
    assert bars.made[-1]["disable"] is True
    _collect(m, data, spec, [2, 1], recording_run([]), 0.5, None, 0, "the bar", True)
    bar = bars.made[-1]
    assert {k: bar[k] for k in ("total", "desc", "disable")} == {"total": 3, "desc": "the bar", "disable": False}
    assert bar["updates"] == [1, 1, 1] and bar["closed"]
    _collect(m, data, spec, [2], recording_run([]), 0.5, None, 0, "d", False)
    assert bars.made[-1]["disable"] is True
    monkeypatch.setattr(distributed, "shard", lambda n: (1, 3))  # this rank's runs only
    _collect(m, data, spec, [4, 2, 1], recording_run([]), 0.5, None, 0, "d", True)
    assert bars.made[-1]["total"] == 3
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    _collect(m, data, spec, [4, 2, 1], recording_run([]), 0.5, None, 0, "d", True)
    assert bars.made[-1]["disable"] is True  # rank 0 alone shows progress


@pytest.mark.parametrize("recipe,desc", [(collect_v1, "collect v1 checkpoints"), (collect_v2, "collect v2 checkpoints")])
def test_recipes_pass_progress_on(bars, recipe, desc, monkeypatch):
    m = tiny_model()
    recipe(m, tiny_data(), ParamSpec.from_model(m), epochs=1, k=2, batch_size=8, progress=True)
    assert [(b["desc"], b["disable"]) for b in bars.made] == [("train base model", False), (desc, False)]
    bars.made.clear()
    recipe(tiny_model(), tiny_data(), ParamSpec.from_model(m), epochs=1, k=2, batch_size=8, progress=False)
    assert [(b["desc"], b["disable"]) for b in bars.made] == [("train base model", True), (desc, True)]
    bars.made.clear()
    monkeypatch.setattr(distributed, "is_main", lambda: False)
    recipe(tiny_model(), tiny_data(), ParamSpec.from_model(m), epochs=1, k=2, batch_size=8, progress=True)
    assert [b["disable"] for b in bars.made] == [True, True]


def test_defaults_are_the_papers():
    import inspect

    for recipe in (collect_v1, collect_v2):
        params = inspect.signature(recipe).parameters
        assert {k: p.default for k, p in params.items() if p.default is not inspect.Parameter.empty} == {
            "epochs": 30, "k": 200, "lr": 0.1, "subset_lr": None, "batch_size": 128, "seed": 0, "trajectories": 1,
            "progress": True}
    params = inspect.signature(train_base).parameters
    assert (params["lr"].default, params["batch_size"].default, params["seed"].default, params["progress"].default) == (
        0.1, 128, 0, True)


def test_v2_batch_and_steps_at_the_edges():
    m = tiny_model()
    spec = ParamSpec.from_model(m)
    # 5 samples, 4 checkpoints: batches of 1 (5 steps), checkpoints at round(linspace(0, 4, 4))
    pop = collect_v2(m, tiny_data(n_train=5), spec, epochs=0, k=4, batch_size=100, progress=False)
    assert pop.meta["batch_size"] == 1 and pop.step.tolist() == [0, 1, 3, 4]
    # 26 samples, 4 checkpoints: batches of 6, ceil(26 / 6) = 5 steps
    pop = collect_v2(tiny_model(), tiny_data(n_train=26), spec, epochs=0, k=4, batch_size=100, progress=False)
    assert pop.meta["batch_size"] == 6 and pop.step.tolist() == [0, 1, 3, 4]


def test_v2_subset_lr_caps_at_the_single_epochs_lr():
    m = tiny_model()
    weights = ParamSpec.from_model(m, ["3.weight"])
    assert v2_subset_lr(m, weights, 0.5, 0.1, 1, 100, 50) == pytest.approx(0.1 / 2, rel=1e-12)  # one epoch: lr itself


def test_rebuild_base_names_missing_and_unexpected_keys_alone():
    trained = tiny_model()
    spec = ParamSpec.from_model(trained)
    state = dict(trained.state_dict())
    del state["6.bias"]
    with pytest.raises(ValueError, match=r"^base state does not fit the model: missing \['6\.bias'\], unexpected \[\]$"):
        rebuild_base(tiny_model(), Population(torch.zeros(1, 24), torch.zeros(1), spec, state))
    extra = {**trained.state_dict(), **{f"x{i}": torch.zeros(1) for i in range(5)}}
    with pytest.raises(ValueError, match=r"^base state does not fit the model: missing \[\], unexpected \['x0', 'x1', "
                                         r"'x2'\]$"):
        rebuild_base(tiny_model(), Population(torch.zeros(1, 24), torch.zeros(1), spec, extra))


class Stop(Exception):
    pass


@pytest.mark.parametrize("recipe", [collect_v1, collect_v2])
def test_recipes_called_with_their_defaults(recipe, monkeypatch):
    """The defaults as the recipe uses them (a signature's defaults are not what a call reads under every wrapper)."""
    seen = {}
    real_shares = collect_lib._shares
    monkeypatch.setattr(collect_lib, "_shares", lambda k, t: seen.update(k=k, trajectories=t) or real_shares(k, t))

    def base_state(model, data, spec, epochs, lr, batch_size, seed, progress):
        seen.update(epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, progress=progress)
        raise Stop
    monkeypatch.setattr(collect_lib, "_train_base_state", base_state)
    m = tiny_model()
    with pytest.raises(Stop):
        recipe(m, tiny_data(n_train=400), ParamSpec.from_model(m))
    assert seen == {"k": 200, "trajectories": 1, "epochs": 30, "lr": 0.1, "batch_size": 128, "seed": 0, "progress": True}


def test_train_base_shows_progress_by_default(bars):
    train_base(tiny_model(), tiny_data(), 0)
    assert bars.made[-1]["disable"] is False


def test_rank_0_trains_the_base_with_the_progress_asked_for(two_ranks, monkeypatch):
    two_ranks(0)
    asked = []
    monkeypatch.setattr(collect_lib, "train_base", lambda *a: asked.append(a[-1]))
    m = tiny_model()
    for progress in (True, False):
        collect_lib._train_base_state(m, tiny_data(), ParamSpec.from_model(m), 1, 0.1, 8, 0, progress)
    assert asked == [True, False]

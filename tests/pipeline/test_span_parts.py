"""pdiff_fast.pipeline.span's parts, value by value: even_in_accuracy's choice (targets, ties, each
candidate once, the message), _perturb's noise (per-tensor RMS, float32 draws, the model's dtype),
and collect_span with its collaborators faked (the base training, the epoch, the labelling accuracy,
v2's lr): the batch, the lr, the one noisy start of every run, every step a candidate with the norm
layers kept in eval mode, the checkpoints chosen, the meta and the Population. Written against the
mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_span.py runs the recipe for
real."""
import inspect
import math

import pytest
import torch
from torch import nn

import pdiff_fast.pipeline.span as span
from pdiff_fast.data import TensorData, carve_validation
from pdiff_fast.params import ParamSpec
from pdiff_fast.pipeline.collect import accuracy as real_accuracy
from pdiff_fast.pipeline.span import SPAN_EPOCHS, SPAN_LR_FACTOR, _perturb, collect_span, even_in_accuracy


# --- even_in_accuracy -----------------------------------------------------------------------------

def test_even_in_accuracy_by_hand():
    acc = [50.0, 10.0, 30.0, 20.0, 40.0, 45.0]
    # n = 3: targets 10, 30, 50 -> indices 1, 2, 0
    assert even_in_accuracy(acc, 3) == [0, 1, 2]
    # n = 5: targets 10, 20, 30, 40, 50 -> 1, 3, 2, 4, 0
    assert even_in_accuracy(acc, 5) == [0, 1, 2, 3, 4]
    # n = 2: 10 and 50
    assert even_in_accuracy(acc, 2) == [0, 1]
    # n = 1: the highest
    assert even_in_accuracy(acc, 1) == [0]
    assert even_in_accuracy([1.0, 9.0, 5.0], 1) == [1]
    assert even_in_accuracy(acc, 6) == [0, 1, 2, 3, 4, 5]


def test_even_in_accuracy_targets_between_candidates():
    acc = [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0]
    # n = 4 over [0, 12]: targets 0, 4, 8, 12
    assert even_in_accuracy(acc, 4) == [0, 4, 8, 12]
    # n = 3 over [0, 12]: 0, 6, 12
    assert even_in_accuracy(acc, 3) == [0, 6, 12]
    # offset range [2, 14]: targets 2, 8, 14
    assert even_in_accuracy([2.0, 5.0, 8.0, 11.0, 14.0, 7.0], 3) == [0, 2, 4]
    # nearest, above or below: target 10 -> 10.3 (0.3) over 9.6 (0.4), 9.6 (0.4) over 10.5 (0.5)
    assert even_in_accuracy([0.0, 10.3, 9.6, 20.0], 3) == [0, 1, 3]
    assert even_in_accuracy([0.0, 10.5, 9.6, 20.0], 3) == [0, 2, 3]  # target 10: 9.6 (0.4) over 10.5 (0.5)


def test_even_in_accuracy_ties_go_to_the_earlier_and_each_candidate_is_used_once():
    # targets 0, 5, 10: 4 and 6 are both 1 away from 5 -> the earlier index (6.0 at 1, 4.0 at 2)
    assert even_in_accuracy([0.0, 6.0, 4.0, 10.0], 3) == [0, 1, 3]
    assert even_in_accuracy([0.0, 4.0, 6.0, 10.0], 3) == [0, 1, 3]
    assert even_in_accuracy([7.0, 7.0, 7.0, 7.0], 3) == [0, 1, 2]
    # targets 3, 6.5, 10: 9 (2.5 away) for 6.5, so 10 takes the first 10
    assert even_in_accuracy([10.0, 3.0, 10.0, 9.0], 3) == [0, 1, 3]
    # targets 0, 10/3, 20/3, 10: the two 1s go to the second and (once 10 is taken) the last target
    assert even_in_accuracy([0.0, 1.0, 1.0, 10.0], 4) == [0, 1, 2, 3]


@pytest.mark.parametrize("n, m", [(0, 3), (4, 3), (-1, 3), (1, 0)])
def test_even_in_accuracy_needs_1_to_len_checkpoints(n, m):
    with pytest.raises(ValueError) as e:
        even_in_accuracy([float(i) for i in range(m)], n)
    assert str(e.value) == f"collect span: {n} checkpoints cannot be chosen from {m} steps"


# --- _perturb -------------------------------------------------------------------------------------

def norm_model(dtype=torch.float32):
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)).to(dtype)
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([1.0, -2.0, 3.0, 0.5]))
        m[1].bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.4]))
    return m, ParamSpec.from_model(m, "last-1-norm-layers")


def rms(t):
    return t.double().pow(2).mean().sqrt().item()


def test_perturb_by_hand():
    m, spec = norm_model()
    w0, b0 = m[1].weight.detach().clone(), m[1].bias.detach().clone()
    lin = m[0].weight.detach().clone()
    _perturb(m, spec, 0.3, torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    nw, nb = torch.randn(4, generator=g), torch.randn(4, generator=g)
    torch.testing.assert_close(m[1].weight.detach(), w0 + 0.3 * rms(w0) * nw)
    torch.testing.assert_close(m[1].bias.detach(), b0 + 0.3 * rms(b0) * nb)
    assert torch.equal(m[0].weight.detach(), lin)  # outside the subset: untouched
    assert m[1].weight.grad is None  # under no_grad: no graph, no gradient


def test_perturb_scale_zero_leaves_the_subset():
    m, spec = norm_model()
    before = spec.flatten([m])[0].clone()
    _perturb(m, spec, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(spec.flatten([m])[0], before)


def test_perturb_draws_float32_noise_whatever_the_default_dtype():
    # 16 values: from 16 on, float64 draws are other numbers than float32 ones (not just rounder)
    m = nn.Sequential(nn.BatchNorm1d(16))
    with torch.no_grad():
        m[0].weight.copy_(torch.linspace(-2.0, 3.0, 16))
    spec = ParamSpec.from_model(m, "last-1-norm-layers")
    w0 = m[0].weight.detach().clone()
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _perturb(m, spec, 1.0, torch.Generator().manual_seed(1))
    finally:
        torch.set_default_dtype(old)
    nw = torch.randn(16, generator=torch.Generator().manual_seed(1), dtype=torch.float32)
    assert m[0].weight.dtype == torch.float32
    torch.testing.assert_close(m[0].weight.detach(), w0 + rms(w0) * nw)


def test_perturb_measures_the_rms_in_float32_and_adds_in_the_models_dtype():
    # half precision: 300^2 overflows float16, so the RMS must be taken in float32
    m = nn.BatchNorm1d(3).half()
    with torch.no_grad():
        m.weight.fill_(300.0)
        m.bias.fill_(0.25)
    spec = ParamSpec.from_model(nn.Sequential(m), "last-1-norm-layers")
    model = nn.Sequential(m)
    _perturb(model, spec, 0.01, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    nw, nb = torch.randn(3, generator=g), torch.randn(3, generator=g)
    assert m.weight.dtype == torch.float16 and torch.isfinite(m.weight).all()
    want_w = torch.full((3,), 300.0, dtype=torch.float16) + (0.01 * 300.0 * nw).half()
    want_b = torch.full((3,), 0.25, dtype=torch.float16) + (0.01 * 0.25 * nb).half()
    assert torch.equal(m.weight.detach(), want_w)
    assert torch.equal(m.bias.detach(), want_b)


# --- collect_span, its collaborators faked ---------------------------------------------------------

def data(n_train=100, n_test=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return TensorData("toy", torch.randn(n_train, 4, generator=g), torch.randint(0, 3, (n_train,), generator=g),
                      torch.randn(n_test, 4, generator=g), torch.randint(0, 3, (n_test,), generator=g), 3)


def model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    with torch.no_grad():
        m[1].weight.copy_(torch.tensor([2.0, -1.0, 0.5]))
        m[1].bias.copy_(torch.tensor([-1.0, 0.3, 0.7]))
    return m, ParamSpec.from_model(m, "last-1-norm-layers")


def score(row):
    """The faked validation accuracy of a subset row: its mean, folded so that it climbs and falls."""
    return float(round(50 + 10 * math.sin(row.double().mean().item()), 6))


class Fakes:
    """span's collaborators faked and recorded: the base training, the epoch (one step per batch,
    every subset value + 1 per step), the labelling accuracy (score of the subset), v2's lr."""

    def __init__(self, monkeypatch, spec, v2_lr="real"):
        self.spec, self.calls = spec, {"base": [], "epoch": [], "accuracy": [], "v2": [], "carve": []}
        self.rows, self.norm_training, self.v2_lr = [], [], v2_lr
        for name in ("_train_base_state", "_epoch", "accuracy", "v2_subset_lr", "carve_validation"):
            monkeypatch.setattr(span, name, getattr(self, name))

    def _train_base_state(self, model, data, spec, epochs, lr, batch_size, seed, progress):
        self.calls["base"].append((model, data, spec, epochs, lr, batch_size, seed, progress))
        return {"base": torch.tensor([1.0])}

    def carve_validation(self, data, fraction, seed):
        out = carve_validation(data, fraction, seed)
        self.calls["carve"].append((data, fraction, seed, out))
        return out

    def v2_subset_lr(self, model, spec, subset_lr, lr, epochs, batch_size, bs):
        self.calls["v2"].append((model, spec, subset_lr, lr, epochs, batch_size, bs))
        return subset_lr if self.v2_lr == "real" else self.v2_lr

    def _epoch(self, model, opt, data, batch_size, gen, on_step=None, freeze_norm=False):
        self.calls["epoch"].append({"n": len(data.y_train), "bs": batch_size, "seed": gen.initial_seed(),
                                    "lr": opt.param_groups[0]["lr"], "freeze_norm": freeze_norm,
                                    "on_step": on_step is not None, "start": self.spec.flatten([model])[0].clone()})
        model.train()
        if freeze_norm:
            span._set_norm_eval(model)
        for step in range(-(-len(data.y_train) // batch_size)):
            self.norm_training.append(model[1].training)
            with torch.no_grad():
                for p in model[1].parameters():
                    p.add_(1.0)
            self.rows.append(self.spec.flatten([model])[0].clone())
            if on_step is not None:
                on_step(step)

    def accuracy(self, model, x, y):
        self.calls["accuracy"].append((x, y))
        was = model.training
        model.eval()
        out = score(self.spec.flatten([model])[0])
        model.train(was)
        return out


def start_of(m, spec, noise, seed):
    """The one noisy start of every run: the base subset + noise * rms * N(0, 1) from `seed`."""
    m = m.__class__(*[layer for layer in m])  # the same layers: only read
    g = torch.Generator().manual_seed(seed)
    w, b = m[1].weight.detach(), m[1].bias.detach()
    return torch.cat([w + noise * rms(w) * torch.randn(3, generator=g), b + noise * rms(b) * torch.randn(3, generator=g)])


def test_collect_span_by_hand(monkeypatch):
    m, spec = model()
    d = data()
    base_row = spec.flatten([m])[0].clone()
    fakes = Fakes(monkeypatch, spec)
    pop = collect_span(m, d, spec, epochs=4, k=5, lr=0.2, batch_size=128, seed=3, trajectories=2, progress=False,
                       val_fraction=0.1, span_noise=0.5)
    rest, x_val, y_val = carve_validation(d, 0.1, 3)
    assert len(y_val) == 10 and len(rest.y_train) == 90
    # the batch: min(128, max(1, 90 // (4 * 3))) = 7 (shares [3, 2]); 13 steps an epoch, 39 a run
    assert [c["bs"] for c in fakes.calls["epoch"]] == [7] * 6
    assert [c["n"] for c in fakes.calls["epoch"]] == [90] * 6
    assert [c["freeze_norm"] for c in fakes.calls["epoch"]] == [True] * 6
    assert [c["on_step"] for c in fakes.calls["epoch"]] == [True] * 6
    assert [c["seed"] for c in fakes.calls["epoch"]] == [4] * 3 + [5] * 3
    # v2's lr of a norm-only subset is subset_lr (None): the run's lr is 0.1 * lr * 0.1
    assert fakes.calls["v2"] == [(m, spec, None, 0.2, 4, 128, 7)]
    assert [c["lr"] for c in fakes.calls["epoch"]] == [pytest.approx(0.1 * 0.2 * 0.1)] * 6
    # the base training: on the training data minus the validation split
    (bm, bd, bspec, bepochs, blr, bbs, bseed, bprogress), = fakes.calls["base"]
    assert (bm, bspec, bepochs, blr, bbs, bseed, bprogress) == (m, spec, 4, 0.2, 128, 3, False)
    assert torch.equal(bd.x_train, rest.x_train) and torch.equal(bd.y_train, rest.y_train)
    (cd, cf, cs, _), = fakes.calls["carve"]
    assert (cd, cf, cs) == (d, 0.1, 3)
    # both runs start from the same noisy subset (seed 3), not from the base
    start = start_of(m, spec, 0.5, 3)
    torch.testing.assert_close(fakes.calls["epoch"][0]["start"], start)
    torch.testing.assert_close(fakes.calls["epoch"][3]["start"], start)
    # every step is a candidate, labelled on the validation split, with the norm layers in eval mode
    assert len(fakes.rows) == 78 and fakes.norm_training == [False] * 78
    labels = fakes.calls["accuracy"]
    assert len(labels) == 78
    assert all(torch.equal(x, x_val) and torch.equal(y, y_val) for x, y in labels)
    # each run keeps its share, chosen evenly in (faked) validation accuracy
    want_rows, want_traj, want_step = [], [], []
    for j, n in enumerate([3, 2]):
        rows = fakes.rows[39 * j:39 * (j + 1)]
        for i in range(39):
            torch.testing.assert_close(rows[i], start + (i + 1.0))
        chosen = even_in_accuracy([score(r) for r in rows], n)
        want_rows += [rows[i] for i in chosen]
        want_traj += [j] * n
        want_step += chosen
    assert pop.trajectory.tolist() == want_traj and pop.step.tolist() == want_step
    torch.testing.assert_close(pop.params, torch.stack(want_rows))
    # the labels of the saved parameters themselves (collect's accuracy, not faked)
    for i in range(5):
        spec.load_into(m, pop.params[i])
        assert pop.val_accuracy[i].item() == pytest.approx(real_accuracy(m, x_val, y_val))
        assert pop.accuracy[i].item() == pytest.approx(real_accuracy(m, d.x_test, d.y_test))
    assert pop.base_state == {"base": torch.tensor([1.0])} and pop.spec is spec
    assert pop.meta == {"recipe": "span", "epochs": 4, "k": 5, "lr": 0.2, "batch_size": 7, "seed": 3,
                        "trajectories": 2, "subset_lr": pytest.approx(0.1 * 0.2 * 0.1), "subset_epochs": SPAN_EPOCHS,
                        "span_noise": 0.5, "val_fraction": 0.1, "n_val": 10, "n_train": 90}
    assert SPAN_EPOCHS == 3 and SPAN_LR_FACTOR == 0.1
    spec.load_into(m, base_row)


def test_collect_span_lr_from_v2(monkeypatch):
    m, spec = model()
    fakes = Fakes(monkeypatch, spec, v2_lr=0.37)
    pop = collect_span(m, data(), spec, epochs=2, k=2, lr=0.5, subset_lr=0.9, batch_size=4, seed=0,
                       trajectories=1, progress=False)
    assert fakes.calls["v2"] == [(m, spec, 0.9, 0.5, 2, 4, 4)]
    assert pop.meta["subset_lr"] == pytest.approx(0.037) and pop.meta["batch_size"] == 4
    assert [c["lr"] for c in fakes.calls["epoch"]] == [pytest.approx(0.037)] * 3
    assert pop.meta["val_fraction"] == 0.1 and pop.meta["span_noise"] == 1.0  # the defaults


def test_collect_span_v2_lr_of_zero_is_kept(monkeypatch):
    m, spec = model()
    Fakes(monkeypatch, spec, v2_lr=0.0)
    pop = collect_span(m, data(), spec, epochs=2, k=2, lr=0.5, trajectories=1, progress=False)
    assert pop.meta["subset_lr"] == 0.0


@pytest.mark.parametrize("n_data, k, trajectories, batch_size, want", [
    (100, 5, 2, 128, 7),  # 90 // 12
    (100, 5, 2, 5, 5),  # the batch asked for, when smaller
    (20, 5, 2, 128, 1),  # 18 // 12 = 1
    (20, 6, 1, 128, 1),  # 18 // 24 = 0 -> at least 1
    (100, 4, 2, 128, 11),  # 90 // 8
])
def test_collect_span_batch(monkeypatch, n_data, k, trajectories, batch_size, want):
    m, spec = model()
    fakes = Fakes(monkeypatch, spec)
    pop = collect_span(m, data(n_data), spec, epochs=1, k=k, batch_size=batch_size, trajectories=trajectories,
                       progress=False)
    assert pop.meta["batch_size"] == want and {c["bs"] for c in fakes.calls["epoch"]} == {want}
    assert fakes.calls["v2"][0][-1] == want


def test_collect_span_signature_defaults():
    defaults = {n: p.default for n, p in inspect.signature(collect_span).parameters.items()
                if p.default is not inspect.Parameter.empty}
    assert defaults == {"epochs": 10, "k": 200, "lr": 0.1, "subset_lr": None, "batch_size": 128, "seed": 0,
                        "trajectories": 4, "progress": True, "val_fraction": 0.1, "span_noise": 1.0}


def test_collect_span_defaults(monkeypatch):
    m, spec = model()
    fakes = Fakes(monkeypatch, spec)
    pop = collect_span(m, data(300), spec, k=4, progress=False)
    assert pop.meta == {"recipe": "span", "epochs": 10, "k": 4, "lr": 0.1, "batch_size": 270 // 4, "seed": 0,
                        "trajectories": 4, "subset_lr": pytest.approx(0.1 * 0.1 * 0.1), "subset_epochs": 3,
                        "span_noise": 1.0, "val_fraction": 0.1, "n_val": 30, "n_train": 270}
    assert fakes.calls["base"][0][3:] == (10, 0.1, 128, 0, False)
    assert [c["seed"] for c in fakes.calls["epoch"]] == [1] * 3 + [2] * 3 + [3] * 3 + [4] * 3
    torch.testing.assert_close(fakes.calls["epoch"][0]["start"], start_of(m, spec, 1.0, 0))


def test_collect_span_progress(monkeypatch, capsys):
    m, spec = model()
    fakes = Fakes(monkeypatch, spec)
    collect_span(m, data(), spec, epochs=1, k=2, trajectories=1, progress=True)
    assert fakes.calls["base"][0][-1] is True
    err = capsys.readouterr().err
    assert err.startswith("\rcollect span checkpoints: ") or err.startswith("collect span checkpoints: "), err[:80]
    collect_span(m, data(), spec, epochs=1, k=2, trajectories=1, progress=False)
    assert fakes.calls["base"][1][-1] is False
    assert "collect span" not in capsys.readouterr().err


def test_collect_span_noise_zero_starts_from_the_base(monkeypatch):
    m, spec = model()
    base = spec.flatten([m])[0].clone()
    fakes = Fakes(monkeypatch, spec)
    pop = collect_span(m, data(), spec, epochs=1, k=2, trajectories=2, progress=False, span_noise=0.0)
    assert torch.equal(fakes.calls["epoch"][0]["start"], base) and torch.equal(fakes.calls["epoch"][3]["start"], base)
    assert pop.meta["span_noise"] == 0.0


@pytest.mark.parametrize("bad", [-0.5, -1e-9, math.nan, -math.inf])
def test_collect_span_refuses_a_negative_noise(monkeypatch, bad):
    m, spec = model()
    fakes = Fakes(monkeypatch, spec)
    with pytest.raises(ValueError) as e:
        collect_span(m, data(), spec, k=2, trajectories=1, progress=False, span_noise=bad)
    assert str(e.value) == f"span_noise must be >= 0, got {bad!r}"
    assert fakes.calls["base"] == []


def test_perturb_rounds_the_noise_to_the_models_dtype_before_adding():
    w0 = torch.tensor([1.0, -2.0, 3.0, 0.5, 1.5, -0.75, 2.25, 0.3])
    m = nn.BatchNorm1d(8).to(torch.bfloat16)
    with torch.no_grad():
        m.weight.copy_(w0)
        m.bias.zero_()
    model = nn.Sequential(m)
    spec = ParamSpec.from_model(model, "last-1-norm-layers")
    _perturb(model, spec, 1.0, torch.Generator().manual_seed(0))
    w = w0.to(torch.bfloat16)
    noise = w.float().pow(2).mean().sqrt() * torch.randn(8, generator=torch.Generator().manual_seed(0))
    want = w.clone().add_(noise.to(torch.bfloat16))
    assert not torch.equal(want, w.clone().add_(noise))  # adding in float32 rounds differently here
    assert m.weight.dtype == torch.bfloat16 and torch.equal(m.weight.detach(), want)

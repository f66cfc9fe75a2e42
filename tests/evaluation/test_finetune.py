"""pdiff_fast.evaluation.finetuning: batched subset training from several start sets, checked against
collect's one-model-at-a-time subset training (torch.optim.SGD on a deep copy, same batches)."""
import copy
import json
import math

import pytest
import torch
from torch import nn

from pdiff_fast.pipeline import collect
from pdiff_fast.evaluation import finetuning as ft
from pdiff_fast.data import TensorData
from pdiff_fast.params import ParamSpec
from pdiff_fast.evaluation.population import evaluate_population

pytestmark = pytest.mark.usefixtures("one_thread")


def _learnable_data(n_train=512, n_test=256, features=8, classes=3) -> TensorData:
    """Gaussian inputs labelled by a fixed random linear rule: a problem a small MLP learns."""
    g = torch.Generator().manual_seed(1)
    w = torch.randn(features, classes, generator=g)
    x = torch.randn(n_train + n_test, features, generator=g)
    y = (x @ w).argmax(1)
    return TensorData("rule", x[:n_train], y[:n_train], x[n_train:], y[n_train:], classes)


@pytest.fixture(scope="module")
def setup():
    """A trained MLP with two BatchNorm layers; the subset: the last BatchNorm layer and the
    linear head (D = 83); two start sets: the trained values plus noise ("near") and
    random_starts ("random")."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a module fixture: before the one_thread fixture applies
    torch.manual_seed(0)
    data = _learnable_data()
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(),
                          nn.Linear(16, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    collect.train_base(model, data, epochs=5, lr=0.1, batch_size=64, progress=False)
    spec = ParamSpec.from_model(model, ["4.*", "6.*"])
    trained = spec.flatten([model])
    original = trained + 0.05 * torch.randn(8, spec.dim, generator=torch.Generator().manual_seed(2))
    starts = {"near": original[:2], "random": ft.random_starts(spec, original, 6, seed=3)}
    torch.set_num_threads(threads)
    return model, spec, data, starts


@pytest.fixture(scope="module")
def result(setup):
    model, spec, data, starts = setup
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return ft.finetune(model, spec, data, starts, epochs=(0, 1, 3), lr=0.05, batch_size=64)
    finally:
        torch.set_num_threads(threads)


def _one_by_one(model, spec, data, rows, epochs, lr, batch_size, seed):
    """The reference: each row in a deep copy, collect's subset training (torch.optim.SGD,
    freeze_norm), a generator seeded with `seed`. Returns the rows after each epoch count and
    the trained models."""
    out, models = [[] for _ in epochs], []
    for row in rows:
        m = copy.deepcopy(model)
        spec.load_into(m, row)
        opt = collect._sgd(collect._subset_params(m, spec), lr)
        gen = torch.Generator().manual_seed(seed)
        for e in range(epochs[-1] + 1):
            if e in epochs:
                out[epochs.index(e)].append(spec.flatten([m])[0])
            if e < epochs[-1]:
                collect._epoch(m, opt, data, batch_size, gen, freeze_norm=True)
        models.append(m.eval())
    return [torch.stack(o) for o in out], models


def test_batched_training_equals_one_model_at_a_time(setup):
    model, spec, data, starts = setup
    rows = torch.cat([starts["near"], starts["random"][:2]])  # 4 rows from 2 start sets
    assert not torch.equal(rows[0], rows[2])
    epochs = [0, 1, 2]
    want, models = _one_by_one(model, spec, data, rows, epochs, lr=0.05, batch_size=64, seed=7)
    got = ft.finetune_rows(model, spec, data, rows, epochs=epochs, lr=0.05, batch_size=64, seed=7)
    assert len(got) == 3 and all(g.shape == rows.shape for g in got)
    assert torch.equal(got[0], rows)
    assert not torch.allclose(got[2], rows, atol=1e-3)  # it did train
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
    # one row per chunk (a tiny memory budget) and the plain loop (no vmap) give the same
    tiny = ft.finetune_rows(model, spec, data, rows, epochs=epochs, lr=0.05, batch_size=64, seed=7,
                            memory_budget_bytes=1)
    torch.testing.assert_close(tiny[2], want[2], rtol=1e-4, atol=1e-5)
    with pytest.MonkeyPatch.context() as mp, pytest.warns(UserWarning, match="one by one"):
        mp.setattr(ft, "_vmap_works", lambda *a: False)
        loop = ft.finetune_rows(model, spec, data, rows, epochs=epochs, lr=0.05, batch_size=64, seed=7)
    torch.testing.assert_close(loop[2], want[2], rtol=1e-4, atol=1e-5)
    # another seed: another batch order
    other = ft.finetune_rows(model, spec, data, rows, epochs=[1], lr=0.05, batch_size=64, seed=8)
    assert not torch.allclose(other[0], want[1], atol=1e-6)


def test_only_the_subset_moves_and_running_stats_stay(setup):
    model, spec, data, starts = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = starts["random"][:3]
    res = ft.finetune(model, spec, data, {"r": rows}, epochs=(2,), lr=0.05, batch_size=64, seed=7)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # base_model untouched
    # the reference models (collect's freeze_norm training) keep every other parameter and the
    # BatchNorm running statistics of the base model, and finetune scores them the same
    _, models = _one_by_one(model, spec, data, rows, [2], lr=0.05, batch_size=64, seed=7)
    subset = set(spec.names)
    for m in models:
        state = m.state_dict()
        assert all(torch.equal(before[k], state[k]) for k in before if k not in subset)
    want = [collect.accuracy(m, data.x_test, data.y_test) for m in models]
    got = [row[0] for row in res["starts"]["r"]["accuracy"]]
    assert got == pytest.approx(want, abs=100 / len(data.y_test) + 1e-4)  # at most one test sample apart


def test_epoch_zero_is_the_starts_accuracy(setup, result):
    model, spec, data, starts = setup
    for name, flat in starts.items():
        want = evaluate_population(model, spec, flat, data.x_test, data.y_test).accuracy.tolist()
        assert [row[0] for row in result["starts"][name]["accuracy"]] == want


def test_training_improves_random_starts(setup, result):
    model, spec, data, _ = setup
    base = collect.accuracy(model, data.x_test, data.y_test)
    s = result["starts"]["random"]["summary"]
    # random values at the originals' scale lose much of the trained model's accuracy ...
    assert s["0"]["median"] < base - 10
    # ... and three epochs of subset training win a large part of it back
    assert s["3"]["median"] > s["0"]["median"] + 10
    assert s["3"]["mean"] > s["1"]["mean"] > s["0"]["mean"]


def test_result_is_json_and_summarises_each_epoch(result):
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text) == result
    assert result["epochs"] == [0, 1, 3] and set(result["starts"]) == {"near", "random"}
    for s in result["starts"].values():
        assert len(s["accuracy"]) == s["n"] and all(len(row) == 3 for row in s["accuracy"])
        assert set(s["summary"]) == {"0", "1", "3"}
        for j, e in enumerate(result["epochs"]):
            col = [row[j] for row in s["accuracy"]]
            su = s["summary"][str(e)]
            assert su["best"] == max(col) and su["mean"] == pytest.approx(sum(col) / len(col))


def test_random_starts_match_the_originals_scale_per_segment():
    spec = ParamSpec(["a", "b", "c"], [(4,), (3, 2), (10,)], [torch.float32] * 3)
    g = torch.Generator().manual_seed(0)
    scales = {"a": (1.0, 0.1), "b": (-3.0, 2.0), "c": (0.0, 0.01)}
    original = torch.cat([m + s * torch.randn(20, seg.numel, generator=g)
                          for seg, (m, s) in zip(spec.segments, scales.values())], 1)
    rand = ft.random_starts(spec, original, 3000, seed=5)
    assert rand.shape == (3000, spec.dim) and rand.dtype == torch.float32
    for seg in spec.segments:
        sl = slice(seg.offset, seg.offset + seg.numel)
        o, r = original[:, sl].double(), rand[:, sl].double()
        o_std = o.std(unbiased=False).item()
        assert abs(r.mean().item() - o.mean().item()) < 0.05 * o_std, seg.name
        assert r.std().item() == pytest.approx(o_std, rel=0.05), seg.name
    assert torch.equal(rand, ft.random_starts(spec, original, 3000, seed=5))
    assert not torch.equal(rand[:10], ft.random_starts(spec, original, 10, seed=6))
    with pytest.raises(ValueError, match="original must be"):
        ft.random_starts(spec, original[:, :5], 3, seed=0)


def test_bad_input_is_refused_clearly(setup):
    model, spec, data, starts = setup
    call = lambda s=starts, **kw: ft.finetune(model, spec, data, s, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="sorted"):
        call(epochs=(1, 0))
    with pytest.raises(ValueError, match="sorted"):
        call(epochs=(0, 1, 1))
    with pytest.raises(ValueError, match="non-negative ints"):
        call(epochs=(-1, 2))
    with pytest.raises(ValueError, match="non-negative ints"):
        call(epochs=(0, 1.5))
    with pytest.raises(ValueError, match="epochs is empty"):
        call(epochs=())
    with pytest.raises(ValueError, match=rf"start 'wide' must be an \(n, {spec.dim}\) tensor"):
        call({"ok": starts["near"], "wide": torch.zeros(2, spec.dim + 1)})
    with pytest.raises(ValueError, match="start 'none' holds no rows"):
        call({"none": torch.zeros(0, spec.dim)})
    with pytest.raises(ValueError, match="starts is empty"):
        call({})


def test_table_and_plot_show_every_start(result, tmp_path):
    table = ft.format_finetune_table(result)
    lines = table.splitlines()
    assert lines[0].startswith("| start | n | mean @0 | median @0 | best @0 | mean @1")
    for name, s in result["starts"].items():
        row = next(line for line in lines if line.startswith(f"| {name} |"))
        assert f"{s['summary']['3']['median']:.2f}" in row and f"{s['summary']['0']['best']:.2f}" in row
    title = ft.plot_title(result)
    assert title.startswith("After 3 epochs: ")
    for name, s in result["starts"].items():
        assert f"{name} {s['summary']['3']['median']:.1f}" in title
    path = ft.plot_finetune(result, tmp_path / "plots" / "finetune.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["finetune.png"]  # no temporary left behind


def test_diverged_rows_are_reported_not_fatal(setup):
    model, spec, data, starts = setup
    bad = starts["near"].clone()
    bad[1, 0] = math.nan
    res = ft.finetune(model, spec, data, {"bad": bad}, epochs=(0, 1), lr=0.05, batch_size=64)
    acc = res["starts"]["bad"]["accuracy"]
    assert acc[1] == [None, None] and all(v is not None for v in acc[0])
    assert res["starts"]["bad"]["summary"]["1"]["n"] == 1
    json.dumps(res, allow_nan=False)

"""pdiff_fast.evaluation.finetuning's parts, value by value: the checks and their messages in full,
what autograd keeps per sample, the per-row losses with and without vmap, the rows trained in
chunks of any budget giving the same values, the result's layout for several starts, the random
starts' scale and seed, and the table, title and plot in full. Written against the mutants mutmut
left alive (tests/mutation, docs/mutation-scores.md)."""
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdiff_fast.data import TensorData
from pdiff_fast.evaluation import finetuning as ft
from pdiff_fast.params import ParamSpec, Standardizer

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    w = torch.randn(4, 3, generator=g)
    x = torch.randn(90, 4, generator=g)
    y = (x @ w).argmax(1)
    data = TensorData("rule", x[:60], y[:60], x[60:], y[60:], 3)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    model[1].running_mean.fill_(0.1)
    spec = ParamSpec.from_model(model, ["1.*", "3.bias"])  # D = 15
    return model, spec, data


# --- checks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("epochs, message", [
    ((), r"^finetune: epochs is empty \(give epoch counts, e\.g\. \(0, 1, 5\)\)$"),
    ((0, -1), r"^finetune: epochs must be non-negative ints, got -1 in \[0, -1\]$"),
    ((0, True), r"^finetune: epochs must be non-negative ints, got True in \[0, True\]$"),
    ((0, 2.0), r"^finetune: epochs must be non-negative ints, got 2\.0 in \[0, 2\.0\]$"),
    ((0, 2, 2), r"^finetune: epochs must be sorted in increasing order without repeats, got \[0, 2, 2\]$"),
    ((3, 1), r"^finetune: epochs must be sorted in increasing order without repeats, got \[3, 1\]$"),
])
def test_bad_epochs(epochs, message):
    with pytest.raises(ValueError, match=message):
        ft._check_epochs(epochs)


def test_good_epochs_come_back_as_a_list():
    assert ft._check_epochs((0, 1, 5)) == [0, 1, 5]
    assert ft._check_epochs(iter([0])) == [0] and ft._check_epochs([2, 7]) == [2, 7]


def test_bad_starts():
    _, spec, _ = tiny()
    with pytest.raises(ValueError, match=r"^finetune: starts is empty \(give at least one start set, e\.g\. "
                                         r"\{'generated': flat\}\)$"):
        ft._check_starts(spec, {})
    for bad, shape in ((torch.zeros(2, 16), r"\(2, 16\)"), (torch.zeros(15), r"\(15,\)"),
                       (torch.zeros(1, 2, 15), r"\(1, 2, 15\)"), ([[0.0] * 15], "list")):
        with pytest.raises(ValueError, match=rf"^finetune: start 'x' must be an \(n, 15\) tensor \(D = the subset's "
                                             rf"width\), got {shape}$"):
            ft._check_starts(spec, {"ok": torch.zeros(1, 15), "x": bad})
    with pytest.raises(ValueError, match=r"^finetune: start 'empty' holds no rows$"):
        ft._check_starts(spec, {"empty": torch.zeros(0, 15)})
    ft._check_starts(spec, {"ok": torch.zeros(1, 15)})


def test_bad_rows_batch_sizes_and_rates():
    model, spec, data = tiny()
    rows = torch.zeros(2, 15)
    for bad in (torch.zeros(2, 14), torch.zeros(0, 15), torch.zeros(15)):
        with pytest.raises(ValueError, match=rf"^finetune: rows must be \(n, 15\) with n >= 1, got "
                                             rf"{re.escape(str(tuple(bad.shape)))}$"):
            ft.finetune_rows(model, spec, data, bad)
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError, match=rf"^finetune: batch_size must be a positive int, got {bad!r}$"):
            ft.finetune_rows(model, spec, data, rows, batch_size=bad)
    for bad in (0.0, -0.1, math.nan):
        with pytest.raises(ValueError, match=rf"^finetune: lr must be positive, got {bad!r}$"):
            ft.finetune_rows(model, spec, data, rows, lr=bad)
    ft.finetune_rows(model, spec, data, rows, epochs=(0,), batch_size=1)


def test_random_starts_checks():
    _, spec, _ = tiny()
    for bad in (torch.zeros(3, 14), torch.zeros(0, 15), torch.zeros(15)):
        with pytest.raises(ValueError, match=rf"^random_starts: original must be \(K, 15\) with K >= 1, got "
                                             rf"{re.escape(str(tuple(bad.shape)))}$"):
            ft.random_starts(spec, bad, 2, seed=0)
    for bad in (0, True, 1.0):
        with pytest.raises(ValueError, match=rf"^random_starts: n must be a positive int, got {bad!r}$"):
            ft.random_starts(spec, torch.ones(2, 15), bad, seed=0)


def test_random_starts_are_the_standardisers_inverse_of_seeded_noise():
    _, spec, _ = tiny()
    original = torch.randn(5, 15) * 3 + 1
    got = ft.random_starts(spec, original, 4, seed=9)
    z = torch.randn(4, 15, generator=torch.Generator().manual_seed(9))
    assert torch.equal(got, Standardizer.fit(spec, original).inverse(z))
    assert got.shape == (4, 15) and not torch.equal(got, ft.random_starts(spec, original, 4, seed=10))


# --- the pieces of training ---------------------------------------------------------------------

def test_bytes_per_sample_count_every_leafs_output():
    model = nn.Sequential(nn.Linear(4, 6), nn.Sequential(nn.ReLU(), nn.Linear(6, 3)))
    # leaves: Linear (6), ReLU (6), Linear (3) float32 values per sample; the containers are not counted
    assert ft._bytes_per_sample(model, torch.zeros(5, 4)) == 4 * (6 + 6 + 3)
    assert ft._bytes_per_sample(model.double(), torch.zeros(2, 4, dtype=torch.float64)) == 8 * 15
    assert all(not m._forward_hooks for m in model.modules())  # the hooks are removed
    assert ft._bytes_per_sample(model.float(), torch.zeros(1, 4)) == 4 * 15  # one sample: nothing to round away
    assert ft._bytes_per_sample(nn.Identity(), torch.zeros(8, 0)) == 1  # at least one byte


def test_losses_per_row_with_and_without_vmap():
    model, spec, data = tiny()
    model.eval()
    flat = spec.flatten([model]) + 0.3 * torch.randn(3, 15, generator=torch.Generator().manual_seed(0))
    params = spec.unflatten_stacked(flat)
    x, y = data.x_train[:10], data.y_train[:10]
    want = []
    for i in range(3):
        m = __import__("copy").deepcopy(model)
        spec.load_into(m, flat[i])
        want.append(F.cross_entropy(m(x), y))
    torch.testing.assert_close(ft._losses(model, params, x, y, True), torch.stack(want))
    torch.testing.assert_close(ft._losses(model, params, x, y, False), torch.stack(want))


class NoVmap(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return self.lin(x) * float(self.lin.bias.sum())  # .item() has no batching rule


def test_vmap_works_or_rows_one_by_one_with_a_warning():
    model, spec, data = tiny()
    assert ft._vmap_works(model.train(), spec, spec.flatten([model]).repeat(2, 1), data.x_train, data.y_train)
    odd = NoVmap()
    odd_spec = ParamSpec.from_model(odd, "lin.bias")
    flat = odd_spec.flatten([odd]).repeat(3, 1)
    assert not ft._vmap_works(odd, odd_spec, flat, data.x_train, data.y_train)
    with pytest.warns(UserWarning, match=r"^finetune: the model does not run under torch\.func\.vmap; training "
                                         r"the rows one by one$"):
        out = ft.finetune_rows(odd, odd_spec, data, flat, epochs=(0, 1), batch_size=16)
    assert len(out) == 2 and torch.isfinite(out[1]).all() and not torch.equal(out[1], flat)


def test_rows_of_in_spec_order_as_float32():
    _, spec, _ = tiny()
    flat = torch.arange(30.0).reshape(2, 15)
    params = {k: v.double() for k, v in reversed(list(spec.unflatten_stacked(flat).items()))}
    got = ft._rows_of(spec, params)
    assert got.dtype == torch.float32 and torch.equal(got, flat)


def test_rows_trained_in_chunks_of_any_budget_give_the_same_values(monkeypatch):
    model, spec, data = tiny()
    flat = spec.flatten([model]) + 0.2 * torch.randn(5, 15, generator=torch.Generator().manual_seed(4))
    whole = ft.finetune_rows(model, spec, data, flat, epochs=(0, 2), batch_size=16, lr=0.05)
    one = ft.finetune_rows(model, spec, data, flat, epochs=(0, 2), batch_size=16, lr=0.05, memory_budget_bytes=1)
    assert [t.shape for t in whole] == [(5, 15), (5, 15)]
    assert torch.equal(whole[0], flat)  # epoch 0: the rows themselves
    torch.testing.assert_close(one[1], whole[1], rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(ft, "CPU_TILE_BYTES", 1)  # the CPU cap alone: one row at a time
    capped = ft.finetune_rows(model, spec, data, flat, epochs=(0, 2), batch_size=16, lr=0.05)
    torch.testing.assert_close(capped[1], whole[1], rtol=1e-5, atol=1e-6)
    assert ft.MEMORY_SAFETY == 2


def test_training_follows_the_seed_the_rate_and_the_epochs():
    model, spec, data = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flat = spec.flatten([model]).repeat(2, 1)
    a = ft.finetune_rows(model, spec, data, flat, epochs=(1, 3), batch_size=8, lr=0.05, seed=0)
    b = ft.finetune_rows(model, spec, data, flat, epochs=(1, 3), batch_size=8, lr=0.05, seed=1)
    c = ft.finetune_rows(model, spec, data, flat, epochs=(1, 3), batch_size=8, lr=0.1, seed=0)
    d = ft.finetune_rows(model, spec, data, flat, epochs=(1, 2, 3), batch_size=8, lr=0.05, seed=0)
    assert len(a) == 2 and not torch.equal(a[0], flat) and not torch.equal(a[0], a[1])
    assert torch.equal(a[0][0], a[0][1])  # the same batches for every row
    assert not torch.equal(a[1], b[1]) and not torch.equal(a[1], c[1])
    assert torch.equal(d[0], a[0]) and torch.equal(d[2], a[1])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # base_model not modified
    assert model.training  # nor its mode


def one_row_by_hand(model, spec, data, row, epochs, lr, batch_size, seed):
    """One row, collect's recipe written out: a deep copy in train mode with BatchNorm frozen,
    SGD (momentum 0.9, weight decay 5e-4) on the subset only, the seed's permutation per epoch."""
    import copy

    m = copy.deepcopy(model)
    spec.load_into(m, row)
    m.train()
    for layer in m.modules():
        if isinstance(layer, nn.BatchNorm1d):
            layer.eval()
    names = set(spec.names)
    params = [p for n, p in m.named_parameters() if n in names]
    for n, p in m.named_parameters():
        p.requires_grad_(n in names)
    opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(seed)
    out = [spec.flatten([m])[0]] if epochs[0] == 0 else []
    for e in range(1, epochs[-1] + 1):
        perm = torch.randperm(len(data.y_train), generator=gen)
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            opt.zero_grad()
            F.cross_entropy(m(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
        if e in epochs:
            out.append(spec.flatten([m])[0])
    return out


def test_a_row_is_trained_as_one_model_would_be():
    model, spec, data = tiny()
    row = spec.flatten([model])[0] + 0.1
    got = ft.finetune_rows(model, spec, data, row[None], epochs=(0, 1, 2), batch_size=16, lr=0.05, seed=3)
    want = one_row_by_hand(model, spec, data, row, [0, 1, 2], 0.05, 16, 3)
    for g, w in zip(got, want):
        torch.testing.assert_close(g[0], w, rtol=1e-5, atol=1e-6)


# --- the result ----------------------------------------------------------------------------------

def test_the_result_for_several_starts():
    model, spec, data = tiny()
    base = spec.flatten([model])
    starts = {"b": base.repeat(2, 1), "a": base + 0.1 * torch.randn(3, 15, generator=torch.Generator().manual_seed(0))}
    starts["a"][2, 0] = math.nan  # diverged from the start
    res = ft.finetune(model, spec, data, starts, epochs=(0, 1), lr=0.05, batch_size=16, seed=2)
    assert list(res) == ["epochs", "lr", "batch_size", "seed", "starts"]
    assert (res["epochs"], res["lr"], res["batch_size"], res["seed"]) == ([0, 1], 0.05, 16, 2)
    assert list(res["starts"]) == ["b", "a"] and res["starts"]["b"]["n"] == 2 and res["starts"]["a"]["n"] == 3
    from pdiff_fast.evaluation.population import evaluate_population

    acc0 = evaluate_population(model, spec, torch.cat(list(starts.values())), data.x_test, data.y_test).accuracy
    assert [row[0] for row in res["starts"]["b"]["accuracy"]] == acc0[:2].tolist()
    assert [row[0] for row in res["starts"]["a"]["accuracy"]][:2] == acc0[2:4].tolist()
    assert res["starts"]["a"]["accuracy"][2] == [None, None]
    s = res["starts"]["a"]["summary"]
    assert list(s) == ["0", "1"] and s["0"]["n"] == 2 and s["0"]["median"] == min(acc0[2:4].tolist())
    assert set(s["0"]) == {"best", "mean", "median", "n"}
    all_bad = ft.finetune(model, spec, data, {"x": torch.full((1, 15), math.nan)}, epochs=(0,))
    assert all_bad["starts"]["x"]["summary"]["0"] == {"best": None, "mean": None, "median": None, "n": 0}


def test_finite_or_none():
    assert ft._finite_or_none(math.nan) is None and ft._finite_or_none(math.inf) is None
    assert ft._finite_or_none(1.5) == 1.5 and ft._finite_or_none(3) == 3 and ft._finite_or_none(None) is None


def a_result():
    return {"epochs": [0, 2], "lr": 0.05, "batch_size": 16, "seed": 2, "starts": {
        "generated": {"n": 2, "accuracy": [[90.0, 92.0], [80.0, None]],
                      "summary": {"0": {"mean": 85.0, "median": 80.0, "best": 90.0, "n": 2},
                                  "2": {"mean": 92.0, "median": 92.0, "best": 92.0, "n": 1}}},
        "random": {"n": 1, "accuracy": [[None, None]],
                   "summary": {"0": {"mean": None, "median": None, "best": None, "n": 0},
                               "2": {"mean": None, "median": None, "best": None, "n": 0}}}}}


def test_the_table_in_full():
    assert ft.format_finetune_table(a_result()) == (
        "| start | n | mean @0 | median @0 | best @0 | mean @2 | median @2 | best @2 |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|\n"
        "| generated | 2 | 85.00 | 80.00 | 90.00 | 92.00 | 92.00 | 92.00 |\n"
        "| random | 1 | — | — | — | — | — | — |\n\n"
        "(@e: after e epochs of subset training; lr 0.05, batch 16, seed 2; test accuracy in %)")


def test_plot_titles():
    r = a_result()
    assert ft.plot_title(r) == "After 2 epochs: generated 92.0, random diverged (median test accuracy)"
    r["epochs"] = [0, 1]
    r["starts"]["generated"]["summary"]["1"] = r["starts"]["generated"]["summary"]["2"]
    r["starts"]["random"]["summary"]["1"] = {"median": 50.04}
    assert ft.plot_title(r) == "After 1 epoch: generated 92.0, random 50.0 (median test accuracy)"
    r["epochs"] = [0]
    assert ft.plot_title(r) == "At the start: generated 80.0, random diverged (median test accuracy)"


def test_the_plot(monkeypatch, tmp_path):
    import pdiff_fast.io as io

    seen = {}

    def save_figure(fig, path):
        ax = fig.axes[0]
        seen.update(size=list(fig.get_size_inches()), markers=[line.get_marker() for line in ax.get_lines()],
                    title_size=ax.title.get_fontsize(),
                    band_style=[(tuple(c.get_facecolor()[0][:3]), c.get_alpha()) for c in ax.collections if c.get_paths()],
                    line_colours=[line.get_color() for line in ax.get_lines()])
        seen.update(path=path, title=ax.get_title(), xlabel=ax.get_xlabel(), ylabel=ax.get_ylabel(),
                    xticks=list(ax.get_xticks()), legend=[t.get_text() for t in ax.get_legend().get_texts()],
                    lines=[(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()],
                    bands=[c.get_paths()[0].vertices[:, 1].min() for c in ax.collections if c.get_paths()])
        return path

    monkeypatch.setattr(io, "save_figure", save_figure)
    out = ft.plot_finetune(a_result(), str(tmp_path / "f.png"))
    assert out == tmp_path / "f.png" and seen["path"] == tmp_path / "f.png"
    assert seen["title"] == ft.plot_title(a_result())
    assert seen["xlabel"] == "epochs of subset training" and seen["ylabel"] == "test accuracy (%): median, band min-max"
    assert seen["xticks"] == [0, 2] and seen["legend"] == ["generated (n=2)", "random (n=1)"]
    assert seen["lines"] == [([0, 2], [80.0, 92.0]), ([], [])]
    assert seen["bands"][0] == 80.0  # the band from the smallest finite accuracy
    assert seen["size"] == [6.0, 4.0] and seen["markers"] == ["o", "o"] and seen["title_size"] == 9.0
    import matplotlib.colors as colors
    assert seen["band_style"] == [(colors.to_rgb(seen["line_colours"][0]), 0.2)]  # the line's colour, faint


def test_finetune_hands_its_settings_on_and_splits_three_starts(monkeypatch):
    """The defaults (epochs 0, 1, 5; lr 0.01; batch 128; seed 0), the caller's budget to both the
    training and the evaluation, no predictions kept, and each start's rows in order."""
    model, spec, data = tiny()
    asked = {}
    real_rows, real_eval = ft.finetune_rows, ft.evaluate_population

    def rows(*args, **kwargs):
        asked["rows"] = kwargs
        return real_rows(*args, **kwargs)

    def evaluate(*args, **kwargs):
        asked["evaluate"] = kwargs
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(ft, "finetune_rows", rows)
    monkeypatch.setattr(ft, "evaluate_population", evaluate)
    base = spec.flatten([model])
    starts = {"one": base, "two": base.repeat(2, 1) + 1.0, "three": base.repeat(3, 1) - 1.0}
    res = ft.finetune(model, spec, data, starts, epochs=(0,))
    assert asked["rows"] == {"epochs": [0], "lr": 0.01, "batch_size": 128, "seed": 0, "memory_budget_bytes": 1 << 30}
    assert asked["evaluate"]["memory_budget_bytes"] == 1 << 30
    assert not asked["evaluate"].get("keep_predictions", True)  # the evaluator's default keeps them
    assert (res["lr"], res["batch_size"], res["seed"]) == (0.01, 128, 0)
    acc = real_eval(model, spec, torch.cat(list(starts.values())), data.x_test, data.y_test).accuracy.tolist()
    assert [row[0] for row in res["starts"]["one"]["accuracy"]] == acc[:1]
    assert [row[0] for row in res["starts"]["two"]["accuracy"]] == acc[1:3]
    assert [row[0] for row in res["starts"]["three"]["accuracy"]] == acc[3:6]
    ft.finetune(model, spec, data, {"one": base}, epochs=(0,), memory_budget_bytes=12345)
    assert asked["rows"]["memory_budget_bytes"] == 12345 and asked["evaluate"]["memory_budget_bytes"] == 12345
    ft.finetune(model, spec, data, {"one": base})
    assert asked["rows"]["epochs"] == [0, 1, 5]


def test_finetune_rows_defaults():
    model, spec, _ = tiny()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(230, 4, generator=g)
    y = torch.randint(0, 3, (230,), generator=g)
    data = TensorData("noise", x[:200], y[:200], x[200:], y[200:], 3)  # 200 samples: batches of 128 and 72
    flat = spec.flatten([model]).repeat(2, 1) + torch.tensor([[0.0], [0.1]])
    default = ft.finetune_rows(model, spec, data, flat)
    explicit = ft.finetune_rows(model, spec, data, flat, epochs=(0, 1, 5), lr=0.01, batch_size=128, seed=0)
    assert len(default) == 3 and all(torch.equal(a, b) for a, b in zip(default, explicit))
    other = ft.finetune_rows(model, spec, data, flat, epochs=(0, 1, 5), lr=0.01, batch_size=16, seed=0)
    assert not torch.equal(other[2], default[2])


def test_one_random_start():
    _, spec, _ = tiny()
    assert ft.random_starts(spec, torch.ones(2, 15), 1, seed=0).shape == (1, 15)


def test_vmap_is_used_for_a_plain_model_and_for_one_with_dropout():
    """No fallback warning for models vmap runs, dropout included (each row draws its own mask)."""
    model, spec, data = tiny()
    drop = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.2), nn.Linear(6, 3))
    drop_spec = ParamSpec.from_model(drop, "2.*")
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("error")
        ft.finetune_rows(model, spec, data, spec.flatten([model]).repeat(2, 1), epochs=(0, 1), batch_size=16)
        out = ft.finetune_rows(drop, drop_spec, data, drop_spec.flatten([drop]).repeat(2, 1), epochs=(1,),
                               batch_size=16)
    assert not torch.equal(out[0][0], out[0][1])  # the same start, different dropout masks


def test_the_base_model_its_mode_and_its_flags_are_left_alone():
    model, spec, data = tiny()
    model.eval()
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ft.finetune_rows(model, spec, data, spec.flatten([model]).repeat(2, 1), epochs=(0, 1), batch_size=16)
    assert not any(m.training for m in model.modules())
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_a_budget_of_a_few_rows_trains_them_in_chunks():
    model, spec, data = tiny()
    flat = spec.flatten([model]) + 0.2 * torch.randn(5, 15, generator=torch.Generator().manual_seed(6))
    per_row = ft._bytes_per_sample(model, data.x_train[:2]) * 16
    whole = ft.finetune_rows(model, spec, data, flat, epochs=(2,), batch_size=16, lr=0.05)
    three = ft.finetune_rows(model, spec, data, flat, epochs=(2,), batch_size=16, lr=0.05,
                             memory_budget_bytes=ft.MEMORY_SAFETY * per_row * 3 + 7)  # 3 rows and a bit
    torch.testing.assert_close(three[0], whole[0], rtol=1e-5, atol=1e-6)

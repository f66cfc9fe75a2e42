"""pdiff_fast.tasks.zoo one part at a time, on a linear model of a few values and a handful of samples
(each test well under a second): the integer checks, the per-row generators and their draws in blocks,
every error message whole, the prepared copy, the per-row losses against a hand computation, the vmap
probe, one chunk's records and index blocks, the chunk sizes the memory budget gives, the defaults
against the explicit recipe, and the Zoo's checks, file and rows. Written against the mutants mutmut
left alive (tests/mutation, docs/mutation-scores.md); test_zoo.py trains small MLPs end to end."""
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdiff_fast import io
from pdiff_fast.params import ParamSpec
from pdiff_fast.tasks import zoo
from pdiff_fast.diffusion.sample import model_seed

pytestmark = pytest.mark.usefixtures("one_thread")


def exact(msg):
    return "^" + re.escape(msg) + "$"


def linear(seed=0):
    """nn.Sequential(Flatten, Linear(3, 2)): D = 8."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3, 2))


def data(t=2, n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(t, n, 3, generator=g)
    y = torch.randint(0, 2, (t, n), generator=g)
    return x, y


# --- integers and indices -----------------------------------------------------------------------

def test_is_int():
    assert zoo._is_int(0) and zoo._is_int(-3) and zoo._is_int(7)
    assert not zoo._is_int(True) and not zoo._is_int(False)
    assert not zoo._is_int(1.0) and not zoo._is_int("1") and not zoo._is_int(None)


def test_int_vector_takes_lists_and_int_tensors_and_returns_int64():
    v = zoo._int_vector("v", [3, 1, 2])
    assert v.dtype == torch.int64 and v.tolist() == [3, 1, 2]
    w = zoo._int_vector("w", torch.tensor([4, 5], dtype=torch.int32), 2)
    assert w.dtype == torch.int64 and w.tolist() == [4, 5]
    assert zoo._int_vector("u", torch.tensor([], dtype=torch.int64), 0).tolist() == []
    for bad, desc in [(torch.zeros(2), "(2,) torch.float32"), (torch.zeros(2, 1, dtype=torch.int64), "(2, 1) torch.int64"),
                      (torch.tensor(3), "() torch.int64"), (torch.zeros(2, dtype=torch.bool), "(2,) torch.bool"),
                      (torch.zeros(2, dtype=torch.complex64), "(2,) torch.complex64")]:
        with pytest.raises(ValueError, match=exact(f"name must be a 1-D integer tensor, got {desc}")):
            zoo._int_vector("name", bad)
    with pytest.raises(ValueError, match=exact("name must have 3 entries, got 2")):
        zoo._int_vector("name", [1, 2], 3)
    with pytest.raises(ValueError, match=exact("name must have 1 entries, got 0")):
        zoo._int_vector("name", torch.tensor([], dtype=torch.int64), 1)


def test_generators_are_seeded_per_row_from_the_first_row():
    gens = zoo._generators(5, 3, 2)
    assert len(gens) == 2
    for r, g in enumerate(gens):
        want = torch.Generator().manual_seed(model_seed(5, 3 + r))
        assert torch.equal(torch.randint(0, 1000, (4,), generator=g), torch.randint(0, 1000, (4,), generator=want))
    assert zoo._generators(5, 0, 0) == []


def test_draw_is_each_rows_randint_in_its_own_count():
    counts = torch.tensor([3, 1000])
    out = zoo._draw(zoo._generators(2, 0, 2), counts, 4, 3)
    assert out.shape == (2, 4, 3) and out.dtype == torch.int64
    for r in range(2):
        g = torch.Generator().manual_seed(model_seed(2, r))
        assert torch.equal(out[r], torch.randint(0, int(counts[r]), (4, 3), generator=g))
    assert int(out[1].max()) > 3  # the second row's own count


def test_batch_indices_values_defaults_and_boundaries():
    counts = torch.tensor([4, 6])
    idx = zoo.batch_indices(counts, 3, 2, seed=7)
    for r in range(2):
        g = torch.Generator().manual_seed(model_seed(7, r))
        assert torch.equal(idx[r], torch.randint(0, int(counts[r]), (3, 2), generator=g))
    assert torch.equal(zoo.batch_indices(counts, 3, 2, 7, 0), idx)  # first_row defaults to 0
    assert torch.equal(zoo.batch_indices(counts[1:], 3, 2, 7, 1)[0], idx[1])
    assert zoo.batch_indices(counts, 0, 1, 7).shape == (2, 0, 1)  # steps 0 and batch 1 are allowed
    assert zoo.batch_indices([1], 2, 1, 7).tolist() == [[[0], [0]]]  # count 1: index 0 only
    assert zoo.batch_indices(torch.tensor([], dtype=torch.int64), 2, 3, 0).shape == (0, 2, 3)
    cases = [
        (dict(counts=torch.tensor([2, 0])), "batch_indices: counts must be >= 1, got [2, 0]"),
        (dict(counts=torch.tensor([2.0])), "batch_indices: counts must be a 1-D integer tensor, got (1,) torch.float32"),
        (dict(steps=-1), "batch_indices: steps must be a non-negative int, got -1"),
        (dict(steps=2.0), "batch_indices: steps must be a non-negative int, got 2.0"),
        (dict(steps=True), "batch_indices: steps must be a non-negative int, got True"),
        (dict(batch_size=0), "batch_indices: batch_size must be a positive int, got 0"),
        (dict(batch_size=2.0), "batch_indices: batch_size must be a positive int, got 2.0"),
        (dict(first_row=-1), "batch_indices: first_row must be a non-negative int, got -1"),
        (dict(first_row=1.0), "batch_indices: first_row must be a non-negative int, got 1.0"),
    ]
    for kw, msg in cases:
        args = {"counts": counts, "steps": 3, "batch_size": 2, "seed": 0, **kw}
        with pytest.raises(ValueError, match=exact(msg)):
            zoo.batch_indices(**args)


# --- the checks of a training call ----------------------------------------------------------------

def test_check_record_at():
    assert zoo._check_record_at(None, 4) == [4]
    assert zoo._check_record_at(None, 0) == [0]
    assert zoo._check_record_at((0, 2, 4), 4) == [0, 2, 4]
    assert zoo._check_record_at(iter([1]), 4) == [1]
    cases = [
        ((None, -1), "zoo: steps must be a non-negative int, got -1"),
        ((None, 1.0), "zoo: steps must be a non-negative int, got 1.0"),
        ((None, True), "zoo: steps must be a non-negative int, got True"),
        (((), 3), "zoo: record_at is empty (give step counts, e.g. (0, steps))"),
        (((0, 4), 3), "zoo: record_at must hold ints in [0, steps=3], got 4 in [0, 4]"),
        (((-1, 2), 3), "zoo: record_at must hold ints in [0, steps=3], got -1 in [-1, 2]"),
        (((1.0,), 3), "zoo: record_at must hold ints in [0, steps=3], got 1.0 in [1.0]"),
        (((2, 1), 3), "zoo: record_at must be sorted in increasing order without repeats, got [2, 1]"),
        (((0, 1, 1), 3), "zoo: record_at must be sorted in increasing order without repeats, got [0, 1, 1]"),
    ]
    for (rec, steps), msg in cases:
        with pytest.raises(ValueError, match=exact(msg)):
            zoo._check_record_at(rec, steps)


def test_check_recipe():
    for lr in (1, 0.5, 1e-9):
        zoo._check_recipe(lr, 1)
    for lr in (0, 0.0, -0.1, float("inf"), float("nan"), True, "0.1", None):
        with pytest.raises(ValueError, match=exact(f"zoo: lr must be a positive finite number, got {lr!r}")):
            zoo._check_recipe(lr, 1)
    for bs in (0, -1, 1.0, True):
        with pytest.raises(ValueError, match=exact(f"zoo: batch_size must be a positive int, got {bs!r}")):
            zoo._check_recipe(0.1, bs)


def test_check_data_messages_and_results():
    spec = ParamSpec.from_model(linear(), "all")
    starts = torch.zeros(2, spec.dim)
    x, y = data(t=2, n=5)
    counts, rows = zoo._check_data(spec, starts, x, y, [5, 1], [1, 0])
    assert counts.dtype == torch.int64 and counts.tolist() == [5, 1]
    assert rows.dtype == torch.int64 and rows.tolist() == [1, 0]

    def check(s=starts, x=x, y=y, c=(5, 1), t=(1, 0)):
        return zoo._check_data(spec, s, x, y, c, t)

    cases = [
        (dict(s=starts[:, 1:]), "zoo: starts must be a floating (m, 8) tensor with m >= 1 (D = spec.dim), got (2, 7)"),
        (dict(s=starts[0]), "zoo: starts must be a floating (m, 8) tensor with m >= 1 (D = spec.dim), got (8,)"),
        (dict(s=starts[:0]), "zoo: starts must be a floating (m, 8) tensor with m >= 1 (D = spec.dim), got (0, 8)"),
        (dict(s=starts.long()), "zoo: starts must be a floating (m, 8) tensor with m >= 1 (D = spec.dim), got (2, 8)"),
        (dict(s=[[0.0] * 8]), "zoo: starts must be a floating (m, 8) tensor with m >= 1 (D = spec.dim), got list"),
        (dict(x=x[:, :, 0]), "zoo: x must be a floating (T, N, *input_shape) tensor, got (2, 5)"),
        (dict(x=x.long()), "zoo: x must be a floating (T, N, *input_shape) tensor, got (2, 5, 3)"),
        (dict(x=None), "zoo: x must be a floating (T, N, *input_shape) tensor, got NoneType"),
        (dict(x=[[[0.0] * 3] * 5] * 2), "zoo: x must be a floating (T, N, *input_shape) tensor, got list"),
        (dict(y=y[:, :4]), "zoo: y must be an integer (T, N) = (2, 5) tensor (x's first two dimensions), got (2, 4)"),
        (dict(y=y[:1]), "zoo: y must be an integer (T, N) = (2, 5) tensor (x's first two dimensions), got (1, 5)"),
        (dict(y=y[..., None]), "zoo: y must be an integer (T, N) = (2, 5) tensor (x's first two dimensions), "
                               "got (2, 5, 1)"),
        (dict(y=y.float()), "zoo: y must be an integer (T, N) = (2, 5) tensor (x's first two dimensions), got (2, 5)"),
        (dict(y=y.bool()), "zoo: y must be an integer (T, N) = (2, 5) tensor (x's first two dimensions), got (2, 5)"),
        (dict(y=[[0] * 5] * 2), "zoo: y must be an integer (T, N) = (2, 5) tensor (x's first two dimensions), "
                                "got list"),
        (dict(c=(5,)), "zoo: counts must have 2 entries, got 1"),
        (dict(c=(5.0, 1.0)), "zoo: counts must be a 1-D integer tensor, got (2,) torch.float32"),
        (dict(c=(0, 1)), "zoo: counts must be in [1, N=5] (each task's real training-set size), got [0, 1]"),
        (dict(c=(5, 6)), "zoo: counts must be in [1, N=5] (each task's real training-set size), got [5, 6]"),
        (dict(t=(0,)), "zoo: task_of_row must have 2 entries, got 1"),
        (dict(t=(0, 2)), "zoo: task_of_row must index the T=2 tasks of x, got values in [0, 2]"),
        (dict(t=(-1, 1)), "zoo: task_of_row must index the T=2 tasks of x, got values in [-1, 1]"),
        (dict(t=(True, False)), "zoo: task_of_row must be a 1-D integer tensor, got (2,) torch.bool"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=exact(msg)):
            check(**kw)
    # boundaries: count 1 and N, task 0 and T - 1
    assert check(c=(1, 5), t=(0, 1))[0].tolist() == [1, 5]
    with pytest.raises(ValueError, match=exact("zoo: x holds no tasks or no samples: (2, 0, 3)")):
        zoo._check_data(spec, starts, x[:, :0], y[:, :0], (1, 1), (0, 0))
    with pytest.raises(ValueError, match=exact("zoo: x holds no tasks or no samples: (0, 5, 3)")):
        zoo._check_data(spec, starts, x[:0], y[:0], torch.tensor([], dtype=torch.int64), (0, 0))


# --- the model and its losses ------------------------------------------------------------------

def test_prepared_is_a_copy_with_only_the_subset_trained_and_batchnorm_in_eval():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Dropout(0.5), nn.Linear(4, 2)).eval()
    spec = ParamSpec.from_model(base, ["3.*"])
    m = zoo._prepared(base, spec)
    assert m is not base and m[0].weight is not base[0].weight and torch.equal(m[0].weight, base[0].weight)
    assert {n for n, p in m.named_parameters() if p.requires_grad} == {"3.weight", "3.bias"}
    assert all(p.requires_grad for p in base.parameters())  # the original untouched
    assert m.training and m[2].training and m[3].training and not m[1].training
    assert not base.training
    with pytest.raises(ValueError, match="spec does not fit"):
        zoo._prepared(nn.Linear(2, 2), spec)


def test_losses_are_each_rows_cross_entropy_on_its_own_batch():
    model = linear()
    g = torch.Generator().manual_seed(3)
    params = {"1.weight": torch.randn(3, 2, 3, generator=g), "1.bias": torch.randn(3, 2, generator=g)}
    xb, yb = torch.randn(3, 4, 3, generator=g), torch.randint(0, 2, (3, 4), generator=g)
    want = []
    for r in range(3):
        logits = xb[r] @ params["1.weight"][r].T + params["1.bias"][r]
        logp = logits - logits.logsumexp(1, keepdim=True)
        want.append(-logp[torch.arange(4), yb[r]].mean())
    want = torch.stack(want)
    for use_vmap in (True, False):
        got = zoo._losses(model, params, xb, yb, use_vmap)
        assert got.shape == (3,)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


class _NoVmap(nn.Module):
    def forward(self, x):
        return x * 2 if x.sum() > -1e9 else x


def test_losses_under_vmap_draw_each_rows_own_dropout_mask():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(3, 2)).train()
    w = torch.randn(2, 3)
    params = {"2.weight": w.expand(4, 2, 3).clone(), "2.bias": torch.zeros(4, 2)}
    xb, yb = torch.randn(1, 6, 3).expand(4, 6, 3).clone(), torch.zeros(4, 6, dtype=torch.int64)
    got = zoo._losses(model, params, xb, yb, True)  # the same row four times, four masks
    assert got.shape == (4,) and torch.isfinite(got).all() and len(set(got.tolist())) > 1
    assert zoo._vmap_works(model, params, xb, yb) is True


def test_vmap_probe_runs_on_a_copy():
    model = linear()
    params = {"1.weight": torch.randn(3, 2, 3, requires_grad=True), "1.bias": torch.randn(3, 2, requires_grad=True)}
    xb, yb = torch.randn(3, 4, 3), torch.randint(0, 2, (3, 4))
    assert zoo._vmap_works(model, params, xb, yb) is True
    assert all(p.grad is None for p in params.values())  # the probe's backward is on copies
    no = nn.Sequential(nn.Flatten(), nn.Linear(3, 2), _NoVmap())
    assert zoo._vmap_works(no, params, xb, yb) is False


def test_vmap_probe_uses_two_rows_and_two_samples(monkeypatch):
    seen = []

    def losses(model, params, xb, yb, use_vmap):
        seen.append((tuple(params["w"].shape), params["w"].requires_grad, tuple(xb.shape), tuple(yb.shape),
                     use_vmap))
        return (params["w"].sum() * 0).reshape(1)

    monkeypatch.setattr(zoo, "_losses", losses)
    w = torch.ones(5, 2)
    assert zoo._vmap_works(None, {"w": w}, torch.zeros(5, 7, 3), torch.zeros(5, 7)) is True
    assert seen == [((2, 2), True, (2, 2, 3), (2, 2), True)]
    assert not w.requires_grad


# --- one chunk ---------------------------------------------------------------------------------

def sgd_reference(model, spec, start, x, y, idx, lr, record):
    """Plain loop: momentum 0.9, weight decay 5e-4, on batches x[idx[s]]."""
    m = zoo._prepared(model, spec)
    spec.load_into(m, start)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=lr, momentum=0.9, weight_decay=5e-4)
    out = [spec.flatten([m])[0]] if 0 in record else []
    for s in range(len(idx)):
        opt.zero_grad()
        F.cross_entropy(m(x[idx[s]]), y[idx[s]]).backward()
        opt.step()
        if s + 1 in record:
            out.append(spec.flatten([m])[0])
    return out


@pytest.mark.parametrize("use_vmap", [True, False, None])
def test_train_chunk_records_and_index_blocks(monkeypatch, use_vmap):
    base = linear()
    spec = ParamSpec.from_model(base, "all")
    net = zoo._prepared(base, spec)
    x, y = data(t=2, n=6)
    counts = torch.tensor([6, 3])
    tasks = torch.tensor([1, 0, 1])
    g = torch.Generator().manual_seed(4)
    flat = spec.flatten([base]) + 0.3 * torch.randn(3, spec.dim, generator=g)
    draws = []
    real = zoo._draw

    def draw(gens, c, steps, batch_size):
        draws.append((c.tolist(), steps, batch_size))
        return real(gens, c, steps, batch_size)

    monkeypatch.setattr(zoo, "_draw", draw)
    modes = []
    real_losses = zoo._losses
    monkeypatch.setattr(zoo, "_losses", lambda *a: modes.append(a[-1]) or real_losses(*a))
    monkeypatch.setattr(zoo, "INDEX_BLOCK_BYTES", 8 * 2 * 3 * 2 + 7)  # (8 B, batch 2, 3 rows): 2 steps a block
    snaps, decided = zoo._train_chunk(net, spec, flat, x, y, counts, tasks, 5, [0, 2, 5], 0.2, 2, 9, 4, use_vmap)
    assert decided is (True if use_vmap is None else use_vmap)
    # every step under vmap or every step row by row (after the probe, itself under vmap, when undecided)
    assert modes == [True] * (use_vmap is None) + [decided] * 5
    assert draws == [([3, 6, 3], 2, 2), ([3, 6, 3], 2, 2), ([3, 6, 3], 1, 2)]
    assert len(snaps) == 3 and all(s.shape == (3, spec.dim) and s.dtype == torch.float32 for s in snaps)
    assert torch.equal(snaps[0], flat)
    idx = zoo.batch_indices(counts[tasks], 5, 2, 9, first_row=4)
    for r in range(3):
        t = int(tasks[r])
        want = sgd_reference(base, spec, flat[r], x[t], y[t], idx[r], 0.2, [0, 2, 5])
        for got, w in zip(snaps, want):
            torch.testing.assert_close(got[r], w, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(snaps[1], snaps[2])
    # without step 0 in the records, the first snapshot is after step 2; one block when it is large
    draws.clear()
    monkeypatch.setattr(zoo, "INDEX_BLOCK_BYTES", 16 << 20)
    later, _ = zoo._train_chunk(net, spec, flat, x, y, counts, tasks, 5, [2, 5], 0.2, 2, 9, 4, use_vmap)
    assert draws == [([3, 6, 3], 5, 2)]
    assert len(later) == 2
    torch.testing.assert_close(later[0], snaps[1], rtol=0, atol=0)
    torch.testing.assert_close(later[1], snaps[2], rtol=0, atol=0)


def test_train_chunk_block_is_at_least_one_step(monkeypatch):
    base = linear()
    spec = ParamSpec.from_model(base, "all")
    net = zoo._prepared(base, spec)
    x, y = data(t=1, n=4)
    draws = []
    real = zoo._draw
    monkeypatch.setattr(zoo, "_draw", lambda gens, c, s, b: draws.append(s) or real(gens, c, s, b))
    monkeypatch.setattr(zoo, "INDEX_BLOCK_BYTES", 8 * 3 * 2 - 1)  # below one step of 2 rows, batch 3
    flat = spec.flatten([base]).repeat(2, 1)
    zoo._train_chunk(net, spec, flat, x, y, torch.tensor([4]), torch.tensor([0, 0]), 3, [3], 0.1, 3, 0, 0, True)
    assert draws == [1, 1, 1]


def test_train_chunk_decides_vmap_once_and_warns(monkeypatch):
    base = nn.Sequential(nn.Flatten(), nn.Linear(3, 2), _NoVmap())
    spec = ParamSpec.from_model(base, "all")
    net = zoo._prepared(base, spec)
    x, y = data(t=1, n=4)
    probes = []
    real = zoo._vmap_works
    monkeypatch.setattr(zoo, "_vmap_works", lambda *a: probes.append(1) or real(*a))
    flat = spec.flatten([base]).repeat(2, 1)
    with pytest.warns(UserWarning, match=exact("zoo: the model does not run under torch.func.vmap; "
                                               "training the rows one by one")):
        snaps, decided = zoo._train_chunk(net, spec, flat, x, y, torch.tensor([4]), torch.tensor([0, 0]), 3, [3],
                                          0.1, 2, 0, 0, None)
    assert decided is False and probes == [1]
    idx = zoo.batch_indices(torch.tensor([4, 4]), 3, 2, 0)
    for r in range(2):
        torch.testing.assert_close(snaps[0][r], sgd_reference(base, spec, flat[r], x[0], y[0], idx[r], 0.1, [3])[0],
                                   rtol=1e-5, atol=1e-6)


# --- train_models and train_one ------------------------------------------------------------------

def spy_chunks(monkeypatch):
    calls = []
    real = zoo._train_chunk

    def chunk(model, spec, flat, x, y, counts, tasks, steps, record, lr, batch_size, seed, first_row, use_vmap):
        calls.append(dict(rows=flat.shape[0], tasks=tasks.tolist(), first_row=first_row, use_vmap=use_vmap,
                          lr=lr, batch_size=batch_size, seed=seed, steps=steps, record=list(record),
                          training=model.training))
        return real(model, spec, flat, x, y, counts, tasks, steps, record, lr, batch_size, seed, first_row, use_vmap)

    monkeypatch.setattr(zoo, "_train_chunk", chunk)
    return calls


def test_train_models_defaults_are_train_ones(monkeypatch):
    base = linear()
    spec = ParamSpec.from_model(base, "all")
    x, y = torch.randn(2, 40, 3), torch.randint(0, 2, (2, 40))
    counts, rows = torch.tensor([40, 33]), torch.tensor([1, 0])
    starts = spec.flatten([base]).repeat(2, 1)
    calls = spy_chunks(monkeypatch)
    got = zoo.train_models(base, spec, starts, x, y, counts, rows, steps=2)
    assert len(got) == 1
    assert [(c["lr"], c["batch_size"], c["seed"], c["record"], c["first_row"]) for c in calls] == [(0.05, 32, 0, [2], 0)]
    for r in range(2):
        t = int(rows[r])
        want = zoo.train_one(base, spec, starts[r], x[t, :counts[t]], y[t, :counts[t]], steps=2, lr=0.05,
                             batch_size=32, seed=0, row=r, record_at=(2,))
        torch.testing.assert_close(got[0][r], want[0], rtol=1e-5, atol=1e-6)
    for r in range(2):  # and train_one's defaults are the same recipe
        t = int(rows[r])
        torch.testing.assert_close(zoo.train_one(base, spec, starts[r], x[t, :counts[t]], y[t, :counts[t]], steps=2,
                                                 row=r)[0], got[0][r], rtol=1e-5, atol=1e-6)
    assert torch.equal(zoo.train_one(base, spec, starts[0], x[1], y[1], steps=2)[0],
                       zoo.train_one(base, spec, starts[0], x[1], y[1], steps=2, row=0, seed=0)[0])


def test_train_models_chunks_by_the_memory_budget(monkeypatch):
    base = linear()
    spec = ParamSpec.from_model(base, "all")
    x, y = data(t=2, n=5)
    starts = spec.flatten([base]).repeat(7, 1)
    rows = torch.tensor([0, 1, 0, 1, 1, 0, 0])
    monkeypatch.setattr(zoo, "_bytes_per_sample", lambda net, probe: 100 if probe.shape == (2, 3) else -1)
    monkeypatch.setattr(zoo, "MEMORY_SAFETY", 3)
    monkeypatch.setattr(zoo, "CPU_TILE_BYTES", 10 ** 9)
    warmed = []
    monkeypatch.setattr(zoo, "warm_allocator", lambda: warmed.append(1))
    calls = spy_chunks(monkeypatch)
    # per row: (100 + 3 values * 4 bytes) * batch 2 = 224 bytes; budget 3 * 224 * 2 + 5: 2 rows a chunk
    kw = dict(steps=1, lr=0.1, batch_size=2, seed=3, first_row=10)
    got = zoo.train_models(base, spec, starts, x, y, (5, 4), rows, memory_budget_bytes=3 * 224 * 2 + 5, **kw)[0]
    assert [(c["rows"], c["first_row"], c["tasks"]) for c in calls] == [
        (2, 10, [0, 1]), (2, 12, [0, 1]), (2, 14, [1, 0]), (1, 16, [0])]
    assert [c["use_vmap"] for c in calls] == [None, True, True, True]  # decided on the first chunk
    assert all(c["training"] for c in calls)
    assert warmed == [1]
    whole = zoo.train_models(base, spec, starts, x, y, (5, 4), rows, **kw)[0]
    torch.testing.assert_close(got, whole, rtol=1e-5, atol=1e-6)
    assert calls[-1]["rows"] == 7
    # a budget below one row still trains one row at a time
    calls.clear()
    zoo.train_models(base, spec, starts[:2], x, y, (5, 4), rows[:2], memory_budget_bytes=1, **kw)
    assert [c["rows"] for c in calls] == [1, 1]
    # on the CPU, the cache-sized tile caps the chunk: 3 rows of 224 bytes
    calls.clear()
    monkeypatch.setattr(zoo, "CPU_TILE_BYTES", 3 * 224 + 100)
    zoo.train_models(base, spec, starts, x, y, (5, 4), rows, **kw)
    assert [c["rows"] for c in calls] == [3, 3, 1]
    calls.clear()
    monkeypatch.setattr(zoo, "CPU_TILE_BYTES", 100)  # below one row: one row a chunk
    zoo.train_models(base, spec, starts[:2], x, y, (5, 4), rows[:2], **kw)
    assert [c["rows"] for c in calls] == [1, 1]
    # the default budget, 1 GiB: 2 rows of 2**28 bytes each, at MEMORY_SAFETY 2 (the tile out of the way)
    calls.clear()
    monkeypatch.setattr(zoo, "CPU_TILE_BYTES", 1 << 40)
    monkeypatch.setattr(zoo, "MEMORY_SAFETY", 2)
    monkeypatch.setattr(zoo, "_bytes_per_sample", lambda net, probe: (1 << 28) - 12)
    zoo.train_models(base, spec, starts[:5], x, y, (5, 4), rows[:5], steps=1, batch_size=1)
    assert [c["rows"] for c in calls] == [2, 2, 1]


def test_train_models_steps_zero_needs_no_probe_and_records(monkeypatch):
    base = nn.Sequential(nn.Flatten(), nn.Linear(3, 2), _NoVmap())
    spec = ParamSpec.from_model(base, "all")
    x, y = data(t=1, n=4)
    starts = torch.randn(2, spec.dim, dtype=torch.float64)
    calls = spy_chunks(monkeypatch)
    got = zoo.train_models(base, spec, starts, x, y, (4,), (0, 0), steps=0)
    assert calls[0]["use_vmap"] is True and calls[0]["steps"] == 0 and calls[0]["record"] == [0]
    assert len(got) == 1 and got[0].dtype == torch.float32 and torch.equal(got[0], starts.float())
    with pytest.warns(UserWarning, match="one by one"):
        out = zoo.train_models(base, spec, starts.float(), x, y, (4,), (0, 0), steps=2, record_at=(0, 1, 2), lr=0.1,
                               batch_size=2)
    assert len(out) == 3 and torch.equal(out[0], starts.float())
    idx = zoo.batch_indices(torch.tensor([4, 4]), 2, 2, 0)
    for r in range(2):
        want = sgd_reference(base, spec, starts[r].float(), x[0], y[0], idx[r], 0.1, [0, 1, 2])
        for g, w in zip(out, want):
            torch.testing.assert_close(g[r], w, rtol=1e-5, atol=1e-6)


def test_train_models_takes_integer_labels_of_any_width_and_leaves_the_model():
    base = linear()
    spec = ParamSpec.from_model(base, "all")
    x, y = data(t=2, n=5)
    starts = spec.flatten([base]).repeat(2, 1) + 0.1
    a = zoo.train_models(base, spec, starts, x, y.int(), (5, 3), (1, 0), steps=3, lr=0.1, batch_size=2)[0]
    b = zoo.train_models(base, spec, starts, x, y, (5, 3), (1, 0), steps=3, lr=0.1, batch_size=2)[0]
    assert torch.equal(a, b)
    assert torch.equal(spec.flatten([base])[0], spec.flatten([linear()])[0])


def test_train_models_on_one_task_of_one_sample():
    """T = N = 1: the probe and the sample size read task 0's sample 0, the only one."""
    base = linear()
    spec = ParamSpec.from_model(base, "all")
    x, y = data(t=1, n=1)
    starts = spec.flatten([base]).repeat(2, 1)
    got = zoo.train_models(base, spec, starts, x, y, (1,), (0, 0), steps=2, lr=0.1, batch_size=3)[0]
    want = sgd_reference(base, spec, starts[0], x[0], y[0], torch.zeros(2, 3, dtype=torch.int64), 0.1, [2])[0]
    for r in range(2):
        torch.testing.assert_close(got[r], want, rtol=1e-5, atol=1e-6)


def test_train_models_messages():
    base = linear()
    spec = ParamSpec.from_model(base, "all")
    x, y = data(t=2, n=5)
    starts = torch.zeros(2, spec.dim)
    for kw, msg in [(dict(first_row=-1), "zoo: first_row must be a non-negative int, got -1"),
                    (dict(first_row=1.0), "zoo: first_row must be a non-negative int, got 1.0"),
                    (dict(memory_budget_bytes=0), "zoo: memory_budget_bytes must be a positive int, got 0"),
                    (dict(memory_budget_bytes=1.5), "zoo: memory_budget_bytes must be a positive int, got 1.5"),
                    (dict(lr=0), "zoo: lr must be a positive finite number, got 0"),
                    (dict(record_at=(2,)), "zoo: record_at must hold ints in [0, steps=1], got 2 in [2]")]:
        with pytest.raises(ValueError, match=exact(msg)):
            zoo.train_models(base, spec, starts, x, y, (5, 3), (1, 0), steps=1, **kw)
    out = zoo.train_models(base, spec, starts, x, y, (5, 3), (1, 0), steps=1, first_row=0, memory_budget_bytes=1)
    assert len(out) == 1


def test_train_one_records_and_messages():
    base = linear()
    spec = ParamSpec.from_model(base, "all")
    x, y = data(t=1, n=6)
    x, y = x[0], y[0]
    start = spec.flatten([base])[0] + 0.2
    got = zoo.train_one(base, spec, start, x, y.int(), steps=4, lr=0.1, batch_size=3, seed=2, row=5,
                        record_at=(0, 1, 4))
    idx = zoo.batch_indices(torch.tensor([6]), 4, 3, 2, first_row=5)[0]
    want = sgd_reference(base, spec, start, x, y, idx, 0.1, [0, 1, 4])
    assert len(got) == 3 and torch.equal(got[0], start)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    assert len(zoo.train_one(base, spec, start, x, y, steps=4, record_at=(2, 3))) == 2
    assert torch.equal(spec.flatten([base])[0], spec.flatten([linear()])[0])  # not modified
    d = spec.dim
    shape_msg = "zoo: x must be (n, *input_shape) and y (n,) integer labels with n >= 1, got {} and {}"
    cases = [
        (dict(start=start[None]), f"zoo: start must be a ({d},) vector, got (1, {d})"),
        (dict(start=start[1:]), f"zoo: start must be a ({d},) vector, got ({d - 1},)"),
        (dict(start=[0.0] * d), f"zoo: start must be a ({d},) vector, got list"),
        (dict(x=x[:, 0]), shape_msg.format(x[:, 0].shape, y.shape)),
        (dict(y=y[:, None]), shape_msg.format(x.shape, y[:, None].shape)),
        (dict(y=y[:5]), shape_msg.format(x.shape, y[:5].shape)),
        (dict(x=x[:0], y=y[:0]), shape_msg.format(x[:0].shape, y[:0].shape)),
        (dict(y=y.float()), shape_msg.format(x.shape, y.shape)),
        (dict(y=y.bool()), shape_msg.format(x.shape, y.shape)),
        (dict(x=x.numpy()), shape_msg.format((6, 3), y.shape)),
        (dict(y=[0] * 6), shape_msg.format(x.shape, [0] * 6)),
        (dict(x=[[0.0] * 3] * 6), shape_msg.format([[0.0] * 3] * 6, y.shape)),
        (dict(steps=-1), "zoo: steps must be a non-negative int, got -1"),
        (dict(batch_size=0), "zoo: batch_size must be a positive int, got 0"),
    ]
    for kw, msg in cases:
        args = {"start": start, "x": x, "y": y, "steps": 1, **kw}
        with pytest.raises(ValueError, match=exact(msg)):
            zoo.train_one(base, spec, args.pop("start"), args.pop("x"), args.pop("y"), **args)


# --- the zoo -------------------------------------------------------------------------------------

def make_zoo(r=4, tasks=("a", "b"), **kw):
    spec = ParamSpec.from_model(linear(), "all")
    g = torch.Generator().manual_seed(0)
    fields = dict(params=torch.randn(r, spec.dim, generator=g), task=torch.arange(r) % len(tasks),
                  run=torch.arange(r) // len(tasks), accuracy=torch.rand(r, generator=g) * 100,
                  init=torch.randn(spec.dim, generator=g), spec=spec, tasks=list(tasks), meta={"steps": 3})
    return zoo.Zoo(**{**fields, **kw})


def test_zoo_defaults_and_fields():
    z = make_zoo(tasks=("a", "b"))
    assert z.val_accuracy is None and z.step is None and len(z) == 4
    spec = z.spec
    bare = zoo.Zoo(z.params, z.task, z.run, z.accuracy, z.init, spec, ("a", "b"))
    assert bare.meta == {} and bare.tasks == ["a", "b"] and isinstance(bare.tasks, list)
    assert make_zoo(r=1, tasks=("only",), meta={}).tasks == ["only"]
    z2 = make_zoo(val_accuracy=torch.zeros(4), step=torch.arange(4))
    assert z2.step.tolist() == [0, 1, 2, 3]


def test_zoo_messages():
    good = vars(make_zoo())
    d = good["spec"].dim
    cases = [
        (dict(spec=None), "Zoo: spec must be a ParamSpec, got NoneType"),
        (dict(spec="all"), "Zoo: spec must be a ParamSpec, got str"),
        (dict(params=good["params"].numpy()), "Zoo: params must be a torch.Tensor, got ndarray"),
        (dict(task=[0, 1, 0, 1]), "Zoo: task must be a torch.Tensor, got list"),
        (dict(run=None), "Zoo: run must be a torch.Tensor, got NoneType"),
        (dict(accuracy=good["accuracy"].double()), "Zoo: accuracy must be torch.float32, got torch.float64"),
        (dict(init=good["init"].half()), "Zoo: init must be torch.float32, got torch.float16"),
        (dict(run=good["run"].int()), "Zoo: run must be torch.int64, got torch.int32"),
        (dict(task=good["task"].float()), "Zoo: task must be torch.int64, got torch.float32"),
        (dict(params=good["params"][:, :-1]), f"Zoo: params must be (R, {d}) with R >= 1 (D = spec.dim), got (4, {d - 1})"),
        (dict(params=good["params"][0]), f"Zoo: params must be (R, {d}) with R >= 1 (D = spec.dim), got ({d},)"),
        (dict(params=good["params"][:0], task=good["task"][:0], run=good["run"][:0], accuracy=good["accuracy"][:0]),
         f"Zoo: params must be (R, {d}) with R >= 1 (D = spec.dim), got (0, {d})"),
        (dict(task=good["task"][:3]), "Zoo: task must be (4,), one entry per row of params, got (3,)"),
        (dict(run=good["run"][None]), "Zoo: run must be (4,), one entry per row of params, got (1, 4)"),
        (dict(accuracy=good["accuracy"][:2]), "Zoo: accuracy must be (4,), one entry per row of params, got (2,)"),
        (dict(val_accuracy=torch.zeros(4, dtype=torch.float64)),
         "Zoo: val_accuracy must be None or a torch.float32 (4,) tensor, one entry per row, got torch.float64 (4,)"),
        (dict(val_accuracy=torch.zeros(3)),
         "Zoo: val_accuracy must be None or a torch.float32 (4,) tensor, one entry per row, got torch.float32 (3,)"),
        (dict(step=[0, 1, 2, 3]),
         "Zoo: step must be None or a torch.int64 (4,) tensor, one entry per row, got list"),
        (dict(step=torch.zeros(4, dtype=torch.int32)),
         "Zoo: step must be None or a torch.int64 (4,) tensor, one entry per row, got torch.int32 (4,)"),
        (dict(init=good["init"][:-1]), f"Zoo: init must be ({d},) (D = spec.dim), got ({d - 1},)"),
        (dict(init=good["init"][None]), f"Zoo: init must be ({d},) (D = spec.dim), got (1, {d})"),
        (dict(tasks=[]), "Zoo: tasks must be a non-empty list of task names (str), got []"),
        (dict(tasks="ab"), "Zoo: tasks must be a non-empty list of task names (str), got 'ab'"),
        (dict(tasks=["a", 2]), "Zoo: tasks must be a non-empty list of task names (str), got ['a', 2]"),
        (dict(tasks=["a", "b", "a"]), "Zoo: task names must be distinct, got ['a', 'b', 'a']"),
        (dict(task=good["task"] + 1), "Zoo: task indices must be in [0, 2) (len(tasks)), got [1, 2]"),
        (dict(task=good["task"] - 1), "Zoo: task indices must be in [0, 2) (len(tasks)), got [-1, 0]"),
        (dict(run=good["run"] - 1), "Zoo: run must be >= 0, got min -1"),
        (dict(meta=[1]), "Zoo: meta must be a dict, got list"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=exact(msg)):
            zoo.Zoo(**{**good, **kw})
    with pytest.raises(ValueError, match=r"^Zoo: meta must be JSON-serialisable \(Object of type Tensor is not JSON "
                                         r"serializable.*\)$") as info:
        zoo.Zoo(**{**good, "meta": {"x": torch.zeros(1)}})
    assert isinstance(info.value.__cause__, TypeError)
    with pytest.raises(ValueError, match=r"^Zoo: meta must be JSON-serialisable \(Out of range float values are not JSON "
                                         r"compliant(: nan)?\)$"):  # allow_nan=False
        zoo.Zoo(**{**good, "meta": {"a": float("nan")}})
    # the boundaries that pass: task indices 0 and len - 1, run 0, a tuple of tasks
    ok = zoo.Zoo(**{**good, "task": torch.tensor([0, 1, 1, 0]), "run": torch.zeros(4, dtype=torch.int64),
                    "tasks": ("a", "b")})
    assert ok.tasks == ["a", "b"] and isinstance(ok.tasks, list)


def test_zoo_save_writes_its_metadata_and_only_the_fields_it_has(tmp_path):
    z = make_zoo(meta={"steps": 3, "model": {"hidden": [8]}})
    digest = z.save(tmp_path / "z.safetensors")
    tensors, meta, read = io.load_artifact(tmp_path / "z.safetensors")
    assert read == digest
    assert sorted(tensors) == ["zoo.accuracy", "zoo.init", "zoo.params", "zoo.run", "zoo.task"]
    assert meta["kind"] == "zoo" and meta["format"] == 1 and meta["tasks"] == ["a", "b"]
    assert meta["spec"] == z.spec.to_dict() and meta["meta"] == {"steps": 3, "model": {"hidden": [8]}}
    full = make_zoo(val_accuracy=torch.arange(4.0), step=torch.tensor([5, 6, 7, 8]))
    full.save(tmp_path / "full.safetensors")
    back, digest2 = zoo.Zoo.load_with_digest(tmp_path / "full.safetensors")
    assert digest2 == io.read_digest(tmp_path / "full.safetensors")
    assert torch.equal(back.val_accuracy, torch.arange(4.0)) and back.step.tolist() == [5, 6, 7, 8]
    assert back.tasks == ["a", "b"] and back.meta == {"steps": 3}
    assert zoo.Zoo.load(tmp_path / "z.safetensors").val_accuracy is None


def test_zoo_load_messages(tmp_path):
    z = make_zoo()
    tensors = {f"zoo.{k}": getattr(z, k) for k in ("params", "task", "run", "accuracy", "init")}
    meta = {"kind": "zoo", "format": 1, "spec": z.spec.to_dict(), "tasks": z.tasks, "meta": {}}

    def write(name, t=tensors, **m):
        path = tmp_path / name
        io.save_tensors(path, t, {**meta, **m})
        return path

    p = write("kind.safetensors", kind="population")
    with pytest.raises(ValueError, match=exact(f"{p}: not a model zoo (no 'kind': 'zoo' in its metadata)")):
        zoo.Zoo.load(p)
    p = write("format.safetensors", format=2)
    with pytest.raises(ValueError, match=exact(f"{p}: zoo format 2, this version reads 1")):
        zoo.Zoo.load(p)
    p = write("noformat.safetensors", format=None)
    with pytest.raises(ValueError, match=exact(f"{p}: zoo format None, this version reads 1")):
        zoo.Zoo.load(p)
    p = write("missing.safetensors", t={k: v for k, v in tensors.items() if k != "zoo.run"})
    with pytest.raises(ValueError, match=exact(f"{p}: not a complete model zoo (missing tensors ['run'] or metadata)")):
        zoo.Zoo.load(p)
    for key in ("spec", "tasks", "meta"):
        path = tmp_path / f"no_{key}.safetensors"
        io.save_tensors(path, tensors, {k: v for k, v in meta.items() if k != key})
        with pytest.raises(ValueError, match=exact(f"{path}: not a complete model zoo (missing tensors [] or metadata)")):
            zoo.Zoo.load(path)
    p = write("bad.safetensors", tasks=["a"])
    with pytest.raises(ValueError, match=exact(f"{p}: not a valid model zoo (Zoo: task indices must be in [0, 1) "
                                               f"(len(tasks)), got [0, 1])")) as info:
        zoo.Zoo.load(p)
    assert isinstance(info.value.__cause__, ValueError)
    p = write("good.safetensors")
    assert zoo.Zoo.load(p).tasks == ["a", "b"]


def test_rows_of():
    z = make_zoo(r=5, tasks=("a", "b", "c"))  # tasks 0 1 2 0 1
    assert torch.equal(z.rows_of(0), z.params[[0, 3]])
    assert torch.equal(z.rows_of(2), z.params[[2]])
    for bad in (3, -1, 1.0, True):
        with pytest.raises(ValueError, match=exact(f"Zoo.rows_of: task_index must be an int in [0, 3), got {bad!r}")):
            z.rows_of(bad)

"""pdiff_fast.tasks.zoo: many models trained at once, each on its own task (vmap over stacked parameters
and per-row batches), checked against train_one's plain one-model loop; the Zoo file format."""
import pytest
import torch
from safetensors.torch import save_file
from torch import nn
from torch.func import functional_call, vmap

from pdiff_fast import io
from pdiff_fast.tasks import zoo
from pdiff_fast.nn.models import MLP
from pdiff_fast.params import ParamSpec
from pdiff_fast.diffusion.sample import model_seed

pytestmark = pytest.mark.usefixtures("one_thread")

INPUT = (2, 3)  # MLP flattens: a 2-D input shape checks the per-row gather keeps it
CLASSES = 3


def _tasks(counts, n_pad, seed=1, pad_value=0.0):
    """x (T, N, 2, 3), y (T, N), counts (T,): task t labels Gaussian inputs by its own random linear
    rule; samples beyond counts[t] are padding (pad_value, label 0)."""
    g = torch.Generator().manual_seed(seed)
    t = len(counts)
    x = torch.full((t, n_pad, *INPUT), pad_value)
    y = torch.zeros(t, n_pad, dtype=torch.int64)
    for i, c in enumerate(counts):
        w = torch.randn(6, CLASSES, generator=g)
        xi = torch.randn(c, *INPUT, generator=g)
        x[i, :c], y[i, :c] = xi, (xi.flatten(1) @ w).argmax(1)
    return x, y, torch.tensor(counts)


def _model(hidden=(8,)):
    torch.manual_seed(0)
    return MLP(6, CLASSES, hidden=hidden)


def _starts(spec, base, m, seed=2):
    g = torch.Generator().manual_seed(seed)
    return spec.flatten([base]) + 0.1 * torch.randn(m, spec.dim, generator=g)


def _accuracy(model, spec, flat, x, y):
    """(m,) accuracy in % of each row's model on its own (x[r], y[r])."""
    model = model.eval()
    with torch.no_grad():
        out = vmap(lambda p, xs: functional_call(model, p, (xs,)))(spec.unflatten_stacked(flat), x)
    return (out.argmax(-1) == y).float().mean(1) * 100


def test_batch_indices_are_a_function_of_seed_and_row():
    counts = torch.tensor([5, 1, 9, 9])
    idx = zoo.batch_indices(counts, 7, 4, seed=3)
    assert idx.shape == (4, 7, 4) and idx.dtype == torch.int64
    assert all(0 <= int(idx[r].min()) and int(idx[r].max()) < int(counts[r]) for r in range(4))
    assert torch.equal(idx[1], torch.zeros(7, 4, dtype=torch.int64))
    for r in range(4):  # row r alone, as row first_row + 0, equals row r of the whole
        assert torch.equal(zoo.batch_indices(counts[r:r + 1], 7, 4, seed=3, first_row=r)[0], idx[r])
    want = torch.randint(0, 9, (7, 4), generator=torch.Generator().manual_seed(model_seed(3, 2)))
    assert torch.equal(idx[2], want)
    assert not torch.equal(idx[2], idx[3])  # same count, another row: another stream
    assert not torch.equal(zoo.batch_indices(counts, 7, 4, seed=4), idx)
    # steps drawn in blocks continue the stream: what the chunked training relies on
    gens = zoo._generators(3, 0, 4)
    assert torch.equal(torch.cat([zoo._draw(gens, counts, 3, 4), zoo._draw(gens, counts, 4, 4)], 1), idx)
    with pytest.raises(ValueError, match="counts must be >= 1"):
        zoo.batch_indices(torch.tensor([3, 0]), 2, 2, seed=0)
    with pytest.raises(ValueError, match="steps must be"):
        zoo.batch_indices(counts, -1, 2, seed=0)


@pytest.mark.parametrize("selector", ["all", ["2.*", "4.*"]], ids=["whole", "subset"])
def test_batched_equals_one_model_at_a_time(selector, monkeypatch):
    """7 rows on 3 tasks of different real sizes (odd), padded to 41: train_models (all rows under
    vmap) against train_one row by row, at every recorded step."""
    monkeypatch.setattr(zoo, "INDEX_BLOCK_BYTES", 8 * 5 * 7 * 3)  # indices drawn 3 steps at a time
    base = _model()
    spec = ParamSpec.from_model(base, selector)
    x, y, counts = _tasks([41, 17, 29], 41)
    task_of_row = torch.tensor([0, 1, 2, 1, 0, 2, 2])
    starts = _starts(spec, base, 7)
    record = (0, 1, 4, 9)
    kw = dict(steps=9, lr=0.1, batch_size=5, seed=11, record_at=record)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    got = zoo.train_models(base, spec, starts, x, y, counts, task_of_row, **kw)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # model untouched
    assert len(got) == 4 and all(g.shape == starts.shape and g.dtype == torch.float32 for g in got)
    assert torch.equal(got[0], starts)
    assert not torch.allclose(got[-1], starts, atol=1e-3)  # it did train
    for r in range(7):
        t = int(task_of_row[r])
        c = int(counts[t])
        want = zoo.train_one(base, spec, starts[r], x[t, :c], y[t, :c], row=r, **kw)
        for g, w in zip(got, want):
            # float32: vmap's batched matmuls round differently from the plain loop's in the last bit
            torch.testing.assert_close(g[r], w, rtol=1e-5, atol=1e-6)
    # rows on the same task with their own streams train differently
    assert not torch.allclose(got[-1][2] - starts[2], got[-1][5] - starts[5], atol=1e-4)


def test_a_row_does_not_depend_on_the_other_rows_or_chunking():
    base = _model()
    spec = ParamSpec.from_model(base, "all")
    x, y, counts = _tasks([30, 13, 22], 30)
    task_of_row = torch.tensor([2, 0, 1, 1, 0])
    starts = _starts(spec, base, 5)
    kw = dict(steps=6, lr=0.1, batch_size=4, seed=5)
    full = zoo.train_models(base, spec, starts, x, y, counts, task_of_row, **kw)[0]
    tiny = zoo.train_models(base, spec, starts, x, y, counts, task_of_row, memory_budget_bytes=1, **kw)[0]
    torch.testing.assert_close(tiny, full, rtol=1e-5, atol=1e-6)
    # rows 2..3 alone, numbered as in the whole run
    part = zoo.train_models(base, spec, starts[2:4], x, y, counts, task_of_row[2:4], first_row=2, **kw)[0]
    torch.testing.assert_close(part, full[2:4], rtol=1e-5, atol=1e-6)
    # the same row twice in one run: the same stream, the same result
    twin = zoo.train_models(base, spec, starts[[1, 1]], x, y, counts, task_of_row[[1, 1]], first_row=1, **kw)[0]
    torch.testing.assert_close(twin[0], full[1], rtol=1e-5, atol=1e-6)
    assert not torch.equal(twin[1], full[1])  # row 2's stream ...
    torch.testing.assert_close(twin[1], zoo.train_models(base, spec, starts[1:2], x, y, counts, task_of_row[1:2],
                                                         first_row=2, **kw)[0][0], rtol=1e-5, atol=1e-6)


def test_padding_is_never_read():
    base = _model()
    spec = ParamSpec.from_model(base, "all")
    x, y, counts = _tasks([3, 25, 1], 25, pad_value=float("nan"))
    assert torch.isnan(x).any()
    task_of_row = torch.tensor([0, 1, 2, 0, 2])
    out = zoo.train_models(base, spec, _starts(spec, base, 5), x, y, counts, task_of_row,
                           steps=20, lr=0.1, batch_size=16, seed=0)[0]
    assert torch.isfinite(out).all()


def test_training_learns_each_task():
    """8 rows on 2 tasks with different rules: each row's accuracy on its own task's held-out data
    rises from near chance to well above it, and a row scores worse on the other task's rule."""
    base = _model(hidden=(16,))
    spec = ParamSpec.from_model(base, "all")
    x, y, counts = _tasks([300, 300], 300, seed=4)
    train_x, train_y, test_x, test_y = x[:, :200], y[:, :200], x[:, 200:], y[:, 200:]
    task_of_row = torch.tensor([0, 1] * 4)
    starts = _starts(spec, base, 8, seed=9)
    before, after = zoo.train_models(base, spec, starts, train_x, train_y, torch.tensor([200, 200]), task_of_row,
                                     steps=150, lr=0.1, batch_size=32, seed=1, record_at=(0, 150))
    own = _accuracy(base, spec, after, test_x[task_of_row], test_y[task_of_row])
    start = _accuracy(base, spec, before, test_x[task_of_row], test_y[task_of_row])
    other = _accuracy(base, spec, after, test_x[1 - task_of_row], test_y[1 - task_of_row])
    assert own.min() > 80 and own.mean() > start.mean() + 30, (own, start)
    assert own.mean() > other.mean() + 20, (own, other)


def test_batchnorm_stays_frozen_and_only_the_subset_moves():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, CLASSES))
    base[2].running_mean.normal_()
    base[2].running_var.uniform_(0.5, 2)
    spec = ParamSpec.from_model(base, ["2.*", "4.weight"])
    x, y, counts = _tasks([20, 11], 20)
    task_of_row = torch.tensor([1, 0, 1])
    starts = _starts(spec, base, 3)
    kw = dict(steps=5, lr=0.1, batch_size=6, seed=2)
    got = zoo.train_models(base, spec, starts, x, y, counts, task_of_row, **kw)[0]
    assert base.training  # not modified
    for r in range(3):
        t = int(task_of_row[r])
        want = zoo.train_one(base, spec, starts[r], x[t, :counts[t]], y[t, :counts[t]], row=r, **kw)[0]
        torch.testing.assert_close(got[r], want, rtol=1e-5, atol=1e-6)


class _NoVmap(nn.Module):
    """Data-dependent control flow: runs in a plain loop, not under vmap."""

    def forward(self, x):
        return x * 2 if x.sum() > -1e9 else x


def test_a_model_without_vmap_is_trained_row_by_row():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES), _NoVmap())
    spec = ParamSpec.from_model(base, "all")
    x, y, counts = _tasks([12, 9], 12)
    task_of_row = torch.tensor([0, 1, 1])
    starts = _starts(spec, base, 3)
    kw = dict(steps=4, lr=0.1, batch_size=5, seed=3)
    with pytest.warns(UserWarning, match="one by one"):
        got = zoo.train_models(base, spec, starts, x, y, counts, task_of_row, **kw)[0]
    for r in range(3):
        t = int(task_of_row[r])
        want = zoo.train_one(base, spec, starts[r], x[t, :counts[t]], y[t, :counts[t]], row=r, **kw)[0]
        torch.testing.assert_close(got[r], want, rtol=1e-5, atol=1e-6)


def test_bad_training_input_is_refused_clearly():
    base = _model()
    spec = ParamSpec.from_model(base, "all")
    x, y, counts = _tasks([10, 7], 10)
    rows = torch.tensor([0, 1])
    starts = _starts(spec, base, 2)

    def call(s=starts, x=x, y=y, c=counts, t=rows, **kw):
        return zoo.train_models(base, spec, s, x, y, c, t, **{"steps": 1, **kw})

    cases = [
        (dict(s=starts[:, :-1]), rf"starts must be a floating \(m, {spec.dim}\)"),
        (dict(s=starts[:0]), "m >= 1"),
        (dict(x=x[:, :, 0, 0]), r"x must be a floating \(T, N"),
        (dict(y=y[:, :5]), r"y must be an integer \(T, N\)"),
        (dict(y=y.float()), "y must be an integer"),
        (dict(c=torch.tensor([10])), "counts must have 2 entries"),
        (dict(c=torch.tensor([0, 7])), r"counts must be in \[1, N=10\]"),
        (dict(c=torch.tensor([11, 7])), r"counts must be in \[1, N=10\]"),
        (dict(t=torch.tensor([0, 2])), "task_of_row must index the T=2 tasks"),
        (dict(t=torch.tensor([0, -1])), "task_of_row must index"),
        (dict(t=torch.tensor([0])), "task_of_row must have 2 entries"),
        (dict(t=torch.tensor([0.0, 1.0])), "task_of_row must be a 1-D integer"),
        (dict(steps=-1), "steps must be a non-negative int"),
        (dict(steps=3, record_at=(2, 1)), "sorted"),
        (dict(steps=3, record_at=(1, 1)), "sorted"),
        (dict(steps=3, record_at=(0, 4)), r"in \[0, steps=3\]"),
        (dict(record_at=()), "record_at is empty"),
        (dict(lr=0.0), "lr must be a positive"),
        (dict(lr=float("nan")), "lr must be a positive"),
        (dict(batch_size=0), "batch_size must be a positive int"),
        (dict(batch_size=2.0), "batch_size must be a positive int"),
        (dict(first_row=-1), "first_row must be"),
        (dict(memory_budget_bytes=0), "memory_budget_bytes"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            call(**kw)
    other = ParamSpec.from_model(_model(hidden=(5,)), "all")
    with pytest.raises(ValueError, match="spec does not fit"):
        zoo.train_models(base, other, torch.zeros(2, other.dim), x, y, counts, rows, steps=1)
    with pytest.raises(ValueError, match=rf"start must be a \({spec.dim},\) vector"):
        zoo.train_one(base, spec, starts, x[0], y[0], steps=1)
    # steps 0: the starts themselves, no training
    assert torch.equal(call(steps=0)[0], starts)


def _zoo(spec, r=6, tasks=("a", "b", "c")):
    g = torch.Generator().manual_seed(0)
    task = torch.arange(r) % len(tasks)
    return zoo.Zoo(params=torch.randn(r, spec.dim, generator=g), task=task, run=torch.arange(r) // len(tasks),
                   accuracy=torch.rand(r, generator=g) * 100, init=torch.randn(spec.dim, generator=g), spec=spec,
                   tasks=list(tasks), meta={"steps": 10, "lr": 0.05, "model": {"name": "mlp", "hidden": [8]}})


def test_zoo_round_trip_and_rows_of(tmp_path):
    spec = ParamSpec.from_model(_model(), "all")
    z = _zoo(spec, r=7)
    path = tmp_path / "sub" / "zoo.safetensors"
    digest = z.save(path)
    assert io.read_digest(path) == digest and len(z) == 7
    back = zoo.Zoo.load(path)
    for k in ("params", "task", "run", "accuracy", "init"):
        assert torch.equal(getattr(back, k), getattr(z, k)) and getattr(back, k).dtype == getattr(z, k).dtype, k
    assert back.spec == spec and back.tasks == ["a", "b", "c"] and back.meta == z.meta
    assert torch.equal(back.rows_of(1), z.params[[1, 4]])
    assert torch.equal(back.rows_of(0), z.params[[0, 3, 6]])
    assert back.save(tmp_path / "again.safetensors") == digest  # same content, same digest
    assert zoo.Zoo(**{**vars(z), "tasks": ["a", "b", "c", "unused"]}).rows_of(3).shape == (0, spec.dim)
    with pytest.raises(ValueError, match=r"task_index must be an int in \[0, 3\)"):
        z.rows_of(3)


def test_zoo_refuses_bad_fields():
    spec = ParamSpec.from_model(_model(), "all")
    good = vars(_zoo(spec))
    cases = [
        (dict(params=good["params"][:, 1:]), rf"params must be \(R, {spec.dim}\)"),
        (dict(params=good["params"].double()), "params must be torch.float32"),
        (dict(task=good["task"][:-1]), r"task must be \(6,\)"),
        (dict(task=good["task"].int()), "task must be torch.int64"),
        (dict(task=good["task"] + 1), r"task indices must be in \[0, 3\)"),
        (dict(task=good["task"] - 1), r"task indices must be in \[0, 3\)"),
        (dict(run=-good["run"] - 1), "run must be >= 0"),
        (dict(accuracy=good["accuracy"][:, None]), r"accuracy must be \(6,\)"),
        (dict(init=good["init"][1:]), rf"init must be \({spec.dim},\)"),
        (dict(init=[0.0]), "init must be a torch.Tensor"),
        (dict(tasks=[]), "tasks must be a non-empty list"),
        (dict(tasks=["a", "a", "b"]), "distinct"),
        (dict(meta={"x": torch.zeros(1)}), "JSON-serialisable"),
        (dict(spec="all"), "spec must be a ParamSpec"),
    ]
    for kw, match in cases:
        with pytest.raises(ValueError, match=match):
            zoo.Zoo(**{**good, **kw})


def test_load_refuses_a_file_that_is_not_a_zoo(tmp_path):
    plain = tmp_path / "plain.safetensors"
    io.save_tensors(plain, {"w": torch.zeros(3)}, {"kind": "autoencoder"})
    with pytest.raises(ValueError, match="not a model zoo"):
        zoo.Zoo.load(plain)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(3)}, str(bare))  # no pdiff_fast metadata at all
    with pytest.raises(ValueError, match="not a model zoo"):
        zoo.Zoo.load(bare)
    spec = ParamSpec.from_model(_model(), "all")
    z = _zoo(spec)
    partial = tmp_path / "partial.safetensors"
    meta = {"kind": "zoo", "format": 1, "spec": spec.to_dict(), "tasks": z.tasks, "meta": {}}
    io.save_tensors(partial, {"zoo.params": z.params}, meta)
    with pytest.raises(ValueError, match="not a complete model zoo"):
        zoo.Zoo.load(partial)
    wrong = tmp_path / "wrong.safetensors"
    io.save_tensors(wrong, {f"zoo.{k}": getattr(z, k) for k in ("params", "task", "run", "accuracy", "init")},
                    {**meta, "tasks": ["only"]})
    with pytest.raises(ValueError, match=r"not a valid model zoo .*task indices"):
        zoo.Zoo.load(wrong)
    with pytest.raises(FileNotFoundError):
        zoo.Zoo.load(tmp_path / "missing.safetensors")

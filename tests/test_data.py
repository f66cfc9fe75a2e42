import pytest
import torch

from pdiff_fast import data
from pdiff_fast.io import load_tensors


def test_mnist1d_is_generated_offline_and_cached(cache_dir):
    d = data.mnist1d(cache_dir, num_samples=500)
    assert d.x_train.shape == (400, 1, 40) and d.x_test.shape == (100, 1, 40)
    assert set(d.y_train.tolist()) <= set(range(10)) and d.num_classes == 10
    assert (cache_dir / "mnist1d_n500_s42.safetensors").is_file()
    again = data.mnist1d(cache_dir, num_samples=500)
    assert torch.equal(again.x_test, d.x_test)


def test_digits():
    d = data.digits()
    assert d.x_train.shape[1:] == (1, 8, 8) and len(d.y_train) + len(d.y_test) == 1797
    assert 0 <= d.x_train.min() and d.x_train.max() <= 1


def test_user_dataset_and_dataloader():
    ds = torch.utils.data.TensorDataset(torch.randn(30, 3), torch.randint(0, 4, (30,)))
    d = data.from_torch(ds, torch.utils.data.DataLoader(ds, batch_size=7))
    assert d.x_train.shape == (30, 3) and d.x_test.shape == (30, 3) and d.num_classes <= 4


def test_bad_data_is_an_error():
    with pytest.raises(ValueError, match="labels"):
        data.TensorData("x", torch.randn(3, 2), torch.zeros(2, dtype=torch.long), torch.randn(1, 2),
                        torch.zeros(1, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("imagenet")


def _rows(x, y) -> "collections.Counter":
    """The multiset of (input, label) rows, each as its bytes."""
    import collections

    return collections.Counter(xi.numpy().tobytes() + bytes([int(yi) % 256]) for xi, yi in zip(x, y))


def test_digits_split_is_disjoint_and_covers_every_image():
    """Train and test are a partition of the 1797 images: as multisets of (image, label) rows they
    add up to the whole dataset (a train set that reuses test rows, with the sizes still adding up,
    fails here), and the seed picks which rows go where."""
    from sklearn.datasets import load_digits

    d = data.digits(test_fraction=0.2, seed=0)
    full = load_digits()
    x = torch.tensor(full.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(full.target, dtype=torch.int64)
    assert _rows(d.x_train, d.y_train) + _rows(d.x_test, d.y_test) == _rows(x, y)
    assert len(d.y_test) == int(1797 * 0.2)
    other = data.digits(test_fraction=0.2, seed=1)
    assert _rows(other.x_test, other.y_test) != _rows(d.x_test, d.y_test)


def test_mnist1d_train_and_test_share_no_signal(cache_dir):
    d = data.mnist1d(cache_dir, num_samples=500)
    train, test = _rows(d.x_train, d.y_train), _rows(d.x_test, d.y_test)
    assert not set(train) & set(test)
    assert sum(train.values()) == 400 and sum(test.values()) == 100
    assert len(set(d.y_test.tolist())) == 10  # every class is tested


def test_task_family_data_keeps_the_source_split():
    """A task's train rows are the source's train rows of its two digits, its test rows the source's
    test rows of them, relabelled 0 / 1; nothing crosses between the splits."""
    from pdiff_fast.tasks.family import TaskFamily, digit_pair_tasks

    src = data.digits()
    fam = TaskFamily(digit_pair_tasks()[:3], src)
    for task in fam.tasks:
        t = fam.data(task)
        for split in ("train", "test"):
            xs, ys = getattr(src, f"x_{split}"), getattr(src, f"y_{split}")
            mine = torch.isin(ys, torch.tensor(task.classes))
            relabel = torch.tensor([task.classes.index(int(v)) for v in ys[mine]])
            assert _rows(getattr(t, f"x_{split}"), getattr(t, f"y_{split}")) == _rows(xs[mine], relabel)
        assert not set(_rows(t.x_train, t.y_train)) & set(_rows(t.x_test, t.y_test))


# --- values, names, defaults and messages (the mutants mutmut left alive, docs/mutation-scores.md)

def test_builtin_datasets_by_name_with_their_defaults(cache_dir, monkeypatch, tmp_path):
    digits = data.load_dataset("digits")
    assert digits.name == "digits" and digits.num_classes == 10 and digits.input_shape == (1, 8, 8)
    assert digits.y_train.dtype == torch.int64 and digits.x_train.dtype == torch.float32
    seed0 = data.digits(seed=0)
    assert torch.equal(digits.y_test, seed0.y_test) and torch.equal(data.digits().x_train, seed0.x_train)
    assert not torch.equal(data.digits(seed=1).y_test, seed0.y_test)
    assert len(digits.y_test) == int(1797 * 0.2)
    # mnist1d: 5000 samples by default, read from the cache directory given (not the default one)
    given = tmp_path / "given"
    given.mkdir()
    name = "mnist1d_n5000_s42.safetensors"
    if not (cache_dir / name).is_file():
        data.mnist1d(cache_dir)
    (given / name).write_bytes((cache_dir / name).read_bytes())
    monkeypatch.setenv("PDIFF_FAST_CACHE", str(tmp_path / "elsewhere"))
    m = data.load_dataset("mnist1d", cache_dir=given)
    assert not (tmp_path / "elsewhere").exists()
    assert m.name == "mnist1d" and m.num_classes == 10 and len(m.y_train) + len(m.y_test) == 5000
    assert m.x_train.dtype == torch.float32 and m.y_test.dtype == torch.int64 and m.input_shape == (1, 40)
    assert data.default_cache_dir() == tmp_path / "elsewhere"


def test_a_fresh_mnist1d_cache_holds_float32_int64_and_its_settings(tmp_path):
    d = data.mnist1d(tmp_path, num_samples=200, seed=3)
    t, meta = load_tensors(tmp_path / "mnist1d_n200_s3.safetensors")
    assert meta == {"dataset": "mnist1d", "num_samples": 200, "seed": 3}
    assert {k: v.dtype for k, v in t.items()} == {"x_train": torch.float32, "y_train": torch.int64,
                                                   "x_test": torch.float32, "y_test": torch.int64}
    assert d.x_train.dtype == torch.float32 and d.y_train.dtype == torch.int64 and d.name == "mnist1d"


def test_user_data_keeps_its_order_and_counts_its_classes():
    x = torch.arange(2500, dtype=torch.float32)[:, None]
    y = torch.arange(2500) % 7
    d = data.from_torch(torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x[:5], y[:5] * 0 + 8))
    assert torch.equal(d.x_train, x) and torch.equal(d.y_train, y)  # past one 1024-row batch, in order
    assert d.num_classes == 9 and d.name == "user"
    assert data.from_torch(torch.utils.data.TensorDataset(x, y), torch.utils.data.TensorDataset(x, y),
                           name="mine").name == "mine"


def test_bad_data_messages_name_the_split_and_the_counts():
    one, long = torch.zeros(1, 2), torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^x: train has 3 inputs but 2 labels$"):
        data.TensorData("x", torch.randn(3, 5), torch.zeros(2, dtype=torch.long), one, long, 2)
    with pytest.raises(ValueError, match=r"^x: the test split is empty$"):
        data.TensorData("x", one, long, torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), 2)
    assert data.TensorData("x", one, long, one, long, 2).input_shape == (2,)  # one sample is enough
    empty = torch.utils.data.TensorDataset(torch.zeros(0, 2), torch.zeros(0))
    with pytest.raises(ValueError, match=r"^dataset is empty$"):
        data.from_torch(empty, empty)


def test_to_moves_every_tensor_and_keeps_the_rest():
    d = data.TensorData("x", torch.zeros(2, 3), torch.ones(2, dtype=torch.long), torch.zeros(1, 3),
                        torch.ones(1, dtype=torch.long), 4)
    moved = d.to("meta")
    assert [t.device.type for t in (moved.x_train, moved.y_train, moved.x_test, moved.y_test)] == ["meta"] * 4
    assert (moved.name, moved.num_classes) == ("x", 4)


def test_the_default_cache_is_in_the_home_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("PDIFF_FAST_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert data.default_cache_dir() == tmp_path / ".cache" / "pdiff_fast"

import pytest
import torch

from pdiff_fast import data


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

"""The validation split: disjoint from what is trained on, together covering the training data,
never touching the test set, the same for the same seed."""
import pytest
import torch

from pdiff_fast.data import TensorData
from pdiff_fast.data import carve_validation


def _ids(n_train=50, n_test=7):
    """Every sample's input is its id (train 0.., test 1000..)."""
    x = torch.arange(n_train, dtype=torch.float32)[:, None]
    xt = 1000 + torch.arange(n_test, dtype=torch.float32)[:, None]
    return TensorData("ids", x, torch.arange(n_train) % 3, xt, torch.arange(n_test) % 3, 3)


@pytest.mark.parametrize("fraction, n_val", [(0.1, 5), (0.5, 25), (0.01, 1), (0.98, 49)])
def test_split_is_disjoint_covering_and_seeded(fraction, n_val):
    d = _ids()
    rest, xv, yv = carve_validation(d, fraction, seed=3)
    train_ids, val_ids = set(rest.x_train[:, 0].tolist()), set(xv[:, 0].tolist())
    assert len(val_ids) == n_val == len(yv) and len(train_ids) == 50 - n_val
    assert not train_ids & val_ids and train_ids | val_ids == set(range(50))
    assert torch.equal(yv, xv[:, 0].long() % 3) and torch.equal(rest.y_train, rest.x_train[:, 0].long() % 3)
    assert torch.equal(rest.x_test, d.x_test) and torch.equal(rest.y_test, d.y_test)  # the test set untouched
    again = carve_validation(d, fraction, seed=3)[1]
    assert torch.equal(again, xv)
    other = carve_validation(d, fraction, seed=4)[1]
    assert fraction == 0.98 or not torch.equal(other, xv)


def test_impossible_fractions_are_refused():
    d = _ids(n_train=3)
    with pytest.raises(ValueError, match=r"in \(0, 1\)"):
        carve_validation(d, 1.0, 0)
    with pytest.raises(ValueError, match="keep one to train on"):
        carve_validation(d, 0.9, 0)

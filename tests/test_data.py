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

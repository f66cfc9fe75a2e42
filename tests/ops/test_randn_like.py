"""randn_like: the torch paths' noise, from a generator on the tensor's device or another one."""
import pytest
import torch

from pdiff_fast.ops.noise import randn_like


def test_same_device_matches_torch_randn():
    x = torch.empty(3, 5, dtype=torch.float64)
    got = randn_like(x, torch.Generator().manual_seed(7))
    want = torch.randn(3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    assert torch.equal(got, want)
    assert randn_like(x).shape == (3, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cpu_generator_for_cuda_tensor_draws_on_cpu_and_copies():
    x = torch.empty(4, 6, device="cuda")
    got = randn_like(x, torch.Generator().manual_seed(3))
    assert got.device == x.device
    assert torch.equal(got.cpu(), torch.randn(4, 6, generator=torch.Generator().manual_seed(3)))

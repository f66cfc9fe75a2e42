"""kernels/eps_mse.py against pdiff_fast.ops.eps_mse.eps_mse_torch (loss and gradients).

Runs on CUDA when present, else on CPU tensors in Triton's interpreter (small sizes).
"""

import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU

import pytest  # noqa: E402

pytest.importorskip("triton")

from pdiff_fast.kernels import eps_mse as kmod  # noqa: E402
from pdiff_fast.ops.eps_mse import eps_mse_torch  # noqa: E402

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

SHAPES = {
    "minimal": (1, 12),
    "three_rows": (3, 12),
    "many_short_rows": (1000, 12),
    "odd_7": (2, 7),
    "odd_13": (3, 13),
    "long_non_aligned": (2, 2049),
    "several_blocks": (3, 5, 2001),
}


def inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=gen).to(device), torch.randn(shape, generator=gen).to(device)


@pytest.mark.parametrize("target_grad", [False, True], ids=["pred_grad", "both_grads"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_loss_and_gradients_match_reference(shape, target_grad):
    pred, target = inputs(shape)
    g = torch.tensor(0.37, device=device)  # one shared upstream gradient
    pa, ta = pred.clone().requires_grad_(), target.clone().requires_grad_(target_grad)
    pb, tb = pred.clone().requires_grad_(), target.clone().requires_grad_(target_grad)
    loss_a = kmod.eps_mse(pa, ta)
    loss_b = eps_mse_torch(pb, tb)
    assert loss_a.dim() == 0 and loss_a.dtype == torch.float32
    torch.testing.assert_close(loss_a, loss_b, rtol=1e-5, atol=0)
    torch.testing.assert_close(loss_a.double(), eps_mse_torch(pred.double(), target.double()), rtol=1e-5, atol=0)
    loss_a.backward(g)
    loss_b.backward(g)
    assert torch.isfinite(pa.grad).all()
    torch.testing.assert_close(pa.grad, pb.grad, rtol=1e-5, atol=1e-9)
    if target_grad:
        torch.testing.assert_close(ta.grad, tb.grad, rtol=1e-5, atol=1e-9)
    else:
        assert ta.grad is None


def test_strided_partials_and_determinism(monkeypatch):
    monkeypatch.setattr(kmod, "_MAX_PARTIALS", 2)  # force several blocks per program
    pred, target = inputs((3, 5001), seed=1)
    loss = kmod.eps_mse(pred, target)
    torch.testing.assert_close(loss.double(), eps_mse_torch(pred.double(), target.double()), rtol=1e-5, atol=0)
    assert torch.equal(loss, kmod.eps_mse(pred, target))


def test_only_target_requires_grad_and_non_contiguous():
    pred, target = inputs((7, 33), seed=2)
    pred_nc = pred.t().contiguous().t()
    tb = target.clone().requires_grad_()
    loss = kmod.eps_mse(pred_nc, tb)
    loss.backward()
    torch.testing.assert_close(tb.grad, -2.0 * (pred - target) / pred.numel(), rtol=1e-5, atol=1e-9)
    torch.testing.assert_close(loss, eps_mse_torch(pred, target), rtol=1e-5, atol=0)


def test_shape_mismatch_and_empty():
    with pytest.raises(ValueError):
        kmod.eps_mse(torch.zeros(2, 3, device=device), torch.zeros(3, 2, device=device))
    empty = torch.zeros(0, 4, device=device)
    assert torch.isnan(kmod.eps_mse(empty, empty))

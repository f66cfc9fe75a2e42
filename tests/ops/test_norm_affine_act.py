"""norm_affine_act: the extension's fused per-model affine + activation against F.batch_norm /
F.layer_norm (bit-identical on CPUs where PyTorch's kernels use FMA) and the torch reference,
its registration as a torch op and its argument checks, and the dispatching entry point.
"""
import pytest
import torch
import torch.nn.functional as F

from pdiff_fast import backend
from pdiff_fast.ops.norm_affine_act import norm_affine_act, norm_affine_act_torch

from extension_cases import HAS_EXT, devices, needs_ext

pytestmark = pytest.mark.usefixtures("one_thread")

torch_bn_uses_fma = torch.backends.cpu.get_cpu_capability() != "DEFAULT"


@needs_ext
@pytest.mark.parametrize("device", devices(ext_cuda=True))
@pytest.mark.parametrize("shape", [(7, 16, 36), (5, 16, 1), (3, 4, 2, 16, 5)])
def test_norm_affine_act_batchnorm_matches_torch(device, shape):
    """shared (B, C, L) or per-model (N, B, C, L) input; bit-identical to F.batch_norm + ReLU
    on CPUs where PyTorch's kernel uses FMA (AVX2 / AVX-512)."""
    n_models, c = 4, 16
    per_model = len(shape) > 3  # (N, B, C, L) rather than a shared (B, C, L)
    x = torch.randn(*((n_models,) if per_model else ()), *shape[-3:], device=device)
    w, b = torch.randn(n_models, c, device=device), torch.randn(n_models, c, device=device)
    mean, var = torch.randn(c, device=device), torch.rand(c, device=device) + 0.5
    got = torch.ops.pdiff_fast.norm_affine_act(x, w, b, mean, var, 1e-5, "relu", 0.0)
    assert got.shape == (n_models, *x.shape[-3:])
    for i in range(n_models):
        xi = x if x.dim() == 3 else x[i]
        want = F.relu(F.batch_norm(xi, mean, var, w[i], b[i], False, 0.1, 1e-5))
        if device == "cpu" and torch_bn_uses_fma:
            assert torch.equal(got[i], want)
        else:
            torch.testing.assert_close(got[i], want)
    torch.testing.assert_close(got, norm_affine_act_torch(x, w, b, mean, var, 1e-5, "relu"))


@needs_ext
@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu"])
def test_norm_affine_act_layernorm_affine_matches_torch(act):
    h = torch.randn(50, 7, 32)
    w, b = torch.randn(3, 32), torch.randn(3, 32)
    x_hat = F.layer_norm(h, (32,), None, None, 1e-5).reshape(-1, 32, 1)  # (R, F, 1)
    got = torch.ops.pdiff_fast.norm_affine_act(x_hat, w, b, None, None, 0.0, act, 0.2).reshape(3, 50, 7, 32)
    for i in range(3):
        want = F.layer_norm(h, (32,), w[i], b[i], 1e-5)
        want = {"identity": want, "relu": F.relu(want), "leaky_relu": F.leaky_relu(want, 0.2)}[act]
        if torch_bn_uses_fma:
            assert torch.equal(got[i], want)
        else:
            torch.testing.assert_close(got[i], want)


@needs_ext
def test_norm_affine_act_checks_inputs():
    op = torch.ops.pdiff_fast.norm_affine_act
    x, w = torch.randn(2, 3, 4), torch.randn(5, 3)
    with pytest.raises(RuntimeError, match="channels"):
        op(x, torch.randn(5, 4), torch.randn(5, 4), None, None, 0.0, "relu", 0.0)
    for act in ("swish", "tanh"):  # the extension fuses exactly the reference's activations
        with pytest.raises(RuntimeError, match="unknown activation"):
            op(x, w, w, None, None, 0.0, act, 0.0)
    with pytest.raises(RuntimeError, match="mismatched dtypes"):
        op(x, w.double(), w, None, None, 0.0, "relu", 0.0)


def test_reference_names_an_unknown_activation():
    x, w = torch.randn(2, 3, 4), torch.randn(5, 3)
    with pytest.raises(ValueError, match="unknown activation 'tanh'; choose identity, relu, leaky_relu"):
        norm_affine_act_torch(x, w, w, None, None, 0.0, "tanh", 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_dispatch_matches_reference(dtype):
    """The torch backend is the reference exactly; the extension (auto, float32 / float64 only:
    other dtypes fall back to the reference) agrees with it to rounding."""
    x = torch.randn(6, 8, 5).to(dtype)
    w, b = torch.randn(3, 8).to(dtype), torch.randn(3, 8).to(dtype)
    mean, var = torch.randn(8).to(dtype), (torch.rand(8) + 0.5).to(dtype)
    want = norm_affine_act_torch(x, w, b, mean, var, 1e-5, "leaky_relu", 0.1)
    with backend.use_backend("torch"):
        assert torch.equal(norm_affine_act(x, w, b, mean, var, 1e-5, "leaky_relu", 0.1), want)
    got = norm_affine_act(x, w, b, mean, var, 1e-5, "leaky_relu", 0.1)
    assert got.dtype == dtype and got.shape == (3, 6, 8, 5)
    if dtype == torch.bfloat16 or not HAS_EXT:
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want)

"""kernels/q_sample.py against pdiff_fast.ops.q_sample.q_sample_torch.

Runs on CUDA when present, else on CPU tensors in Triton's interpreter (small sizes).
"""

import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU

import pytest  # noqa: E402

pytest.importorskip("triton")

from pdiff_fast.kernels import q_sample as kmod  # noqa: E402
from pdiff_fast.ops.q_sample import q_sample_torch  # noqa: E402

from elementwise_cases import SHAPES, device  # noqa: E402
T = 1000


@pytest.fixture
def coefs(ddpm_schedule):
    """(2, T) fp32 noising table of the library's schedule (tests/conftest.py): sqrt_alphas_cumprod,
    sqrt_one_minus_alphas_cumprod."""
    return ddpm_schedule().tables(device)[0]


def inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x0 = torch.randn(shape, generator=gen).to(device)
    noise = torch.randn(shape, generator=gen).to(device)
    B = shape[0]
    t = torch.randint(0, T, (B,), generator=gen)
    t[0], t[-1] = (0, T - 1) if B > 1 else (T - 1, T - 1)
    return x0, noise, t.to(device)


def view(row, t, like):
    return row[t].view(-1, *([1] * (like.dim() - 1)))


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference_with_given_noise(shape, coefs):
    x0, noise, t = inputs(shape)
    x_t, noise_out = kmod.q_sample(x0, t, coefs, noise, out=torch.full_like(x0, float("nan")))
    ref, _ = q_sample_torch(x0, t, coefs, noise)
    assert noise_out is noise
    assert torch.isfinite(x_t).all()
    torch.testing.assert_close(x_t, ref, rtol=1e-6, atol=1e-6)
    ref64, _ = q_sample_torch(x0.double(), t, coefs.double(), noise.double())
    torch.testing.assert_close(x_t.double(), ref64, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(1, 12), (1000, 12), (3, 13), (2, 2049), (4, 3, 17)])
def test_in_kernel_noise_is_the_noise_used(shape, coefs):
    x0, _, t = inputs(shape, seed=1)
    x_t, noise = kmod.q_sample(x0, t, coefs, out=torch.full_like(x0, float("nan")))
    assert noise.shape == x0.shape and torch.isfinite(noise).all() and torch.isfinite(x_t).all()
    torch.testing.assert_close(x_t - view(coefs[0], t, x0) * x0, view(coefs[1], t, x0) * noise,
                               rtol=1e-5, atol=1e-6)
    ref, _ = q_sample_torch(x0, t, coefs, noise)
    torch.testing.assert_close(x_t, ref, rtol=1e-6, atol=1e-6)


def test_in_kernel_noise_is_standard_normal(coefs):
    x0, _, t = inputs((16, 4099), seed=2)
    _, z = kmod.q_sample(x0, t, coefs, seed=2024)
    assert abs(z.mean().item()) < 0.02
    assert abs(z.std().item() - 1.0) < 0.02
    assert abs((z[:, 1:] * z[:, :-1]).mean().item()) < 0.02
    assert abs((z[1:] * z[:-1]).mean().item()) < 0.02
    assert abs((z * x0).mean().item()) < 0.02  # independent of the data


def test_in_kernel_noise_seeding(coefs):
    x0, _, t = inputs((3, 257), seed=3)
    a = kmod.q_sample(x0, t, coefs, seed=11)[1]
    assert torch.equal(a, kmod.q_sample(x0, t, coefs, seed=11)[1])
    assert not torch.equal(a, kmod.q_sample(x0, t, coefs, seed=12)[1])
    assert not torch.equal(a, kmod.q_sample(x0, t, coefs, seed=10, seed_offset=1)[1])  # mixed, not added
    seed_t = torch.tensor([11], dtype=torch.int64, device=device)
    assert torch.equal(a, kmod.q_sample(x0, t, coefs, seed=seed_t)[1])
    gen = torch.Generator().manual_seed(5)
    b = kmod.q_sample(x0, t, coefs, generator=gen)[1]
    assert torch.equal(b, kmod.q_sample(x0, t, coefs, generator=torch.Generator().manual_seed(5))[1])
    assert not torch.equal(b, kmod.q_sample(x0, t, coefs, generator=gen)[1])
    torch.manual_seed(3)
    c = kmod.q_sample(x0, t, coefs)[1]
    torch.manual_seed(3)
    assert torch.equal(c, kmod.q_sample(x0, t, coefs)[1])


def test_non_contiguous_input(coefs):
    x0, noise, t = inputs((6, 21), seed=4)
    x_nc = x0.t().contiguous().t()
    assert not x_nc.is_contiguous()
    torch.testing.assert_close(kmod.q_sample(x_nc, t, coefs, noise)[0], q_sample_torch(x0, t, coefs, noise)[0])


def test_gradients_match_reference(coefs):
    x0, noise, t = inputs((3, 13, 5), seed=5)
    g = torch.randn_like(x0)
    xa, na = x0.clone().requires_grad_(), noise.clone().requires_grad_()
    xb, nb = x0.clone().requires_grad_(), noise.clone().requires_grad_()
    out_a, _ = kmod.q_sample(xa, t, coefs, na)
    out_b, _ = q_sample_torch(xb, t, coefs, nb)
    out_a.backward(g)
    out_b.backward(g)
    torch.testing.assert_close(out_a, out_b)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(na.grad, nb.grad)
    # drawn noise: x0 still gets its gradient, the returned noise is a constant
    xc = x0.clone().requires_grad_()
    out_c, z = kmod.q_sample(xc, t, coefs, seed=1)
    assert not z.requires_grad
    out_c.backward(g)
    torch.testing.assert_close(xc.grad, view(coefs[0], t, x0) * g)


# bf16 on CUDA only: the interpreter's fp32 -> bf16 store rounds differently from torch's (1 ulp)
@pytest.mark.parametrize("dtype", [torch.float16] + ([torch.bfloat16] if device.type == "cuda" else []))
def test_in_kernel_noise_in_half_precision_is_the_noise_used(dtype, coefs):
    """In 16-bit, x_t is built from the returned (rounded) noise, not from the fp32 draw: the
    training target then is exactly what was added (the fp32 draw is off by up to 2^-8 relative)."""
    x0, _, t = inputs((64, 12), seed=2)
    x0 = x0.to(dtype)
    x_t, noise = kmod.q_sample(x0, t, coefs)
    assert noise.dtype == dtype and x_t.dtype == dtype
    ref, _ = q_sample_torch(x0.float(), t, coefs, noise.float())  # from the noise as returned
    torch.testing.assert_close(x_t.float(), ref.to(dtype).float(), rtol=0, atol=0)

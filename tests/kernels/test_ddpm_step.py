"""kernels/ddpm_step.py against pdiff_fast.ops.ddpm_step.ddpm_step_torch.

Runs on CUDA when present, else on CPU tensors in Triton's interpreter (small sizes).
"""

import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU

import pytest  # noqa: E402

pytest.importorskip("triton")

from pdiff_fast.kernels import ddpm_step as kmod  # noqa: E402
from pdiff_fast.ops.ddpm_step import ddpm_step_torch  # noqa: E402

from elementwise_cases import SHAPES, device, poisoned  # noqa: E402
T = 1000


@pytest.fixture
def coefs(ddpm_schedule):
    """(5, T) fp32 step table of the library's schedule (tests/conftest.py), fixed-small variance
    (the posterior's, clipped at t = 0)."""
    return ddpm_schedule("fixedsmall").tables(device)[1]


def timesteps(B: int, gen: torch.Generator) -> torch.Tensor:
    """(B,) int64 covering 0 and T-1 whenever B allows."""
    t = torch.randint(0, T, (B,), generator=gen)
    t[0] = 0 if B > 1 else T - 1
    t[-1] = T - 1
    if B > 2:
        t[1] = 0
    return t.to(device)


def inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x_t = torch.randn(shape, generator=gen).to(device)
    eps = torch.randn(shape, generator=gen).to(device)
    noise = torch.randn(shape, generator=gen).to(device)
    return x_t, eps, noise, timesteps(shape[0], gen)


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_matches_reference_with_given_noise(shape, clip, coefs):
    x_t, eps, noise, t = inputs(shape)
    x_prev, x0 = kmod.ddpm_step(x_t, eps, t, noise, coefs, clip, out=poisoned(x_t))
    ref_prev, ref_x0 = ddpm_step_torch(x_t, eps, t, noise, coefs, clip)
    assert torch.isfinite(x_prev).all() and torch.isfinite(x0).all()
    torch.testing.assert_close(x0, ref_x0, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x_prev, ref_prev, rtol=1e-5, atol=1e-5)
    # and against the float64 evaluation of the same step
    ref64_prev, ref64_x0 = ddpm_step_torch(x_t.double(), eps.double(), t, noise.double(), coefs.double(), clip)
    torch.testing.assert_close(x0.double(), ref64_x0, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x_prev.double(), ref64_prev, rtol=1e-5, atol=1e-5)


def test_fixed_large_variance_and_t0_has_no_noise(ddpm_schedule):
    coefs = ddpm_schedule("fixedlarge").tables(device)[1]
    x_t, eps, noise, t = inputs((5, 33), seed=1)
    x_prev, x0 = kmod.ddpm_step(x_t, eps, t, noise, coefs, True)
    ref_prev, ref_x0 = ddpm_step_torch(x_t, eps, t, noise, coefs, True)
    torch.testing.assert_close(x_prev, ref_prev, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0, ref_x0)
    # at t == 0 the step is the posterior mean alone: the noise is ignored
    x_prev_other, _ = kmod.ddpm_step(x_t, eps, t, noise * 3.0, coefs, True)
    assert torch.equal(x_prev[t == 0], x_prev_other[t == 0])
    assert not torch.equal(x_prev[t > 0], x_prev_other[t > 0])


def test_non_contiguous_inputs_and_in_place_output(coefs):
    x_t, eps, noise, t = inputs((6, 21), seed=2)
    x_nc = x_t.t().contiguous().t()  # same values, transposed strides
    eps_nc = eps.t().contiguous().t()
    assert not x_nc.is_contiguous()
    x_prev, x0 = kmod.ddpm_step(x_nc, eps_nc, t, noise, coefs, True)
    ref_prev, ref_x0 = ddpm_step_torch(x_t, eps, t, noise, coefs, True)
    torch.testing.assert_close(x_prev, ref_prev, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0, ref_x0, rtol=1e-5, atol=1e-4)
    # x_prev written over x_t itself
    x_buf = x_t.clone()
    kmod.ddpm_step(x_buf, eps, t, noise, coefs, True, out=(x_buf, torch.empty_like(x_t)))
    torch.testing.assert_close(x_buf, ref_prev, rtol=1e-5, atol=1e-5)


@pytest.fixture
def in_kernel_noise(coefs):
    """in_kernel_noise(shape, t_value, **kw): standard normal noise as the kernel draws it
    (x_t = eps = 0 makes x_prev = sigma * z)."""
    def draw(shape, t_value, **kw):
        zeros = torch.zeros(shape, device=device)
        t = torch.full((shape[0],), t_value, dtype=torch.int64, device=device)
        x_prev, x0 = kmod.ddpm_step(zeros, zeros, t, None, coefs, False, **kw)
        assert torch.count_nonzero(x0) == 0
        sigma = torch.exp(0.5 * coefs[4, t_value])
        return x_prev / sigma
    return draw


def test_in_kernel_noise_is_standard_normal(in_kernel_noise):
    z = in_kernel_noise((16, 4099), T - 1, seed=1234)  # sigma ~ 0.14: no clamp in practice
    assert torch.isfinite(z).all()
    assert abs(z.mean().item()) < 0.02
    assert abs(z.std().item() - 1.0) < 0.02
    assert abs((z[:, 1:] * z[:, :-1]).mean().item()) < 0.02  # neighbours uncorrelated
    assert abs((z[1:] * z[:-1]).mean().item()) < 0.02  # rows uncorrelated


def test_in_kernel_noise_seeding(in_kernel_noise):
    a = in_kernel_noise((3, 257), 500, seed=7)
    assert torch.equal(a, in_kernel_noise((3, 257), 500, seed=7))
    assert not torch.equal(a, in_kernel_noise((3, 257), 500, seed=8))
    # seed_offset is mixed into the key (not added to the seed); a device tensor seed reads the
    # same stream as the int (the full contract: test_noise.py)
    assert not torch.equal(in_kernel_noise((3, 257), 500, seed=6, seed_offset=1), a)
    assert not torch.equal(in_kernel_noise((3, 257), 500, seed=7, seed_offset=1), a)  # the offset is used at all
    seed_t = torch.tensor([7], dtype=torch.int64, device=device)
    assert torch.equal(in_kernel_noise((3, 257), 500, seed=seed_t), a)
    assert torch.equal(in_kernel_noise((2, 257), 500, seed=7, row_offset=1), a[1:])
    # a generator gives the int seed when none is given
    b = in_kernel_noise((3, 257), 500, generator=torch.Generator().manual_seed(3))
    assert torch.equal(b, in_kernel_noise((3, 257), 500, generator=torch.Generator().manual_seed(3)))
    # no seed: drawn from torch's generator, so torch.manual_seed reproduces it
    torch.manual_seed(0)
    b = in_kernel_noise((3, 257), 500)
    torch.manual_seed(0)
    assert torch.equal(b, in_kernel_noise((3, 257), 500))
    assert not torch.equal(b, in_kernel_noise((3, 257), 500))


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
def test_in_kernel_noise_step_matches_reference_with_that_noise(clip, coefs, in_kernel_noise):
    x_t, eps, _, t = inputs((5, 129), seed=3)
    x_prev, x0 = kmod.ddpm_step(x_t, eps, t, None, coefs, clip, seed=99, out=poisoned(x_t))
    z = in_kernel_noise((5, 129), 500, seed=99)  # same seed, same rows -> same noise
    ref_prev, ref_x0 = ddpm_step_torch(x_t, eps, t, z, coefs, clip)
    torch.testing.assert_close(x0, ref_x0, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x_prev, ref_prev, rtol=1e-5, atol=2e-5)


def test_empty_batch_and_bad_shapes(coefs):
    x = torch.empty(0, 5, device=device)
    x_prev, x0 = kmod.ddpm_step(x, x, torch.empty(0, dtype=torch.int64, device=device), x, coefs)
    assert x_prev.shape == (0, 5) and x0.shape == (0, 5)
    x_t, eps, noise, t = inputs((3, 8))
    with pytest.raises(ValueError):
        kmod.ddpm_step(x_t, eps[:2], t, noise, coefs)
    with pytest.raises(ValueError):
        kmod.ddpm_step(x_t, eps, t[:2], noise, coefs)

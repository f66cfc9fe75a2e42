"""kernels/solver_step.py against pdiff_fast.ops.solver_step.solver_step_torch (float32 and float64
references), on CUDA when present, else in Triton's interpreter."""
import pytest
import torch

pytest.importorskip("triton")

from pdiff_fast.kernels import ddim_step as ddim_mod  # noqa: E402
from pdiff_fast.kernels import solver_step as kmod  # noqa: E402
from pdiff_fast.ops.solver_step import StepCoefs, solver_step_torch  # noqa: E402

from elementwise_cases import SHAPES, device, poisoned  # noqa: E402

# the kinds of step the samplers make: first order, second order, stochastic, the last (x0 itself)
COEFS = {
    "first": StepCoefs(0.0064, 0.99998, 0.99997, 0.0040),
    "second": StepCoefs(0.0104, 0.99995, 0.99992, 0.0091, -0.0029),
    "sde": StepCoefs(0.0104, 0.99995, 0.6266, 0.0149, -0.0048, 0.7792),
    "ancestral": StepCoefs(0.63, 0.776, 0.41, 0.35, 0.0, 0.52),
    "last": StepCoefs(0.985, 0.173, 0.0, 1.0),
}


def inputs(shape, seed=0, scale=2.0):
    gen = torch.Generator().manual_seed(seed)
    return tuple((scale * torch.randn(shape, generator=gen)).to(device) for _ in range(4))  # x, eps, prev, noise


def reference(x, eps, c, prev, noise, clip, clamp, double=False):
    cast = (lambda v: v.double()) if double else (lambda v: v)
    return solver_step_torch(cast(x), cast(eps), c, cast(prev), cast(noise), clip, clamp)


CASES = [pytest.param(shape, "sde", id=f"{name}-sde") for name, shape in SHAPES.items()] + [
    pytest.param(shape, kind, id=f"{name}-{kind}")
    for name, shape in SHAPES.items() if name in ("three_rows", "odd_13", "long_non_aligned")
    for kind in COEFS if kind != "sde"]


@pytest.mark.parametrize("clamp", [True, False], ids=["clamp", "noclamp"])
@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("shape, kind", CASES)
def test_matches_reference_with_given_noise(shape, kind, clip, clamp):
    c = COEFS[kind]
    x, eps, prev, noise = inputs(shape)
    out, x0 = kmod.solver_step(x, eps, c, prev, noise, clip, clamp, out=poisoned(x))
    assert torch.isfinite(out).all() and torch.isfinite(x0).all()
    for double in (False, True):
        ref_out, ref_x0 = reference(x, eps, c, prev, noise, clip, clamp, double)
        # x0 divides by a = sqrt(alphas_cumprod) ~ 0.006 at the first steps: relative tolerance
        torch.testing.assert_close(x0.to(ref_x0.dtype), ref_x0, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(out.to(ref_out.dtype), ref_out, rtol=1e-5, atol=1e-4)
    if clamp:
        assert out.abs().max() <= 1.0
    if clip:
        assert x0.abs().max() <= 1.0


def test_the_prev_and_noise_terms_are_read_only_when_their_coefficient_is_set():
    x, eps, prev, noise = inputs((3, 13), seed=1)
    nan = torch.full_like(x, float("nan"))
    out, _ = kmod.solver_step(x, eps, COEFS["first"], nan, nan)  # c1 = cz = 0: neither is read
    ref, _ = solver_step_torch(x, eps, COEFS["first"])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="needs x0_prev"):
        kmod.solver_step(x, eps, COEFS["second"], None, noise)


def test_in_kernel_noise_is_the_shared_contract():
    """Drawn in the kernel, the noise is ddim_step's for the same (seed, step, row): both come from
    kernels/noise.py, so a model's noise is the same whichever sampler and chunk draw it."""
    shape = (5, 2, 5)
    zeros = torch.zeros(shape, device=device)
    c = StepCoefs(1.0, 1.0, 0.0, 0.0, 0.0, 1.0)  # out = noise
    z, _ = kmod.solver_step(zeros, zeros, c, None, None, False, False, seed=9, seed_offset=4, row_offset=3)
    a_t, a_prev = 0.5, 0.7
    sigma = ddim_mod.sigma_of(a_t, a_prev, 1.0)
    d, _ = ddim_mod.ddim_step(zeros, zeros, a_t, a_prev, None, 1.0, False, seed=9, seed_offset=4, row_offset=3)
    torch.testing.assert_close(z, d / sigma, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(z).all() and 0.5 < z.std().item() < 1.5
    same, _ = kmod.solver_step(zeros[2:], zeros[2:], c, None, None, False, False, seed=9, seed_offset=4, row_offset=5)
    assert torch.equal(same, z[2:])
    other, _ = kmod.solver_step(zeros, zeros, c, None, None, False, False, seed=9, seed_offset=5, row_offset=3)
    assert not torch.equal(other, z)
    seed_t = torch.tensor([9], dtype=torch.int64, device=device)
    row_t = torch.tensor([3], dtype=torch.int64, device=device)
    from_ptr, _ = kmod.solver_step(zeros, zeros, c, None, None, False, False, seed=seed_t, seed_offset=4,
                                   row_offset=row_t)
    assert torch.equal(from_ptr, z)


def test_non_contiguous_inputs_and_in_place_output():
    x, eps, prev, noise = inputs((6, 21), seed=2)
    x_nc, eps_nc = x.t().contiguous().t(), eps.t().contiguous().t()
    assert not x_nc.is_contiguous()
    c = COEFS["sde"]
    out, x0 = kmod.solver_step(x_nc, eps_nc, c, prev, noise)
    ref_out, ref_x0 = solver_step_torch(x, eps, c, prev, noise)
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    buf = x.clone()
    kmod.solver_step(buf, eps, c, prev, noise, out=(buf, torch.empty_like(x)))
    torch.testing.assert_close(buf, ref_out, rtol=1e-5, atol=1e-5)


def test_empty_batch_and_bad_shapes():
    e = torch.empty((0, 10), device=device)
    out, x0 = kmod.solver_step(e, e, COEFS["first"])
    assert out.shape == (0, 10) and x0.shape == (0, 10)
    x, eps, _, _ = inputs((3, 10))
    with pytest.raises(ValueError, match="differ in shape"):
        kmod.solver_step(x, eps[:2], COEFS["first"])
    with pytest.raises(ValueError, match="must be positive"):
        kmod.solver_step(x, eps, StepCoefs(0.0, 1.0, 1.0, 0.0))

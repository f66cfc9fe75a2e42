"""kernels/ddim_step.py against pdiff_fast.ops.ddim_step.ddim_step_torch.

Runs on CUDA when present, else on CPU tensors in Triton's interpreter (small sizes).
"""

import torch

# tests/conftest.py sets TRITON_INTERPRET=1 before triton is imported when there is no GPU

import pytest  # noqa: E402

pytest.importorskip("triton")

from pdiff_fast.kernels import ddim_step as kmod  # noqa: E402
from pdiff_fast.ops.ddim_step import ddim_step_torch  # noqa: E402

from elementwise_cases import SHAPES, device, poisoned  # noqa: E402
T = 1000


@pytest.fixture
def alphas(ddpm_schedule):
    """alphas(t, t_prev) -> (a_t, a_prev): alphas_cumprod of the library's schedule
    (tests/conftest.py) in float64, a_prev = 1 past the end."""
    ac = ddpm_schedule().alphas_cumprod_f64

    def at(t: int, t_prev: int) -> tuple[float, float]:
        a_prev = ac[t_prev].item() if t_prev >= 0 else 1.0
        return ac[t].item(), a_prev
    return at


def inputs(shape, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=gen).to(device) for _ in range(3))  # x_t, eps, noise


STEPS = {"first": (T - 1, T - 21), "middle": (500, 480), "near_end": (20, 0), "last": (0, -1)}
# every shape at the first step, every step on the small shapes
CASES = [pytest.param(shape, STEPS["first"], id=f"{name}-first") for name, shape in SHAPES.items()] + [
    pytest.param(shape, step, id=f"{name}-{step_name}")
    for name, shape in SHAPES.items() if name != "many_short_rows"
    for step_name, step in STEPS.items() if step_name != "first"
]


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
@pytest.mark.parametrize("shape, step", CASES)
def test_matches_reference_with_given_noise(shape, step, clip, eta, alphas):
    a_t, a_prev = alphas(*step)
    x_t, eps, noise = inputs(shape)
    x_prev, x0 = kmod.ddim_step(x_t, eps, a_t, a_prev, noise, eta, clip, out=poisoned(x_t))
    ref_prev, ref_x0 = ddim_step_torch(x_t, eps, a_t, a_prev, noise, eta, clip)
    assert torch.isfinite(x_prev).all() and torch.isfinite(x0).all()
    torch.testing.assert_close(x0, ref_x0, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x_prev, ref_prev, rtol=1e-5, atol=1e-4)
    ref64_prev, ref64_x0 = ddim_step_torch(x_t.double(), eps.double(), a_t, a_prev, noise.double(), eta, clip)
    torch.testing.assert_close(x0.double(), ref64_x0, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(x_prev.double(), ref64_prev, rtol=1e-5, atol=1e-4)


def test_no_noise_needed_when_sigma_is_zero(alphas):
    x_t, eps, _ = inputs((3, 40), seed=1)
    for eta, step in [(0.0, STEPS["middle"]), (0.5, STEPS["last"])]:  # eta = 0, or a_prev = 1
        a_t, a_prev = alphas(*step)
        x_prev, x0 = kmod.ddim_step(x_t, eps, a_t, a_prev, None, eta, True)
        ref_prev, ref_x0 = ddim_step_torch(x_t, eps, a_t, a_prev, None, eta, True)
        torch.testing.assert_close(x_prev, ref_prev, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(x0, ref_x0, rtol=1e-5, atol=1e-5)


def test_non_contiguous_inputs_and_in_place_output(alphas):
    a_t, a_prev = alphas(*STEPS["middle"])
    x_t, eps, noise = inputs((6, 21), seed=2)
    x_nc, eps_nc = x_t.t().contiguous().t(), eps.t().contiguous().t()
    assert not x_nc.is_contiguous()
    x_prev, x0 = kmod.ddim_step(x_nc, eps_nc, a_t, a_prev, noise, 0.5, True)
    ref_prev, ref_x0 = ddim_step_torch(x_t, eps, a_t, a_prev, noise, 0.5, True)
    torch.testing.assert_close(x_prev, ref_prev, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x0, ref_x0, rtol=1e-5, atol=1e-5)
    x_buf = x_t.clone()
    kmod.ddim_step(x_buf, eps, a_t, a_prev, noise, 0.5, True, out=(x_buf, torch.empty_like(x_t)))
    torch.testing.assert_close(x_buf, ref_prev, rtol=1e-5, atol=1e-5)


def sigma_of(a_t, a_prev, eta):
    return eta * ((1.0 - a_prev) / (1.0 - a_t)) ** 0.5 * (1.0 - a_t / a_prev) ** 0.5


@pytest.fixture
def in_kernel_noise(alphas):
    """in_kernel_noise(shape, eta=0.5, **kw): the kernel's noise (x_t = eps = 0 without clipping
    makes x_prev = sigma * z)."""
    a_t, a_prev = alphas(*STEPS["middle"])

    def draw(shape, eta=0.5, **kw):
        zeros = torch.zeros(shape, device=device)
        x_prev, _ = kmod.ddim_step(zeros, zeros, a_t, a_prev, None, eta, False, **kw)
        return x_prev / sigma_of(a_t, a_prev, eta)
    return draw


def test_in_kernel_noise_is_standard_normal_and_seeded(in_kernel_noise):
    z = in_kernel_noise((16, 4099), seed=321)
    assert torch.isfinite(z).all()
    assert abs(z.mean().item()) < 0.02
    assert abs(z.std().item() - 1.0) < 0.02
    assert abs((z[:, 1:] * z[:, :-1]).mean().item()) < 0.02
    a = in_kernel_noise((3, 257), seed=7)
    assert torch.equal(a, in_kernel_noise((3, 257), seed=7))
    assert not torch.equal(a, in_kernel_noise((3, 257), seed=8))
    assert not torch.equal(a, in_kernel_noise((3, 257), seed=6, seed_offset=1))  # mixed, not added
    seed_t = torch.tensor([7], dtype=torch.int64, device=device)
    assert torch.equal(a, in_kernel_noise((3, 257), seed=seed_t))
    assert torch.equal(a[2:], in_kernel_noise((1, 257), seed=7, row_offset=2))
    torch.manual_seed(1)
    b = in_kernel_noise((3, 257))
    torch.manual_seed(1)
    assert torch.equal(b, in_kernel_noise((3, 257)))


@pytest.mark.parametrize("clip", [True, False], ids=["clip", "noclip"])
def test_in_kernel_noise_step_matches_reference_with_that_noise(clip, alphas, in_kernel_noise):
    a_t, a_prev = alphas(*STEPS["middle"])
    x_t, eps, _ = inputs((5, 129), seed=3)
    x_prev, x0 = kmod.ddim_step(x_t, eps, a_t, a_prev, None, 0.5, clip, seed=42, out=poisoned(x_t))
    z = in_kernel_noise((5, 129), seed=42)
    ref_prev, ref_x0 = ddim_step_torch(x_t, eps, a_t, a_prev, z, 0.5, clip)
    torch.testing.assert_close(x0, ref_x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x_prev, ref_prev, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
def test_writes_stay_inside_the_output(shape):
    """Output buffers that are the front of larger ones: nothing past their end changes (a tile
    mask one column too wide writes the next row's first value, and past the last row)."""
    x_t, eps, noise = inputs(shape)
    n = x_t.numel()
    big = [torch.full((n + 64,), 7.0, device=device) for _ in range(2)]
    kmod.ddim_step(x_t, eps, 0.5, 0.7, noise, 0.3, True, out=tuple(b[:n].view(shape) for b in big))
    for b in big:
        assert (b[n:] == 7.0).all()

"""The few-step samplers against diffusers' schedulers (the field's reference implementation), whole
loops on a nonlinear epsilon model with the same noise, every intermediate sample compared; then
the pdiff_fast semantics diffusers lacks (x_t clamped, x0 clipped for Euler ancestral), the
stochastic DDIM, and the bad inputs."""
import math

import pytest
import torch

from pdiff_fast.diffusion.few_step import DPMSolverScheduler, EulerAncestralScheduler, spaced_timesteps
from pdiff_fast.diffusion.samplers import SAMPLERS, make_scheduler
from pdiff_fast.diffusion.schedulers import DDIMScheduler, DDPMScheduler
from pdiff_fast.ops.solver_step import StepCoefs, solver_step_torch

diffusers = pytest.importorskip("diffusers")

COMMON = dict(num_train_timesteps=1000, beta_start=1e-4, beta_end=2e-2, beta_schedule="linear")
SHAPE = (6, 2, 5)  # the default run's latent: 2 channels of 5


_AC = DDPMScheduler().alphas_cumprod_f64
_TARGET = torch.linspace(-0.9, 0.9, SHAPE[1] * SHAPE[2]).reshape(SHAPE[1:])


def eps_model(x, t):
    """A stand-in for the denoiser: the exact epsilon of data at one point (so samples stay bounded
    and go somewhere), plus a nonlinear, timestep-dependent error (so each step's eps differs)."""
    a = _AC[int(t)].item()
    return (x - a**0.5 * _TARGET) / (1 - a) ** 0.5 + 0.2 * torch.tanh(1.5 * x + 0.3) * math.cos(t / 300.0)


def noises(n_steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((n_steps + 1, *SHAPE), generator=g, dtype=torch.float64).float()


def our_loop(s, z):
    x, path = z[0], []
    for i, t in enumerate(s.timesteps()):
        x = s.step(eps_model(x, t), t, x, noise=z[1 + i]).prev_sample
        path.append(x)
    return path


def diffusers_loop(d, z, steps, vp, **step_kw):
    """diffusers' loop; vp(d, x, i) turns its sample after step i into the VP x_t ours holds."""
    d.set_timesteps(steps)
    x, path = z[0] * d.init_noise_sigma, []
    for i, t in enumerate(d.timesteps):
        eps = eps_model(d.scale_model_input(x, t), int(t))
        x = d.step(eps, t, x, variance_noise=z[1 + i], **step_kw).prev_sample
        path.append(vp(d, x, i))
    return path


def assert_paths_close(ours, theirs):
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs)):
        assert torch.isfinite(a).all()
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-4, msg=f"step {i}")


@pytest.mark.parametrize("steps", [1, 2, 5, 20, 25])
@pytest.mark.parametrize("sde", [False, True], ids=["2m", "2m-sde"])
def test_dpm_solver_matches_diffusers(steps, sde):
    ours = DPMSolverScheduler(steps, sde=sde, clamp_sample=False)  # diffusers never clamps x_t
    # thresholding with sample_max_value 1 is exactly the clip of x0 to [-1, 1]
    d = diffusers.DPMSolverMultistepScheduler(**COMMON, algorithm_type="sde-dpmsolver++" if sde else "dpmsolver++",
                                              thresholding=True, sample_max_value=1.0)
    d.set_timesteps(steps)
    assert ours.timesteps() == [int(t) for t in d.timesteps]
    z = noises(steps, seed=steps)
    assert_paths_close(our_loop(ours, z), diffusers_loop(d, z, steps, lambda d, x, i: x))


def _euler_vp(d, x, i):
    return x / (d.sigmas[i + 1] ** 2 + 1) ** 0.5  # diffusers' Euler sample lives in sigma space


@pytest.mark.parametrize("steps", [1, 3, 20, 25])
def test_euler_ancestral_matches_diffusers(steps):
    ours = EulerAncestralScheduler(steps, clamp_sample=False, clip_sample=False)  # diffusers clips neither
    d = diffusers.EulerAncestralDiscreteScheduler(**COMMON, timestep_spacing="trailing")
    d.set_timesteps(steps)
    assert ours.timesteps() == [int(t) for t in d.timesteps]
    z = noises(steps, seed=100 + steps)
    # Euler ancestral's step takes no variance_noise: its noise is the generator's next draws
    g = torch.Generator().manual_seed(5)
    drawn = [torch.randn(SHAPE, generator=g) for _ in range(steps)]
    z = torch.cat([z[:1], torch.stack(drawn)])
    g = torch.Generator().manual_seed(5)
    x, theirs = z[0] * d.init_noise_sigma, []
    for i, t in enumerate(d.timesteps):
        x = d.step(eps_model(d.scale_model_input(x, t), int(t)), t, x, generator=g).prev_sample
        theirs.append(_euler_vp(d, x, i))
    assert_paths_close(our_loop(ours, z), theirs)


@pytest.mark.parametrize("eta", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("steps", [1, 10, 50])
def test_ddim_matches_diffusers_at_every_eta(steps, eta):
    ours = DDIMScheduler(steps, eta=eta, clamp_sample=False)
    d = diffusers.DDIMScheduler(**COMMON, clip_sample=True)
    d.set_timesteps(steps)
    assert ours.timesteps() == [int(t) for t in d.timesteps]
    z = noises(steps, seed=7)
    theirs = diffusers_loop(d, z, steps, lambda d, x, i: x, eta=eta, use_clipped_model_output=True)
    assert_paths_close(our_loop(ours, z), theirs)


def test_ddim_at_eta_1_is_ddpm_on_the_step_subset():
    """All 1000 steps at eta 1 are DDPM's ancestral steps with the posterior variance."""
    ddim, ddpm = DDIMScheduler(1000, eta=1.0), DDPMScheduler(variance_type="fixedsmall")
    g = torch.Generator().manual_seed(3)
    x, eps, z = (torch.randn(SHAPE, generator=g) for _ in range(3))
    for t in (999, 500, 20, 1):
        a = ddim.step(eps, t, x, noise=z).prev_sample
        b = ddpm.step(eps, torch.full((SHAPE[0],), t), x, noise=z).prev_sample
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["dpm++2m", "dpm++2m-sde", "euler-a", "ddim"])
def test_the_clamps_are_the_reference_semantics(name):
    """x0 clipped to [-1, 1] before the update and x_t clamped after it: the same loop without the
    clamps, each step's input clamped by hand, must agree (and the clamps must bite here)."""
    s = make_scheduler(name, 5, eta=0.5)
    free = make_scheduler(name, 5, eta=0.5, clamp_sample=False)
    z = noises(5, seed=11) * 3.0
    x = y = z[0]
    bit = False
    for i, t in enumerate(s.timesteps()):
        x = s.step(eps_model(x, t), t, x, noise=z[1 + i]).prev_sample
        y = free.step(eps_model(y, t), t, y, noise=z[1 + i]).prev_sample
        bit |= bool((y.abs() > 1).any())
        y = y.clamp(-1, 1)
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-6)
        assert x.abs().max() <= 1.0
    assert bit


def test_solver_step_clips_x0_before_the_update():
    x = torch.tensor([[3.0, -3.0, 0.5]])
    eps = torch.zeros_like(x)
    out, x0 = solver_step_torch(x, eps, StepCoefs(1.0, 0.5, 0.0, 1.0), clip=True, clamp=False)
    assert torch.equal(x0, torch.tensor([[1.0, -1.0, 0.5]])) and torch.equal(out, x0)
    out, x0 = solver_step_torch(x, eps, StepCoefs(1.0, 0.5, 2.0, 0.0), clip=False, clamp=True)
    assert torch.equal(out, torch.tensor([[1.0, -1.0, 1.0]])) and torch.equal(x0, x)


def test_the_multistep_state_starts_again_with_each_loop():
    s = DPMSolverScheduler(4)
    z = noises(4, seed=2)
    first, second = our_loop(s, z), our_loop(s, z)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    fresh = DPMSolverScheduler(4)
    t1 = fresh.timesteps()[1]
    with pytest.raises(RuntimeError, match="second order"):
        fresh.step(z[0], t1, z[0])


def test_timestep_spacings():
    assert spaced_timesteps(1000, 20, "linspace")[:3] == [999, 949, 899]
    assert spaced_timesteps(1000, 20, "trailing")[-1] == 49
    assert spaced_timesteps(1000, 999, "linspace") == list(range(999, 0, -1))
    assert spaced_timesteps(1000, 1000, "trailing") == list(range(999, -1, -1))
    with pytest.raises(ValueError, match="1000 steps repeat a timestep"):
        spaced_timesteps(1000, 1000, "linspace")
    for steps in (1, 7, 333, 999):
        for spacing in ("linspace", "trailing"):
            ts = spaced_timesteps(1000, steps, spacing)
            assert len(ts) == steps and ts == sorted(set(ts), reverse=True) and 0 <= ts[-1] and ts[0] == 999


@pytest.mark.parametrize("name", list(SAMPLERS))
def test_every_sampler_by_name(name):
    import pdiff_fast.diffusion

    from pdiff_fast.config import SAMPLER_NAMES

    assert pdiff_fast.diffusion.make_scheduler is make_scheduler  # where it was before the samplers module
    assert SAMPLER_NAMES == tuple(SAMPLERS)  # what the config and the CLI accept
    s = make_scheduler(name, 8)
    assert len(s.timesteps()) == (1000 if name == "ddpm" else 8)
    assert len(make_scheduler(name).timesteps()) == SAMPLERS[name][1]


@pytest.mark.parametrize("kwargs, match", [
    (dict(sampler="dpm++2m", steps=0), "integer in 1..1000"),
    (dict(sampler="euler-a", steps=1001), "integer in 1..1000"),
    (dict(sampler="ddim", steps=2.5), "integer in 1..1000"),
    (dict(sampler="unipc", steps=10), "unknown sampler 'unipc'"),
    (dict(sampler="ddim", steps=10, eta=-0.1), "eta must be a finite number >= 0"),
    (dict(sampler="ddim", steps=10, eta=float("nan")), "eta must be a finite number >= 0"),
])
def test_bad_sampler_arguments_are_one_clear_line(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        make_scheduler(**kwargs)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="eta"):
        DDIMScheduler(10, eta=-1.0)

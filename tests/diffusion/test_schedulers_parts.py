"""pdiff_fast.diffusion.schedulers' parts, value by value: the schedule's arguments, the tables per
device, the timesteps drawn and walked, the DDIM step against its formula written out here (every
eta, clip and clamp), the noise drawn from the generator, and the step-count check's message.
Written against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md)."""
import math

import pytest
import torch

from pdiff_fast.diffusion.schedulers import DDIMScheduler, DDPMScheduler, SchedulerOutput, check_steps


def test_the_schedule_follows_its_arguments():
    s = DDPMScheduler(num_train_timesteps=10, beta_start=0.1, beta_end=0.5)
    betas = torch.linspace(0.1, 0.5, 10, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    assert s.num_train_timesteps == 10 and s.betas.dtype == torch.float32
    torch.testing.assert_close(s.betas, betas.float(), rtol=0, atol=0)
    torch.testing.assert_close(s.alphas_cumprod_f64, ac, rtol=0, atol=0)
    torch.testing.assert_close(s.alphas_cumprod, ac.float(), rtol=0, atol=0)
    assert s.timesteps() == list(range(9, -1, -1)) and s.noise_draws() == 11
    assert (s.variance_type, s.clip_sample) == ("fixedlarge", True)
    assert DDPMScheduler(clip_sample=False).clip_sample is False
    assert DDPMScheduler().num_train_timesteps == 1000 and DDPMScheduler().noise_draws() == 1001


def test_the_variance_type_is_checked_and_kept():
    small = DDPMScheduler(variance_type="fixedsmall")
    assert small.variance_type == "fixedsmall"
    assert torch.equal(small.model_log_variance, small.posterior_log_variance_clipped)
    with pytest.raises(ValueError, match=r"^variance_type must be 'fixedlarge' or 'fixedsmall', not 'learned'$"):
        DDPMScheduler(variance_type="learned")


def test_tables_are_the_coefficients_stacked_once_per_device():
    s = DDPMScheduler(num_train_timesteps=20)
    noising, step = s.tables("cpu")
    assert torch.equal(noising, torch.stack([s.sqrt_alphas_cumprod, s.sqrt_one_minus_alphas_cumprod]))
    assert torch.equal(step, torch.stack([s.sqrt_recip_alphas_cumprod, s.sqrt_recipm1_alphas_cumprod,
                                          s.posterior_mean_coef1, s.posterior_mean_coef2, s.model_log_variance]))
    assert noising.is_contiguous() and step.is_contiguous()
    again = s.tables(torch.device("cpu"))
    assert again[0] is noising and again[1] is step  # made once, whichever way the device is named
    assert list(s._tables) == [("cpu", None)]


def test_timesteps_are_drawn_from_the_whole_range():
    s = DDPMScheduler(num_train_timesteps=4)
    t = s.sample_timesteps(4000, "cpu", generator=torch.Generator().manual_seed(0))
    assert t.shape == (4000,) and t.dtype == torch.int64
    assert sorted(t.unique().tolist()) == [0, 1, 2, 3]
    again = s.sample_timesteps(4000, "cpu", generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)  # the generator is used
    assert torch.equal(t, torch.randint(0, 4, (4000,), generator=torch.Generator().manual_seed(0)))


def test_ddpm_noise_is_drawn_from_the_generator():
    s = DDPMScheduler()
    x, eps = torch.rand(3, 8) * 2 - 1, torch.randn(3, 8)
    t = torch.tensor([500, 10, 999])
    drawn = s.step(eps, t, x, generator=torch.Generator().manual_seed(5))
    given = s.step(eps, t, x, noise=torch.randn(3, 8, generator=torch.Generator().manual_seed(5)))
    assert isinstance(drawn, SchedulerOutput)
    assert torch.equal(drawn.prev_sample, given.prev_sample)
    assert torch.equal(drawn.pred_original_sample, given.pred_original_sample)
    # one timestep as a 0-d tensor is every row's
    one = s.step(eps, torch.tensor(500), x, noise=torch.zeros(3, 8))
    assert torch.equal(one.prev_sample, s.step(eps, torch.full((3,), 500), x, noise=torch.zeros(3, 8)).prev_sample)


def test_ddpm_clip_sample_off_keeps_x0_unclipped():
    s = DDPMScheduler(clip_sample=False)
    x, eps = torch.full((2, 4), 0.9), torch.full((2, 4), -3.0)
    t = torch.tensor([400, 400])
    out = s.step(eps, t, x, noise=torch.zeros(2, 4))
    want = s.sqrt_recip_alphas_cumprod[400] * x - s.sqrt_recipm1_alphas_cumprod[400] * eps
    torch.testing.assert_close(out.pred_original_sample, want)
    assert out.pred_original_sample.max() > 1
    clipped = DDPMScheduler().step(eps, t, x, noise=torch.zeros(2, 4))
    assert clipped.pred_original_sample.max() == 1


def test_add_noise_draws_from_the_generator():
    s = DDPMScheduler()
    x0, t = torch.randn(5, 6), torch.tensor([0, 1, 500, 998, 999])
    x_t, noise = s.add_noise(x0, t, generator=torch.Generator().manual_seed(2))
    assert torch.equal(noise, torch.randn(5, 6, generator=torch.Generator().manual_seed(2)))
    torch.testing.assert_close(x_t, s.sqrt_alphas_cumprod[t, None] * x0 + s.sqrt_one_minus_alphas_cumprod[t, None] * noise)


# --- DDIM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("steps, want", [(1, [0]), (3, [666, 333, 0]), (4, [750, 500, 250, 0]), (7, None),
                                         (1000, list(range(999, -1, -1)))])
def test_ddim_walks_every_stride_th_timestep_down_to_zero(steps, want):
    s = DDIMScheduler(num_inference_steps=steps)
    stride = 1000 // steps
    assert s.num_inference_steps == steps
    assert s.timesteps() == (want or [stride * i for i in range(steps)][::-1])
    assert s.noise_draws() == 1 + steps
    s.timesteps().clear()  # a copy
    assert len(s.timesteps()) == steps


def test_ddim_takes_the_ddpm_arguments():
    s = DDIMScheduler(num_inference_steps=5, num_train_timesteps=100, beta_start=0.01, beta_end=0.2,
                      clip_sample=False)
    assert s.num_train_timesteps == 100 and s.timesteps() == [80, 60, 40, 20, 0] and s.clip_sample is False
    assert s.betas[-1].item() == pytest.approx(0.2)


def ddim_reference(s, eps, t, x, noise, eta, clip, clamp):
    """One DDIM step (Song et al. eq. 12) in float64 from the schedule's alphas."""
    ts = s.timesteps()
    i = ts.index(t)
    a = s.alphas_cumprod_f64[t].item()
    a_prev = s.alphas_cumprod_f64[ts[i + 1]].item() if i + 1 < len(ts) else 1.0
    x, eps = x.double(), eps.double()
    x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)
    sigma = eta * math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    prev = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma ** 2, 0.0)) * eps + sigma * noise.double()
    return (prev.clamp(-1, 1) if clamp else prev), x0


@pytest.mark.parametrize("eta", [0.0, 0.5, 1])
@pytest.mark.parametrize("clip, clamp", [(True, True), (False, False), (True, False), (False, True)])
def test_ddim_step_against_its_formula(eta, clip, clamp):
    s = DDIMScheduler(num_inference_steps=4, eta=eta, clamp_sample=clamp, clip_sample=clip)
    assert s.eta == eta and isinstance(s.eta, float) and s.clamp_sample is clamp
    g = torch.Generator().manual_seed(1)
    x, eps, noise = torch.randn(3, 16, generator=g) * 1.5, torch.randn(3, 16, generator=g), torch.randn(3, 16, generator=g)
    for t in s.timesteps():  # the last step goes to alpha = 1
        out = s.step(eps, t, x, noise=noise)
        prev, x0 = ddim_reference(s, eps, t, x, noise, eta, clip, clamp)
        torch.testing.assert_close(out.pred_original_sample.double(), x0, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.prev_sample.double(), prev, rtol=1e-5, atol=1e-5)
        tensor_t = s.step(eps, torch.tensor([t, t, t]), x, noise=noise)  # a tensor timestep, read on the host
        assert torch.equal(tensor_t.prev_sample, out.prev_sample)


def test_ddim_clamp_sample_is_a_truth_value():
    assert DDIMScheduler(clamp_sample=0).clamp_sample is False
    assert DDIMScheduler(clamp_sample="yes").clamp_sample is True
    assert DDIMScheduler().clamp_sample is True and DDIMScheduler().eta == 0.0
    assert DDIMScheduler().num_inference_steps == 50


def test_ddim_noise_is_drawn_from_the_generator():
    s = DDIMScheduler(num_inference_steps=10, eta=1.0)
    x, eps = torch.rand(3, 8) * 2 - 1, torch.randn(3, 8)
    t = s.timesteps()[2]
    drawn = s.step(eps, t, x, generator=torch.Generator().manual_seed(9))
    given = s.step(eps, t, x, noise=torch.randn(3, 8, generator=torch.Generator().manual_seed(9)))
    assert torch.equal(drawn.prev_sample, given.prev_sample)


@pytest.mark.parametrize("eta", [-0.1, math.nan, math.inf, "0.5", None])
def test_ddim_eta_is_checked(eta):
    with pytest.raises(ValueError, match=rf"^DDIM eta must be a finite number >= 0, got {re_escape(repr(eta))}$"):
        DDIMScheduler(eta=eta)


def re_escape(text):
    import re
    return re.escape(text)


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.0, "5", True, None])
def test_step_counts_outside_1_to_t_are_refused(steps):
    with pytest.raises(ValueError, match=r"^the number of sampling steps must be an integer in 1\.\.1000, got "
                                         rf"{re_escape(repr(steps))}$"):
        check_steps(steps)
    with pytest.raises(ValueError, match="sampling steps"):
        DDIMScheduler(num_inference_steps=steps)


def test_step_count_bounds_are_inclusive():
    check_steps(1)
    check_steps(1000)
    check_steps(10, num_train_timesteps=10)
    with pytest.raises(ValueError, match=r"in 1\.\.10, got 11$"):
        check_steps(11, num_train_timesteps=10)
    with pytest.raises(ValueError, match=r"in 1\.\.100, got 101$"):
        DDIMScheduler(num_inference_steps=101, num_train_timesteps=100)


# --- what the ops are handed (the Triton kernels read seed, seed_offset and row_offset; the torch
# path on this machine does not, so the arguments are checked where they are passed) -------------

@pytest.fixture
def ops(monkeypatch):
    import pdiff_fast.diffusion.schedulers as schedulers

    calls = []

    def spy(name):
        real = getattr(schedulers, name)

        def wrapped(*args, **kwargs):
            calls.append((name, args, kwargs))
            return real(*args, **kwargs)
        monkeypatch.setattr(schedulers, name, wrapped)

    for name in ("q_sample", "ddpm_step", "ddim_step"):
        spy(name)
    return calls


def test_add_noise_hands_the_seed_and_offset_to_q_sample(ops):
    s = DDPMScheduler()
    x0, t = torch.randn(3, 4), torch.tensor([1, 2, 3])
    g = torch.Generator()
    s.add_noise(x0, t, generator=g, seed=17, seed_offset=5)
    s.add_noise(x0, t)
    (_, args, kwargs), (_, _, default) = ops
    assert args[0] is x0 and args[1] is t and args[3] is None and args[4] is g
    assert torch.equal(args[2], s.tables("cpu")[0])
    assert kwargs == {"seed": 17, "seed_offset": 5} and default == {"seed": None, "seed_offset": 0}


def test_ddpm_step_hands_a_timestep_per_row_and_the_noise_arguments(ops):
    s = DDPMScheduler(clip_sample=False)
    x, eps = torch.randn(3, 4), torch.randn(3, 4)
    g = torch.Generator()
    s.step(eps, torch.tensor(7), x, generator=g, seed=11, seed_offset=2, row_offset=6)
    s.step(eps, torch.tensor([7, 8, 9]), x, noise=torch.zeros(3, 4))
    (_, args, kwargs), (_, args2, default) = ops
    assert args[0] is x and args[1] is eps and args[3] is None and args[5] is False
    assert args[2].shape == (3,) and args[2].tolist() == [7, 7, 7]  # the kernel reads one timestep per row
    assert args2[2].tolist() == [7, 8, 9]
    assert torch.equal(args[4], s.tables("cpu")[1])
    assert kwargs == {"generator": g, "seed": 11, "seed_offset": 2, "row_offset": 6}
    assert default == {"generator": None, "seed": None, "seed_offset": 0, "row_offset": 0}


def test_ddim_step_hands_the_noise_arguments(ops):
    s = DDIMScheduler(num_inference_steps=4, eta=0.5, clamp_sample=False)
    x, eps = torch.randn(3, 4), torch.randn(3, 4)
    g = torch.Generator()
    s.step(eps, s.timesteps()[0], x, generator=g, seed=13, seed_offset=3, row_offset=9)
    s.step(eps, s.timesteps()[-1], x)
    (_, args, kwargs), (_, args2, default) = ops
    assert args[0] is x and args[1] is eps and args[4] is None and args[5] == 0.5 and args[6] is True
    assert (args[2], args[3]) == (s._alphas_cumprod_host[750], s._alphas_cumprod_host[500])
    assert (args2[2], args2[3]) == (s._alphas_cumprod_host[0], 1.0)  # the last step: to alpha = 1
    assert kwargs == {"clamp": False, "generator": g, "seed": 13, "seed_offset": 3, "row_offset": 9}
    assert default == {"clamp": False, "generator": None, "seed": None, "seed_offset": 0, "row_offset": 0}

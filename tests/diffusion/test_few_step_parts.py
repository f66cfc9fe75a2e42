"""pdiff_fast.diffusion.few_step's parts, value by value: the timestep spacings on a small schedule,
their error messages, the solvers' names and flags, the step's checks and its multistep state (x0
kept between steps, dropped after the last), the coefficients against the module docstring's
formulas written out here, and the noise drawn from the generator. Written against the mutants
mutmut left alive (tests/mutation, docs/mutation-scores.md)."""
import math
import re

import numpy as np
import pytest
import torch

from pdiff_fast.diffusion.few_step import (DPMSolverScheduler, EulerAncestralScheduler, FewStepScheduler,
                                           spaced_timesteps)
from pdiff_fast.ops.solver_step import StepCoefs


def test_spacings_on_a_small_schedule():
    assert spaced_timesteps(10, 3, "linspace") == [9, 6, 3]
    assert spaced_timesteps(10, 4, "linspace") == [9, 7, 4, 2]  # 6.75, 4.5, 2.25 rounded half to even
    assert spaced_timesteps(10, 3, "trailing") == [9, 6, 2]  # 10, 6.67, 3.33 rounded, minus 1
    assert spaced_timesteps(10, 1, "trailing") == [9] and spaced_timesteps(10, 1, "linspace") == [9]
    assert spaced_timesteps(10, 10, "trailing") == list(range(9, -1, -1))
    assert all(type(t) is int for t in spaced_timesteps(10, 3, "linspace"))


def test_spacing_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"^unknown timestep spacing 'leading'; choose 'linspace' or 'trailing'$"):
        spaced_timesteps(10, 3, "leading")
    with pytest.raises(ValueError, match=r"^10 steps repeat a timestep with 'linspace' spacing over 10$"):
        spaced_timesteps(10, 10, "linspace")


def test_names_flags_and_defaults():
    assert DPMSolverScheduler().name == "dpm++2m" and DPMSolverScheduler(sde=True).name == "dpm++2m-sde"
    assert DPMSolverScheduler(sde=1).sde is True and DPMSolverScheduler().sde is False
    assert EulerAncestralScheduler().name == "euler-a" and EulerAncestralScheduler.spacing == "trailing"
    assert DPMSolverScheduler.spacing == "linspace" and FewStepScheduler.step_op == "solver_step"
    for s in (DPMSolverScheduler(), EulerAncestralScheduler()):
        assert s.num_inference_steps == 20 and len(s.timesteps()) == 20 and s.clamp_sample is True
        assert s.noise_draws() == 21 and s.host_timestep is True
    assert DPMSolverScheduler(clamp_sample=0).clamp_sample is False
    s = DPMSolverScheduler(5, num_train_timesteps=50, clip_sample=False)
    assert s.timesteps() == spaced_timesteps(50, 5, "linspace") and s.clip_sample is False
    assert s._ac == pytest.approx(s.alphas_cumprod_f64.tolist(), rel=0, abs=0)
    with pytest.raises(ValueError, match=r"sampling steps must be an integer in 1\.\.50, got 51"):
        DPMSolverScheduler(51, num_train_timesteps=50)
    with pytest.raises(NotImplementedError):
        FewStepScheduler(3)


def test_alpha_sigma_past_the_last_step_is_the_clean_sample():
    s = EulerAncestralScheduler(3)
    for i, t in enumerate(s.timesteps()):
        a = s.alphas_cumprod_f64[t].item()
        assert s.alpha_sigma(i) == (math.sqrt(a), math.sqrt(1 - a))
    assert s.alpha_sigma(3) == (1.0, 0.0) and s.alpha_sigma(4) == (1.0, 0.0)


def vp(s, i):
    return s.alpha_sigma(i)


def test_dpm_solver_coefficients_are_the_docstrings_formulas():
    for sde in (False, True):
        s = DPMSolverScheduler(4, sde=sde)
        lam = [math.log(a / b) for a, b in (vp(s, i) for i in range(4))]
        for i in range(4):
            a, b = vp(s, i)
            c = s.coefs[i]
            assert isinstance(c, StepCoefs) and (c.a, c.b) == pytest.approx((a, b), rel=1e-12)
            if i == 3:  # to sigma 0: x0
                assert tuple(c) == pytest.approx((a, b, 0.0, 1.0, 0.0, 0.0))
                continue
            alpha_s, sigma_s = vp(s, i + 1)
            h = lam[i + 1] - lam[i]
            if sde:
                cx, k, cz = sigma_s / b * math.exp(-h), alpha_s * (1 - math.exp(-2 * h)), sigma_s * math.sqrt(1 - math.exp(-2 * h))
            else:
                cx, k, cz = sigma_s / b, -alpha_s * (math.exp(-h) - 1), 0.0
            if i == 0:
                c0, c1 = k, 0.0
            else:
                r = (lam[i] - lam[i - 1]) / h
                c0, c1 = k * (1 + 1 / (2 * r)), -k / (2 * r)
            assert tuple(c) == pytest.approx((a, b, cx, c0, c1, cz), rel=1e-9, abs=1e-12), (sde, i)


def test_euler_ancestral_coefficients_are_the_docstrings_formulas():
    s = EulerAncestralScheduler(4)
    for i in range(4):
        a, b = vp(s, i)
        alpha_s, sigma_s = vp(s, i + 1)
        s_t, s_s = b / a, sigma_s / alpha_s
        s_up = math.sqrt(s_s ** 2 * (s_t ** 2 - s_s ** 2) / s_t ** 2)
        s_down = math.sqrt(s_s ** 2 - s_up ** 2)
        # x_s / alpha_s = x0 + s_down / s_t * (x_t / alpha_t - x0) + s_up * z
        want = (a, b, alpha_s / a * s_down / s_t, alpha_s * (1 - s_down / s_t), 0.0, alpha_s * s_up)
        assert tuple(s.coefs[i]) == pytest.approx(want, rel=1e-9, abs=1e-12), i
    assert s.coefs[3].cx == 0.0 and s.coefs[3].cz == 0.0 and s.coefs[3].c0 == 1.0  # the last step lands on x0


def test_step_checks_its_timestep_and_its_order():
    s = DPMSolverScheduler(4)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match=rf"^dpm\+\+2m: timestep 5 is not one of this schedule's "
                                         rf"{re.escape(str(s.timesteps()))}$"):
        s.step(x, 5, x)
    t1 = s.timesteps()[1]
    with pytest.raises(RuntimeError, match=r"^dpm\+\+2m: step 1 is second order and needs step 0 run first$"):
        s.step(x, t1, x)
    e = EulerAncestralScheduler(4)
    with pytest.raises(ValueError, match=r"^euler-a: timestep 998 is not one"):
        e.step(x, torch.tensor([998, 998]), x)
    for t in e.timesteps()[1:]:  # first order throughout: any step runs alone
        e.step(x, t, x, noise=x)


def test_the_previous_x0_is_kept_between_steps_and_dropped_after_the_last():
    s = DPMSolverScheduler(3, sde=True)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 6, generator=g) * 0.5
    eps = [torch.randn(2, 6, generator=g) for _ in range(3)]
    z = [torch.randn(2, 6, generator=g) for _ in range(3)]
    outs = []
    for i, t in enumerate(s.timesteps()):
        out = s.step(eps[i], torch.tensor(t), x, noise=z[i])  # a 0-d tensor timestep too
        if i < 2:
            assert s._x0_prev is out.pred_original_sample
        outs.append(out)
        x = out.prev_sample
    assert s._x0_prev is None
    # step 1 by hand: clipped x0, then cx * x_t + c0 * x0 + c1 * x0_prev + cz * z, clamped
    c, x_in = s.coefs[1], outs[0].prev_sample
    x0 = ((x_in - c.b * eps[1]) / c.a).clamp(-1, 1)
    want = (c.cx * x_in + c.c0 * x0 + c.c1 * outs[0].pred_original_sample + c.cz * z[1]).clamp(-1, 1)
    torch.testing.assert_close(outs[1].prev_sample, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[1].pred_original_sample, x0, rtol=1e-5, atol=1e-6)
    # a new loop from the first timestep: what is kept from the last one is not read
    s._x0_prev = torch.full((2, 6), 100.0)
    again = s.step(eps[0], s.timesteps()[0], outs[0].prev_sample * 0 + torch.randn(2, 6, generator=g), noise=z[0])
    assert torch.isfinite(again.prev_sample).all() and s._x0_prev is again.pred_original_sample


def test_first_order_steps_do_not_read_the_previous_x0():
    s = EulerAncestralScheduler(3)
    x, eps, z = torch.rand(2, 4) - 0.5, torch.randn(2, 4), torch.randn(2, 4)
    t0, t1 = s.timesteps()[:2]
    s.step(eps, t0, x, noise=z)
    s._x0_prev = torch.full((2, 4), math.nan)  # would poison a step that read it
    out = s.step(eps, t1, x, noise=z)
    assert torch.isfinite(out.prev_sample).all()


def test_noise_is_drawn_from_the_generator():
    s = EulerAncestralScheduler(4)
    x, eps = torch.rand(3, 5) - 0.5, torch.randn(3, 5)
    t = s.timesteps()[0]
    drawn = s.step(eps, t, x, generator=torch.Generator().manual_seed(4))
    given = s.step(eps, t, x, noise=torch.randn(3, 5, generator=torch.Generator().manual_seed(4)))
    assert torch.equal(drawn.prev_sample, given.prev_sample)


def test_the_clip_and_clamp_flags_reach_the_step():
    x = torch.full((1, 4), 0.99)
    eps = torch.full((1, 4), -5.0)  # x0 far above 1
    clipped = EulerAncestralScheduler(2, clamp_sample=False)
    free = EulerAncestralScheduler(2, clamp_sample=False, clip_sample=False)
    t = clipped.timesteps()[0]
    c = clipped.coefs[0]
    a = clipped.step(eps, t, x, noise=torch.zeros(1, 4))
    b = free.step(eps, t, x, noise=torch.zeros(1, 4))
    assert a.pred_original_sample.max() == 1.0 and b.pred_original_sample.min() > 1.0
    assert b.prev_sample.max() > 1.0  # not clamped either
    torch.testing.assert_close(b.prev_sample, c.cx * x + c.c0 * (x - c.b * eps) / c.a)
    assert np.isclose(a.prev_sample[0, 0].item(), c.cx * 0.99 + c.c0 * 1.0, rtol=1e-5)


def test_the_step_hands_the_noise_arguments_to_the_op(monkeypatch):
    """The Triton kernel draws the noise from seed, seed_offset and row_offset; the torch path here
    does not read them, so they are checked where they are passed."""
    import pdiff_fast.diffusion.few_step as few_step

    calls = []
    real = few_step.solver_step

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(few_step, "solver_step", spy)
    s = DPMSolverScheduler(3, sde=True, clip_sample=False, clamp_sample=False)
    x, eps = torch.rand(2, 4) - 0.5, torch.randn(2, 4)
    g = torch.Generator()
    out0 = s.step(eps, s.timesteps()[0], x, generator=g, seed=21, seed_offset=4, row_offset=8)
    s.step(eps, s.timesteps()[1], x)
    (args, kwargs), (args2, default) = calls
    assert args[0] is x and args[1] is eps and args[2] == s.coefs[0] and args[3] is None and args[4] is None
    assert args[5] is False and args[6] is False
    assert args2[2] == s.coefs[1] and args2[3] is out0.pred_original_sample  # second order: the previous x0
    assert kwargs == {"generator": g, "seed": 21, "seed_offset": 4, "row_offset": 8}
    assert default == {"generator": None, "seed": None, "seed_offset": 0, "row_offset": 0}
    s.step(eps, s.timesteps()[2], x)  # the last step, first order again (to x0): no previous x0 handed
    assert s.coefs[2].c1 == 0.0 and calls[2][0][3] is None
    e = EulerAncestralScheduler(3)
    for t in e.timesteps():
        e.step(eps, t, x)
    assert [c[0][3] for c in calls[3:]] == [None, None, None]  # first order throughout

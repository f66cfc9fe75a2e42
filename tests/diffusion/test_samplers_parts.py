"""pdiff_fast.diffusion.samplers' parts: every name to its scheduler with the arguments it takes,
the defaults, the checks and their messages in full, and as_scheduler on each kind of input.
Written against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md)."""
import math
import re
import types

import pytest
import torch

from pdiff_fast.diffusion.few_step import DPMSolverScheduler, EulerAncestralScheduler
from pdiff_fast.diffusion.from_diffusers import DiffusersScheduler
from pdiff_fast.diffusion.samplers import SAMPLERS, as_scheduler, make_scheduler
from pdiff_fast.diffusion.schedulers import DDIMScheduler, DDPMScheduler


def test_the_samplers_and_their_default_steps():
    assert {k: v[1] for k, v in SAMPLERS.items()} == {"ddpm": 1000, "ddim": 50, "dpm++2m": 20, "dpm++2m-sde": 20,
                                                      "euler-a": 20}
    assert type(make_scheduler()) is DDPMScheduler
    assert make_scheduler("ddim").num_inference_steps == 50
    assert make_scheduler("euler-a").num_inference_steps == 20


def test_each_name_makes_its_scheduler_with_the_arguments_given():
    ddim = make_scheduler("ddim", 7, eta=0.25, clamp_sample=False)
    assert type(ddim) is DDIMScheduler and (ddim.num_inference_steps, ddim.eta, ddim.clamp_sample) == (7, 0.25, False)
    assert make_scheduler("ddim", 7).clamp_sample is True and make_scheduler("ddim", 7).eta == 0.0
    e = make_scheduler("euler-a", 6, clamp_sample=False)
    assert type(e) is EulerAncestralScheduler and e.num_inference_steps == 6 and e.clamp_sample is False
    assert make_scheduler("euler-a", 6).clamp_sample is True
    for name, sde in (("dpm++2m", False), ("dpm++2m-sde", True)):
        s = make_scheduler(name, 9, clamp_sample=False)
        assert type(s) is DPMSolverScheduler and s.sde is sde and s.name == name
        assert s.num_inference_steps == 9 and s.clamp_sample is False
        assert make_scheduler(name, 9).clamp_sample is True
    ddpm = make_scheduler("ddpm", 20, eta=1.0, clamp_sample=False)  # DDPM runs all 1000 steps, clamped
    assert type(ddpm) is DDPMScheduler and len(ddpm.timesteps()) == 1000 and ddpm.clip_sample is True


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("steps", [0, 1001, 2.5, True])
def test_step_counts_are_checked_for_every_sampler(sampler, steps):
    with pytest.raises(ValueError, match=rf"^the number of sampling steps must be an integer in 1\.\.1000, got "
                                         rf"{re.escape(repr(steps))}$"):
        make_scheduler(sampler, steps)


def test_an_unknown_sampler_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"^unknown sampler 'unipc'; choose one of ddpm, ddim, dpm\+\+2m, "
                                         r"dpm\+\+2m-sde, euler-a$"):
        make_scheduler("unipc", 10)


@pytest.mark.parametrize("eta", [-0.5, math.nan, math.inf, True, "0.1", None])
def test_eta_is_a_finite_number_at_least_zero(eta):
    with pytest.raises(ValueError, match=rf"^eta must be a finite number >= 0, got {re.escape(repr(eta))}$"):
        make_scheduler("ddim", 10, eta=eta)
    with pytest.raises(ValueError, match="^eta must be"):
        make_scheduler("dpm++2m", 10, eta=eta)  # checked whatever the sampler


def test_eta_zero_and_integers_pass():
    assert make_scheduler("ddim", 10, eta=0).eta == 0.0
    assert make_scheduler("ddim", 10, eta=2).eta == 2.0


def test_as_scheduler_on_each_kind():
    ours = make_scheduler("dpm++2m", 5)
    assert as_scheduler(ours) is ours
    inner = types.SimpleNamespace(config=types.SimpleNamespace(), num_inference_steps=2,
                                  timesteps=torch.tensor([9, 5]), step=lambda model_output, timestep, sample: None,
                                  set_timesteps=None, scale_model_input=None)
    wrapped = as_scheduler(inner)
    assert type(wrapped) is DiffusersScheduler and wrapped.inner is inner
    assert as_scheduler(wrapped) is wrapped
    with pytest.raises(TypeError, match=r"^not a scheduler: str \(make_scheduler\(name, steps\) makes one; a diffusers "
                                        r"scheduler with set_timesteps called works too\)$"):
        as_scheduler("dpm++2m")
    with pytest.raises(TypeError, match=r"^not a scheduler: SimpleNamespace "):
        as_scheduler(types.SimpleNamespace(config=None, step=None))

"""Every sampler by name: `make_scheduler("dpm++2m", 20)`, what the config's `sampler` and the
CLI's --sampler take; `as_scheduler` also takes a diffusers scheduler object."""
from __future__ import annotations

import math

from .few_step import DPMSolverScheduler, EulerAncestralScheduler
from .from_diffusers import DiffusersScheduler, is_diffusers_scheduler
from .schedulers import DDIMScheduler, DDPMScheduler, check_steps

# name -> (what it is, its default number of steps)
SAMPLERS = {
    "ddpm": ("ancestral DDPM over all 1000 training steps (the reference)", 1000),
    "ddim": ("DDIM; eta > 0 adds noise, eta = 1 is DDPM on the step subset", 50),
    "dpm++2m": ("DPM-Solver++ 2M, deterministic", 20),
    "dpm++2m-sde": ("SDE-DPM-Solver++ 2M, stochastic", 20),
    "euler-a": ("Euler ancestral, stochastic", 20),
}


def make_scheduler(sampler: str = "ddpm", steps: int | None = None, eta: float = 0.0,
                   clamp_sample: bool = True) -> DDPMScheduler:
    """The sampler `sampler` at `steps` denoiser evaluations (its default when None; DDPM always
    runs all 1000). eta: DDIM's noise (>= 0). clamp_sample: clamp x_t to [-1, 1] after each step
    as the reference's DDPM does (the few-step samplers; DDPM always does)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if not (isinstance(eta, (int, float)) and not isinstance(eta, bool) and math.isfinite(eta) and eta >= 0):
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    steps = SAMPLERS[sampler][1] if steps is None else steps
    check_steps(steps)
    if sampler == "ddpm":
        return DDPMScheduler()
    if sampler == "ddim":
        return DDIMScheduler(num_inference_steps=steps, eta=eta, clamp_sample=clamp_sample)
    if sampler == "euler-a":
        return EulerAncestralScheduler(steps, clamp_sample=clamp_sample)
    return DPMSolverScheduler(steps, sde=sampler.endswith("-sde"), clamp_sample=clamp_sample)


def as_scheduler(scheduler):
    """pdiff_fast's schedulers as they are; a diffusers scheduler wrapped (DiffusersScheduler)."""
    if isinstance(scheduler, (DDPMScheduler, DiffusersScheduler)):
        return scheduler
    if is_diffusers_scheduler(scheduler):
        return DiffusersScheduler(scheduler)
    raise TypeError(f"not a scheduler: {type(scheduler).__name__} (make_scheduler(name, steps) makes one; "
                    f"a diffusers scheduler with set_timesteps called works too)")

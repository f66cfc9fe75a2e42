"""A diffusers scheduler in pdiff_fast's sampling loop: `generate(..., scheduler=DPMSolverMultistepScheduler(...))`.

The loop runs the denoiser on the model input and hands its epsilon to `step`; diffusers keeps its
own sample, which for the sigma-space schedulers (Euler, Heun, ...) is the model input times
sqrt(sigma^2 + 1). The adapter keeps that sample and gives the loop `scale_model_input` of it, so any
epsilon-prediction diffusers scheduler with integer timesteps runs unchanged, with its own
semantics (diffusers clamps neither x_t nor, unless configured, x0).

Per-model noise stays a function of (seed, model index): the loop's noise for the step is passed as
`variance_noise` where the scheduler's step takes it (DDIM, DPM-Solver); elsewhere each model gets
its own generator per step, seeded from (seed, model index, step).
"""
from __future__ import annotations

import inspect

import torch

from .schedulers import SchedulerOutput
from .seeds import model_seed


def is_diffusers_scheduler(obj) -> bool:
    return all(hasattr(obj, a) for a in ("set_timesteps", "step", "scale_model_input", "config"))


class DiffusersScheduler:
    """Wraps a diffusers scheduler whose set_timesteps was called (or give num_inference_steps)."""

    step_op = None  # no fused kernel: diffusers' own torch code runs each step
    host_timestep = True

    def __init__(self, scheduler, num_inference_steps: int | None = None, **step_kwargs):
        if getattr(scheduler.config, "prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"pdiff_fast's denoisers predict epsilon; this scheduler is configured for "
                             f"{scheduler.config.prediction_type!r}")
        if num_inference_steps is not None:
            scheduler.set_timesteps(num_inference_steps)
        if getattr(scheduler, "num_inference_steps", None) is None:
            raise ValueError("call the diffusers scheduler's set_timesteps(steps) first, or pass num_inference_steps")
        ts = [float(t) for t in scheduler.timesteps]
        if any(t != int(t) for t in ts) or len(set(ts)) != len(ts):
            raise ValueError("the diffusers scheduler's timesteps must be distinct integers (pdiff_fast's denoisers "
                             "take integer timesteps); try timestep_spacing='trailing' or 'leading'")
        self.inner, self.step_kwargs = scheduler, step_kwargs
        self._timesteps = [int(t) for t in ts]
        self._index = {t: i for i, t in enumerate(self._timesteps)}
        self._takes_noise = "variance_noise" in inspect.signature(scheduler.step).parameters
        self._sample = None

    def timesteps(self) -> list[int]:
        return list(self._timesteps)

    def noise_draws(self) -> int:
        return 1 + len(self._timesteps)

    def _generators(self, seed: int, row_offset: int, step: int, n: int, device) -> list[torch.Generator]:
        return [torch.Generator(device=device).manual_seed(model_seed(model_seed(seed, int(row_offset) + j), 1 + step))
                for j in range(n)]

    def step(self, model_output, t, sample, noise=None, generator=None, seed=None, seed_offset: int = 0,
             row_offset=0) -> SchedulerOutput:
        i = self._index[int(t)]
        if i == 0:  # a new loop: diffusers' multistep state and step index start again
            self.inner.set_timesteps(len(self._timesteps))
            self._sample = sample * self.inner.init_noise_sigma
        kwargs = dict(self.step_kwargs)
        if self._takes_noise and noise is not None:
            kwargs["variance_noise"] = noise
        elif seed is not None:
            kwargs["generator"] = self._generators(seed, row_offset, i, sample.shape[0], sample.device)
        elif generator is not None:
            kwargs["generator"] = generator
        out = self.inner.step(model_output, self.inner.timesteps[i], self._sample, **kwargs)
        self._sample = out.prev_sample
        x0 = getattr(out, "pred_original_sample", None)
        if i + 1 < len(self._timesteps):
            return SchedulerOutput(self.inner.scale_model_input(self._sample, self.inner.timesteps[i + 1]), x0)
        return SchedulerOutput(self._sample, x0)

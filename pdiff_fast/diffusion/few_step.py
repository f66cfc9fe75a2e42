"""Few-step samplers on the same epsilon model: DPM-Solver++ 2M and its SDE variant (Lu et al.
2022, arXiv 2211.01095) and Euler ancestral (Karras et al. 2022's Euler step with ancestral noise,
as k-diffusion and diffusers run it).

Each step is `solver_step` (pdiff_fast/ops/solver_step.py): x0 from the model's epsilon, clipped to
[-1, 1], then out = cx * x_t + c0 * x0 + c1 * x0_prev + cz * noise, clamped to [-1, 1] like the
reference's DDPM step (clamp_sample). The coefficients depend on the schedule alone, so they are
host floats computed once per `set_timesteps` in float64: a step reads no tensor on the host (no
sync; the loop can be captured as a CUDA graph) and runs as one fused kernel on CUDA.

Timesteps and coefficients follow diffusers' DPMSolverMultistepScheduler (timestep_spacing
"linspace", final sigma 0, first and last steps first order) and EulerAncestralDiscreteScheduler
(timestep_spacing "trailing"); tests/diffusion/test_few_step.py checks both against diffusers.
In the VP notation x_t = alpha_t * x0 + sigma_t * eps (alpha_t = sqrt(alphas_cumprod[t]),
sigma_t = sqrt(1 - alphas_cumprod[t]), lambda_t = log(alpha_t / sigma_t)), from t to s:

    DPM-Solver++ 2M:      x_s = sigma_s / sigma_t * x_t - alpha_s * (e^-h - 1) * D,     h = lambda_s - lambda_t
    DPM-Solver++ 2M SDE:  x_s = sigma_s / sigma_t * e^-h * x_t + alpha_s * (1 - e^-2h) * D
                                + sigma_s * sqrt(1 - e^-2h) * z
    with D = x0 on a first-order step, else D = (1 + 1/(2r)) x0 - 1/(2r) x0_prev, r = h_prev / h.
    Euler ancestral (in sigma space, s_t = sigma_t / alpha_t): s_up = sqrt(s_s^2 (s_t^2 - s_s^2) / s_t^2),
    s_down = sqrt(s_s^2 - s_up^2); x_s / alpha_s = x0 + s_down / s_t * (x_t / alpha_t - x0) + s_up * z.
"""
from __future__ import annotations

import math

import numpy as np

from ..ops.solver_step import StepCoefs, solver_step
from .schedulers import DDPMScheduler, SchedulerOutput, check_steps


def spaced_timesteps(num_train_timesteps: int, steps: int, spacing: str) -> list[int]:
    """`steps` training timesteps from the noisiest down, as diffusers spaces them: "linspace"
    (DPM-Solver: round(linspace(0, T - 1, steps + 1)) without its 0) or "trailing" (T - 1 down in
    strides of T / steps). Distinct integers, so a step is found by its timestep."""
    T = num_train_timesteps
    if spacing == "linspace":
        ts = np.linspace(0, T - 1, steps + 1).round()[::-1][:-1]
    elif spacing == "trailing":
        ts = np.arange(T, 0, -T / steps).round() - 1
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose 'linspace' or 'trailing'")
    out = [int(t) for t in ts]
    if len(set(out)) != len(out):
        raise ValueError(f"{steps} steps repeat a timestep with {spacing!r} spacing over {T}")
    return out


class FewStepScheduler(DDPMScheduler):
    """The shared part of the few-step samplers: timesteps, the per-step coefficients (the
    subclass's `coefficients`), and the previous step's x0 for second-order steps."""

    step_op = "solver_step"
    host_timestep = True
    spacing = "linspace"
    name = ""

    def __init__(self, num_inference_steps: int = 20, clamp_sample: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.clamp_sample = bool(clamp_sample)
        self._ac = self.alphas_cumprod_f64.tolist()
        self.set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        check_steps(num_inference_steps, self.num_train_timesteps)
        self.num_inference_steps = num_inference_steps
        self._timesteps = spaced_timesteps(self.num_train_timesteps, num_inference_steps, self.spacing)
        self._index = {t: i for i, t in enumerate(self._timesteps)}
        self.coefs = [self.coefficients(i) for i in range(num_inference_steps)]
        self._x0_prev = None

    def timesteps(self) -> list[int]:
        return list(self._timesteps)

    def alpha_sigma(self, i: int) -> tuple[float, float]:
        """(alpha, sigma) of the i-th timestep; (1, 0) past the last (the clean sample)."""
        if i >= len(self._timesteps):
            return 1.0, 0.0
        a = self._ac[self._timesteps[i]]
        return math.sqrt(a), math.sqrt(1.0 - a)

    def coefficients(self, i: int) -> StepCoefs:
        raise NotImplementedError

    def step(self, model_output, t, sample, noise=None, generator=None, seed=None, seed_offset: int = 0,
             row_offset=0) -> SchedulerOutput:
        """One step from timestep t (the host int, as DDIMScheduler.step) to the schedule's next.
        A loop starts at the first timestep, which forgets the previous loop's x0."""
        t_int = int(t.reshape(-1)[0]) if hasattr(t, "reshape") else int(t)
        if t_int not in self._index:
            raise ValueError(f"{self.name}: timestep {t_int} is not one of this schedule's {self._timesteps}")
        i = self._index[t_int]
        if i == 0:
            self._x0_prev = None
        c = self.coefs[i]
        if c.c1 != 0.0 and self._x0_prev is None:
            raise RuntimeError(f"{self.name}: step {i} is second order and needs step {i - 1} run first")
        prev, x0 = solver_step(sample, model_output, c, self._x0_prev if c.c1 != 0.0 else None, noise,
                               self.clip_sample, self.clamp_sample, generator=generator, seed=seed,
                               seed_offset=seed_offset, row_offset=row_offset)
        self._x0_prev = x0 if i + 1 < len(self._timesteps) else None
        return SchedulerOutput(prev, x0)


class DPMSolverScheduler(FewStepScheduler):
    """DPM-Solver++ 2M (sde=False) or SDE-DPM-Solver++ 2M (sde=True), data prediction, midpoint."""

    def __init__(self, num_inference_steps: int = 20, sde: bool = False, **kwargs):
        self.sde = bool(sde)
        self.name = "dpm++2m-sde" if self.sde else "dpm++2m"
        super().__init__(num_inference_steps, **kwargs)

    def _lambda(self, i: int) -> float:
        alpha, sigma = self.alpha_sigma(i)
        return math.log(alpha) - math.log(sigma)

    def coefficients(self, i: int) -> StepCoefs:
        a, b = self.alpha_sigma(i)
        if i + 1 == len(self._timesteps):  # to sigma 0: first order, which is x0 itself
            return StepCoefs(a, b, 0.0, 1.0)
        alpha_s, sigma_s = self.alpha_sigma(i + 1)
        h = self._lambda(i + 1) - self._lambda(i)
        if self.sde:
            cx, k = sigma_s / b * math.exp(-h), -alpha_s * math.expm1(-2.0 * h)
            cz = sigma_s * math.sqrt(-math.expm1(-2.0 * h))
        else:
            cx, k, cz = sigma_s / b, -alpha_s * math.expm1(-h), 0.0
        if i == 0:
            return StepCoefs(a, b, cx, k, 0.0, cz)
        r = (self._lambda(i) - self._lambda(i - 1)) / h
        return StepCoefs(a, b, cx, k * (1.0 + 0.5 / r), -k * 0.5 / r, cz)


class EulerAncestralScheduler(FewStepScheduler):
    """Euler ancestral: one Euler step to sigma_down, then fresh noise of scale sigma_up."""

    spacing = "trailing"
    name = "euler-a"

    def coefficients(self, i: int) -> StepCoefs:
        a, b = self.alpha_sigma(i)
        alpha_s, sigma_s = self.alpha_sigma(i + 1)
        s_t, s_s = b / a, sigma_s / alpha_s
        s_up = math.sqrt(max(s_s**2 * (s_t**2 - s_s**2) / s_t**2, 0.0))
        s_down = math.sqrt(max(s_s**2 - s_up**2, 0.0))
        ratio = s_down / s_t
        return StepCoefs(a, b, alpha_s / a * ratio, alpha_s * (1.0 - ratio), 0.0, alpha_s * s_up)

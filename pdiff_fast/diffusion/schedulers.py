"""DDPM and DDIM schedulers for the latent diffusion of p-diff (diffusers-style names); the
few-step solvers (DPM-Solver++, Euler ancestral) are in few_step.py, `make_scheduler` names them all.

Linear betas 1e-4 -> 2e-2 over T = 1000 steps, epsilon prediction. Coefficient tables are
computed in float64 and stored as float32 (as the reference registers its buffers).

    sched = DDPMScheduler()
    x_t, noise = sched.add_noise(x0, t)                 # training
    out = sched.step(eps, t, x_t)                        # sampling: out.prev_sample, out.pred_original_sample
                                                         # (DDIM: t a host int, see DDIMScheduler.step)
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ops import ddim_step, ddpm_step, q_sample


@dataclass
class SchedulerOutput:
    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class DDPMScheduler:
    step_op = "ddpm_step"  # the op whose Triton kernel runs step (pdiff_fast.backend)
    host_timestep = False  # step takes the (B,) timestep tensor; the others take the host int

    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2,
                 variance_type: str = "fixedlarge", clip_sample: bool = True):
        if variance_type not in ("fixedlarge", "fixedsmall"):
            raise ValueError(f"variance_type must be 'fixedlarge' or 'fixedsmall', not {variance_type!r}")
        T = num_train_timesteps
        betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        alphas = 1.0 - betas
        ac = torch.cumprod(alphas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=torch.float64), ac[:-1]])
        post_var = betas * (1.0 - ac_prev) / (1.0 - ac)
        self.num_train_timesteps = T
        self.variance_type, self.clip_sample = variance_type, clip_sample
        self.betas = betas.float()
        self.alphas_cumprod = ac.float()
        self.alphas_cumprod_f64 = ac
        self.sqrt_alphas_cumprod = ac.sqrt().float()
        self.sqrt_one_minus_alphas_cumprod = (1.0 - ac).sqrt().float()
        self.sqrt_recip_alphas_cumprod = ac.rsqrt().float()
        self.sqrt_recipm1_alphas_cumprod = (1.0 / ac - 1.0).sqrt().float()
        self.posterior_variance = post_var.float()
        self.posterior_log_variance_clipped = torch.log(torch.cat([post_var[1:2], post_var[1:]])).float()
        self.posterior_mean_coef1 = (betas * ac_prev.sqrt() / (1.0 - ac)).float()
        self.posterior_mean_coef2 = ((1.0 - ac_prev) * alphas.sqrt() / (1.0 - ac)).float()
        # fixed-large: variance beta_t, with the first entry replaced by the posterior's (reference)
        fixedlarge = torch.log(torch.cat([post_var[1:2], betas[1:]])).float()
        self.model_log_variance = fixedlarge if variance_type == "fixedlarge" else self.posterior_log_variance_clipped
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def tables(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(2, T) noising and (5, T) step coefficients on `device`, made once per device."""
        key = (torch.device(device).type, torch.device(device).index)
        if key not in self._tables:
            noising = torch.stack([self.sqrt_alphas_cumprod, self.sqrt_one_minus_alphas_cumprod]).to(device)
            step = torch.stack([self.sqrt_recip_alphas_cumprod, self.sqrt_recipm1_alphas_cumprod,
                                self.posterior_mean_coef1, self.posterior_mean_coef2,
                                self.model_log_variance]).to(device)
            self._tables[key] = (noising.contiguous(), step.contiguous())
        return self._tables[key]

    def sample_timesteps(self, batch: int, device, generator=None) -> torch.Tensor:
        return torch.randint(0, self.num_train_timesteps, (batch,), device=device, generator=generator)

    def add_noise(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None, generator=None,
                  seed=None, seed_offset: int = 0):
        """q(x_t | x_0) (Ho et al. eq. 4); returns (x_t, noise), the noise drawn on the device.

        Without `noise`: from `generator` on the torch path; in the fused kernel on Triton, from
        (`seed`, `seed_offset`) when a seed is given (no host sync), else from `generator`."""
        return q_sample(x0, t, self.tables(x0.device)[0], noise, generator, seed=seed, seed_offset=seed_offset)

    def step(self, model_output: torch.Tensor, t: torch.Tensor, sample: torch.Tensor,
             noise: torch.Tensor | None = None, generator=None, seed=None, seed_offset: int = 0,
             row_offset=0) -> SchedulerOutput:
        """One ancestral step x_t -> x_{t-1} with the reference semantics (see ops/ddpm_step.py).

        Without `noise`, it is drawn on the device (in the fused kernel on CUDA, as a function of
        seed, seed_offset and the global row index row_offset + i)."""
        if t.dim() == 0:
            t = t.expand(sample.shape[0])
        prev, x0 = ddpm_step(sample, model_output, t, noise, self.tables(sample.device)[1], self.clip_sample,
                             generator=generator, seed=seed, seed_offset=seed_offset, row_offset=row_offset)
        return SchedulerOutput(prev, x0)

    def noise_draws(self) -> int:
        """How many noise tensors one sampling loop consumes (the initial one and one per step)."""
        return 1 + len(self.timesteps())

    def timesteps(self) -> list[int]:
        return list(range(self.num_train_timesteps - 1, -1, -1))


class DDIMScheduler(DDPMScheduler):
    """DDIM sampling over a subset of the training timesteps (Song et al. 2021). eta = 0 is the
    deterministic sampler; eta > 0 adds noise, and eta = 1 is ancestral sampling (DDPM with the
    posterior variance) on the step subset. clamp_sample clamps x_t to [-1, 1] after each step, as
    the reference's DDPM step does (on the default run, DDIM 20 steps: median 95.4 without, 96.7
    with; benchmarks/results/samplers_cpu.md)."""

    step_op = "ddim_step"
    host_timestep = True

    def __init__(self, num_inference_steps: int = 50, eta: float = 0.0, clamp_sample: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not (isinstance(eta, (int, float)) and math.isfinite(eta) and eta >= 0):
            raise ValueError(f"DDIM eta must be a finite number >= 0, got {eta!r}")
        self.eta, self.clamp_sample = float(eta), bool(clamp_sample)
        self._alphas_cumprod_host = self.alphas_cumprod_f64.tolist()  # floats: a step reads no tensor
        self.set_timesteps(num_inference_steps)

    def set_timesteps(self, num_inference_steps: int) -> None:
        check_steps(num_inference_steps, self.num_train_timesteps)
        self.num_inference_steps = num_inference_steps
        stride = self.num_train_timesteps // num_inference_steps
        self._timesteps = list(range(0, self.num_train_timesteps, stride))[:num_inference_steps][::-1]

    def timesteps(self) -> list[int]:
        return list(self._timesteps)

    def step(self, model_output, t, sample, noise=None, generator=None, seed=None, seed_offset: int = 0,
             row_offset=0) -> SchedulerOutput:
        """One DDIM step from timestep t to the schedule's next. t: the host int (what sampling
        loops pass: no device-to-host sync, so the loop can be captured as a CUDA graph), or a
        tensor of the one timestep, read on the host (a sync per call on CUDA)."""
        t_int = int(t.reshape(-1)[0]) if torch.is_tensor(t) else int(t)
        i = self._timesteps.index(t_int)
        t_prev = self._timesteps[i + 1] if i + 1 < len(self._timesteps) else -1
        a_t = self._alphas_cumprod_host[t_int]
        a_prev = self._alphas_cumprod_host[t_prev] if t_prev >= 0 else 1.0
        prev, x0 = ddim_step(sample, model_output, a_t, a_prev, noise, self.eta, self.clip_sample,
                             clamp=self.clamp_sample, generator=generator, seed=seed, seed_offset=seed_offset,
                             row_offset=row_offset)
        return SchedulerOutput(prev, x0)


def check_steps(steps, num_train_timesteps: int = 1000) -> None:
    """One clear line for a step count that is not an int in 1..num_train_timesteps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= num_train_timesteps:
        raise ValueError(f"the number of sampling steps must be an integer in 1..{num_train_timesteps}, got {steps!r}")


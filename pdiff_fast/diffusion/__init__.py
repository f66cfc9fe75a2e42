"""Diffusion in the latent space: the noise schedules and their reverse steps (DDPMScheduler,
DDIMScheduler: schedulers; DPM-Solver++ 2M and its SDE, Euler ancestral: few_step; a diffusers
scheduler: from_diffusers; `make_scheduler` by name: samplers) and sampling: many latents at once, decoded
to parameter sets (`generate`: per-model seeds, chunks within a memory budget, CUDA graphs;
sample). Imports only the shared base.

`pdiff_fast.diffusion` was the schedulers' module before the package had subpackages: the names
it held (SchedulerOutput, DDPMScheduler, DDIMScheduler, make_scheduler) still import from here."""
from .sample import generate, model_seed, sample_latents
from .few_step import DPMSolverScheduler, EulerAncestralScheduler
from .from_diffusers import DiffusersScheduler
from .samplers import SAMPLERS, make_scheduler
from .schedulers import DDIMScheduler, DDPMScheduler, SchedulerOutput

__all__ = ["DDPMScheduler", "DDIMScheduler", "DPMSolverScheduler", "EulerAncestralScheduler", "DiffusersScheduler",
           "SchedulerOutput", "make_scheduler", "SAMPLERS", "generate", "sample_latents", "model_seed"]

"""Diffusion in the latent space: the noise schedules and their reverse steps (DDPMScheduler,
DDIMScheduler; `make_scheduler` by name; schedulers) and sampling: many latents at once, decoded
to parameter sets (`generate`: per-model seeds, chunks within a memory budget, CUDA graphs;
sample). Imports only the shared base.

`pdiff_fast.diffusion` was the schedulers' module before the package had subpackages: the names
it held (SchedulerOutput, DDPMScheduler, DDIMScheduler, make_scheduler) still import from here."""
from .sample import generate, model_seed, sample_latents
from .schedulers import DDIMScheduler, DDPMScheduler, SchedulerOutput, make_scheduler

__all__ = ["DDPMScheduler", "DDIMScheduler", "SchedulerOutput", "make_scheduler", "generate", "sample_latents",
           "model_seed"]

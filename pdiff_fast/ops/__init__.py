"""Hot ops, one per file. Each file holds the PyTorch reference (`<op>_torch`) and the
dispatching entry point (`<op>`) that picks torch, Triton or the extension via `pdiff_fast.backend`."""
from .act_norm_conv1d import act_norm_conv1d, act_norm_conv1d_torch
from .ddim_step import ddim_step, ddim_step_torch
from .ddpm_step import ddpm_step, ddpm_step_torch
from .eps_mse import eps_mse, eps_mse_torch
from .q_sample import q_sample, q_sample_torch
from .solver_step import StepCoefs, solver_step, solver_step_torch

__all__ = [
    "act_norm_conv1d", "act_norm_conv1d_torch",
    "ddim_step", "ddim_step_torch",
    "ddpm_step", "ddpm_step_torch",
    "eps_mse", "eps_mse_torch",
    "q_sample", "q_sample_torch",
    "solver_step", "solver_step_torch", "StepCoefs",
]

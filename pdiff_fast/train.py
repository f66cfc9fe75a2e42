"""Training loops: the parameter autoencoder and the latent denoiser.

Both follow the reference v1: AdamW (lr 1e-3, wd 2e-6), full batch by default, MSE losses.
A non-finite loss stops training with an error naming the step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .autoencoder import ODEncoder2Decoder
from .denoiser import EMA
from .diffusion import DDPMScheduler
from .ops import eps_mse


def _batches(n: int, batch_size: int | None, gen: torch.Generator, device):
    if batch_size is None or batch_size >= n:
        return None
    return torch.randint(0, n, (batch_size,), generator=gen).to(device)


def _check(loss: torch.Tensor, what: str, step: int) -> float:
    value = loss.item()
    if not torch.isfinite(loss):
        raise FloatingPointError(f"{what} loss is {value} at step {step}; lower the learning rate or check the data")
    return value


def fit_autoencoder(ae: ODEncoder2Decoder, params: torch.Tensor, steps: int = 30000, lr: float = 1e-3,
                    weight_decay: float = 2e-6, batch_size: int | None = None, seed: int = 0,
                    progress: bool = True) -> list[float]:
    """Train `ae` to reconstruct the (K, D) parameter vectors (with its noise augmentation)."""
    if params.dim() != 2 or params.shape[1] != ae.in_dim:
        raise ValueError(f"autoencoder expects (K, {ae.in_dim}) training data, got {tuple(params.shape)}")
    if not torch.isfinite(params).all():
        raise ValueError("autoencoder training data contains NaN or Inf")
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    ae.train()
    losses = []
    bar = tqdm(range(steps), desc="train autoencoder", disable=not progress)
    for step in bar:
        idx = _batches(len(params), batch_size, gen, params.device)
        x = params if idx is None else params[idx]
        loss = F.mse_loss(ae(x), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            losses.append(_check(loss, "autoencoder", step))
            bar.set_postfix(loss=f"{losses[-1]:.2e}")
    ae.eval()
    return losses


def fit_diffusion(model: EMA, latents: torch.Tensor, scheduler: DDPMScheduler, steps: int = 30000,
                  lr: float = 1e-3, weight_decay: float = 2e-6, batch_size: int | None = None,
                  ema_decay: float | None = None, seed: int = 0, progress: bool = True) -> list[float]:
    """Train the denoiser to predict the noise added to latents (B, C, L); EMA updated every step."""
    if not torch.isfinite(latents).all():
        raise ValueError("diffusion training data (latents) contains NaN or Inf")
    opt = torch.optim.AdamW(model.model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=latents.device).manual_seed(seed)
    model.train()
    losses = []
    bar = tqdm(range(steps), desc="train diffusion", disable=not progress)
    for step in bar:
        idx = _batches(len(latents), batch_size, gen, latents.device)
        x0 = latents if idx is None else latents[idx]
        t = scheduler.sample_timesteps(x0.shape[0], x0.device, dev_gen)
        x_t, noise = scheduler.add_noise(x0, t, generator=dev_gen)
        loss = eps_mse(model(x_t, t), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.update(ema_decay)
        if step % 50 == 0 or step == steps - 1:
            losses.append(_check(loss, "diffusion", step))
            bar.set_postfix(loss=f"{losses[-1]:.2e}")
    model.eval()
    return losses

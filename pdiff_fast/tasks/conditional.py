"""Dataset-conditioned latent diffusion (D2NWG): the latent denoiser reads a task embedding made
by a set encoder from the task's (x, y) samples, so it can be asked for weights of a task it has
never seen.

    model = EMA(ConditionedDenoiser(AE_CNN_bottleneck(latent_numel, ...), SetEncoder(features)))
    fit_conditional(model, latents, task_of_row, draw_sets, scheduler, steps=3000)
    emb = model.ema.embed(support_sets)                      # (tasks, E)
    flat = generate_conditioned(ae, model.ema, scheduler, emb.repeat_interleave(m, 0), scale=1.0)

How the condition enters (`mode`); both reuse the `add` input of the fused conv kernel
(pdiff_fast.ops.act_norm_conv1d: x + add -> [act] -> instance norm -> conv), so neither needs a
new kernel:
- "time": the embedding is projected to the latent's length and added to the time embedding,
  the one (B, 1, L) pattern every block adds to all its input channels;
- "blocks": the embedding is projected to a few (B, M, L) maps, and each block gets its own
  (B, C_in, L) mix of them (a 1x1 convolution per block) added to its input with the time
  embedding: every channel of every block can read the task differently.

Classifier-free guidance: during training a fraction `drop` of the rows get the learned `null`
embedding instead of their task's, so the one network is both the conditional and the
unconditional denoiser. At sampling, eps = eps_null + scale * (eps_task - eps_null): scale 0 is
the unconditional model (the null pass alone, nothing else computed), 1 the conditional one,
above 1 guided. With 0 < scale != 1 both passes run as one batch of twice the rows.

Sampling goes through pdiff_fast.diffusion.sample.generate (per-model seeds, grains, the DDPM / DDIM
step ops, chunking), with the embeddings as its per-model condition: models for many tasks are
sampled in one batch.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..nn.denoiser import EMA, AE_CNN_bottleneck
from ..diffusion.schedulers import DDPMScheduler
from ..ops import eps_mse
from ..diffusion.sample import generate
from ..nn.set_encoder import SetEncoder
from ..pipeline.train import Checkpoint, _batches, _check_data, _Run


MODES = ("time", "blocks")
BLOCK_MAPS = 8  # M, the condition maps of mode "blocks"


class ConditionedDenoiser(nn.Module):
    """A latent denoiser (AE_CNN_bottleneck) plus the set encoder, the embedding's projection
    (`mode`, module docstring) and the null embedding."""

    def __init__(self, denoiser: nn.Module, encoder: SetEncoder, mode: str = "time"):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"conditioning mode must be one of {MODES}, got {mode!r}")
        if not isinstance(denoiser, AE_CNN_bottleneck):
            raise ValueError(f"ConditionedDenoiser needs an AE_CNN_bottleneck, got {type(denoiser).__name__}")
        self.denoiser, self.encoder, self.mode = denoiser, encoder, mode
        length = denoiser.in_dim
        if mode == "time":
            self.project = nn.Linear(encoder.out_dim, length)
        else:
            self.project = nn.Linear(encoder.out_dim, BLOCK_MAPS * length)
            c = denoiser.channel_list
            widths = [1, c[0], c[1], c[2], c[3], c[2], c[1], c[0]]  # each block's input channels
            self.mix = nn.ModuleList(nn.Conv1d(BLOCK_MAPS, w, 1, bias=False) for w in widths)
        self.null = nn.Parameter(torch.zeros(encoder.out_dim))

    def embed(self, sets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n, F) task samples -> (B, E) task embeddings."""
        return self.encoder(sets, mask)

    def forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if emb.dim() != 2 or emb.shape != (x.shape[0], self.null.shape[0]):
            raise ValueError(f"ConditionedDenoiser: emb must be ({x.shape[0]}, {self.null.shape[0]}), "
                             f"got {tuple(emb.shape)}")
        if self.mode == "time":
            return self.denoiser(x, t, self.project(emb))
        return self._blocks(x, t, emb)

    def _blocks(self, x: torch.Tensor, time: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """AE_CNN_bottleneck.forward with a per-block condition added to the time embedding."""
        d, n = self.denoiser, x.shape[0]
        h = x.reshape(n, 1, -1)
        if h.shape[2] != d.in_dim:
            raise ValueError(f"denoiser expects {d.in_dim} latent values per sample, got {tuple(x.shape)}")
        t = d.time_info(time, n)  # (B, 1, L)
        maps = self.project(emb).view(n, BLOCK_MAPS, d.in_dim)
        add = [t + mix(maps) for mix in self.mix]  # (B, C_in, L) per block
        e1 = d.enc1(h, add[0])
        e2 = d.enc2(e1, add[1])
        e3 = d.enc3(e2, add[2])
        e4 = d.enc4(e3, add[3])
        d1 = d.dec1(e4, add[4], skip=e3)
        d2 = d.dec2(d1, add[5], skip=e2)
        d3 = d.dec3(d2, add[6], skip=e1)
        return d.dec4(d3, add[7]).reshape(x.shape)

    def unconditional(self, n: int) -> torch.Tensor:
        """(n, E) null embeddings."""
        return self.null.expand(n, -1)


class Guided(nn.Module):
    """forward(x, t, emb) with classifier-free guidance at `scale` (module docstring)."""

    def __init__(self, model: ConditionedDenoiser, scale: float):
        super().__init__()
        if not scale >= 0:
            raise ValueError(f"guidance scale must be >= 0, got {scale!r}")
        self.model, self.scale = model, float(scale)

    def forward(self, x: torch.Tensor, t: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        if self.scale == 0:
            return self.model(x, t, self.model.unconditional(x.shape[0]))
        if self.scale == 1:
            return self.model(x, t, emb)
        n = x.shape[0]
        both = self.model(torch.cat([x, x]), torch.cat([t, t]),
                          torch.cat([emb, self.model.unconditional(n)]))
        task, null = both[:n], both[n:]
        return null + self.scale * (task - null)


def fit_conditional(model: EMA, latents: torch.Tensor, task_of_row: torch.Tensor,
                    draw_sets: Callable[[torch.Tensor, torch.Generator], torch.Tensor], scheduler: DDPMScheduler,
                    steps: int = 3000, lr: float = 1e-3, weight_decay: float = 2e-6, batch_size: int | None = 256,
                    drop: float = 0.1, ema_decay: float | None = None, seed: int = 0, progress: bool = True, *,
                    checkpoint: Checkpoint | None = None, checkpoint_every: int = 0,
                    resume: tuple[dict, dict] | None = None) -> list[float]:
    """Train the conditioned denoiser (model.model: a ConditionedDenoiser) and its set encoder together
    to predict the noise added to latents (R, C, L); row r belongs to task task_of_row[r], and
    draw_sets(tasks (B,), generator) returns a fresh (B, n, F) support set per row (drawn each step:
    the encoder sees many samples of each task). A fraction `drop` of the rows trains the null
    embedding. EMA updated every step; resumable as pdiff_fast.pipeline.train's loops."""
    if steps < 1:
        raise ValueError(f"conditional diffusion training needs at least 1 step, got {steps}")
    if not 0 <= drop < 1:
        raise ValueError(f"drop (the share of rows trained unconditionally) must be in [0, 1), got {drop}")
    if task_of_row.shape != latents.shape[:1]:
        raise ValueError(f"task_of_row must be ({latents.shape[0]},), one task per latent, got "
                         f"{tuple(task_of_row.shape)}")
    _check_data(latents, "conditional diffusion training data (latents)")
    net: ConditionedDenoiser = model.model
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    device = latents.device
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=device).manual_seed(seed)
    run = _Run("conditional diffusion", "diffusion_lr", lr, {"model": model}, opt,
               {"batches": gen, "noise": dev_gen}, latents, checkpoint, checkpoint_every, resume)
    tasks = task_of_row.to(device)

    def loss_at(step: int) -> torch.Tensor:
        idx = _batches(len(latents), batch_size, gen, device)
        x0, rows = (latents, tasks) if idx is None else (latents[idx], tasks[idx])
        emb = net.embed(draw_sets(rows, dev_gen))
        dropped = torch.rand(len(rows), generator=dev_gen, device=device) < drop
        emb = torch.where(dropped.unsqueeze(1), net.unconditional(len(rows)), emb)
        t = scheduler.sample_timesteps(x0.shape[0], device, dev_gen)
        x_t, noise = scheduler.add_noise(x0, t, generator=dev_gen, seed=seed, seed_offset=step)
        return eps_mse(net(x_t, t, emb), noise)

    return run.train(model, steps, progress, loss_at, after_update=lambda: model.update(ema_decay))


def generate_conditioned(autoencoder: nn.Module, model: ConditionedDenoiser, scheduler: DDPMScheduler,
                         emb: torch.Tensor, scale: float = 1.0, *, seed: int = 0, **kwargs) -> torch.Tensor:
    """One model per row of emb (n, E), sampled with guidance `scale` and decoded: (n, D). kwargs go to
    pdiff_fast.diffusion.sample.generate (device, memory_budget_bytes, grain, progress, ...); as there, model i
    is a function of (seed, i, emb[i]) alone."""
    model.eval()
    return generate(autoencoder, Guided(model, scale), scheduler, emb.shape[0], seed=seed, cond=emb, **kwargs)


# not the decorator, the same: mutmut leaves decorated functions unmutated
generate_conditioned = torch.no_grad()(generate_conditioned)

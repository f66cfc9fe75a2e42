"""Training loops: the parameter autoencoder and the latent denoiser.

Both follow the reference v1: AdamW (lr 1e-3, wd 2e-6), full batch by default, MSE losses.

Resumable: every `checkpoint_every` steps (not after the last one: the caller saves the trained
model then) the loops hand their whole state
(model, optimiser, EMA, every random generator they use, the step and the loss record) to a
`checkpoint` callback; passing that state back as `resume` continues to the same final result,
bitwise on CPU, as an uninterrupted run.

Many processes (`shard=True` under torchrun, pdiff_fast.distributed): DistributedDataParallel,
the global batch split over the ranks. Every rank draws the whole batch's indices and noise from
the same generators, so rank r's rows see exactly the noise one process would give them; each
rank's loss is weighted by its share of the rows, so the averaged gradients are those of the
whole batch's mean loss, and the loss curve is one process's within float rounding (the sums
run in another order). The loss read for the record and the divergence check is the global one.

Divergence: the loss is read every CHECK_EVERY steps (one host sync per CHECK_EVERY steps). A
non-finite loss, or one DIVERGE_FACTOR times its first value, stops training with
TrainingDiverged; the caller's files are untouched and the last checkpoint is a good state.
"""
from __future__ import annotations

import random
import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from torch.nn.parallel import DistributedDataParallel

from .. import distributed
from ..nn.denoiser import EMA
from ..diffusion.schedulers import DDPMScheduler
from ..ops import eps_mse

CHECK_EVERY = 50
DIVERGE_FACTOR = 1e3

Checkpoint = Callable[[dict, dict], None]  # (tensors, meta) -> saves them


class TrainingDiverged(FloatingPointError):
    """The loss became non-finite or grew far beyond its early value."""


def _batches(n: int, batch_size: int | None, gen: torch.Generator, device):
    if batch_size is None or batch_size >= n:
        return None
    return torch.randint(0, n, (batch_size,), generator=gen).to(device)


class _Run:
    """What both loops share: the step loop itself, loss record, divergence check, checkpoints, resume."""

    def __init__(self, what: str, lr_name: str, lr: float, modules: dict[str, nn.Module], opt, gens: dict,
                 data: torch.Tensor, checkpoint: Checkpoint | None, checkpoint_every: int,
                 resume: tuple[dict, dict] | None):
        self.what, self.lr_name, self.lr = what, lr_name, lr
        self.data_scale = data.detach().abs().max().item() if data.numel() else 0.0
        device = data.device
        self.modules, self.opt, self.gens, self.device = modules, opt, gens, torch.device(device)
        self.checkpoint, self.every = checkpoint, checkpoint_every
        self.losses: list[float] = []
        self.start = 0
        if resume is not None:
            self.restore(*resume)

    def train(self, model: nn.Module, steps: int, progress: bool, loss_at: Callable[[int], torch.Tensor],
              after_update: Callable[[], None] | None = None) -> list[float]:
        """Steps self.start..steps-1 (self.start is the resumed step, else 0): one optimiser update
        on loss_at(step), then after_update() (the EMA), then the loss check and any checkpoint due.
        Returns the loss record."""
        model.train()
        bar = tqdm(range(self.start, steps), desc=f"train {self.what}", disable=not progress, initial=self.start,
                   total=steps)
        timer = _Eta(self.what, self.start, steps, progress)
        for step in bar:
            loss = loss_at(step)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            if after_update is not None:
                after_update()
            self.after_step(step, steps, loss, bar)
            timer.after(step)
        model.eval()
        return self.losses

    # --- state ---------------------------------------------------------------------------
    def state(self, step: int) -> tuple[dict, dict]:
        """Everything needed to continue after `step` steps: (tensors, JSON meta)."""
        tensors = {f"{name}.{k}": v for name, m in self.modules.items() for k, v in m.state_dict().items()}
        opt_sd = self.opt.state_dict()
        for i, st in opt_sd["state"].items():
            for k, v in st.items():
                tensors[f"optim.{i}.{k}"] = v if torch.is_tensor(v) else torch.tensor(v)
        tensors["rng.torch"] = torch.get_rng_state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        for name, g in self.gens.items():
            tensors[f"rng.{name}"] = g.get_state()
        meta = {"step": step, "losses": list(self.losses), "param_groups": opt_sd["param_groups"],
                "python_random": _jsonable(random.getstate())}
        return tensors, meta

    def restore(self, tensors: dict, meta: dict) -> None:
        for name, m in self.modules.items():
            prefix = f"{name}."
            m.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}, strict=True)
        state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, i, key = k.split(".", 2)
                state.setdefault(int(i), {})[key] = v
        self.opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
        torch.set_rng_state(tensors["rng.torch"])
        if self.device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        for name, g in self.gens.items():
            g.set_state(tensors[f"rng.{name}"])
        random.setstate(_from_jsonable(meta["python_random"]))
        self.losses = list(meta["losses"])
        self.start = int(meta["step"])

    # --- per step ------------------------------------------------------------------------
    def after_step(self, step: int, steps: int, loss: torch.Tensor, bar) -> None:
        done = step + 1
        due = self.checkpoint is not None and self.every > 0 and done % self.every == 0 and done < steps
        if step % CHECK_EVERY == 0 or done == steps or due:
            value = distributed.all_mean(loss.detach()).item()  # the whole batch's loss on every rank
            self._check(value, step)
            if step % CHECK_EVERY == 0 or done == steps:
                self.losses.append(value)
            bar.set_postfix(loss=f"{value:.2e}")
        if due:
            self.checkpoint(*self.state(done))  # taken right after a passed check: a good state

    def _check(self, value: float, step: int) -> None:
        first = self.losses[0] if self.losses else value
        bad = not (value == value and abs(value) != float("inf"))
        grown = not bad and value > DIVERGE_FACTOR * max(first, 1e-12)
        if bad and step == self.start == 0:
            raise TrainingDiverged(
                f"{self.what} loss is {value} at step 0, before any update: the training data is the likely cause, "
                f"not the learning rate (largest |value| {self.data_scale:.3g}; standardise it)")
        if bad or grown:
            how = f"is {value}" if bad else f"grew to {value:.3g}, over {DIVERGE_FACTOR:g}x its first value {first:.3g}"
            raise TrainingDiverged(
                f"{self.what} training diverged at step {step}: the loss {how}. The training data is finite, so "
                f"the learning rate ({self.lr_name}={self.lr:g}) is the likely cause: lower it. "
                f"Models already on disk were kept.")


class _Eta:
    """One line, a few steps in: the measured seconds per step and how long the rest will take
    (the bar shows the same as elapsed<remaining; this line stays in the log)."""

    AFTER = 5  # steps timed, after the first (which pays for warm-up)

    def __init__(self, what: str, start: int, steps: int, progress: bool):
        self.what, self.start, self.steps, self.progress = what, start, steps, progress
        self.t0 = None

    def after(self, step: int) -> None:
        if not self.progress:
            return
        if step == self.start:
            self.t0 = time.perf_counter()
        elif step == self.start + self.AFTER and self.t0 is not None:
            per_step = (time.perf_counter() - self.t0) / self.AFTER
            left = per_step * (self.steps - step - 1)
            tqdm.write(f"train {self.what}: {per_step:.3g} s/step, {self.steps} steps; about "
                       f"{_duration(left)} to go")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _from_jsonable(x):
    return tuple(_from_jsonable(v) for v in x) if isinstance(x, list) else x


def _check_data(x: torch.Tensor, what: str) -> None:
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} contains {bad} NaN or Inf values: the data is broken, not the learning rate "
                         "(check the collected checkpoints)")


def fit_autoencoder(ae: nn.Module, params: torch.Tensor, steps: int = 30000, lr: float = 1e-3,
                    weight_decay: float = 2e-6, batch_size: int | None = None, seed: int = 0,
                    progress: bool = True, *, checkpoint: Checkpoint | None = None, checkpoint_every: int = 0,
                    resume: tuple[dict, dict] | None = None, shard: bool = False) -> list[float]:
    """Train `ae` to reconstruct the (K, D) parameter vectors (with its noise augmentation).

    Its noise augmentation draws from torch's global RNG, so seed that before calling; it is part
    of the checkpointed state. shard=True: DDP over the process group (see the module docstring);
    every rank passes the same arguments, and a `checkpoint` that saves on rank 0 only."""
    if params.dim() != 2 or params.shape[1] != ae.in_dim:
        raise ValueError(f"autoencoder expects (K, {ae.in_dim}) training data, got {tuple(params.shape)}")
    if steps < 1:
        raise ValueError(f"autoencoder training needs at least 1 step, got {steps}")
    _check_data(params, "autoencoder training data")
    if resume is None and hasattr(ae, "initialize"):
        ae.initialize(params)  # a data-dependent start (the lowrank preset: principal components)
    opt = torch.optim.AdamW(ae.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    run = _Run("autoencoder", "ae_lr", lr, {"model": ae}, opt, {"batches": gen}, params,
               checkpoint, checkpoint_every, resume)

    ddp = _ddp(_NoisedAutoencoder(ae), len(params), batch_size, "autoencoder") if shard else None
    latent_shape = ae.latent_shape() if ddp is not None else None

    def loss_at(step: int) -> torch.Tensor:
        idx = _batches(len(params), batch_size, gen, params.device)
        x = params if idx is None else params[idx]
        if ddp is None:
            return F.mse_loss(ae(x), x)
        # the noise ae(x) would draw for the whole batch, in the same order; this rank's rows of it
        f_in, noise_in = ae.noise_factor(ae.input_noise_factor), torch.randn_like(x)
        f_lat = ae.noise_factor(ae.latent_noise_factor)
        noise_lat = torch.randn((x.shape[0], *latent_shape), device=x.device, dtype=x.dtype)
        a, b = distributed.shard(x.shape[0])
        y = ddp(x[a:b], noise_in[a:b], f_in, noise_lat[a:b], f_lat)
        return F.mse_loss(y, x[a:b], reduction="sum") * (distributed.world_size() / x.numel())

    return run.train(ae, steps, progress, loss_at)


def _ddp(module: nn.Module, n: int, batch_size: int | None, what: str) -> DistributedDataParallel | None:
    """`module` under DDP when a process group is active (None otherwise); every rank needs rows."""
    if not distributed.active():
        return None
    batch = n if batch_size is None else min(n, batch_size)
    if batch < distributed.world_size():
        raise ValueError(f"{what} training: a batch of {batch} rows cannot be split over "
                         f"{distributed.world_size()} processes; use fewer processes or a larger batch")
    return DistributedDataParallel(module)


class _NoisedAutoencoder(nn.Module):
    """ae.forward with its noise given (this rank's rows of the whole batch's draws)."""

    def __init__(self, ae: nn.Module):
        super().__init__()
        self.ae = ae

    def forward(self, x, noise_in, f_in, noise_lat, f_lat):
        z = self.ae.encode(noise_in * f_in + x * (1 - f_in))
        return self.ae.decode(torch.clamp(noise_lat * f_lat + z * (1 - f_lat), -1, 1))


def fit_diffusion(model: EMA, latents: torch.Tensor, scheduler: DDPMScheduler, steps: int = 30000,
                  lr: float = 1e-3, weight_decay: float = 2e-6, batch_size: int | None = None,
                  ema_decay: float | None = None, seed: int = 0, progress: bool = True, *,
                  checkpoint: Checkpoint | None = None, checkpoint_every: int = 0,
                  resume: tuple[dict, dict] | None = None, shard: bool = False) -> list[float]:
    """Train the denoiser to predict the noise added to latents (B, C, L); EMA updated every step.

    Timesteps and noise come from generators seeded with `seed` (on the device, so no host sync
    per step); both are part of the checkpointed state. shard=True: DDP over the process group,
    as fit_autoencoder."""
    if steps < 1:
        raise ValueError(f"diffusion training needs at least 1 step, got {steps}")
    _check_data(latents, "diffusion training data (latents)")
    opt = torch.optim.AdamW(model.model.parameters(), lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    dev_gen = torch.Generator(device=latents.device).manual_seed(seed)
    run = _Run("diffusion", "diffusion_lr", lr, {"model": model}, opt, {"batches": gen, "noise": dev_gen},
               latents, checkpoint, checkpoint_every, resume)

    ddp = _ddp(model.model, len(latents), batch_size, "diffusion") if shard else None

    def loss_at(step: int) -> torch.Tensor:
        idx = _batches(len(latents), batch_size, gen, latents.device)
        x0 = latents if idx is None else latents[idx]
        t = scheduler.sample_timesteps(x0.shape[0], x0.device, dev_gen)
        x_t, noise = scheduler.add_noise(x0, t, generator=dev_gen, seed=seed, seed_offset=step)  # whole batch
        if ddp is None:
            return eps_mse(model(x_t, t), noise)
        a, b = distributed.shard(x0.shape[0])
        return eps_mse(ddp(x_t[a:b], t[a:b]), noise[a:b]) * ((b - a) * distributed.world_size() / x0.shape[0])

    return run.train(model, steps, progress, loss_at, after_update=lambda: model.update(ema_decay))

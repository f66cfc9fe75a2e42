"""The `tasks train` step (GeneratorStep, a base of TaskPDiff): the low-rank parameter autoencoder on
the zoo, then the task-conditioned denoiser and its set encoder on the latents (resumable); and the
trained generator loaded back to make models for any task from its support set."""
from __future__ import annotations

import torch

from ..diffusion.samplers import make_scheduler
from ..io import load_checkpoint, save_tensors
from ..nn import denoiser as dn_lib
from ..nn.lowrank_autoencoder import LowRankAutoencoder
from ..nn.set_encoder import SetEncoder
from ..params import Standardizer
from ..pipeline.train import fit_autoencoder
from .conditional import ConditionedDenoiser, fit_conditional, generate_conditioned
from .family import support
from .parts import TaskParts
from .zoo import Zoo

CHECKPOINT = "generator.ckpt.safetensors"


class GeneratorStep(TaskParts):
    def _build_generator(self, zoo: Zoo):
        c = self.config
        ae = LowRankAutoencoder(zoo.spec.dim, c.rank, c.input_noise, c.latent_noise).to(self.device)
        features = int(torch.Size(self.family.input_shape).numel()) + self.family.num_classes
        net = ConditionedDenoiser(dn_lib.AE_CNN_bottleneck(c.rank, 1, channel_list=self.denoiser_channels()),
                                  self._condition_encoder(features), c.conditioning)
        return ae, dn_lib.EMA(net, c.ema_decay).to(self.device)

    def _condition_encoder(self, features: int) -> torch.nn.Module:
        """What turns a row's condition into the denoiser's embedding: the set encoder of a task's samples."""
        return SetEncoder(features, self.config.encoder_width, self.config.embed_dim)

    def _conditions(self, zoo: Zoo):
        """(key of each zoo row (R,), draw(keys of a batch, generator) -> the batch's conditions) for
        fit_conditional: here the key is the row's task and the condition a fresh support set of it."""
        c = self.config
        sx, sy, counts = self.stacked(self.seen)  # seen tasks only: the zoo's

        def draw_sets(rows, gen):
            return support(sx, sy, counts, rows, c.support, gen, self.family.num_classes)
        return zoo.task.to(self.device), draw_sets

    def train(self, restart: bool = False) -> None:
        """The parameter autoencoder on the zoo, then the conditioned denoiser and set encoder on its latents.
        Resumable: every checkpoint_every steps of the diffusion phase the whole state (the autoencoder too)
        goes to generator.ckpt.safetensors; a later `train` with the same zoo and settings continues from it
        (restart=True: from scratch). The checkpoint is removed once the generator is saved."""
        c = self.config
        zoo, zoo_digest = self.load_zoo()
        std = Standardizer.fit(zoo.spec, zoo.params) if c.standardize else None
        x = (std.transform(zoo.params) if std else zoo.params).to(self.device)
        torch.manual_seed(c.seed)
        ae, model = self._build_generator(zoo)
        resume = None if restart else self._checkpoint(zoo_digest)
        if resume is None:
            self._timed("train_autoencoder", lambda: fit_autoencoder(ae, x, c.ae_steps, c.ae_lr, seed=c.seed,
                                                                     progress=self.progress))
        else:
            tensors, meta = resume
            ae.load_state_dict({k[3:]: v.to(self.device) for k, v in tensors.items() if k.startswith("ae.")})
            resume = ({k: v for k, v in tensors.items() if not k.startswith("ae.")}, meta)
            self.log(f"resuming the conditioned generator's training at step {meta['step']}")
        with torch.no_grad():
            latents = ae.encode(x)
        keys, draw = self._conditions(zoo)

        def checkpoint(tensors, meta):
            ae_state = {f"ae.{k}": v for k, v in ae.state_dict().items()}
            save_tensors(self.run_dir / CHECKPOINT, {**tensors, **ae_state},
                         {**meta, "config": self._fields("generator"), "inputs": {"zoo": zoo_digest},
                          "device": self.device.type})

        losses = self._timed("train_diffusion", lambda: fit_conditional(
            model, latents, keys, draw, make_scheduler("ddpm"), c.diffusion_steps,
            c.diffusion_lr, batch_size=c.diffusion_batch_size, drop=c.cond_drop, seed=c.seed,
            progress=self.progress, checkpoint=checkpoint, checkpoint_every=c.checkpoint_every, resume=resume))
        tensors = {f"ae.{k}": v for k, v in ae.state_dict().items()}
        tensors.update({f"denoiser.{k}": v for k, v in model.state_dict().items()})
        if std is not None:
            tensors.update({f"std.{k}": v for k, v in std.state_dict().items()})
        self._save("generator", tensors, {"diffusion_losses": losses}, {"zoo": zoo_digest})
        (self.run_dir / CHECKPOINT).unlink(missing_ok=True)
        self.log(f"trained the conditioned generator -> {self.path('generator')}")

    def _checkpoint(self, zoo_digest: str | None):
        """The diffusion checkpoint's (tensors, meta) when it was made from this zoo with these settings."""
        path = self.run_dir / CHECKPOINT
        if not path.is_file():
            return None
        state = load_checkpoint(path, self.log)
        if state is None:
            return None
        tensors, meta = state
        if meta.get("config") != self._fields("generator") or meta.get("inputs") != {"zoo": zoo_digest} \
                or meta.get("device") != self.device.type:
            self.log(f"{CHECKPOINT} was made from another zoo or with other settings; training from the start")
            return None
        return tensors, meta

    def load_generator(self):
        zoo, zoo_digest = self.load_zoo()
        tensors, meta, digest = self._load("generator", {"zoo": zoo_digest})
        ae, model = self._build_generator(zoo)
        part = lambda p: {k[len(p):]: v.to(self.device) for k, v in tensors.items() if k.startswith(p)}  # noqa: E731
        ae.load_state_dict(part("ae."))
        model.load_state_dict(part("denoiser."))
        std = Standardizer.from_state_dict(zoo.spec, part("std.")) if self.config.standardize else None
        ae.eval(), model.eval()
        return zoo, ae, model.ema, std, digest

    def embed(self, model: ConditionedDenoiser, tasks) -> torch.Tensor:
        with torch.no_grad():
            return model.embed(self.support_sets(tasks))

    def generate(self, tasks, n: int | None = None, guidance: float | None = None, loaded=None,
                 scheduler=None) -> torch.Tensor:
        """n models per task (default samples_per_task), all tasks in one batch: (len(tasks) * n, D), task-major.
        scheduler: the config's sampler unless given (the sampler frontier tries others)."""
        c = self.config
        n = n or c.samples_per_task
        _, ae, model, std, _ = loaded or self.load_generator()
        emb = self.embed(model, tasks).repeat_interleave(n, 0)
        flat = generate_conditioned(ae, model, scheduler or make_scheduler(c.sampler, c.sample_steps, c.eta),
                                    emb, c.guidance if guidance is None else guidance, seed=c.seed,
                                    device=self.device, memory_budget_bytes=c.memory_budget_mb << 20,
                                    progress=self.progress)
        return std.inverse(flat) if std is not None else flat

"""The `train` step of a p-diff run (FitStep, a base of PDiff): the parameter autoencoder on the
collected checkpoints, then the latent diffusion model on its latents; resumable, and under
torchrun every rank trains (DDP) while rank 0 writes."""
from __future__ import annotations

import torch
from torch import nn

from .. import distributed
from ..diffusion.schedulers import DDPMScheduler
from ..nn import denoiser as dn_lib
from .parts import PDiffParts
from .train import fit_autoencoder, fit_diffusion


class FitStep(PDiffParts):
    def fit(self, only: str | None = None, restart: bool = False) -> tuple[nn.Module, dn_lib.EMA]:
        """Train the autoencoder, then the diffusion model (`only="autoencoder"` / `"diffusion"`: one of them).
        Under torchrun every rank trains (DDP, each batch split over the ranks) and rank 0 writes."""
        if only not in (None, "autoencoder", "diffusion"):
            raise ValueError(f"fit: only must be 'autoencoder' or 'diffusion', not {only!r}")
        pop, pop_digest = self._population()
        std = self.standardizer(pop)
        x = (std.transform(pop.params) if std else pop.params).to(self.device)
        keep_ae = only == "diffusion" or (only is None and not restart and self._autoencoder_is_current(pop_digest))
        if keep_ae:
            if only is None:
                self.log("keeping the trained autoencoder (an interrupted `train` is resumed)")
            ae, _, ae_digest = self._load_autoencoder(pop, pop_digest)
        else:
            ae, ae_digest = self._fit_autoencoder(pop, pop_digest, x, std, restart)
        model = None if only == "autoencoder" else self._fit_diffusion(ae, ae_digest, pop_digest, x, restart)
        distributed.barrier()  # the files are written before any rank reads them
        return ae, model

    def _fit_autoencoder(self, pop, pop_digest, x, std, restart):
        c = self.config
        inputs = {"population": pop_digest}
        torch.manual_seed(c.seed)
        ae = self.build_autoencoder(pop.spec.dim).to(self.device)
        resume = self._checkpoint_state("autoencoder", inputs, restart)
        losses = self._timed("train_autoencoder", lambda: fit_autoencoder(
            ae, x, c.ae_steps, c.ae_lr, c.ae_weight_decay, seed=c.seed, progress=self.progress,
            checkpoint=self._checkpointer("autoencoder", inputs), checkpoint_every=c.checkpoint_every,
            resume=resume, shard=True))
        extra = std.state_dict() if std else {}

        def write() -> str:
            digest = self._save("autoencoder", {**ae.state_dict(), **extra},
                                {"preset": ae.preset, "in_dim": pop.spec.dim, "padded_dim": ae.padded_dim,
                                 "losses": losses}, inputs)
            self.path("autoencoder_ckpt").unlink(missing_ok=True)
            self._bookkeeping("autoencoder")
            return digest
        return ae, distributed.broadcast_json(distributed.on_main(write))  # the digest, on every rank

    def _fit_diffusion(self, ae, ae_digest, pop_digest, x, restart):
        c = self.config
        inputs = {"autoencoder": ae_digest, "population": pop_digest}
        with torch.no_grad():
            latents = ae.eval().encode(x)  # (K, C, L), in [-1, 1] (tanh)
        torch.manual_seed(c.seed + 1)  # its own seed: the same initial denoiser whether or not the AE was retrained
        model = self.build_denoiser(latents[0].numel()).to(self.device)
        resume = self._checkpoint_state("diffusion", inputs, restart)
        losses = self._timed("train_diffusion", lambda: fit_diffusion(
            model, latents, DDPMScheduler(), c.diffusion_steps, c.diffusion_lr, c.diffusion_weight_decay,
            c.diffusion_batch_size, seed=c.seed, progress=self.progress,
            checkpoint=self._checkpointer("diffusion", inputs), checkpoint_every=c.checkpoint_every,
            resume=resume, shard=True))

        def write() -> None:
            self._save("diffusion", model.state_dict(),
                       {"denoiser": c.denoiser, "channels": self.denoiser_channels(),
                        "latent_shape": list(latents.shape[1:]), "losses": losses}, inputs)
            self.path("diffusion_ckpt").unlink(missing_ok=True)
            self._bookkeeping("diffusion")
        distributed.on_main(write)
        return model

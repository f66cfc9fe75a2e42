"""PromptedPDiff: the p-diff pipeline with the latent denoiser conditioned on the checkpoints'
validation accuracy (after G.pt), so `sample` can ask for the accuracy it wants.

    from pdiff_fast import Config
    from pdiff_fast.prompted import PromptedPDiff
    p = PromptedPDiff(Config(recipe="span", prompted=True), "runs/prompted")
    p.run()                      # collect (span), train, sample the calibration sweep, evaluate, report

The steps are PDiff's (same files, same provenance, resumable, torchrun), except:
- collect: recipe "span" (pdiff_fast.prompted.span): checkpoints from ~40% to the base model's
  accuracy, each labelled on a validation split carved out of the training data;
- train: the denoiser is a ConditionedDenoiser (pdiff_fast.tasks.conditional) whose condition is the
  AccuracyEncoder's embedding of the normalised validation accuracy, trained with a share
  `cond_drop` of null prompts (classifier-free guidance). Under torchrun every rank trains the
  same model (no DDP split of the batch);
- sample: one prompt per model (`prompt_accuracy`, default the calibration sweep of
  pdiff_fast.prompted.prompts), sampled with guidance `guidance`; the prompts are saved beside the
  parameters;
- evaluate: pdiff_fast.prompted.calibration: per prompt, the achieved validation and test
  accuracy; the highest prompt honoured; the models of that prompt judged against the originals
  and every baseline (pdiff_fast.evaluation.judge).
"""
from __future__ import annotations

import torch

from .. import distributed
from ..data import carve_validation
from ..diffusion.sample import generate
from ..diffusion.schedulers import DDPMScheduler
from ..evaluation.judge import format_table
from ..nn import denoiser as dn_lib
from ..pipeline.pdiff import PIPELINES, PDiff
from ..tasks.conditional import ConditionedDenoiser, Guided, fit_conditional
from .calibration import calibrate, format_calibration
from .encoder import AccuracyEncoder
from .prompts import check_prompts, default_prompts, normalise, spread


class PromptedPDiff(PDiff):
    PROMPTED = True

    # --- train ---------------------------------------------------------------------------
    def prompt_range(self, pop) -> tuple[float, float]:
        """(lowest, highest) validation accuracy of the population: prompts 0 and 1 after normalising."""
        if pop.val_accuracy is None:
            raise ValueError(f"{self.path('population')}: its checkpoints carry no validation accuracy; "
                             "rerun `pdiff-fast collect` with recipe \"span\"")
        return float(pop.val_accuracy.min()), float(pop.val_accuracy.max())

    def build_prompted(self, latent_numel: int, channels: list[int] | None = None) -> dn_lib.EMA:
        net = self.build_denoiser(latent_numel, channels).model
        return dn_lib.EMA(ConditionedDenoiser(net, AccuracyEncoder(), mode="blocks"), self.config.ema_decay)

    def denoiser_for(self, meta: dict) -> dn_lib.EMA:
        if "prompt_range" not in meta:
            raise ValueError(f"{self.path('diffusion')}: not a prompted diffusion model (no prompt_range in its "
                             "metadata); rerun `pdiff-fast train`")
        return self.build_prompted(int(torch.Size(meta["latent_shape"]).numel()), meta.get("channels"))

    def _fit_diffusion(self, ae, ae_digest, pop_digest, x, restart):
        c = self.config
        pop = self.population()
        lo, hi = self.prompt_range(pop)
        a = normalise(pop.val_accuracy, lo, hi).to(self.device)  # (K, 1)
        inputs = {"autoencoder": ae_digest, "population": pop_digest}
        with torch.no_grad():
            latents = ae.eval().encode(x)
        torch.manual_seed(c.seed + 1)
        model = self.build_prompted(latents[0].numel()).to(self.device)
        resume = self._checkpoint_state("diffusion", inputs, restart)
        losses = self._timed("train_diffusion", lambda: fit_conditional(
            model, latents, torch.arange(len(latents)), lambda rows, gen: a[rows], DDPMScheduler(),
            steps=c.diffusion_steps, lr=c.diffusion_lr, weight_decay=c.diffusion_weight_decay,
            batch_size=c.diffusion_batch_size, drop=c.cond_drop, seed=c.seed, progress=self.progress,
            checkpoint=self._checkpointer("diffusion", inputs), checkpoint_every=c.checkpoint_every, resume=resume))

        def write() -> None:
            self._save("diffusion", model.state_dict(),
                       {"denoiser": c.denoiser, "channels": self.denoiser_channels(),
                        "latent_shape": list(latents.shape[1:]), "losses": losses, "prompt_range": [lo, hi]}, inputs)
            self.path("diffusion_ckpt").unlink(missing_ok=True)
            self._bookkeeping("diffusion")
        distributed.on_main(write)
        return model

    # --- sample --------------------------------------------------------------------------
    def prompts(self, lo: float, hi: float) -> list[float]:
        c = self.config
        if c.prompt_accuracy is None:
            return default_prompts(lo, hi)
        return check_prompts(c.prompt_accuracy, lo, hi, c.prompt_extrapolate)

    def generate_prompted(self, ae, model: dn_lib.EMA, per_model: torch.Tensor, lo: float, hi: float,
                          guidance: float | None = None, seed: int | None = None) -> torch.Tensor:
        """(n, D) parameters (standardised space: the autoencoder's), model i prompted with per_model[i]."""
        c = self.config
        with torch.no_grad():  # not the decorator, the same: mutmut leaves decorated functions unmutated
            net = model.ema.eval()
            emb = net.embed(normalise(per_model, lo, hi).to(self.device))
            guided = Guided(net, c.guidance if guidance is None else guidance)
            return generate(ae, guided, self.scheduler(), len(per_model), device=self.device,
                            seed=c.seed if seed is None else seed, grain=c.sample_grain,
                            memory_budget_bytes=c.memory_budget_mb << 20,
                            cuda_graph=False if c.cuda_graph == "auto" else c.cuda_graph, progress=self.progress,
                            shard=True, cond=emb)

    def sample(self, n: int | None = None) -> torch.Tensor:
        n, digests, (ae, model, std) = self._sample_inputs(n)
        lo, hi = self.prompt_range(self.population())
        per_model = spread(self.prompts(lo, hi), n)
        flat = self._timed("sample", lambda: self.generate_prompted(ae, model, per_model, lo, hi))
        return self._save_generated(flat, std, n, digests, {"prompt": per_model}, {"prompt_range": [lo, hi]})

    # --- evaluate ------------------------------------------------------------------------
    def evaluate(self) -> dict:
        c = self.config
        pop, pop_digest, gen_t, gen_meta, gen_digest = self._generated(("params", "prompt"))
        _, x_val, y_val = carve_validation(self.data, pop.meta.get("val_fraction", c.val_fraction),
                                           pop.meta.get("seed", c.seed))  # the split collect labelled with
        d = self.data.to(self.device)
        report = self._timed("evaluate", lambda: calibrate(
            self.base_model(), pop, gen_t["params"].to(self.device), gen_t["prompt"], x_val.to(self.device),
            y_val.to(self.device), d.x_test, d.y_test, noise_sigmas=c.noise_sigmas, seed=c.seed,
            memory_budget_bytes=c.memory_budget_mb << 20))
        table = format_calibration(report) + "\n\n" + format_table(report)
        return self._write_report(report, table, pop, pop_digest, gen_meta, gen_digest)

    def format_report(self, report: dict) -> str:
        """The calibration table (and calibration.png) before p-diff's tables."""
        from .calibration import plot_calibration

        text = format_calibration(report)
        distributed.on_main(lambda: plot_calibration(report, self.run_dir))
        return text + "\n\n" + format_table(report)


PIPELINES[True] = PromptedPDiff  # what pipeline.pdiff.pipeline_for gives a prompted config (the study's runs)

"""The p-diff pipeline in a few calls; every artifact lands in one run directory.

    from pdiff_fast import PDiff, Config
    p = PDiff(Config(), "runs/demo")
    p.collect()          # train the base model, save K checkpoints of the subset
    p.fit()              # train the autoencoder, then the latent diffusion
    p.sample(200)        # generate 200 parameter sets
    print(p.evaluate())  # accuracy and memorisation table

Each step reads what the previous one wrote, so steps can also run in separate processes
(that is what the `pdiff-fast` CLI does).

The run directory's guarantees (provenance, config.json, checkpoints) are in pdiff_fast/pipeline/run_dir.py.
"""
from __future__ import annotations

import torch

from .. import distributed
from ..diffusion.sample import generate
from ..evaluation.judge import evaluate, format_table
from ..io import load_json, save_json, save_text
from ..params import ParamSpec
from .capacity import check_fits
from .collect import Population
from .fit import FitStep
from .parts import PDiffParts, pick_device  # noqa: F401
from .run_dir import (MADE_BY, STEP_COUNT, STEP_FIELDS, RunDirectory, StaleArtifact, check_report_inputs,  # noqa: F401
                      prepare_run_dir, read_remade_by)
from .span import RECIPES


class PDiff(FitStep):
    """The steps in order: collect, fit (pdiff_fast.pipeline.fit), sample, evaluate, report; `run` does
    them all. The pieces they share (models, data, loading) are PDiffParts' (pdiff_fast.pipeline.parts)."""

    def collect(self) -> Population:
        """Train the base model, save K checkpoints of the subset. Under torchrun rank 0 trains the
        base model, the ranks split the trajectories (pdiff_fast.pipeline.collect), rank 0 writes."""
        c = self.config
        if c.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {c.recipe!r}; choose from {sorted(RECIPES)}")
        torch.manual_seed(c.seed)
        model = self.new_model()
        spec = ParamSpec.from_model(model, c.subset)
        check_fits(f"collect: k={c.k} checkpoints", c.k, spec.dim, self.run_dir, copies=2)
        check_fits(f"sample: {c.num_samples} models", c.num_samples, spec.dim, self.run_dir, copies=3)  # not hours later
        with torch.random.fork_rng(devices=[]):  # leaves the RNG as collection expects it
            ae = self.build_autoencoder(spec.dim)  # a subset it cannot take fails now, not after collection
        padded = f", its input zero padded to {ae.padded_dim} values" if ae.padded_dim != spec.dim else ""
        self.log(f"subset: {spec.dim} values; autoencoder {c.autoencoder!r} -> {ae.preset}{padded}")
        for split in ("train", "test"):
            if not torch.isfinite(getattr(self.data, f"x_{split}")).all():
                raise ValueError(f"dataset {self.data.name!r}: the {split} inputs contain NaN or Inf")
        span = {"val_fraction": c.val_fraction, "span_noise": c.span_noise} if c.recipe == "span" else {}
        pop = self._timed("collect", lambda: RECIPES[c.recipe](
            model, self.data, spec, epochs=c.epochs, k=c.k, lr=c.lr, subset_lr=c.subset_lr,
            batch_size=c.batch_size, seed=c.seed, progress=self.progress, trajectories=c.trajectories, **span))
        pop.meta.update({"dataset": self.data.name, "model": c.model, "model_kwargs": c.model_kwargs,
                         **self._record("population", {})})

        def write() -> None:
            pop.save(self.path("population"))
            self._bookkeeping("population")
        distributed.on_main(write)
        return pop

    def sample(self, n: int | None = None) -> torch.Tensor:
        c = self.config
        n, digests, (ae, model, std) = self._sample_inputs(n)
        flat = self._timed("sample", lambda: generate(
            ae, model.ema, self.scheduler(), n, device=self.device, seed=c.seed, grain=c.sample_grain,
            memory_budget_bytes=c.memory_budget_mb << 20, cuda_graph=c.cuda_graph, progress=self.progress,
            shard=True))
        return self._save_generated(flat, std, n, digests)

    def _sample_inputs(self, n: int | None):
        """(n, digests, (autoencoder, denoiser, standardizer)) for `sample`: the result's size checked
        first, then the trained models loaded (their digests into `digests`)."""
        n = n or self.config.num_samples
        dim = self.subset_dim()
        if dim is not None:  # else load_models names what is missing
            check_fits(f"sample: {n} models", n, dim, self.run_dir, copies=3, device=self.device)
        digests: dict = {}
        return n, digests, self.load_models(digests)

    def _save_generated(self, flat: torch.Tensor, std, n: int, digests: dict, tensors: dict | None = None,
                        meta: dict | None = None) -> torch.Tensor:
        """The sampled parameters back in the population's space, written with `tensors` and `meta` beside them
        (rank 0); returns them."""
        if std is not None:
            flat = std.inverse(flat)

        def write():
            self._save("generated", {"params": flat, **(tensors or {})},
                       {"n": n, "sampler": self.config.sampler, **(meta or {})}, digests, num_samples=n)
            self._bookkeeping("generated")
        distributed.on_main(write)
        return flat

    def _generated(self, required: tuple[str, ...] = ("params",)):
        """(population, its digest, the generated tensors, their metadata, their digest), the generated file
        checked to hold the `required` tensors."""
        pop, pop_digest = self._population()
        gen_t, gen_meta, gen_digest = self._load("generated", {"population": pop_digest})
        missing = [k for k in required if k not in gen_t]
        if missing:
            raise ValueError(f"{self.path('generated')}: not a generated-parameters file of this run (no "
                             f"{', '.join(map(repr, missing))} tensor); rerun `pdiff-fast sample`")
        return pop, pop_digest, gen_t, gen_meta, gen_digest

    def evaluate(self) -> dict:
        c = self.config
        pop, pop_digest, gen_t, gen_meta, gen_digest = self._generated()
        base = self.base_model()
        d = self.data.to(self.device)
        report = self._timed("evaluate", lambda: evaluate(
            base, pop.spec, pop.params.to(self.device), gen_t["params"].to(self.device), d.x_test, d.y_test,
            noise_sigmas=c.noise_sigmas, seed=c.seed, memory_budget_bytes=c.memory_budget_mb << 20, shard=True))
        return self._write_report(report, format_table(report), pop, pop_digest, gen_meta, gen_digest)

    def _write_report(self, report: dict, table: str, pop: Population, pop_digest, gen_meta: dict, gen_digest) -> dict:
        """The report with its provenance (device, timings, input digests, settings), written as report.json
        and `table` as report.md (rank 0)."""
        c = self.config
        report["device"] = str(self.device)
        report["timings"] = dict(self.timings)
        report["inputs"] = {"population": pop_digest, "generated": gen_digest}
        report["settings"] = {"population": pop.meta.get("config"), "generated": gen_meta.get("config"),
                              "evaluate": {"noise_sigmas": c.noise_sigmas, "seed": c.seed}}

        def write() -> None:
            save_json(self.path("report"), report)
            save_text(self.path("table"), table + "\n")
            self._bookkeeping("report", config=False)
        distributed.on_main(write)
        return report

    def report(self) -> str:
        from .report import plot_report

        path = self.path("report")
        report = read_remade_by(lambda: load_json(path), "pdiff-fast evaluate")
        if not isinstance(report, dict) or "per_model" not in report:
            raise ValueError(f"{path}: not a pdiff_fast report (rerun `pdiff-fast evaluate`)")
        check_report_inputs(self, report, "pdiff-fast evaluate")
        try:
            table = self.format_report(report)
            distributed.on_main(lambda: plot_report(report, self.run_dir))
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as exc:  # a hand-edited or foreign report
            raise ValueError(f"{path}: not a report this version can read ({type(exc).__name__}: {exc}); "
                             "rerun `pdiff-fast evaluate`") from None
        return table

    def format_report(self, report: dict) -> str:
        """report.md's text from report.json's contents (a subclass adds its own tables and plots)."""
        return format_table(report)

    def run(self) -> dict:
        self.collect()
        self.fit()
        self.sample()
        report = self.evaluate()
        self.report()
        return report


# The pipeline class for a config, by its `prompted` field. A higher layer registers its own
# (pdiff_fast.prompted adds PromptedPDiff when the package is imported): the study runs whichever
# a config needs without importing upwards.
PIPELINES: dict[bool, type[PDiff]] = {False: PDiff}


def pipeline_for(config) -> type[PDiff]:
    if config.prompted not in PIPELINES:
        raise ValueError("a prompted config needs pdiff_fast.prompted.PromptedPDiff: import pdiff_fast.prompted")
    return PIPELINES[config.prompted]

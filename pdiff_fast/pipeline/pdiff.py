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
from ..io import load_json, read_digest, save_json, save_text
from ..params import ParamSpec
from .collect import RECIPES, Population
from .fit import FitStep
from .parts import PDiffParts, pick_device  # noqa: F401
from .run_dir import MADE_BY, STEP_COUNT, STEP_FIELDS, RunDirectory, StaleArtifact, prepare_run_dir  # noqa: F401


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
        with torch.random.fork_rng(devices=[]):  # leaves the RNG as collection expects it
            ae = self.build_autoencoder(spec.dim)  # a subset it cannot take fails now, not after collection
        padded = f", its input zero padded to {ae.padded_dim} values" if ae.padded_dim != spec.dim else ""
        self.log(f"subset: {spec.dim} values; autoencoder {c.autoencoder!r} -> {ae.preset}{padded}")
        for split in ("train", "test"):
            if not torch.isfinite(getattr(self.data, f"x_{split}")).all():
                raise ValueError(f"dataset {self.data.name!r}: the {split} inputs contain NaN or Inf")
        pop = self._timed("collect", lambda: RECIPES[c.recipe](
            model, self.data, spec, epochs=c.epochs, k=c.k, lr=c.lr, subset_lr=c.subset_lr,
            batch_size=c.batch_size, seed=c.seed, progress=self.progress, trajectories=c.trajectories))
        pop.meta.update({"dataset": self.data.name, "model": c.model, "model_kwargs": c.model_kwargs,
                         **self._record("population", {})})

        def write() -> None:
            pop.save(self.path("population"))
            self._update_config_json("population")
        distributed.on_main(write)
        return pop

    def sample(self, n: int | None = None) -> torch.Tensor:
        c = self.config
        n = n or c.num_samples
        digests: dict = {}
        ae, model, std = self.load_models(digests)
        flat = self._timed("sample", lambda: generate(
            ae, model.ema, self.scheduler(), n, device=self.device, seed=c.seed, grain=c.sample_grain,
            memory_budget_bytes=c.memory_budget_mb << 20, cuda_graph=c.cuda_graph, progress=self.progress,
            shard=True))
        if std is not None:
            flat = std.inverse(flat)

        def write():
            self._save("generated", {"params": flat}, {"n": n, "sampler": c.sampler}, digests, num_samples=n)
            self._update_config_json("generated")
        distributed.on_main(write)
        return flat

    def evaluate(self) -> dict:
        c = self.config
        pop, pop_digest = self._population()
        gen_t, gen_meta, gen_digest = self._load("generated", {"population": pop_digest})
        if "params" not in gen_t:
            raise ValueError(f"{self.path('generated')}: not a generated-parameters file (no 'params' tensor)")
        base = self.base_model()
        d = self.data.to(self.device)
        report = self._timed("evaluate", lambda: evaluate(
            base, pop.spec, pop.params.to(self.device), gen_t["params"].to(self.device), d.x_test, d.y_test,
            noise_sigmas=c.noise_sigmas, seed=c.seed, memory_budget_bytes=c.memory_budget_mb << 20, shard=True))
        report["device"] = str(self.device)
        report["timings"] = dict(self.timings)
        report["inputs"] = {"population": pop_digest, "generated": gen_digest}
        report["settings"] = {"population": pop.meta.get("config"), "generated": gen_meta.get("config"),
                              "evaluate": {"noise_sigmas": c.noise_sigmas, "seed": c.seed}}
        distributed.on_main(lambda: (save_json(self.path("report"), report),
                                     save_text(self.path("table"), format_table(report) + "\n")))
        return report

    def report(self) -> str:
        from .report import plot_report

        report = load_json(self.path("report"))
        if not isinstance(report, dict) or "per_model" not in report:
            raise ValueError(f"{self.path('report')}: not a pdiff_fast report (rerun `pdiff-fast evaluate`)")
        if not self.allow_stale:
            for name, recorded in report.get("inputs", {}).items():
                now = read_digest(self.path(name))
                if now is not None and recorded != now:
                    raise StaleArtifact(f"{self.path('report').name} is stale: {self.path(name).name} changed since "
                                        "it was evaluated; rerun `pdiff-fast evaluate` (or pass --allow-stale)")
        distributed.on_main(lambda: plot_report(report, self.run_dir))
        return format_table(report)

    def run(self) -> dict:
        self.collect()
        self.fit()
        self.sample()
        report = self.evaluate()
        self.report()
        return report

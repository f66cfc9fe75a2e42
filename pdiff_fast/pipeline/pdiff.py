"""The p-diff pipeline in a few calls; every artifact lands in one run directory.

    from pdiff_fast import PDiff, Config
    p = PDiff(Config(), "runs/demo")
    p.collect()          # train the base model, save K checkpoints of the subset
    p.fit()              # train the autoencoder, then the latent diffusion
    p.sample(200)        # generate 200 parameter sets
    print(p.evaluate())  # accuracy and memorisation table

Each step reads what the previous one wrote, so steps can also run in separate processes
(that is what the `pdiff-fast` CLI does).

The run directory's guarantees (provenance, config.json, checkpoints) are in pdiff_fast/run_dir.py.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from . import data as data_lib
from . import denoiser as dn_lib
from . import distributed
from .autoencoder_choice import build_autoencoder, choose_preset
from .collect import RECIPES, Population, rebuild_base
from .config import Config
from .diffusion import make_scheduler, DDPMScheduler
from .evaluate import evaluate, format_table
from .io import load_json, read_digest, read_meta, save_json, save_text
from .models import build_model
from .params import ParamSpec, Standardizer
from .run_dir import MADE_BY, STEP_COUNT, STEP_FIELDS, RunDirectory, StaleArtifact, prepare_run_dir  # noqa: F401
from .sample import generate
from .train import fit_autoencoder, fit_diffusion

def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class PDiff(RunDirectory):
    def __init__(self, config: Config | None = None, run_dir: str | Path = "runs/default",
                 model: nn.Module | None = None, data: data_lib.TensorData | None = None, progress: bool = True,
                 allow_stale: bool = False, log=print):
        self.config = (config or Config()).validate()
        self.device = distributed.init(pick_device(self.config.device))  # under torchrun: join its group
        self.run_dir = prepare_run_dir(Path(run_dir))
        main = distributed.is_main()  # progress and logs from rank 0 only
        self.progress, self.allow_stale = progress and main, allow_stale
        self.log = log if (log and main) else (lambda *a: None)
        self._user_model, self._data = model, data
        self.timings: dict[str, float] = {}
        if self.device.type == "cpu":
            from .population import warm_allocator

            warm_allocator()  # reuse freed activations instead of page-faulting them in (~30% faster training)

    @classmethod
    def from_run_dir(cls, run_dir, progress: bool = True, **overrides) -> "PDiff":
        cfg = Config.from_file(Path(run_dir) / cls.FILES["config"]).replace(**overrides)
        return cls(cfg, run_dir, progress=progress)

    # --- pieces -------------------------------------------------------------------------
    @property
    def data(self) -> data_lib.TensorData:
        if self._data is None:
            self._data = data_lib.load_dataset(self.config.dataset)
        return self._data

    def new_model(self) -> nn.Module:
        if self._user_model is not None:
            return copy.deepcopy(self._user_model)
        torch.manual_seed(self.config.seed)
        return build_model(self.config.model, self.data.input_shape, self.data.num_classes, **self.config.model_kwargs)

    def _population(self) -> tuple[Population, str | None]:
        pop = Population.load(self.path("population"))
        self._check_settings("population", pop.meta)
        return pop, read_digest(self.path("population"))

    def population(self) -> Population:
        return self._population()[0]

    def base_model(self) -> nn.Module:
        return rebuild_base(self.new_model(), self.population()).to(self.device)

    def standardizer(self, pop: Population) -> Standardizer | None:
        if not self.config.standardize:
            return None
        return Standardizer.fit(pop.spec, pop.params)

    def build_autoencoder(self, in_dim: int) -> nn.Module:
        """The configured preset for D = in_dim values (`auto` and padding: pdiff_fast.autoencoder_choice)."""
        c = self.config
        return build_autoencoder(c.autoencoder, in_dim, c.input_noise, c.latent_noise)

    def autoencoder_preset(self) -> str:
        """The preset the config's `autoencoder` stands for at this run's D (read from the population)."""
        meta = read_meta(self.path("population"))
        if meta is None or "spec" not in meta[0]:
            return self.config.autoencoder
        return choose_preset(self.config.autoencoder, ParamSpec.from_dict(meta[0]["spec"]).dim)

    def denoiser_channels(self) -> list[int]:
        if self.config.denoiser_channels is not None:
            return list(self.config.denoiser_channels)
        return [64, 128, 256, 512] if self.device.type == "cuda" else [16, 32, 64, 128]

    def build_denoiser(self, latent_numel: int, channels: list[int] | None = None) -> dn_lib.EMA:
        c = self.config
        channels = channels or self.denoiser_channels()
        if c.denoiser not in dn_lib.DENOISERS:
            raise ValueError(f"unknown denoiser {c.denoiser!r}; choose from {sorted(dn_lib.DENOISERS)}")
        denoiser_class = dn_lib.DENOISERS[c.denoiser]
        # The constructors keep the reference's argument names: ODUnet takes encoder and decoder
        # widths (its decoder mirrors the encoder), AE_CNN_bottleneck one list.
        if denoiser_class is dn_lib.ODUnet:
            widths = {"enc_channel_list": channels, "dec_channel_list": channels[::-1]}
        else:
            widths = {"channel_list": channels}
        net = denoiser_class(latent_numel, 1, shared_timestep=c.shared_timestep, **widths)
        return dn_lib.EMA(net, c.ema_decay)

    def scheduler(self) -> DDPMScheduler:
        return make_scheduler(self.config.sampler, self.config.sample_steps, self.config.eta)

    # --- steps --------------------------------------------------------------------------
    def collect(self) -> Population:
        """Train the base model, save K checkpoints of the subset. Under torchrun rank 0 trains the
        base model, the ranks split the trajectories (pdiff_fast.collect), rank 0 writes."""
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
            self._update_config_json("autoencoder")
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
            self._update_config_json("diffusion")
        distributed.on_main(write)
        return model

    def _load_autoencoder(self, pop, pop_digest):
        ae_sd, meta, digest = self._load("autoencoder", {"population": pop_digest})
        self._check_settings("autoencoder", meta)
        std = Standardizer.from_state_dict(pop.spec, ae_sd) if "standardizer.mean" in ae_sd else None
        ae = self.build_autoencoder(pop.spec.dim)
        try:
            ae.load_state_dict({k: v for k, v in ae_sd.items() if not k.startswith("standardizer.")}, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{self.path('autoencoder')}: not an autoencoder of this run "
                             f"({str(exc).splitlines()[0]})") from exc
        return ae.to(self.device).eval(), std, digest

    def load_models(self, _digests: dict | None = None):
        pop, pop_digest = self._population()
        ae, std, ae_digest = self._load_autoencoder(pop, pop_digest)
        dm_sd, dm_meta, dm_digest = self._load("diffusion", {"population": pop_digest, "autoencoder": ae_digest})
        self._check_settings("diffusion", dm_meta)
        if "latent_shape" not in dm_meta:
            raise ValueError(f"{self.path('diffusion')}: not a diffusion model file (no latent_shape in its metadata)")
        model = self.build_denoiser(int(torch.Size(dm_meta["latent_shape"]).numel()), dm_meta.get("channels"))
        try:
            model.load_state_dict(dm_sd, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{self.path('diffusion')}: not a diffusion model of this run "
                             f"({str(exc).splitlines()[0]})") from exc
        if _digests is not None:
            _digests.update({"population": pop_digest, "autoencoder": ae_digest, "diffusion": dm_digest})
        return ae, model.to(self.device).eval(), std

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

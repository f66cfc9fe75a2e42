"""The p-diff pipeline in a few calls; every artifact lands in one run directory.

    from pdiff_fast import PDiff, Config
    p = PDiff(Config(), "runs/demo")
    p.collect()          # train the base model, save K checkpoints of the subset
    p.fit()              # train the autoencoder, then the latent diffusion
    p.sample(200)        # generate 200 parameter sets
    print(p.evaluate())  # accuracy and memorisation table

Each step reads what the previous one wrote, so steps can also run in separate processes
(that is what the `pdiff-fast` CLI does).

Trust in the run directory:
- Provenance. Each artifact records the config fields its step used (`config` in its metadata)
  and the digests of the artifacts it was made from (`inputs`). A step checks that the files it
  reads belong together and were made with the settings it is given, and refuses otherwise,
  naming the stale file and the step to rerun (`allow_stale=True` / `--allow-stale` overrides).
- config.json describes what is on disk: `collect` writes it, `train` and `sample` update their
  own fields after their artifacts are saved; `evaluate` and `report` never change it.
- Checkpoints. Training saves resumable state (`autoencoder.ckpt.safetensors`,
  `diffusion.ckpt.safetensors`) every `checkpoint_every` steps; `fit()` resumes from a
  checkpoint made from the same inputs and settings, to the same result as an uninterrupted
  run (bitwise on CPU), unless `restart=True`. The autoencoder is saved as soon as it is
  trained; if the diffusion checkpoint was made from it, it is kept and only diffusion resumes.
"""
from __future__ import annotations

import copy
import os
import time
from pathlib import Path

import torch
from torch import nn

from . import autoencoder as ae_lib
from . import data as data_lib
from . import denoiser as dn_lib
from .collect import RECIPES, Population, rebuild_base
from .config import Config, ConfigError, read_config_file
from .diffusion import make_scheduler, DDPMScheduler
from .evaluate import evaluate, format_table
from .io import (clean_stale_temporaries, load_artifact, load_json, read_digest, read_meta, save_json,
                 save_tensors, save_text)
from .models import build_model
from .params import ParamSpec, Standardizer
from .sample import generate
from .train import fit_autoencoder, fit_diffusion

# The config fields each artifact depends on (besides the seed, which every step takes).
STEP_FIELDS = {
    "population": ("dataset", "model", "model_kwargs", "subset", "recipe", "epochs", "k", "lr", "subset_lr",
                   "batch_size"),
    "autoencoder": ("standardize", "autoencoder", "input_noise", "latent_noise", "ae_steps", "ae_lr",
                    "ae_weight_decay"),
    "diffusion": ("denoiser", "denoiser_channels", "shared_timestep", "diffusion_steps", "diffusion_lr",
                  "diffusion_weight_decay", "diffusion_batch_size", "ema_decay"),
    "generated": ("sampler", "sample_steps", "eta", "num_samples"),
}
MADE_BY = {"population": "collect", "autoencoder": "train", "diffusion": "train", "generated": "sample",
           "report": "evaluate"}
STEP_COUNT = {"autoencoder": "ae_steps", "diffusion": "diffusion_steps"}  # may grow on resume


class StaleArtifact(ValueError):
    """Files in the run directory that do not belong together."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare_run_dir(run_dir: Path) -> Path:
    """Make the run directory (or check the one there) and clear temporaries a killed write left."""
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"{run_dir}: the run directory is a file, not a directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not os.access(run_dir, os.W_OK | os.X_OK):
        raise PermissionError(f"{run_dir}: the run directory is not writable")
    clean_stale_temporaries(run_dir)
    return run_dir


class PDiff:
    FILES = {
        "config": "config.json", "population": "population.safetensors", "autoencoder": "autoencoder.safetensors",
        "diffusion": "diffusion.safetensors", "generated": "generated.safetensors", "report": "report.json",
        "table": "report.md", "timings": "timings.json",
        "autoencoder_ckpt": "autoencoder.ckpt.safetensors", "diffusion_ckpt": "diffusion.ckpt.safetensors",
    }

    def __init__(self, config: Config | None = None, run_dir: str | Path = "runs/default",
                 model: nn.Module | None = None, data: data_lib.TensorData | None = None, progress: bool = True,
                 allow_stale: bool = False, log=print):
        self.config = (config or Config()).validate()
        self.run_dir = prepare_run_dir(Path(run_dir))
        self.device = pick_device(self.config.device)
        self.progress, self.allow_stale, self.log = progress, allow_stale, log or (lambda *a: None)
        self._user_model, self._data = model, data
        self.timings: dict[str, float] = {}
        if self.device.type == "cpu":
            from .population import warm_allocator

            warm_allocator()  # reuse freed activations instead of page-faulting them in (~30% faster training)

    @classmethod
    def from_run_dir(cls, run_dir, progress: bool = True, **overrides) -> "PDiff":
        cfg = Config.from_file(Path(run_dir) / cls.FILES["config"]).replace(**overrides)
        return cls(cfg, run_dir, progress=progress)

    def path(self, what: str) -> Path:
        return self.run_dir / self.FILES[what]

    # --- provenance -----------------------------------------------------------------------
    def _fields(self, artifact: str, **actual) -> dict:
        cfg = {**self.config.to_dict(), **actual}
        rec = {f: cfg[f] for f in STEP_FIELDS[artifact]}
        if artifact == "diffusion":
            rec["denoiser_channels"] = self.denoiser_channels()  # the resolved widths
        rec["seed"] = cfg["seed"]
        return rec

    def _record(self, artifact: str, inputs: dict[str, str], **actual) -> dict:
        return {"config": self._fields(artifact, **actual), "inputs": inputs}

    def _check_settings(self, artifact: str, meta: dict) -> None:
        """The artifact was made with the settings of this config (seed aside: a new seed is a new draw)."""
        recorded = meta.get("config")
        if recorded is None or self.allow_stale:
            return
        mine = self._fields(artifact)
        for f in STEP_FIELDS[artifact]:
            if f in recorded and recorded[f] != mine[f]:
                raise StaleArtifact(
                    f"{self.path(artifact).name} was made with {f}={recorded[f]!r} but the config says {f}={mine[f]!r}: "
                    f"rerun `pdiff-fast {MADE_BY[artifact]}` to apply it, or leave {f} unchanged")

    def _check_inputs(self, artifact: str, meta: dict, digests: dict[str, str | None]) -> None:
        """Every input recorded by `artifact` that this step also reads is the file on disk now."""
        if self.allow_stale:
            return
        for parent, recorded in meta.get("inputs", {}).items():
            if parent in digests and digests[parent] is not None and recorded != digests[parent]:
                raise StaleArtifact(
                    f"{self.path(artifact).name} is stale: it was made from another {self.path(parent).name} than the "
                    f"one in {self.run_dir}; rerun `pdiff-fast {MADE_BY[artifact]}` (or pass --allow-stale)")

    def _load(self, artifact: str, digests: dict[str, str | None]) -> tuple[dict, dict, str | None]:
        tensors, meta, digest = load_artifact(self.path(artifact))
        self._check_inputs(artifact, meta, digests)
        return tensors, meta, digest

    def _save(self, artifact: str, tensors: dict, meta: dict, inputs: dict[str, str], **actual) -> str:
        return save_tensors(self.path(artifact), tensors, {**meta, **self._record(artifact, inputs, **actual)})

    def _update_config_json(self, artifact: str) -> None:
        """config.json follows what is on disk: after a step saved `artifact`, its fields go in."""
        path = self.path("config")
        if artifact == "population" or not path.is_file():
            save_json(path, self.config.to_dict())
            return
        try:
            on_disk = read_config_file(path)
        except ConfigError:
            on_disk = {}
        cfg = self.config.to_dict()
        on_disk.update({f: cfg[f] for f in STEP_FIELDS[artifact]})
        save_json(path, {**cfg, **on_disk})

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

    def _timed(self, name, fn):
        start = time.perf_counter()
        out = fn()
        self.timings[name] = time.perf_counter() - start
        path = self.path("timings")
        try:
            old = load_json(path) if path.is_file() else {}
        except ValueError:
            old = {}
        save_json(path, {**old, **self.timings})
        return out

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

    def build_autoencoder(self, in_dim: int) -> ae_lib.ODEncoder2Decoder:
        if self.config.autoencoder not in ae_lib.PRESETS:
            raise ValueError(f"unknown autoencoder preset {self.config.autoencoder!r}; choose from {sorted(ae_lib.PRESETS)}")
        return ae_lib.PRESETS[self.config.autoencoder](in_dim, self.config.input_noise, self.config.latent_noise)

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
        c = self.config
        if c.recipe not in RECIPES:
            raise ValueError(f"unknown recipe {c.recipe!r}; choose from {sorted(RECIPES)}")
        torch.manual_seed(c.seed)
        model = self.new_model()
        spec = ParamSpec.from_model(model, c.subset)
        with torch.random.fork_rng(devices=[]):  # leaves the RNG as collection expects it
            self.build_autoencoder(spec.dim)  # a subset the autoencoder cannot take fails now, not after collection
        for split in ("train", "test"):
            if not torch.isfinite(getattr(self.data, f"x_{split}")).all():
                raise ValueError(f"dataset {self.data.name!r}: the {split} inputs contain NaN or Inf")
        pop = self._timed("collect", lambda: RECIPES[c.recipe](
            model, self.data, spec, epochs=c.epochs, k=c.k, lr=c.lr, subset_lr=c.subset_lr,
            batch_size=c.batch_size, seed=c.seed, progress=self.progress))
        pop.meta.update({"dataset": self.data.name, "model": c.model, "model_kwargs": c.model_kwargs,
                         **self._record("population", {})})
        pop.save(self.path("population"))
        self._update_config_json("population")
        return pop

    def _checkpoint_state(self, artifact: str, inputs: dict, restart: bool):
        """A compatible checkpoint's (tensors, meta), or None (and why, in the log)."""
        path = self.path(f"{artifact}_ckpt")
        if restart or not path.is_file():
            return None
        try:
            meta, _ = read_meta(path)  # the header decides; the tensors are read only to resume
        except ValueError as exc:
            self.log(f"ignoring an unreadable checkpoint ({exc})")
            return None
        mine = self._fields(artifact)
        rec = meta.get("config", {})
        steps = STEP_COUNT[artifact]
        same = {k: v for k, v in rec.items() if k != steps} == {k: v for k, v in mine.items() if k != steps}
        if not same or meta.get("inputs") != inputs or meta.get("device") != self.device.type \
                or meta.get("step", 0) > mine[steps]:
            self.log(f"{path.name} was made from other inputs or settings; training {artifact} from the start")
            return None
        try:
            tensors, meta, _ = load_artifact(path)
        except ValueError as exc:
            self.log(f"ignoring an unreadable checkpoint ({exc})")
            return None
        self.log(f"resuming {artifact} training from step {meta['step']} ({path.name})")
        return tensors, meta

    def _checkpointer(self, artifact: str, inputs: dict):
        def save(tensors, meta):
            save_tensors(self.path(f"{artifact}_ckpt"), tensors,
                         {**meta, **self._record(artifact, inputs), "device": self.device.type})
        return save

    def _autoencoder_is_current(self, pop_digest) -> bool:
        """The autoencoder on disk was trained from this population with these settings, and the
        diffusion checkpoint was made from it (an interrupted `train`)."""
        try:
            ae, ckpt = read_meta(self.path("autoencoder")), read_meta(self.path("diffusion_ckpt"))
        except ValueError:
            return False
        if ae is None or ckpt is None:
            return False
        (ae_meta, ae_digest), (ck_meta, _) = ae, ckpt
        return (ae_meta.get("inputs", {}).get("population") == pop_digest
                and ae_meta.get("config") == self._fields("autoencoder")
                and ck_meta.get("inputs", {}).get("autoencoder") == ae_digest)

    def fit(self, only: str | None = None, restart: bool = False) -> tuple[ae_lib.ODEncoder2Decoder, dn_lib.EMA]:
        """Train the autoencoder, then the diffusion model (`only="autoencoder"` / `"diffusion"`: one of them)."""
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
        if only == "autoencoder":
            return ae, None
        model = self._fit_diffusion(ae, ae_digest, pop_digest, x, restart)
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
            resume=resume))
        extra = std.state_dict() if std else {}
        digest = self._save("autoencoder", {**ae.state_dict(), **extra},
                            {"preset": c.autoencoder, "in_dim": pop.spec.dim, "losses": losses}, inputs)
        self.path("autoencoder_ckpt").unlink(missing_ok=True)
        self._update_config_json("autoencoder")
        return ae, digest

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
            resume=resume))
        self._save("diffusion", model.state_dict(),
                   {"denoiser": c.denoiser, "channels": self.denoiser_channels(),
                    "latent_shape": list(latents.shape[1:]), "losses": losses}, inputs)
        self.path("diffusion_ckpt").unlink(missing_ok=True)
        self._update_config_json("diffusion")
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
            ae, model.ema, self.scheduler(), n, device=self.device, seed=c.seed,
            memory_budget_bytes=c.memory_budget_mb << 20, cuda_graph=c.cuda_graph, progress=self.progress))
        if std is not None:
            flat = std.inverse(flat)
        self._save("generated", {"params": flat}, {"n": n, "sampler": c.sampler}, digests, num_samples=n)
        self._update_config_json("generated")
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
            noise_sigmas=c.noise_sigmas, seed=c.seed, memory_budget_bytes=c.memory_budget_mb << 20))
        report["device"] = str(self.device)
        report["timings"] = dict(self.timings)
        report["inputs"] = {"population": pop_digest, "generated": gen_digest}
        report["settings"] = {"population": pop.meta.get("config"), "generated": gen_meta.get("config"),
                              "evaluate": {"noise_sigmas": c.noise_sigmas, "seed": c.seed}}
        save_json(self.path("report"), report)
        save_text(self.path("table"), format_table(report) + "\n")
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
        plot_report(report, self.run_dir)
        return format_table(report)

    def run(self) -> dict:
        self.collect()
        self.fit()
        self.sample()
        report = self.evaluate()
        self.report()
        return report

"""The p-diff pipeline in a few calls; every artifact lands in one run directory.

    from pdiff_fast import PDiff, Config
    p = PDiff(Config(), "runs/demo")
    p.collect()          # train the base model, save K checkpoints of the subset
    p.fit()              # train the autoencoder, then the latent diffusion
    p.sample(200)        # generate 200 parameter sets
    print(p.evaluate())  # accuracy and memorisation table

Each step reads what the previous one wrote, so steps can also run in separate processes
(that is what the `pdiff-fast` CLI does).
"""
from __future__ import annotations

import copy
import time
from pathlib import Path

import torch
from torch import nn

from . import autoencoder as ae_lib
from . import data as data_lib
from . import denoiser as dn_lib
from .collect import RECIPES, Population, rebuild_base
from .config import Config
from .diffusion import make_scheduler, DDPMScheduler
from .evaluate import evaluate, format_table
from .io import load_json, load_tensors, save_json, save_tensors
from .models import build_model
from .params import ParamSpec, Standardizer
from .sample import generate
from .train import fit_autoencoder, fit_diffusion


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class PDiff:
    FILES = {
        "config": "config.json", "population": "population.safetensors", "autoencoder": "autoencoder.safetensors",
        "diffusion": "diffusion.safetensors", "generated": "generated.safetensors", "report": "report.json",
        "table": "report.md", "timings": "timings.json",
    }

    def __init__(self, config: Config | None = None, run_dir: str | Path = "runs/default",
                 model: nn.Module | None = None, data: data_lib.TensorData | None = None, progress: bool = True):
        self.config = config or Config()
        self.run_dir = Path(run_dir)
        self.device = pick_device(self.config.device)
        self.progress = progress
        self._user_model, self._data = model, data
        self.timings: dict[str, float] = {}
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_json(self.path("config"), self.config.to_dict())
        if self.device.type == "cpu":
            from .population import warm_allocator

            warm_allocator()  # reuse freed activations instead of page-faulting them in (~30% faster training)

    @classmethod
    def from_run_dir(cls, run_dir, progress: bool = True, **overrides) -> "PDiff":
        cfg = Config.from_file(Path(run_dir) / cls.FILES["config"]).replace(**overrides)
        return cls(cfg, run_dir, progress=progress)

    def path(self, what: str) -> Path:
        return self.run_dir / self.FILES[what]

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
        old = load_json(path) if path.is_file() else {}
        save_json(path, {**old, **self.timings})
        return out

    def population(self) -> Population:
        return Population.load(self.path("population"))

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
        if c.denoiser == "AE_CNN_bottleneck":
            net = dn_lib.AE_CNN_bottleneck(latent_numel, 1, shared_timestep=c.shared_timestep,
                                           channel_list=channels)
        elif c.denoiser == "ODUnet":
            net = dn_lib.ODUnet(latent_numel, 1, enc_channel_list=channels, dec_channel_list=channels[::-1],
                                shared_timestep=c.shared_timestep)
        else:
            raise ValueError(f"unknown denoiser {c.denoiser!r}; choose from {sorted(dn_lib.DENOISERS)}")
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
        pop = self._timed("collect", lambda: RECIPES[c.recipe](
            model, self.data, spec, epochs=c.epochs, k=c.k, lr=c.lr, subset_lr=c.subset_lr,
            batch_size=c.batch_size, seed=c.seed, progress=self.progress))
        pop.meta.update({"dataset": self.data.name, "model": c.model, "model_kwargs": c.model_kwargs})
        pop.save(self.path("population"))
        return pop

    def fit(self) -> tuple[ae_lib.ODEncoder2Decoder, dn_lib.EMA]:
        c = self.config
        pop = self.population()
        std = self.standardizer(pop)
        x = (std.transform(pop.params) if std else pop.params).to(self.device)
        torch.manual_seed(c.seed)
        ae = self.build_autoencoder(pop.spec.dim).to(self.device)
        ae_losses = self._timed("train_autoencoder", lambda: fit_autoencoder(
            ae, x, c.ae_steps, c.ae_lr, c.ae_weight_decay, seed=c.seed, progress=self.progress))
        with torch.no_grad():
            latents = ae.encode(x)  # (K, C, L), in [-1, 1] (tanh)
        model = self.build_denoiser(latents[0].numel()).to(self.device)
        dm_losses = self._timed("train_diffusion", lambda: fit_diffusion(
            model, latents, DDPMScheduler(), c.diffusion_steps, c.diffusion_lr, c.diffusion_weight_decay,
            c.diffusion_batch_size, seed=c.seed, progress=self.progress))
        extra = std.state_dict() if std else {}
        save_tensors(self.path("autoencoder"), {**ae.state_dict(), **extra},
                     {"preset": c.autoencoder, "in_dim": pop.spec.dim, "losses": ae_losses})
        save_tensors(self.path("diffusion"), model.state_dict(),
                     {"denoiser": c.denoiser, "channels": self.denoiser_channels(), "latent_shape": list(latents.shape[1:]),
                      "losses": dm_losses})
        return ae, model

    def load_models(self):
        pop = self.population()
        ae_sd, _ = load_tensors(self.path("autoencoder"))
        std = Standardizer.from_state_dict(pop.spec, ae_sd) if "standardizer.mean" in ae_sd else None
        ae = self.build_autoencoder(pop.spec.dim)
        ae.load_state_dict({k: v for k, v in ae_sd.items() if not k.startswith("standardizer.")}, strict=True)
        dm_sd, dm_meta = load_tensors(self.path("diffusion"))
        model = self.build_denoiser(int(torch.Size(dm_meta["latent_shape"]).numel()), dm_meta.get("channels"))
        model.load_state_dict(dm_sd, strict=True)
        return ae.to(self.device).eval(), model.to(self.device).eval(), std

    def sample(self, n: int | None = None) -> torch.Tensor:
        c = self.config
        n = n or c.num_samples
        ae, model, std = self.load_models()
        flat = self._timed("sample", lambda: generate(
            ae, model.ema, self.scheduler(), n, device=self.device, seed=c.seed,
            memory_budget_bytes=c.memory_budget_mb << 20, cuda_graph=c.cuda_graph, progress=self.progress))
        if std is not None:
            flat = std.inverse(flat)
        save_tensors(self.path("generated"), {"params": flat}, {"n": n, "sampler": c.sampler})
        return flat

    def evaluate(self) -> dict:
        c = self.config
        pop = self.population()
        gen_t, _ = load_tensors(self.path("generated"))
        base = self.base_model()
        d = self.data.to(self.device)
        report = self._timed("evaluate", lambda: evaluate(
            base, pop.spec, pop.params.to(self.device), gen_t["params"].to(self.device), d.x_test, d.y_test,
            noise_sigmas=c.noise_sigmas, seed=c.seed, memory_budget_bytes=c.memory_budget_mb << 20))
        report["device"] = str(self.device)
        report["timings"] = dict(self.timings)
        save_json(self.path("report"), report)
        (self.run_dir / self.FILES["table"]).write_text(format_table(report) + "\n")
        return report

    def report(self) -> str:
        from .report import plot_report

        report = load_json(self.path("report"))
        plot_report(report, self.run_dir)
        return format_table(report)

    def run(self) -> dict:
        self.collect()
        self.fit()
        self.sample()
        report = self.evaluate()
        self.report()
        return report

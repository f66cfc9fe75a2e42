"""The pieces every step of a p-diff run is built from (PDiffParts, the base of PDiff): the config,
the device, the dataset, the base model, the autoencoder and denoiser the config names, and the
trained models loaded back from the run directory (pdiff_fast.pipeline.run_dir)."""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from .. import data as data_lib
from .. import distributed
from ..config import Config
from ..diffusion.samplers import make_scheduler
from ..diffusion.schedulers import DDPMScheduler
from ..io import read_digest, read_meta
from ..nn import denoiser as dn_lib
from ..nn.autoencoder_choice import build_autoencoder, choose_preset
from ..nn.models import build_model
from ..params import ParamSpec, Standardizer
from .collect import Population, rebuild_base
from .run_dir import RunDirectory, prepare_run_dir


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class PDiffParts(RunDirectory):
    """What the steps share; the steps themselves are PDiff's (pdiff_fast.pipeline.pdiff)."""
    PROMPTED = False  # a config with prompted=true needs pdiff_fast.prompted.PromptedPDiff

    def __init__(self, config: Config | None = None, run_dir: str | Path = "runs/default",
                 model: nn.Module | None = None, data: data_lib.TensorData | None = None, progress: bool = True,
                 allow_stale: bool = False, log=print):
        self.config = (config or Config()).validate()
        if self.config.prompted != self.PROMPTED:
            raise ValueError(f"config prompted={str(self.config.prompted).lower()} needs "
                             f"{'pdiff_fast.prompted.PromptedPDiff' if self.config.prompted else 'pdiff_fast.PDiff'}, "
                             f"not {type(self).__name__}")
        self.device = distributed.init(pick_device(self.config.device))  # under torchrun: join its group
        self.run_dir = prepare_run_dir(Path(run_dir))
        main = distributed.is_main()  # progress and logs from rank 0 only
        self.progress, self.allow_stale = progress and main, allow_stale
        self.log = log if (log and main) else (lambda *a: None)
        self._user_model, self._data = model, data
        self.timings: dict[str, float] = {}
        if self.device.type == "cpu":
            from ..evaluation.population import warm_allocator

            warm_allocator()  # reuse freed activations instead of page-faulting them in (~30% faster training)

    @classmethod
    def from_run_dir(cls, run_dir, progress: bool = True, **overrides) -> "PDiffParts":
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
        pop = self._read("population", Population.load)
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
        """The configured preset for D = in_dim values (`auto` and padding: pdiff_fast.nn.autoencoder_choice)."""
        c = self.config
        return build_autoencoder(c.autoencoder, in_dim, c.input_noise, c.latent_noise)

    def subset_dim(self) -> int | None:
        """D, the subset's size, from the population file's header (None without a readable one)."""
        try:
            meta = read_meta(self.path("population"))
            return None if meta is None or "spec" not in meta[0] else ParamSpec.from_dict(meta[0]["spec"]).dim
        except (ValueError, TypeError, KeyError):
            return None

    def autoencoder_preset(self) -> str:
        """The preset the config's `autoencoder` stands for at this run's D (read from the population)."""
        dim = self.subset_dim()
        return self.config.autoencoder if dim is None else choose_preset(self.config.autoencoder, dim)

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

    # --- trained models, loaded back ----------------------------------------------------
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

    def denoiser_for(self, meta: dict) -> dn_lib.EMA:
        """A fresh denoiser of the shape a diffusion file's metadata records, to load its weights into."""
        return self.build_denoiser(int(torch.Size(meta["latent_shape"]).numel()), meta.get("channels"))

    def load_models(self, _digests: dict | None = None):
        pop, pop_digest = self._population()
        ae, std, ae_digest = self._load_autoencoder(pop, pop_digest)
        dm_sd, dm_meta, dm_digest = self._load("diffusion", {"population": pop_digest, "autoencoder": ae_digest})
        self._check_settings("diffusion", dm_meta)
        if "latent_shape" not in dm_meta:
            raise ValueError(f"{self.path('diffusion')}: not a diffusion model file (no latent_shape in its metadata)")
        model = self.denoiser_for(dm_meta)
        try:
            model.load_state_dict(dm_sd, strict=True)
        except RuntimeError as exc:
            raise ValueError(f"{self.path('diffusion')}: not a diffusion model of this run "
                             f"({str(exc).splitlines()[0]})") from exc
        if _digests is not None:
            _digests.update({"population": pop_digest, "autoencoder": ae_digest, "diffusion": dm_digest})
        return ae, model.to(self.device).eval(), std


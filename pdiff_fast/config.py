"""One config for the whole pipeline; every default says why it is what it is."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Config:
    # data and the network whose parameters are generated
    dataset: str = "mnist1d"  # generated offline; the digits and user datasets work too
    model: str = "cnn1d"  # zoo model suited to the dataset (cnn1d for MNIST-1D)
    model_kwargs: dict = field(default_factory=dict)
    subset: str | list = "last-2-norm-layers"  # the paper's default subset
    # checkpoint collection
    recipe: str = "v2"  # v2: K checkpoints within one epoch of subset fine-tuning (fast); "v1": one per epoch
    epochs: int = 10  # base training epochs; MNIST-1D's CNN reaches ~97% test accuracy in this many
    k: int = 200  # checkpoints, as the paper
    lr: float = 0.1  # reference SGD: lr 0.1, momentum 0.9, wd 5e-4
    subset_lr: float = 0.01  # subset training stays near the base optimum
    batch_size: int = 128
    # parameter autoencoder
    autoencoder: str = "small"  # `medium` is the reference CIFAR preset; `small` fits a 2-core CPU
    input_noise: float = 0.001  # reference input noise factor
    latent_noise: float = 0.1  # reference latent noise factor (0.5 in its ae_ddpm config)
    standardize: bool = True  # per-tensor standardisation (reference v2) so BN weights and biases share a scale
    ae_steps: int = 1500  # reference 30k; enough for K=200 vectors of a few hundred values
    ae_lr: float = 1e-3  # reference AdamW lr / weight decay
    ae_weight_decay: float = 2e-6
    # latent diffusion
    denoiser: str = "AE_CNN_bottleneck"
    denoiser_channels: list | None = None  # None: reference [64,128,256,512] on a GPU, a quarter of it on a CPU
    shared_timestep: bool = False  # True reproduces the reference's batch-shared timestep quirk
    diffusion_steps: int = 1500  # reference 30k
    diffusion_lr: float = 1e-3
    diffusion_weight_decay: float = 2e-6
    diffusion_batch_size: int | None = None  # None: full batch (K = 200), as the reference
    ema_decay: float = 0.995  # reference 0.9999 over 30k steps; scaled to the shorter schedule
    # sampling
    sampler: str = "ddpm"  # ancestral DDPM over all 1000 steps (reference); or "ddim"
    sample_steps: int = 50  # DDIM steps
    eta: float = 0.0  # DDIM eta
    num_samples: int = 200  # generated models, as the paper
    cuda_graph: bool = False  # replay the whole DDPM loop as one CUDA graph (CUDA + Triton only)
    memory_budget_mb: int = 1024  # chunking of sampling and evaluation
    # evaluation
    noise_sigmas: list = field(default_factory=lambda: [0.01, 0.05, 0.1])
    # machine
    device: str = "auto"  # cuda when available, else cpu
    seed: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Config":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {unknown}")
        return cls(**d)

    @classmethod
    def from_file(cls, path) -> "Config":
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: config is not valid JSON ({exc})") from exc

    def replace(self, **changes) -> "Config":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

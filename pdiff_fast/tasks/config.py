"""`pdiff-fast tasks` settings: TaskConfig (every field checked on load, as Config is), the config
fields each artifact of a task run depends on (STEP_FIELDS) and the command that makes it (MADE_BY)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..config import (SAMPLER_NAMES, ConfigFields, _channels, _choice, _denoiser_widths, _device, _int, _num,
                      _prompts, _type)
from .conditional import MODES


@dataclass
class TaskConfig(ConfigFields):
    # tasks and the network
    held_out_pairs: int = 9  # of the 45 digit pairs, held out in both orders (18 of the 90 tasks)
    split_seed: int = 0
    hidden: list = field(default_factory=lambda: [32])  # the MLP's hidden widths (D = 2,210 with [32])
    # the zoo
    zoo_runs: int = 10  # models per seen task (their batch orders differ; their start is shared)
    zoo_steps: int = 200  # SGD steps per model (batch 32: about 22 epochs of a task's ~290 samples)
    zoo_lr: float = 0.05
    batch_size: int = 32
    # parameter autoencoder (pdiff_fast.nn.lowrank_autoencoder: principal-component start, then trained)
    standardize: bool = True
    rank: int = 32
    ae_steps: int = 1000
    ae_lr: float = 1e-3
    input_noise: float = 0.001
    latent_noise: float = 0.1
    # conditioned latent diffusion
    denoiser_channels: list | None = None  # None: [64,128,256,512] on a GPU, [16,32,64,128] on a CPU
    conditioning: str = "blocks"  # how the task embedding enters the denoiser (pdiff_fast.tasks.conditional); "blocks"
    # beat "time" on held-out and seen tasks (benchmarks/results/tasks_conditioning_cpu.md)
    encoder_width: int = 64
    embed_dim: int = 32
    support: int = 64  # (x, y) samples per support set
    cond_drop: float = 0.1  # share of training rows given the null embedding (classifier-free guidance)
    diffusion_steps: int = 3000  # "blocks" fits the seen tasks as well as at 6000 (tasks_conditioning_cpu.md)
    diffusion_lr: float = 1e-3
    diffusion_batch_size: int = 256
    ema_decay: float = 0.995
    checkpoint_every: int = 500  # diffusion steps between resumable checkpoints (0: none; as Config's)
    # sampling
    guidance: float = 4.0  # 0: unconditional, 1: conditional, > 1: guided; 4 fit the seen tasks best of 1, 2, 4
    sampler: str = "ddim"  # DDIM 20 steps at eta 1: chosen from the sampler frontier, as Config's
    sample_steps: int = 20
    eta: float = 1.0
    samples_per_task: int = 10
    # evaluation
    finetune_models: int = 5  # per start and held-out task
    finetune_steps: int = 100
    finetune_lr: float = 0.05
    memory_budget_mb: int = 1024
    device: str = "auto"
    seed: int = 0
    # accuracy prompting (pdiff_fast.prompted.tasks): a task and the validation accuracy asked for
    prompted: bool = False
    val_fraction: float = 0.2  # of the digits' training images, carved out to label the zoo (prompted only)
    span_keep: int = 8  # zoo checkpoints kept per run, chosen evenly in validation accuracy (prompted only)
    prompt_accuracy: list | None = None  # None: the calibration sweep (pdiff_fast.prompted.prompts)
    prompt_extrapolate: bool = False  # allow prompts outside the zoo's validation accuracies

    @classmethod
    def problems(cls, d: dict, source: str) -> list[str]:
        return _problems(d, source)


def _widths(v):
    if not isinstance(v, list) or not v or not all(isinstance(w, int) and not isinstance(w, bool) and w > 0
                                                   for w in v):
        return f"expected a non-empty list of positive widths, got {v!r}"
    return None


CHECKS = {
    "held_out_pairs": _int(1, 44), "split_seed": _int(0), "hidden": _widths, "zoo_runs": _int(1),
    "zoo_steps": _int(1), "zoo_lr": _num(0, lo_open=True), "batch_size": _int(1),
    "standardize": _type(bool, "true or false"), "rank": _int(1), "ae_steps": _int(1),
    "ae_lr": _num(0, lo_open=True), "input_noise": _num(0, 1), "latent_noise": _num(0, 1),
    "denoiser_channels": _channels, "conditioning": _choice(*MODES), "encoder_width": _int(4),
    "embed_dim": _int(1), "support": _int(1),
    "cond_drop": _num(0, 1, hi_open=True), "diffusion_steps": _int(1), "diffusion_lr": _num(0, lo_open=True),
    "diffusion_batch_size": _int(1), "ema_decay": _num(0, 1, hi_open=True), "checkpoint_every": _int(0), "guidance": _num(0),
    "sampler": _choice(*SAMPLER_NAMES), "sample_steps": _int(1, 1000), "eta": _num(0), "samples_per_task": _int(1),
    "finetune_models": _int(1), "finetune_steps": _int(1), "finetune_lr": _num(0, lo_open=True),
    "memory_budget_mb": _int(1), "device": _device, "seed": _int(0, 2**62),
    "prompted": _type(bool, "true or false"), "val_fraction": _num(0, 1, lo_open=True, hi_open=True),
    "span_keep": _int(2), "prompt_accuracy": _prompts, "prompt_extrapolate": _type(bool, "true or false"),
}


def _problems(d: dict, source: str) -> list[str]:
    out = []
    for name, value in d.items():
        problem = CHECKS[name](value) if name in CHECKS else None
        if problem:
            out.append(f"{source}: field {name!r}: {problem}")
    if "encoder_width" in d and CHECKS["encoder_width"](d["encoder_width"]) is None and d["encoder_width"] % 4:
        out.append(f"{source}: field 'encoder_width': must be a multiple of 4 (the set encoder's attention heads)")
    if d.get("prompt_accuracy") is not None and d.get("prompted") is not True:
        out.append(f"{source}: field 'prompt_accuracy': prompts need prompted: true")
    # the generator's denoiser is always AE_CNN_bottleneck (pdiff_fast.tasks.generator)
    return out + _denoiser_widths("AE_CNN_bottleneck", d.get("denoiser_channels"), source,
                                  "the generator's AE_CNN_bottleneck denoiser")


# The config fields each artifact depends on, and the command that makes it.
STEP_FIELDS = {
    "zoo": ("held_out_pairs", "split_seed", "hidden", "zoo_runs", "zoo_steps", "zoo_lr", "batch_size", "seed",
            "prompted", "val_fraction", "span_keep"),
    "generator": ("standardize", "rank", "ae_steps", "ae_lr", "input_noise", "latent_noise", "denoiser_channels",
                  "conditioning", "encoder_width", "embed_dim", "support", "cond_drop", "diffusion_steps",
                  "diffusion_lr", "diffusion_batch_size", "ema_decay", "seed", "prompted"),
    "generated": ("guidance", "sampler", "sample_steps", "eta", "samples_per_task", "seed", "prompt_accuracy"),
}
MADE_BY = {"zoo": "zoo", "generator": "train", "generated": "sample"}

"""One config for the whole pipeline; every default says why it is what it is."""
from __future__ import annotations

import dataclasses
import json
import math
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path


class ConfigFields:
    """What every config dataclass shares: a JSON object of fields in and out, each field's type and
    range checked (`problems`, one line per problem naming the field and the source)."""

    @classmethod
    def problems(cls, d: dict, source: str) -> list[str]:
        raise NotImplementedError

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict, source: str = "config"):
        """A checked config from a mapping; every problem is named (field and `source`) in one ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError([f"{source}: a config must be a JSON object of fields, not {type(d).__name__}"])
        known = {f.name for f in dataclasses.fields(cls)}
        problems = [f"{source}: unknown field {k!r}" for k in sorted(set(d) - known)]
        problems += cls.problems(d, source)
        if problems:
            raise ConfigError(problems)
        return cls(**d)

    @classmethod
    def from_file(cls, path):
        return cls.from_dict(read_config_file(path), str(path))

    def replace(self, **changes):
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def validate(self, source: str = "config"):
        problems = self.problems(self.to_dict(), source)
        if problems:
            raise ConfigError(problems)
        return self


@dataclass
class Config(ConfigFields):
    # data and the network whose parameters are generated
    dataset: str = "mnist1d"  # generated offline; the digits and user datasets work too
    model: str = "cnn1d"  # zoo model suited to the dataset (cnn1d for MNIST-1D)
    model_kwargs: dict = field(default_factory=dict)
    subset: str | list = "last-2-norm-layers"  # the paper's default subset
    # checkpoint collection
    recipe: str = "v2"  # v2: K checkpoints within one epoch of subset fine-tuning (fast); "v1": one per epoch;
    # "span": checkpoints spanning accuracy, labelled on a validation split (accuracy prompting: pdiff_fast.prompted)
    val_fraction: float = 0.1  # span: the share of the training data held out to label checkpoints (never trained on)
    span_noise: float = 1.0  # span: each run starts from the base subset plus noise of this many times each
    # tensor's RMS (about 40% validation accuracy on MNIST-1D's default subset), then climbs back by SGD
    epochs: int = 10  # base training epochs; MNIST-1D's CNN reaches ~97% test accuracy in this many
    k: int = 200  # checkpoints, as the paper
    trajectories: int = 1  # independent subset-training runs from the base model (seeds seed+1, seed+2, ...),
    # sharing the k checkpoints; torchrun ranks split them
    lr: float = 0.1  # reference SGD: lr 0.1, momentum 0.9, wd 5e-4
    subset_lr: float = 0.01  # subset training stays near the base optimum
    batch_size: int = 128
    # parameter autoencoder
    autoencoder: str = "auto"  # auto: `small` for 81..4095 values, `lowrank` (whole networks, tiny subsets) outside
    # (pdiff_fast.nn.autoencoder_choice); `medium` is the reference CIFAR preset
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
    prompted: bool = False  # condition the denoiser on the checkpoints' validation accuracy (recipe "span")
    cond_drop: float = 0.1  # prompted: share of training rows given the null prompt (classifier-free guidance)
    checkpoint_every: int = 500  # training steps between resumable checkpoints (0: only at the end of a phase)
    # sampling
    # DDIM at eta 1 (ancestral sampling on 20 of the 1000 steps, x_t clamped as the reference's DDPM):
    # the fewest denoiser evaluations that hold DDPM 1000's quality on both default runs, over 3 seeds
    # (benchmarks/results/samplers_cpu.md: p-diff median 96.90 vs 96.83, held-out tasks 95.98 vs 95.95,
    # sampling 45x faster). "ddpm" is the reference's 1000-step sampler; also "dpm++2m", "dpm++2m-sde",
    # "euler-a" (pdiff_fast.diffusion.samplers)
    sampler: str = "ddim"
    sample_steps: int = 20  # denoiser evaluations of every sampler but ddpm (always 1000)
    eta: float = 1.0  # DDIM's noise: 0 deterministic, 1 ancestral
    num_samples: int = 200  # generated models, as the paper
    prompt_accuracy: list | None = None  # prompted: the validation accuracies asked for (%), the models split
    # evenly over them; None: a sweep over the population's range and 2 points above it (the calibration)
    guidance: float = 1.0  # prompted: 0 unprompted, 1 conditional, > 1 guided (classifier-free guidance)
    prompt_extrapolate: bool = False  # prompted: allow prompts outside the population's validation accuracies
    cuda_graph: bool | str = "auto"  # replay the sampling loop as one CUDA graph: "auto" on CUDA with the
    # Triton DDPM step (same models as uncaptured), true forces it (CUDA + Triton step), false never
    sample_grain: int | None = None  # rows per denoiser call (None: 256 on CPU, 1024 on CUDA); part of the
    # result (batched convolutions round by batch size); torchrun ranks split the models in whole grains
    memory_budget_mb: int = 1024  # chunking of sampling and evaluation
    # evaluation
    noise_sigmas: list = field(default_factory=lambda: [0.01, 0.05, 0.1])
    # machine
    device: str = "auto"  # cuda when available, else cpu
    seed: int = 0

    @classmethod
    def problems(cls, d: dict, source: str) -> list[str]:
        return (check_fields(d, source) + _denoiser_widths(d.get("denoiser", cls.denoiser), d.get("denoiser_channels"),
                                                           source) + _prompting(d, source))


# the samplers' names (pdiff_fast.diffusion.samplers.SAMPLERS describes them; a test keeps the two equal)
SAMPLER_NAMES = ("ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "euler-a")


class ConfigError(ValueError):
    """One or more config problems, one line each (field and file named)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


SHIPPED = Path(__file__).resolve().parent / "configs"  # configs that ship with the package, by name
MAX_CONFIG_BYTES = 16 << 20  # a config is a few hundred bytes; a larger file is not one (and is not read into memory)
MAX_DEPTH = 100  # arrays and objects in a config file, nested; deeper ones are refused (deep copies and messages
# of deeper values recurse past Python's limit)


def read_config_file(path) -> dict:
    """The JSON object of a config file, or of a shipped one by name (`quick`: pdiff_fast/configs/quick.json).
    Anything else (no file, a directory, a FIFO or device, not UTF-8, not JSON, nested more than MAX_DEPTH
    levels, not an object) is a ConfigError naming the file."""
    path = Path(path)
    try:
        if not path.exists() and path.suffix == "" and len(path.parts) == 1 and (SHIPPED / f"{path}.json").is_file():
            path = SHIPPED / f"{path}.json"
        st = path.stat()
        mode = st.st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError([f"{path}: no such config file"]) from None
    except (OSError, ValueError) as exc:  # a name too long, a directory it may not enter, a NUL byte
        raise ConfigError([f"{path}: cannot read the config file ({getattr(exc, 'strerror', None) or exc})"]) from None
    if stat.S_ISDIR(mode):
        raise ConfigError([f"{path}: is a directory, not a JSON config file"])
    if not stat.S_ISREG(mode):  # reading a FIFO would block until a writer comes
        raise ConfigError([f"{path}: is not a regular file (a FIFO, socket or device), not a JSON config file"])
    if st.st_size > MAX_CONFIG_BYTES:
        raise ConfigError([f"{path}: {st.st_size} bytes, more than a config file can be ({MAX_CONFIG_BYTES} bytes)"])
    too_deep = f"{path}: config is nested too deeply (JSON arrays and objects more than {MAX_DEPTH} levels deep)"
    try:
        doc = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config file ({exc.strerror or exc})"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: config is not UTF-8 text ({exc})"]) from exc
    except RecursionError:  # deeper than the parser goes
        raise ConfigError([too_deep]) from None
    except ValueError as exc:  # not JSON, or an integer of more digits than Python converts
        raise ConfigError([f"{path}: config is not valid JSON ({exc})"]) from None
    if _too_deep(doc):
        raise ConfigError([too_deep])
    if not isinstance(doc, dict):
        raise ConfigError([f"{path}: a config must be a JSON object of fields, not {_json_type(doc)}"])
    return doc


def _too_deep(doc) -> bool:
    """Arrays and objects nested more than MAX_DEPTH levels (counted without recursion)."""
    stack = [(doc, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, dict)):
            if depth > MAX_DEPTH:
                return True
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def _json_type(v) -> str:
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    return "a string" if isinstance(v, str) else "an array" if isinstance(v, list) else "a number"


# --- validation: type and range of every field, checked when the config is read ----------------
def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    """A finite number a float holds (an integer beyond the float range is not: it overflows when used)."""
    if _is_int(v):
        return abs(v) <= sys.float_info.max
    return isinstance(v, float) and math.isfinite(v)


INT_MAX = 2**63 - 1  # the largest count or seed a torch int64 holds: integer fields are at most this


def _int(lo=None, hi=INT_MAX, none_ok=False):
    def check(v):
        if v is None and none_ok:
            return None
        if not _is_int(v):
            return f"expected an integer{' or null' if none_ok else ''}, got {v!r}"
        if lo is not None and v < lo:
            return f"must be at least {lo}, got {v}"
        if hi is not None and v > hi:
            return f"must be at most {hi}, got {v}"
        return None
    return check


def _num(lo=None, hi=None, lo_open=False, hi_open=False):
    def check(v):
        if not _is_num(v):
            return f"expected a finite number, got {v!r}"
        if lo is not None and (v <= lo if lo_open else v < lo):
            return f"must be {'greater than' if lo_open else 'at least'} {lo}, got {v}"
        if hi is not None and (v >= hi if hi_open else v > hi):
            return f"must be {'less than' if hi_open else 'at most'} {hi}, got {v}"
        return None
    return check


def _choice(*options):
    def check(v):
        return None if isinstance(v, str) and v in options else f"must be one of {list(options)}, got {v!r}"
    return check


def _type(t, what):
    return lambda v: None if isinstance(v, t) and not (t is int and isinstance(v, bool)) else f"expected {what}, got {v!r}"


def _subset(v):
    if isinstance(v, str) and v:
        return None
    if isinstance(v, list) and v and all(isinstance(x, str) and x for x in v):
        return None
    return f"expected a pattern string or a non-empty list of parameter names, got {v!r}"


def _channels(v):
    if v is None or (isinstance(v, list) and v and all(_is_int(c) and c >= 1 for c in v)):
        return None
    return f"expected null or a non-empty list of positive integers, got {v!r}"


def _denoiser_widths(denoiser, channels, source: str, what: str = "the AE_CNN_bottleneck denoiser") -> list[str]:
    """AE_CNN_bottleneck (pdiff_fast.nn.denoiser) has four encoder and four decoder blocks: it takes exactly 4
    widths. ODUnet takes any number (one block each, its decoder mirroring the encoder). Checked only when
    the widths are otherwise valid (their own check reports the rest)."""
    if denoiser != "AE_CNN_bottleneck" or channels is None or _channels(channels) is not None or len(channels) == 4:
        return []
    return [f"{source}: field 'denoiser_channels': {what} takes exactly 4 widths, got {len(channels)}: {channels!r}"]


def _prompting(d: dict, source: str) -> list[str]:
    """Prompting needs checkpoints labelled with a validation accuracy (recipe "span") and the
    AE_CNN_bottleneck denoiser (the conditioned denoiser adds the prompt to its time embedding)."""
    if d.get("prompted") is not True:
        return [f"{source}: field {name!r}: asks for prompts, but the config has no prompting (set prompted: true, "
                "recipe \"span\")" for name in ("prompt_accuracy", "prompt_extrapolate")
                if d.get(name) not in (None, False)]
    problems = []
    if d.get("recipe", Config.recipe) != "span":
        problems.append(f"{source}: field 'prompted': needs recipe \"span\" (checkpoints labelled with a "
                        f"validation accuracy), got recipe {d.get('recipe', Config.recipe)!r}")
    if d.get("denoiser", Config.denoiser) != "AE_CNN_bottleneck":
        problems.append(f"{source}: field 'prompted': needs the AE_CNN_bottleneck denoiser, got "
                        f"{d.get('denoiser')!r}")
    return problems


def _sigmas(v):
    if isinstance(v, list) and all(_is_num(s) and s >= 0 for s in v):
        return None
    return f"expected a list of non-negative numbers, got {v!r}"


def _prompts(v):
    if v is None or (isinstance(v, list) and v and all(_is_num(p) and 0 <= p <= 100 for p in v)):
        return None
    return f"expected null or a non-empty list of accuracies in [0, 100] (%), got {v!r}"


def _cuda_graph(v):
    return None if v is True or v is False or v == "auto" else f"expected true, false or 'auto', got {v!r}"


def _device(v):
    if not isinstance(v, str):
        return f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}"
    if v in ("auto", "cpu"):
        return None
    if re.fullmatch(r"cuda(:(0|[1-9][0-9]*))?", v):  # as torch.device spells them: ASCII digits, no leading zero
        import torch

        if not torch.cuda.is_available():
            return f"{v!r} was asked for but CUDA is not available on this machine (use 'cpu' or 'auto')"
        if ":" in v and (len(v) > 24 or int(v[5:]) >= torch.cuda.device_count()):  # int() of 4300+ digits raises
            return f"{v!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
        return None
    return f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}"


CHECKS = {
    "dataset": _type(str, "a dataset name"),
    "model": _type(str, "a model name"),
    "model_kwargs": _type(dict, "a JSON object"),
    "subset": _subset,
    "recipe": _choice("v1", "v2", "span"),
    "val_fraction": _num(0, 1, lo_open=True, hi_open=True),
    "span_noise": _num(0),
    "epochs": _int(1),
    "k": _int(1),
    "trajectories": _int(1),
    "lr": _num(0, lo_open=True),
    "subset_lr": _num(0, lo_open=True),
    "batch_size": _int(1),
    "autoencoder": _choice("auto", "small", "medium", "lowrank"),
    "input_noise": _num(0, 1),
    "latent_noise": _num(0, 1),
    "standardize": _type(bool, "true or false"),
    "ae_steps": _int(1),
    "ae_lr": _num(0, lo_open=True),
    "ae_weight_decay": _num(0),
    "denoiser": _choice("AE_CNN_bottleneck", "ODUnet"),
    "denoiser_channels": _channels,
    "shared_timestep": _type(bool, "true or false"),
    "diffusion_steps": _int(1),
    "diffusion_lr": _num(0, lo_open=True),
    "diffusion_weight_decay": _num(0),
    "diffusion_batch_size": _int(1, none_ok=True),
    "ema_decay": _num(0, 1, hi_open=True),
    "checkpoint_every": _int(0),
    "prompted": _type(bool, "true or false"),
    "cond_drop": _num(0, 1, hi_open=True),
    "prompt_accuracy": _prompts,
    "guidance": _num(0),
    "prompt_extrapolate": _type(bool, "true or false"),
    "sampler": _choice(*SAMPLER_NAMES),
    "sample_steps": _int(1, 1000),
    "eta": _num(0),
    "num_samples": _int(1),
    "cuda_graph": _cuda_graph,
    "sample_grain": _int(1, none_ok=True),
    "memory_budget_mb": _int(1),
    "noise_sigmas": _sigmas,
    "device": _device,
    "seed": _int(0),
}


def check_fields(d: dict, source: str = "config") -> list[str]:
    """One line per field of `d` whose type or range is wrong."""
    problems = []
    for name, value in d.items():
        check = CHECKS.get(name)
        problem = check(value) if check else None
        if problem:
            problems.append(f"{source}: field {name!r}: {problem}")
    return problems

"""Shared set-up of the throughput suite: the two configurations, the sizes of a default (CPU) and
a --full run, the four peers every stage is timed with, the work (FLOPs, fewest bytes) of each
timed call, and the timing helper.

Peers (extra_info["peer"]), all timed in the same run:
  auto       pdiff_fast with its automatic backend (Triton on CUDA, but torch for training steps,
             where the fused kernels measured slower; on CPU plain torch)
  triton     pdiff_fast under use_backend("triton"): every fused kernel, training included (CUDA)
  torch      pdiff_fast under use_backend("torch")
  compile    torch.compile of the same pdiff_fast modules, run under use_backend("torch")
  reference  benchmarks/reference_loop.py, an eager re-implementation of the reference loops

Configurations:
  resnet18   the reference: D = 2048 (layer4.1.bn1/bn2 of a CIFAR ResNet-18), `medium`
             autoencoder, latent (4, 3) = 12, denoiser channels [64, 128, 256, 512]
  whole-net  every parameter of the zoo's cnn1d at widths (64, 128, 256): D = 127,114, `small`
             autoencoder, latent (2, 1570); denoiser channels [64, 128, 256, 512] with --full,
             [8, 16, 32, 64] by default (the full widths cost seconds per step on a CPU)
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import time
from dataclasses import dataclass, replace

import pytest
import torch

from pdiff_fast import AE_CNN_bottleneck, DDIMScheduler, DDPMScheduler, EMA, ParamSpec, use_backend
from pdiff_fast.nn.autoencoder import PRESETS
from pdiff_fast.nn.models import build_model
from pdiff_fast.diffusion.sample import ChunkPlan, chunk_size_for, default_grain, plan_chunks, sample_latents
from pdiff_fast.pipeline.train import fit_autoencoder, fit_diffusion

from . import reference_loop as ref

PEERS = ("auto", "triton", "torch", "compile", "reference")
PEER_NAMES = {"auto": "pdiff_fast (auto)", "triton": "pdiff_fast (triton)", "graph": "pdiff_fast (CUDA graph)",
              "torch": "pdiff_fast (torch)",
              "compile": "torch.compile", "reference": "reference loop"}
DDIM_STEPS, DDIM_ETA = 50, 0.05  # reference v2 samples with DDIM at a small eta
RESNET18_SUBSET = [f"layer4.1.bn{i}.{p}" for i in (1, 2) for p in ("weight", "bias")]

OPTIONS = {"compile": True}  # set by conftest from the command line


@dataclass(frozen=True)
class BenchConfig:
    name: str
    preset: str  # autoencoder preset
    denoiser_channels: tuple[int, ...]
    net_widths: tuple[int, ...] | None  # cnn1d widths for whole-net; None: ResNet-18 subset


@dataclass(frozen=True)
class Sizes:
    full: bool
    ns: dict  # config -> N values for sampling and decoding
    ddpm_steps: int  # reverse steps run per timed call, of 1000
    ddim_steps: int  # of DDIM_STEPS
    ae_batch: dict  # config -> K (vectors per training step)
    den_batch: dict
    train_steps: int  # optimiser steps per timed call
    budget_s: float  # time spent on the rounds of one case (after its warm-up)
    min_rounds: int
    max_rounds: int


def configs(full: bool) -> dict[str, BenchConfig]:
    whole = (64, 128, 256, 512) if full else (8, 16, 32, 64)
    return {"resnet18": BenchConfig("resnet18", "medium", (64, 128, 256, 512), None),
            "whole-net": BenchConfig("whole-net", "small", whole, (64, 128, 256))}


def sizes(full: bool, ns: tuple[int, ...] | None = None, ddpm_steps: int | None = None,
          ddim_steps: int | None = None, cfgs: tuple[str, ...] | None = None) -> Sizes:
    """The sizes of a default or --full run; ns / steps / cfgs (conftest's --n, --ddpm-steps,
    --ddim-steps, --configs) narrow them for a short GPU window."""
    base = _sizes(full)
    chosen = {c: (ns or v) for c, v in base.ns.items() if not cfgs or c in cfgs}
    return replace(base, ns=chosen, ddpm_steps=ddpm_steps or base.ddpm_steps,
                   ddim_steps=ddim_steps or base.ddim_steps)


def _sizes(full: bool) -> Sizes:
    if full:
        every = (1, 10, 100, 200, 1000)
        return Sizes(True, {"resnet18": every, "whole-net": every}, 1000, DDIM_STEPS,
                     {"resnet18": 200, "whole-net": 200}, {"resnet18": 200, "whole-net": 200}, 5, 5.0, 3, 20)
    return Sizes(False, {"resnet18": (1, 10, 200), "whole-net": (1, 4)}, 4, 4,
                 {"resnet18": 16, "whole-net": 2}, {"resnet18": 32, "whole-net": 8}, 2, 1.0, 3, 20)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_net(cfg: BenchConfig, device) -> tuple[torch.nn.Module, list[str]]:
    """The network whose parameters the configuration generates, and the subset's names."""
    if cfg.net_widths is None:
        with torch.device("meta"):
            net = ref.ResNet18()
        return net.to_empty(device=device), list(RESNET18_SUBSET)
    net = build_model("cnn1d", (1, 40), 10, channels=cfg.net_widths).to(device)
    return net, [n for n, _ in net.named_parameters()]


def mnist1d_cnn() -> torch.nn.Module:
    """The small MNIST-1D CNN (inputs (1, 40)) of the population and flatten_params benchmarks:
    Conv1d(1,16,5)-BN-ReLU-Conv1d(16,32,3)-BN-ReLU-AvgPool-Flatten-Linear(32,10). Not the zoo's
    cnn1d (pdiff_fast.nn.models, other widths and strides); tests/test_population.py tests with it too."""
    nn = torch.nn
    return nn.Sequential(nn.Conv1d(1, 16, 5), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 32, 3),
                         nn.BatchNorm1d(32), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 10))


class Setup:
    """Everything one configuration needs on one device, built once per session."""

    def __init__(self, cfg: BenchConfig, device: torch.device):
        torch.manual_seed(0)
        self.cfg, self.device = cfg, device
        self.net, self.names = make_net(cfg, device)
        self.spec = ParamSpec.from_model(self.net, self.names)
        self.D = self.spec.dim
        self.ae = PRESETS[cfg.preset](self.D).to(device)
        self.latent_shape = tuple(self.ae.latent_shape())
        self.latent_numel = math.prod(self.latent_shape)
        self.den = AE_CNN_bottleneck(self.latent_numel, 1, channel_list=list(cfg.denoiser_channels)).to(device)
        self.grain = default_grain(device)  # what generate() uses: chunks are multiples of the grain
        self.chunk = max(1, chunk_size_for(self.latent_numel, self.D, 1 << 30) // self.grain) * self.grain
        self._compiled: dict[str, object] = {}

    def sample_plan(self, n: int) -> ChunkPlan:
        """generate()'s sampling chunks for n models: on CUDA plan_chunks (one chunk when the free
        memory holds it), on the CPU the one budget of before."""
        if self.device.type == "cuda":
            return plan_chunks(n, self.latent_numel, self.D, self.device, 1 << 30,
                               decode_channels=getattr(self.ae, "decode_channels", 64))
        return ChunkPlan(self.chunk, self.grain, self.grain)

    def describe(self) -> dict:
        return {"config": self.cfg.name, "D": self.D, "latent": list(self.latent_shape),
                "ae_preset": self.cfg.preset, "denoiser_channels": list(self.cfg.denoiser_channels),
                "device": device_name(self.device)}

    def params(self, k: int) -> torch.Tensor:  # (k, D) training vectors
        g = torch.Generator().manual_seed(k)
        return (0.05 * torch.randn(k, self.D, generator=g)).to(self.device)

    def latents(self, k: int) -> torch.Tensor:  # (k, C, L) in [-1, 1]
        g = torch.Generator().manual_seed(k)
        return (torch.rand(k, *self.latent_shape, generator=g) * 2 - 1).to(self.device)

    def ref_autoencoder(self) -> ref.Autoencoder:
        r = ref.Autoencoder(self.cfg.preset, self.D).to(self.device)
        r.load_state_dict(self.ae.state_dict(), strict=True)
        return r

    def ref_denoiser(self) -> ref.Denoiser:
        r = ref.Denoiser(self.latent_numel, 1, channel_list=self.cfg.denoiser_channels).to(self.device)
        r.load_state_dict(self.den.state_dict(), strict=True)
        return r

    def compiled(self, what: str):
        """One torch.compile per module and session, shared by every N (sampling: the denoiser)."""
        if what not in self._compiled:
            self._compiled[what] = compile_or_skip(self.den if what == "denoiser" else self.ae.decode)
        return self._compiled[what]

    # --- work of one timed call (for GFLOP/s and the hardware floor) ------------------------------
    @functools.cache
    def unit_flops(self, stage: str) -> int:
        """FLOPs of one sample (K = 1 / N = 1, one step) of a stage, counted on the torch path."""
        from torch.utils.flop_counter import FlopCounterMode
        one, z = self.params(1), self.latents(1)
        t = torch.full((1,), 999, device=self.device)
        runs = {
            "ae_train": lambda: fit_autoencoder(copy.deepcopy(self.ae), one, steps=1, progress=False),
            "den_train": lambda: fit_diffusion(EMA(copy.deepcopy(self.den)), z, DDPMScheduler(), steps=1,
                                               progress=False),
            "denoise": lambda: self.den(z, t),
            "decode": lambda: self.ae.decode(z),
        }
        with use_backend("torch"), FlopCounterMode(display=False) as counter, \
                torch.set_grad_enabled(stage.endswith("train")):
            runs[stage]()
        return int(counter.get_total_flops())

    def work(self, stage: str, n: int, steps: int = 1) -> dict:
        """FLOPs and fewest bytes (fp32) of one timed call; the floor is the larger of the two times.

        Fewest bytes: training reads the weights in the forward and backward, writes the grads, and
        AdamW + EMA read/write w, grad, m, v (13 passes over the weights) plus the batch once;
        a sampling step reads the weights once and reads/writes x and the noise; decoding reads
        the decoder weights and the latents once and writes the (N, D) vectors once.
        """
        p_ae = sum(p.numel() for p in self.ae.parameters())
        p_dec = sum(p.numel() for p in self.ae.decoder.parameters())
        p_den = sum(p.numel() for p in self.den.parameters())
        if stage == "ae_train":
            flops, nbytes = self.unit_flops(stage) * n * steps, 4 * steps * (10 * p_ae + n * self.D)
        elif stage == "den_train":
            flops, nbytes = self.unit_flops(stage) * n * steps, 4 * steps * (13 * p_den + 3 * n * self.latent_numel)
        elif stage == "sample":
            flops, nbytes = self.unit_flops("denoise") * n * steps, 4 * steps * (p_den + 3 * n * self.latent_numel)
        elif stage == "decode":
            flops, nbytes = self.unit_flops("decode") * n, 4 * (p_dec + n * self.latent_numel + n * self.D)
        else:
            raise ValueError(stage)
        return {"flops": flops, "bytes_min": nbytes}


# --- the pdiff_fast side of sampling and decoding ------------------------------------------------------

def make_scheduler(sampler: str, steps_run: int):
    """A pdiff_fast scheduler that runs only the first `steps_run` reverse steps of its schedule."""
    sched = DDPMScheduler() if sampler == "ddpm" else DDIMScheduler(num_inference_steps=DDIM_STEPS, eta=DDIM_ETA)
    full = sched.timesteps()
    head = full[:steps_run]
    sched.timesteps = lambda: list(head)
    return sched, full


def pdiff_sample(denoiser, scheduler, n: int, s: Setup, seed: int = 0) -> torch.Tensor:
    """What pdiff_fast.generate does before decoding, uncaptured: the chunks of s.sample_plan(n),
    model i's noise from (seed, i), the denoiser on fixed micro-batches (grain rows), the noise
    drawn on the device."""
    plan = s.sample_plan(n)
    return torch.cat([sample_latents(denoiser, scheduler, min(plan.chunk, n - i), s.latent_shape, s.device,
                                     seed=seed, start=i, grain=plan.grain) for i in range(0, n, plan.chunk)])


@torch.no_grad()
def pdiff_decode_unflatten(decode, s: Setup, z: torch.Tensor) -> dict:
    """What generate + evaluation do after sampling: decode in chunks, then one stacked unflatten."""
    flat = torch.cat([decode(z[i:i + s.chunk]) for i in range(0, z.shape[0], s.chunk)])  # (N, D)
    return s.spec.unflatten_stacked(flat)  # {name: (N, *shape)}


# --- peers, compile, timing ----------------------------------------------------------------------------

@contextlib.contextmanager
def peer_backend(peer: str):
    name = {"auto": "auto", "triton": "triton", "graph": "auto", "torch": "torch", "compile": "torch"}.get(peer)
    with (use_backend(name) if name else contextlib.nullcontext()):
        yield


_compile_failure: list[str] = []


def compile_or_skip(obj, **kwargs):
    if not OPTIONS["compile"]:
        pytest.skip("torch.compile peer switched off with --no-compile")
    if _compile_failure:
        pytest.skip(_compile_failure[0])
    return torch.compile(obj, **kwargs)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return "cpu"


def _is_oom(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in text or "can't allocate" in text


def auto_choices(device: torch.device) -> dict:
    """Which implementation the automatic backend picks for each hot op on this device."""
    from pdiff_fast import backend
    with use_backend("auto"):
        return {op: backend.choose(op, device) for op in backend.FAST_BACKENDS}


def _skip_on_failure(call, peer: str, cuda: bool) -> float:
    """Run `call` once and return its wall time; out of memory, or torch.compile failing, skips the case."""
    try:
        t0 = time.perf_counter()
        call()
        return time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - turned into a skip with the reason
        if cuda:
            torch.cuda.empty_cache()
        text = str(exc).strip()
        msg = f"{type(exc).__name__}: {text.splitlines()[0][:300] if text else ''}"
        if _is_oom(exc):
            pytest.skip(f"{PEER_NAMES.get(peer, peer)} ran out of memory at this size ({msg})")
        if peer == "compile":
            if not _compile_failure:
                _compile_failure.append(f"torch.compile failed on this machine ({msg})")
            pytest.skip(_compile_failure[0])
        raise


def label(benchmark, *, group: str, stage: str, peer: str, device: torch.device, info: dict) -> None:
    """The group and extra_info every benchmark carries: stage, peer, device, torch threads, and
    info, which should hold "flops" and "bytes_min" (the work of one call: the report's floor)."""
    benchmark.group = group
    benchmark.extra_info.update({"stage": stage, "peer": peer, "peer_name": PEER_NAMES.get(peer, peer),
                                 "device": device_name(device), "torch_threads": torch.get_num_threads(), **info})


def time_case(benchmark, fn, *, s: Setup, sizes: Sizes, peer: str, stage: str, group: str, info: dict) -> None:
    """time_op for a stage of one configuration (its Setup describes the case)."""
    time_op(benchmark, fn, device=s.device, sizes=sizes, peer=peer, stage=stage, group=group,
            info={**s.describe(), **info})


def time_op(benchmark, fn, *, device: torch.device, sizes: Sizes, peer: str, stage: str, group: str,
            info: dict) -> None:
    """Warm up (compile for the compile peer), then time rounds of one call each: as many as fit in
    sizes.budget_s, within [min_rounds, max_rounds]. info should carry "flops" and "bytes_min"
    (the work of one call) for the report's floor columns."""
    if peer == "triton" and device.type != "cuda":
        pytest.skip("the triton peer (every fused kernel forced on) runs on CUDA only")
    label(benchmark, group=group, stage=stage, peer=peer, device=device,
          info={"mode": "full" if sizes.full else "default", **info})
    if peer == "auto":
        benchmark.extra_info["auto_backends"] = auto_choices(device)
    cuda = device.type == "cuda"

    def call():
        with peer_backend(peer):
            fn()
        if cuda:
            torch.cuda.synchronize()

    if benchmark.disabled:  # --benchmark-disable: run once, as a smoke test
        _skip_on_failure(lambda: benchmark(call), peer, cuda)
        return
    first = _skip_on_failure(call, peer, cuda)
    if peer == "compile":
        benchmark.extra_info["compile_s"] = round(first, 3)  # first call: tracing + inductor (cache state matters)
        t0 = time.perf_counter()
        call()
        first = time.perf_counter() - t0
    benchmark.extra_info["warmup_s"] = round(first, 6)
    rounds = max(sizes.min_rounds, min(sizes.max_rounds, int(sizes.budget_s / max(first, 1e-6))))
    benchmark.pedantic(call, rounds=rounds, iterations=1, warmup_rounds=0)

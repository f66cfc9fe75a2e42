"""Generation: sample latents from noise with the denoiser, decode them into parameter vectors.

All noise is drawn on the device. N models are sampled in one batch, split into chunks that fit
a memory budget, so thousands work.

Reproducible and independent of chunking: the noise of model i (its initial latent and every
step's noise) is a function of (seed, i) alone, so the same seed gives the same models whatever
the memory budget, chunk size or batch. On the torch path each model has its own generator
(seeded from (seed, i)) and its whole noise sequence is drawn at once per chunk; on the Triton
path the initial latent comes from the same per-model generators and the step noise is drawn in
the fused kernel from (seed, step, global row i).

Same noise is not yet the same models: batched convolutions round differently for different
batch sizes (oneDNN and cuDNN pick kernels by shape), and 1000 sampling steps amplify a last-bit
difference. So the networks always run on micro-batches of exactly `grain` rows (the last one
padded): model i is computed at row i % grain of a grain-row batch whatever the chunk size, and
chunk sizes are multiples of the grain. The memory budget then never changes a result.
"""
from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from . import backend, distributed
from .diffusion import DDIMScheduler, DDPMScheduler

_MASK64 = (1 << 64) - 1


def model_seed(seed: int, index: int) -> int:
    """A 63-bit seed for model `index` of a run seeded `seed` (splitmix64 of the pair)."""
    z = (seed * 0x9E3779B97F4A7C15 + index * 0xD1B54A32D192ED03 + 0x632BE59BD9B4E019) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 1


def model_noise(seed: int, start: int, m: int, draws: int, latent_shape, device) -> torch.Tensor:
    """(draws, m, *latent_shape) standard normal noise for models start..start+m-1 (their own streams)."""
    out = torch.empty((m, draws, *latent_shape), device=device)
    for j in range(m):
        g = torch.Generator(device=device).manual_seed(model_seed(seed, start + j))
        torch.randn((draws, *latent_shape), generator=g, device=device, out=out[j])
    return out.transpose(0, 1)


def default_grain(device) -> int:
    """Rows per network call. Larger is faster (fewer calls) but pads more; 200 models on the CPU
    machine: 13 s as one batch of 200, 17 s padded to 256, 23 s as 4 x 64 (DDPM, 1000 steps)."""
    return 1024 if torch.device(device).type == "cuda" else 256


def in_grains(fn, grain: int, x: torch.Tensor, *per_row: torch.Tensor) -> torch.Tensor:
    """fn(x, *per_row) computed on micro-batches of exactly `grain` rows, the last padded with
    copies of row 0 (dropped from the result), so a row's result never depends on the batch size."""
    n = x.shape[0]
    pad = (-n) % grain
    if pad:
        x = torch.cat([x, x[:1].expand(pad, *x.shape[1:])])
        per_row = tuple(torch.cat([r, r[:1].expand(pad, *r.shape[1:])]) for r in per_row)
    if x.shape[0] == grain:
        return fn(x, *per_row)[:n]
    outs = [fn(x[i:i + grain], *(r[i:i + grain] for r in per_row)) for i in range(0, x.shape[0], grain)]
    return torch.cat(outs)[:n]


def _fused_step_noise(scheduler: DDPMScheduler, device) -> bool:
    """True when the step op draws its noise in the Triton kernel (so no noise tensor is made)."""
    op = "ddim_step" if isinstance(scheduler, DDIMScheduler) else "ddpm_step"
    return backend.choose(op, torch.device(device)) == "triton"


@torch.no_grad()
def sample_latents(denoiser: nn.Module, scheduler: DDPMScheduler, n: int, latent_shape: tuple[int, ...],
                   device, generator: torch.Generator | None = None, progress: bool = False, *,
                   seed: int | None = None, start: int = 0, grain: int | None = None,
                   cond: torch.Tensor | None = None) -> torch.Tensor:
    """Run the reverse process for n samples at once; returns (n, *latent_shape) in [-1, 1].
    cond (n, ...): a per-sample condition, passed to the denoiser as its third argument.

    With `seed`, the samples are models start..start+n-1 of that seed's sequence, the denoiser run
    on `grain`-row micro-batches (see the module docstring; start must be a multiple of grain);
    without it, noise comes from `generator` and the denoiser sees the batch as a whole."""
    steps = scheduler.timesteps()
    noise = None
    if seed is None:
        x = torch.randn((n, *latent_shape), device=device, generator=generator)
    elif _fused_step_noise(scheduler, device):
        x = model_noise(seed, start, n, 1, latent_shape, device)[0]
    else:
        noise = model_noise(seed, start, n, 1 + len(steps), latent_shape, device)  # (1 + steps, n, ...)
        x = noise[0]
    per_row = () if cond is None else (cond,)
    for i, t in enumerate(tqdm(steps, desc=f"sample {n}", disable=not progress, leave=False)):
        tt = torch.full((n,), t, device=device, dtype=torch.long)
        if seed is None:
            eps = denoiser(x, tt, *per_row)
        else:
            eps = in_grains(denoiser, grain or default_grain(device), x, tt, *per_row)
        if seed is None:
            x = scheduler.step(eps, tt, x, generator=generator).prev_sample
        elif noise is not None:
            x = scheduler.step(eps, tt, x, noise=noise[1 + i]).prev_sample
        else:
            x = scheduler.step(eps, tt, x, seed=seed, seed_offset=i, row_offset=start).prev_sample
    return x


class GraphedLatentSampler:
    """The whole reverse process for a fixed batch, captured once as a CUDA graph and replayed
    (CUDA + Triton only): noise is drawn inside the fused step kernel from seed and row-offset
    tensors that are rewritten before each replay, so one replay samples the next chunk of a
    seed's model sequence with no host work per step (the same models as the uncaptured path)."""

    def __init__(self, denoiser: nn.Module, scheduler: DDPMScheduler, n: int, latent_shape, device):
        if isinstance(scheduler, DDIMScheduler):
            raise ValueError("CUDA-graph sampling is implemented for the DDPM sampler")
        graphs = backend.load_triton_op("sample_graph")
        if isinstance(graphs, Exception):
            raise RuntimeError(f"CUDA-graph sampling needs Triton ({graphs})")
        self.seed = torch.zeros(1, dtype=torch.int64, device=device)
        self.row_offset = torch.zeros(1, dtype=torch.int64, device=device)
        steps = [torch.full((n,), t, device=device, dtype=torch.long) for t in scheduler.timesteps()]

        def run(x):
            for i, tt in enumerate(steps):
                x = scheduler.step(denoiser(x, tt), tt, x, seed=self.seed, seed_offset=i,
                                   row_offset=self.row_offset).prev_sample
            return x

        with backend.use_backend("triton"):
            example = torch.zeros((n, *latent_shape), device=device)
            self.graphed = graphs.GraphedSampler(run, example, seed=self.seed, row_offset=self.row_offset)
        self.shape, self.device = (n, *latent_shape), device

    def sample(self, seed: int, start: int = 0) -> torch.Tensor:
        """Models start..start+n-1 of `seed`'s sequence."""
        x = model_noise(seed, start, self.shape[0], 1, self.shape[1:], self.device)[0]
        return self.graphed.sample(x, seed=seed, row_offset=start)


def chunk_size_for(latent_numel: int, in_dim: int, budget_bytes: int, denoiser_width: int = 512,
                   noise_draws: int = 0, grain: int = 1, decode_channels: int = 64) -> int:
    """Samples per chunk: the widest activation (denoiser and decoder: decode_channels values per
    parameter, 64 for the conv presets) times 4 bytes, a few times over, plus the sample's pre-drawn
    noise (noise_draws latents) on the torch path; a multiple of `grain`."""
    widest = max(latent_numel * denoiser_width, in_dim * decode_channels)
    per_sample = 4 * 8 * widest + 4 * noise_draws * latent_numel
    return max(1, budget_bytes // per_sample // grain) * grain


@torch.no_grad()
def generate(autoencoder: nn.Module, denoiser: nn.Module, scheduler: DDPMScheduler, n: int = 200, *,
             device=None, seed: int | None = 0, memory_budget_bytes: int = 1 << 30, chunk_size: int | None = None,
             cuda_graph: bool = False, progress: bool = True, grain: int | None = None,
             shard: bool = False, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Sample n parameter vectors: latents by diffusion, then the autoencoder's decoder. Returns (n, D).

    The same seed (and grain) gives the same n models whatever the chunk size or memory budget
    (seed=None draws one from torch's global RNG). Chunks are multiples of `grain` rows (default:
    256 on CPU, 1024 on CUDA, smaller only when the memory budget fits fewer models per chunk).
    cuda_graph=True (CUDA + Triton, DDPM): capture the whole loop once
    per chunk size and replay it.

    shard=True, in a process group (pdiff_fast.distributed): each rank samples its own whole
    grains of the n models and every rank returns all n, the same models as one process.

    cond (n, ...): one condition per model (a task embedding: pdiff_fast.conditional), passed to
    the denoiser with its rows; model i's result depends on cond[i] alone.
    """
    if n < 1:
        raise ValueError(f"generate: the number of samples must be at least 1, got {n}")
    if cond is not None and cond.shape[0] != n:
        raise ValueError(f"generate: cond needs one row per model ({n}), got {tuple(cond.shape)}")
    if cond is not None and cuda_graph:
        raise ValueError("generate: cuda_graph=True does not take a condition; sample conditioned models without it")
    device = torch.device(device or next(denoiser.parameters()).device)
    latent_shape = autoencoder.latent_shape()
    if cuda_graph and device.type != "cuda":
        raise ValueError("cuda_graph=True needs a CUDA device")
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    if chunk_size is None:
        draws = 0 if (cuda_graph or _fused_step_noise(scheduler, device)) else scheduler.noise_draws()
        fits = chunk_size_for(int(torch.Size(latent_shape).numel()), autoencoder.in_dim, memory_budget_bytes,
                              noise_draws=draws, decode_channels=getattr(autoencoder, "decode_channels", 64))
        if grain is None:  # the default grain, shrunk to a power of two when the budget fits fewer models
            grain = min(default_grain(device), 1 << (fits.bit_length() - 1))
        chunk_size = max(1, fits // grain) * grain
    else:
        grain = grain or default_grain(device)
        if not cuda_graph:
            chunk_size = max(1, chunk_size // grain) * grain
    autoencoder.eval(), denoiser.eval()
    graphed: dict[int, GraphedLatentSampler] = {}
    first, stop = distributed.shard(n, grain) if shard else (0, n)
    out = [torch.empty((0, autoencoder.in_dim), device=device)]  # a rank may get no grain
    for start in tqdm(range(first, stop, chunk_size), desc="generate", disable=not progress):
        m = min(chunk_size, stop - start)
        if cuda_graph:
            if m not in graphed:
                graphed[m] = GraphedLatentSampler(denoiser, scheduler, m, latent_shape, device)
            z = graphed[m].sample(seed, start)
        else:
            c = None if cond is None else cond[start:start + m].to(device)
            z = sample_latents(denoiser, scheduler, m, latent_shape, device, seed=seed, start=start, grain=grain,
                               cond=c)
        out.append(in_grains(autoencoder.decode, grain, z))
    flat = torch.cat(out)
    return distributed.gather_rows(flat, n, grain) if shard else flat  # (n, D)

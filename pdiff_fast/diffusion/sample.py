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
chunk sizes are multiples of the grain. The chunk size then never changes a result. On CUDA the
decoder has a grain of its own (its activation is far wider than the denoiser's) and the chunk
follows the device's free memory (plan_chunks); on the CPU one grain and one budget serve both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from .. import backend
from .. import distributed
from .samplers import as_scheduler
from .seeds import model_seed
from .schedulers import DDPMScheduler

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
    op = scheduler.step_op  # None: a diffusers scheduler, whose steps run its own torch code
    return op is not None and backend.choose(op, torch.device(device)) == "triton"


def step_timestep(scheduler: DDPMScheduler, t: int, tt: torch.Tensor):
    """What scheduler.step takes as the timestep: DDIM's and the few-step solvers' coefficients are
    host floats, so they take the host int (reading tt would sync the host every step); DDPM
    gathers per row from tt."""
    return t if scheduler.host_timestep else tt


def denoise_step(denoiser: nn.Module, scheduler: DDPMScheduler, x: torch.Tensor, t: int, tt: torch.Tensor,
                 i: int, grain: int, per_row: tuple = (), *, seed, row_offset) -> torch.Tensor:
    """One reverse step with in-kernel noise, as the CUDA path runs it (captured or not): the
    denoiser on `grain`-row micro-batches, then the fused step drawing step i's noise from (seed,
    i, row_offset + row). seed and row_offset may be ints or one-element int64 device tensors.
    No host sync, no host-to-device copy, no RNG state: tests/test_sample.py checks that."""
    eps = in_grains(denoiser, grain, x, tt, *per_row)
    return scheduler.step(eps, step_timestep(scheduler, t, tt), x, seed=seed, seed_offset=i,
                          row_offset=row_offset).prev_sample


def sample_latents(denoiser: nn.Module, scheduler: DDPMScheduler, n: int, latent_shape: tuple[int, ...],
                   device, generator: torch.Generator | None = None, progress: bool = False, *,
                   seed: int | None = None, start: int = 0, grain: int | None = None,
                   cond: torch.Tensor | None = None) -> torch.Tensor:
    """Run the reverse process for n samples at once; returns (n, *latent_shape) in [-1, 1].
    cond (n, ...): a per-sample condition, passed to the denoiser as its third argument.

    With `seed`, the samples are models start..start+n-1 of that seed's sequence, the denoiser run
    on `grain`-row micro-batches (see the module docstring; start must be a multiple of grain);
    without it, noise comes from `generator` and the denoiser sees the batch as a whole.
    scheduler: one of pdiff_fast's (make_scheduler) or a diffusers scheduler object."""
    scheduler = as_scheduler(scheduler)
    steps = scheduler.timesteps()
    noise = None
    fused = seed is not None and _fused_step_noise(scheduler, device)
    if seed is None:
        x = torch.randn((n, *latent_shape), device=device, generator=generator)
    elif fused:
        x = model_noise(seed, start, n, 1, latent_shape, device)[0]
    else:
        noise = model_noise(seed, start, n, 1 + len(steps), latent_shape, device)  # (1 + steps, n, ...)
        x = noise[0]
    grain = grain or default_grain(device)
    per_row = () if cond is None else (cond,)
    for i, t in enumerate(tqdm(steps, desc=f"sample {n}", disable=not progress, leave=False)):
        tt = torch.full((n,), t, device=device, dtype=torch.long)
        if fused:
            x = denoise_step(denoiser, scheduler, x, t, tt, i, grain, per_row, seed=seed, row_offset=start)
            continue
        step_t = step_timestep(scheduler, t, tt)
        if seed is None:
            eps = denoiser(x, tt, *per_row)
            x = scheduler.step(eps, step_t, x, generator=generator).prev_sample
        else:
            eps = in_grains(denoiser, grain, x, tt, *per_row)
            x = scheduler.step(eps, step_t, x, noise=noise[1 + i], seed=seed, seed_offset=i,
                               row_offset=start).prev_sample
    return x


# torch.no_grad() applied as a call, not with the decorator syntax (the same wrapper): mutmut leaves
# decorated functions unmutated (tests/mutation)
sample_latents = torch.no_grad()(sample_latents)


def graph_loop(denoiser: nn.Module, scheduler: DDPMScheduler, n: int, device, grain: int,
               seed: torch.Tensor, row_offset: torch.Tensor):
    """The reverse process as GraphedLatentSampler captures it: run(x, indices=None) applies the
    steps at `indices` of the schedule (all by default) with the noise of the device tensors seed
    and row_offset. The timestep tensors are made here, once, outside any capture."""
    timesteps = scheduler.timesteps()
    tts = [torch.full((n,), t, device=device, dtype=torch.long) for t in timesteps]

    def run(x: torch.Tensor, indices=None) -> torch.Tensor:
        for i in range(len(timesteps)) if indices is None else indices:
            x = denoise_step(denoiser, scheduler, x, timesteps[i], tts[i], i, grain, seed=seed, row_offset=row_offset)
        return x

    return run


class GraphedLatentSampler:
    """The whole reverse process for a fixed batch, captured once as a CUDA graph and replayed
    (CUDA, with the Triton step): noise is drawn inside the fused step kernel from seed and
    row-offset tensors that are rewritten before each replay, so one replay samples the next
    chunk of a seed's model sequence with no host work per step. The denoiser runs on `grain`-row
    micro-batches as in the uncaptured path, so both give the same models.

    Warm-up (compiling the kernels, cuBLAS/cuDNN workspaces) runs the first two steps and the last
    only: every other step launches the same kernel specialisations as the second (the first
    step of a multistep solver has no second-order term, the last draws no noise), and the
    timestep is a tensor or a float, never a specialised int."""

    def __init__(self, denoiser: nn.Module, scheduler: DDPMScheduler, n: int, latent_shape, device,
                 grain: int | None = None):
        graphs = backend.load_triton_op("sample_graph")
        if isinstance(graphs, Exception):
            raise RuntimeError(f"CUDA-graph sampling needs Triton ({graphs})")
        if not _fused_step_noise(scheduler, device):
            raise RuntimeError("CUDA-graph sampling needs the Triton step op (in-kernel noise); "
                               "the backend selection runs it on torch here")
        self.seed = torch.zeros(1, dtype=torch.int64, device=device)
        self.row_offset = torch.zeros(1, dtype=torch.int64, device=device)
        run = graph_loop(denoiser, scheduler, n, device, grain or default_grain(device), self.seed, self.row_offset)
        last = len(scheduler.timesteps()) - 1
        warm = sorted({0, min(1, last), last})
        example = torch.zeros((n, *latent_shape), device=device)
        self.graphed = graphs.GraphedSampler(run, example, seed=self.seed, row_offset=self.row_offset,
                                             warmup=lambda x: run(x, warm))
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


@dataclass(frozen=True)
class ChunkPlan:
    """How generate() splits its models: `chunk` latents sampled per loop, the denoiser run on
    `grain`-row micro-batches, the decoder on `decode_grain`-row ones. The grains are part of the
    result (batched convolutions round by batch size) and follow from the arguments and the memory
    budget alone; the chunk, a multiple of both grains, never changes a result, so on CUDA it may
    follow the device's free memory."""

    chunk: int
    grain: int
    decode_grain: int


def _pow2_floor(x: int) -> int:
    return 1 << (max(1, int(x)).bit_length() - 1)


def device_free_bytes(device) -> int:
    """Bytes torch can still allocate on a CUDA device: the driver's free memory plus what the
    caching allocator holds unused."""
    free, _ = torch.cuda.mem_get_info(device)
    return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)


def plan_chunks(n: int, latent_numel: int, in_dim: int, device, budget_bytes: int, *, chunk_size: int | None = None,
                grain: int | None = None, noise_draws: int = 0, decode_channels: int = 64,
                denoiser_width: int = 512, free_bytes: int | None = None) -> ChunkPlan:
    """The ChunkPlan of generate(); free_bytes: the CUDA device's free memory (queried when None).

    CPU: one budget sizes sampling and decoding together (chunk_size_for); the grain is the default
    (256) or the largest power of two the budget fits, if fewer. CUDA: the denoiser grain (default
    1024) and the decoder grain are sized apart, each by its own activation within the budget, and
    the chunk holds all n latents when half the free memory fits them (the denoiser's activation
    at the latent size is tiny, so N = 1000 is one chunk: one launch per op per step, one graph).
    An explicit chunk_size or grain applies to both networks."""
    device = torch.device(device)
    if chunk_size is not None:
        grain = grain or default_grain(device)
        return ChunkPlan(max(1, chunk_size // grain) * grain, grain, grain)
    if device.type != "cuda":
        fits = chunk_size_for(latent_numel, in_dim, budget_bytes, denoiser_width, noise_draws,
                              decode_channels=decode_channels)
        grain = grain or min(default_grain(device), _pow2_floor(fits))
        return ChunkPlan(max(1, fits // grain) * grain, grain, grain)
    denoise_row = 4 * 8 * latent_numel * denoiser_width  # activation bytes per row, as chunk_size_for
    decode_row = 4 * 8 * in_dim * decode_channels
    if grain is None:
        grain = min(default_grain(device), _pow2_floor(budget_bytes // denoise_row))
        decode_grain = min(default_grain(device), _pow2_floor(budget_bytes // decode_row))
    else:
        decode_grain = grain
    unit = math.lcm(grain, decode_grain)
    free = device_free_bytes(device) if free_bytes is None else free_bytes
    # per sampled row: x, eps, the step's outputs and the padded copies (8 latents), the pre-drawn
    # noise on the torch path, and the decoded row; the networks' activations are per grain
    per_row = 4 * latent_numel * (8 + noise_draws) + 4 * in_dim
    room = free // 2 - grain * denoise_row - decode_grain * decode_row  # half: allocator slack, other work
    rows = max(unit, room // per_row // unit * unit)
    return ChunkPlan(min(rows, -(-n // unit) * unit), grain, decode_grain)


def use_cuda_graph(cuda_graph, scheduler: DDPMScheduler, device, cond=None) -> bool:
    """Whether generate() captures its loop: cuda_graph True / False forces it on / off; "auto"
    turns it on for CUDA with the Triton DDPM step and no condition (a 1000-step loop, launch bound;
    the few-step samplers run a few dozen steps, not worth a capture)."""
    if cuda_graph == "auto":
        return (torch.device(device).type == "cuda" and cond is None
                and not scheduler.host_timestep and _fused_step_noise(scheduler, device))
    if isinstance(cuda_graph, bool):
        return cuda_graph
    raise ValueError(f"generate: cuda_graph must be True, False or 'auto', got {cuda_graph!r}")


def generate(autoencoder: nn.Module, denoiser: nn.Module, scheduler: DDPMScheduler, n: int = 200, *,
             device=None, seed: int | None = 0, memory_budget_bytes: int = 1 << 30, chunk_size: int | None = None,
             cuda_graph: bool | str = "auto", progress: bool = True, grain: int | None = None,
             shard: bool = False, cond: torch.Tensor | None = None) -> torch.Tensor:
    """Sample n parameter vectors: latents by diffusion, then the autoencoder's decoder. Returns (n, D).

    The same seed (and grain) gives the same n models whatever the chunk size or memory budget
    (seed=None draws one from torch's global RNG). Chunks: see plan_chunks (on CUDA, all n
    latents in one chunk when the device's memory allows; the decoder in grains of its own).
    cuda_graph: "auto" captures the whole loop once and replays it on CUDA with the Triton DDPM
    step and no condition; True forces it (CUDA, Triton step, DDPM or DDIM); False never. The
    captured loop gives the same models as the uncaptured one.

    shard=True, in a process group (pdiff_fast.distributed): each rank samples its own whole
    grains of the n models and every rank returns all n, the same models as one process.

    cond (n, ...): one condition per model (a task embedding: pdiff_fast.tasks.conditional), passed to
    the denoiser with its rows; model i's result depends on cond[i] alone.

    scheduler: one of pdiff_fast's (make_scheduler: "ddpm", "ddim", "dpm++2m", "dpm++2m-sde",
    "euler-a") or a diffusers scheduler object (set_timesteps called), run as it is.
    """
    scheduler = as_scheduler(scheduler)
    if n < 1:
        raise ValueError(f"generate: the number of samples must be at least 1, got {n}")
    if cond is not None and cond.shape[0] != n:
        raise ValueError(f"generate: cond needs one row per model ({n}), got {tuple(cond.shape)}")
    if cond is not None and cuda_graph is True:
        raise ValueError("generate: cuda_graph=True does not take a condition; sample conditioned models without it")
    device = torch.device(device or next(denoiser.parameters()).device)
    if cuda_graph is True and device.type != "cuda":
        raise ValueError("cuda_graph=True needs a CUDA device")
    graph = use_cuda_graph(cuda_graph, scheduler, device, cond)
    latent_shape = autoencoder.latent_shape()
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    draws = 0 if (graph or _fused_step_noise(scheduler, device)) else scheduler.noise_draws()
    plan = plan_chunks(n, int(torch.Size(latent_shape).numel()), autoencoder.in_dim, device, memory_budget_bytes,
                       chunk_size=chunk_size, grain=grain, noise_draws=draws,
                       decode_channels=getattr(autoencoder, "decode_channels", 64))
    autoencoder.eval(), denoiser.eval()
    unit = math.lcm(plan.grain, plan.decode_grain)
    first, stop = distributed.shard(n, unit) if shard else (0, n)
    sampler = None
    out = [torch.empty((0, autoencoder.in_dim), device=device)]  # a rank may get no grain
    for start in tqdm(range(first, stop, plan.chunk), desc="generate", disable=not progress):
        m = min(plan.chunk, stop - start)
        if graph:
            # one graph per call: the first chunk's size; a shorter last chunk samples that many
            # rows too (models past the end cost time, not results: noise is per global row)
            sampler = sampler or GraphedLatentSampler(denoiser, scheduler, m, latent_shape, device, plan.grain)
            z = sampler.sample(seed, start)[:m]
        else:
            c = None if cond is None else cond[start:start + m].to(device)
            z = sample_latents(denoiser, scheduler, m, latent_shape, device, seed=seed, start=start,
                               grain=plan.grain, cond=c)
        out.append(in_grains(autoencoder.decode, plan.decode_grain, z))
    flat = torch.cat(out)
    return distributed.gather_rows(flat, n, unit) if shard else flat  # (n, D)


generate = torch.no_grad()(generate)  # as sample_latents

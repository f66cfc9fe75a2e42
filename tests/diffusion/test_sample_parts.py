"""pdiff_fast.diffusion.sample's parts, value by value, with a tiny denoiser, autoencoder and
scheduler written here (a step that is 0.5 x + eps + its noise), so that what each part hands the
next is checked: the per-model noise streams, the padding of micro-batches, the timesteps and noise
each step gets, the chunk plans' arithmetic (CPU and CUDA, free memory given), the CUDA-graph
switch and sampler with the Triton module faked, and generate's checks, defaults, chunks, shards
and conditions. Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md); test_sample.py runs the real networks and schedulers."""
import types

import pytest
import torch
from torch import nn

from pdiff_fast import backend, distributed
from pdiff_fast.diffusion import sample
from pdiff_fast.diffusion.sample import (ChunkPlan, GraphedLatentSampler, _fused_step_noise, _pow2_floor,
                                         chunk_size_for, default_grain, denoise_step, device_free_bytes, generate,
                                         graph_loop, in_grains, model_noise, plan_chunks, sample_latents,
                                         step_timestep, use_cuda_graph)
from pdiff_fast.diffusion.schedulers import DDIMScheduler, DDPMScheduler, SchedulerOutput
from pdiff_fast.diffusion.seeds import model_seed

CUDA = torch.device("cuda")  # plan_chunks and use_cuda_graph only read the device type


class Rec(DDPMScheduler):
    """Timesteps 7, 3, 0; a step x -> 0.5 x + eps (+ the noise handed or drawn from the generator),
    each call's arguments kept."""

    def __init__(self, ts=(7, 3, 0), host=False, op="ddpm_step"):
        super().__init__(num_train_timesteps=10)
        self.ts, self.host_timestep, self.step_op, self.calls = list(ts), host, op, []

    def timesteps(self):
        return list(self.ts)

    def step(self, eps, t, x, **kw):
        self.calls.append({"eps": eps.clone(), "t": t, "x": x.clone(), **kw})
        prev = 0.5 * x + eps
        if kw.get("noise") is not None:
            prev = prev + kw["noise"]
        elif kw.get("generator") is not None:
            prev = prev + torch.randn(x.shape, generator=kw["generator"])
        return SchedulerOutput(prev, x)


class Den(nn.Module):
    """eps = w x + t / 100 (+ the row sum of the condition); the batch sizes it sees are kept."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.25))
        self.rows, self.tts = [], []

    def forward(self, x, tt, *cond):
        self.rows.append(x.shape[0])
        self.tts.append(tt.clone())
        out = self.w * x + 0.01 * tt.float().view(-1, 1, 1)
        for c in cond:
            out = out + c.sum(1).view(-1, 1, 1)
        return out


class AE(nn.Module):
    """Latents (2, 3); decode: the first 5 latent values doubled plus the sixth."""

    in_dim = 5

    def __init__(self, decode_channels=None):
        super().__init__()
        self.v = nn.Parameter(torch.zeros(1))
        self.rows = []
        if decode_channels is not None:
            self.decode_channels = decode_channels

    def latent_shape(self):
        return (2, 3)

    def decode(self, z):
        self.rows.append(z.shape[0])
        f = z.flatten(1)
        return 2 * f[:, :5] + f[:, 5:6]


def den_of(x, tt, cond=None):
    out = 0.25 * x + 0.01 * tt.float().view(-1, 1, 1)
    return out if cond is None else out + cond.sum(1).view(-1, 1, 1)


# --- noise streams, grains, micro-batches ---------------------------------------------------------

def test_model_noise_is_each_models_own_stream_drawn_whole():
    z = model_noise(5, 3, 2, 4, (2, 3), "cpu")
    assert z.shape == (4, 2, 2, 3)
    for j in range(2):
        g = torch.Generator().manual_seed(model_seed(5, 3 + j))
        assert torch.equal(z[:, j], torch.randn((4, 2, 3), generator=g))


def test_default_grain_is_1024_on_cuda_and_256_elsewhere():
    assert default_grain("cuda") == 1024 and default_grain(torch.device("cuda", 1)) == 1024
    assert default_grain("cpu") == 256 and default_grain(torch.device("meta")) == 256


def test_in_grains_pads_with_row_0_and_cuts_back():
    calls = []

    def fn(x, *rows):
        calls.append((x.clone(), [r.clone() for r in rows]))
        return 10 * x + sum(rows)

    x, r = torch.arange(5.0).view(5, 1) + 1, torch.arange(5.0).view(5, 1) * 100
    out = in_grains(fn, 2, x, r)
    assert torch.equal(out, 10 * x + r)
    assert [c[0].shape[0] for c in calls] == [2, 2, 2]
    assert torch.equal(calls[2][0], torch.tensor([[5.0], [1.0]])) and torch.equal(calls[2][1][0], torch.tensor([[400.0], [0.0]]))
    calls.clear()
    assert torch.equal(in_grains(fn, 4, x[:1], r[:1]), 10 * x[:1] + r[:1])  # one padded call
    assert len(calls) == 1 and torch.equal(calls[0][0], x[:1].expand(4, 1))
    calls.clear()
    assert torch.equal(in_grains(fn, 2, x[:4]), 10 * x[:4]) and [c[0].shape[0] for c in calls] == [2, 2]
    calls.clear()
    assert torch.equal(in_grains(fn, 3, x[:3]), 10 * x[:3]) and len(calls) == 1 and calls[0][1] == []


def test_fused_step_noise_asks_the_backend_for_the_step_op(monkeypatch):
    assert not _fused_step_noise(Rec(op=None), "cpu")  # a diffusers scheduler: its own torch code
    asked = []
    for answer, fused in (("triton", True), ("torch", False), ("ext", False)):
        monkeypatch.setattr(backend, "choose", lambda op, dev, answer=answer: asked.append((op, dev)) or answer)
        assert _fused_step_noise(Rec(op="ddim_step"), "cpu") is fused
    assert asked == [("ddim_step", torch.device("cpu"))] * 3
    monkeypatch.undo()
    assert not _fused_step_noise(DDIMScheduler(3), "cpu")  # auto never runs the interpreter
    with backend.use_backend("triton"):
        assert _fused_step_noise(DDIMScheduler(3), "cpu")


def test_step_timestep_is_the_host_int_for_host_timestep_schedulers():
    tt = torch.full((2,), 7)
    assert step_timestep(Rec(host=True), 7, tt) == 7 and step_timestep(Rec(host=False), 7, tt) is tt


def test_denoise_step_hands_the_step_its_noise_coordinates():
    s, den = Rec(), Den()
    x = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0))
    tt = torch.full((3,), 7)
    seed, row = torch.tensor([4]), torch.tensor([2])
    out = denoise_step(den, s, x, 7, tt, 5, 2, seed=seed, row_offset=row)
    assert torch.allclose(out, 0.5 * x + den_of(x, tt)) and den.rows == [2, 2]
    (c,) = s.calls
    assert c["t"] is tt and c["seed"] is seed and c["row_offset"] is row and c["seed_offset"] == 5
    assert set(c) == {"eps", "t", "x", "seed", "seed_offset", "row_offset"}
    s2 = Rec(host=True)
    cond = torch.ones(3, 2)
    out = denoise_step(den, s2, x, 7, tt, 1, 4, (cond,), seed=1, row_offset=0)
    assert s2.calls[0]["t"] == 7 and torch.allclose(out, 0.5 * x + den_of(x, tt, cond))


# --- the sampling loop --------------------------------------------------------------------------

def loop(x, ts, cond=None, noise=None, generator=None):
    for i, t in enumerate(ts):
        tt = torch.full((x.shape[0],), t, dtype=torch.long)
        x = 0.5 * x + den_of(x, tt, cond)
        if noise is not None:
            x = x + noise[1 + i]
        elif generator is not None:
            x = x + torch.randn(x.shape, generator=generator)
    return x


def test_sample_latents_without_a_seed_draws_from_the_generator_on_the_whole_batch():
    s, den = Rec(host=True), Den()
    out = sample_latents(den, s, 3, (2, 3), "cpu", generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 2, 3), generator=g)
    assert torch.allclose(out, loop(x, [7, 3, 0], generator=g))
    assert den.rows == [3, 3, 3] and [c["t"] for c in s.calls] == [7, 3, 0]
    assert all(set(c) == {"eps", "t", "x", "generator"} for c in s.calls)
    assert [tt.tolist() for tt in den.tts] == [[7] * 3, [3] * 3, [0] * 3] and den.tts[0].dtype == torch.long
    assert not out.requires_grad  # no autograd graph kept
    cond = torch.arange(6.0).view(3, 2) / 10
    out = sample_latents(den, Rec(host=True), 3, (2, 3), "cpu", generator=torch.Generator().manual_seed(1), cond=cond)
    g = torch.Generator().manual_seed(1)
    x = torch.randn((3, 2, 3), generator=g)
    assert torch.allclose(out, loop(x, [7, 3, 0], cond=cond, generator=g))
    s = Rec(ts=(7.0, 3.0, 0.0), host=False)  # whatever the schedule's number type, the timesteps are long
    sample_latents(den, s, 3, (2, 3), "cpu", generator=torch.Generator().manual_seed(1))
    assert torch.equal(s.calls[0]["t"], torch.full((3,), 7)) and s.calls[0]["t"].dtype == torch.long


def test_sample_latents_with_a_seed_uses_the_models_streams_and_grains():
    s, den = Rec(), Den()
    cond = torch.arange(6.0).view(3, 2) / 10
    out = sample_latents(den, s, 3, (2, 3), "cpu", seed=9, start=4, grain=2, cond=cond)
    noise = model_noise(9, 4, 3, 4, (2, 3), "cpu")
    assert torch.allclose(out, loop(noise[0], [7, 3, 0], cond=cond, noise=noise))
    assert den.rows == [2, 2] * 3
    for i, c in enumerate(s.calls):
        assert torch.equal(c["noise"], noise[1 + i]) and c["seed"] == 9 and c["seed_offset"] == i
        assert c["row_offset"] == 4 and torch.equal(c["t"], torch.full((3,), [7, 3, 0][i]))
    den.rows.clear()
    out = sample_latents(den, Rec(), 3, (2, 3), "cpu", seed=9)  # the default grain: 256 rows a call, start 0
    assert den.rows == [256] * 3
    noise = model_noise(9, 0, 3, 4, (2, 3), "cpu")
    assert torch.allclose(out, loop(noise[0], [7, 3, 0], noise=noise))


def test_sample_latents_fused_draws_only_the_first_latent(monkeypatch):
    monkeypatch.setattr(sample, "_fused_step_noise", lambda scheduler, device: True)
    s, den = Rec(host=True), Den()
    cond = torch.arange(6.0).view(3, 2) / 10
    out = sample_latents(den, s, 3, (2, 3), "cpu", seed=9, start=4, grain=2, cond=cond)
    x = model_noise(9, 4, 3, 1, (2, 3), "cpu")[0]
    assert torch.allclose(out, loop(x, [7, 3, 0], cond=cond))  # no noise tensor: the kernel draws it
    assert [(c["t"], c["seed"], c["seed_offset"], c["row_offset"]) for c in s.calls] == [(7, 9, 0, 4), (3, 9, 1, 4), (0, 9, 2, 4)]
    assert all("noise" not in c for c in s.calls) and den.rows == [2, 2] * 3


def test_sample_latents_progress_bar(monkeypatch):
    seen = []
    monkeypatch.setattr(sample, "tqdm", lambda it, **kw: seen.append(kw) or it)
    sample_latents(Den(), Rec(), 3, (2, 3), "cpu", seed=1, grain=2)
    sample_latents(Den(), Rec(), 2, (2, 3), "cpu", seed=1, grain=2, progress=True)
    assert seen == [{"desc": "sample 3", "disable": True, "leave": False}, {"desc": "sample 2", "disable": False, "leave": False}]


def test_graph_loop_runs_the_steps_asked_for():
    s, den = Rec(), Den()
    seed, row = torch.tensor([3]), torch.tensor([1])
    run = graph_loop(den, s, 3, "cpu", 2, seed, row)
    x = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(run(x), loop(x, [7, 3, 0]))
    assert [c["seed_offset"] for c in s.calls] == [0, 1, 2] and all(c["seed"] is seed and c["row_offset"] is row for c in s.calls)
    assert [c["t"].tolist() for c in s.calls] == [[7] * 3, [3] * 3, [0] * 3] and den.rows == [2, 2] * 3
    first = list(s.calls)
    s.calls.clear()
    assert torch.allclose(run(x, [1]), loop(x, [3]))
    assert [c["seed_offset"] for c in s.calls] == [1]
    assert s.calls[0]["t"] is first[1]["t"]  # the timestep tensors are made once
    s = Rec(ts=(7.0, 3.0, 0.0), host=True)  # a host-timestep step takes the host number; the tensors are long
    graph_loop(den, s, 3, "cpu", 2, seed, row)(x)
    assert [c["t"] for c in s.calls] == [7.0, 3.0, 0.0] and den.tts[-1].dtype == torch.long
    assert torch.equal(den.tts[-1], torch.zeros(2, dtype=torch.long))  # the last grain of step 0
    s = Rec(ts=(7.0, 3.0, 0.0))
    graph_loop(den, s, 3, "cpu", 2, seed, row)(x)
    assert all(c["t"].dtype == torch.long for c in s.calls)


class FakeGraphs:
    def __init__(self):
        self.made, self.sampled = [], []
        outer = self

        class GraphedSampler:
            def __init__(self, run, example, *, seed, row_offset, warmup):
                outer.made.append(dict(run=run, example=example, seed=seed, row_offset=row_offset, warmup=warmup))

            def sample(self, x, *, seed, row_offset):
                outer.sampled.append((x, seed, row_offset))
                return x + 1

        self.GraphedSampler = GraphedSampler


def test_graphed_sampler_needs_triton_and_its_step(monkeypatch):
    asked = []
    monkeypatch.setattr(backend, "load_triton_op", lambda op: asked.append(op) or ImportError("no triton"))
    with pytest.raises(RuntimeError, match=r"^CUDA-graph sampling needs Triton \(no triton\)$"):
        GraphedLatentSampler(Den(), Rec(), 2, (2, 3), "cpu")
    assert asked == ["sample_graph"]
    monkeypatch.setattr(backend, "load_triton_op", lambda op: FakeGraphs())
    monkeypatch.setattr(sample, "_fused_step_noise", lambda scheduler, device: False)
    with pytest.raises(RuntimeError, match=r"^CUDA-graph sampling needs the Triton step op \(in-kernel noise\); "
                                           r"the backend selection runs it on torch here$"):
        GraphedLatentSampler(Den(), Rec(), 2, (2, 3), "cpu")


@pytest.mark.parametrize("ts, warm", [((7, 3, 0), [0, 1, 2]), ((9, 7, 5, 3, 0), [0, 1, 4]), ((5,), [0])])
def test_graphed_sampler_captures_the_loop_and_warms_up_on_three_steps(monkeypatch, ts, warm):
    graphs = FakeGraphs()
    monkeypatch.setattr(backend, "load_triton_op", lambda op: graphs)
    s, den = Rec(ts), Den()
    monkeypatch.setattr(sample, "_fused_step_noise", lambda scheduler, device: scheduler is s)
    g = GraphedLatentSampler(den, s, 3, (2, 3), "cpu", grain=2)
    (made,) = graphs.made
    assert made["seed"] is g.seed and made["row_offset"] is g.row_offset
    for t in (g.seed, g.row_offset):
        assert t.dtype == torch.int64 and torch.equal(t, torch.zeros(1, dtype=torch.int64))
    assert torch.equal(made["example"], torch.zeros(3, 2, 3)) and g.shape == (3, 2, 3) and g.device == "cpu"
    x = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(made["warmup"](x), loop(x, [ts[i] for i in warm]))
    assert [c["seed_offset"] for c in s.calls] == warm
    assert all(c["seed"] is g.seed and c["row_offset"] is g.row_offset for c in s.calls)
    assert den.rows == [2, 2] * len(warm)
    s.calls.clear()
    assert torch.allclose(made["run"](x), loop(x, list(ts))) and len(s.calls) == len(ts)
    out = g.sample(6, 3)
    x0 = model_noise(6, 3, 3, 1, (2, 3), "cpu")[0]
    ((xs, seed, row),) = graphs.sampled
    assert torch.equal(xs, x0) and (seed, row) == (6, 3) and torch.equal(out, x0 + 1)
    assert g.sample(6).shape == (3, 2, 3) and graphs.sampled[1][2] == 0
    den.rows.clear()
    GraphedLatentSampler(den, s, 3, (2, 3), "cpu")
    graphs.made[-1]["run"](x)
    assert den.rows == [256] * len(ts)  # the default grain


# --- chunk plans ----------------------------------------------------------------------------------

def test_chunk_size_for_by_hand():
    # widest = max(10 * 2, 3 * 4) = 20; 4 * 8 * 20 + 4 * 5 * 10 = 840 bytes; 10**6 // 840 = 1190; 396 grains of 3
    assert chunk_size_for(10, 3, 10**6, denoiser_width=2, noise_draws=5, grain=3, decode_channels=4) == 1188
    assert chunk_size_for(2, 100, 10**6, denoiser_width=3, decode_channels=5) == 62  # the decoder's 500 is wider
    assert chunk_size_for(2, 100, 1, grain=4) == 4  # never below one grain
    assert chunk_size_for(1, 1, 1 << 20) == 64  # the denoiser's default width: 512
    assert chunk_size_for(1, 16, 1 << 20, denoiser_width=1) == 32  # the decoder's default 64 channels
    assert chunk_size_for(12, 2048, 1 << 30) == 256


def test_pow2_floor():
    assert [_pow2_floor(x) for x in (0, -5, 1, 2, 2.9, 5, 8, 1023, 1024)] == [1, 1, 1, 2, 2, 4, 8, 512, 1024]


def test_device_free_bytes_adds_what_the_allocator_holds_unused(monkeypatch):
    asked = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: asked.append(d) or (100, 999))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d: asked.append(d) or 30)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d: asked.append(d) or 10)
    assert device_free_bytes(CUDA) == 120 and asked == [CUDA] * 3


def test_plan_with_an_explicit_chunk_size():
    assert plan_chunks(5, 1, 1, "cpu", 1, chunk_size=600) == ChunkPlan(512, 256, 256)
    assert plan_chunks(5, 1, 1, "cpu", 1, chunk_size=100) == ChunkPlan(256, 256, 256)
    assert plan_chunks(5, 1, 1, "cpu", 1, chunk_size=10, grain=3) == ChunkPlan(9, 3, 3)
    assert plan_chunks(5, 1, 1, CUDA, 1, chunk_size=3000) == ChunkPlan(2048, 1024, 1024)


def test_cpu_plan_by_hand():
    # chunk_size_for: 1190 rows fit; the grain min(256, 1024)
    assert plan_chunks(1000, 10, 3, "cpu", 10**6, denoiser_width=2, noise_draws=5, decode_channels=4) == ChunkPlan(1024, 256, 256)
    # 119 rows fit: a grain of 64, one of them
    assert plan_chunks(1000, 10, 3, "cpu", 10**5, denoiser_width=2, noise_draws=5, decode_channels=4) == ChunkPlan(64, 64, 64)
    assert plan_chunks(1000, 10, 3, "cpu", 10**5, grain=5, denoiser_width=2, noise_draws=5, decode_channels=4) == ChunkPlan(115, 5, 5)
    assert plan_chunks(1, 1, 1, "cpu", 1 << 20) == ChunkPlan(64, 64, 64)  # width 512: 64 rows
    assert plan_chunks(1, 1, 16, "cpu", 1 << 20) == ChunkPlan(32, 32, 32)  # 64 decoder channels: 32 rows
    assert plan_chunks(1, 1, 1, "cpu", 1) == ChunkPlan(1, 1, 1)


def test_cuda_plan_by_hand(monkeypatch):
    kw = dict(denoiser_width=4, decode_channels=5, free_bytes=10**6)
    # denoiser rows 256 bytes: a grain of pow2(10**4 // 256 = 39) = 32; decoder rows 480: pow2(20) = 16;
    # per row 4 * 2 * (8 + 1) + 4 * 3 = 84 bytes; room 500000 - 32 * 256 - 16 * 480 = 484128: 5763 rows, 5760 in grains
    assert plan_chunks(1000, 2, 3, CUDA, 10**4, noise_draws=1, **kw) == ChunkPlan(1024, 32, 16)  # all n, in grains
    assert plan_chunks(10**6, 2, 3, CUDA, 10**4, noise_draws=1, **kw) == ChunkPlan(5760, 32, 16)
    assert plan_chunks(10**6, 2, 3, CUDA, 10**4, **kw) == ChunkPlan(6368, 32, 16)  # no noise: 76 bytes a row
    assert plan_chunks(10**6, 2, 3, CUDA, 10**4, noise_draws=1, **{**kw, "free_bytes": 10**4}) == ChunkPlan(32, 32, 16)
    # an explicit grain for both: room 494112, 5882 rows, 5880 in grains of 8; n = 1000 is whole grains
    assert plan_chunks(1000, 2, 3, CUDA, 10**4, noise_draws=1, grain=8, **kw) == ChunkPlan(1000, 8, 8)
    assert plan_chunks(10**6, 2, 3, CUDA, 10**4, noise_draws=1, grain=8, **kw) == ChunkPlan(5880, 8, 8)
    # the defaults: denoiser rows 32 * 512, decoder rows 32 * 64
    assert plan_chunks(10, 1, 1, CUDA, 1 << 20, free_bytes=1 << 30) == ChunkPlan(512, 64, 512)
    assert plan_chunks(10, 1, 1, CUDA, 1 << 40, free_bytes=1 << 30) == ChunkPlan(1024, 1024, 1024)
    monkeypatch.setattr(sample, "device_free_bytes", lambda device: 10**4)  # queried when not given
    assert plan_chunks(10**6, 2, 3, CUDA, 10**4, noise_draws=1, denoiser_width=4, decode_channels=5) == ChunkPlan(32, 32, 16)


def test_plans_are_whole_numbers():
    """generate steps through the models with range(first, stop, plan.chunk): no float may enter."""
    cases = [plan_chunks(n, 2, 3, CUDA, 10**4, noise_draws=1, denoiser_width=4, decode_channels=5, free_bytes=free)
             for n in (10, 10**6) for free in (10**4, 10**6 + 1, 1 << 30)]
    cases += [plan_chunks(1000, 10, 3, "cpu", b, denoiser_width=2, noise_draws=5, decode_channels=4) for b in (1, 10**5)]
    for plan in cases:
        assert all(type(v) is int for v in (plan.chunk, plan.grain, plan.decode_grain)), plan


def test_use_cuda_graph(monkeypatch):
    monkeypatch.setattr(sample, "_fused_step_noise", lambda scheduler, device: isinstance(scheduler, Rec))
    assert use_cuda_graph("auto", Rec(), CUDA) is True and use_cuda_graph("auto", Rec(), "cuda") is True
    assert use_cuda_graph("auto", Rec(), "cpu") is False
    assert use_cuda_graph("auto", Rec(host=True), CUDA) is False
    assert use_cuda_graph("auto", Rec(), CUDA, cond=torch.zeros(2)) is False
    assert use_cuda_graph(True, Rec(host=True), "cpu") is True and use_cuda_graph(False, Rec(), CUDA) is False
    monkeypatch.setattr(sample, "_fused_step_noise", lambda scheduler, device: False)
    assert use_cuda_graph("auto", Rec(), CUDA) is False
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match=rf"^generate: cuda_graph must be True, False or 'auto', got {bad!r}$"):
            use_cuda_graph(bad, Rec(), CUDA)


# --- generate -------------------------------------------------------------------------------------

def expected(n, chunk, seed=0, grain=2, cond=None):
    """What generate should give: each chunk's latents sampled, then decoded."""
    rows = []
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        noise = model_noise(seed, start, m, 4, (2, 3), "cpu")
        c = None if cond is None else cond[start:start + m]
        z = loop(noise[0], [7, 3, 0], cond=c, noise=noise)
        f = z.flatten(1)
        rows.append(2 * f[:, :5] + f[:, 5:6])
    return torch.cat(rows)


def test_generate_checks_its_arguments():
    ae, den, s = AE(), Den(), Rec()
    with pytest.raises(ValueError, match=r"^generate: the number of samples must be at least 1, got 0$"):
        generate(ae, den, s, 0, progress=False)
    with pytest.raises(ValueError, match=r"^generate: cond needs one row per model \(3\), got \(2, 2\)$"):
        generate(ae, den, s, 3, cond=torch.zeros(2, 2), progress=False)
    with pytest.raises(ValueError, match=r"^generate: cuda_graph=True does not take a condition; sample conditioned models without it$"):
        generate(ae, den, s, 3, cond=torch.zeros(3, 2), cuda_graph=True, progress=False)
    with pytest.raises(ValueError, match=r"^cuda_graph=True needs a CUDA device$"):
        generate(ae, den, s, 3, cuda_graph=True, progress=False)
    with pytest.raises(TypeError, match="not a scheduler"):
        generate(ae, den, object(), 3, progress=False)
    assert generate(ae, den, s, 1, progress=False).shape == (1, 5)


class Reached(Exception):
    pass


def test_generate_asks_use_cuda_graph(monkeypatch):
    """On a CUDA device cuda_graph=True passes the checks (use_cuda_graph, stopped here, is next)."""
    asked = []

    def use_cuda_graph(*args):
        asked.append(args)
        raise Reached

    monkeypatch.setattr(sample, "use_cuda_graph", use_cuda_graph)
    ae, den, s = AE(), Den(), Rec()
    for device in ("cuda", "cuda:0"):
        with pytest.raises(Reached):
            generate(ae, den, s, 3, device=device, cuda_graph=True, progress=False)
    cond = torch.zeros(3, 2)
    with pytest.raises(Reached):
        generate(ae, den, s, 3, device="cpu", cond=cond, progress=False)
    assert asked[:2] == [(True, s, torch.device("cuda"), None), (True, s, torch.device("cuda:0"), None)]
    assert asked[2][:3] == ("auto", s, torch.device("cpu")) and asked[2][3] is cond


def test_generate_samples_chunks_and_decodes_them_in_grains():
    ae, den = AE(), Den()
    out = generate(ae, den, Rec(), 7, seed=3, chunk_size=4, grain=2, progress=False)
    assert torch.allclose(out, expected(7, 4, seed=3)) and not out.requires_grad  # no autograd graph kept
    assert ae.rows == [2, 2, 2, 2] and den.rows == [2, 2] * 3 + [2, 2] * 3  # padded: 4 rows, then 3 rows in 2 grains
    cond = torch.arange(14.0).view(7, 2) / 10
    out = generate(ae, den, Rec(), 7, seed=3, chunk_size=4, grain=2, progress=False, cond=cond)
    assert torch.allclose(out, expected(7, 4, seed=3, cond=cond))
    assert not ae.training and not den.training


def test_generate_defaults(monkeypatch):
    plans, bars = [], []
    real_plan = sample.plan_chunks
    monkeypatch.setattr(sample, "plan_chunks", lambda *a, **k: plans.append((a, k)) or real_plan(*a, **k))
    monkeypatch.setattr(sample, "tqdm", lambda it, **kw: bars.append(kw) or it)
    ae, den = AE(), Den()
    out = generate(ae, den, Rec())
    assert out.shape == (200, 5) and torch.allclose(out, expected(200, 256, grain=256))
    ((args, kw),) = plans
    assert args == (200, 6, 5, torch.device("cpu"), 1 << 30)
    assert kw == {"chunk_size": None, "grain": None, "noise_draws": 4, "decode_channels": 64}
    assert bars[0] == {"desc": "generate", "disable": False}
    plans.clear(), bars.clear()
    generate(AE(decode_channels=7), den, Rec(), 3, device="cpu", memory_budget_bytes=12345, chunk_size=2, grain=1,
             progress=False)
    ((args, kw),) = plans
    assert args == (3, 6, 5, torch.device("cpu"), 12345)
    assert kw == {"chunk_size": 2, "grain": 1, "noise_draws": 4, "decode_channels": 7}
    assert bars[0] == {"desc": "generate", "disable": True}


def test_generate_without_a_seed_draws_one_from_torchs_rng():
    ae, den = AE(), Den()
    torch.manual_seed(3)
    seed = int(torch.randint(0, 2**62, (1,)).item())
    torch.manual_seed(3)
    out = generate(ae, den, Rec(), 3, seed=None, grain=2, progress=False)
    assert torch.allclose(out, expected(3, 3, seed=seed))


def test_generate_fused_draws_no_noise_ahead(monkeypatch):
    plans = []
    monkeypatch.setattr(sample, "_fused_step_noise", lambda scheduler, device: True)
    monkeypatch.setattr(sample, "plan_chunks", lambda *a, **k: plans.append(k) or ChunkPlan(4, 2, 2))
    s = Rec()
    generate(AE(), Den(), s, 3, progress=False)
    assert plans[0]["noise_draws"] == 0 and all("noise" not in c for c in s.calls)


def test_generate_with_the_cuda_graph(monkeypatch):
    made, plans = [], []

    class FakeSampler:
        def __init__(self, *args):
            made.append(args)

        def sample(self, seed, start):
            x = model_noise(seed, start, 4, 1, (2, 3), "cpu")[0]
            return x + start

    monkeypatch.setattr(sample, "use_cuda_graph", lambda *a: True)
    monkeypatch.setattr(sample, "GraphedLatentSampler", FakeSampler)
    monkeypatch.setattr(sample, "plan_chunks", lambda *a, **k: plans.append(k) or ChunkPlan(4, 2, 2))
    ae, den, s = AE(), Den(), Rec()
    out = generate(ae, den, s, 7, seed=5, progress=False)
    assert made == [(den, s, 4, (2, 3), torch.device("cpu"), 2)]  # one sampler, the first chunk's size
    z = torch.cat([model_noise(5, 0, 4, 1, (2, 3), "cpu")[0], model_noise(5, 4, 4, 1, (2, 3), "cpu")[0][:3] + 4])
    assert torch.allclose(out, 2 * z.flatten(1)[:, :5] + z.flatten(1)[:, 5:6])
    assert plans[0]["noise_draws"] == 0 and s.calls == []


def test_generate_sharded_samples_its_grains_and_gathers(monkeypatch):
    asked = []
    monkeypatch.setattr(distributed, "shard", lambda n, unit: asked.append(("shard", n, unit)) or (2, 5))
    monkeypatch.setattr(distributed, "gather_rows", lambda t, n, unit: asked.append(("gather", t.clone(), n, unit)) or t * 0 + 1)
    monkeypatch.setattr(sample, "plan_chunks", lambda *a, **k: ChunkPlan(6, 3, 2))
    ae = AE()
    out = generate(ae, Den(), Rec(), 7, seed=3, shard=True, progress=False)
    assert asked[0] == ("shard", 7, 6) and asked[1][2:] == (7, 6) and torch.equal(out, torch.ones(3, 5))
    full = expected(7, 1, seed=3)
    assert torch.allclose(asked[1][1], full[2:5])
    monkeypatch.setattr(distributed, "shard", lambda n, unit: asked.append(("shard", n, unit)) or (5, 5))  # no grain
    asked.clear()
    out = generate(ae, Den(), Rec(), 7, seed=3, shard=True, progress=False)
    assert asked[0] == ("shard", 7, 6) and asked[1][1].shape == (0, 5)
    asked.clear()
    generate(ae, Den(), Rec(), 7, seed=3, progress=False)
    assert asked == []  # not sharded: neither asked

"""Generation is reproducible and independent of chunking: model i's noise depends on (seed, i) only."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from pdiff_fast.nn.autoencoder import small
from pdiff_fast.nn.denoiser import AE_CNN_bottleneck
from pdiff_fast.diffusion.few_step import DPMSolverScheduler, EulerAncestralScheduler
from pdiff_fast.diffusion.schedulers import DDIMScheduler, DDPMScheduler
from pdiff_fast.diffusion.sample import generate, model_noise, model_seed, sample_latents


@pytest.mark.parametrize("scheduler", [DDIMScheduler(num_inference_steps=6, eta=0.5), DDIMScheduler(6),
                                       DDPMScheduler(), DPMSolverScheduler(6), DPMSolverScheduler(6, sde=True),
                                       EulerAncestralScheduler(6)],
                         ids=["ddim-eta", "ddim", "ddpm", "dpm++2m", "dpm++2m-sde", "euler-a"])
def test_chunking_and_memory_budget_do_not_change_the_models(models, scheduler):
    ae, den = models
    if scheduler.host_timestep:
        n, chunks = 11, [2, 4, 12]
    else:
        n, chunks = 5, [2, 6]  # 1000 steps: fewer models
    # Bitwise: the noise is per model, and the networks run on micro-batches of `grain` rows.
    gen = lambda m, **kw: generate(ae, den, scheduler, m, device="cpu", seed=7, grain=2, progress=False, **kw)  # noqa
    runs = [gen(n, chunk_size=c) for c in chunks]
    for r in runs[1:]:
        assert torch.equal(r, runs[0])
    assert torch.equal(gen(n, memory_budget_bytes=1), runs[0])
    assert torch.equal(gen(n + 3, chunk_size=4)[:n], runs[0])  # the first models of a larger set are the same
    other = generate(ae, den, scheduler, n, device="cpu", seed=8, grain=2, progress=False)
    assert not torch.equal(other, runs[0])


def test_seeds_give_different_models_and_the_same_seed_the_same(models):
    ae, den = models
    s = DDIMScheduler(num_inference_steps=4, eta=1.0)
    a = generate(ae, den, s, 4, device="cpu", seed=1, progress=False)
    b = generate(ae, den, s, 4, device="cpu", seed=1, progress=False)
    c = generate(ae, den, s, 4, device="cpu", seed=2, progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert len({tuple(r.tolist()) for r in a}) == 4  # every model its own noise


def test_model_streams_are_independent_and_normal():
    seeds = {model_seed(s, i) for s in range(20) for i in range(50)}
    assert len(seeds) == 1000 and all(0 <= x < 2**63 for x in seeds)
    z = model_noise(3, 0, 200, 11, (2, 5), "cpu")  # (draws, models, 2, 5)
    assert z.shape == (11, 200, 2, 5)
    assert abs(z.mean().item()) < 0.05 and abs(z.std().item() - 1) < 0.05
    assert torch.equal(model_noise(3, 150, 50, 11, (2, 5), "cpu"), z[:, 150:])


@pytest.mark.parametrize("s", [DDIMScheduler(num_inference_steps=3, eta=1.0), DPMSolverScheduler(3, sde=True)],
                         ids=["ddim-eta", "dpm++2m-sde"])
def test_triton_path_is_reproducible_and_chunk_independent(models, s):
    """In-kernel step noise (Triton; its interpreter on CPU) depends on (seed, step, global row) only."""
    from pdiff_fast.backend import use_backend

    ae, den = models
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ae_d, den_d = ae.to(dev), den.to(dev)
    with use_backend("triton"):
        one = generate(ae_d, den_d, s, 5, device=dev, seed=11, chunk_size=6, grain=2, progress=False)
        two = generate(ae_d, den_d, s, 5, device=dev, seed=11, chunk_size=2, grain=2, progress=False)
        other = generate(ae_d, den_d, s, 5, device=dev, seed=12, chunk_size=6, grain=2, progress=False)
    ae.cpu(), den.cpu()
    assert torch.equal(one, two) and not torch.equal(one, other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("scheduler", [DDPMScheduler(), DDIMScheduler(num_inference_steps=20, eta=0.5)],
                         ids=["ddpm", "ddim-eta"])
def test_cuda_graph_sampler_with_the_real_denoiser_equals_the_uncaptured_path(scheduler):
    torch.manual_seed(0)
    ae = small(300).cuda().eval()
    den = AE_CNN_bottleneck(int(torch.Size(ae.latent_shape()).numel()), 1).cuda().eval()  # reference widths
    from pdiff_fast.backend import use_backend

    gen = lambda chunk, graph: generate(ae, den, scheduler, 7, device="cuda", seed=5, chunk_size=chunk, grain=4,  # noqa
                                        cuda_graph=graph, progress=False)
    with use_backend("triton"):
        plain = gen(4, False)
        graphed = gen(4, True)  # chunks of 4: one graph, the last chunk sampled at 4 rows and cut
        again = gen(8, True)  # one chunk of 7 rows, the denoiser on two 4-row calls
        auto = gen(8, "auto")  # DDPM: captured; DDIM: not
    torch.testing.assert_close(graphed, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(auto, plain, rtol=1e-4, atol=1e-5)


# --- the CUDA path's loop body: no host sync, no cross-device copy, no implicit RNG ----------------

class HostSync(AssertionError):
    pass


RANDOM_OPS = {"rand", "randn", "randint", "rand_like", "randn_like", "randint_like", "randperm", "normal", "normal_",
              "uniform_", "bernoulli", "bernoulli_", "random_", "exponential_", "cauchy_", "log_normal_",
              "geometric_", "multinomial", "poisson", "native_dropout"}
SYNC_OPS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique_dim",
            "_unique2", "repeat_interleave"}  # a host-read scalar, or an output shape that depends on values


def _device_of(v):
    return v.device if isinstance(v, torch.Tensor) else None


class NoHostWork(TorchDispatchMode):
    """Fails on what would stall or break a captured CUDA loop: a value read on the host (.item(),
    int(t), bool(x), a value-dependent shape), a copy between devices or a tensor made from host
    data (on CUDA a pageable upload), and RNG from torch's implicit global state."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__
        if name in SYNC_OPS:
            raise HostSync(f"host sync: aten.{name}")
        if name in ("lift_fresh", "lift_fresh_copy"):
            raise HostSync("a tensor built from host data (an upload on CUDA)")
        if name == "_to_copy" and "device" in kwargs and torch.device(kwargs["device"]) != _device_of(args[0]):
            raise HostSync(f"cross-device copy {_device_of(args[0])} -> {kwargs['device']}")
        if name == "copy_" and _device_of(args[0]) != _device_of(args[1]):
            raise HostSync(f"cross-device copy {_device_of(args[1])} -> {_device_of(args[0])}")
        if name in RANDOM_OPS:
            named = dict(zip((a.name for a in func._schema.arguments), args)) | kwargs
            if named.get("generator") is None:
                raise HostSync(f"aten.{name} from torch's implicit RNG state")
        return func(*args, **kwargs)


def test_the_guard_catches_syncs_copies_and_implicit_rng():
    x = torch.zeros(3)
    catches = [lambda: int(x[0]), lambda: bool(x.sum() > 0), lambda: x[0].item(),
               lambda: torch.tensor([1.0]), lambda: x.to("meta"), lambda: torch.randn(2), lambda: x.normal_(),
               lambda: x.nonzero(),
               # the per-step sync this guard exists for: DDIM reading its timestep from a tensor
               lambda: DDIMScheduler(4).step(x, torch.tensor(750), x)]
    for fn in catches:
        with pytest.raises(HostSync), NoHostWork():
            fn()
    with NoHostWork():  # explicit generators, fills and host-int DDIM timesteps pass
        torch.randn(2, generator=torch.Generator().manual_seed(0))
        torch.full((3,), 5, dtype=torch.long)
        DDIMScheduler(4).step(x, 750, x)


LOOPS = [DDPMScheduler(num_train_timesteps=3), DDIMScheduler(num_inference_steps=3, eta=0.5),
         DPMSolverScheduler(3, sde=True)]


@pytest.mark.parametrize("scheduler", LOOPS, ids=["ddpm", "ddim-eta", "dpm++2m-sde"])
def test_captured_loop_body_has_no_host_work_and_equals_the_uncaptured_path(models, scheduler):
    """graph_loop is what GraphedLatentSampler captures on CUDA. Here it runs on the CPU under the
    Triton interpreter (the CUDA path's launchers and kernels, denoiser included) with the seed
    and row offset as device tensors, as in the graph, 3 rows on grain 2 (padding, two calls)."""
    from pdiff_fast.backend import use_backend
    from pdiff_fast.diffusion.sample import graph_loop

    ae, den = models
    n, start, seed = 3, 2, 21
    shape = tuple(ae.latent_shape())
    seed_t = torch.full((1,), seed, dtype=torch.int64)
    row_t = torch.full((1,), start, dtype=torch.int64)
    with use_backend("triton"):
        run = graph_loop(den, scheduler, n, "cpu", 2, seed_t, row_t)
        x = model_noise(seed, start, n, 1, shape, "cpu")[0]
        with torch.no_grad(), NoHostWork():
            captured = run(x)
        uncaptured = sample_latents(den, scheduler, n, shape, "cpu", seed=seed, start=start, grain=2)
    assert torch.equal(captured, uncaptured)


# --- chunk plans and the CUDA-graph switch ---------------------------------------------------------

def test_cuda_plan_samples_all_models_in_one_chunk_and_decodes_in_grains_of_its_own():
    from pdiff_fast.diffusion.sample import ChunkPlan, chunk_size_for, plan_chunks

    cuda = torch.device("cuda")  # plan_chunks only reads the device type; free_bytes stands in for the query
    # the resnet18 config: latent 12, D = 2048; an H100 with 70 GiB free
    plan = plan_chunks(1000, 12, 2048, cuda, 1 << 30, free_bytes=70 << 30)
    assert plan.chunk >= 1000 and plan.grain == 1024  # one chunk, one denoiser call per step
    assert plan.decode_grain == 256  # the decoder's activation within the 1 GiB budget, as before
    assert plan.chunk % plan.grain == 0 and plan.chunk % plan.decode_grain == 0
    # before: one budget for both networks gave 4 chunks of 256
    assert chunk_size_for(12, 2048, 1 << 30) == 256
    # little free memory: chunks shrink (never below a grain), the grains do not (they are the result)
    small_free = plan_chunks(100_000, 12, 2048, cuda, 1 << 30, free_bytes=3 << 30)
    assert small_free.grain == plan.grain and small_free.decode_grain == plan.decode_grain
    assert plan.grain <= small_free.chunk < 100_000 and small_free.chunk % plan.grain == 0
    # an explicit grain or chunk applies to both networks
    assert plan_chunks(1000, 12, 2048, cuda, 1 << 30, grain=64, free_bytes=70 << 30).decode_grain == 64
    assert plan_chunks(1000, 12, 2048, cuda, 1 << 30, chunk_size=300, grain=64) == ChunkPlan(256, 64, 64)


def test_cpu_plan_is_the_one_budget_of_before():
    from pdiff_fast.diffusion.sample import ChunkPlan, chunk_size_for, plan_chunks

    fits = chunk_size_for(12, 2048, 1 << 30, noise_draws=1001)
    assert plan_chunks(1000, 12, 2048, "cpu", 1 << 30, noise_draws=1001) == ChunkPlan(fits // 128 * 128, 128, 128)
    assert fits < 256 and plan_chunks(1000, 12, 2048, "cpu", 1 << 40).grain == 256


def test_a_decoder_grain_of_its_own_keeps_results_independent_of_the_chunk(models, monkeypatch):
    """The CUDA plan's shape (decoder grain != denoiser grain) run on the CPU path."""
    from pdiff_fast.diffusion import sample
    from pdiff_fast.diffusion.sample import ChunkPlan

    ae, den = models
    s = DDIMScheduler(num_inference_steps=3, eta=0.5)
    runs, decoded_rows = [], []
    decode = ae.decode
    monkeypatch.setattr(ae, "decode", lambda z: decoded_rows.append(z.shape[0]) or decode(z))
    for chunk in (4, 8):
        monkeypatch.setattr(sample, "plan_chunks", lambda *a, chunk=chunk, **k: ChunkPlan(chunk, 2, 4))
        runs.append(generate(ae, den, s, 7, device="cpu", seed=4, progress=False))
    assert torch.equal(runs[0], runs[1]) and set(decoded_rows) == {4}
    monkeypatch.undo()
    same_grain = generate(ae, den, s, 7, device="cpu", seed=4, grain=2, chunk_size=8, progress=False)
    torch.testing.assert_close(runs[0], same_grain, rtol=1e-4, atol=1e-5)  # batch size only moves rounding


def test_cuda_graph_auto_is_on_for_the_triton_ddpm_step_on_cuda_only(monkeypatch):
    from pdiff_fast.diffusion import sample
    from pdiff_fast.diffusion.sample import use_cuda_graph

    cuda = torch.device("cuda")
    monkeypatch.setattr(sample, "_fused_step_noise", lambda scheduler, device: True)  # as with Triton on CUDA
    assert use_cuda_graph("auto", DDPMScheduler(), cuda)
    assert not use_cuda_graph("auto", DDPMScheduler(), cuda, cond=torch.zeros(2, 3))
    assert not use_cuda_graph("auto", DDIMScheduler(5), cuda)
    assert not use_cuda_graph("auto", DDPMScheduler(), "cpu")
    assert use_cuda_graph(True, DDIMScheduler(5), cuda) and not use_cuda_graph(False, DDPMScheduler(), cuda)
    monkeypatch.setattr(sample, "_fused_step_noise", lambda scheduler, device: False)  # torch step
    assert not use_cuda_graph("auto", DDPMScheduler(), cuda)
    with pytest.raises(ValueError, match="True, False or 'auto'"):
        use_cuda_graph("yes", DDPMScheduler(), cuda)


def test_launch_counter_counts_each_launch_and_dry_runs_count_the_same():
    """benchmarks/launch_count.py counts a step's Triton launches with the kernels skipped (dry);
    here the same step, run for real in the interpreter, must count the same launches and ops."""
    from benchmarks.launch_count import count_step
    from pdiff_fast.diffusion.sample import ChunkPlan

    kw = dict(plan=ChunkPlan(4, 2, 2), n=6, widths=[4, 4, 8, 8], latent=(2, 3), repeats=1)
    real, dry = count_step(dry=False, **kw), count_step(dry=True, **kw)
    assert real["launches_by_kernel"] == dry["launches_by_kernel"] and real["torch_ops_by_op"] == dry["torch_ops_by_op"]
    assert real["chunks"] == 2 and real["launches_by_kernel"]["_ddpm_step_kernel"] == 2  # one step launch per chunk
    assert real["launches"] == sum(real["launches_by_kernel"].values()) > 2  # the denoiser's kernels too

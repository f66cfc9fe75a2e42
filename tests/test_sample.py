"""Generation is reproducible and independent of chunking: model i's noise depends on (seed, i) only."""
import pytest
import torch

from pdiff_fast.autoencoder import small
from pdiff_fast.denoiser import AE_CNN_bottleneck
from pdiff_fast.diffusion import DDIMScheduler, DDPMScheduler
from pdiff_fast.sample import generate, model_noise, model_seed


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ae = small(150).eval()
    den = AE_CNN_bottleneck(int(torch.Size(ae.latent_shape()).numel()), 1, channel_list=[4, 4, 8, 8]).eval()
    return ae, den


@pytest.mark.parametrize("scheduler", [DDIMScheduler(num_inference_steps=6, eta=0.5), DDIMScheduler(6),
                                       DDPMScheduler()], ids=["ddim-eta", "ddim", "ddpm"])
def test_chunking_and_memory_budget_do_not_change_the_models(models, scheduler):
    ae, den = models
    if isinstance(scheduler, DDIMScheduler):
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


def test_triton_path_is_reproducible_and_chunk_independent(models):
    """In-kernel step noise (Triton; its interpreter on CPU) depends on (seed, step, global row) only."""
    from pdiff_fast.backend import use_backend

    ae, den = models
    s = DDIMScheduler(num_inference_steps=3, eta=1.0)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ae_d, den_d = ae.to(dev), den.to(dev)
    with use_backend("triton"):
        one = generate(ae_d, den_d, s, 5, device=dev, seed=11, chunk_size=6, grain=2, progress=False)
        two = generate(ae_d, den_d, s, 5, device=dev, seed=11, chunk_size=2, grain=2, progress=False)
        other = generate(ae_d, den_d, s, 5, device=dev, seed=12, chunk_size=6, grain=2, progress=False)
    ae.cpu(), den.cpu()
    assert torch.equal(one, two) and not torch.equal(one, other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_sampler_with_the_real_denoiser_equals_the_uncaptured_path():
    torch.manual_seed(0)
    ae = small(300).cuda().eval()
    den = AE_CNN_bottleneck(int(torch.Size(ae.latent_shape()).numel()), 1).cuda().eval()  # reference widths
    s = DDPMScheduler()
    from pdiff_fast.backend import use_backend

    with use_backend("triton"):
        plain = generate(ae, den, s, 7, device="cuda", seed=5, chunk_size=4, grain=4, progress=False)
        graphed = generate(ae, den, s, 7, device="cuda", seed=5, chunk_size=4, grain=4, cuda_graph=True,
                           progress=False)
        again = generate(ae, den, s, 7, device="cuda", seed=5, chunk_size=7, grain=4, cuda_graph=True,
                         progress=False)
    torch.testing.assert_close(graphed, plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, plain, rtol=1e-4, atol=1e-5)

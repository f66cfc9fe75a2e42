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
        n, chunks = 11, [1, 4, 11]
    else:
        n, chunks = 5, [2, 5]  # 1000 steps: fewer models
    runs = [generate(ae, den, scheduler, n, device="cpu", seed=7, chunk_size=c, progress=False) for c in chunks]
    for r in runs[1:]:
        assert torch.equal(r, runs[0])
    budget = generate(ae, den, scheduler, n, device="cpu", seed=7, memory_budget_bytes=1, progress=False)
    assert torch.equal(budget, runs[0])
    # the first models of a larger set are the same models
    more = generate(ae, den, scheduler, n + 3, device="cpu", seed=7, chunk_size=3, progress=False)
    assert torch.equal(more[:n], runs[0])


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

"""Schedulers against the reference DDPM arithmetic, written out step by step here."""
import pytest
import torch

from pdiff_fast.diffusion.schedulers import DDIMScheduler, DDPMScheduler
from pdiff_fast.diffusion.sample import generate, sample_latents


def reference_tables():
    # Derived here on purpose, not taken from the ddpm_schedule fixture (tests/conftest.py): these
    # tests check the library's tables against an independent derivation.
    betas = torch.linspace(1e-4, 2e-2, 1000, dtype=torch.float64)
    ac = torch.cumprod(1 - betas, 0)
    ac_prev = torch.cat([torch.tensor([1.0], dtype=torch.float64), ac[:-1]])
    post_var = betas * (1 - ac_prev) / (1 - ac)
    f = lambda t: t.float()  # noqa: E731  (the reference registers float32 buffers)
    return {
        "sqrt_ac": f(ac.sqrt()), "sqrt_1mac": f((1 - ac).sqrt()),
        "sqrt_recip": f(ac.rsqrt()), "sqrt_recipm1": f((1 / ac - 1).sqrt()),
        "coef1": f(betas * ac_prev.sqrt() / (1 - ac)), "coef2": f((1 - ac_prev) * (1 - betas).sqrt() / (1 - ac)),
        "betas": f(betas), "post_var": f(post_var),
    }


def reference_p_sample(tab, eps, x, t, noise):
    ext = lambda a: a.gather(0, t).view(-1, *([1] * (x.dim() - 1)))  # noqa: E731
    log_var = torch.log(torch.cat([tab["post_var"][1].view(1), tab["betas"][1:]]))  # fixed-large
    x0 = (ext(tab["sqrt_recip"]) * x - ext(tab["sqrt_recipm1"]) * eps).clamp(-1, 1)
    mean = ext(tab["coef1"]) * x0 + ext(tab["coef2"]) * x
    nonzero = (1 - (t == 0).float()).view(-1, *([1] * (x.dim() - 1)))
    return (mean + nonzero * torch.exp(0.5 * ext(log_var)) * noise).clamp(-1, 1)


def toy_model(x, t):
    return 0.3 * x + 1e-3 * t.view(-1, *([1] * (x.dim() - 1))).float()


def test_buffers_match_the_reference():
    """Every coefficient table, whole, against the independent derivation above."""
    s, tab = DDPMScheduler(), reference_tables()
    pairs = {"sqrt_alphas_cumprod": "sqrt_ac", "sqrt_one_minus_alphas_cumprod": "sqrt_1mac",
             "sqrt_recip_alphas_cumprod": "sqrt_recip", "sqrt_recipm1_alphas_cumprod": "sqrt_recipm1",
             "posterior_mean_coef1": "coef1", "posterior_mean_coef2": "coef2", "betas": "betas",
             "posterior_variance": "post_var"}
    for mine, ref in pairs.items():
        torch.testing.assert_close(getattr(s, mine), tab[ref], rtol=1e-6, atol=0, msg=mine)
    post = tab["post_var"].double()
    clipped = torch.log(torch.cat([post[1:2], post[1:]])).float()  # the reference clips log(0) at t = 0
    fixedlarge = torch.log(torch.cat([post[1:2], tab["betas"].double()[1:]])).float()
    torch.testing.assert_close(s.posterior_log_variance_clipped, clipped, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.model_log_variance, fixedlarge, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(DDPMScheduler(variance_type="fixedsmall").model_log_variance, clipped,
                               rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(s.alphas_cumprod_f64.sqrt().float(), tab["sqrt_ac"], rtol=1e-7, atol=0)


def test_full_ddpm_loop_matches_the_reference_loop():
    s, tab = DDPMScheduler(), reference_tables()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(7, 4, 3, generator=g)
    noises = torch.randn(1000, 7, 4, 3, generator=g)
    ours, ref = x.clone(), x.clone()
    for i, t in enumerate(s.timesteps()):
        tt = torch.full((7,), t, dtype=torch.long)
        ours = s.step(toy_model(ours, tt), tt, ours, noise=noises[i]).prev_sample
        ref = reference_p_sample(tab, toy_model(ref, tt), ref, tt, noises[i])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_no_noise_at_t0_and_clamped():
    s = DDPMScheduler()
    x = torch.randn(5, 12) * 3
    t = torch.zeros(5, dtype=torch.long)
    a = s.step(torch.zeros_like(x), t, x, noise=torch.randn_like(x) * 100).prev_sample
    b = s.step(torch.zeros_like(x), t, x, noise=torch.zeros_like(x)).prev_sample
    assert torch.equal(a, b) and a.abs().max() <= 1


def test_add_noise_is_q_sample():
    s = DDPMScheduler()
    x0, t, n = torch.randn(6, 12), torch.randint(0, 1000, (6,)), torch.randn(6, 12)
    x_t, noise = s.add_noise(x0, t, noise=n)
    torch.testing.assert_close(x_t, s.sqrt_alphas_cumprod[t, None] * x0 + s.sqrt_one_minus_alphas_cumprod[t, None] * n)
    x_t, noise = s.add_noise(x0, t)  # drawn on the device, returned for the loss
    torch.testing.assert_close(x_t, s.sqrt_alphas_cumprod[t, None] * x0 + s.sqrt_one_minus_alphas_cumprod[t, None] * noise)


def test_ddim_eta0_is_deterministic_and_recovers_x0_from_the_true_noise():
    s = DDIMScheduler(num_inference_steps=20, eta=0.0, clamp_sample=False)
    ts = s.timesteps()
    assert len(ts) == 20 and ts[0] > ts[-1] == 0
    x0 = torch.rand(4, 12) * 1.6 - 0.8
    eps = torch.randn(4, 12)
    t = ts[0]
    a = float(s.alphas_cumprod_f64[t])
    x_t = a**0.5 * x0 + (1 - a) ** 0.5 * eps
    out = s.step(eps, torch.tensor(t), x_t)
    torch.testing.assert_close(out.pred_original_sample, x0, rtol=1e-4, atol=1e-4)
    a_prev = float(s.alphas_cumprod_f64[ts[1]])
    torch.testing.assert_close(out.prev_sample, a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps, rtol=1e-4, atol=1e-4)
    assert torch.equal(s.step(eps, torch.tensor(t), x_t).prev_sample, out.prev_sample)


def test_bad_scheduler_arguments():
    with pytest.raises(ValueError):
        DDIMScheduler(num_inference_steps=0)
    with pytest.raises(ValueError):
        DDPMScheduler(variance_type="learned")


def test_sampling_in_chunks_equals_one_batch_shape_and_range():
    from pdiff_fast.nn.autoencoder import small
    from pdiff_fast.nn.denoiser import AE_CNN_bottleneck

    ae = small(200).eval()
    den = AE_CNN_bottleneck(int(torch.Size(ae.latent_shape()).numel()), 1, channel_list=[4, 4, 4, 4]).eval()
    s = DDIMScheduler(num_inference_steps=5, eta=0.5)
    # grain=1: chunk sizes are rounded down to a multiple of the grain, so the default grain
    # (256 on CPU) would turn chunk_size=3 into one batch and nothing would be compared.
    chunked = generate(ae, den, s, 7, device="cpu", seed=3, chunk_size=3, grain=1, progress=False)
    one_batch = generate(ae, den, s, 7, device="cpu", seed=3, chunk_size=7, grain=1, progress=False)
    assert chunked.shape == (7, 200) and torch.isfinite(chunked).all()
    # Noise is per model and the networks always see grain-row batches: bitwise identical.
    assert torch.equal(chunked, one_batch)
    assert not torch.equal(chunked[0], chunked[3])  # the second chunk is not a copy of the first
    z = sample_latents(den, s, 4, ae.latent_shape(), "cpu")
    assert z.abs().max() <= 1 + 1e-6
    with pytest.raises(ValueError):
        generate(ae, den, s, 0, device="cpu")


def test_thousands_of_models_are_sampled_in_chunks_of_a_memory_budget():
    from pdiff_fast.nn.autoencoder import small
    from pdiff_fast.nn.denoiser import AE_CNN_bottleneck

    ae = small(100).eval()
    den = AE_CNN_bottleneck(int(torch.Size(ae.latent_shape()).numel()), 1, channel_list=[2, 2, 2, 2]).eval()
    s = DDIMScheduler(num_inference_steps=2)
    flat = generate(ae, den, s, 2500, device="cpu", memory_budget_bytes=4 << 20, progress=False)
    assert flat.shape == (2500, 100) and torch.isfinite(flat).all()
    assert not torch.equal(flat[0], flat[-1])  # every chunk draws its own noise

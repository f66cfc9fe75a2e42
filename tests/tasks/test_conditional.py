"""Dataset-conditioned generation: the set encoder, the conditioned denoiser, classifier-free
guidance and conditioned sampling (pdiff_fast.nn.set_encoder, pdiff_fast.tasks.conditional)."""
import pytest
import torch

from pdiff_fast.tasks.conditional import MODES, ConditionedDenoiser, Guided, fit_conditional, generate_conditioned
from pdiff_fast.nn.denoiser import EMA, AE_CNN_bottleneck
from pdiff_fast.diffusion.samplers import make_scheduler
from pdiff_fast.nn.lowrank_autoencoder import LowRankAutoencoder
from pdiff_fast.nn.set_encoder import SetEncoder

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(latent=8, features=6, emb=4, seed=0, mode="time"):
    torch.manual_seed(seed)
    net = ConditionedDenoiser(AE_CNN_bottleneck(latent, 1, channel_list=[4, 4, 8, 8]), SetEncoder(features, 8, emb),
                              mode)
    with torch.no_grad():  # a trained-looking projection and null: the condition matters
        net.project.weight.normal_()
        net.null.normal_()
    return net.eval()


@pytest.mark.parametrize("n", [1, 7, 33])
def test_set_encoder_is_permutation_invariant(n):
    enc = SetEncoder(5, 8, 3).eval()
    sets = torch.randn(4, n, 5)
    perm = torch.randperm(n)
    torch.testing.assert_close(enc(sets[:, perm]), enc(sets), rtol=1e-5, atol=1e-6)


def test_set_encoder_mask_ignores_padding():
    enc = SetEncoder(5, 8, 3).eval()
    sets = torch.randn(2, 6, 5)
    padded = torch.cat([sets, torch.randn(2, 3, 5) * 100], 1)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    mask[:, :6] = True
    torch.testing.assert_close(enc(padded, mask), enc(sets), rtol=1e-5, atol=1e-5)


def test_set_encoder_sees_the_set():
    enc = SetEncoder(5, 8, 3).eval()
    a, b = torch.randn(1, 10, 5), torch.randn(1, 10, 5) + 1
    assert not torch.allclose(enc(a), enc(b))


def test_set_encoder_bad_input():
    enc = SetEncoder(5, 8, 3)
    with pytest.raises(ValueError, match=r"\(B, n, 5\)"):
        enc(torch.randn(2, 4, 6))
    with pytest.raises(ValueError, match="at least one element"):
        enc(torch.randn(2, 0, 5))
    with pytest.raises(ValueError, match="multiple of heads"):
        SetEncoder(5, 10, 3, heads=4)


@pytest.mark.parametrize("mode", MODES)
def test_condition_changes_the_prediction_and_none_is_the_plain_denoiser(mode):
    net = _model(mode=mode)
    x, t = torch.randn(3, 1, 8), torch.tensor([5, 500, 999])
    e1, e2 = torch.randn(3, 4), torch.randn(3, 4)
    assert not torch.allclose(net(x, t, e1), net(x, t, e2))
    # each row reads its own condition only
    mixed = net(x, t, torch.cat([e1[:1], e2[1:]]))
    torch.testing.assert_close(mixed[:1], net(x, t, e1)[:1])
    torch.testing.assert_close(mixed[1:], net(x, t, e2)[1:])
    # a zero condition adds nothing to the time embedding: the plain denoiser
    if mode == "time":
        torch.testing.assert_close(net.denoiser(x, t, torch.zeros(3, 8)), net.denoiser(x, t))
    else:
        with torch.no_grad():
            for mix in net.mix:
                mix.weight.zero_()
        torch.testing.assert_close(net(x, t, e1), net.denoiser(x, t))


def test_bad_mode_and_denoiser():
    with pytest.raises(ValueError, match="conditioning mode"):
        ConditionedDenoiser(AE_CNN_bottleneck(8, 1, channel_list=[4, 4, 8, 8]), SetEncoder(6, 8, 4), "film")
    with pytest.raises(ValueError, match="AE_CNN_bottleneck"):
        ConditionedDenoiser(torch.nn.Linear(8, 8), SetEncoder(6, 8, 4))


@pytest.mark.parametrize("mode", MODES)
def test_guidance_formula(mode):
    net = _model(mode=mode)
    x, t, emb = torch.randn(5, 1, 8), torch.randint(0, 1000, (5,)), torch.randn(5, 4)
    task, null = net(x, t, emb), net(x, t, net.unconditional(5))
    torch.testing.assert_close(Guided(net, 0.0)(x, t, emb), null)
    torch.testing.assert_close(Guided(net, 1.0)(x, t, emb), task)
    torch.testing.assert_close(Guided(net, 2.5)(x, t, emb), null + 2.5 * (task - null), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=">= 0"):
        Guided(net, -1.0)
    with pytest.raises(ValueError, match="emb must be"):
        net(x, t, torch.randn(4, 4))


@pytest.fixture(scope="module", params=MODES)
def sampler_parts(request):
    torch.manual_seed(1)
    ae = LowRankAutoencoder(20, 8).eval()
    ae.initialize(torch.randn(30, 20))
    return ae, _model(seed=1, mode=request.param), make_scheduler("ddim", 10)


def test_guidance_zero_is_the_unconditional_path(sampler_parts):
    ae, net, sched = sampler_parts
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    g0a = generate_conditioned(ae, net, sched, a, 0.0, seed=3, progress=False)
    g0b = generate_conditioned(ae, net, sched, b, 0.0, seed=3, progress=False)
    null = generate_conditioned(ae, net, sched, net.unconditional(6).detach(), 1.0, seed=3, progress=False)
    assert torch.equal(g0a, g0b)  # the task is ignored
    torch.testing.assert_close(g0a, null, rtol=0, atol=0)


def test_conditioning_changes_samples_and_each_model_depends_on_its_own_condition(sampler_parts):
    ae, net, sched = sampler_parts
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    ga = generate_conditioned(ae, net, sched, a, 1.0, seed=3, progress=False, grain=4)
    gb = generate_conditioned(ae, net, sched, b, 1.0, seed=3, progress=False, grain=4)
    assert (ga - gb).abs().amax(1).min() > 1e-4  # every model moved with its condition
    mixed = torch.cat([a[:3], b[3:]])
    gm = generate_conditioned(ae, net, sched, mixed, 1.0, seed=3, progress=False, grain=4)
    torch.testing.assert_close(gm[:3], ga[:3], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gm[3:], gb[3:], rtol=1e-5, atol=1e-5)
    # chunking does not change a model (many tasks in one batch, or a few at a time)
    chunked = generate_conditioned(ae, net, sched, a, 1.0, seed=3, progress=False, grain=4, chunk_size=4)
    torch.testing.assert_close(chunked, ga, rtol=0, atol=0)


def test_generate_checks_the_condition(sampler_parts):
    ae, net, sched = sampler_parts
    from pdiff_fast.diffusion.sample import generate

    with pytest.raises(ValueError, match="one row per model"):
        generate(ae, Guided(net, 1.0), sched, 5, cond=torch.randn(3, 4), progress=False)


def test_fit_conditional_learns_two_tasks(mode="blocks"):
    """Two tasks whose latents are a pattern p and -p: after training, sampling with each task's
    support set lands on its own side, and the loss fell. (The default mode; "time" does not learn
    this in 600 steps: the evidence for the default, benchmarks/results/tasks_conditioning_cpu.md.)
    600 steps: at 300 the task-1 side reached -0.19 of the -0.3 asked (torch 2.13.0+cpu, 2 cores)."""
    torch.manual_seed(0)
    latent, feats = 16, 3
    p = torch.rand(1, 1, latent, generator=torch.Generator().manual_seed(3)) - 0.5
    lat = torch.cat([p.expand(32, 1, latent), (-p).expand(32, 1, latent)])
    tasks = torch.arange(2).repeat_interleave(32)
    centers = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])

    def draw_sets(rows, gen):
        return centers[rows].unsqueeze(1) + 0.1 * torch.randn(len(rows), 5, feats, generator=gen)

    net = ConditionedDenoiser(AE_CNN_bottleneck(latent, 1, channel_list=[8, 8, 16, 16]), SetEncoder(feats, 8, 4),
                              mode)
    model = EMA(net, 0.9)
    losses = fit_conditional(model, lat, tasks, draw_sets, make_scheduler("ddpm"), steps=600,
                             batch_size=64, progress=False, seed=0)
    assert losses[-1] < losses[0]
    ident = torch.nn.Identity()
    ident.in_dim = latent
    ident.latent_shape = lambda: (1, latent)
    ident.decode = lambda z: z.reshape(len(z), -1)
    with torch.no_grad():
        emb = model.ema.embed(draw_sets(torch.tensor([0, 1]), torch.Generator().manual_seed(1)))
    out = generate_conditioned(ident, model.ema, make_scheduler("ddim", 20), emb.repeat_interleave(8, 0), 4.0,
                               seed=0, progress=False)
    side = out @ p.reshape(latent) / p.norm() ** 2  # +1 on task 0's pattern, -1 on task 1's
    assert side[:8].mean() > 0.3 and side[8:].mean() < -0.3, side


def test_fit_conditional_bad_input():
    net = _model()
    model = EMA(net)
    lat = torch.randn(4, 1, 8)
    draw = lambda rows, g: torch.randn(len(rows), 3, 6)  # noqa: E731
    with pytest.raises(ValueError, match="one task per latent"):
        fit_conditional(model, lat, torch.zeros(3, dtype=torch.long), draw, make_scheduler("ddpm"), 1,
                        progress=False)
    with pytest.raises(ValueError, match="drop"):
        fit_conditional(model, lat, torch.zeros(4, dtype=torch.long), draw, make_scheduler("ddpm"), 1, drop=1.0,
                        progress=False)
    with pytest.raises(ValueError, match="NaN"):
        fit_conditional(model, lat * float("nan"), torch.zeros(4, dtype=torch.long), draw, make_scheduler("ddpm"),
                        1, progress=False)

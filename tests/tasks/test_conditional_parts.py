"""pdiff_fast.tasks.conditional one part at a time, on a denoiser of a few channels (each test well
under a second): the conditioned denoiser's layers and messages, the "blocks" forward against the
denoiser's blocks called by hand, the null embedding, guidance's passes and formula, one step of
fit_conditional's loss against a hand-made step (the run, the scheduler and the support sets faked or
replayed), its defaults and checks, and generate_conditioned's call of generate. Written against the
mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_conditional.py trains and
samples whole conditioned models."""
import re

import pytest
import torch
from torch import nn

from pdiff_fast.diffusion.samplers import make_scheduler
from pdiff_fast.nn.denoiser import EMA, AE_CNN_bottleneck
from pdiff_fast.nn.set_encoder import SetEncoder
from pdiff_fast.ops import eps_mse
from pdiff_fast.pipeline.train import _batches
from pdiff_fast.tasks import conditional as cond
from pdiff_fast.tasks.conditional import BLOCK_MAPS, MODES, ConditionedDenoiser, Guided

pytestmark = pytest.mark.usefixtures("one_thread")


def exact(msg):
    return "^" + re.escape(msg) + "$"


def net_of(mode="time", latent=8, features=5, emb=3, seed=0, channels=(2, 3, 4, 5)):
    torch.manual_seed(seed)
    net = ConditionedDenoiser(AE_CNN_bottleneck(latent, 1, channel_list=list(channels)), SetEncoder(features, 4, emb),
                              mode)
    with torch.no_grad():
        net.project.weight.normal_()
        net.project.bias.normal_()
        net.null.normal_()
    return net


# --- the conditioned denoiser -------------------------------------------------------------------

def test_layers_of_each_mode():
    assert MODES == ("time", "blocks") and BLOCK_MAPS == 8
    torch.manual_seed(0)
    den, enc = AE_CNN_bottleneck(8, 1, channel_list=[2, 3, 4, 5]), SetEncoder(5, 4, 3)
    t = ConditionedDenoiser(den, enc)  # mode "time" by default
    assert t.mode == "time" and t.denoiser is den and t.encoder is enc and not hasattr(t, "mix")
    assert (t.project.in_features, t.project.out_features) == (3, 8)
    assert torch.equal(t.null, torch.zeros(3)) and isinstance(t.null, nn.Parameter)
    b = ConditionedDenoiser(den, enc, "blocks")
    assert (b.project.in_features, b.project.out_features) == (3, 8 * 8)
    assert [(m.in_channels, m.out_channels, m.kernel_size, m.bias) for m in b.mix] == [
        (8, w, (1,), None) for w in (1, 2, 3, 4, 5, 4, 3, 2)]
    assert torch.equal(b.null, torch.zeros(3))


def test_constructor_messages():
    den, enc = AE_CNN_bottleneck(8, 1, channel_list=[2, 3, 4, 5]), SetEncoder(5, 4, 3)
    with pytest.raises(ValueError, match=exact("conditioning mode must be one of ('time', 'blocks'), got 'film'")):
        ConditionedDenoiser(den, enc, "film")
    with pytest.raises(ValueError, match=exact("ConditionedDenoiser needs an AE_CNN_bottleneck, got Linear")):
        ConditionedDenoiser(nn.Linear(8, 8), enc)


def test_embed_passes_the_mask():
    net = net_of()
    sets = torch.randn(2, 4, 5)
    mask = torch.tensor([[True, True, False, False], [True, True, True, False]])
    torch.testing.assert_close(net.embed(sets, mask), net.encoder(sets, mask))
    assert not torch.allclose(net.embed(sets, mask), net.embed(sets))
    torch.testing.assert_close(net.embed(sets), net.encoder(sets))


def test_time_mode_adds_the_projection_to_the_time_embedding():
    net = net_of("time")
    x, t, emb = torch.randn(3, 1, 8), torch.tensor([3, 40, 900]), torch.randn(3, 3)
    torch.testing.assert_close(net(x, t, emb), net.denoiser(x, t, emb @ net.project.weight.T + net.project.bias))


def blocks_by_hand(net, x, time, emb):
    d, n = net.denoiser, x.shape[0]
    tt = d.time_info(time, n)
    maps = (emb @ net.project.weight.T + net.project.bias).reshape(n, 8, d.in_dim)
    add = [tt + torch.einsum("oc,ncl->nol", mix.weight[:, :, 0], maps) for mix in net.mix]
    e1 = d.enc1(x.reshape(n, 1, -1), add[0])
    e2 = d.enc2(e1, add[1])
    e3 = d.enc3(e2, add[2])
    e4 = d.enc4(e3, add[3])
    d1 = d.dec1(e4, add[4], skip=e3)
    d2 = d.dec2(d1, add[5], skip=e2)
    d3 = d.dec3(d2, add[6], skip=e1)
    return d.dec4(d3, add[7]).reshape(x.shape)


def test_blocks_mode_adds_each_blocks_own_mix():
    net = net_of("blocks", channels=(3, 3, 3, 3))  # equal widths: a block given another's mix would still run
    with torch.no_grad():
        for mix in net.mix:
            mix.weight.normal_()
    x, t, emb = torch.randn(2, 1, 8), torch.tensor([7, 700]), torch.randn(2, 3)
    want = blocks_by_hand(net, x, t, emb)
    torch.testing.assert_close(net(x, t, emb), want, rtol=1e-5, atol=1e-5)
    flat = net(x.reshape(2, 8), t, emb)  # any shape with the latent's values: the output keeps it
    assert flat.shape == (2, 8)
    torch.testing.assert_close(flat, want.reshape(2, 8), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=exact("denoiser expects 8 latent values per sample, got (2, 1, 7)")):
        net(torch.randn(2, 1, 7), t, emb)


def test_forward_checks_the_embedding():
    net = net_of("time")
    x, t = torch.randn(3, 1, 8), torch.tensor([1, 2, 3])
    for emb in (torch.randn(2, 3), torch.randn(3, 4), torch.randn(3, 3, 1), torch.randn(3)):
        with pytest.raises(ValueError, match=exact(f"ConditionedDenoiser: emb must be (3, 3), got {tuple(emb.shape)}")):
            net(x, t, emb)


def test_unconditional_is_the_null_embedding_repeated():
    net = net_of()
    u = net.unconditional(4)
    assert u.shape == (4, 3) and all(torch.equal(row, net.null) for row in u)
    assert net.unconditional(1).shape == (1, 3)


# --- guidance ------------------------------------------------------------------------------------

class Recorder(nn.Module):
    """A conditioned model whose output is x * 2 + the first embedding value, recording its calls."""

    def __init__(self):
        super().__init__()
        self.calls = []
        self.null = torch.tensor([5.0, 6.0])

    def forward(self, x, t, emb):
        self.calls.append((x.clone(), t.clone(), emb.clone()))
        return x * 2 + emb[:, :1]

    def unconditional(self, n):
        return self.null.expand(n, -1)


def test_guided_passes_and_formula():
    x, t, emb = torch.tensor([[1.0], [2.0]]), torch.tensor([10, 20]), torch.tensor([[1.0, 0.0], [3.0, 0.0]])
    m = Recorder()
    assert torch.equal(Guided(m, 0)(x, t, emb), torch.tensor([[7.0], [9.0]]))  # the null pass alone
    assert len(m.calls) == 1 and torch.equal(m.calls[0][2], torch.tensor([[5.0, 6.0], [5.0, 6.0]]))
    m.calls.clear()
    assert torch.equal(Guided(m, 1)(x, t, emb), torch.tensor([[3.0], [7.0]]))  # the task pass alone
    assert len(m.calls) == 1 and torch.equal(m.calls[0][2], emb)
    m.calls.clear()
    g = Guided(m, 2.5)
    # null + 2.5 (task - null): 7 + 2.5 (3 - 7) = -3, 9 + 2.5 (7 - 9) = 4
    assert torch.equal(g(x, t, emb), torch.tensor([[-3.0], [4.0]]))
    assert len(m.calls) == 1
    bx, bt, be = m.calls[0]
    assert torch.equal(bx, torch.tensor([[1.0], [2.0], [1.0], [2.0]])) and bt.tolist() == [10, 20, 10, 20]
    assert torch.equal(be, torch.tensor([[1.0, 0.0], [3.0, 0.0], [5.0, 6.0], [5.0, 6.0]]))
    m.calls.clear()
    # 0 < scale < 1: both passes as well, 7 + 0.5 (3 - 7) = 5, 9 + 0.5 (7 - 9) = 8
    assert torch.equal(Guided(m, 0.5)(x, t, emb), torch.tensor([[5.0], [8.0]])) and len(m.calls) == 1


def test_guided_scale_checks():
    m = Recorder()
    g = Guided(m, 3)
    assert g.scale == 3.0 and isinstance(g.scale, float) and g.model is m
    assert Guided(m, 0).scale == 0.0
    for bad in (-1.0, -1e-9, float("nan")):
        with pytest.raises(ValueError, match=exact(f"guidance scale must be >= 0, got {bad!r}")):
            Guided(m, bad)


# --- training ------------------------------------------------------------------------------------

class FakeRun:
    """pdiff_fast.pipeline.train._Run faked: records its arguments; train() keeps loss_at and after_update."""
    made = []

    def __init__(self, *args):
        self.args = args
        FakeRun.made.append(self)

    def train(self, model, steps, progress, loss_at, after_update=None):
        self.model, self.steps, self.progress, self.loss_at, self.after_update = model, steps, progress, loss_at, \
            after_update
        return [1.5, 0.5]


class FakeScheduler:
    """Timesteps 10, 11, ...; noise 0.25 everywhere, x_t = x0 + t / 100; records its calls."""

    def __init__(self):
        self.calls = []

    def sample_timesteps(self, batch, device, generator=None):
        self.calls.append(("t", batch, torch.device(device).type, generator))
        return torch.arange(10, 10 + batch)

    def add_noise(self, x0, t, noise=None, generator=None, seed=None, seed_offset=0):
        self.calls.append(("noise", generator, seed, seed_offset))
        return x0 + t[:, None, None] / 100, torch.full_like(x0, 0.25)


def setup_fit(monkeypatch, mode="blocks", rows=6):
    FakeRun.made.clear()
    monkeypatch.setattr(cond, "_Run", FakeRun)
    net = net_of(mode)
    model = EMA(net, 0.5)
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(rows, 1, 8, generator=g)
    tasks = torch.tensor([0, 1, 2, 0, 1, 2][:rows])
    drawn = []

    def draw_sets(r, gen):
        drawn.append((r.clone(), gen))
        return r[:, None, None].float() + torch.randn(len(r), 4, 5, generator=gen)

    return net, model, latents, tasks, draw_sets, drawn


def test_fit_conditional_defaults_and_run(monkeypatch):
    net, model, latents, tasks, draw_sets, drawn = setup_fit(monkeypatch)
    sched = FakeScheduler()
    assert cond.fit_conditional(model, latents, tasks, draw_sets, sched) == [1.5, 0.5]
    run = FakeRun.made[0]
    what, lr_name, lr, modules, opt, gens, data, checkpoint, every, resume = run.args
    assert (what, lr_name, lr) == ("conditional diffusion", "diffusion_lr", 1e-3)
    assert modules == {"model": model} and data is latents
    assert (checkpoint, every, resume) == (None, 0, None)
    assert isinstance(opt, torch.optim.AdamW) and len(opt.param_groups) == 1
    assert opt.param_groups[0]["lr"] == 1e-3 and opt.param_groups[0]["weight_decay"] == 2e-6
    assert {id(p) for p in opt.param_groups[0]["params"]} == {id(p) for p in net.parameters()}
    assert sorted(gens) == ["batches", "noise"]
    assert torch.equal(gens["batches"].get_state(), torch.Generator().manual_seed(0).get_state())
    assert torch.equal(gens["noise"].get_state(), torch.Generator().manual_seed(0).get_state())
    assert run.model is model and run.steps == 3000 and run.progress is True
    run.loss_at(0)  # 6 rows, fewer than the default batch of 256: all of them
    assert torch.equal(drawn[0][0], tasks)
    # the EMA is updated at the model's own decay (ema_decay None)
    ema_before = [p.clone() for p in model.ema.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    run.after_update()
    for e, before, p in zip(model.ema.parameters(), ema_before, net.parameters()):
        torch.testing.assert_close(e, before + 0.5 * (p - before))


def test_default_batch_and_drop(monkeypatch):
    net, model, latents, tasks, draw_sets, drawn = setup_fit(monkeypatch, mode="time", rows=6)
    latents, tasks = latents.repeat(50, 1, 1), tasks.repeat(50)  # 300 rows
    sched = FakeScheduler()
    cond.fit_conditional(model, latents, tasks, draw_sets, sched, seed=2)
    loss = FakeRun.made[0].loss_at(1)
    g, dg = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    idx = torch.randint(0, 300, (256,), generator=g)
    rows = tasks[idx]
    assert torch.equal(drawn[0][0], rows)
    emb = net.encoder(rows[:, None, None].float() + torch.randn(256, 4, 5, generator=dg))
    dropped = torch.rand(256, generator=dg) < 0.1
    assert 10 < int(dropped.sum()) < 50
    emb = torch.where(dropped[:, None], net.null.expand(256, -1), emb)
    t = torch.arange(10, 266)
    want = ((net(latents[idx] + t[:, None, None] / 100, t, emb) - 0.25) ** 2).mean()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)


def test_fit_conditional_passes_its_arguments(monkeypatch):
    net, model, latents, tasks, draw_sets, drawn = setup_fit(monkeypatch)

    def checkpoint(tensors, meta):
        pass

    resume = ({}, {"step": 3})
    out = cond.fit_conditional(model, latents, tasks, draw_sets, FakeScheduler(), steps=7, lr=0.5, weight_decay=0.25,
                               batch_size=2, drop=0.0, ema_decay=0.75, seed=9, progress=False, checkpoint=checkpoint,
                               checkpoint_every=4, resume=resume)
    assert out == [1.5, 0.5]
    run = FakeRun.made[0]
    assert run.args[2] == 0.5 and run.args[7] is checkpoint and run.args[8] == 4 and run.args[9] is resume
    assert run.args[4].param_groups[0]["lr"] == 0.5 and run.args[4].param_groups[0]["weight_decay"] == 0.25
    assert torch.equal(run.args[5]["batches"].get_state(), torch.Generator().manual_seed(9).get_state())
    assert run.steps == 7 and run.progress is False
    ema_before = [p.clone() for p in model.ema.parameters()]
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    run.after_update()
    for e, before, p in zip(model.ema.parameters(), ema_before, net.parameters()):
        torch.testing.assert_close(e, before + 0.25 * (p - before))


@pytest.mark.parametrize("batch_size, drop", [(4, 0.5), (None, 0.0), (6, 0.999), (10, 0.3)])
def test_loss_at_is_one_hand_made_step(monkeypatch, batch_size, drop):
    net, model, latents, tasks, draw_sets, drawn = setup_fit(monkeypatch)
    sched = FakeScheduler()
    cond.fit_conditional(model, latents, tasks, draw_sets, sched, steps=3, batch_size=batch_size, drop=drop, seed=4,
                         progress=False)
    run = FakeRun.made[0]
    gen, dev_gen = run.args[5]["batches"], run.args[5]["noise"]
    loss = run.loss_at(2)
    # by hand, from generators seeded as fit_conditional's
    g, dg = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    idx = _batches(6, batch_size, g, "cpu")
    x0, rows = (latents, tasks) if idx is None else (latents[idx], tasks[idx])
    assert len(drawn) == 1 and torch.equal(drawn[0][0], rows) and drawn[0][1] is dev_gen
    sets = rows[:, None, None].float() + torch.randn(len(rows), 4, 5, generator=dg)
    emb = net.encoder(sets)
    dropped = torch.rand(len(rows), generator=dg) < drop
    emb = torch.where(dropped[:, None], net.null.expand(len(rows), -1), emb)
    t = torch.arange(10, 10 + len(rows))
    want = ((net(x0 + t[:, None, None] / 100, t, emb) - 0.25) ** 2).mean()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)
    assert sched.calls == [("t", len(rows), "cpu", dev_gen), ("noise", dev_gen, 4, 2)]
    assert torch.equal(gen.get_state(), g.get_state()) and torch.equal(dev_gen.get_state(), dg.get_state())
    if drop == 0.5:
        assert 0 < int(dropped.sum()) < len(rows)  # both kinds of row in the batch
    loss.backward()  # the loss reaches the network, the encoder and the null
    assert net.project.weight.grad is not None and net.encoder.query.grad is not None
    assert (net.null.grad is not None and net.null.grad.abs().sum() > 0) == bool(dropped.any())


def test_a_row_whose_draw_equals_drop_is_kept(monkeypatch):
    """dropped = draw < drop: a draw of exactly `drop` keeps its row's task embedding."""
    net, model, latents, tasks, draw_sets, drawn = setup_fit(monkeypatch)
    dg = torch.Generator().manual_seed(4)
    sets = tasks[:, None, None].float() + torch.randn(6, 4, 5, generator=dg)
    draws = torch.rand(6, generator=dg)
    drop = draws[0].item()  # a float32 value: the same number as a Python float
    assert (draws < drop).tolist() != (draws <= drop).tolist()
    cond.fit_conditional(model, latents, tasks, draw_sets, FakeScheduler(), steps=1, batch_size=None, drop=drop,
                         seed=4, progress=False)
    loss = FakeRun.made[0].loss_at(0)
    emb = torch.where((draws < drop)[:, None], net.null.expand(6, -1), net.encoder(sets))
    t = torch.arange(10, 16)
    want = ((net(latents + t[:, None, None] / 100, t, emb) - 0.25) ** 2).mean()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)


def test_loss_at_uses_the_real_noise_of_the_scheduler(monkeypatch):
    net, model, latents, tasks, draw_sets, drawn = setup_fit(monkeypatch, mode="time")
    sched = make_scheduler("ddpm")
    cond.fit_conditional(model, latents, tasks, draw_sets, sched, steps=1, batch_size=None, drop=0.0, seed=1,
                         progress=False)
    loss = FakeRun.made[0].loss_at(0)
    dg = torch.Generator().manual_seed(1)
    emb = net.encoder(tasks[:, None, None].float() + torch.randn(6, 4, 5, generator=dg))
    torch.rand(6, generator=dg)
    t = sched.sample_timesteps(6, "cpu", dg)
    x_t, noise = sched.add_noise(latents, t, generator=dg, seed=1, seed_offset=0)
    torch.testing.assert_close(loss, eps_mse(net(x_t, t, emb), noise), rtol=1e-6, atol=1e-7)


def test_fit_conditional_messages(monkeypatch):
    net, model, latents, tasks, draw_sets, drawn = setup_fit(monkeypatch)
    sched = FakeScheduler()

    def fit(**kw):
        args = {"latents": latents, "task_of_row": tasks, "steps": 1, **kw}
        return cond.fit_conditional(model, args.pop("latents"), args.pop("task_of_row"), draw_sets, sched, **args)

    cases = [
        (dict(steps=0), "conditional diffusion training needs at least 1 step, got 0"),
        (dict(drop=1.0), "drop (the share of rows trained unconditionally) must be in [0, 1), got 1.0"),
        (dict(drop=-0.1), "drop (the share of rows trained unconditionally) must be in [0, 1), got -0.1"),
        (dict(task_of_row=tasks[:5]), "task_of_row must be (6,), one task per latent, got (5,)"),
        (dict(task_of_row=tasks[:, None]), "task_of_row must be (6,), one task per latent, got (6, 1)"),
        (dict(latents=latents * float("nan")), "conditional diffusion training data (latents) contains 48 NaN or Inf "
                                               "values: the data is broken, not the learning rate (check the collected "
                                               "checkpoints)"),
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=exact(msg)):
            fit(**kw)
    assert not FakeRun.made
    fit(steps=1, drop=0.0)  # the boundaries that pass
    assert len(FakeRun.made) == 1


# --- sampling ------------------------------------------------------------------------------------

def test_generate_conditioned_calls_generate(monkeypatch):
    calls = []

    def generate(autoencoder, model, scheduler, n, **kw):
        calls.append(dict(ae=autoencoder, model=model, scheduler=scheduler, n=n, grad=torch.is_grad_enabled(), **kw))
        return torch.zeros(n, 2)

    monkeypatch.setattr(cond, "generate", generate)
    net = net_of().train()
    emb = torch.randn(5, 3)
    out = cond.generate_conditioned("ae", net, "sched", emb, progress=False, grain=2)
    assert torch.equal(out, torch.zeros(5, 2)) and not net.training
    c = calls[0]
    assert c["ae"] == "ae" and c["scheduler"] == "sched" and c["n"] == 5 and c["cond"] is emb and c["seed"] == 0
    assert c["grad"] is False and c["progress"] is False and c["grain"] == 2
    assert isinstance(c["model"], Guided) and c["model"].model is net and c["model"].scale == 1.0
    cond.generate_conditioned("ae", net, "sched", emb[:2], 2.5, seed=7)
    assert calls[1]["n"] == 2 and calls[1]["seed"] == 7 and calls[1]["model"].scale == 2.5
    assert torch.is_grad_enabled()

"""pdiff_fast.pipeline.train's parts, value by value, with tiny models: the batches drawn, the step
loop (what is stepped, the modes, the progress bar), the loss record, the checkpoints due and the
state they hold, the restore, the divergence checks and their messages, the time line, the data
checks, and both loops' losses (plain and with the process group faked: each rank's rows of the
whole batch's noise, the weights of the shares) against the same computation written out here.
Written against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md);
test_train.py runs the real loops, resumes and all."""
import math
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdiff_fast import distributed
from pdiff_fast.nn.autoencoder import ODEncoder2Decoder
from pdiff_fast.nn.denoiser import EMA
from pdiff_fast.pipeline import train as train_lib
from pdiff_fast.pipeline.train import (CHECK_EVERY, DIVERGE_FACTOR, TrainingDiverged, _batches, _check_data, _ddp,
                                       _duration, _Eta, _from_jsonable, _jsonable, _NoisedAutoencoder, _Run,
                                       fit_autoencoder, fit_diffusion)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


class Bar:
    """tqdm's stand-in: iterates, keeps its arguments and postfixes; write() keeps the lines."""

    made, lines = [], []

    def __init__(self, it, **kw):
        self.it, self.postfix = it, []
        Bar.made.append((it, kw, self))

    def __iter__(self):
        return iter(self.it)

    def set_postfix(self, **kw):
        self.postfix.append(kw)

    @staticmethod
    def write(line):
        Bar.lines.append(line)


@pytest.fixture
def bar(monkeypatch):
    Bar.made, Bar.lines = [], []
    monkeypatch.setattr(train_lib, "tqdm", Bar)
    return Bar


def test_constants():
    assert CHECK_EVERY == 50 and DIVERGE_FACTOR == 1e3 and issubclass(TrainingDiverged, FloatingPointError)


def test_batches_are_drawn_from_the_generator_only_when_smaller_than_the_data():
    g = gen(3)
    assert _batches(5, None, g, "cpu") is None and _batches(5, 5, g, "cpu") is None and _batches(5, 9, g, "cpu") is None
    assert torch.equal(g.get_state(), gen(3).get_state())  # nothing drawn
    idx = _batches(5, 4, g, "cpu")
    assert torch.equal(idx, torch.randint(0, 5, (4,), generator=gen(3))) and idx.dtype == torch.int64
    assert torch.equal(_batches(7, 6, gen(4), "cpu"), torch.randint(0, 7, (6,), generator=gen(4)))


# --- the step loop ---------------------------------------------------------------------------

class Lin(nn.Module):
    def __init__(self, *values):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(values, dtype=torch.float32))


def make_run(model, opt=None, data=None, gens=None, checkpoint=None, every=0, resume=None, what="toy", lr=0.1):
    opt = opt or torch.optim.SGD(model.parameters(), lr=lr)
    data = torch.tensor([1.0, -3.0, 2.0]) if data is None else data
    return _Run(what, "toy_lr", lr, {"model": model}, opt, gens or {}, data, checkpoint, every, resume)


def test_run_init():
    m = Lin(1.0)
    r = make_run(m)
    assert (r.what, r.lr_name, r.lr, r.data_scale, r.device, r.losses, r.start, r.every) == (
        "toy", "toy_lr", 0.1, 3.0, torch.device("cpu"), [], 0, 0)
    assert r.checkpoint is None and r.modules == {"model": m} and r.gens == {}
    assert make_run(m, data=torch.zeros(0)).data_scale == 0.0


def test_train_steps_the_model_and_records_the_loss(bar):
    m = Lin(1.0, 2.0)
    r = make_run(m)
    seen, updates = [], []

    def loss_at(step):
        seen.append(step)
        return ((m.w - step) ** 2).sum()

    m.eval()
    modes = []
    out = r.train(m, 3, False, lambda s: modes.append(m.training) or loss_at(s), after_update=lambda: updates.append(m.w.detach().clone()))
    assert seen == [0, 1, 2] and modes == [True] * 3 and not m.training
    w = torch.tensor([1.0, 2.0])
    for step in range(3):  # SGD, lr 0.1, gradient 2 (w - step)
        w = w - 0.1 * 2 * (w - step)
        assert torch.allclose(updates[step], w)  # after_update runs after the step
    assert torch.allclose(m.w.detach(), w)
    # recorded: step 0 (CHECK_EVERY) at w = (1, 2), and the last, step 2, at w = (0.84, 1.48)
    assert out is r.losses and out == pytest.approx([5.0, 1.16 ** 2 + 0.52 ** 2])
    (it, kw, b), = bar.made
    assert list(it) == [0, 1, 2] and kw == {"desc": "train toy", "disable": True, "initial": 0, "total": 3}
    assert b.postfix == [{"loss": f"{out[0]:.2e}"}, {"loss": f"{out[1]:.2e}"}]


def test_train_resumed_starts_at_the_step_and_shows_it(bar):
    m = Lin(1.0)
    r = make_run(m)
    r.start = 2
    seen = []
    r.train(m, 4, True, lambda s: seen.append(s) or (m.w ** 2).sum())
    assert seen == [2, 3]
    (it, kw, _), = bar.made
    assert list(it) == [2, 3] and kw == {"desc": "train toy", "disable": False, "initial": 2, "total": 4}


def test_train_with_progress_prints_the_time_line(monkeypatch, bar):
    clock = iter([10.0, 20.0])
    monkeypatch.setattr(train_lib.time, "perf_counter", lambda: next(clock))
    m = Lin(1.0)
    r = make_run(m)
    r.start = 1
    r.train(m, 9, True, lambda s: (m.w ** 2).sum())
    # timed from step 1 to step 6: 2 s/step, 2 steps left after step 6
    assert bar.lines == ["train toy: 2 s/step, 9 steps; about 4 s to go"]


def test_a_parameter_without_a_gradient_in_a_step_is_not_stepped(bar):
    """The gradients are dropped (set_to_none), not zeroed: AdamW skips a parameter without one."""
    m = Lin(1.0, 2.0)
    other = nn.Parameter(torch.tensor(3.0))
    opt = torch.optim.AdamW([m.w, other], lr=0.1, weight_decay=0.5)
    r = make_run(m, opt=opt)
    r.train(m, 2, False, lambda s: (m.w ** 2).sum() + (other ** 2 if s == 0 else 0))
    after_first = 3.0 * (1 - 0.1 * 0.5) - 0.1  # decay, then the first Adam step (sign of the gradient)
    assert other.item() == pytest.approx(after_first)


# --- state and restore -------------------------------------------------------------------------

def trained_run(gens=None, steps=2, **kw):
    torch.manual_seed(0)
    m = Lin(1.0, 2.0)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1)
    r = make_run(m, opt=opt, gens=gens, **kw)
    r.train(m, steps, False, lambda s: ((m.w - s) ** 2).sum())
    return r, m, opt


def test_state_holds_the_models_the_optimiser_every_generator_and_the_record(bar):
    g = gen(5)
    g.manual_seed(5)
    torch.randn(3, generator=g)
    random.seed(11)
    r, m, opt = trained_run({"batches": g})
    tensors, meta = r.state(7)
    assert set(tensors) == {"model.w", "optim.0.step", "optim.0.exp_avg", "optim.0.exp_avg_sq", "rng.torch", "rng.batches"}
    assert torch.equal(tensors["model.w"], m.w.detach())
    st = opt.state_dict()["state"][0]
    for k in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(tensors[f"optim.0.{k}"], st[k])
    assert torch.equal(tensors["rng.torch"], torch.get_rng_state()) and torch.equal(tensors["rng.batches"], g.get_state())
    assert meta["step"] == 7 and meta["losses"] == r.losses and meta["losses"] is not r.losses
    assert meta["param_groups"] == opt.state_dict()["param_groups"]
    assert meta["python_random"] == _jsonable(random.getstate()) and isinstance(meta["python_random"], list)
    # an optimiser state value that is not a tensor is stored as one
    buf = torch.ones(2)
    r.opt.state_dict = lambda: {"state": {0: {"step": 3, "buf": buf}}, "param_groups": []}
    tensors, _ = r.state(1)
    assert torch.equal(tensors["optim.0.step"], torch.tensor(3)) and tensors["optim.0.buf"] is buf  # a tensor as it is


def test_restore_continues_where_the_state_was_taken(bar):
    g = gen(5)
    random.seed(11)
    r, m, opt = trained_run({"batches": g})
    tensors, meta = r.state(2)
    tensors = {k: v.clone() for k, v in tensors.items()}
    py_state = random.getstate()
    copy_of_g = torch.Generator()
    copy_of_g.set_state(g.get_state())
    expected_next = torch.randn(2, generator=copy_of_g)
    torch_state = torch.get_rng_state()
    # everything moved on
    torch.randn(5), random.random(), torch.randn(4, generator=g)
    m2 = Lin(0.0, 0.0)
    opt2 = torch.optim.AdamW(m2.parameters(), lr=0.5)
    g2 = gen(99)
    r2 = make_run(m2, opt=opt2, gens={"batches": g2}, resume=(tensors, {**meta, "losses": [1.5, 2.5]}))
    assert torch.equal(m2.w.detach(), m.w.detach()) and r2.start == 2 and r2.losses == [1.5, 2.5]
    assert opt2.state_dict()["param_groups"][0]["lr"] == 0.1
    st, st2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert all(torch.equal(st[k], st2[k]) for k in ("step", "exp_avg", "exp_avg_sq"))
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
    assert torch.equal(torch.randn(2, generator=g2), expected_next)
    assert r2.start == 2 and type(r2.start) is int
    r3 = make_run(Lin(0.0, 0.0), gens={}, resume=(tensors, {**meta, "step": 2.0}))
    assert r3.start == 2 and type(r3.start) is int
    with pytest.raises(RuntimeError):  # strict: the state must be the model's
        make_run(Lin(0.0, 0.0), resume=({**tensors, "model.extra": torch.ones(1)}, meta))


class FakeOpt:
    def __init__(self):
        self.loaded = None

    def state_dict(self):
        return {"state": {}, "param_groups": []}

    def load_state_dict(self, sd):
        self.loaded = sd


def test_restore_reads_optimiser_keys_with_dots_and_the_cuda_generator(monkeypatch):
    cuda_calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_calls.append(("get", device)) or torch.ones(3, dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: cuda_calls.append(("set", state, device)))
    r = make_run(Lin(1.0), opt=FakeOpt())
    r.device = torch.device("cuda", 1)  # as on a GPU: its generator kept and restored
    tensors, meta = r.state(0)
    assert cuda_calls == [("get", torch.device("cuda", 1))] and torch.equal(tensors["rng.cuda"], torch.ones(3, dtype=torch.uint8))
    tensors["optim.3.a.b"] = torch.zeros(1)
    tensors["optim.3.c"] = torch.ones(1)
    r.restore(tensors, meta)
    assert cuda_calls[1][0] == "set" and cuda_calls[1][1] is tensors["rng.cuda"] and cuda_calls[1][2] == torch.device("cuda", 1)
    assert set(r.opt.loaded) == {"state", "param_groups"} and set(r.opt.loaded["state"]) == {3}
    assert r.opt.loaded["state"][3]["a.b"] is tensors["optim.3.a.b"] and r.opt.loaded["state"][3]["c"] is tensors["optim.3.c"]
    del tensors["rng.cuda"]  # a CPU checkpoint resumed on a GPU: its generator is left alone
    r.restore(tensors, meta)
    assert len(cuda_calls) == 2
    cpu = make_run(Lin(1.0), opt=FakeOpt())
    tensors, meta = cpu.state(0)
    assert "rng.cuda" not in tensors and len(cuda_calls) == 2
    cpu.restore({**tensors, "rng.cuda": torch.ones(3, dtype=torch.uint8)}, meta)
    assert len(cuda_calls) == 2


def test_python_state_round_trips_through_json_lists():
    state = random.getstate()
    j = _jsonable(state)
    assert isinstance(j, list) and isinstance(j[1], list) and _from_jsonable(j) == state
    assert _jsonable((1, (2, [3]), "a")) == [1, [2, [3]], "a"] and _from_jsonable([1, [2, [3]], "a"]) == (1, (2, (3,)), "a")


# --- per step: record, checks, checkpoints ----------------------------------------------------

class FakeBar:
    def __init__(self):
        self.postfix = []

    def set_postfix(self, **kw):
        self.postfix.append(kw)


def test_after_step_records_checks_and_checkpoints(monkeypatch):
    means = []
    monkeypatch.setattr(distributed, "all_mean", lambda t: means.append(t) or t * 2)
    saved = []
    r = make_run(Lin(1.0), checkpoint=lambda tensors, meta: saved.append(meta["step"]), every=40)
    b = FakeBar()
    for step in range(120):
        r.after_step(step, 120, torch.tensor(1.0 + step / 1000, requires_grad=True), b)
    # read at steps 0, 50, 100 (CHECK_EVERY), 39 and 79 (checkpoints after 40 and 80 steps) and 119 (the last);
    # recorded at 0, 50, 100 and 119
    assert len(means) == 6 and not any(t.requires_grad for t in means)
    assert r.losses == pytest.approx([2.0, 2.1, 2.2, 2.238])
    assert saved == [40, 80]  # not at 120: the loop's end is the caller's
    assert [p["loss"] for p in b.postfix] == [f"{v:.2e}" for v in (2.0, 2.078, 2.1, 2.158, 2.2, 2.238)]
    r = make_run(Lin(1.0), checkpoint=lambda tensors, meta: saved.append(meta["step"]), every=50)
    saved.clear()
    for step in range(100):
        r.after_step(step, 100, torch.tensor(1.0), FakeBar())
    assert saved == [50]
    for every, ck in ((0, lambda *a: saved.append(a)), (10, None)):
        saved.clear()
        r = make_run(Lin(1.0), checkpoint=ck, every=every)
        for step in range(30):
            r.after_step(step, 30, torch.tensor(1.0), FakeBar())
        assert saved == [] and r.losses == [2.0, 2.0]
    r = make_run(Lin(1.0), checkpoint=lambda tensors, meta: saved.append(meta["step"]), every=1)
    saved.clear()
    for step in range(3):
        r.after_step(step, 3, torch.tensor(1.0), FakeBar())
    assert saved == [1, 2]


def test_divergence_checks_and_messages():
    r = make_run(Lin(1.0), what="autoencoder", lr=0.002)
    r.lr_name = "ae_lr"
    with pytest.raises(TrainingDiverged) as e:
        r._check(float("nan"), 0)
    assert str(e.value) == ("autoencoder loss is nan at step 0, before any update: the training data is the likely "
                            "cause, not the learning rate (largest |value| 3; standardise it)")
    r._check(5.0, 0)  # a first finite value passes
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(TrainingDiverged) as e:
            r._check(bad, 7)
        assert str(e.value) == (f"autoencoder training diverged at step 7: the loss is {bad}. The training data is "
                                "finite, so the learning rate (ae_lr=0.002) is the likely cause: lower it. Models "
                                "already on disk were kept.")
    r.losses = [2.0]
    r._check(2000.0, 3)  # exactly the factor: kept
    r._check(-1e9, 3)
    with pytest.raises(TrainingDiverged) as e:
        r._check(2000.5, 3)
    assert str(e.value) == ("autoencoder training diverged at step 3: the loss grew to 2e+03, over 1000x its first "
                            "value 2. The training data is finite, so the learning rate (ae_lr=0.002) is the likely "
                            "cause: lower it. Models already on disk were kept.")
    r.losses = [0.0]
    r._check(1e-9, 3)
    with pytest.raises(TrainingDiverged):
        r._check(1.01e-9, 3)
    r.losses = []
    r._check(1e6, 3)  # no record yet: the value is its own first
    r.start = 4
    with pytest.raises(TrainingDiverged, match="diverged at step 0"):  # a resumed run's first step
        r._check(float("nan"), 0)
    r.start = 0
    with pytest.raises(TrainingDiverged, match="diverged at step 1: the loss is nan"):
        r._check(float("nan"), 1)


def test_a_diverging_loop_stops_at_the_check(bar):
    m = Lin(1.0)
    r = make_run(m)
    values = iter([1.0] * 50 + [5000.0] + [1.0] * 100)
    with pytest.raises(TrainingDiverged, match="at step 50"):
        r.train(m, 200, False, lambda s: (m.w * 0).sum() + next(values))


# --- the time line -------------------------------------------------------------------------------

def test_eta_line(monkeypatch, bar):
    clock = iter([10.0, 20.0])
    monkeypatch.setattr(train_lib.time, "perf_counter", lambda: next(clock))
    e = _Eta("diffusion", 3, 20, True)
    assert (e.what, e.start, e.steps, e.progress, e.t0, _Eta.AFTER) == ("diffusion", 3, 20, True, None, 5)
    for step in range(3, 12):
        e.after(step)
    # 10 s over 5 steps: 2 s/step; after step 8, 11 steps left: 22 s
    assert bar.lines == ["train diffusion: 2 s/step, 20 steps; about 22 s to go"]
    clock = iter([0.0, 1000.0])
    e = _Eta("ae", 0, 100, True)
    for step in range(10):
        e.after(step)
    assert bar.lines[1] == "train ae: 200 s/step, 100 steps; about 5.2 h to go"  # 94 steps left
    quiet = _Eta("x", 0, 100, False)
    for step in range(10):
        quiet.after(step)
    assert quiet.t0 is None and len(bar.lines) == 2
    late = _Eta("x", 0, 100, True)
    late.after(5)  # no start time: nothing
    assert len(bar.lines) == 2


def test_duration():
    assert [_duration(s) for s in (0, 89.4, 89.6, 90, 150, 5399, 5400, 9000, 5580.72)] == [
        "0 s", "89 s", "90 s", "2 min", "2 min", "90 min", "1.5 h", "2.5 h", "1.6 h"]  # 1.5502 h


def test_check_data_names_the_bad_values():
    _check_data(torch.ones(3), "x")
    with pytest.raises(ValueError) as e:
        _check_data(torch.tensor([1.0, float("nan"), float("inf"), -float("inf")]), "autoencoder training data")
    assert str(e.value) == ("autoencoder training data contains 3 NaN or Inf values: the data is broken, not the "
                            "learning rate (check the collected checkpoints)")


# --- the autoencoder loop --------------------------------------------------------------------

class TinyAE(nn.Module):
    """A linear autoencoder of 4 values with ODEncoder2Decoder's noise augmentation."""

    in_dim, input_noise_factor, latent_noise_factor = 4, 0.3, 0.6
    noise_factor = staticmethod(ODEncoder2Decoder.noise_factor)
    add_noise = ODEncoder2Decoder.add_noise
    forward = ODEncoder2Decoder.forward

    def __init__(self):
        super().__init__()
        self.enc, self.dec = nn.Linear(4, 2), nn.Linear(2, 4)
        self.initialized = None

    def encode(self, x):
        return self.enc(x).view(-1, 1, 2)

    def decode(self, z):
        return self.dec(z.view(-1, 2))

    def latent_shape(self):
        return (1, 2)


def ae_data(k=6):
    return torch.randn(k, 4, generator=gen(1))


def test_fit_autoencoder_checks():
    ae = TinyAE()
    for bad in (torch.zeros(3, 5), torch.zeros(4), torch.zeros(2, 2, 4)):
        with pytest.raises(ValueError) as e:
            fit_autoencoder(ae, bad, 1, progress=False)
        assert str(e.value) == f"autoencoder expects (K, 4) training data, got {tuple(bad.shape)}"
    for steps in (0, -1):
        with pytest.raises(ValueError) as e:
            fit_autoencoder(ae, ae_data(), steps, progress=False)
        assert str(e.value) == f"autoencoder training needs at least 1 step, got {steps}"
    with pytest.raises(ValueError, match=r"^autoencoder training data contains 1 NaN or Inf values"):
        fit_autoencoder(ae, torch.tensor([[1.0, 2.0, float("nan"), 0.0]]), 1, progress=False)


def test_fit_autoencoder_loss_optimiser_and_batches(monkeypatch, bar):
    import copy
    x = ae_data()
    torch.manual_seed(0)
    ae = TinyAE()
    start = copy.deepcopy(ae)
    opts = []
    real = torch.optim.AdamW
    monkeypatch.setattr(torch.optim, "AdamW", lambda params, **kw: opts.append(kw) or real(params, **kw))
    torch.manual_seed(7)
    losses = fit_autoencoder(ae, x, 1, batch_size=4, seed=3)
    assert opts == [{"lr": 1e-3, "weight_decay": 2e-6}]
    idx = torch.randint(0, 6, (4,), generator=gen(3))
    torch.manual_seed(7)
    assert losses == [pytest.approx(F.mse_loss(start(x[idx]), x[idx]).item(), rel=1e-6)]
    assert bar.made[0][1]["desc"] == "train autoencoder" and bar.made[0][1]["disable"] is False
    opts.clear()
    ae2 = copy.deepcopy(start)
    torch.manual_seed(7)
    losses = fit_autoencoder(ae2, x, 2, lr=0.01, weight_decay=0.5, progress=False)  # the whole batch
    assert opts == [{"lr": 0.01, "weight_decay": 0.5}]
    torch.manual_seed(7)
    assert losses[0] == pytest.approx(F.mse_loss(start(x), x).item(), rel=1e-6)
    assert not ae2.training


class RecordingRun(_Run):
    made = []

    def __init__(self, *args):
        RecordingRun.made.append(args)
        super().__init__(*args)


def test_the_loops_name_their_run(monkeypatch, bar):
    monkeypatch.setattr(train_lib, "_Run", RecordingRun)
    RecordingRun.made = []
    x, ae, ck = ae_data(), TinyAE(), (lambda t, m: None)
    fit_autoencoder(ae, x, 1, lr=0.01, progress=False, checkpoint=ck, checkpoint_every=3)
    what, lr_name, lr, modules, opt, gens, data, checkpoint, every, resume = RecordingRun.made[0]
    assert (what, lr_name, lr, modules, data, checkpoint, every, resume) == ("autoencoder", "ae_lr", 0.01, {"model": ae}, x, ck, 3, None)
    assert list(gens) == ["batches"] and isinstance(opt, torch.optim.AdamW)
    lat = torch.randn(5, 1, 3, generator=gen(2))
    model = EMA(TinyDen())
    fit_diffusion(model, lat, FakeScheduler(), 1, lr=0.02, progress=False, checkpoint=ck, checkpoint_every=4)
    what, lr_name, lr, modules, opt, gens, data, checkpoint, every, resume = RecordingRun.made[1]
    assert (what, lr_name, lr, modules, data, checkpoint, every, resume) == ("diffusion", "diffusion_lr", 0.02, {"model": model}, lat, ck, 4, None)
    assert list(gens) == ["batches", "noise"] and gens["noise"].initial_seed() == 0 == gens["batches"].initial_seed()


class DefaultsRun(_Run):
    made = []

    def __init__(self, *args):
        DefaultsRun.made.append({"args": args})
        super().__init__(*args)

    def train(self, model, steps, progress, loss_at, after_update=None):
        DefaultsRun.made[-1].update(steps=steps, progress=progress, loss=loss_at(0).item())
        return []


def test_the_loops_defaults(monkeypatch, bar):
    """30000 steps with progress, seed 0, no checkpoints, no resume, not sharded (no DDP asked for)."""
    monkeypatch.setattr(train_lib, "_Run", DefaultsRun)
    ddp = []
    monkeypatch.setattr(train_lib, "_ddp", lambda *a: ddp.append(a))
    DefaultsRun.made = []
    fit_autoencoder(TinyAE(), ae_data())
    fit_diffusion(EMA(TinyDen()), torch.randn(5, 1, 3, generator=gen(2)), FakeScheduler())
    for run in DefaultsRun.made:
        *_, gens, data, checkpoint, every, resume = run["args"]
        assert (run["steps"], run["progress"], checkpoint, every, resume) == (30000, True, None, 0, None)
        assert all(g.initial_seed() == 0 for g in gens.values())
    assert ddp == []


def test_the_loops_pass_resume_on(monkeypatch, bar):
    monkeypatch.setattr(train_lib, "_Run", RecordingRun)
    x = ae_data()
    saved = []
    fit_autoencoder(TinyAE(), x, 2, progress=False, checkpoint=lambda t, m: saved.append((t, m)), checkpoint_every=1)
    RecordingRun.made = []
    fit_autoencoder(TinyAE(), x, 2, progress=False, resume=saved[0])
    assert RecordingRun.made[0][-1] is saved[0]
    lat = torch.randn(5, 1, 3, generator=gen(2))
    saved.clear()
    fit_diffusion(EMA(TinyDen()), lat, FakeScheduler(), 2, progress=False, checkpoint=lambda t, m: saved.append((t, m)),
                  checkpoint_every=1)
    fit_diffusion(EMA(TinyDen()), lat, FakeScheduler(), 2, progress=False, resume=saved[0])
    assert RecordingRun.made[-1][-1] is saved[0]


def test_fit_autoencoder_initialises_unless_resumed(bar):
    x = ae_data()
    ae = TinyAE()
    ae.initialize = lambda params: setattr(ae, "initialized", params)
    fit_autoencoder(ae, x, 1, progress=False)
    assert ae.initialized is x
    saved = []
    ae.initialized = None
    fit_autoencoder(ae, x, 4, progress=False, checkpoint=lambda t, m: saved.append((dict(t), dict(m))), checkpoint_every=2)
    assert [m["step"] for _, m in saved] == [2] and set(saved[0][0]) >= {"model.enc.weight", "rng.batches", "rng.torch"}
    ae.initialized = None
    fit_autoencoder(ae, x, 4, progress=False, resume=saved[0])
    assert ae.initialized is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fit_autoencoder_sharded_takes_its_rows_of_the_whole_batch(monkeypatch, bar, dtype):
    import copy
    x = ae_data().to(dtype)
    torch.manual_seed(0)
    ae = TinyAE().to(dtype)
    start = copy.deepcopy(ae)
    asked = []
    monkeypatch.setattr(train_lib, "_ddp", lambda module, n, bs, what: asked.append((type(module), n, bs, what)) or module)
    monkeypatch.setattr(distributed, "shard", lambda n: asked.append(("shard", n)) or (2, 6))
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    torch.manual_seed(7)
    losses = fit_autoencoder(ae, x, 1, shard=True, progress=False)
    assert asked == [(_NoisedAutoencoder, 6, None, "autoencoder"), ("shard", 6)]
    torch.manual_seed(7)
    n_in = torch.randn_like(x)
    n_lat = torch.randn((6, 1, 2), dtype=dtype)  # in the data's dtype
    y = start.decode(torch.clamp(n_lat[2:6] * 0.6 + start.encode(n_in[2:6] * 0.3 + x[2:6] * 0.7) * 0.4, -1, 1))
    rel = 1e-6 if dtype == torch.float32 else 1e-12  # float64: noise drawn in float32 would show
    assert losses == [pytest.approx((((y - x[2:6]) ** 2).sum() * 3 / 24).item(), rel=rel)]
    asked.clear()
    fit_autoencoder(ae, x, 1, shard=True, batch_size=4, progress=False)
    assert asked[0] == (_NoisedAutoencoder, 6, 4, "autoencoder") and asked[1] == ("shard", 4)


def test_noised_autoencoder_is_the_forward_with_its_noise_given():
    torch.manual_seed(0)
    ae = TinyAE()
    m = _NoisedAutoencoder(ae)
    assert m.ae is ae and list(m.parameters()) == list(ae.parameters())
    x, ni, nl = torch.randn(3, 4, generator=gen(1)), torch.randn(3, 4, generator=gen(2)), torch.randn(3, 1, 2, generator=gen(3)) * 4
    z = ae.encode(ni * 0.25 + x * 0.75)
    want = ae.decode(torch.clamp(nl * 0.5 + z * 0.5, -1, 1))
    torch.testing.assert_close(m(x, ni, 0.25, nl, 0.5), want)


def test_ddp_only_in_a_process_group_with_rows_for_every_rank(monkeypatch):
    assert _ddp(nn.Linear(1, 1), 4, None, "x") is None
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    monkeypatch.setattr(train_lib, "DistributedDataParallel", lambda module: ("ddp", module))
    lin = nn.Linear(1, 1)
    assert _ddp(lin, 3, None, "x") == ("ddp", lin) and _ddp(lin, 9, 3, "x") == ("ddp", lin)
    for n, bs in ((2, None), (9, 2), (2, 5)):
        with pytest.raises(ValueError) as e:
            _ddp(lin, n, bs, "diffusion")
        assert str(e.value) == (f"diffusion training: a batch of {min(n, bs or n)} rows cannot be split over 3 "
                                "processes; use fewer processes or a larger batch")


# --- the diffusion loop -----------------------------------------------------------------------

class FakeScheduler:
    """t drawn from the generator handed, x_t = x0 / 2 + noise; every call kept."""

    def __init__(self):
        self.calls = []

    def sample_timesteps(self, batch, device, generator):
        self.calls.append(("t", batch, device, generator))
        return torch.randint(0, 10, (batch,), generator=generator)

    def add_noise(self, x0, t, generator=None, seed=None, seed_offset=0):
        self.calls.append(("noise", x0.shape[0], generator, seed, seed_offset))
        noise = torch.randn(x0.shape, generator=generator)
        return x0 / 2 + noise + 0.01 * t.float().view(-1, 1, 1), noise


class TinyDen(nn.Module):
    def __init__(self):
        super().__init__()
        self.w, self.b = nn.Parameter(torch.tensor(0.5)), nn.Parameter(torch.tensor(0.1))

    def forward(self, x, t):
        return self.w * x + self.b * t.float().view(-1, 1, 1)


def diffusion_loss(w, b, x0, idx_gen, dev_gen, batch_size=None, rows=None, weight=1.0):
    n = x0.shape[0]
    if batch_size is not None and batch_size < n:
        x0 = x0[torch.randint(0, n, (batch_size,), generator=idx_gen)]
    t = torch.randint(0, 10, (x0.shape[0],), generator=dev_gen)
    noise = torch.randn(x0.shape, generator=dev_gen)
    x_t = x0 / 2 + noise + 0.01 * t.float().view(-1, 1, 1)
    a, z = rows or (0, x0.shape[0])
    pred = w * x_t[a:z] + b * t[a:z].float().view(-1, 1, 1)
    return ((pred - noise[a:z]) ** 2).mean().item() * weight


def test_fit_diffusion_checks():
    model = EMA(TinyDen())
    for steps in (0, -2):
        with pytest.raises(ValueError) as e:
            fit_diffusion(model, torch.zeros(2, 1, 3), FakeScheduler(), steps, progress=False)
        assert str(e.value) == f"diffusion training needs at least 1 step, got {steps}"
    with pytest.raises(ValueError) as e:
        fit_diffusion(model, torch.full((2, 1, 3), float("inf")), FakeScheduler(), 1, progress=False)
    assert str(e.value).startswith("diffusion training data (latents) contains 6 NaN or Inf values")


def test_fit_diffusion_loss_generators_and_ema(monkeypatch, bar):
    lat = torch.randn(5, 1, 3, generator=gen(2))
    opts = []
    real = torch.optim.AdamW
    def adamw(params, **kw):
        params = list(params)
        opts.append((params, kw))
        return real(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", adamw)
    model, s = EMA(TinyDen(), decay=0.0), FakeScheduler()
    losses = fit_diffusion(model, lat, s, 2, batch_size=3, seed=4, ema_decay=0.25)
    (params, kw), = opts
    assert kw == {"lr": 1e-3, "weight_decay": 2e-6} and params == list(model.model.parameters())
    idx_gen, dev_gen = gen(4), gen(4)
    assert losses[0] == pytest.approx(diffusion_loss(0.5, 0.1, lat, idx_gen, dev_gen, 3), rel=1e-6)
    assert [c[0] for c in s.calls] == ["t", "noise"] * 2
    t_call, n_call = s.calls[0], s.calls[1]
    assert t_call[1] == 3 and t_call[2] == lat.device and n_call[1] == 3 and n_call[3:] == (4, 0)
    assert s.calls[3][3:] == (4, 1) and t_call[3] is n_call[2]  # one device generator for both
    assert bar.made[0][1]["desc"] == "train diffusion" and bar.made[0][1]["disable"] is False
    # the EMA moved with decay 0.25, not its own 0.0 (which would copy the model)
    assert not torch.equal(model.ema.w, model.model.w)
    opts.clear()
    model = EMA(TinyDen(), decay=0.0)
    fit_diffusion(model, lat, FakeScheduler(), 1, lr=0.5, weight_decay=0.1, progress=False)
    assert opts[0][1] == {"lr": 0.5, "weight_decay": 0.1} and torch.equal(model.ema.w, model.model.w)
    model = EMA(TinyDen(), decay=0.0)
    losses = fit_diffusion(model, lat, FakeScheduler(), 1, progress=False)  # the whole batch, seed 0
    assert losses == [pytest.approx(diffusion_loss(0.5, 0.1, lat, gen(0), gen(0)), rel=1e-6)]
    assert not model.training


def test_fit_diffusion_ema_decay_default_is_the_models(bar):
    lat = torch.randn(5, 1, 3, generator=gen(2))
    model = EMA(TinyDen(), decay=0.5)
    w_start = model.model.w.detach().clone()
    fit_diffusion(model, lat, FakeScheduler(), 1, progress=False)
    torch.testing.assert_close(model.ema.w.detach(), 0.5 * w_start + 0.5 * model.model.w.detach())


def test_fit_diffusion_checkpoints_hold_both_generators(bar):
    lat = torch.randn(5, 1, 3, generator=gen(2))
    saved = []
    fit_diffusion(EMA(TinyDen()), lat, FakeScheduler(), 3, progress=False, batch_size=2,
                  checkpoint=lambda t, m: saved.append((t, m)), checkpoint_every=1)
    assert [m["step"] for _, m in saved] == [1, 2]
    tensors = saved[0][0]
    assert {"rng.batches", "rng.noise", "model.model.w", "model.ema.w"} <= set(tensors)
    g = gen(0)
    torch.randint(0, 5, (2,), generator=g)
    assert torch.equal(tensors["rng.batches"], g.get_state())
    d = gen(0)
    torch.randint(0, 10, (2,), generator=d), torch.randn((2, 1, 3), generator=d)
    assert torch.equal(tensors["rng.noise"], d.get_state())


def test_fit_diffusion_sharded_weights_its_share(monkeypatch, bar):
    lat = torch.randn(5, 1, 3, generator=gen(2))
    asked = []
    model = EMA(TinyDen())
    monkeypatch.setattr(train_lib, "_ddp", lambda module, n, bs, what: asked.append((module, n, bs, what)) or module)
    monkeypatch.setattr(distributed, "shard", lambda n: asked.append(("shard", n)) or (1, 3))
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    losses = fit_diffusion(model, lat, FakeScheduler(), 1, shard=True, progress=False, batch_size=4, seed=2)
    assert asked == [(model.model, 5, 4, "diffusion"), ("shard", 4)]
    # two of the batch's four rows, on three processes: weight 2 * 3 / 4
    assert losses == [pytest.approx(diffusion_loss(0.5, 0.1, lat, gen(2), gen(2), 4, rows=(1, 3), weight=2 * 3 / 4), rel=1e-6)]
    assert math.isfinite(losses[0])

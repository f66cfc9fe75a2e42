"""The ops' dispatchers and torch references, part by part (fast: no kernel runs).

Each torch reference is checked against its formula written out in float64 on random inputs,
every flag both ways; each dispatcher against fakes of `backend.choose` and of the Triton
launcher, so the test sees which path ran, with which arguments, and which op name and device
were asked for. The kernels themselves are tested against these references in tests/kernels/.
"""
from __future__ import annotations

import importlib
import types

import pytest
import torch
import torch.nn.functional as F

from pdiff_fast import backend

# the modules, not the functions of the same names that pdiff_fast.ops exports
anc, ddim, ddpm, mse, extension_ops, noise, naa, qs, ss, triton_ops = (
    importlib.import_module(f"pdiff_fast.ops.{name}") for name in (
        "act_norm_conv1d", "ddim_step", "ddpm_step", "eps_mse", "extension_ops", "noise", "norm_affine_act",
        "q_sample", "solver_step", "triton_ops"))

D64 = torch.float64


def rand(*shape, generator=None, scale=1.0):
    return torch.randn(*shape, dtype=D64, generator=generator) * scale


@pytest.fixture
def g():
    return torch.Generator().manual_seed(1234)


class Launcher:
    """A stand-in Triton launcher module: records each call, returns a marker."""

    def __init__(self, op):
        self.op, self.calls = op, []
        setattr(self, op, self._call)

    def _call(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return ("triton", self.op)


@pytest.fixture
def route(monkeypatch):
    """route(backend_name) -> (launcher_for, asked): backend.choose answers backend_name and records
    (op, device, auto); triton_ops.implementation / backend.load_triton_op give a Launcher."""
    asked, launchers = [], {}

    def setup(name):
        def choose(op, device, *, auto=True):
            asked.append((op, torch.device(device), auto))
            return name

        def launcher(op):
            return launchers.setdefault(op, Launcher(op))

        monkeypatch.setattr(backend, "choose", choose)
        monkeypatch.setattr(triton_ops, "implementation", launcher)
        monkeypatch.setattr(backend, "load_triton_op", launcher)
        return launcher, asked

    return setup


# --- noise -----------------------------------------------------------------------------------

def test_randn_like_draws_from_the_generator_in_the_input_dtype():
    x = torch.zeros(3, 5, dtype=D64)
    got = noise.randn_like(x, torch.Generator().manual_seed(7))
    want = torch.randn((3, 5), dtype=D64, generator=torch.Generator().manual_seed(7))
    assert got.dtype == D64 and torch.equal(got, want)
    torch.manual_seed(3)
    unseeded = noise.randn_like(x)
    torch.manual_seed(3)
    assert torch.equal(unseeded, torch.randn(3, 5, dtype=D64))


def test_randn_like_with_a_generator_elsewhere_draws_there_and_moves(monkeypatch):
    # a "cuda" generator for a CPU tensor stands for the other-device case: the draw must happen on
    # the generator's device (as torch would refuse the mismatch), then move to x's device
    seen = {}
    real = torch.randn

    def randn(shape, device=None, dtype=None, generator=None):
        seen["device"] = device
        seen["generator"] = generator
        return real(shape, dtype=dtype)

    fake_gen = types.SimpleNamespace(device=torch.device("meta"))
    monkeypatch.setattr(noise.torch, "randn", randn)
    out = noise.randn_like(torch.zeros(2, 3, dtype=D64), fake_gen)
    assert seen["device"] == torch.device("meta") and seen["generator"] is fake_gen
    assert out.device.type == "cpu" and out.shape == (2, 3) and out.dtype == D64


def test_seed_tensor_is_a_draw_below_seed_high_from_the_generator():
    assert noise.SEED_HIGH == 2**31 - 1
    s = noise.seed_tensor(torch.Generator().manual_seed(5))
    want = torch.randint(0, 2**31 - 1, (1,), generator=torch.Generator().manual_seed(5))
    assert s.dtype == torch.int64 and s.shape == (1,) and s.device.type == "cpu" and torch.equal(s, want)
    torch.manual_seed(11)
    a = noise.seed_tensor()
    torch.manual_seed(11)
    assert torch.equal(a, torch.randint(0, 2**31 - 1, (1,)))
    draws = torch.cat([noise.seed_tensor(torch.Generator().manual_seed(i)) for i in range(200)])
    assert int(draws.min()) >= 0 and int(draws.max()) < 2**31 - 1 and int(draws.max()) > 2**30


def test_seed_tensor_draws_on_the_generators_device(monkeypatch):
    asked = []
    monkeypatch.setattr(noise.torch, "randint", lambda low, high, size, generator=None, device=None: asked.append(
        (low, high, size, generator, device)) or "SEED")
    gen = types.SimpleNamespace(device=torch.device("meta"))
    assert noise.seed_tensor(gen) == "SEED" and noise.seed_tensor() == "SEED"
    assert asked == [(0, 2**31 - 1, (1,), gen, torch.device("meta")), (0, 2**31 - 1, (1,), None, torch.device("cpu"))]


# --- eps_mse ---------------------------------------------------------------------------------

def test_eps_mse_torch_is_the_mean_square_error(g):
    pred, target = rand(4, 1, 9, generator=g), rand(4, 1, 9, generator=g)
    want = sum(float(p - t) ** 2 for p, t in zip(pred.flatten(), target.flatten())) / pred.numel()
    assert mse.eps_mse_torch(pred, target).item() == pytest.approx(want, rel=1e-12)


def test_eps_mse_dispatch(route, g):
    launcher, asked = route("triton")
    pred, target = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    assert mse.eps_mse(pred, target) == ("triton", "eps_mse")
    assert asked == [("eps_mse", torch.device("cpu"), True)]
    args, kwargs = launcher("eps_mse").calls[0]
    assert args[0] is pred and args[1] is target and kwargs == {}
    # a dtype the kernels lack in either input, or torch chosen: the reference
    p64, t64 = pred.double(), target.double()
    assert torch.equal(mse.eps_mse(p64, t64), mse.eps_mse_torch(p64, t64))
    n = len(launcher("eps_mse").calls)
    assert torch.equal(mse.eps_mse(p64, target), mse.eps_mse_torch(p64, target))
    assert torch.equal(mse.eps_mse(pred, t64), mse.eps_mse_torch(pred, t64))
    assert len(launcher("eps_mse").calls) == n
    route("torch")
    assert torch.equal(mse.eps_mse(pred, target), mse.eps_mse_torch(pred, target))
    with pytest.raises(ValueError, match=r"eps_mse: prediction \(2, 3\) and target \(3, 2\) differ"):
        mse.eps_mse(pred, target.T.contiguous())


# --- q_sample --------------------------------------------------------------------------------

def test_q_sample_torch_is_the_forward_noising(g):
    x0, nz = rand(3, 2, 5, generator=g), rand(3, 2, 5, generator=g)
    coefs = torch.rand(2, 10, dtype=D64, generator=g)
    t = torch.tensor([0, 9, 4])
    x_t, n = qs.q_sample_torch(x0, t, coefs, nz)
    assert n is nz
    for b in range(3):
        want = coefs[0, t[b]] * x0[b] + coefs[1, t[b]] * nz[b]
        assert torch.allclose(x_t[b], want, rtol=0, atol=1e-14)
    # the noise drawn from the generator when not given
    x_t2, drawn = qs.q_sample_torch(x0, t, coefs, generator=torch.Generator().manual_seed(2))
    assert torch.equal(drawn, torch.randn(x0.shape, dtype=D64, generator=torch.Generator().manual_seed(2)))
    assert torch.allclose(x_t2, qs.q_sample_torch(x0, t, coefs, drawn)[0], rtol=0, atol=0)


def test_q_sample_dispatch(route, g):
    launcher, asked = route("triton")
    x0, t, coefs = torch.randn(2, 4, generator=g), torch.tensor([1, 2]), torch.rand(2, 5, generator=g)
    gen = torch.Generator()
    assert qs.q_sample(x0, t, coefs, None, gen, seed=5, seed_offset=3, row_offset=7) == ("triton", "q_sample")
    assert asked == [("q_sample", torch.device("cpu"), True)]
    args, kwargs = launcher("q_sample").calls[0]
    assert args[0] is x0 and args[1] is t and args[2] is coefs and args[3] is None and args[4] is gen
    assert kwargs == {"seed": 5, "seed_offset": 3, "row_offset": 7}
    assert qs.q_sample(x0, t, coefs) == ("triton", "q_sample")
    assert launcher("q_sample").calls[1][1] == {"seed": None, "seed_offset": 0, "row_offset": 0}
    nz = torch.randn(2, 4, generator=g).double()
    out = qs.q_sample(x0, t, coefs, nz)  # float64 noise: the reference
    assert torch.equal(out[0], qs.q_sample_torch(x0, t, coefs, nz)[0]) and out[1] is nz
    route("torch")
    out = qs.q_sample(x0, t, coefs, generator=torch.Generator().manual_seed(4))
    want = qs.q_sample_torch(x0, t, coefs, generator=torch.Generator().manual_seed(4))
    assert torch.equal(out[0], want[0]) and torch.equal(out[1], want[1])


# --- ddpm_step -------------------------------------------------------------------------------

def ddpm_by_hand(x_t, eps, t, nz, coefs, clip):
    rows = []
    for b in range(x_t.shape[0]):
        c = coefs[:, t[b]]
        x0 = c[0] * x_t[b] - c[1] * eps[b]
        if clip:
            x0 = x0.clamp(-1, 1)
        mean = c[2] * x0 + c[3] * x_t[b]
        x = mean + (torch.exp(0.5 * c[4]) * nz[b] if t[b] > 0 else 0)
        rows.append((x.clamp(-1, 1), x0))
    return torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])


@pytest.mark.parametrize("clip", [True, False])
def test_ddpm_step_torch_is_the_ancestral_step(g, clip):
    x_t, eps, nz = rand(4, 1, 6, generator=g), rand(4, 1, 6, generator=g, scale=3), rand(4, 1, 6, generator=g)
    coefs = torch.rand(5, 8, dtype=D64, generator=g) * 2 - 0.5
    t = torch.tensor([0, 7, 3, 1])
    x, x0 = ddpm.ddpm_step_torch(x_t, eps, t, nz, coefs, clip)
    want_x, want_x0 = ddpm_by_hand(x_t, eps, t, nz, coefs, clip)
    assert torch.allclose(x0, want_x0, rtol=0, atol=1e-14) and torch.allclose(x, want_x, rtol=0, atol=1e-14)
    assert (x0.abs() > 1).any() != clip  # the inputs reach past [-1, 1]: the clip is seen
    assert x.abs().max() <= 1 and (x.abs() == 1).any()  # and x_t is clamped either way


def test_ddpm_step_default_clips(g):
    x_t, eps, nz = rand(2, 3, generator=g), rand(2, 3, generator=g, scale=5), rand(2, 3, generator=g)
    coefs, t = torch.rand(5, 4, dtype=D64, generator=g) + 0.5, torch.tensor([1, 2])
    assert torch.equal(ddpm.ddpm_step_torch(x_t, eps, t, nz, coefs)[1], ddpm.ddpm_step_torch(x_t, eps, t, nz, coefs, True)[1])
    assert torch.equal(ddpm.ddpm_step(x_t, eps, t, nz, coefs)[1], ddpm.ddpm_step_torch(x_t, eps, t, nz, coefs, True)[1])


def test_ddpm_step_dispatch(route, g):
    launcher, asked = route("triton")
    x_t, eps, t, coefs = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g), torch.tensor([0, 1]), torch.rand(5, 4)
    gen = torch.Generator()
    assert ddpm.ddpm_step(x_t, eps, t, None, coefs, False, generator=gen, seed=9, seed_offset=2, row_offset=4) == \
        ("triton", "ddpm_step")
    assert asked == [("ddpm_step", torch.device("cpu"), True)]
    args, kwargs = launcher("ddpm_step").calls[0]
    assert args[:2] == (x_t, eps) and args[2] is t and args[3] is None and args[4] is coefs and args[5] is False
    assert kwargs == {"generator": gen, "seed": 9, "seed_offset": 2, "row_offset": 4}
    ddpm.ddpm_step(x_t, eps, t, None, coefs)
    assert launcher("ddpm_step").calls[1][0][5] is True
    assert launcher("ddpm_step").calls[1][1] == {"generator": None, "seed": None, "seed_offset": 0, "row_offset": 0}
    # torch: the noise drawn from the generator when not given
    route("torch")
    x, x0 = ddpm.ddpm_step(x_t, eps, t, None, coefs, generator=torch.Generator().manual_seed(8))
    nz = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(8))
    want = ddpm.ddpm_step_torch(x_t, eps, t, nz, coefs)
    assert torch.equal(x, want[0]) and torch.equal(x0, want[1])
    given = torch.randn(2, 3, generator=g)
    assert torch.equal(ddpm.ddpm_step(x_t, eps, t, given, coefs)[0], ddpm.ddpm_step_torch(x_t, eps, t, given, coefs)[0])
    big = eps * 50  # x0 past [-1, 1]: the clip shows
    assert torch.equal(ddpm.ddpm_step(x_t, big, t, given, coefs, False)[1], ddpm.ddpm_step_torch(x_t, big, t, given, coefs, False)[1])
    assert not torch.equal(ddpm.ddpm_step(x_t, big, t, given, coefs, False)[1], ddpm.ddpm_step(x_t, big, t, given, coefs)[1])
    route("triton")
    out = ddpm.ddpm_step(x_t.double(), eps.double(), t, given.double(), coefs.double())
    assert torch.equal(out[0], ddpm.ddpm_step_torch(x_t.double(), eps.double(), t, given.double(), coefs.double())[0])


# --- ddim_step -------------------------------------------------------------------------------

def ddim_by_hand(x_t, eps, a_t, a_prev, nz, eta, clip, clamp):
    x0 = (x_t - (1 - a_t) ** 0.5 * eps) / a_t ** 0.5
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x_t - a_t ** 0.5 * x0) / (1 - a_t) ** 0.5
    sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)) ** 0.5
    x = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0) ** 0.5 * eps
    if sigma > 0:
        x = x + sigma * nz
    return (x.clamp(-1, 1) if clamp else x), x0


@pytest.mark.parametrize("clip,clamp", [(True, False), (False, True), (False, False), (True, True)])
@pytest.mark.parametrize("eta", [0.0, 0.7, 1.0])
def test_ddim_step_torch_is_song_eq_12(g, clip, clamp, eta):
    x_t, eps, nz = rand(3, 8, generator=g, scale=1.5), rand(3, 8, generator=g, scale=2), rand(3, 8, generator=g)
    a_t, a_prev = 0.3, 0.8
    x, x0 = ddim.ddim_step_torch(x_t, eps, a_t, a_prev, nz, eta, clip, clamp)
    want_x, want_x0 = ddim_by_hand(x_t, eps, a_t, a_prev, nz, eta, clip, clamp)
    assert torch.allclose(x0, want_x0, rtol=0, atol=1e-13) and torch.allclose(x, want_x, rtol=0, atol=1e-13)
    assert (x.abs() > 1).any() != clamp and (x0.abs() > 1).any() != clip


def test_ddim_step_torch_defaults_and_the_last_step(g):
    x_t, eps = rand(2, 5, generator=g, scale=2), rand(2, 5, generator=g, scale=2)
    x, x0 = ddim.ddim_step_torch(x_t, eps, 0.4, 0.9, None)  # eta 0, clip, no clamp
    want = ddim_by_hand(x_t, eps, 0.4, 0.9, None, 0.0, True, False)
    assert torch.allclose(x, want[0], rtol=0, atol=1e-13) and torch.allclose(x0, want[1], rtol=0, atol=1e-13)
    # a_prev = 1 (the step to t < 0): x_prev is x0 itself, with no noise even at eta 1
    x, x0 = ddim.ddim_step_torch(x_t, eps, 0.4, 1.0, None, eta=1.0)
    assert torch.allclose(x, x0, rtol=0, atol=1e-15)
    # rounding that would make 1 - a_prev - sigma^2 slightly negative gives direction 0, not NaN
    x, _ = ddim.ddim_step_torch(x_t, eps, 0.5, 0.5 + 1e-17, rand(2, 5, generator=g), eta=1.0)
    assert torch.isfinite(x).all()


def test_ddim_step_dispatch(route, g):
    launcher, asked = route("triton")
    x_t, eps = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    gen = torch.Generator()
    assert ddim.ddim_step(x_t, eps, 0.3, 0.6, None, 0.5, False, clamp=True, generator=gen, seed=1, seed_offset=2,
                          row_offset=3) == ("triton", "ddim_step")
    assert asked == [("ddim_step", torch.device("cpu"), True)]
    args, kwargs = launcher("ddim_step").calls[0]
    assert args[0] is x_t and args[1] is eps and args[2:] == (0.3, 0.6, None, 0.5, False)
    assert kwargs == {"clamp": True, "generator": gen, "seed": 1, "seed_offset": 2, "row_offset": 3}
    ddim.ddim_step(x_t, eps, 0.3, 0.6, None)
    args, kwargs = launcher("ddim_step").calls[1]
    assert args[2:] == (0.3, 0.6, None, 0.0, True)
    assert kwargs == {"clamp": False, "generator": None, "seed": None, "seed_offset": 0, "row_offset": 0}
    route("torch")
    x, x0 = ddim.ddim_step(x_t, eps, 0.3, 0.6, None, 0.5, generator=torch.Generator().manual_seed(6))
    nz = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(6))
    want = ddim.ddim_step_torch(x_t, eps, 0.3, 0.6, nz, 0.5)
    assert torch.equal(x, want[0]) and torch.equal(x0, want[1])
    # eta 0 draws nothing from the generator
    gen = torch.Generator().manual_seed(6)
    x, _ = ddim.ddim_step(x_t, eps, 0.3, 0.6, None, 0.0, generator=gen, clamp=True)
    assert torch.equal(x, ddim.ddim_step_torch(x_t, eps, 0.3, 0.6, None, 0.0, True, True)[0])
    assert gen.get_state().equal(torch.Generator().manual_seed(6).get_state())
    route("triton")
    out = ddim.ddim_step(x_t.double(), eps.double(), 0.3, 0.6, None)
    assert torch.equal(out[0], ddim.ddim_step_torch(x_t.double(), eps.double(), 0.3, 0.6, None)[0])


# --- solver_step -----------------------------------------------------------------------------

@pytest.mark.parametrize("clip,clamp", [(True, True), (False, False), (True, False), (False, True)])
def test_solver_step_torch_is_the_linear_update(g, clip, clamp):
    x_t, eps, prev, nz = (rand(3, 7, generator=g, scale=2) for _ in range(4))
    c = ss.StepCoefs(a=0.6, b=0.8, cx=0.9, c0=0.7, c1=-0.4, cz=0.3)
    out, x0 = ss.solver_step_torch(x_t, eps, c, prev, nz, clip, clamp)
    want_x0 = (x_t - 0.8 * eps) / 0.6
    if clip:
        want_x0 = want_x0.clamp(-1, 1)
    want = 0.9 * x_t + 0.7 * want_x0 - 0.4 * prev + 0.3 * nz
    if clamp:
        want = want.clamp(-1, 1)
    assert torch.allclose(x0, want_x0, rtol=0, atol=1e-14) and torch.allclose(out, want, rtol=0, atol=1e-14)
    assert (x0.abs() > 1).any() != clip and (out.abs() > 1).any() != clamp


def test_solver_step_torch_unused_terms_are_not_read(g):
    x_t, eps = rand(2, 4, generator=g), rand(2, 4, generator=g)
    c = ss.StepCoefs(0.5, 0.5, 1.0, 0.5)
    assert (c.c1, c.cz) == (0.0, 0.0)
    out, x0 = ss.solver_step_torch(x_t, eps, c)  # no x0_prev, no noise: neither is touched
    assert torch.allclose(out, (x_t + 0.5 * x0).clamp(-1, 1), rtol=0, atol=1e-15)


def test_solver_step_checks_its_inputs(g):
    x_t = torch.randn(2, 4, generator=g)
    c = ss.StepCoefs(0.5, 0.5, 1.0, 0.5)
    with pytest.raises(ValueError, match=r"solver_step: eps \(4, 2\) and x_t \(2, 4\) differ in shape"):
        ss.solver_step(x_t, x_t.T, c)
    with pytest.raises(ValueError, match=r"second-order step \(c1 != 0\) needs x0_prev shaped like x_t"):
        ss.solver_step(x_t, x_t, c._replace(c1=0.1))
    with pytest.raises(ValueError, match="needs x0_prev shaped like x_t"):
        ss.solver_step(x_t, x_t, c._replace(c1=0.1), x0_prev=x_t[:1])
    with pytest.raises(ValueError, match="solver_step: noise must be shaped like x_t"):
        ss.solver_step(x_t, x_t, c, noise=x_t[:, :3])
    for a in (0.0, -0.5, float("nan")):
        with pytest.raises(ValueError, match=rf"a = sqrt\(alphas_cumprod\[t\]\) must be positive, got {a}"):
            ss.solver_step(x_t, x_t, c._replace(a=a))
    ss.check_inputs(x_t, x_t, c._replace(c1=0.1), x_t, x_t)  # all present: no error
    ss.check_inputs(x_t, x_t, c, x_t[:1], None)  # x0_prev of a first-order step is not looked at


def test_solver_step_dispatch(route, g):
    launcher, asked = route("triton")
    x_t, eps = torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g)
    gen = torch.Generator()
    out = ss.solver_step(x_t, eps, (1, 2, 3, 4, 0, 0.5), None, None, False, False, generator=gen, seed=3,
                         seed_offset=1, row_offset=2)
    assert out == ("triton", "solver_step") and asked == [("solver_step", torch.device("cpu"), True)]
    args, kwargs = launcher("solver_step").calls[0]
    assert args[0] is x_t and args[1] is eps and args[3:] == (None, None, False, False)
    assert args[2] == ss.StepCoefs(1.0, 2.0, 3.0, 4.0, 0.0, 0.5) and all(type(v) is float for v in args[2])
    assert kwargs == {"generator": gen, "seed": 3, "seed_offset": 1, "row_offset": 2}
    ss.solver_step(x_t, eps, (1, 2, 3, 4))
    args, kwargs = launcher("solver_step").calls[1]
    assert args[3:] == (None, None, True, True)
    assert kwargs == {"generator": None, "seed": None, "seed_offset": 0, "row_offset": 0}
    route("torch")
    c = ss.StepCoefs(0.6, 0.8, 0.9, 0.7, 0.0, 0.3)
    out, x0 = ss.solver_step(x_t, eps, c, generator=torch.Generator().manual_seed(4))
    nz = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(4))
    want = ss.solver_step_torch(x_t, eps, c, None, nz)
    assert torch.equal(out, want[0]) and torch.equal(x0, want[1])
    gen = torch.Generator().manual_seed(4)  # cz == 0: nothing drawn
    out, _ = ss.solver_step(x_t, eps, c._replace(cz=0.0), generator=gen, clip=False, clamp=False)
    assert torch.equal(out, ss.solver_step_torch(x_t, eps, c._replace(cz=0.0), clip=False, clamp=False)[0])
    assert gen.get_state().equal(torch.Generator().manual_seed(4).get_state())
    route("triton")
    out = ss.solver_step(x_t.double(), eps.double(), c, noise=x_t.double())
    assert torch.equal(out[0], ss.solver_step_torch(x_t.double(), eps.double(), c, None, x_t.double())[0])


# --- act_norm_conv1d -------------------------------------------------------------------------

def test_act_norm_conv1d_constants():
    assert anc.NEGATIVE_SLOPE == 0.01 and anc.EPS == 1e-5


@pytest.mark.parametrize("transposed", [False, True])
def test_act_norm_conv1d_torch_is_the_half_block(g, transposed):
    x = rand(2, 3, 9, generator=g) * 2
    x[1, 2] = 0.25  # a constant channel: its variance is 0 and eps sets the scale
    add = rand(2, 1, 9, generator=g)
    w = rand(3, 4, 3, generator=g) if transposed else rand(4, 3, 3, generator=g)
    b = rand(4, generator=g)
    lout = (9 - 1) * 2 - 2 * 1 + 3 if transposed else (9 + 2 - 3) // 2 + 1
    res = rand(2, 4, lout, generator=g)
    y = anc.act_norm_conv1d_torch(x, w, b, stride=2, padding=1, transposed=transposed, pre_act=True, add=add,
                                  residual=res, post_tanh=True)
    h = x + add
    h = torch.where(h >= 0, h, 0.01 * h)
    mean, var = h.mean(-1, keepdim=True), h.var(-1, unbiased=False, keepdim=True)
    h = (h - mean) / torch.sqrt(var + 1e-5)
    conv = F.conv_transpose1d if transposed else F.conv1d
    want = torch.tanh(conv(h, w, b, stride=2, padding=1) + res)
    assert torch.allclose(y, want, rtol=0, atol=1e-12)
    # without the options: plain norm then conv at stride 1, padding 0
    y = anc.act_norm_conv1d_torch(x, w, None, transposed=transposed)
    h = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    assert torch.allclose(y, conv(h, w), rtol=0, atol=1e-12)


def test_act_norm_conv1d_dispatch(route, g, monkeypatch):
    launcher, asked = route("triton")
    x, w, b = torch.randn(2, 3, 8, generator=g), torch.randn(4, 3, 3, generator=g), torch.randn(4, generator=g)
    assert anc.act_norm_conv1d(x, w, b, stride=2, pre_act=True) == ("triton", "act_norm_conv1d")
    args, kwargs = launcher("act_norm_conv1d").calls[0]
    assert args == (x, w, b) and kwargs == {"stride": 2, "pre_act": True}
    assert asked[-1] == ("act_norm_conv1d", torch.device("cpu"), True)  # no autograd: auto may pick Triton
    # training (any input that needs a gradient, grad mode on): auto=False, whichever input it is
    for i, name in enumerate(("x", "weight", "bias", "add", "residual")):
        tensors = {"x": x, "weight": w, "bias": b, "add": torch.randn(2, 1, 8), "residual": torch.randn(2, 4, 6)}
        tensors[name] = tensors[name].clone().requires_grad_()
        anc.act_norm_conv1d(tensors["x"], tensors["weight"], tensors["bias"], add=tensors["add"],
                            residual=tensors["residual"])
        assert asked[-1][2] is False, name
        with torch.no_grad():
            anc.act_norm_conv1d(tensors["x"], tensors["weight"], tensors["bias"], add=tensors["add"],
                                residual=tensors["residual"])
        assert asked[-1][2] is True, name
    anc.act_norm_conv1d(x, w, None)  # a missing bias needs no gradient
    assert asked[-1][2] is True
    # a dtype the kernels lack in any one input: the reference (a stand-in here, to see which ran)
    n = len(launcher("act_norm_conv1d").calls)
    monkeypatch.setattr(anc, "act_norm_conv1d_torch", lambda *a, **k: "reference")
    for name in ("x", "weight", "bias", "add", "residual"):
        tensors = {"x": x, "weight": w, "bias": b, "add": torch.randn(2, 1, 8), "residual": torch.randn(2, 4, 6)}
        tensors[name] = tensors[name].double()
        assert anc.act_norm_conv1d(tensors["x"], tensors["weight"], tensors["bias"], add=tensors["add"],
                                   residual=tensors["residual"]) == "reference", name
    assert len(launcher("act_norm_conv1d").calls) == n
    monkeypatch.undo()
    route("torch")
    assert torch.equal(anc.act_norm_conv1d(x, w, b, padding=1), anc.act_norm_conv1d_torch(x, w, b, padding=1))
    with pytest.raises(ValueError, match=r"act_norm_conv1d expects x of shape \(B, C, L\), got \(3, 8\)"):
        anc.act_norm_conv1d(x[0], w, b)


# --- norm_affine_act -------------------------------------------------------------------------

@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu"])
def test_norm_affine_act_torch_is_the_per_model_affine(g, act):
    x = rand(3, 4, 2, generator=g)  # (B, C, L), shared by N = 2 models
    w, b = rand(2, 4, generator=g), rand(2, 4, generator=g)
    rm, rv = rand(4, generator=g), torch.rand(4, dtype=D64, generator=g) + 0.1
    rv[0] = 0.0  # eps decides this channel's scale
    y = naa.norm_affine_act_torch(x, w, b, rm, rv, 1e-3, act, 0.2)
    for n in range(2):
        scale = w[n] / torch.sqrt(rv + 1e-3)
        shift = b[n] - rm * scale
        z = x * scale[None, :, None] + shift[None, :, None]
        z = {"identity": z, "relu": z.clamp_min(0), "leaky_relu": torch.where(z >= 0, z, 0.2 * z)}[act]
        assert torch.allclose(y[n], z, rtol=0, atol=1e-13)
    # no running stats: the plain affine; default eps, act and slope
    y = naa.norm_affine_act_torch(x, w, b)
    assert torch.allclose(y, (x[None] * w[:, None, :, None] + b[:, None, :, None]).clamp_min(0), rtol=0, atol=1e-14)
    y = naa.norm_affine_act_torch(x, w, b, rm, rv, act="leaky_relu")
    z = x[None] * (w / torch.sqrt(rv + 1e-5))[:, None, :, None] + (b - rm * w / torch.sqrt(rv + 1e-5))[:, None, :, None]
    assert torch.allclose(y, torch.where(z >= 0, z, 0.01 * z), rtol=0, atol=1e-12)


def test_norm_affine_act_unknown_activation_is_named():
    x = torch.zeros(1, 1, 1)
    with pytest.raises(ValueError, match="norm_affine_act: unknown activation 'gelu'; choose identity, relu, leaky_relu"):
        naa.norm_affine_act_torch(x, torch.ones(1, 1), torch.zeros(1, 1), act="gelu")


def test_norm_affine_act_dispatch(monkeypatch, g):
    asked, called = [], []
    monkeypatch.setattr(backend, "choose", lambda op, device, auto=True: asked.append((op, device)) or "ext")
    monkeypatch.setattr(naa, "extension_op", lambda name: lambda *a: called.append((name, a)) or "ext-out")
    x, w, b = torch.randn(3, 4, 2, generator=g), torch.randn(2, 4, generator=g), torch.randn(2, 4, generator=g)
    rm, rv = torch.randn(4, generator=g), torch.rand(4, generator=g)
    assert naa.norm_affine_act(x, w, b, rm, rv, 1e-3, "identity", 0.3) == "ext-out"
    assert called == [("norm_affine_act", (x, w, b, rm, rv, 1e-3, "identity", 0.3))]
    assert asked == [("norm_affine_act", x.device)]
    assert naa.norm_affine_act(x.double(), w.double(), b.double()) == "ext-out"  # float64 is the extension's too
    assert called[-1][1][3:] == (None, None, 1e-5, "relu", 0.01)
    half = naa.norm_affine_act(x.half().float().bfloat16(), w.bfloat16(), b.bfloat16())  # not the extension's
    assert half.dtype == torch.bfloat16 and len(called) == 2
    monkeypatch.setattr(backend, "choose", lambda op, device, auto=True: "torch")
    assert torch.equal(naa.norm_affine_act(x, w, b, rm, rv), naa.norm_affine_act_torch(x, w, b, rm, rv))


def test_norm_affine_act_fake_kernel_shapes_and_checks():
    x = torch.empty(3, 4, 5, device="meta")
    out = naa._norm_affine_act_fake(x, torch.empty(2, 4, device="meta"), torch.empty(2, 4, device="meta"))
    assert out.shape == (2, 3, 4, 5) and out.device.type == "meta" and out.dtype == x.dtype
    out = naa._norm_affine_act_fake(torch.empty(2, 3, 4, 5, device="meta", dtype=D64), torch.empty(2, 4, device="meta"),
                                    None)
    assert out.shape == (2, 3, 4, 5) and out.dtype == D64
    with pytest.raises(RuntimeError, match=r"x must be \(B, C, L\) or \(N, B, C, L\), got \(4, 5\)"):
        naa._norm_affine_act_fake(torch.empty(4, 5, device="meta"), torch.empty(2, 4, device="meta"), None)
    with pytest.raises(RuntimeError, match=r"weight must be \(N, C\), got \(4,\)"):
        naa._norm_affine_act_fake(x, torch.empty(4, device="meta"), None)


# --- extension_ops ---------------------------------------------------------------------------

def test_extension_op_errors_name_the_problem(monkeypatch):
    monkeypatch.setattr(backend, "load_extension", lambda: ImportError("no module _C"))
    with pytest.raises(RuntimeError, match=r"pdiff_fast: no_such_op needs the extension pdiff_fast._C, which is not "
                                           r"built \(no module _C\)"):
        extension_ops.extension_op("no_such_op")
    monkeypatch.setattr(backend, "load_extension", lambda: object())
    with pytest.raises(RuntimeError, match=r"the extension pdiff_fast._C has no torch op pdiff_fast::no_such_op; it is "
                                           r"an older build: rebuild it \(pip install --no-build-isolation -e .\)"):
        extension_ops.extension_op("no_such_op")


def test_extension_op_returns_the_registered_op():
    if isinstance(backend.load_extension(), Exception):
        pytest.skip("the extension is not built")
    assert extension_ops.extension_op("norm_affine_act") is torch.ops.pdiff_fast.norm_affine_act


def test_register_fakes(monkeypatch):
    registered = []
    monkeypatch.setattr(torch.library, "register_fake", lambda name, fn: registered.append((name, fn)))
    monkeypatch.setattr(backend, "load_extension", lambda: ImportError("not built"))
    assert extension_ops.register_fakes({"norm_affine_act": len}) is False and registered == []
    monkeypatch.setattr(backend, "load_extension", lambda: object())
    monkeypatch.setattr(torch.ops, "pdiff_fast", types.SimpleNamespace(a=1, c=2))
    assert extension_ops.register_fakes({"b": len}) is False and registered == []  # an older build lacks it
    assert extension_ops.register_fakes({"a": len, "b": abs, "c": min}) is True
    assert registered == [("pdiff_fast::a", len), ("pdiff_fast::c", min)]


# --- a dtype the kernels lack in any one input sends the call to the reference ---------------

@pytest.mark.parametrize("op,call,names", [
    ("q_sample", lambda m, a: m.q_sample(a["x0"], a["t"], a["coefs"], a["noise"]), ("x0", "noise")),
    ("ddpm_step", lambda m, a: m.ddpm_step(a["x_t"], a["eps"], a["t"], a["noise"], a["coefs5"]), ("x_t", "eps", "noise")),
    ("ddim_step", lambda m, a: m.ddim_step(a["x_t"], a["eps"], 0.3, 0.6, a["noise"], 0.5), ("x_t", "eps", "noise")),
    ("solver_step", lambda m, a: m.solver_step(a["x_t"], a["eps"], ss.StepCoefs(0.6, 0.8, 0.9, 0.7, 0.1, 0.3),
                                               a["x0_prev"], a["noise"]), ("x_t", "eps", "x0_prev", "noise")),
])
def test_each_input_of_another_dtype_goes_to_the_reference(route, monkeypatch, op, call, names):
    launcher, _ = route("triton")
    module = {"q_sample": qs, "ddpm_step": ddpm, "ddim_step": ddim, "solver_step": ss}[op]
    monkeypatch.setattr(module, f"{op}_torch", lambda *a, **k: "reference")
    g = torch.Generator().manual_seed(0)
    base = {"x0": torch.randn(2, 4, generator=g), "x_t": torch.randn(2, 4, generator=g),
            "eps": torch.randn(2, 4, generator=g), "noise": torch.randn(2, 4, generator=g),
            "x0_prev": torch.randn(2, 4, generator=g), "t": torch.tensor([1, 2]), "coefs": torch.rand(2, 5),
            "coefs5": torch.rand(5, 5)}
    assert call(module, base) == ("triton", op)  # all float32: the kernel, with the noise given
    args = launcher(op).calls[-1][0]
    assert any(a is base["noise"] for a in args)
    for name in names:
        assert call(module, {**base, name: base[name].double()}) == "reference", name
    assert len(launcher(op).calls) == 1

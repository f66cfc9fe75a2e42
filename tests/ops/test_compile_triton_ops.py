"""The Triton kernels as torch ops (pdiff_fast/ops/triton_ops.py): schemas, fake implementations
(torch.library.opcheck), autograd, and torch.compile(fullgraph=True) of the public dispatchers
pdiff_fast.ops.<op> on the triton and torch backends, equal to eager bit for bit.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1), so sizes are tiny; the CUDA tests (inductor) skip without CUDA.
"""
import pytest
import torch

pytest.importorskip("triton")

import pdiff_fast.ops as P  # noqa: E402
from pdiff_fast import backend  # noqa: E402
from pdiff_fast.backend import use_backend  # noqa: E402
from pdiff_fast.ops import triton_ops  # noqa: E402

ops = torch.ops.pdiff_fast
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

FORWARD = ["ddpm_step_triton", "ddim_step_triton", "q_sample_triton", "q_sample_noise_triton", "eps_mse_triton",
           "act_norm_conv1d_triton"]
BACKWARD = ["q_sample_backward_triton", "eps_mse_backward_triton", "act_norm_conv1d_backward_triton"]


def compiled(fn, backend_name="aot_eager"):
    return torch.compile(fn, fullgraph=True, backend=backend_name)  # aot_eager: no C compiler needed


def same(a, b):
    a, b = (a, b) if isinstance(a, (tuple, list)) else ((a,), (b,))
    return len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))


def step_inputs(device="cpu", B=3, M=8, T=10):
    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(B, M, generator=gen) * 2 - 1).to(device)
    eps = (torch.randn(B, M, generator=gen) * 0.1).to(device)
    noise = torch.randn(B, M, generator=gen).to(device)
    t = torch.tensor([T - 1, 0, 3][:B], device=device)
    coefs = torch.rand(5, T, generator=gen).to(device)
    return x, eps, noise, t, coefs


def conv_inputs(device="cpu", requires_grad=False):
    gen = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(2, 3, 8, generator=gen), torch.randn(4, 3, 3, generator=gen), torch.randn(4, generator=gen)
    add, res = torch.randn(2, 3, 1, generator=gen), torch.randn(2, 4, 8, generator=gen)
    return [v.to(device).requires_grad_(requires_grad) for v in (x, w, b, add, res)]


def test_ops_are_registered_and_do_not_clash_with_the_extension():
    for name in FORWARD + BACKWARD:
        assert isinstance(getattr(ops, name).default, torch._ops.OpOverload)
    assert not set(FORWARD + BACKWARD) & {"flatten_params", "unflatten_params", "unflatten_into", "iou_matrix",
                                          "norm_affine_act"}


def test_schemas_take_seeds_not_generators():
    schema = str(ops.ddpm_step_triton.default._schema)
    assert "Tensor? seed_t, SymInt seed, SymInt seed_offset, Tensor? row_offset_t, SymInt row_offset" in schema
    assert "Generator" not in schema


def opcheck(op, args, grad=False):
    utils = ["test_schema", "test_faketensor", "test_aot_dispatch_dynamic"]
    if grad:
        utils.append("test_autograd_registration")
    result = torch.library.opcheck(op, args, test_utils=utils)
    assert set(result.values()) == {"SUCCESS"}, result


def test_opcheck_ddpm_and_ddim_step():
    x, eps, noise, t, coefs = step_inputs()
    opcheck(ops.ddpm_step_triton, (x, eps, t, noise, coefs, True, None, 0, 0, None, 0))
    opcheck(ops.ddpm_step_triton, (x, eps, t, None, coefs, False, torch.tensor([5]), 0, 2, None, 4))
    opcheck(ops.ddim_step_triton, (x, eps, 0.5, 0.7, None, 0.5, True, True, None, 5, 1, torch.tensor([2]), 0))
    opcheck(ops.ddim_step_triton, (x, eps, 0.5, 0.7, noise, 1.0, False, False, None, 0, 0, None, 0))


def test_opcheck_q_sample():
    x, _, noise, t, coefs = step_inputs()
    x = x.requires_grad_()
    opcheck(ops.q_sample_triton, (x, t, coefs[:2], noise.requires_grad_()), grad=True)
    opcheck(ops.q_sample_noise_triton, (x, t, coefs[:2], None, 7, 3, None, 0), grad=True)
    opcheck(ops.q_sample_backward_triton, (noise.detach(), t, coefs[:2], True, False))


def test_opcheck_eps_mse():
    pred, target = torch.randn(3, 5, requires_grad=True), torch.randn(3, 5, requires_grad=True)
    opcheck(ops.eps_mse_triton, (pred, target), grad=True)
    opcheck(ops.eps_mse_backward_triton, (pred.detach(), target.detach(), torch.tensor(1.5), True, True))


def test_opcheck_act_norm_conv1d():
    x, w, b, add, res = conv_inputs(requires_grad=True)
    opcheck(ops.act_norm_conv1d_triton, (x, w, b, add, res, 1, 1, False, True, True), grad=True)
    y, mean, rstd = ops.act_norm_conv1d_triton(x, w, b, add, res, 1, 1, False, True, True)
    args = (torch.randn_like(y), x.detach(), w.detach(), b.detach(), add.detach(), y.detach(), mean, rstd,
            list(res.shape), res.dtype, 1, 1, False, True, True, [True, True, True, True, True])
    opcheck(ops.act_norm_conv1d_backward_triton, args)


# --- torch.compile(fullgraph=True) of the public dispatchers, triton backend ---------------------------

def eager_and_compiled(fn, *args, seed=1):
    """fn(*args) eager and compiled under use_backend("triton"), torch's RNG reset before each."""
    with use_backend("triton"):
        torch.manual_seed(seed)
        want = fn(*args)
        torch.manual_seed(seed)
        got = compiled(fn)(*args)
    return got, want


def test_compile_ddpm_step():
    x, eps, noise, t, coefs = step_inputs()
    got, want = eager_and_compiled(lambda x, e, z: P.ddpm_step(x, e, t, z, coefs), x, eps, noise)
    assert same(got, want)
    # noise drawn in the kernel, its seed from torch's default generator (a tensor in the graph)
    got, want = eager_and_compiled(lambda x, e: P.ddpm_step(x, e, t, None, coefs, seed_offset=3, row_offset=5), x, eps)
    assert same(got, want)


def test_compile_ddpm_step_with_device_seed_tensors():
    """The CUDA-graph form: seed and row_offset as one-element int64 tensors read in the kernel."""
    x, eps, _, t, coefs = step_inputs()
    seed, row = torch.tensor([1234]), torch.tensor([7])
    got, want = eager_and_compiled(
        lambda x, e, s, r: P.ddpm_step(x, e, t, None, coefs, seed=s, seed_offset=2, row_offset=r), x, eps, seed, row)
    assert same(got, want)
    with use_backend("triton"):  # and the same noise as int arguments
        assert same(got, P.ddpm_step(x, eps, t, None, coefs, seed=1234, seed_offset=2, row_offset=7))


def test_compile_ddim_step():
    x, eps, noise, _, _ = step_inputs()
    for eta, z in ((0.0, None), (0.5, noise), (1.0, None)):
        got, want = eager_and_compiled(lambda x, e: P.ddim_step(x, e, 0.5, 0.7, z, eta=eta, seed_offset=1), x, eps)
        assert same(got, want), eta


def test_compile_q_sample():
    x, _, noise, t, coefs = step_inputs()
    got, want = eager_and_compiled(lambda x: P.q_sample(x, t, coefs[:2]), x)
    assert same(got, want)
    got, want = eager_and_compiled(lambda x, z: P.q_sample(x, t, coefs[:2], z), x, noise)
    assert same(got, want)


def test_compile_q_sample_backward():
    x, _, noise, t, coefs = step_inputs()

    def fn(x, z):
        x_t, _ = P.q_sample(x, t, coefs[:2], z)
        return (x_t * x_t).sum()

    grads = []
    for f in (fn, compiled(fn)):
        a, z = x.clone().requires_grad_(), noise.clone().requires_grad_()
        with use_backend("triton"):
            f(a, z).backward()
        grads.append((a.grad, z.grad))
    assert same(*grads)


def test_compile_eps_mse_forward_and_backward():
    pred, target = torch.randn(3, 5), torch.randn(3, 5)
    got, want = eager_and_compiled(P.eps_mse, pred, target)
    assert same(got, want)
    grads = []
    for f in (P.eps_mse, compiled(P.eps_mse)):
        p, q = pred.clone().requires_grad_(), target.clone().requires_grad_()
        with use_backend("triton"):
            (f(p, q) * 3).backward()
        grads.append((p.grad, q.grad))
    assert same(*grads)


def conv_block(x, w, b, add, res):
    return P.act_norm_conv1d(x, w, b, padding=1, pre_act=True, add=add, residual=res, post_tanh=True)


def conv_block_transposed(x, w, b):
    return P.act_norm_conv1d(x, w, b, stride=2, padding=1, transposed=True)


def test_compile_act_norm_conv1d_forward():
    x, w, b, add, res = conv_inputs()
    with torch.no_grad():
        got, want = eager_and_compiled(conv_block, x, w, b, add, res)
        assert same(got, want)
        wt = torch.randn(3, 4, 4)
        got, want = eager_and_compiled(conv_block_transposed, x, wt, b)
        assert same(got, want)


def test_compile_act_norm_conv1d_forward_and_backward():
    """Through the fused backward (register_autograd); every input's gradient, bitwise."""
    results = []
    for f in (conv_block, compiled(conv_block)):
        inputs = conv_inputs(requires_grad=True)
        with use_backend("triton"):
            y = f(*inputs)
            (y * torch.linspace(-1, 1, y.numel()).view_as(y)).sum().backward()
        results.append([y.detach()] + [v.grad for v in inputs])
    assert same(*results)


def test_compile_only_some_inputs_need_gradients():
    x, w, b, _, _ = conv_inputs()
    w.requires_grad_()
    results = []
    for f in (P.act_norm_conv1d, compiled(P.act_norm_conv1d)):
        w.grad = None
        with use_backend("triton"):
            f(x, w, b).sum().backward()
        results.append(w.grad)
    assert same(*results) and x.grad is None


# --- the dispatchers on the torch backend, and re-dispatch on a backend change -------------------

def dispatcher_calls():
    x, eps, noise, t, coefs = step_inputs()
    cx, cw, cb, cadd, cres = conv_inputs()
    return {
        "ddpm_step": (lambda x, e, z: P.ddpm_step(x, e, t, z, coefs), (x, eps, noise)),
        "ddim_step": (lambda x, e, z: P.ddim_step(x, e, 0.5, 0.7, z, eta=0.5), (x, eps, noise)),
        "q_sample": (lambda x, z: P.q_sample(x, t, coefs[:2], z), (x, noise)),
        "eps_mse": (P.eps_mse, (x, eps)),
        "act_norm_conv1d": (conv_block, (cx, cw, cb, cadd, cres)),
    }


@pytest.mark.parametrize("op", ["ddpm_step", "ddim_step", "q_sample", "eps_mse", "act_norm_conv1d"])
def test_compile_dispatcher_on_the_torch_backend(op):
    fn, args = dispatcher_calls()[op]
    with use_backend("torch"):
        got, want = compiled(fn)(*args), fn(*args)
    # aot_eager runs the same aten ops as eager; close rather than equal for the reductions
    got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_compile_torch_drawn_noise_follows_the_generator():
    x, eps, _, t, coefs = step_inputs()
    torch.manual_seed(4)
    want = P.ddpm_step(x, eps, t, None, coefs)
    torch.manual_seed(4)
    got = compiled(lambda x, e: P.ddpm_step(x, e, t, None, coefs))(x, eps)
    assert same(got, want)


def test_a_backend_change_recompiles():
    """use_backend's choice is guarded, not frozen into the compiled code: the triton graph has
    the op, the torch graph does not."""
    x, eps, noise, t, coefs = step_inputs()
    graphs = []

    def record(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    fn = torch.compile(lambda x, e, z: P.ddpm_step(x, e, t, z, coefs), fullgraph=True, backend=record)
    for name in ("torch", "triton", "torch"):
        with use_backend(name):
            assert same(fn(x, eps, noise), P.ddpm_step(x, eps, t, noise, coefs))
    assert len(graphs) == 2  # the second torch call reuses the first graph
    assert "ddpm_step_triton" not in graphs[0] and "ddpm_step_triton" in graphs[1]


def test_eager_calls_the_launcher_not_the_op(monkeypatch):
    """Eager dispatch skips the op's ~10 us of dispatch (see triton_ops); compiled code uses it."""
    calls = []
    for name in ("ddpm_step", "eps_mse"):
        monkeypatch.setattr(triton_ops, name, lambda *a, _n=name, **k: calls.append(_n))
    x, eps, noise, t, coefs = step_inputs()
    with use_backend("triton"):
        P.ddpm_step(x, eps, t, noise, coefs)
        P.eps_mse(x, eps)
    assert calls == []


def test_import_results_are_cached():
    assert backend.load_triton_op("ddpm_step") is backend.load_triton_op("ddpm_step")


# --- CUDA: inductor ----------------------------------------------------------------------------------

@cuda
def test_inductor_cuda_sampling_step():
    x, eps, noise, t, coefs = step_inputs("cuda", B=64, M=256, T=10)

    def fn(x, e):
        x, x0 = P.ddpm_step(x * 1.0, e, t, None, coefs, seed=5, seed_offset=1)
        return P.ddim_step(x, e, 0.5, 0.7, None, eta=0.3, seed=5)[0] + x0

    with use_backend("triton"):
        got, want = compiled(fn, "inductor")(x, eps), fn(x, eps)
    assert same(got, want)


@cuda
def test_inductor_cuda_training_ops():
    x, w, b, add, res = conv_inputs("cuda", requires_grad=True)
    t = torch.tensor([3, 0], device="cuda")
    coefs = torch.rand(2, 10, device="cuda")

    def fn(x, w, b, add, res):
        y = conv_block(x, w, b, add, res)
        y_t, z = P.q_sample(y, t, coefs, seed=3)
        return P.eps_mse(y_t, z)

    results = []
    for f in (fn, compiled(fn, "inductor")):
        inputs = [v.detach().clone().requires_grad_() for v in (x, w, b, add, res)]
        with use_backend("triton"):
            loss = f(*inputs)
            loss.backward()
        results.append([loss.detach()] + [v.grad for v in inputs])
    for a, b_ in zip(*results):
        torch.testing.assert_close(a, b_, rtol=1e-5, atol=1e-6)

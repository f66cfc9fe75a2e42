"""The extension's five ops as torch ops (flatten_params, unflatten_params, unflatten_into,
iou_matrix, norm_affine_act): registered in the `pdiff_fast` library with schemas torch accepts
(flat tensor lists, no nested lists), reachable only as torch.ops.pdiff_fast.*, with fake (meta)
implementations that give the right shapes and dtypes (FakeTensorMode, torch.library.opcheck),
non-differentiable Autograd kernels for the flatten ops, and traced by
torch.compile(fullgraph=True) and torch.export without a graph break.

Skipped when the extension is not built.
"""
import io
import sys

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from pdiff_fast.ops import extension_ops
from pdiff_fast.ops import flatten_params as fp
from pdiff_fast.ops.iou_matrix import iou_matrix, iou_stats, pack_bits
from pdiff_fast.ops.norm_affine_act import norm_affine_act

_C = pytest.importorskip("pdiff_fast._C", reason="the extension pdiff_fast._C is not built")

ops = torch.ops.pdiff_fast

SCHEMAS = {
    "flatten_params": "pdiff_fast::flatten_params(Tensor[] sources, int n_models, int[] numels, "
                      "ScalarType dtype) -> Tensor",
    "unflatten_params": "pdiff_fast::unflatten_params(Tensor flat, int[] sizes, int[] ndims, "
                        "int[] dtype_codes) -> Tensor[]",
    "unflatten_into": "pdiff_fast::unflatten_into(Tensor flat, Tensor(a!)[] targets, int n_models) -> ()",
    "iou_matrix": "pdiff_fast::iou_matrix(Tensor a_bits, Tensor b_bits) -> Tensor",
    "norm_affine_act": "pdiff_fast::norm_affine_act(Tensor x, Tensor weight, Tensor bias, "
                       "Tensor? running_mean=None, Tensor? running_var=None, float eps=1e-05, "
                       "str act=\"relu\", float negative_slope=0.01) -> Tensor",
}

# two models of three segments: a transposed fp32 (3, 2), a 0-d fp16, a bf16 (4,)
SHAPES = [(3, 2), (), (4,)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
NUMELS = [6, 1, 4]
SIZES, NDIMS, CODES = [3, 2, 4], [2, 0, 1], [6, 5, 15]


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() and _C.has_cuda() else [])


def sources(device="cpu", requires_grad=False):
    """Model i's tensor j at index i * 3 + j (the ops' flat list)."""
    out = []
    for _ in range(2):
        out += [torch.randn(2, 3).t(), torch.randn(()).half(), torch.randn(4).bfloat16()]
    out = [t.to(device) for t in out]
    if requires_grad:
        out = [t.detach().requires_grad_() for t in out]
    return out


def targets(device="cpu"):
    return [torch.zeros(s, dtype=d, device=device) for _ in range(2) for s, d in zip(SHAPES, DTYPES)]


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_each_op_is_a_torch_op_with_its_schema(name):
    op = getattr(ops, name)
    assert isinstance(op.default, torch._ops.OpOverload)
    assert op.default._schema == torch._C.parse_schema(SCHEMAS[name])  # (str() prints floats by version)
    assert not hasattr(_C, name)  # one path: no pybind function beside the op
    assert fp.FAKES_REGISTERED and sys.modules["pdiff_fast.ops.iou_matrix"].FAKE_REGISTERED
    assert sys.modules["pdiff_fast.ops.norm_affine_act"].FAKE_REGISTERED


def test_dtype_codes_are_the_c10_scalar_type_codes():
    """fp.DTYPE_CODES[d] passed where the schema says ScalarType means d."""
    for dtype, code in fp.DTYPE_CODES.items():
        if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            assert ops.flatten_params([torch.zeros(2)], 1, [2], code).dtype == dtype


@pytest.mark.parametrize("device", devices())
def test_ops_agree_with_the_torch_reference(device):
    src = sources(device)
    nested = [src[:3], src[3:]]
    flat = ops.flatten_params(src, 2, NUMELS, torch.float64)
    assert torch.equal(flat, fp.flatten_params_torch(nested, NUMELS, torch.float64))
    for got, want in zip(ops.unflatten_params(flat, SIZES, NDIMS, CODES),
                         fp.unflatten_params_torch(flat, SHAPES, DTYPES)):
        assert got.dtype == want.dtype and torch.equal(got, want)
    tgt = targets(device)
    assert ops.unflatten_into(flat, tgt, 2) is None
    for got, want in zip(tgt, src):
        assert torch.equal(got, want)


def test_flatten_params_without_tensor_arguments():
    """No segments (or no models): no tensor for the dispatcher to pick a backend by; the
    fallback kernel takes the call."""
    assert ops.flatten_params([], 3, [], torch.float32).shape == (3, 0)
    with pytest.raises(RuntimeError, match=r"no models given \(N = 0\)"):
        ops.flatten_params([], 0, [3], torch.float32)


def test_fake_impls_give_shapes_and_dtypes():
    with FakeTensorMode() as mode:
        src = [mode.from_tensor(t) for t in sources()]
        flat = ops.flatten_params(src, 2, NUMELS, torch.float64)
        assert flat.shape == (2, 11) and flat.dtype == torch.float64
        outs = ops.unflatten_params(flat, SIZES, NDIMS, CODES)
        assert [tuple(t.shape) for t in outs] == [(2, 3, 2), (2,), (2, 4)]
        assert [t.dtype for t in outs] == DTYPES
        assert all(t.is_contiguous() for t in outs)
        assert ops.unflatten_into(flat, src, 2) is None
        empty = ops.flatten_params([], 3, [], torch.float32)  # no segments: (N, 0)
        assert empty.shape == (3, 0)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck(device, requires_grad):
    """Schema (mutations as declared), fake impl against the kernel, Autograd registration and
    AOT dispatch with dynamic shapes; the autograd check needs an input that requires grad."""
    flat = torch.randn(2, 11, device=device, requires_grad=requires_grad)
    cases = [
        (ops.flatten_params, (sources(device, requires_grad), 2, NUMELS, torch.float32)),
        (ops.unflatten_params, (flat, SIZES, NDIMS, CODES)),
        (ops.unflatten_into, (flat, targets(device), 2)),
    ]
    utils = None if requires_grad else ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
    for op, args in cases:
        kwargs = {} if utils is None else {"test_utils": utils}
        result = torch.library.opcheck(op, args, **kwargs)
        assert set(result.values()) == {"SUCCESS"}, (op, result)


def test_ops_are_not_differentiable():
    """As the pybind functions were: outputs never require grad, and writing into live
    parameters (leaves that require grad) is allowed and bumps their versions."""
    params = [torch.nn.Parameter(t.float()) for t in sources()]
    flat = ops.flatten_params(params, 2, NUMELS, torch.float32)
    assert not flat.requires_grad
    assert not any(t.requires_grad for t in ops.unflatten_params(flat.requires_grad_(), SIZES, NDIMS, CODES))
    versions = [p._version for p in params]
    ops.unflatten_into(torch.ones(2, 11), params, 2)
    assert all(p._version > v and p.grad_fn is None and p.requires_grad for p, v in zip(params, versions))
    assert all(torch.equal(p.detach(), torch.ones_like(p)) for p in params)


def compiled(fn):
    return torch.compile(fn, fullgraph=True, backend="aot_eager")  # no C compiler needed


@pytest.mark.parametrize("device", devices())
def test_compile_flatten_params(device):
    def fn(a, b, c):
        return ops.flatten_params([a, b, c, a * 2, b, c], 2, NUMELS, torch.float32) + 1
    args = sources(device)[:3]
    assert torch.equal(compiled(fn)(*args), fn(*args))


@pytest.mark.parametrize("device", devices())
def test_compile_unflatten_params(device):
    def fn(flat):
        return [t * 2 for t in ops.unflatten_params(flat, SIZES, NDIMS, CODES)]
    flat = torch.randn(2, 11, device=device)
    for got, want in zip(compiled(fn)(flat), fn(flat)):
        assert got.dtype == want.dtype and torch.equal(got, want)


@pytest.mark.parametrize("device", devices())
def test_compile_unflatten_into(device):
    """The mutation goes through torch's auto-functionalization and lands in the targets."""
    def fn(flat, *tgt):
        ops.unflatten_into(flat * 2, list(tgt), 2)
        return tgt[0].sum()
    flat = torch.randn(2, 11, device=device)
    eager, comp = targets(device), targets(device)
    assert torch.equal(compiled(fn)(flat, *comp), fn(flat, *eager))
    for a, b in zip(comp, eager):
        assert torch.equal(a, b)


def test_compile_the_python_helpers_round_trip():
    """fp.*_ext, which take the Python API's nested lists, trace too."""
    def fn(a, b, c):
        nested = [[a, b, c], [a + 1, b, c]]
        flat = fp.flatten_params_ext(nested, NUMELS, torch.float64)
        return flat, fp.unflatten_params_ext(flat, SHAPES, DTYPES)
    args = sources()[:3]
    got, want = compiled(fn)(*args), fn(*args)
    assert torch.equal(got[0], want[0])
    assert all(torch.equal(x, y) for x, y in zip(got[1], want[1]))


def test_export_round_trip_serializes():
    class RoundTrip(torch.nn.Module):
        def forward(self, a, b, c):
            flat = ops.flatten_params([a, b, c], 1, NUMELS, torch.float32)
            return ops.unflatten_params(flat, SIZES, NDIMS, CODES)
    args = tuple(sources()[:3])
    ep = torch.export.export(RoundTrip(), args)
    buf = io.BytesIO()
    torch.export.save(ep, buf)
    buf.seek(0)
    loaded = torch.export.load(buf)
    for got, want in zip(loaded.module()(*args), RoundTrip()(*args)):
        assert got.dtype == want.dtype and torch.equal(got, want)


def test_fake_registration_is_skipped_without_the_extension(monkeypatch):
    monkeypatch.setattr(extension_ops.backend, "load_extension", lambda: ImportError("not built"))
    assert extension_ops.register_fakes({"flatten_params": lambda *a: None}) is False
    with pytest.raises(RuntimeError, match="not built"):
        extension_ops.extension_op("no_such_op")


# --- the population evaluator's two ops ------------------------------------------------------

def bitsets(device="cpu"):
    """Wrong-prediction sets of 5 and 3 models over 70 samples, packed: (5, 9), (3, 9) uint8."""
    return (pack_bits(torch.rand(5, 70) < 0.3).to(device), pack_bits(torch.rand(3, 70) < 0.3).to(device))


def affine_args(device="cpu", per_model=False):
    """x (N, B, C, L) per model or a shared (B, C, L), weight / bias (N, C), running stats (C,)."""
    x = torch.randn(*((4,) if per_model else ()), 6, 8, 5, device=device)
    w, b = torch.randn(4, 8, device=device), torch.randn(4, 8, device=device)
    return x, w, b, torch.randn(8, device=device), torch.rand(8, device=device) + 0.5


def test_population_fakes_give_shapes_and_dtypes():
    with FakeTensorMode() as mode:
        a, b = (mode.from_tensor(t) for t in bitsets())
        iou = ops.iou_matrix(a, b)
        assert iou.shape == (5, 3) and iou.dtype == torch.float32
        for per_model in (False, True):
            args = [mode.from_tensor(t.double()) for t in affine_args(per_model=per_model)]
            y = ops.norm_affine_act(*args, 1e-5, "leaky_relu", 0.1)
            assert y.shape == (4, 6, 8, 5) and y.dtype == torch.float64


@pytest.mark.parametrize("device", devices())
def test_opcheck_population_ops(device):
    x, w, b, mean, var = affine_args(device)
    cases = [
        (ops.iou_matrix, bitsets(device)),
        (ops.norm_affine_act, (x, w, b, mean, var, 1e-5, "relu", 0.0)),
        (ops.norm_affine_act, (x.expand(4, 6, 8, 5).contiguous(), w, b, None, None, 0.0, "leaky_relu", 0.2)),
    ]
    for op, args in cases:
        result = torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor",
                                                             "test_aot_dispatch_dynamic"))
        assert set(result.values()) == {"SUCCESS"}, (op, result)


@pytest.mark.parametrize("device", devices())
def test_compile_population_dispatchers(device):
    """The public entry points (backend auto: the extension) trace whole: IoU of two bitsets
    and the fused affine + activation, inside one compiled function."""
    def fn(a_bits, b_bits, x, w, b, mean, var):
        iou = iou_matrix(a_bits, b_bits)
        y = norm_affine_act(x, w, b, mean, var, 1e-5, "leaky_relu", 0.1)
        return iou.sum(1), y * 2
    args = (*bitsets(device), *affine_args(device))
    for got, want in zip(compiled(fn)(*args), fn(*args)):
        assert torch.equal(got, want)


def test_export_population_ops():
    class Population(torch.nn.Module):
        def forward(self, a_bits, b_bits, x, w, b):
            return ops.iou_matrix(a_bits, b_bits), ops.norm_affine_act(x, w, b, None, None, 0.0, "relu", 0.0)
    args = (*bitsets(), *affine_args()[:3])
    buf = io.BytesIO()
    torch.export.save(torch.export.export(Population(), args), buf)
    buf.seek(0)
    for got, want in zip(torch.export.load(buf).module()(*args), Population()(*args)):
        assert torch.equal(got, want)


def test_iou_stats_blocks_run_the_op(monkeypatch):
    """iou_stats, the blockwise reduction, reaches the op (not a pybind function) per block."""
    module = sys.modules["pdiff_fast.ops.iou_matrix"]
    calls = []
    monkeypatch.setattr(module, "extension_op", lambda name: calls.append(name) or extension_ops.extension_op(name))
    stats = iou_stats(bitsets()[0], block_rows=2, block_cols=2)
    assert calls == ["iou_matrix"] * 9 and stats.pairs == 20

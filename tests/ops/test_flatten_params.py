"""flatten_params / unflatten_params / unflatten_into: the extension's torch ops
(torch.ops.pdiff_fast.*, called through fp.*_ext with nested lists) against the torch reference, bit for bit, on random segment tables (hypothesis): 1-6 segments, shapes with
0-d and size-1 dims, fp16 / bf16 / fp32 / fp64 sources, transposed and sliced views, N in
{1, 7, 200}; round trips; non-finite values; errors that name the problem.

Skipped when the extension is not built; CUDA cases only where CUDA and a CUDA build exist.
tests/ops/test_torch_ops.py checks the ops as torch ops (schemas, fake impls, torch.compile).
"""
import math

import pytest
import torch

from pdiff_fast import backend
from pdiff_fast.ops import flatten_params as fp

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_C = pytest.importorskip("pdiff_fast._C", reason="the extension pdiff_fast._C is not built")

DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def devices():
    """cpu, plus cuda when a GPU is present and the extension was built with CUDA."""
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() and _C.has_cuda() else [])


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bits of a tensor, to compare NaN payloads and signed zeros too."""
    t = t.detach().contiguous().reshape(-1)
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(bits(a.cpu()), bits(b.cpu()))


def same_values(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-equal where finite or inf; NaN where the other is NaN (payloads may differ)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    a, b = a.cpu(), b.cpu()
    nan_a, nan_b = torch.isnan(a.float()), torch.isnan(b.float())
    return torch.equal(nan_a, nan_b) and torch.equal(bits(a)[~nan_a.reshape(-1)], bits(b)[~nan_b.reshape(-1)])


# --- random segment tables ----------------------------------------------------------------

@st.composite
def segment_tables(draw):
    """A spec: per segment (shape, dtype, layout), layout in contiguous / transposed / sliced."""
    n_segments = draw(st.integers(1, 6))
    segments = []
    for _ in range(n_segments):
        ndim = draw(st.integers(0, 3))
        shape = tuple(draw(st.sampled_from([1, 1, 2, 3, 5])) for _ in range(ndim))
        dtype = draw(st.sampled_from(DTYPES))
        layout = draw(st.sampled_from(["contiguous", "transposed", "sliced"])) if ndim >= 2 else "contiguous"
        segments.append((shape, dtype, layout))
    return segments


def make_tensor(shape, dtype, layout, device, specials=False):
    """A tensor of `shape` with the given memory layout, random values (and inf / nan / tiny)."""
    if layout == "transposed":  # same shape, storage in the other order
        t = torch.randn(*reversed(shape), dtype=torch.float64).to(dtype).permute(*reversed(range(len(shape))))
    elif layout == "sliced":  # every other column of a wider tensor
        t = torch.randn(*shape[:-1], 2 * shape[-1], dtype=torch.float64).to(dtype)[..., ::2]
    else:
        t = torch.randn(shape, dtype=torch.float64).to(dtype)
    if specials and t.numel() >= 3:
        flat = t.view(-1) if t.is_contiguous() else None
        if flat is not None:
            flat[0], flat[1], flat[2] = math.inf, math.nan, -0.0
    assert tuple(t.shape) == shape
    return t.to(device)


def population(segments, n_models, device, specials=False):
    return [[make_tensor(s, d, l, device, specials and i % 3 == 0) for s, d, l in segments] for i in range(n_models)]


# --- ext vs torch reference ---------------------------------------------------------------

@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("n_models", [1, 7, 200])
@SETTINGS
@given(segments=segment_tables(), row_dtype=st.sampled_from([torch.float32, torch.float64]),
       specials=st.booleans())
def test_flatten_matches_torch_reference(device, n_models, segments, row_dtype, specials):
    sources = population(segments, n_models, device, specials)
    numels = [math.prod(s) for s, _, _ in segments]
    got = fp.flatten_params_ext(sources, numels, row_dtype)
    want = fp.flatten_params_torch(sources, numels, row_dtype)
    assert got.shape == (n_models, sum(numels)) and got.device.type == device
    assert same_values(got, want)  # exact; NaN stays NaN (torch itself rewrites fp16 NaN payloads)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("n_models", [1, 7, 200])
@SETTINGS
@given(segments=segment_tables(), specials=st.booleans())
def test_unflatten_params_matches_torch_reference(device, n_models, segments, specials):
    shapes = [s for s, _, _ in segments]
    dtypes = [d for _, d, _ in segments]
    dim = sum(math.prod(s) for s in shapes)
    flat = torch.randn(n_models, dim, device=device) * 300  # beyond the fp16 range too
    if specials and dim:
        flat[0, 0], flat[-1, -1] = math.nan, -math.inf
    got = fp.unflatten_params_ext(flat, [list(s) for s in shapes], dtypes)
    want = fp.unflatten_params_torch(flat, shapes, dtypes)
    for g, w in zip(got, want):
        assert g.is_contiguous()
        assert same_values(g, w)  # narrowing casts round to nearest even, as Tensor.to


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("n_models", [1, 7, 200])
@SETTINGS
@given(segments=segment_tables(), specials=st.booleans())
def test_round_trips_are_bit_exact(device, n_models, segments, specials):
    """sources -> rows -> stacked tensors / in-place targets gives back the same bits. fp64 rows
    hold every dtype exactly; fp32 rows too when no source is fp64."""
    sources = population(segments, n_models, device, specials)
    shapes = [s for s, _, _ in segments]
    dtypes = [d for _, d, _ in segments]
    numels = [math.prod(s) for s in shapes]
    row_dtype = torch.float64 if torch.float64 in dtypes else torch.float32
    flat = fp.flatten_params_ext(sources, numels, row_dtype)
    stacked = fp.unflatten_params_ext(flat, [list(s) for s in shapes], dtypes)
    for j, t in enumerate(stacked):
        for i in range(n_models):
            assert same_bits(t[i], sources[i][j])
    targets = population(segments, n_models, device)  # same layouts, other values
    fp.unflatten_into_ext(flat, targets)
    for i in range(n_models):
        for j in range(len(segments)):
            assert same_bits(targets[i][j], sources[i][j])


@pytest.mark.parametrize("device", devices())
def test_unflatten_into_matches_torch_reference_on_strided_flat(device):
    segments = [((3, 4), torch.float32, "transposed"), ((), torch.float16, "contiguous"),
                ((2, 1, 5), torch.bfloat16, "contiguous"), ((4, 3), torch.float64, "sliced")]
    dim = 12 + 1 + 10 + 12
    flat = torch.randn(dim, 9, device=device).T  # (9, dim), column stride 9
    got, want = population(segments, 9, device), population(segments, 9, device)
    fp.unflatten_into_ext(flat, got)
    fp.unflatten_into_torch(flat, want)
    for a, b in zip(got, want):
        for x, y in zip(a, b):
            assert same_values(x, y)


def test_unflatten_into_bumps_versions_and_leaves_autograd_alone():
    p = torch.nn.Parameter(torch.zeros(3, 2))
    v = p._version
    fp.unflatten_into_ext(torch.arange(6.0).reshape(1, 6), [[p]])
    assert p._version > v and p.requires_grad and p.grad_fn is None
    assert torch.equal(p.detach(), torch.arange(6.0).reshape(3, 2))


def test_views_with_many_dims_are_handled():
    base = torch.randn(*([2] * 10), 3)
    src = base.transpose(0, 10)  # no two dims merge: more dims than the segment table holds
    flat = fp.flatten_params_ext([[src]], [src.numel()], torch.float32)
    assert torch.equal(flat[0], src.reshape(-1))
    target = torch.zeros(*([2] * 10), 3).transpose(0, 10)
    fp.unflatten_into_ext(flat, [[target]])
    assert torch.equal(target, src)


def test_dispatch_uses_the_extension_and_agrees_with_torch():
    sources = population([((4, 3), torch.float32, "transposed"), ((5,), torch.float16, "contiguous")], 7, "cpu")
    numels = [12, 5]
    with backend.use_backend("ext"):
        a = fp.flatten_params(sources, numels)
        outs_a = fp.unflatten_params(a, [(4, 3), (5,)], [torch.float32, torch.float16])
    with backend.use_backend("torch"):
        b = fp.flatten_params(sources, numels)
        outs_b = fp.unflatten_params(b, [(4, 3), (5,)], [torch.float32, torch.float16])
    assert same_bits(a, b)
    assert all(same_bits(x, y) for x, y in zip(outs_a, outs_b))


# --- errors -------------------------------------------------------------------------------

def test_bad_inputs_raise_clear_errors():
    one = [torch.zeros(3)]
    with pytest.raises(RuntimeError, match=r"no models given \(N = 0\)"):
        fp.flatten_params_ext([], [3], torch.float32)
    with pytest.raises(RuntimeError, match="has 3 values, the spec says 4"):
        fp.flatten_params_ext([one], [4], torch.float32)
    with pytest.raises(RuntimeError, match=r"sources has 3 tensors, expected n_models \* n_segments = 2 \* 1"):
        fp.flatten_params_ext([one, one + one], [3], torch.float32)  # one flat list: only the count is known
    with pytest.raises(ValueError, match="model 1 has 2 tensors, the spec has 1"), backend.use_backend("ext"):
        fp.flatten_params([one, one + one], [3], torch.float32)  # the Python entry point names the model
    with pytest.raises(RuntimeError, match="dtype Int"):
        fp.flatten_params_ext([[torch.zeros(3, dtype=torch.int32)]], [3], torch.float32)
    with pytest.raises(RuntimeError, match="row dtype"):
        fp.flatten_params_ext([one], [3], torch.int64)
    with pytest.raises(RuntimeError, match="wrong D: flat has 5 columns but the segments hold 4"):
        fp.unflatten_params_ext(torch.zeros(2, 5), [[2, 2]], [torch.float32])
    with pytest.raises(RuntimeError, match=r"N = 0"):
        fp.unflatten_params_ext(torch.zeros(0, 4), [[2, 2]], [torch.float32])
    with pytest.raises(RuntimeError, match="2-D"):
        fp.unflatten_params_ext(torch.zeros(4), [[2, 2]], [torch.float32])
    with pytest.raises(RuntimeError, match="1 shapes but 0 dtypes"):
        fp.unflatten_params_ext(torch.zeros(1, 4), [[2, 2]], [])
    with pytest.raises(RuntimeError, match="dtypes\\[0\\] has dtype Int"):
        fp.unflatten_params_ext(torch.zeros(1, 4), [[2, 2]], [torch.int32])
    with pytest.raises(RuntimeError, match="ndims add up to 1 but 2 sizes"):
        torch.ops.pdiff_fast.unflatten_params(torch.zeros(1, 4), [2, 2], [1], [6])
    with pytest.raises(RuntimeError, match="not a c10::ScalarType code"):
        torch.ops.pdiff_fast.unflatten_params(torch.zeros(1, 4), [4], [1], [99])
    with pytest.raises(RuntimeError, match="flat has 2 rows but 1 models"):
        fp.unflatten_into_ext(torch.zeros(2, 3), [one])
    with pytest.raises(RuntimeError, match="single memory location"):
        fp.unflatten_into_ext(torch.zeros(1, 3), [[torch.zeros(1).expand(3)]])
    with pytest.raises(RuntimeError, match="targets has 3 tensors, not a multiple of n_models = 2"):
        torch.ops.pdiff_fast.unflatten_into(torch.zeros(2, 3), [torch.zeros(3)] * 3, 2)
    with pytest.raises(RuntimeError, match=r"no models given \(N = 0\)"):
        torch.ops.pdiff_fast.unflatten_into(torch.zeros(1, 3), [torch.zeros(3)], 0)


@pytest.mark.skipif(not (torch.cuda.is_available() and _C.has_cuda()), reason="needs CUDA and a CUDA build")
def test_mismatched_devices_are_named():
    with pytest.raises(RuntimeError, match="mismatched devices"):
        fp.flatten_params_ext([[torch.zeros(3), torch.zeros(2, device="cuda")]], [3, 2], torch.float32)
    with pytest.raises(RuntimeError, match="mismatched devices"):
        fp.unflatten_into_ext(torch.zeros(1, 3, device="cuda"), [[torch.zeros(3)]])


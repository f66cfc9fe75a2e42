"""pdiff_fast.ops.flatten_params' Python side: the torch references against values written out by
hand, the entry points' checks and messages, the dispatch, the argument packing for the
extension's ops and their fake kernels. Written against the mutants mutmut left alive
(tests/mutation, docs/mutation-scores.md); test_flatten_params.py compares the extension with the
references."""
import pytest
import torch

from pdiff_fast import backend
from pdiff_fast.ops import flatten_params as fp


def two_models():
    a = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([5.0], dtype=torch.float64)]
    b = [torch.tensor([[6.0, 7.0], [8.0, 9.0]]).T, torch.tensor([10.0], dtype=torch.float64)]  # a strided one
    return [a, b]


def test_torch_references_by_hand():
    flat = fp.flatten_params_torch(two_models(), [4, 1])
    assert flat.dtype == torch.float32 and flat.tolist() == [[1, 2, 3, 4, 5], [6, 8, 7, 9, 10]]
    assert fp.flatten_params_torch(two_models(), [4, 1], torch.float64).dtype == torch.float64
    w, b = fp.unflatten_params_torch(flat, [(2, 2), (1,)], [torch.float16, torch.float64])
    assert w.dtype == torch.float16 and w.shape == (2, 2, 2) and w.tolist() == [[[1, 2], [3, 4]], [[6, 8], [7, 9]]]
    assert b.dtype == torch.float64 and b.tolist() == [[5.0], [10.0]] and w.is_contiguous()
    scalar, = fp.unflatten_params_torch(torch.tensor([[3.0], [4.0]]), [()], [torch.float32])
    assert scalar.shape == (2,) and scalar.tolist() == [3.0, 4.0]
    targets = [[torch.zeros(2, 2), torch.zeros(1)], [torch.zeros(2, 2), torch.zeros(1)]]
    fp.unflatten_into_torch(flat, targets)
    assert targets[1][0].tolist() == [[6, 8], [7, 9]] and targets[1][1].tolist() == [10] and targets[0][1].tolist() == [5]


def test_unflatten_into_writes_live_parameters():
    p = torch.nn.Parameter(torch.zeros(3))
    fp.unflatten_into(torch.tensor([[1.0, 2.0, 3.0]]), [[p]])
    assert p.tolist() == [1.0, 2.0, 3.0] and p.requires_grad and p.grad is None


def test_flatten_checks_name_the_model_and_tensor():
    with pytest.raises(ValueError, match=r"^flatten_params: no models given \(N = 0\)$"):
        fp.flatten_params([], [1])
    with pytest.raises(ValueError, match=r"^flatten_params: model 1 has 1 tensors, the spec has 2$"):
        fp.flatten_params([two_models()[0], [torch.zeros(4)]], [4, 1])
    with pytest.raises(ValueError, match=r"^flatten_params: model 0 tensor 1 has 2 values, the spec says 1$"):
        fp.flatten_params([[torch.zeros(4), torch.zeros(2)]], [4, 1])
    fp._check_sources([[torch.zeros(4), torch.zeros(1)]], [4, 1])  # fits: no error


def test_unflatten_checks():
    with pytest.raises(ValueError, match=r"^unflatten_params: expected a \(N, 5\) tensor, got \(2, 4\)$"):
        fp.unflatten_params(torch.zeros(2, 4), [(2, 2), (1,)], [torch.float32] * 2)
    with pytest.raises(ValueError, match=r"^unflatten_params: expected a \(N, 5\) tensor, got \(5,\)$"):
        fp.unflatten_params(torch.zeros(5), [(2, 2), (1,)], [torch.float32] * 2)
    with pytest.raises(ValueError, match=r"^unflatten_params: no rows \(N = 0\)$"):
        fp.unflatten_params(torch.zeros(0, 5), [(2, 2), (1,)], [torch.float32] * 2)
    with pytest.raises(ValueError, match=r"^unflatten_into: expected a \(2, 5\) tensor, got \(1, 5\)$"):
        fp.unflatten_into(torch.zeros(1, 5), [[torch.zeros(4), torch.zeros(1)]] * 2)
    with pytest.raises(ValueError, match=r"^unflatten_into: expected a \(1, 5\) tensor, got \(5,\)$"):
        fp.unflatten_into(torch.zeros(5), [[torch.zeros(4), torch.zeros(1)]])
    with pytest.raises(ValueError, match=r"^flatten_params: model 1 tensor 0 has 3 values, the spec says 4$"):
        fp.unflatten_into(torch.zeros(2, 5), [[torch.zeros(4), torch.zeros(1)], [torch.zeros(3), torch.zeros(2)]])
    with pytest.raises(ValueError, match=r"^flatten_params: no models given \(N = 0\)$"):
        fp.unflatten_into(torch.zeros(0, 5), [])


@pytest.fixture
def chosen(monkeypatch):
    """backend.choose answering `name`, recording (op, device); the *_ext functions recording their arguments."""
    asked, calls = [], []

    def setup(name):
        monkeypatch.setattr(backend, "choose", lambda op, device, auto=True: asked.append((op, device)) or name)
        for fn in ("flatten_params_ext", "unflatten_params_ext", "unflatten_into_ext"):
            monkeypatch.setattr(fp, fn, lambda *a, fn=fn: calls.append((fn, a)) or fn)
        return asked, calls
    return setup


def test_dispatch(chosen):
    asked, calls = chosen("ext")
    models = two_models()
    assert fp.flatten_params(models, [4, 1], torch.float64) == "flatten_params_ext"
    assert calls[-1] == ("flatten_params_ext", (models, [4, 1], torch.float64))
    flat = torch.zeros(2, 5)
    assert fp.unflatten_params(flat, [(2, 2), (1,)], ["d1", "d2"]) == "unflatten_params_ext"
    assert calls[-1][1][0] is flat and calls[-1][1][1:] == ([(2, 2), (1,)], ["d1", "d2"])
    targets = [[torch.zeros(4), torch.zeros(1)]] * 2
    assert fp.unflatten_into(flat, targets) == "unflatten_into_ext" and calls[-1][1][1] is targets
    assert asked == [("flatten_params", torch.device("cpu")), ("unflatten_params", flat.device),
                     ("unflatten_into", flat.device)]
    asked, calls = chosen("torch")
    n = len(calls)
    assert fp.flatten_params(models, [4, 1]).tolist() == [[1, 2, 3, 4, 5], [6, 8, 7, 9, 10]]
    assert fp.flatten_params(models, [4, 1]).dtype == torch.float32
    assert fp.unflatten_params(torch.arange(5.0)[None], [(2, 2), (1,)], [torch.float32] * 2)[1].tolist() == [[4.0]]
    fp.unflatten_into(torch.ones(2, 5), targets)
    assert len(calls) == n and targets[0][0].tolist() == [1, 1, 1, 1]


def test_a_model_without_tensors_asks_about_the_cpu(chosen):
    asked, _ = chosen("torch")
    with pytest.raises(ValueError, match="non-empty"):  # torch.cat of nothing; the device asked about is the CPU
        fp.flatten_params([[]], [])
    assert asked == [("flatten_params", torch.device("cpu"))]


def test_ext_argument_packing(monkeypatch):
    got = {}
    monkeypatch.setattr(fp, "extension_op", lambda name: lambda *a: got.setdefault(name, a) and name)
    models = two_models()
    fp.flatten_params_ext(models, (4, 1), torch.float16)
    sources, n, numels, dtype = got["flatten_params"]
    assert [id(t) for t in sources] == [id(t) for m in models for t in m] and n == 2 and numels == [4, 1]
    assert dtype == torch.float16
    fp.unflatten_params_ext("FLAT", [(2, 3), (), (5,)], [torch.float32, torch.float64, torch.bfloat16])
    assert got["unflatten_params"] == ("FLAT", [2, 3, 5], [2, 0, 1], [6, 7, 15])
    fp.unflatten_into_ext("FLAT", models)
    flat_targets = got["unflatten_into"]
    assert flat_targets[0] == "FLAT" and len(flat_targets[1]) == 4 and flat_targets[1][2] is models[1][0]
    assert flat_targets[2] == 2
    assert fp._shape_lists([(2, 3), (), (5,)]) == ([2, 3, 5], [2, 0, 1])
    assert all(type(s) is int for s in fp._shape_lists([(torch.tensor(2), 3)])[0])


def test_dtype_codes_are_c10s():
    assert fp.DTYPE_CODES == {torch.uint8: 0, torch.int8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4,
                              torch.float16: 5, torch.float32: 6, torch.float64: 7, torch.complex64: 9,
                              torch.complex128: 10, torch.bool: 11, torch.bfloat16: 15}
    assert fp.dtype_code(torch.bfloat16) == 15 and fp.dtype_code(torch.uint8) == 0
    with pytest.raises(ValueError, match=r"^unflatten_params: dtype torch\.float8_e4m3fn is not supported; supported "
                                         r"dtypes are float16, bfloat16, float32 and float64$"):
        fp.dtype_code(torch.float8_e4m3fn)
    assert fp._CODE_DTYPES[15] is torch.bfloat16 and len(fp._CODE_DTYPES) == 12


def test_fake_kernels():
    meta = [torch.empty(4, device="meta"), torch.empty(1, device="meta")] * 3
    out = fp._flatten_params_fake(meta, 3, [4, 1], torch.float16)
    assert out.shape == (3, 5) and out.dtype == torch.float16 and out.device.type == "meta"
    assert fp._flatten_params_fake([], 0, [4], torch.float32).device.type == "cpu"
    with pytest.raises(RuntimeError, match=r"flatten_params: sources has 6 tensors, expected n_models \* n_segments = "
                                           r"2 \* 2"):
        fp._flatten_params_fake(meta, 2, [4, 1], torch.float32)
    flat = torch.empty(3, 10, device="meta")
    outs = fp._unflatten_params_fake(flat, [2, 3, 4], [2, 0, 1], [6, 7, 15])
    assert [o.shape for o in outs] == [(3, 2, 3), (3,), (3, 4)]
    assert [o.dtype for o in outs] == [torch.float32, torch.float64, torch.bfloat16] and outs[0].device.type == "meta"
    with pytest.raises(RuntimeError, match=r"unflatten_params: 2 shapes but 1 dtypes"):
        fp._unflatten_params_fake(flat, [2, 3], [1, 1], [6])
    with pytest.raises(RuntimeError, match=r"unflatten_params: the ndims add up to 2 but 3 sizes were given"):
        fp._unflatten_params_fake(flat, [2, 3, 4], [1, 1], [6, 6])
    with pytest.raises(RuntimeError, match=r"unflatten_params: dtype code 8 is not supported"):
        fp._unflatten_params_fake(flat, [2], [1], [8])
    assert fp._unflatten_into_fake(flat, [], 0) is None


def test_the_device_asked_about_is_model_0s_first_tensor(chosen):
    asked, _ = chosen("ext")
    meta, cpu = torch.empty(4, device="meta"), torch.zeros(1)
    fp.flatten_params([[meta, cpu], [cpu.expand(4), cpu]], [4, 1])
    assert asked == [("flatten_params", torch.device("meta"))]
    out = fp._flatten_params_fake([torch.empty(4, device="meta"), torch.zeros(1)], 1, [4, 1], torch.float32)
    assert out.device.type == "meta"


def test_the_torch_path_keeps_the_dtype_asked_for(chosen):
    chosen("torch")
    assert fp.flatten_params(two_models(), [4, 1], torch.float64).dtype == torch.float64
    assert fp.flatten_params(two_models(), [4, 1], torch.float16).dtype == torch.float16

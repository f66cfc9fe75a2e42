"""Population evaluation: evaluate_population against the one-model-at-a-time reference
(identical predictions, accuracy, wrong-prediction bitsets), prefix sharing, chunking under a
tiny memory budget, non-finite models, the recheck of close calls, IoU of wrong-prediction sets
(extension vs torch reference) and the fused norm_affine_act op.

Models (written here, independent of the zoo): a 1D CNN with BatchNorm1d for MNIST-1D-like
inputs (1, 40); an MLP with LayerNorm whose forward is a chain of attributes (not an
nn.Sequential); a CNN whose generated subset is a conv in the middle; a model that is not a
chain (runs whole under vmap).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdiff_fast import backend
from pdiff_fast.params import ParamSpec
from pdiff_fast.population import (
    _plan,
    _write_bits,
    evaluate_one_by_one,
    evaluate_population,
    iou_matrix,
    iou_matrix_torch,
    norm_affine_act_torch,
    pack_bits,
    unpack_bits,
)

HAS_EXT = not isinstance(backend.load_extension(), Exception)
EXT_HAS_CUDA = HAS_EXT and bool(backend.load_extension().has_cuda())
needs_ext = pytest.mark.skipif(not HAS_EXT, reason="the extension pdiff_fast._C is not built")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is faster, and immune to a busy machine's OpenMP stalls."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def devices(ext_cuda: bool = False):
    """cpu, and cuda: skipped without a GPU and, for tests that call the extension's CUDA
    kernels (ext_cuda=True), when the extension was built without CUDA (has_cuda() False: a
    CPU-only build on a CUDA machine)."""
    if not torch.cuda.is_available():
        cuda_skip = "needs a CUDA GPU"
    elif ext_cuda and not HAS_EXT:
        cuda_skip = "the extension pdiff_fast._C is not built"
    elif ext_cuda and not EXT_HAS_CUDA:
        cuda_skip = ("the extension pdiff_fast._C was built without CUDA (has_cuda() is False); "
                     "rebuild it with CUDA (FORCE_CUDA=1) to test its CUDA kernels")
    else:
        cuda_skip = None
    marks = [pytest.mark.skip(reason=cuda_skip)] if cuda_skip else []
    return ["cpu", pytest.param("cuda", marks=marks)]


# --- models ---------------------------------------------------------------------------------

def cnn1d():  # MNIST-1D-like: (n, 1, 40) -> 10 classes
    return nn.Sequential(nn.Conv1d(1, 16, 5), nn.BatchNorm1d(16), nn.ReLU(), nn.Conv1d(16, 32, 3),
                         nn.BatchNorm1d(32), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(32, 10))


class MLPLayerNorm(nn.Module):
    """Not an nn.Sequential: its forward calls the children one after the other."""

    def __init__(self):
        super().__init__()
        self.flat, self.fc1, self.ln1, self.act1 = nn.Flatten(), nn.Linear(40, 32), nn.LayerNorm(32), nn.ReLU()
        self.fc2, self.ln2, self.act2, self.head = nn.Linear(32, 32), nn.LayerNorm(32), nn.ReLU(), nn.Linear(32, 10)

    def forward(self, x):
        x = self.fc1(self.flat(x))
        x = self.act1(self.ln1(x))
        x = self.act2(self.ln2(self.fc2(x)))
        return self.head(x)


class NotAChain(nn.Module):
    """The forward does work between children: evaluated whole under vmap."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.fc = nn.Conv1d(1, 8, 3), nn.BatchNorm1d(8), nn.Linear(8 * 38, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def randomised(model):
    """Non-trivial BatchNorm statistics and affines, eval mode."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
            m.weight.data.normal_(1, 0.3, generator=g)
            m.bias.data.normal_(0, 0.3, generator=g)
    return model.eval()


CASES = {  # name -> (model, subset)
    "cnn1d-bn": (cnn1d, "last-2-norm-layers"),
    "mlp-layernorm": (MLPLayerNorm, "last-2-norm-layers"),
    "cnn1d-conv-in-the-middle": (cnn1d, ["3.weight", "4.bias"]),
    "not-a-chain": (NotAChain, ["bn.weight", "bn.bias"]),
}


def setup_case(name, n_models=13, n_test=150, spread=0.3):
    make, subset = CASES[name]
    base = randomised(make())
    spec = ParamSpec.from_model(base, subset)
    flat = spec.flatten([base]) + spread * torch.randn(n_models, spec.dim)  # (N, D) around the base
    x = torch.randn(n_test, 1, 40)
    y = torch.randint(0, 10, (n_test,))
    return base, spec, flat, x, y


def assert_same_result(a, b):
    assert torch.equal(a.predictions, b.predictions)
    assert torch.equal(a.finite, b.finite)
    assert torch.equal(a.wrong, b.wrong)
    assert torch.allclose(a.accuracy, b.accuracy, equal_nan=True, rtol=0, atol=0)


# --- batched == one by one ------------------------------------------------------------------

@pytest.mark.parametrize("name", list(CASES))
def test_batched_predictions_equal_one_by_one(name):
    base, spec, flat, x, y = setup_case(name)
    flat[4, 0] = math.nan  # flagged, not run
    fast = evaluate_population(base, spec, flat, x, y, batch_size=64)
    slow = evaluate_one_by_one(base, spec, flat, x, y, batch_size=64)
    assert_same_result(fast, slow)
    assert fast.accuracy.shape == (13,) and fast.wrong.shape == (13, math.ceil(150 / 8))
    assert fast.predictions.dtype == torch.int64 and fast.wrong.dtype == torch.uint8


ZOO = [("cnn1d", (1, 40)), ("resnet", (1, 8, 8)), ("vit", (1, 8, 8)), ("mlp", (1, 8, 8))]


@pytest.mark.parametrize("name,shape", ZOO)
def test_project_zoo_models_match_reference(name, shape):
    """The project's zoo (when present): BasicBlocks and transformer layers run under vmap."""
    zoo = pytest.importorskip("pdiff_fast.models")
    base = randomised(zoo.build_model(name, shape, 10))
    spec = ParamSpec.from_model(base, "last-2-norm-layers")
    flat = spec.flatten([base]) + 0.2 * torch.randn(6, spec.dim)
    x, y = torch.randn(40, *shape), torch.randint(0, 10, (40,))
    assert_same_result(evaluate_population(base, spec, flat, x, y, batch_size=16),
                       evaluate_one_by_one(base, spec, flat, x, y, batch_size=16))


def test_prefix_is_shared_and_suffix_batched():
    base, spec, _, x, _ = setup_case("cnn1d-bn")
    plan = _plan(base, spec, x[:2])
    assert [s.name for s in plan.prefix] == ["0"] and plan.suffix[0].name == "1" and not plan.whole_model
    base, spec, _, x, _ = setup_case("mlp-layernorm")  # a chain found by forward hooks
    assert [s.name for s in _plan(base, spec, x[:2]).prefix] == ["flat", "fc1"]
    last = ParamSpec.from_model(base, "last-1-norm-layers")
    assert [s.name for s in _plan(base, last, x[:2]).prefix] == ["flat", "fc1", "ln1", "act1", "fc2"]
    base, spec, _, x, _ = setup_case("not-a-chain")
    assert _plan(base, spec, x[:2]).whole_model


@pytest.mark.parametrize("name", ["cnn1d-bn", "mlp-layernorm"])
def test_tiny_memory_budget_and_small_chunks_change_nothing(name):
    base, spec, flat, x, y = setup_case(name, n_models=4, n_test=24)
    ref = evaluate_population(base, spec, flat, x, y, batch_size=16)
    for kwargs in ({"memory_budget_bytes": 1}, {"max_models_per_chunk": 2}, {"memory_budget_bytes": 50_000}):
        assert_same_result(evaluate_population(base, spec, flat, x, y, batch_size=16, **kwargs), ref)


def test_non_finite_models_are_flagged():
    base, spec, flat, x, y = setup_case("cnn1d-bn", n_models=4, n_test=21)
    flat[1, 3] = math.inf
    flat[2, -1] = math.nan
    res = evaluate_population(base, spec, flat, x, y)
    assert res.finite.tolist() == [True, False, False, True]
    assert torch.isnan(res.accuracy[1:3]).all() and torch.isfinite(res.accuracy[[0, 3]]).all()
    assert (res.predictions[1:3] == -1).all()
    assert unpack_bits(res.wrong[1:3], 21).all()  # every sample counts as wrong
    assert not unpack_bits(res.wrong, None)[:, 21:].any()  # padding bits stay clear
    all_bad = evaluate_population(base, spec, torch.full_like(flat, math.nan), x, y)
    assert not all_bad.finite.any() and torch.isnan(all_bad.accuracy).all()


def test_ties_are_rechecked_by_the_reference():
    base, spec, flat, x, y = setup_case("cnn1d-bn", n_models=3, n_test=30)
    with torch.no_grad():
        base[-1].weight.zero_()  # every logit equals its bias: the first two tie everywhere
        base[-1].bias.copy_(torch.tensor([1.0, 1.0] + [0.0] * 8))
    res = evaluate_population(base, spec, flat, x, y, batch_size=16)
    assert res.rechecked == 3 * 2  # every (model, batch) pair
    assert (res.predictions == 0).all()
    assert_same_result(res, evaluate_one_by_one(base, spec, flat, x, y, batch_size=16))


def test_torch_backend_gives_the_same_predictions():
    """Without the extension's fused op the logits differ in the last bits; the recheck of
    close calls still makes the predictions those of the reference."""
    base, spec, flat, x, y = setup_case("cnn1d-bn")
    with backend.use_backend("torch"):
        fast = evaluate_population(base, spec, flat, x, y, batch_size=64)
    assert_same_result(fast, evaluate_one_by_one(base, spec, flat, x, y, batch_size=64))


def test_base_model_is_left_as_it_was():
    base, spec, flat, x, y = setup_case("cnn1d-bn", n_models=3, n_test=20)
    base.train()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    evaluate_population(base, spec, flat, x, y)
    assert base.training and all(m.training for m in base.modules())
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_bad_inputs_raise():
    base, spec, flat, x, y = setup_case("cnn1d-bn", n_models=2, n_test=10)
    with pytest.raises(ValueError, match="shape"):
        evaluate_population(base, spec, flat[:, :-1], x, y)
    with pytest.raises(ValueError, match="N = 0"):
        evaluate_population(base, spec, flat[:0], x, y)
    with pytest.raises(ValueError, match="same"):
        evaluate_population(base, spec, flat, x, y[:-1])


def test_without_predictions_the_rest_is_the_same():
    """keep_predictions=False (what evaluate() uses): no (N, n_test) predictions, the same bits,
    accuracy and rechecks, also with non-finite models and tiles that split bytes of the bitset."""
    base, spec, flat, x, y = setup_case("cnn1d-bn", n_models=9, n_test=77)
    flat[2, 1] = math.nan
    for kwargs in ({}, {"memory_budget_bytes": 1}, {"max_models_per_chunk": 4}):
        full = evaluate_population(base, spec, flat, x, y, batch_size=13, **kwargs)
        lean = evaluate_population(base, spec, flat, x, y, batch_size=13, keep_predictions=False, **kwargs)
        assert lean.predictions is None
        assert torch.equal(lean.wrong, full.wrong) and torch.equal(lean.finite, full.finite)
        assert torch.allclose(lean.accuracy, full.accuracy, equal_nan=True, rtol=0, atol=0)
        assert lean.rechecked == full.rechecked
        assert_same_result(full, evaluate_one_by_one(base, spec, flat, x, y, batch_size=13))


@pytest.mark.parametrize("n", [1, 5, 8, 21, 64])
def test_write_bits_at_any_offset(n):
    mask = torch.rand(4, 70) < 0.5
    bits = pack_bits(torch.rand(4, 70) < 0.5)  # overwritten piece by piece, at unaligned offsets
    for c0 in range(0, 70, n):
        _write_bits(bits, slice(0, 4), c0, mask[:, c0:c0 + n])
    assert torch.equal(bits, pack_bits(mask))
    _write_bits(bits, torch.tensor([1, 3]), 3, torch.ones(2, 10, dtype=torch.bool))
    mask[[1, 3], 3:13] = True
    assert torch.equal(bits, pack_bits(mask))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_test_inputs_raise(bad):
    base, spec, flat, x, y = setup_case("cnn1d-bn", n_models=2, n_test=10)
    x[7, 0, 3] = bad
    for fn in (evaluate_population, evaluate_one_by_one):
        with pytest.raises(ValueError, match="test inputs contain NaN or Inf"):
            fn(base, spec, flat, x, y)


@pytest.mark.parametrize("label", [10, -1, 1000])
def test_labels_outside_the_classes_raise(label):
    base, spec, flat, x, y = setup_case("cnn1d-bn", n_models=2, n_test=10)
    y[4] = label
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        evaluate_population(base, spec, flat, x, y)
    with pytest.raises(ValueError, match="labels"):
        evaluate_population(base, spec, flat, x, y.float().where(y != label, math.nan))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_population_matches_reference():
    """Runs whatever the extension's build: its ops fall back to PyTorch on a CPU-only build."""
    base, spec, flat, x, y = setup_case("cnn1d-bn")
    base = base.cuda()
    assert_same_result(evaluate_population(base, spec, flat.cuda(), x.cuda(), y.cuda(), batch_size=64),
                       evaluate_one_by_one(base, spec, flat.cuda(), x.cuda(), y.cuda(), batch_size=64))


# --- bitsets and IoU ------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 8, 13, 1000])
def test_pack_unpack_round_trip(n):
    mask = torch.rand(6, n) < 0.3
    packed = pack_bits(mask)
    assert packed.shape == (6, math.ceil(n / 8)) and packed.dtype == torch.uint8
    assert torch.equal(unpack_bits(packed, n), mask)


def random_bits(n_rows, n_bits, density=0.3):
    mask = torch.rand(n_rows, n_bits) < density
    mask[0] = False  # an empty set: IoU with another empty set is 1.0
    return mask


@pytest.mark.parametrize("device", devices(ext_cuda=True))
@pytest.mark.parametrize("words", [torch.uint8, torch.int64])
@pytest.mark.parametrize("n_bits", [7, 64, 1000])
def test_iou_matrix_matches_torch_reference(device, words, n_bits):
    a, b = random_bits(9, n_bits), random_bits(5, n_bits, 0.6)
    b[1] = False
    pa, pb = pack_bits(a), pack_bits(b)
    if words == torch.int64:  # same bits as 64-bit words
        pad = (-pa.shape[1]) % 8
        pa, pb = (F.pad(p, (0, pad)).view(torch.int64) for p in (pa, pb))
    got = iou_matrix(pa.to(device), pb.to(device)).cpu()
    want = iou_matrix_torch(a, b)
    assert got.dtype == torch.float32 and got.shape == (9, 5)
    assert torch.equal(got, want)
    assert got[0, 1] == 1.0  # empty vs empty
    with backend.use_backend("torch"):
        assert torch.equal(iou_matrix(pa, pb), want)


def test_iou_of_population_wrong_sets_counts_samples():
    base, spec, flat, x, y = setup_case("cnn1d-bn", n_models=4, n_test=50)
    res = evaluate_population(base, spec, flat, x, y)
    wrong = [set((res.predictions[i] != y).nonzero().flatten().tolist()) for i in range(4)]
    iou = iou_matrix(res.wrong, res.wrong)
    for i in range(4):
        for j in range(4):
            union = wrong[i] | wrong[j]
            expect = len(wrong[i] & wrong[j]) / len(union) if union else 1.0
            assert iou[i, j].item() == pytest.approx(expect, abs=1e-7)


@needs_ext
def test_iou_matrix_errors():
    ext = backend.load_extension()
    a = torch.zeros(3, 4, dtype=torch.uint8)
    with pytest.raises(RuntimeError, match="widths"):
        ext.iou_matrix(a, torch.zeros(3, 5, dtype=torch.uint8))
    with pytest.raises(RuntimeError, match="mismatched dtypes"):
        ext.iou_matrix(a, torch.zeros(3, 4, dtype=torch.int64))
    with pytest.raises(RuntimeError, match="integer dtype"):
        ext.iou_matrix(torch.zeros(3, 4), torch.zeros(3, 4))


# --- norm_affine_act ------------------------------------------------------------------------

torch_bn_uses_fma = torch.backends.cpu.get_cpu_capability() != "DEFAULT"


@needs_ext
@pytest.mark.parametrize("device", devices(ext_cuda=True))
@pytest.mark.parametrize("shape", [(7, 16, 36), (5, 16, 1), (3, 4, 2, 16, 5)])
def test_norm_affine_act_batchnorm_matches_torch(device, shape):
    """shared (B, C, L) or per-model (N, B, C, L) input; bit-identical to F.batch_norm + ReLU
    on CPUs where PyTorch's kernel uses FMA (AVX2 / AVX-512)."""
    ext = backend.load_extension()
    n_models, c = 4, 16
    per_model = len(shape) > 3  # (N, B, C, L) rather than a shared (B, C, L)
    x = torch.randn(*((n_models,) if per_model else ()), *shape[-3:], device=device)
    w, b = torch.randn(n_models, c, device=device), torch.randn(n_models, c, device=device)
    mean, var = torch.randn(c, device=device), torch.rand(c, device=device) + 0.5
    got = ext.norm_affine_act(x, w, b, mean, var, 1e-5, "relu", 0.0)
    assert got.shape == (n_models, *x.shape[-3:])
    for i in range(n_models):
        xi = x if x.dim() == 3 else x[i]
        want = F.relu(F.batch_norm(xi, mean, var, w[i], b[i], False, 0.1, 1e-5))
        if device == "cpu" and torch_bn_uses_fma:
            assert torch.equal(got[i], want)
        else:
            torch.testing.assert_close(got[i], want)
    torch.testing.assert_close(got, norm_affine_act_torch(x, w, b, mean, var, 1e-5, "relu"))


@needs_ext
@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu"])
def test_norm_affine_act_layernorm_affine_matches_torch(act):
    ext = backend.load_extension()
    h = torch.randn(50, 7, 32)
    w, b = torch.randn(3, 32), torch.randn(3, 32)
    x_hat = F.layer_norm(h, (32,), None, None, 1e-5).reshape(-1, 32, 1)  # (R, F, 1)
    got = ext.norm_affine_act(x_hat, w, b, None, None, 0.0, act, 0.2).reshape(3, 50, 7, 32)
    for i in range(3):
        want = F.layer_norm(h, (32,), w[i], b[i], 1e-5)
        want = {"identity": want, "relu": F.relu(want), "leaky_relu": F.leaky_relu(want, 0.2)}[act]
        if torch_bn_uses_fma:
            assert torch.equal(got[i], want)
        else:
            torch.testing.assert_close(got[i], want)


@needs_ext
def test_norm_affine_act_is_a_torch_op_and_checks_inputs():
    ext = backend.load_extension()
    x, w = torch.randn(2, 3, 4), torch.randn(5, 3)
    assert torch.equal(torch.ops.pdiff_fast.norm_affine_act(x, w, w, None, None, 0.0, "tanh", 0.0),
                       ext.norm_affine_act(x, w, w, None, None, 0.0, "tanh", 0.0))
    with pytest.raises(RuntimeError, match="channels"):
        ext.norm_affine_act(x, torch.randn(5, 4), torch.randn(5, 4), None, None, 0.0, "relu", 0.0)
    with pytest.raises(RuntimeError, match="unknown activation"):
        ext.norm_affine_act(x, w, w, None, None, 0.0, "swish", 0.0)
    with pytest.raises(RuntimeError, match="mismatched dtypes"):
        ext.norm_affine_act(x, w.double(), w, None, None, 0.0, "relu", 0.0)

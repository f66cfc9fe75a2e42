"""Population evaluation: evaluate_population against the one-model-at-a-time reference
(identical predictions, accuracy, wrong-prediction bitsets), prefix sharing, chunking under a
tiny memory budget, non-finite models, the recheck of close calls, the IoU of the wrong-prediction
bitsets. The ops it runs on have their own tests: tests/ops/test_iou_matrix.py (bitsets, IoU
extension vs torch reference) and tests/ops/test_norm_affine_act.py (the fused norm affine).

Models (independent of the zoo): a 1D CNN with BatchNorm1d for MNIST-1D-like inputs (1, 40),
the population benchmarks' (benchmarks/common.py); an MLP with LayerNorm whose forward is a chain of attributes (not an
nn.Sequential); a CNN whose generated subset is a conv in the middle; a model that is not a
chain (runs whole under vmap).
"""
import math

import pytest
import torch
from torch import nn

from benchmarks.common import mnist1d_cnn as cnn1d  # the one definition, shared with the benchmarks
from pdiff_fast import backend
from pdiff_fast.params import ParamSpec
from pdiff_fast.population import (
    _plan,
    _write_bits,
    evaluate_one_by_one,
    evaluate_population,
    iou_matrix,
    pack_bits,
    unpack_bits,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (tests/conftest.py)


# --- models ---------------------------------------------------------------------------------



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

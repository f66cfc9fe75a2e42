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
import copy
import math

import pytest
import torch
from torch import nn

from benchmarks.common import mnist1d_cnn as cnn1d  # the one definition, shared with the benchmarks
from benchmarks.population_counts import count_device_work
from pdiff_fast import backend
from pdiff_fast.evaluation import population
from pdiff_fast.evaluation import population_plan
from pdiff_fast.params import ParamSpec
from pdiff_fast.evaluation.population import (
    CACHE_TILE_BYTES,
    _plan,
    _write_bits,
    default_memory_budget,
    evaluate_one_by_one,
    evaluate_population,
    iou_matrix,
    pack_bits,
    tile_pairs_for,
    unpack_bits,
)

pytestmark = [
    pytest.mark.usefixtures("one_thread"),  # tiny models (tests/conftest.py)
    # a fast path that disagrees with the reference beyond rounding fails any test that meets it
    pytest.mark.filterwarnings("error:evaluate_population.*fast path:RuntimeWarning"),
]


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
    # the fast path's own predictions, not the fallback's: a close call at most, of 12 x 3 pairs
    assert fast.rechecked <= 3 and fast.max_logit_diff < 1e-5
    assert fast.accuracy.shape == (13,) and fast.wrong.shape == (13, math.ceil(150 / 8))
    assert fast.predictions.dtype == torch.int64 and fast.wrong.dtype == torch.uint8


ZOO = [("cnn1d", (1, 40)), ("resnet", (1, 8, 8)), ("vit", (1, 8, 8)), ("mlp", (1, 8, 8))]


@pytest.mark.parametrize("name,shape", ZOO)
def test_project_zoo_models_match_reference(name, shape):
    """The project's zoo (when present): BasicBlocks and transformer layers run under vmap."""
    zoo = pytest.importorskip("pdiff_fast.nn.models")
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
    for kwargs in ({"memory_budget_bytes": 1}, {"max_models_per_chunk": 2}, {"memory_budget_bytes": 50_000},
                   {"tile_pairs": 7}, {"tile_pairs": 10 ** 9}):
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


# --- the fast path's own output: no fallback where there is nothing to recheck ------------------

def no_tie_case(name, n_models=13, n_test=157, min_gap=1e-3):
    """setup_case with fresh random inputs, keeping only the test samples on which every model's
    top-2 logit gap (by the reference) exceeds min_gap: thousands of times the rounding
    difference (~1e-7), so a right fast path rechecks nothing. Odd sizes: n_test ends up odd."""
    base, spec, flat, x, y = setup_case(name, n_models=n_models, n_test=n_test)
    model = copy.deepcopy(base).eval()
    keep = torch.ones(n_test, dtype=torch.bool)
    with torch.no_grad():
        for row in flat:
            spec.load_into(model, row)
            top = model(x).topk(2, dim=-1).values
            keep &= top[:, 0] - top[:, 1] > min_gap
    if keep.sum() % 2 == 0:  # an odd count: partial bytes of the bitsets
        keep[keep.nonzero()[0]] = False
    return base, spec, flat, x[keep], y[keep]


def assert_fast_path_alone(res, ref):
    """What a clean fast path gives: the reference's predictions with no pair recomputed."""
    assert res.rechecked == 0, f"{res.rechecked} (model, batch) pairs fell back to the reference"
    assert res.max_logit_diff < 1e-5
    assert_same_result(res, ref)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("use", ["auto", "torch"])
def test_no_ties_recheck_nothing(name, use):
    base, spec, flat, x, y = no_tie_case(name)
    assert x.shape[0] % 2 == 1 and x.shape[0] > 100
    flat[5, -1] = math.nan  # not run
    ref = evaluate_one_by_one(base, spec, flat, x, y, batch_size=32)
    with backend.use_backend(use):
        for kwargs in ({}, {"tile_pairs": 45}):  # one tile per batch; 1 model x 32 samples per tile
            assert_fast_path_alone(evaluate_population(base, spec, flat, x, y, batch_size=32, **kwargs), ref)


def _without_running_stats(monkeypatch):
    """Plant issue 27's bug: the fused BatchNorm affine called without the running statistics."""
    real = population_plan.norm_affine_act

    def broken(x, weight, bias, running_mean=None, running_var=None, *rest):
        return real(x, weight, bias, None, None, *rest)
    monkeypatch.setattr(population_plan, "norm_affine_act", broken)


@pytest.mark.parametrize("name", ["cnn1d-bn", "cnn1d-conv-in-the-middle"])
def test_a_broken_fast_path_is_caught(monkeypatch, name):
    """The recheck keeps the predictions right even then, so only the fallback count (and the
    warning) shows the bug: every (model, batch) pair is recomputed the slow way."""
    base, spec, flat, x, y = no_tie_case(name)
    ref = evaluate_one_by_one(base, spec, flat, x, y, batch_size=32)
    assert_fast_path_alone(evaluate_population(base, spec, flat, x, y, batch_size=32), ref)
    _without_running_stats(monkeypatch)
    with pytest.warns(RuntimeWarning, match="fast path is wrong"):
        res = evaluate_population(base, spec, flat, x, y, batch_size=32)
    assert res.rechecked == 13 * math.ceil(x.shape[0] / 32) and res.max_logit_diff > 1e-2
    assert_same_result(res, ref)  # the safety net holds ...
    with pytest.raises(AssertionError, match="fell back to the reference"):
        assert_fast_path_alone(res, ref)  # ... and the check of the fast path alone sees through it


# --- tiles sized per device, no host sync per tile -------------------------------------------

def test_tiles_are_sized_per_device():
    base, spec, _, x, _ = setup_case("cnn1d-bn")
    pair = _plan(base, spec, x[:2]).pair_bytes
    assert pair == 2 * 32 * 34 * 4  # the widest activation, Conv1d(16, 32, 3) on 38 steps, in + out
    assert tile_pairs_for(pair, "cpu") == CACHE_TILE_BYTES // pair == 963  # the CPU's cache tile, as before
    assert tile_pairs_for(pair, "cpu", 100 * pair) == 25  # a smaller budget still binds
    h100 = 78 << 30
    cuda = tile_pairs_for(pair, "cuda", free_bytes=h100)
    assert cuda == int(population.DEVICE_MEMORY_FRACTION * h100) // (population.MEMORY_SAFETY * pair)
    assert cuda >= 1000 * 1000  # the benchmark's 1000 models x 1000 samples: one tile on an H100
    assert tile_pairs_for(pair, "cuda", 1 << 30, free_bytes=h100) == (1 << 30) // (4 * pair)  # explicit budget
    assert tile_pairs_for(pair, "cuda", free_bytes=0) == 1
    assert default_memory_budget("cpu") == 1 << 30
    assert default_memory_budget(torch.device("cuda", 0), free_bytes=1000) == 500


def _device_inputs(base, flat, x, y):
    return [*base.parameters(), *base.buffers(), flat, x, y]


def _count(base, spec, flat, x, y, **kwargs):
    with count_device_work(_device_inputs(base, flat, x, y)) as counts:
        res = evaluate_population(base, spec, flat, x, y, **kwargs)
    return counts, res


@pytest.mark.parametrize("name", ["cnn1d-bn", "mlp-layernorm", "not-a-chain"])
def test_host_syncs_do_not_grow_with_tiles(name):
    """Counted on CPU tensors as if on CUDA (benchmarks/population_counts.py): one tile per batch
    or 1 model x 13 samples per tile, the syncs are the same few, before and after the tiles."""
    base, spec, flat, x, y = setup_case(name, n_models=9, n_test=77)
    flat[2, 1] = math.nan
    big, res_big = _count(base, spec, flat, x, y, batch_size=13, tile_pairs=9 * 13)
    small, res_small = _count(base, spec, flat, x, y, batch_size=13, tile_pairs=13)
    assert_same_result(res_big, res_small)
    assert big.syncs == small.syncs <= 12, (big.sync_kinds, small.sync_kinds)
    assert small.launches > 4 * big.launches  # 48 tiles against 6: they did run
    if name == "cnn1d-bn":  # two fused BatchNorm calls per tile
        assert small.ext_ops["pdiff_fast::norm_affine_act"] == 2 * 8 * 6
        assert big.ext_ops["pdiff_fast::norm_affine_act"] == 2 * 6


def test_a_sync_per_tile_would_be_counted(monkeypatch):
    """The count can fail: a `.cpu()` per tile (as the evaluator had) adds one sync per tile."""
    base, spec, flat, x, y = setup_case("cnn1d-bn", n_models=5, n_test=40)
    clean, _ = _count(base, spec, flat, x, y, batch_size=8, tile_pairs=8)
    top2 = population._top2_gap
    monkeypatch.setattr(population, "_top2_gap", lambda logits: tuple(t.cpu() for t in top2(logits)))
    planted, _ = _count(base, spec, flat, x, y, batch_size=8, tile_pairs=8)
    assert planted.syncs >= clean.syncs + 2 * 5 * 5  # two copies in each of the 25 tiles (and their uses)
    assert planted.sync_kinds["copy to the host (.cpu)"] >= 50


def test_the_counter_sees_each_kind_of_sync():
    x = torch.randn(6, 4)
    with count_device_work([x]) as c:
        host = torch.ones(4)  # made here, never touched by a device op: a host tensor, no count
        host = host + 1
        assert c.syncs == 0 and c.launches == 0
        y = x * 2  # a launch, on the device
        y.sum().item()
        bool(y.any())
        y[y > 0] = 0.0  # boolean index
        y.nonzero()
        back = y.cpu()
        y.tolist()
        back = back + 1  # host
        y + back  # a host tensor in a device op: uploaded
        back.to(x.device)  # a blocking copy to the device
        x.to(x.device)  # already there: nothing
    assert c.sync_kinds == {"scalar read (.item / bool / int)": 2, "boolean index (aten::index_put_)": 1,
                            "data-dependent size (aten::nonzero)": 1, "copy to the host (.cpu)": 1,
                            "copy to the host (.tolist)": 1, "host tensor into a device op (upload)": 1,
                            "copy to the device (.to)": 1}
    assert c.syncs == 8 and c.launches >= 6


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
def test_cuda_population_matches_reference(monkeypatch):
    """Runs whatever the extension's build: its ops fall back to PyTorch on a CPU-only build.
    The CUDA tiles: all 13 models on a whole batch in one tile (not the CPU's cache tile)."""
    base, spec, flat, x, y = setup_case("cnn1d-bn")
    base = base.cuda()
    models_per_tile = []
    run_suffix = population._run_suffix
    monkeypatch.setattr(population, "_run_suffix",
                        lambda plan, h, params, m: models_per_tile.append((m, h.shape[0])) or
                        run_suffix(plan, h, params, m))
    for batch_size in (64, 150):
        models_per_tile.clear()
        assert_same_result(evaluate_population(base, spec, flat.cuda(), x.cuda(), y.cuda(), batch_size=batch_size),
                           evaluate_one_by_one(base, spec, flat.cuda(), x.cuda(), y.cuda(), batch_size=batch_size))
    assert models_per_tile == [(13, 150)]  # the CPU's cache tile holds 963 pairs: 6 + 6 + 1 models


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

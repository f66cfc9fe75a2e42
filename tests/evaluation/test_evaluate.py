"""evaluate(): the memorisation analysis computed block by block (iou_stats) gives the numbers of
the whole IoU matrices, within the memory budget for any number of models; bad test sets are
refused before any work.

The reference here is the analysis as it was computed before blocking: whole (Na, Nb) matrices
from iou_matrix, the mean of the off-diagonal entries in float64, row maxima, overall mean and
maximum.
"""
import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from pdiff_fast import backend
from pdiff_fast.evaluation.judge import evaluate
from pdiff_fast.ops.iou_matrix import _iou_blocks
from pdiff_fast.params import ParamSpec
from pdiff_fast.evaluation.population import (
    evaluate_population,
    iou_matrix,
    iou_stats,
    pack_bits,
)

HAS_EXT = not isinstance(backend.load_extension(), Exception)
BACKENDS = ["torch"] + (["ext"] if HAS_EXT else [])


# --- the reference: whole matrices ----------------------------------------------------------

def off_diagonal_mean(m):
    n = m.shape[0]
    if n < 2:
        return math.nan
    return m[~torch.eye(n, dtype=torch.bool)].double().mean().item()


def full_self(bits):
    m = iou_matrix(bits, bits)
    masked = m.clone()
    masked.fill_diagonal_(-math.inf)
    row_max = masked.max(1).values
    row_max[torch.isinf(row_max)] = math.nan
    return off_diagonal_mean(m), row_max


def full_cross(a, b):
    m = iou_matrix(a, b)
    row_max = m.max(1).values
    return m.double().mean().item(), row_max, row_max.max().item()


def random_bitsets(n_rows, n_bits, words=torch.uint8):
    mask = torch.rand(n_rows, n_bits) < torch.rand(n_rows, 1)  # densities 0 .. 1 per row
    mask[0] = False  # an empty set (IoU 1.0 with another empty set)
    if n_rows > 3:
        mask[3] = mask[1]  # a duplicate: IoU 1.0 off the diagonal
    bits = pack_bits(mask)
    if words == torch.int64:
        bits = torch.nn.functional.pad(bits, (0, (-bits.shape[1]) % 8)).view(torch.int64)
    return bits


def same(x, y):
    return (math.isnan(x) and math.isnan(y)) or x == y


# --- iou_stats == whole matrix --------------------------------------------------------------

SIZES = [(1, 1, 7), (2, 1, 64), (2, 3, 9), (7, 5, 100), (33, 9, 1000)]  # (Na, Nb, n_bits)
BLOCKS = [(1, 1), (2, 3), (5, None), (None, 4), (None, None)]


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("words", [torch.uint8, torch.int64])
@pytest.mark.parametrize("na,nb,n_bits", SIZES)
def test_blocked_stats_equal_whole_matrix(impl, words, na, nb, n_bits):
    a, b = random_bitsets(na, n_bits, words), random_bitsets(nb, n_bits, words)
    with backend.use_backend(impl):
        want_self_mean, want_self_rmax = full_self(a)
        want_mean, want_rmax, want_max = full_cross(a, b)
        for rows, cols in BLOCKS:
            kw = {"block_rows": rows, "block_cols": cols}
            s = iou_stats(a, **kw)
            assert same(s.mean, want_self_mean), (rows, cols)
            assert s.pairs == na * (na - 1)
            assert torch.equal(s.row_max.isnan(), want_self_rmax.isnan())
            assert torch.equal(s.row_max.nan_to_num(-1), want_self_rmax.nan_to_num(-1))
            tri = iou_stats(a, row_max=False, **kw)  # upper triangle only: the same mean
            assert same(tri.mean, want_self_mean) and tri.row_max is None
            assert same(tri.max, s.max)
            c = iou_stats(a, b, **kw)
            assert c.mean == want_mean and c.max == want_max and c.pairs == na * nb
            assert torch.equal(c.row_max, want_rmax)


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("budget", [1, 100, 5_000, 1 << 30])
def test_any_memory_budget_gives_the_same_numbers(impl, budget):
    a, b = random_bitsets(41, 333), random_bitsets(6, 333)
    with backend.use_backend(impl):
        ref_self, ref_cross = iou_stats(a, block_rows=41), iou_stats(a, b, block_rows=41)
        for got, ref in ((iou_stats(a, memory_budget_bytes=budget), ref_self),
                         (iou_stats(a, b, memory_budget_bytes=budget), ref_cross)):
            assert got.mean == ref.mean and got.max == ref.max
            assert torch.equal(got.row_max.nan_to_num(-1), ref.row_max.nan_to_num(-1))
        assert iou_stats(a, row_max=False, memory_budget_bytes=budget).mean == ref_self.mean


def test_block_sizes_follow_the_budget():
    assert _iou_blocks(15_000, 15_000, 200, True, 64 << 20) == ((64 << 20) // (24 * 15_000), 15_000)
    assert _iou_blocks(15_000, 15_000, 200, True, 1) == (1, 1)
    rows, cols = _iou_blocks(15_000, 15_000, 10_000, False, 64 << 20)
    assert rows == cols and 34 * 10_000 * 2 * rows + 48 * rows * rows <= 2 * (64 << 20)
    assert _iou_blocks(3, 2, 8, False, 1 << 30) == (3, 2)


def test_exactly_the_diagonal_is_left_out():
    mask = torch.zeros(3, 30, dtype=torch.bool)
    for i in range(3):
        mask[i, 10 * i:10 * i + 10] = True  # disjoint non-empty sets: IoU 1 on the diagonal, 0 off it
    s = iou_stats(pack_bits(mask))
    assert s.mean == 0.0 and s.max == 0.0 and s.row_max.tolist() == [0.0, 0.0, 0.0] and s.pairs == 6
    assert iou_stats(pack_bits(mask), row_max=False).mean == 0.0
    two = pack_bits(torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]], dtype=torch.bool))
    assert iou_stats(two).mean == iou_matrix(two, two)[0, 1].item() == torch.tensor(1 / 3).item()
    one = iou_stats(two[:1])  # no pair at all
    assert math.isnan(one.mean) and math.isnan(one.max) and one.row_max.isnan().all() and one.pairs == 0
    assert math.isnan(iou_stats(two[:1], row_max=False).mean)
    assert iou_stats(two[:1], two[1:]).mean == iou_matrix(two, two)[0, 1].item()  # cross: no diagonal


# --- evaluate() -----------------------------------------------------------------------------

def small_case(n_gen=23, k=6, n_test=90):
    torch.manual_seed(3)
    base = nn.Sequential(nn.Conv1d(1, 8, 5), nn.BatchNorm1d(8), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
                         nn.Flatten(), nn.Linear(8, 10))
    bn = base[1]
    bn.running_mean.normal_(0, 0.5)
    bn.running_var.uniform_(0.5, 2.0)
    base.eval()
    spec = ParamSpec.from_model(base, "last-1-norm-layers")
    row = spec.flatten([base])
    original = row + 0.3 * torch.randn(k, spec.dim)
    generated = row + 0.5 * torch.randn(n_gen, spec.dim)
    generated[min(5, n_gen - 1), 0] = math.nan  # a non-finite model: every sample wrong
    x, y = torch.randn(n_test, 1, 40), torch.randint(0, 10, (n_test,))
    return base, spec, original, generated, x, y


def test_report_equals_the_whole_matrix_analysis():
    base, spec, original, generated, x, y = small_case()
    report = evaluate(base, spec, original, generated, x, y, memory_budget_bytes=1)  # smallest blocks
    orig = evaluate_population(base, spec, original, x, y)
    gen = evaluate_population(base, spec, generated, x, y)
    go_mean, go_rmax, go_max = full_cross(gen.wrong, orig.wrong)
    iou = report["iou"]
    assert iou["original_original_mean"] == full_self(orig.wrong)[0]
    assert iou["generated_generated_mean"] == full_self(gen.wrong)[0]
    assert iou["generated_original_mean"] == go_mean
    assert iou["generated_original_max"] == go_max
    assert iou["generated_original_max_mean"] == go_rmax.double().mean().item()
    assert report["per_model"]["generated_max_iou"] == go_rmax.tolist()
    assert report["per_model"]["generated_accuracy"][:5] == gen.accuracy[:5].tolist()
    assert report["generated_nonfinite"] == 1 and report["generated"]["n"] == 22
    assert set(report) == {"original", "generated", "generated_nonfinite", "iou", "per_model", "noise_baselines",
                           "baselines", "novelty", "verdict"}
    assert list(report["noise_baselines"]) == ["0.01", "0.05", "0.1"]
    from pdiff_fast.evaluation.judge import format_table

    assert ("\n1 of 23 generated models have NaN or Inf parameters: they are left out of every figure here "
            "(n counts the others).\n") in format_table(report)
    assert "NaN or Inf" not in format_table({**report, "generated_nonfinite": 0})
    again = evaluate(base, spec, original, generated, x, y)  # default budget: one block
    assert json.dumps(again, sort_keys=True) == json.dumps(report, sort_keys=True)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_test_inputs_are_refused_before_any_work(monkeypatch, bad):
    import pdiff_fast.evaluation.population as population

    base, spec, original, generated, x, y = small_case(n_gen=6, k=2, n_test=12)
    x[11, 0, 0] = bad
    monkeypatch.setattr(population, "evaluate_population", lambda *a, **k: pytest.fail("evaluated"))
    with pytest.raises(ValueError, match="test inputs contain NaN or Inf"):
        evaluate(base, spec, original, generated, x, y)
    x[11, 0, 0] = 0.0
    y[2] = 10  # the model has 10 classes
    with pytest.raises(ValueError, match=r"test labels must lie in \[0, 10\)"):
        evaluate(base, spec, original, generated, x, y)


# --- bounded memory for 15,000 models -------------------------------------------------------

MEMORY_SCRIPT = textwrap.dedent("""
    import json, sys, time
    import torch
    from pdiff_fast.evaluation.judge import evaluate
    from pdiff_fast.nn.models import MLP
    from pdiff_fast.params import ParamSpec

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024

    n_gen, n_test, budget = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    base = MLP(40, 10, hidden=(16, 16)).eval()
    spec = ParamSpec.from_model(base, "last-1-norm-layers")  # 32 generated values per model
    row = spec.flatten([base])
    original = row + 0.05 * torch.randn(20, spec.dim)
    generated = row + 0.1 * torch.randn(n_gen, spec.dim)
    x, y = torch.randn(n_test, 1, 40), torch.randint(0, 10, (n_test,))
    evaluate(base, spec, original[:3], generated[:3], x, y, memory_budget_bytes=budget)  # warm up
    try:  # reset VmHWM to the current RSS (Linux >= 4.0); if not, the growth below over-estimates
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pass
    before = status("VmRSS:")
    t0 = time.perf_counter()
    report = evaluate(base, spec, original, generated, x, y, memory_budget_bytes=budget)
    seconds = time.perf_counter() - t0
    print(json.dumps({"growth": status("VmHWM:") - before, "seconds": seconds, "n": report["generated"]["n"],
                      "gg": report["iou"]["generated_generated_mean"],
                      "max_iou": len(report["per_model"]["generated_max_iou"])}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_15000_models_are_evaluated_within_the_memory_budget():
    """Peak RSS growth of a fresh process during evaluate() of 15,000 generated models (and 20
    originals, 3 noise baselines) on 200 test samples, with a 64 MB budget. Before blocking, the
    (N, N) IoU matrix alone was 15,000^2 x 4 B = 900 MB and the whole call grew the peak by
    ~5.5 GB on this machine; now the growth must stay under the budget plus 16 MB of slack
    (allocator fragmentation, the report's per-model Python lists, bitsets of 15,000 x 25 B)."""
    n_gen, budget, slack = 15_000, 64 << 20, 16 << 20
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n_gen), "200", str(budget)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["n"] == n_gen and got["max_iou"] == n_gen and 0.0 <= got["gg"] <= 1.0
    print(f"peak RSS growth {got['growth'] / 2**20:.1f} MB for {n_gen} models in {got['seconds']:.1f} s")
    assert got["growth"] < budget + slack
    assert got["growth"] < (n_gen ** 2 * 4) // 10  # a tenth of the old (N, N) float32 matrix alone

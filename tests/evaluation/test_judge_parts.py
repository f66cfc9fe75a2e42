"""pdiff_fast.evaluation.judge's parts, value by value: the report's table in full (rows, order,
labels, number formats, the placeholders for missing numbers), the order of the sets, the shape
checks before any work, the report's per-model lists and baselines against their direct
computations, and the sharded path with the process group faked. Written against the mutants
mutmut left alive (tests/mutation, docs/mutation-scores.md)."""
import math
import re

import pytest
import torch

from pdiff_fast import distributed
from pdiff_fast.evaluation import judge
from pdiff_fast.evaluation.population import PopulationResult, evaluate_population, iou_stats
from pdiff_fast.nn.models import MLP
from pdiff_fast.params import ParamSpec

NAN = math.nan


def stats(n, best, mean, median, **more):
    return {"n": n, "best": best, "mean": mean, "median": median, **more}


def measures(acc_median, dist_median, ratio, max_iou, share):
    return {"accuracy": {"median": acc_median},
            "nn_distance": None if dist_median is None else {"median": dist_median},
            "distance_ratio": ratio, "max_iou_mean": max_iou, "new_and_better": share}


def a_report():
    """A report as evaluate() makes it, with numbers chosen to show every format; the baselines
    and the sets are given out of their table order."""
    return {
        "original": stats(3, 91.0, 90.5, 90.25),
        "generated": stats(4, 92.125, 89.0, 88.5),
        "generated_nonfinite": 2,
        "iou": {"original_original_mean": 0.5, "generated_generated_mean": 0.25, "generated_original_mean": 0.125,
                "generated_original_max_mean": 0.75, "generated_original_max": 1.0},
        "noise_baselines": {"0.05": stats(3, 80.0, 70.0, 60.0, max_iou_mean=0.4375),
                            "0.01": stats(3, 90.0, 85.0, 87.5, max_iou_mean=0.625)},
        "baselines": {"ensemble": stats(1, 93.0, 93.0, 93.0, max_iou_mean=0.5),
                      "weight mean": stats(1, 10.0, 10.0, 10.0, max_iou_mean=0.0),
                      "noise matched": stats(3, 50.0, 40.0, 45.0, max_iou_mean=0.1, rms=0.012345),
                      "interpolation": stats(3, 89.0, 88.0, 87.0, max_iou_mean=0.3)},
        "novelty": {"distance": "RMS to the nearest original", "tau": 0.123456, "extent": NAN,
                    "accuracy_bar": 90.25,
                    "sets": {"ensemble": measures(93.0, None, None, 0.5, None),
                             "noise σ=0.05": measures(60.0, 2.5, 20.25, 0.4375, 0.0),
                             "original": measures(90.25, 0.123456, 1.0, 0.6, 0.3333),
                             "something else": measures(1.0, NAN, NAN, 0.0, NAN),
                             "noise σ=0.01": measures(87.5, 0.5, 4.05, 0.625, 0.25),
                             "weight mean": measures(10.0, 0.0, 0.0, 0.0, 0.0),
                             "generated": measures(88.5, 0.05, 0.405, 0.75, 0.125),
                             "interpolation": measures(87.0, 0.06, 0.486, 0.3, 0.0),
                             "noise matched": measures(45.0, 0.05, 0.405, 0.1, 0.0)}},
        "verdict": {"label": "close", "accuracy": "below", "beats": ["weight mean", "noise matched"],
                    "text": "The verdict's text."},
    }


EXPECTED = """\
| models | n | best | mean | median |
|---|---:|---:|---:|---:|
| original | 3 | 91.00 | 90.50 | 90.25 |
| generated (p-diff) | 4 | 92.12 | 89.00 | 88.50 |
| original + noise σ=0.05 | 3 | 80.00 | 70.00 | 60.00 |
| original + noise σ=0.01 | 3 | 90.00 | 85.00 | 87.50 |
| original + noise, distance matched (RMS 0.0123) | 3 | 50.00 | 40.00 | 45.00 |
| interpolation of two originals | 3 | 89.00 | 88.00 | 87.00 |
| mean of the originals' weights | 1 | 10.00 | 10.00 | 10.00 |
| output ensemble of the originals | 1 | 93.00 | 93.00 | 93.00 |

2 of 6 generated models have NaN or Inf parameters: they are left out of every figure here (n counts the others).

| IoU of wrong predictions | value |
|---|---:|
| original - original (mean) | 0.500 |
| generated - generated (mean) | 0.250 |
| generated - original (mean) | 0.125 |
| generated - original (max, mean over generated) | 0.750 |
| generated - original (max) | 1.000 |
| original + noise σ=0.05 - original (max, mean) | 0.438 |
| original + noise σ=0.01 - original (max, mean) | 0.625 |

Distance: RMS to the nearest original. Originals' spacing tau (median distance of an original to its nearest \
other original) = 0.1235; their extent (median distance between two originals) = –. New and better: accuracy \
above the originals' median (90.25) and farther than tau from every original.

| set | median accuracy | median distance to nearest original | / tau | max IoU to originals (mean) \
| new and better |
|---|---:|---:|---:|---:|---:|
| generated | 88.50 | 0.05 | 0.405 | 0.750 | 12.5% |
| original | 90.25 | 0.1235 | 1.000 | 0.600 | 33.3% |
| noise σ=0.01 | 87.50 | 0.5 | 4.050 | 0.625 | 25.0% |
| noise σ=0.05 | 60.00 | 2.5 | 20.250 | 0.438 | 0.0% |
| noise matched | 45.00 | 0.05 | 0.405 | 0.100 | 0.0% |
| interpolation | 87.00 | 0.06 | 0.486 | 0.300 | 0.0% |
| weight mean | 10.00 | 0 | 0.000 | 0.000 | 0.0% |
| ensemble | 93.00 | – | – | 0.500 | – |
| something else | 1.00 | – | – | 0.000 | – |

**Verdict: close; median accuracy below the originals'; above these baselines: weight mean, noise matched.** \
The verdict's text."""


def test_the_table_in_full():
    assert judge.format_table(a_report()) == EXPECTED


def test_the_table_without_the_optional_parts():
    """No noise baselines, baselines, novelty or verdict (an older report): the two tables only;
    a verdict that beats nothing says "none"; the RMS of matched noise missing is nan."""
    r = a_report()
    minimal = {k: r[k] for k in ("original", "generated", "iou")}
    assert judge.format_table(minimal) == (
        "| models | n | best | mean | median |\n|---|---:|---:|---:|---:|\n"
        "| original | 3 | 91.00 | 90.50 | 90.25 |\n| generated (p-diff) | 4 | 92.12 | 89.00 | 88.50 |\n\n"
        "| IoU of wrong predictions | value |\n|---|---:|\n"
        "| original - original (mean) | 0.500 |\n| generated - generated (mean) | 0.250 |\n"
        "| generated - original (mean) | 0.125 |\n"
        "| generated - original (max, mean over generated) | 0.750 |\n"
        "| generated - original (max) | 1.000 |")
    text = judge.format_table({**minimal, "verdict": {**r["verdict"], "beats": []},
                               "baselines": {"noise matched": stats(1, 1.0, 1.0, 1.0)}})
    assert "| original + noise, distance matched (RMS nan) | 1 | 1.00 | 1.00 | 1.00 |" in text
    assert text.endswith("above these baselines: none.** The verdict's text.")
    assert "NaN or Inf" not in judge.format_table({**minimal, "generated_nonfinite": 0})


def test_sets_are_ordered_generated_original_noise_by_sigma_then_the_baselines():
    names = ["zzz", "ensemble", "noise σ=0.1", "original", "weight mean", "noise σ=0.05", "noise matched",
             "generated", "interpolation", "aaa", "noise σ=1"]
    assert judge._in_order(dict.fromkeys(names)) == [
        "generated", "original", "noise σ=0.05", "noise σ=0.1", "noise σ=1", "noise matched", "interpolation",
        "weight mean", "ensemble", "zzz", "aaa"]
    assert judge._in_order({}) == []
    # a zero sigma sorts after the originals, whichever comes first in the report
    assert judge._in_order(dict.fromkeys(["noise σ=0.0", "original", "generated"])) == [
        "generated", "original", "noise σ=0.0"]


def test_missing_numbers_print_as_a_dash():
    assert judge._pct(None) == judge._pct(NAN) == judge._num(None, ".3f") == judge._num(NAN, ".3f") == "–"
    assert judge._pct(0.0) == "0.0%" and judge._pct(0.12345) == "12.3%" and judge._pct(1) == "100.0%"
    assert judge._num(0.0, ".3f") == "0.000" and judge._num(math.inf, ".2f") == "inf"


# --- evaluate ---------------------------------------------------------------------------------

def small_case(n_gen=5, k=3, n_test=20):
    torch.manual_seed(0)
    base = MLP(12, 4, hidden=(8,)).eval()
    spec = ParamSpec.from_model(base, "last-1-norm-layers")
    row = spec.flatten([base])
    original = row + 0.3 * torch.randn(k, spec.dim)
    generated = row + 0.5 * torch.randn(n_gen, spec.dim)
    x, y = torch.randn(n_test, 12), torch.randint(0, 4, (n_test,))
    return base, spec, original, generated, x, y


@pytest.mark.parametrize("which, shape", [("original", (3,)), ("original", (3, 1)), ("generated", (2, 5, 1)),
                                          ("generated", (5, 1))])
def test_parameters_of_the_wrong_shape_are_refused(which, shape, monkeypatch):
    import pdiff_fast.evaluation.population as population

    monkeypatch.setattr(population, "evaluate_population", lambda *a, **k: pytest.fail("evaluated"))
    base, spec, original, generated, x, y = small_case()
    bad = torch.zeros(*shape[:-1], spec.dim + 1) if len(shape) == 2 else torch.zeros(shape)
    args = {"original": original, "generated": generated, which: bad}
    with pytest.raises(ValueError, match=rf"^{which} parameters must be \(N, {spec.dim}\), got "
                                         rf"{re.escape(str(tuple(bad.shape)))}$"):
        judge.evaluate(base, spec, args["original"], args["generated"], x, y)


@pytest.mark.parametrize("x_rows, y_shape", [(20, (19,)), (20, (20, 1)), (0, (0,))])
def test_test_sets_of_the_wrong_shape_are_refused(x_rows, y_shape, monkeypatch):
    """Refused before any work (the population evaluator would refuse some of them too, later)."""
    import pdiff_fast.evaluation.population as population

    monkeypatch.setattr(population, "evaluate_population", lambda *a, **k: pytest.fail("evaluated"))
    base, spec, original, generated, _, _ = small_case()
    x, y = torch.randn(x_rows, 12), torch.zeros(y_shape, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"^x_test \({x_rows}, 12\) and y_test {re.escape(str(y_shape))} must "
                                         r"hold the same \(non-zero\) number of samples, y_test 1-D$"):
        judge.evaluate(base, spec, original, generated, x, y)


def test_the_report_against_direct_computations():
    base, spec, original, generated, x, y = small_case()
    report = judge.evaluate(base, spec, original, generated, x, y, noise_sigmas=(0.5, 0.0), seed=3)
    orig = evaluate_population(base, spec, original, x, y)
    gen = evaluate_population(base, spec, generated, x, y)
    per = report["per_model"]
    assert per["original_accuracy"] == orig.accuracy.tolist()
    assert per["generated_accuracy"] == gen.accuracy.tolist()
    assert per["original_max_iou"] == iou_stats(orig.wrong).row_max.tolist()
    assert report["iou"]["original_original_mean"] == iou_stats(orig.wrong).mean
    assert per["generated_max_iou"] == iou_stats(gen.wrong, orig.wrong).row_max.tolist()
    assert report["generated_nonfinite"] == 0
    # distances in the originals' standardised units; each original's nearest is another original
    from pdiff_fast.evaluation import novelty
    std = novelty.standardizer(spec, original)
    zo, zg = std.transform(original).double(), std.transform(generated).double()
    d_oo = torch.cdist(zo, zo) / spec.dim ** 0.5
    d_oo.fill_diagonal_(math.inf)
    assert per["original_nn_distance"] == pytest.approx(d_oo.min(1).values.tolist(), rel=1e-5)
    assert per["generated_nn_distance"] == pytest.approx(
        (torch.cdist(zg, zo) / spec.dim ** 0.5).min(1).values.tolist(), rel=1e-5)
    assert report["novelty"]["tau"] == pytest.approx(d_oo.min(1).values.median().item(), rel=1e-5)
    assert report["novelty"]["accuracy_bar"] == orig.accuracy.median().item()
    assert report["novelty"]["extent"] == novelty.spread(original, std.transform)
    # the noise baselines: the originals plus sigma times the seed's normal draws, keyed by sigma
    assert list(report["noise_baselines"]) == ["0.5", "0.0"]
    g = torch.Generator().manual_seed(3)
    for sigma in (0.5, 0.0):
        noisy = original + sigma * torch.randn(original.shape, generator=g)
        b = report["noise_baselines"][str(sigma)]
        res = evaluate_population(base, spec, noisy, x, y)
        max_iou = iou_stats(res.wrong, orig.wrong).row_max
        assert b["accuracy"] == res.accuracy.tolist() and b["max_iou"] == max_iou.tolist()
        assert b["max_iou_mean"] == max_iou.double().mean().item()
        assert b["n"] == 3 and b["median"] == res.accuracy.median().item()
        assert b["nn_distance"] == pytest.approx(
            (torch.cdist(std.transform(noisy).double(), zo) / spec.dim ** 0.5).min(1).values.tolist(), rel=1e-5)
    assert report["noise_baselines"]["0.0"]["nn_distance"] == [0.0, 0.0, 0.0]
    # the sets of the novelty table: one per baseline, measured against the originals' bar and spacing
    sets = report["novelty"]["sets"]
    assert set(sets) == {"generated", "original", "noise σ=0.5", "noise σ=0.0", "noise matched", "interpolation",
                         "weight mean", "ensemble"}
    assert sets["noise σ=0.0"]["accuracy"]["median"] == report["original"]["median"]
    assert sets["generated"]["accuracy"] == novelty.summary(gen.accuracy)
    assert sets["original"]["accuracy"] == report["original"] == novelty.summary(orig.accuracy)
    assert sets["generated"]["max_iou_mean"] == report["iou"]["generated_original_max_mean"]
    assert sets["original"]["max_iou_mean"] == iou_stats(orig.wrong).row_max.double().nanmean().item()
    better = gen.accuracy.double() > report["novelty"]["accuracy_bar"]
    farther = torch.tensor(per["generated_nn_distance"]) > report["novelty"]["tau"]
    assert sets["generated"]["new_and_better"] == (better & farther).double().mean().item()
    assert all("_measures" not in b for group in ("noise_baselines", "baselines") for b in report[group].values())
    ens = report["baselines"]["ensemble"]
    assert ens["nn_distance"] is None and sets["ensemble"]["nn_distance"] is None
    assert ens["max_iou_mean"] == ens["max_iou"][0]
    assert report["verdict"] == novelty.verdict(sets, report["novelty"]["tau"], report["novelty"]["extent"])
    assert report["novelty"]["distance"] == ("RMS over the subset, each tensor standardised by the originals' mean / "
                                             "std; to the nearest original")
    # the parameter-set baselines come from seed + 1 (their own draws, not the noise baselines')
    rms = sets["generated"]["nn_distance"]["median"]
    assert report["baselines"]["noise matched"]["rms"] == rms
    for name, flat in novelty.baseline_sets(original, std, rms, 4).items():
        assert report["baselines"][name]["accuracy"] == evaluate_population(base, spec, flat, x, y).accuracy.tolist()
        assert report["baselines"][name]["nn_distance"] == pytest.approx(
            (torch.cdist(std.transform(flat).double(), zo) / spec.dim ** 0.5).min(1).values.tolist(), rel=1e-5)


# --- the sharded path, the process group faked ----------------------------------------------------

@pytest.fixture
def two_ranks(monkeypatch):
    """This process as one of two ranks: `ranks["rows"]` says which rows shard() gives it; gathering
    hands back what this rank holds, with what it was asked to gather recorded."""
    ranks = {"rows": None, "gathered": [], "summed": []}
    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "shard", lambda n, block=1, **kw: ranks["rows"](n))
    monkeypatch.setattr(distributed, "gather_rows", lambda t, n=None, block=1: ranks["gathered"].append((t, n)) or t)
    monkeypatch.setattr(distributed, "sum_int", lambda v: ranks["summed"].append(v) or v + 100)
    return ranks


def test_a_rank_evaluates_its_rows_and_gathers_them(two_ranks):
    base, spec, original, generated, x, y = small_case(n_gen=7)
    two_ranks["rows"] = lambda n: (2, 5)
    got = judge.evaluate_rows(base, spec, generated, x, y, 1 << 20, shard=True)
    want = evaluate_population(base, spec, generated[2:5], x, y, keep_predictions=False)
    assert torch.equal(got.accuracy, want.accuracy) and torch.equal(got.wrong, want.wrong)
    assert torch.equal(got.finite, want.finite) and got.predictions is None
    assert [n for _, n in two_ranks["gathered"]] == [7, 7, 7]
    assert got.rechecked == want.rechecked + 100 and two_ranks["summed"] == [want.rechecked]
    # shard=False, or no process group: every row here, nothing gathered
    two_ranks["gathered"].clear()
    whole = judge.evaluate_rows(base, spec, generated, x, y, 1 << 20, shard=False)
    assert torch.equal(whole.accuracy, evaluate_population(base, spec, generated, x, y).accuracy)
    assert two_ranks["gathered"] == []


def test_a_rank_with_no_rows_gathers_empty_ones(two_ranks, monkeypatch):
    import pdiff_fast.evaluation.population as population

    base, spec, original, generated, x, y = small_case(n_gen=1, n_test=72)
    two_ranks["rows"] = lambda n: (n, n)
    monkeypatch.setattr(population, "evaluate_population", lambda *a, **k: pytest.fail("evaluated no rows"))
    got = judge.evaluate_rows(base, spec, generated, x, y, 1 << 20, shard=True)
    assert got.accuracy.shape == (0,) and got.accuracy.dtype == torch.float32
    assert got.wrong.shape == (0, 9) and got.wrong.dtype == torch.uint8  # 72 samples: 9 bytes per model
    for n_test, width in ((71, 9), (65, 9), (64, 8), (8, 1), (1, 1)):
        assert judge.evaluate_rows(base, spec, generated, x[:n_test], y[:n_test], 1, shard=True).wrong.shape == (0, width)
    assert got.finite.shape == (0,) and got.finite.dtype == torch.bool and got.predictions is None
    assert got.rechecked == 100 and two_ranks["summed"][0] == 0
    assert [n for _, n in two_ranks["gathered"]][:3] == [1, 1, 1]


def test_evaluate_shards_only_when_asked(two_ranks):
    base, spec, original, generated, x, y = small_case(n_gen=4, k=2)
    two_ranks["rows"] = lambda n: (0, n)
    judge.evaluate(base, spec, original, generated, x, y, noise_sigmas=(), shard=False)
    judge.evaluate(base, spec, original, generated, x, y, noise_sigmas=())  # not sharded by default
    judge.evaluate_rows(base, spec, generated, x, y, 1 << 20)
    assert two_ranks["gathered"] == []
    sharded = judge.evaluate(base, spec, original, generated, x, y, noise_sigmas=(), shard=True)
    assert two_ranks["gathered"]
    assert sharded["per_model"] == judge.evaluate(base, spec, original, generated, x, y, noise_sigmas=())["per_model"]


def test_small_spacings_print_in_exponent_form_and_unknown_baselines_by_their_name():
    r = a_report()
    r["novelty"] = {**r["novelty"], "tau": 2.5e-05, "extent": 1.5e-05}
    r["baselines"]["my baseline"] = stats(2, 1.0, 1.0, 1.0, max_iou_mean=0.0)
    text = judge.format_table(r)
    assert ("other original) = 2.5e-05; their extent (median distance between two originals) = 1.5e-05. New and "
            "better") in text
    assert "\n| my baseline | 2 | 1.00 | 1.00 | 1.00 |\n" in text


def test_infinite_ratios_small_distances_and_a_verdict_without_baselines():
    r = a_report()
    r["novelty"]["sets"] = {"generated": measures(88.5, 1.5e-05, math.inf, 0.75, 0.125)}
    r["verdict"] = {"label": "no finite models", "accuracy": "cannot be compared with",
                    "text": "No generated model has finite parameters."}  # novelty.verdict gives no "beats" then
    text = judge.format_table(r)
    assert "\n| generated | 88.50 | 1.5e-05 | inf | 0.750 | 12.5% |\n" in text
    assert text.endswith("\n\n**Verdict: no finite models; median accuracy cannot be compared with the originals'; "
                         "above these baselines: none.** No generated model has finite parameters.")


@pytest.mark.parametrize("shard", [False, True])
def test_the_budget_reaches_the_population_evaluator_and_no_predictions_are_kept(two_ranks, monkeypatch, shard):
    """A dropped budget would hold every tile at the default size, kept predictions an (N, n_test)
    int64 matrix: neither changes a number, so the arguments are checked."""
    import pdiff_fast.evaluation.population as population

    calls = []
    real = population.evaluate_population

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(population, "evaluate_population", spy)
    base, spec, original, generated, x, y = small_case(n_gen=4)
    two_ranks["rows"] = lambda n: (1, 3)
    judge.evaluate_rows(base, spec, generated, x, y, 12345, shard=shard)
    assert len(calls) == 1 and calls[0]["memory_budget_bytes"] == 12345
    assert not calls[0].get("keep_predictions", True)  # the evaluator's default keeps them


def test_the_default_seed_is_zero():
    base, spec, original, generated, x, y = small_case(n_gen=3, k=3)
    run = lambda **kw: judge.evaluate(base, spec, original, generated, x, y, noise_sigmas=(0.5,), **kw)  # noqa: E731
    default, zero, one = run(), run(seed=0), run(seed=1)
    assert default["noise_baselines"] == zero["noise_baselines"] != one["noise_baselines"]
    assert default["baselines"]["interpolation"] == zero["baselines"]["interpolation"]


def test_every_blocked_step_gets_the_callers_budget(monkeypatch):
    """evaluate's working memory is bounded by memory_budget_bytes only if every blocked step
    (the population evaluator, the IoU statistics, the nearest-original distances) receives it;
    the numbers do not depend on it, so the arguments are checked."""
    import pdiff_fast.evaluation.population as population
    from pdiff_fast.evaluation import novelty

    budgets = {"evaluate_population": [], "iou_stats": [], "nearest_distance": []}

    def spy(module, name):
        real = getattr(module, name)

        def wrapped(*args, **kwargs):
            budgets[name].append(kwargs.get("memory_budget_bytes"))
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapped)

    spy(population, "evaluate_population")
    spy(population, "iou_stats")
    spy(novelty, "nearest_distance")
    base, spec, original, generated, x, y = small_case(n_gen=4, k=3)
    judge.evaluate(base, spec, original, generated, x, y, noise_sigmas=(0.1,), memory_budget_bytes=4321)
    assert budgets["evaluate_population"] == [4321] * 6  # originals, generated, noise, matched, interpolation, mean
    assert budgets["iou_stats"] == [4321] * 8  # oo, gg, go, four baselines, the ensemble
    assert budgets["nearest_distance"] == [4321] * 6


def test_the_generated_sets_iou_and_the_spacing_of_two_originals_of_one_value():
    """One-value subsets and two originals: the spacing tau is still their distance (a test on
    the number of originals, not of values)."""
    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(12, 4)
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, x):
            return self.lin(x) * self.scale

    torch.manual_seed(0)
    base = Scaled().eval()
    spec = ParamSpec.from_model(base, "scale")
    assert spec.dim == 1
    original = torch.tensor([[1.0], [2.0]])
    generated = torch.tensor([[1.5], [-1.0], [3.0]])
    x, y = torch.randn(30, 12), torch.randint(0, 4, (30,))
    report = judge.evaluate(base, spec, original, generated, x, y, noise_sigmas=())
    assert report["per_model"]["original_nn_distance"] == pytest.approx([2.0, 2.0])  # standardised: std 0.5
    assert report["novelty"]["tau"] == pytest.approx(2.0)
    gen = evaluate_population(base, spec, generated, x, y)
    from pdiff_fast.ops.iou_matrix import iou_matrix
    m = iou_matrix(gen.wrong, gen.wrong).double()
    assert report["iou"]["generated_generated_mean"] == pytest.approx(m[~torch.eye(3, dtype=torch.bool)].mean().item())

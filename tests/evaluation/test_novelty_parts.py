"""pdiff_fast.evaluation.novelty's parts, value by value: empty and one-row inputs, blocked
distances against one torch.cdist, the baselines draw for draw from their seeds, the strict
inequalities of the measures, and the verdict's whole text. Written against the mutants mutmut
left alive (tests/mutation, docs/mutation-scores.md)."""
import math

import pytest
import torch
from torch import nn

from pdiff_fast.evaluation import novelty
from pdiff_fast.params import ParamSpec, Standardizer


def test_summary_of_none_one_and_several_values():
    assert novelty.summary(torch.tensor([])) == {"best": pytest.approx(math.nan, nan_ok=True),
                                                  "mean": pytest.approx(math.nan, nan_ok=True),
                                                  "median": pytest.approx(math.nan, nan_ok=True), "n": 0}
    assert novelty.summary(torch.tensor([96.5, math.nan])) == {"best": 96.5, "mean": 96.5, "median": 96.5, "n": 1}
    assert novelty.summary(torch.tensor([1.0, 4.0, 2.0, 9.0])) == {"best": 9.0, "mean": 4.0, "median": 2.0, "n": 4}


def test_stats_keys_and_values():
    nan = pytest.approx(math.nan, nan_ok=True)
    assert novelty._stats(torch.tensor([math.nan])) == {"median": nan, "mean": nan, "min": nan, "max": nan}
    assert novelty._stats(torch.tensor([3.0, 1.0, math.inf, 2.0])) == {"median": 2.0, "mean": 2.0, "min": 1.0,
                                                                       "max": 3.0}


def direct(x, ref, exclude_self=False):
    d = torch.cdist(x.double(), ref.double()) / math.sqrt(x.shape[1])
    if exclude_self:
        d.fill_diagonal_(math.inf)
    return d.min(1)


@pytest.mark.parametrize("budget", [1, 300, 4000, 1 << 30])  # 1, 1, 5 and all rows per block
@pytest.mark.parametrize("exclude_self", [False, True])
def test_nearest_distance_in_blocks_equals_one_cdist(budget, exclude_self):
    g = torch.Generator().manual_seed(1)
    ref = torch.randn(13, 7, generator=g)
    x = ref if exclude_self else torch.randn(50, 7, generator=g)
    dist, index = novelty.nearest_distance(x, ref, exclude_self=exclude_self, memory_budget_bytes=budget)
    want = direct(x, ref, exclude_self)
    torch.testing.assert_close(dist, want.values, rtol=1e-9, atol=1e-12)
    assert torch.equal(index, want.indices)


def test_nearest_distance_with_exact_zeros_finds_the_copy():
    """A coordinate that is exactly 0 (x / x would be NaN there) must not hide the nearest row."""
    ref = torch.tensor([[1.0, 2.0, 3.0], [0.0, 5.0, 0.0], [4.0, 0.0, 1.0]])
    dist, index = novelty.nearest_distance(ref[[2, 1]], ref)
    assert dist.tolist() == [0.0, 0.0] and index.tolist() == [2, 1]


def test_nearest_distance_degenerate_shapes():
    dist, index = novelty.nearest_distance(torch.randn(3, 4), torch.zeros(0, 4))
    assert torch.isnan(dist).all() and index.tolist() == [-1, -1, -1] and index.dtype == torch.int64
    dist, index = novelty.nearest_distance(torch.randn(1, 4), torch.randn(1, 4), exclude_self=True)
    assert torch.isnan(dist).all() and index.tolist() == [-1]
    two = torch.tensor([[0.0, 0.0], [3.0, 4.0]])
    dist, index = novelty.nearest_distance(two, two, exclude_self=True)
    assert index.tolist() == [1, 0] and dist.tolist() == pytest.approx([5 / math.sqrt(2)] * 2)
    dist, index = novelty.nearest_distance(torch.zeros(0, 4), torch.randn(2, 4))
    assert dist.shape == (0,) and index.shape == (0,)


def test_spread_of_two_and_of_more_rows_than_it_samples():
    assert novelty.spread(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5 / math.sqrt(2))
    assert math.isnan(novelty.spread(torch.randn(1, 3)))
    # 2049 rows: the median over 2048 evenly spaced ones (one row left out), not over all of them
    rows = torch.randn(2049, 2, generator=torch.Generator().manual_seed(0))
    z = rows[torch.linspace(0, 2048, 2048).round().long().unique()]
    d = torch.cdist(z.double(), z.double()) / math.sqrt(2)
    want = d[torch.triu_indices(len(z), len(z), 1).unbind()].median().item()
    assert novelty.spread(rows) == want
    assert novelty.spread(rows, max_rows=2049) != want


def test_interpolations_draw_for_draw():
    """Draws from the generator in a fixed order: i, the offset to j, lam (float64); two
    originals are enough; the same seed gives the same set."""
    original = torch.randn(5, 6, dtype=torch.float64)
    got = novelty.interpolations(original, 40, torch.Generator().manual_seed(7))
    g = torch.Generator().manual_seed(7)
    i = torch.randint(0, 5, (40,), generator=g)
    j = (i + torch.randint(1, 5, (40,), generator=g)) % 5
    lam = torch.rand(40, 1, generator=g, dtype=torch.float64)
    torch.testing.assert_close(got, lam * original[i] + (1 - lam) * original[j], rtol=0, atol=0)
    two = novelty.interpolations(original[:2], 8, torch.Generator().manual_seed(0))
    lam2 = (two[:, 0] - original[1, 0]) / (original[0, 0] - original[1, 0])
    torch.testing.assert_close(two, lam2[:, None] * original[0] + (1 - lam2[:, None]) * original[1])
    assert novelty.interpolations(original[:1], 8, torch.Generator()) is None


def test_matched_noise_and_baseline_sets_from_their_seed():
    original = torch.randn(6, 4, dtype=torch.float64) * 3 + 1
    spec = ParamSpec(["w"], [(4,)], [torch.float64])
    std = Standardizer.fit(spec, original)
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(6, 4, generator=g, dtype=torch.float64)
    want = std.inverse(std.transform(original) + 0.5 * noise)
    torch.testing.assert_close(novelty.matched_noise(original, std, 0.5, torch.Generator().manual_seed(3)), want,
                               rtol=0, atol=1e-12)
    a = novelty.baseline_sets(original, std, 0.5, seed=3)
    assert list(a) == ["noise matched", "interpolation", "weight mean"]
    torch.testing.assert_close(a["noise matched"], want, rtol=0, atol=1e-12)
    torch.testing.assert_close(a["weight mean"], original.mean(0, keepdim=True))
    b = novelty.baseline_sets(original, std, 0.5, seed=3)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = novelty.baseline_sets(original, std, 0.5, seed=4)
    assert not torch.equal(a["interpolation"], c["interpolation"])
    assert list(novelty.baseline_sets(original, std, math.nan, seed=3)) == ["interpolation", "weight mean"]
    single = novelty.baseline_sets(original.float(), std, 0.5, seed=3)  # every set in the originals' dtype
    assert {k: v.dtype for k, v in single.items()} == dict.fromkeys(single, torch.float32)


def test_ensemble_leaves_the_base_model_as_it_was():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 5))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    spec = ParamSpec.from_model(base, "last-1-norm-layers")
    original = torch.randn(3, spec.dim)
    pred = novelty.ensemble_predictions(base, spec, original, torch.randn(10, 3), batch_size=4)
    assert pred.shape == (10,) and pred.dtype == torch.int64
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())


def test_new_and_better_is_strict_on_both_measures():
    acc = torch.tensor([97.0, 97.0, 98.0, 98.0])
    dist = torch.tensor([0.5, 2.0, 0.5, 2.0], dtype=torch.float64)
    m = novelty.set_measures(acc, dist, torch.zeros(4), tau=0.5, accuracy_bar=97.0)
    assert m["new_and_better"] == 0.25  # only 98 at 2.0: 97 is not above the bar, 0.5 not beyond tau
    assert m["distance_ratio"] == pytest.approx(1.0)  # the lower median of the four distances, 0.5
    zero_tau = novelty.set_measures(acc, dist, torch.zeros(4), tau=0.0, accuracy_bar=97.0)
    assert zero_tau["distance_ratio"] is None
    no_tau = novelty.set_measures(acc, dist, torch.zeros(4), tau=math.nan, accuracy_bar=90.0)
    assert no_tau["distance_ratio"] is None and no_tau["new_and_better"] == 0.0


def sets(acc=97.0, orig=97.0, ratio=0.5, median=0.002, iou=0.8, noise_iou=0.9, share=0.25, baselines=True):
    out = {"generated": {"nn_distance": {"median": median}, "distance_ratio": ratio, "accuracy": {"median": acc},
                         "max_iou_mean": iou, "new_and_better": share},
           "original": {"accuracy": {"median": orig}, "new_and_better": 0.1}}
    if baselines:
        out["noise matched"] = {"accuracy": {"median": 96.5}, "max_iou_mean": noise_iou}
        out["ensemble"] = {"accuracy": {"median": 97.4}, "max_iou_mean": 0.95}
    return out


def test_the_verdict_text_in_full():
    v = novelty.verdict(sets(), 0.004, extent=0.5)
    assert v == {"label": "close", "accuracy": "level with", "distance_ratio": 0.5, "median_distance": 0.002,
                 "tau": 0.004, "extent": 0.5, "beats": ["noise matched"], "text": (
                     "The generated models lie closer to an original than the originals lie to each other: "
                     "median distance to the nearest original 0.002, 0.50x the originals' own spacing (median "
                     "nearest-other-original distance 0.004). Their median accuracy 97.00 is level with the "
                     "originals' 97.00; above noise matched (96.50), below ensemble (97.40). Their wrong "
                     "predictions overlap the originals' less than those of noise at the same distance (mean "
                     "max IoU 0.800 vs 0.900). For scale: two originals lie 0.5 apart (median over pairs); the "
                     "generated models' median distance to the nearest original is 0.00x that. 25.0% of them "
                     "are both better than the median original and farther than 0.004 from every original "
                     "(originals: 10.0%).")}


@pytest.mark.parametrize("ratio, opening", [
    (0.05, "The generated models are copies of originals:"),
    (3.0, "The generated models lie as far from the originals as the originals lie from each other, or farther:"),
])
def test_each_label_opens_its_text(ratio, opening):
    v = novelty.verdict(sets(ratio=ratio, median=2.0, iou=0.9, noise_iou=0.9, share=math.nan, baselines=True),
                        0.004, extent=2.0)
    assert v["text"].startswith(opening)
    assert "overlap the originals' as much or more than those of noise" in v["text"]
    assert "is 1.00x that." in v["text"]  # median / extent
    assert "% of them" not in v["text"]  # no share when it is NaN


def test_one_original_texts_and_no_scale_without_a_spread():
    v = novelty.verdict(sets(ratio=None, median=1e-6, share=None, baselines=False), math.nan, extent=math.nan)
    assert v["text"] == ("How new the generated models are cannot be judged: median distance to the nearest "
                         "original 1e-06; with one original there is no spacing to compare it with. Their median "
                         "accuracy 97.00 is level with the originals' 97.00.")
    assert novelty.verdict(sets(ratio=None, median=0.0, share=None, baselines=False), math.nan)["label"] == "copies"
    for extent in (0.0, -1.0, math.nan):
        assert "For scale" not in novelty.verdict(sets(), 0.004, extent=extent)["text"]
    assert "For scale: two originals lie 0.8 apart" in novelty.verdict(sets(), 0.004, extent=0.8)["text"]
    v = novelty.verdict(sets(median=math.nan), 0.004)
    assert v == {"label": "no finite models", "accuracy": "cannot be compared with",
                 "text": "No generated model has finite parameters."}


def test_level_compares_strictly_outside_the_band():
    assert novelty._level(97.0, 97.0) == "level with"
    assert novelty._level(97.0 + 2 * novelty.SAME_ACCURACY, 97.0) == "above"
    assert novelty._level(97.0, 97.0 + 2 * novelty.SAME_ACCURACY) == "below"
    assert novelty._level(math.nan, 97.0) == "cannot be compared with"

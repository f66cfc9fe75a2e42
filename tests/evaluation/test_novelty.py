"""pdiff_fast.evaluation.novelty and the baselines / verdict of evaluate(), on cases whose answer is known:
copies of the originals are called copies, random far-away models are not, mixtures of two
originals lie closer than the originals' spacing; every measure against a direct computation."""
import math

import pytest
import torch
import torch.nn.functional as F

from pdiff_fast.evaluation import novelty
from pdiff_fast.evaluation.judge import evaluate, format_table
from pdiff_fast.nn.models import MLP
from pdiff_fast.params import ParamSpec, Standardizer
from pdiff_fast.evaluation.population import evaluate_population
from pdiff_fast.pipeline.report import plot_report, titles


@pytest.fixture(scope="module")
def trained():
    """A small MLP that learns a linear 4-class rule (~90% test accuracy), its LayerNorm as the
    subset (64 values) and 20 originals around it."""
    torch.manual_seed(0)
    w = torch.randn(20, 4)
    x = torch.randn(1024, 20)
    y = (x @ w).argmax(1)
    model = MLP(20, 4, hidden=(32,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        F.cross_entropy(model(x[:768]), y[:768]).backward()
        opt.step()
    model.eval()
    spec = ParamSpec.from_model(model, "last-1-norm-layers")
    row = spec.flatten([model])
    original = row + 0.05 * torch.randn(20, spec.dim)
    return model, spec, original, x[768:], y[768:]


def run(trained, generated):
    model, spec, original, x, y = trained
    return evaluate(model, spec, original, generated, x, y, noise_sigmas=[0.01])


def test_nearest_distance_equals_a_direct_computation():
    torch.manual_seed(1)
    a, ref = torch.randn(37, 9), torch.randn(5, 9)
    a[3] = ref[2]  # an exact copy: distance 0.0 exactly
    a[4, 0] = math.nan
    dist, idx = novelty.nearest_distance(a, ref, memory_budget_bytes=1)  # one row per block
    direct = torch.cdist(a.double(), ref.double()) / 3.0  # RMS: / sqrt(9)
    ok = torch.ones(37, dtype=torch.bool)
    ok[4] = False
    assert torch.allclose(dist[ok], direct[ok].min(1).values, rtol=1e-6)
    assert dist[3].item() == 0.0 and idx[3].item() == 2
    assert math.isnan(dist[4].item()) and idx[4].item() == -1
    self_d, self_i = novelty.nearest_distance(ref, ref, exclude_self=True)
    d = torch.cdist(ref.double(), ref.double()) / 3.0
    d.fill_diagonal_(math.inf)
    assert torch.allclose(self_d, d.min(1).values) and (self_i != torch.arange(5)).all()
    assert novelty.nearest_distance(ref[:1], ref[:1], exclude_self=True)[0].isnan().all()  # K = 1: no other


def test_distances_are_in_standardised_units():
    spec = ParamSpec(["a", "b"], [[2], [2]], [torch.float32] * 2)
    original = torch.tensor([[0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 200.0, 200.0]])  # b's scale is 100x a's
    std = novelty.standardizer(spec, original)
    moved_a = original[:1] + torch.tensor([[2.0, 2.0, 0.0, 0.0]])
    moved_b = original[:1] + torch.tensor([[0.0, 0.0, 200.0, 200.0]])
    da = novelty.nearest_distance(moved_a, original[:1], transform=std.transform)[0]
    db = novelty.nearest_distance(moved_b, original[:1], transform=std.transform)[0]
    assert torch.allclose(da, db)  # the same move at each tensor's own scale is the same distance


def test_spread_is_the_median_pairwise_distance():
    torch.manual_seed(4)
    original = torch.randn(7, 5)
    d = torch.cdist(original.double(), original.double()) / 5 ** 0.5
    pairs = d[torch.triu_indices(7, 7, 1).unbind()]
    assert novelty.spread(original) == pytest.approx(pairs.median().item())
    assert novelty.spread(original, max_rows=3) == pytest.approx(
        (torch.cdist(original[[0, 3, 6]].double(), original[[0, 3, 6]].double()) / 5 ** 0.5)[
            torch.triu_indices(3, 3, 1).unbind()].median().item())
    assert math.isnan(novelty.spread(original[:1]))


def test_interpolations_mix_two_different_originals():
    k = 6
    original = torch.eye(k) * 10
    mixed = novelty.interpolations(original, 500, torch.Generator().manual_seed(0))
    nonzero = (mixed != 0).sum(1)
    assert (nonzero <= 2).all() and (nonzero == 2).float().mean() > 0.99  # two distinct originals
    assert torch.allclose(mixed.sum(1), torch.full((500,), 10.0)) and (mixed >= 0).all()
    assert novelty.interpolations(original[:1], 5, torch.Generator()) is None


def test_matched_noise_lies_at_the_asked_distance():
    spec = ParamSpec(["a", "b"], [[3000], [1000]], [torch.float32] * 2)
    original = torch.randn(4, 4000) * torch.cat([torch.full((3000,), 0.1), torch.full((1000,), 5.0)])
    std = Standardizer.fit(spec, original)
    noisy = novelty.matched_noise(original, std, 0.3, torch.Generator().manual_seed(0))
    own = (std.transform(noisy) - std.transform(original)).pow(2).mean(1).sqrt()
    assert torch.allclose(own, torch.full((4,), 0.3), rtol=0.05)


def test_ensemble_averages_the_softmax_of_the_originals(trained):
    model, spec, original, x, y = trained
    probs = 0
    for row in original[:5]:
        m = spec.load_into(__import__("copy").deepcopy(model), row)
        probs = probs + m(x).double().softmax(-1)
    assert torch.equal(novelty.ensemble_predictions(model, spec, original[:5], x, batch_size=7), probs.argmax(-1))


def test_copies_are_called_copies(trained):
    original = trained[2]
    report = run(trained, original.repeat(2, 1))
    v = report["verdict"]
    assert v["label"] == "copies" and v["distance_ratio"] == 0.0 and v["accuracy"] == "level with"
    gen = report["novelty"]["sets"]["generated"]
    assert gen["nn_distance"]["max"] == 0.0 and gen["new_and_better"] == 0.0
    assert report["baselines"]["noise matched"]["rms"] == 0.0  # matched to distance 0: the originals again
    assert report["baselines"]["noise matched"]["accuracy"] == report["per_model"]["original_accuracy"]
    assert "**Verdict: copies;" in format_table(report)


def test_random_far_away_models_are_new_but_not_better(trained):
    model, spec, original, x, y = trained
    far = original.mean(0) + 5.0 * torch.randn(30, spec.dim, generator=torch.Generator().manual_seed(2))
    report = run(trained, far)
    v = report["verdict"]
    assert v["label"] == "new" and v["distance_ratio"] > 5 and v["accuracy"] == "below"
    assert report["novelty"]["sets"]["generated"]["new_and_better"] < 0.1
    assert report["generated"]["median"] < report["original"]["median"] - 5


def test_mixtures_of_two_originals_are_close(trained):
    original = trained[2]
    mixed = 0.5 * original[:10] + 0.5 * original[10:]
    v = run(trained, mixed)["verdict"]
    assert v["label"] == "close" and 0.1 < v["distance_ratio"] < 1


def test_baselines_and_measures_equal_direct_computations(trained):
    model, spec, original, x, y = trained
    generated = original[:8] + 0.02 * torch.randn(8, spec.dim, generator=torch.Generator().manual_seed(3))
    report = run(trained, generated)
    base = report["baselines"]
    assert list(base) == ["noise matched", "interpolation", "weight mean", "ensemble"]
    assert [len(base[n]["accuracy"]) for n in base] == [20, 20, 1, 1]
    mean_acc = evaluate_population(model, spec, original.mean(0, keepdim=True), x, y).accuracy
    assert base["weight mean"]["accuracy"] == mean_acc.tolist()
    ens = novelty.ensemble_predictions(model, spec, original, x)
    assert base["ensemble"]["accuracy"][0] == pytest.approx(100.0 * (ens == y).double().mean().item(), abs=1e-4)
    # the matched noise is as far from the originals as the generated models (median over 20 vs 8 models)
    gen_median = report["novelty"]["sets"]["generated"]["nn_distance"]["median"]
    assert base["noise matched"]["rms"] == gen_median
    assert report["novelty"]["sets"]["noise matched"]["nn_distance"]["median"] == pytest.approx(gen_median, rel=0.5)
    # tau and the generated distances against a direct computation in standardised units
    std = Standardizer.fit(spec, original)
    zo, zg = std.transform(original).double(), std.transform(generated).double()
    d_oo = torch.cdist(zo, zo) / spec.dim ** 0.5
    d_oo.fill_diagonal_(math.inf)
    tau = d_oo.min(1).values.median().item()
    assert report["novelty"]["tau"] == pytest.approx(tau, rel=1e-5)
    d_go = (torch.cdist(zg, zo) / spec.dim ** 0.5).min(1).values
    assert report["per_model"]["generated_nn_distance"] == pytest.approx(d_go.tolist(), rel=1e-5)
    # new and better: over the generated models, accuracy above the originals' median and farther than tau
    acc = torch.tensor(report["per_model"]["generated_accuracy"])
    expect = ((acc > report["original"]["median"]) & (d_go > tau)).double().mean().item()
    assert report["novelty"]["sets"]["generated"]["new_and_better"] == pytest.approx(expect)


def test_set_measures_count_new_and_better():
    acc = torch.tensor([90.0, 95.0, 95.0, 80.0, math.nan])
    dist = torch.tensor([2.0, 0.5, 3.0, 3.0, math.nan])
    m = novelty.set_measures(acc, dist, torch.zeros(5), tau=1.0, accuracy_bar=91.0)
    assert m["new_and_better"] == pytest.approx(1 / 5)  # only the third model; the NaN model counts as neither
    assert m["nn_distance"]["median"] == 2.0 and m["distance_ratio"] == 2.0  # the lower median, as torch's


def test_one_original_has_no_spacing(trained):
    model, spec, original, x, y = trained
    report = evaluate(model, spec, original[:1], original[:1].repeat(3, 1), x, y, noise_sigmas=[])
    assert math.isnan(report["novelty"]["tau"]) and "interpolation" not in report["baselines"]
    assert report["verdict"]["label"] == "copies"
    report = evaluate(model, spec, original[:1], original[1:4], x, y, noise_sigmas=[])
    assert report["verdict"]["label"] == "undetermined"


def test_plot_titles_state_the_report_numbers(trained, tmp_path):
    original = trained[2]
    copies, mixed = run(trained, original.clone()), run(trained, 0.5 * original[:10] + 0.5 * original[10:])
    for report in (copies, mixed):
        t = titles(report)
        assert f"{report['iou']['generated_original_max_mean']:.3f}" in t["iou"]
        assert f"{report['generated']['median']:.2f}" in t["accuracy"]
        assert f"verdict: {report['verdict']['label']}" in t["distance"]
        assert f"{report['verdict']['distance_ratio']:.2f}x" in t["distance"]
    assert titles(copies)["distance"] != titles(mixed)["distance"]
    paths = plot_report(mixed, tmp_path)
    assert [p.name for p in paths] == ["accuracy_distribution.png", "iou_vs_accuracy.png", "distance_vs_accuracy.png"]
    assert all(p.stat().st_size > 1000 for p in paths)

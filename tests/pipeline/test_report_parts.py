"""pdiff_fast.pipeline.report's parts, value by value: the three titles from a report's numbers
(with and without the baselines, the verdict's ratio or median distance), which baselines are
plotted and under which names, and each figure as saved: sizes, titles and their font sizes, axis
labels, legends, the histogram's bins, every scatter's points and style, the reference lines, the
distance axis' scale. Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md); test_novelty.py draws the plots of a real report."""
import math

import matplotlib
import numpy as np
import pytest
from matplotlib.markers import MarkerStyle

from pdiff_fast.pipeline import report as report_lib
from pdiff_fast.pipeline.report import _baselines, plot_report, titles

NAN = float("nan")


def make_report():
    return {
        "generated": {"median": 91.234}, "original": {"median": 92.5},
        "iou": {"generated_original_max_mean": 0.81234},
        "baselines": {
            "noise matched": {"max_iou_mean": 0.5, "max_iou": [0.4, 0.6], "accuracy": [80.0, 81.0], "nn_distance": [0.1, 0.2]},
            "ensemble": {"max_iou_mean": 0.9, "nn_distance": None},
            "interpolation": {"max_iou_mean": 0.70049, "max_iou": [0.7], "accuracy": [90.0], "nn_distance": [0.05]},
            "without distances": {"max_iou_mean": 0.1, "max_iou": [0.1], "accuracy": [1.0]},
        },
        "noise_baselines": {"0.01": {"max_iou": [0.9], "accuracy": [92.0], "nn_distance": [0.01]},
                            "0.1": {"max_iou": [0.3], "accuracy": [60.0], "nn_distance": [0.3]}},
        "verdict": {"distance_ratio": 0.5, "label": "novel", "median_distance": 0.006},
        "novelty": {"tau": 0.0123},
        "per_model": {"original_accuracy": [90.0, 93.0, 96.0], "generated_accuracy": [91.0, NAN, 94.0],
                      "generated_max_iou": [0.8, 0.7, 0.9], "generated_nn_distance": [0.02, 0.03, 0.04],
                      "original_nn_distance": [0.011, 0.012, 0.013]},
    }


def test_titles():
    r = make_report()
    assert titles(r) == {
        "accuracy": "Median test accuracy: generated 91.23, original 92.50",
        "iou": "Mean max IoU to the originals: generated 0.812, noise matched 0.500, interpolation 0.700",
        "distance": "Generated: median distance to the nearest original 0.50x the originals' spacing (0.0123); verdict: novel"}
    del r["baselines"]["noise matched"]
    assert titles(r)["iou"] == "Mean max IoU to the originals: generated 0.812, interpolation 0.700"
    del r["baselines"]
    assert titles(r)["iou"] == "Mean max IoU to the originals: generated 0.812"
    r["verdict"]["distance_ratio"] = None
    assert titles(r)["distance"] == "Generated: median distance to the nearest original 0.006"
    del r["verdict"]["median_distance"]
    assert titles(r)["distance"] == "Distance to the nearest original"
    r["verdict"] = {"distance_ratio": 2.0, "label": "copies"}
    assert titles(r)["distance"] == ("Generated: median distance to the nearest original 2.00x the originals' "
                                     "spacing (0.0123); verdict: copies")
    for v in ({}, None):
        r["verdict"] = v
        assert titles(r)["distance"] == "Distance to the nearest original"
    del r["verdict"]
    assert titles(r)["distance"] == "Distance to the nearest original"
    assert titles({"generated": {"median": 1}, "original": {"median": 2},
                   "iou": {"generated_original_max_mean": 0.5}, "verdict": {"median_distance": 1.5}})["distance"] == (
        "Generated: median distance to the nearest original 1.5")


def test_baselines_plotted_noise_first_ensemble_excluded():
    out = _baselines(make_report())
    assert list(out) == ["original + noise σ=0.01", "original + noise σ=0.1", "noise matched", "interpolation"]
    assert out["interpolation"]["accuracy"] == [90.0] and out["original + noise σ=0.1"]["accuracy"] == [60.0]
    assert _baselines({}) == {}


@pytest.fixture
def saved(monkeypatch):
    figures = {}

    def save(fig, path):
        figures[path.name] = describe(fig)
        return path

    monkeypatch.setattr(report_lib, "_save", save)
    return figures


def describe(fig):
    (ax,) = fig.axes
    legend = ax.get_legend()
    return {
        "size": [float(v) for v in fig.get_size_inches()], "title": ax.get_title(), "title_size": ax.title.get_fontsize(),
        "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "xscale": ax.get_xscale(),
        "legend": [t.get_text() for t in legend.get_texts()], "legend_size": legend.get_texts()[0].get_fontsize(),
        "patches": [(p.get_x(), p.get_width(), p.get_height(), p.get_alpha()) for p in ax.patches],
        "scatters": [(c.get_label(), np.ma.getdata(c.get_offsets()).tolist(), c.get_sizes().tolist(), c.get_alpha(), c.get_zorder(),
                      c.get_paths()[0].vertices.tolist()) for c in ax.collections],
        "lines": [(line.get_label(), list(line.get_xdata()), list(line.get_ydata()), line.get_color(),
                   line.get_linestyle(), line.get_linewidth()) for line in ax.get_lines()],
        "linthresh": getattr(ax.xaxis.get_transform(), "linthresh", None), "xlim_left": ax.get_xlim()[0],
    }


def marker(name):
    m = MarkerStyle(name)
    return m.get_path().transformed(m.get_transform()).vertices.tolist()


def test_plot_report_figures(saved, tmp_path):
    out = tmp_path / "a" / "b"
    with matplotlib.rc_context({"font.size": 5}):  # the sizes set are kept whatever the style's
        paths = plot_report(make_report(), out)
    assert out.is_dir()
    assert paths == [out / "accuracy_distribution.png", out / "iou_vs_accuracy.png", out / "distance_vs_accuracy.png"]
    assert matplotlib.get_backend().lower() == "agg"
    t = titles(make_report())

    acc = saved["accuracy_distribution.png"]
    assert acc["size"] == [6.0, 4.0] and acc["title"] == t["accuracy"] and acc["title_size"] == 10.0
    assert acc["xlabel"] == "test accuracy (%)" and acc["ylabel"] == "models"
    assert acc["legend"] == ["original (n=3)", "generated (n=2)"]  # the NaN accuracy left out
    edges = [90.0 + (6.0 + 1e-9) * i / 30 for i in range(31)]
    assert len(acc["patches"]) == 60
    for k, (x, w, h, alpha) in enumerate(acc["patches"]):
        i = k % 30
        assert x == pytest.approx(edges[i], abs=1e-9) and x + w == pytest.approx(edges[i + 1], abs=1e-9) and alpha == 0.6
    heights = [p[2] for p in acc["patches"]]
    assert sum(heights[:30]) == 3 and sum(heights[30:]) == 2 and heights[0] == 1 and heights[29] == 1
    # the edges sit 1e-9 * i / 30 above 90 + 0.2 i: 91 and 94 fall in bins 4 and 19, 93 in 14
    assert heights[30 + 4] == 1 and heights[30 + 19] == 1 and heights[14] == 1

    iou = saved["iou_vs_accuracy.png"]
    assert iou["size"] == [6.5, 4.5] and iou["title"] == t["iou"] and iou["title_size"] == 9.0
    assert iou["xlabel"] == "max IoU of wrong predictions to the originals" and iou["ylabel"] == "test accuracy (%)"
    assert iou["legend_size"] == 7.0
    assert iou["legend"] == ["generated", "original + noise σ=0.01", "original + noise σ=0.1", "noise matched",
                             "interpolation", "best original"]
    gen, *base = iou["scatters"]
    assert gen[0] == "generated" and np.allclose(gen[1], [[0.8, 91.0], [0.7, NAN], [0.9, 94.0]], equal_nan=True)
    assert gen[2:5] == ([12.0], None, 3)
    assert [(b[0], b[1], b[2], b[3], b[4]) for b in base] == [
        ("original + noise σ=0.01", [[0.9, 92.0]], [12.0], 0.6, 1), ("original + noise σ=0.1", [[0.3, 60.0]], [12.0], 0.6, 1),
        ("noise matched", [[0.4, 80.0], [0.6, 81.0]], [12.0], 0.6, 1), ("interpolation", [[0.7, 90.0]], [12.0], 0.6, 1)]
    assert iou["lines"] == [("best original", [0, 1], [96.0, 96.0], "gray", "--", 1.0)]
    assert iou["xscale"] == "linear"

    dist = saved["distance_vs_accuracy.png"]
    assert dist["size"] == [6.5, 4.5] and dist["title"] == t["distance"] and dist["title_size"] == 9.0
    assert dist["xlabel"] == "distance to the nearest original (RMS, standardised per tensor)"
    assert dist["ylabel"] == "test accuracy (%)" and dist["legend_size"] == 7.0
    assert dist["legend"] == ["generated", "original (to the nearest other original)", "original + noise σ=0.01",
                              "original + noise σ=0.1", "noise matched", "interpolation", "originals' spacing (tau)"]
    gen, orig, *base = dist["scatters"]
    assert gen[0] == "generated" and np.allclose(gen[1], [[0.02, 91.0], [0.03, NAN], [0.04, 94.0]], equal_nan=True)
    assert gen[2:5] == ([12.0], None, 3) and gen[5] == marker("o")
    assert orig[:5] == ("original (to the nearest other original)", [[0.011, 90.0], [0.012, 93.0], [0.013, 96.0]],
                        [12.0], None, 1) and orig[5] == marker("x")
    assert [(b[0], b[1], b[2], b[3]) for b in base] == [
        ("original + noise σ=0.01", [[0.01, 92.0]], [12.0], 0.6), ("original + noise σ=0.1", [[0.3, 60.0]], [12.0], 0.6),
        ("noise matched", [[0.1, 80.0], [0.2, 81.0]], [12.0], 0.6), ("interpolation", [[0.05, 90.0]], [12.0], 0.6)]
    assert dist["lines"] == [("originals' spacing (tau)", [0.0123, 0.0123], [0, 1], "gray", ":", 1.0)]
    assert dist["xscale"] == "symlog" and dist["linthresh"] == pytest.approx(0.00123) and dist["xlim_left"] == 0


@pytest.mark.parametrize("tau, linthresh", [("no novelty", 1e-4), (None, 1e-4), (NAN, 1e-4), (1e-5, 1e-4),
                                           (0.05, 0.005), (0.0, 1e-4)])
def test_distance_axis_without_or_with_small_tau(saved, tmp_path, tau, linthresh):
    r = make_report()
    if tau == "no novelty":
        del r["novelty"]
        r["verdict"] = {"median_distance": 0.006, "label": "novel"}
        tau = None
    elif tau is None:
        del r["novelty"]["tau"]
        r["verdict"] = {"median_distance": 0.006, "label": "novel"}  # a verdict's ratio comes with tau
    else:
        r["novelty"]["tau"] = tau
    plot_report(r, tmp_path)
    dist = saved["distance_vs_accuracy.png"]
    assert dist["linthresh"] == pytest.approx(linthresh)
    shown = tau is not None and tau == tau
    assert [line[0] for line in dist["lines"]] == (["originals' spacing (tau)"] if shown else [])


def test_no_distance_plot_without_distances(saved, tmp_path):
    r = make_report()
    del r["per_model"]["generated_nn_distance"]
    assert plot_report(r, tmp_path) == [tmp_path / "accuracy_distribution.png", tmp_path / "iou_vs_accuracy.png"]
    assert set(saved) == {"accuracy_distribution.png", "iou_vs_accuracy.png"}


def test_the_files_are_written_and_the_figures_closed(tmp_path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    paths = plot_report(make_report(), str(tmp_path))
    assert all(p.stat().st_size > 0 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert len(plt.get_fignums()) == before and math.isfinite(before)

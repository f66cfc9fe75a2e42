"""pdiff_fast.tasks.report's parts, value by value: the means that skip NaN, the zero-shot summary per
split and method (worst task, best model, tasks counted), the step that reaches 95% of the final
accuracy and its edges, the fine-tuning summary, the targets and their boundaries, the starts' order,
the number format, the whole Markdown table, the titles, and both figures as drawn. Written against
the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md); test_task_pipeline.py makes a
real report end to end. (Named apart from tests/pipeline/test_report_parts.py: test files share one
namespace.)"""
import math

import matplotlib
import numpy as np
import pytest

from pdiff_fast.tasks import report as rep
from pdiff_fast.tasks.report import (METHODS, SPLITS, STARTS, _f, _mean, _starts, format_report, plot_report,
                                     steps_to_fraction, summarize_finetune, summarize_zero_shot, targets, titles)

NAN = float("nan")


def test_constants():
    assert METHODS == ("generated", "unconditional", "random init", "zoo mean", "nearest task", "zoo (own task)")
    assert SPLITS == ("held out", "seen") and STARTS == ("generated", "random", "nearest task")


def test_mean_skips_nan():
    assert _mean([1.0, 2.0, NAN, 4.5]) == 2.5
    assert _mean([0.0]) == 0.0 and _mean([3]) == 3
    assert _mean([]) is None and _mean([NAN, NAN]) is None
    assert _mean((x for x in [2.0, 4.0])) == 3.0


def test_summarize_zero_shot():
    per_task = {
        "a": {"split": "held out", "accuracy": {"generated": [80.0, 90.0, NAN], "random init": [10.0, 20.0]}},
        "b": {"split": "held out", "accuracy": {"generated": [60.0, 70.0], "random init": [NAN, NAN]}},
        "c": {"split": "seen", "accuracy": {"generated": [50.0], "zoo (own task)": [99.0, 97.0]}},
        "d": {"split": "seen", "accuracy": {"generated": [70.0, 100.0]}},
        "e": {"split": "other", "accuracy": {"generated": [0.0]}},
    }
    out = summarize_zero_shot(per_task)
    assert out == {
        "held out": {"generated": {"mean": 75.0, "worst": 65.0, "best_mean": 80.0, "tasks": 2},
                     "random init": {"mean": 15.0, "worst": 15.0, "best_mean": 20.0, "tasks": 1}},
        "seen": {"generated": {"mean": 67.5, "worst": 50.0, "best_mean": 75.0, "tasks": 2},
                 "zoo (own task)": {"mean": 98.0, "worst": 98.0, "best_mean": 99.0, "tasks": 1}}}
    assert list(out) == ["held out", "seen"] and list(out["held out"]) == ["generated", "random init"]
    assert summarize_zero_shot({}) == {"held out": {}, "seen": {}}
    only_nan = {"a": {"split": "seen", "accuracy": {"zoo mean": [NAN]}}}
    assert summarize_zero_shot(only_nan) == {"held out": {}, "seen": {}}
    # the methods in METHODS' order, whatever the tasks' order
    mixed = {"a": {"split": "seen", "accuracy": {"zoo mean": [1.0], "generated": [2.0]}}}
    assert list(summarize_zero_shot(mixed)["seen"]) == ["generated", "zoo mean"]


def test_steps_to_fraction():
    steps = [0, 1, 2, 4, 8]
    assert steps_to_fraction([10.0, 50.0, 95.0, 99.0, 100.0], steps) == 2  # 95 is exactly 0.95 x 100
    assert steps_to_fraction([10.0, 50.0, 94.9, 99.0, 100.0], steps) == 4
    assert steps_to_fraction([96.0, 50.0, 94.9, 99.0, 100.0], steps) == 0
    assert steps_to_fraction([10.0, 50.0, 79.0, 80.0, 100.0], steps, 0.8) == 4
    assert steps_to_fraction([10.0, 80.0, 79.0, 80.0, 100.0], steps, 0.8) == 1
    assert steps_to_fraction([NAN, 99.0, 100.0], [0, 3, 5]) == 3  # a NaN step never counts
    assert steps_to_fraction([10.0, 20.0, NAN], [0, 3, 5]) is None
    assert steps_to_fraction([100.0], [7]) == 7
    # a negative final accuracy (no step is >= 0.95 x it) falls back to the last step
    assert steps_to_fraction([-5.0, -3.0, -2.0, -1.0], [0, 1, 2, 3]) == 3


def test_summarize_finetune():
    steps = [0, 1, 2, 4]
    curves = {"generated": [[50.0, 96.0, 97.0, 100.0], [40.0, 60.0, 80.0, 80.0], [NAN, 1.0, 2.0, NAN]],
              "random": [[10.0, 20.0, 30.0, 40.0], [10.0, 20.0, 50.0, 50.0]],
              "nearest task": [[NAN, NAN, NAN, NAN]]}
    out = summarize_finetune(steps, curves)
    assert list(out) == ["generated", "random", "nearest task"]
    assert out["generated"] == {"mean_curve": [45.0, (96.0 + 60.0 + 1.0) / 3, (97.0 + 80.0 + 2.0) / 3, 90.0],
                                "start": 45.0, "final": 90.0, "steps_to_95": 1.5, "rows": 3}  # reached at 1 and 2
    assert out["random"] == {"mean_curve": [10.0, 20.0, 40.0, 45.0], "start": 10.0, "final": 45.0,
                             "steps_to_95": 3.0, "rows": 2}  # reached at 4 and 2
    assert out["nearest task"] == {"mean_curve": [None] * 4, "start": None, "final": None, "steps_to_95": None,
                                   "rows": 1}
    three = summarize_finetune([0, 1, 2], {"g": [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0], [0.0, 1.0, 1.0]]})
    assert three["g"]["steps_to_95"] == 1 and three["g"]["mean_curve"] == [1 / 3, 2 / 3, 1.0]
    assert summarize_finetune([0], {}) == {}


def zero_shot(gen=70.0, random=60.0, zoo=80.0):
    return {"held out": {"generated": {"mean": gen}, "random init": {"mean": random}, "zoo mean": {"mean": zoo}}}


def finetune(g=8, r=32):
    return {"generated": {"steps_to_95": g}, "random": {"steps_to_95": r}}


def test_targets():
    assert targets(zero_shot(), finetune()) == {
        "above random init": {"generated": 70.0, "random init": 60.0, "met": True},
        "above zoo mean": {"generated": 70.0, "zoo mean": 80.0, "met": False},
        "half the steps of random init": {"generated": 8, "random": 32, "met": True}}
    out = targets(zero_shot(gen=60.0, zoo=60.0), finetune(g=16, r=32))  # equal is not above; half is enough
    assert [t["met"] for t in out.values()] == [False, False, True]
    out = targets(zero_shot(gen=60.5, zoo=59.5), finetune(g=17, r=32))
    assert [t["met"] for t in out.values()] == [True, True, False]
    assert targets({}, {}) == {
        "above random init": {"generated": None, "random init": None, "met": None},
        "above zoo mean": {"generated": None, "zoo mean": None, "met": None},
        "half the steps of random init": {"generated": None, "random": None, "met": None}}
    no_gen = targets({"held out": {"random init": {"mean": 1.0}}}, {"random": {"steps_to_95": 4}})
    assert no_gen["above random init"] == {"generated": None, "random init": 1.0, "met": None}
    assert no_gen["half the steps of random init"] == {"generated": None, "random": 4, "met": None}
    no_base = targets({"held out": {"generated": {"mean": 1.0}}}, {"generated": {"steps_to_95": 4}})
    assert no_base["above zoo mean"] == {"generated": 1.0, "zoo mean": None, "met": None}
    assert no_base["half the steps of random init"] == {"generated": 4, "random": None, "met": None}
    zero = targets(zero_shot(gen=0.0, random=-1.0), finetune(g=0, r=0))  # zeros are numbers, not missing
    assert zero["above random init"]["met"] is True and zero["half the steps of random init"]["met"] is True


def test_starts_in_fixed_order_then_the_others():
    ft = {"zeta": 1, "random": 2, "nearest task": 3, "alpha": 4, "generated": 5}
    assert _starts(ft) == [("generated", 5), ("random", 2), ("nearest task", 3), ("zeta", 1), ("alpha", 4)]
    assert _starts({"nearest task": 1, "random": 2}) == [("random", 2), ("nearest task", 1)]
    assert _starts({"x": 1, "generated": 2}) == [("generated", 2), ("x", 1)]


def test_number_format():
    assert _f(None) == "—" and _f(None, 0) == "—"
    assert _f(1.236) == "1.24" and _f(3.5, 0) == "4" and _f(2.5, 0) == "2" and _f(0.0) == "0.00" and _f(7, 3) == "7.000"


def make_report():
    return {
        "tasks": {"held out": ["1-0", "3-1"], "seen": ["0-1", "2-3", "4-5"]},
        "zero_shot": {
            "held out": {"generated": {"mean": 81.234, "worst": 70.0, "best_mean": 90.5},
                         "random init": {"mean": 50.0, "worst": 45.5, "best_mean": 55.0},
                         "zoo mean": {"mean": 60.0, "worst": 58.0, "best_mean": 60.0},
                         "nearest task": {"mean": 40.0, "worst": 30.0, "best_mean": 45.0}},
            "seen": {"generated": {"mean": 95.0, "worst": 91.0, "best_mean": 99.0},
                     "zoo (own task)": {"mean": 97.0, "worst": 96.0, "best_mean": 100.0}}},
        "zoo": {"models": 30, "models_per_second": 12.34, "loop_models_per_second": 4.0, "median_accuracy": 97.125},
        "guidance_sweep": {"0": {"mean": 70.0, "worst": 60.0}, "4": {"mean": 81.234, "worst": 70.0}},
        "config": {"guidance": 4.0},
        "finetune_steps": 8, "batch_size": 32, "finetune_lr": 0.05,
        "finetune_record": [0, 1, 2, 4, 8],
        "finetune": {"random": {"rows": 10, "start": 50.0, "final": 90.0, "steps_to_95": 4.0,
                                "mean_curve": [50.0, 60.0, 70.0, 85.0, 90.0]},
                     "generated": {"rows": 10, "start": 80.0, "final": 92.0, "steps_to_95": 1.5,
                                   "mean_curve": [80.0, 88.0, 90.0, 91.0, 92.0]},
                     "nearest task": {"rows": 10, "start": None, "final": None, "steps_to_95": None,
                                      "mean_curve": [40.0, 50.0, 60.0, 70.0, 80.0]}},
        "targets": {"above random init": {"generated": 81.234, "random init": 50.0, "met": True},
                    "above zoo mean": {"generated": 81.234, "zoo mean": None, "met": None},
                    "half the steps of random init": {"generated": 1.5, "random": 4.0, "met": False}},
        "timings": {"zoo": 12.345, "train": 3.0},
    }


EXPECTED = """\
# Dataset-conditioned generation: 2 held-out and 3 seen tasks

## No training: test accuracy (%)

| method | held out: mean | worst task | best model (mean) | seen: mean | worst task | best model (mean) |
|---|---:|---:|---:|---:|---:|---:|
| generated | 81.23 | 70.00 | 90.50 | 95.00 | 91.00 | 99.00 |
| random init | 50.00 | 45.50 | 55.00 | — | — | — |
| zoo mean | 60.00 | 58.00 | 60.00 | — | — | — |
| nearest task | 40.00 | 30.00 | 45.00 | — | — | — |
| zoo (own task) | — | — | — | 97.00 | 96.00 | 100.00 |

Zoo: 30 models trained at once, 12.3 models/s (4.0 models/s one at a time, 3.1x); median test accuracy 97.12.

## Guidance scale (held-out tasks, no training)

| scale | mean accuracy | worst task |
|---:|---:|---:|
| 0 | 70.00 | 60.00 |
| 4 | 81.23 | 70.00 |

The table above uses scale 4.

## Fine-tuning on the held-out tasks (8 SGD steps, batch 32, lr 0.05)

| start | rows | accuracy at step 0 | final accuracy | steps to 95% of final (median) |
|---|---:|---:|---:|---:|
| generated | 10 | 80.00 | 92.00 | 2 |
| random | 10 | 50.00 | 90.00 | 4 |
| nearest task | 10 | — | — | — |

## Targets (held-out tasks)

- generated above random init: **met** (generated 81.23, random init 50.00)
- generated above zoo mean: **undetermined** (generated 81.23, zoo mean —)
- generated half the steps of random init: **not met** (generated 2, random 4)

## Wall time (s)

| step | s |
|---|---:|
| zoo | 12.3 |
| train | 3.0 |
"""


def test_format_report_whole():
    assert format_report(make_report()) == EXPECTED


def test_format_report_without_the_optional_parts():
    r = make_report()
    r["zoo"]["loop_models_per_second"] = None
    del r["guidance_sweep"], r["timings"]
    r["config"]["guidance"] = 1.5
    r["zero_shot"]["seen"]["generated"] = {"mean": 0.0, "worst": 0.0, "best_mean": 0.0}
    out = format_report(r)
    assert "Zoo:" not in out and "## Guidance scale" not in out and "## Wall time" not in out
    assert "uses scale" not in out
    assert "| generated | 81.23 | 70.00 | 90.50 | 0.00 | 0.00 | 0.00 |\n" in out
    assert out.endswith("- generated half the steps of random init: **not met** (generated 2, random 4)\n")
    r["zoo"] = {"models": 1}  # no speeds: no line
    r["guidance_sweep"], r["timings"] = {}, {}
    assert format_report(r) == out
    del r["zoo"]
    assert format_report(r) == out
    r["guidance_sweep"] = {"1.5": {"mean": 1.0, "worst": None}}
    assert "| 1.5 | 1.00 | — |\n\nThe table above uses scale 1.5.\n" in format_report(r)


def test_format_report_leaves_out_methods_without_numbers():
    r = make_report()
    r["zero_shot"] = {"held out": {"unconditional": {"mean": None, "worst": None, "best_mean": None}}}
    table = format_report(r).split("## Fine-tuning")[0]
    assert "| unconditional" not in table and "| generated |" not in table and "| method |" in table
    r["zero_shot"] = {"seen": {"unconditional": {"mean": None, "worst": None, "best_mean": 3.0}}}
    assert "| unconditional | — | — | — | — | — | 3.00 |\n" in format_report(r)


def test_titles():
    t = titles(make_report())
    assert t == {"zero_shot": "Held-out tasks, no training, mean accuracy: generated 81.2, random init 50.0, "
                              "zoo mean 60.0, nearest task 40.0",
                 "finetune": "Held-out tasks: steps to 95% of the final accuracy (median): generated 2, random 4, "
                             "nearest task —"}
    assert titles({"zero_shot": {}, "finetune": {}}) == {
        "zero_shot": "Held-out tasks, no training, mean accuracy: ",
        "finetune": "Held-out tasks: steps to 95% of the final accuracy (median): "}
    held_only_two = {"zero_shot": {"held out": {"zoo mean": {"mean": 1.25}, "unconditional": {"mean": 9.0},
                                                "generated": {"mean": 2.0}}}, "finetune": {}}
    assert titles(held_only_two)["zero_shot"] == "Held-out tasks, no training, mean accuracy: generated 2.0, zoo mean 1.2"


@pytest.fixture
def saved(monkeypatch):
    figures = {}

    def save(fig, path):
        figures[path.name] = (path, describe(fig))
        return path

    monkeypatch.setattr(rep, "_save", save)
    return figures


def describe(fig):
    (ax,) = fig.axes
    legend = ax.get_legend()
    ticks = ax.get_xticklabels()
    return {
        "size": [float(v) for v in fig.get_size_inches()], "title": ax.get_title(), "title_size": ax.title.get_fontsize(),
        "xlabel": ax.get_xlabel(), "ylabel": ax.get_ylabel(), "xscale": ax.get_xscale(),
        "linthresh": getattr(ax.xaxis.get_transform(), "linthresh", None),
        "legend": [t.get_text() for t in legend.get_texts()], "legend_size": legend.get_texts()[0].get_fontsize(),
        "xticks": list(ax.get_xticks()), "xticklabels": [t.get_text() for t in ticks],
        "xtick_rotation": ticks[0].get_rotation() if ticks else None, "xtick_size": ticks[0].get_fontsize() if ticks else None,
        "bars": [(round(p.get_x(), 9), round(p.get_width(), 9), p.get_height(), p.get_label()) for p in ax.patches],
        "bar_labels": [c.get_label() for c in ax.containers],
        "scatters": [(c.get_label(), np.ma.getdata(c.get_offsets()).tolist(), c.get_sizes().tolist(),
                      c.get_facecolor().tolist(), c.get_zorder()) for c in ax.collections],
        "lines": [(line.get_label(), list(line.get_xdata()), list(line.get_ydata()), line.get_marker(),
                   line.get_markersize()) for line in ax.get_lines()],
    }


def test_plot_report_figures(saved, tmp_path):
    r = make_report()
    with matplotlib.rc_context({"font.size": 5, "lines.markersize": 9}):  # the sizes set are kept whatever the style's
        paths = plot_report(r, str(tmp_path))
    assert paths == [tmp_path / "zero_shot.png", tmp_path / "finetune.png"]
    assert matplotlib.get_backend().lower() == "agg"
    t = titles(r)

    _, z = saved["zero_shot.png"]
    assert z["size"] == [7.0, 4.0] and z["title"] == t["zero_shot"] and z["title_size"] == 8.0
    assert z["ylabel"] == "test accuracy (%)" and z["xlabel"] == ""
    assert z["xticks"] == [0, 1, 2, 3, 4, 5] and z["xticklabels"] == list(METHODS)
    assert z["xtick_rotation"] == 20.0 and z["xtick_size"] == 8.0
    assert z["legend"] == ["worst task", "held out tasks (mean)", "seen tasks (mean)"] and z["legend_size"] == 7.0
    assert z["bar_labels"] == ["held out tasks (mean)", "seen tasks (mean)"]
    # held out (k = 0) left of each method's place, seen (k = 1) right of it, 0.38 wide
    assert z["bars"] == [(-0.38, 0.38, 81.234, "_nolegend_"), (2 - 0.38, 0.38, 50.0, "_nolegend_"),
                         (3 - 0.38, 0.38, 60.0, "_nolegend_"), (4 - 0.38, 0.38, 40.0, "_nolegend_"),
                         (0.0, 0.38, 95.0, "_nolegend_"), (5.0, 0.38, 97.0, "_nolegend_")]
    black = [[0.0, 0.0, 0.0, 1.0]]
    (lab0, pts0, s0, c0, z0), (lab1, pts1, s1, c1, z1) = z["scatters"]
    assert (lab0, s0, c0, z0) == ("worst task", [10.0], black, 3)
    assert lab1.startswith("_") and (s1, c1, z1) == ([10.0], black, 3)  # no second legend entry
    assert np.allclose(pts0, [[-0.19, 70.0], [1.81, 45.5], [2.81, 58.0], [3.81, 30.0]])
    assert np.allclose(pts1, [[0.19, 91.0], [5.19, 96.0]])

    path, f = saved["finetune.png"]
    assert path == tmp_path / "finetune.png"
    assert f["size"] == [6.0, 4.0] and f["title"] == t["finetune"] and f["title_size"] == 8.0
    assert f["xlabel"] == "SGD steps on the held-out task" and f["ylabel"] == "test accuracy (%), mean over rows"
    assert f["xscale"] == "symlog" and f["linthresh"] == 1.0
    assert f["legend"] == ["from generated (n=10)", "from random (n=10)", "from nearest task (n=10)"]
    assert f["legend_size"] == 7.0
    assert f["lines"] == [("from generated (n=10)", [0, 1, 2, 4, 8], [80.0, 88.0, 90.0, 91.0, 92.0], "o", 3.0),
                          ("from random (n=10)", [0, 1, 2, 4, 8], [50.0, 60.0, 70.0, 85.0, 90.0], "o", 3.0),
                          ("from nearest task (n=10)", [0, 1, 2, 4, 8], [40.0, 50.0, 60.0, 70.0, 80.0], "o", 3.0)]


def test_plot_report_without_a_split(saved, tmp_path):
    r = make_report()
    del r["zero_shot"]["seen"]
    plot_report(r, tmp_path)
    _, z = saved["zero_shot.png"]
    assert z["legend"] == ["worst task", "held out tasks (mean)", "seen tasks (mean)"]
    assert [b[2] for b in z["bars"]] == [81.234, 50.0, 60.0, 40.0]
    assert z["scatters"][1][1] == []


def test_the_files_are_written_and_the_figures_closed(tmp_path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    paths = plot_report(make_report(), tmp_path / "out")
    assert paths == [tmp_path / "out" / "zero_shot.png", tmp_path / "out" / "finetune.png"]
    assert all(p.stat().st_size > 0 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    assert len(plt.get_fignums()) == before and math.isfinite(before)

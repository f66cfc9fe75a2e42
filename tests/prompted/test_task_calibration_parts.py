"""pdiff_fast.prompted.task_calibration's parts, value by value: a prompt's models, the checkpoints
that reach a prompt (none: the best two), a split's rows (medians over tasks of each task's median,
the worst task, honoured at exactly HONOURED_WITHIN, the extrapolation rows), the judged prompt, the
comparison with the baselines (above / not above at equality), calibrate's splits, the report's text
and the plot's lines, labels and title. Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md); test_prompted_tasks.py runs it for real."""
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

import pdiff_fast.prompted.task_calibration as tc  # noqa: E402
from pdiff_fast.prompted.task_calibration import (REACHING, SPLITS, _f, _of_prompt, _reaching, _split,  # noqa: E402
                                                  calibrate, format_report, plot_calibration)

NAN = float("nan")


def test_constants():
    assert SPLITS == ("held out", "seen") and REACHING == ("nearest task", "zoo (own task)")
    assert tc.HONOURED_WITHIN == 1.0


def test_of_prompt():
    assert _of_prompt([1.0, 2.0, 3.0, 4.0], [50.0, 60.0, 50.0, 70.0], 50.0) == [1.0, 3.0]
    assert _of_prompt([1.0, 2.0], [50.0, 60.0], 55.0) == []


def test_reaching():
    test, labels = [10.0, 20.0, 30.0, 40.0], [68.0, 69.0, 75.0, 68.9]
    assert _reaching(test, labels, 70.0) == [20.0, 30.0]  # >= 69, 69 exactly included
    assert _reaching(test, labels, 69.9) == [20.0, 30.0, 40.0]
    # none reaches: the test accuracies of the best two labels, best first
    assert _reaching(test, labels, 80.0) == [30.0, 20.0]
    assert _reaching([1.0, 2.0, 3.0], [5.0, 7.0, 7.0], 90.0) == [2.0, 3.0]  # a tie: the earlier first
    assert _reaching([1.0, 2.0, 3.0], [7.0, 5.0, 6.0], 90.0) == [1.0, 3.0]
    assert _reaching([1.0], [5.0], 90.0) == [1.0]


def task(split, prompt, val, generated, **others):
    """A per-task entry: others are baselines as (test, labels) or a plain test list."""
    test = {"generated": generated}
    labels = {}
    for name, v in others.items():
        name = name.replace("_", " ")
        if isinstance(v, tuple):
            test[name], labels[name] = v
        else:
            test[name] = v
    return {"split": split, "prompt": prompt, "val": val, "test": test, "labels": labels}


P = [60.0, 60.0, 80.0, 80.0, 90.0, 90.0]


def tasks():
    return {
        # per-task median of validation: 60 -> 60.5, 80 -> 79.25, 90 -> 85
        "a": task("seen", P, [60.0, 61.0, 79.0, 79.5, 84.0, 86.0], [58.0, 59.0, 76.0, 78.0, 80.0, 82.0],
                  random=[10.0, 12.0], **{"zoo (own task)": ([70.0, 78.0, 76.0], [70.0, 79.0, 80.0])}),
        # 60 -> 59.5, 80 -> 78.75, 90 -> 88
        "b": task("seen", P, [59.0, 60.0, 78.5, 79.0, 87.0, 89.0], [57.0, 57.0, 77.0, 79.0, 84.0, 86.0],
                  random=[11.0], **{"zoo (own task)": ([60.0, 65.0, 75.0], [60.0, 65.0, 71.0])}),
        # 60 -> 62, 80 -> 79, 90 -> 85.5
        "c": task("seen", P, [62.0, 62.0, 79.0, 79.0, 85.0, 86.0], [60.0, 61.0, 76.5, 77.5, 83.0, 81.0],
                  random=[9.0, 9.5, 10.0], **{"zoo (own task)": ([77.0, 77.5], [85.0, 86.0])}),
    }


def test_split_by_hand():
    out = _split(tasks(), 55.0, 85.0)
    rows = out["calibration"]
    assert [r["prompt"] for r in rows] == [60.0, 80.0, 90.0]
    assert [r["tasks"] for r in rows] == [3, 3, 3]
    assert [r["val_median"] for r in rows] == [60.5, 79.0, 85.5]
    assert [r["val_worst"] for r in rows] == [59.5, 78.75, 85.0]
    # test: per task the median over its models, then the median over tasks; the mean of per-task means
    assert [r["test_median"] for r in rows] == [58.5, 77.0, 82.0]
    assert rows[0]["test_mean"] == pytest.approx((58.5 + 57.0 + 60.5) / 3)
    assert rows[1]["test_mean"] == pytest.approx((77.0 + 78.0 + 77.0) / 3)
    assert [r["miss"] for r in rows] == [0.5, -1.0, -4.5]
    assert [r["honoured"] for r in rows] == [True, True, False]  # -1 exactly: honoured
    assert [r["extrapolation"] for r in rows] == [False, False, True]
    assert out["highest_honoured"] == 80.0 and out["judged_prompt"] == 80.0
    cmp = out["compare"]
    assert set(cmp) == {"generated", "random", "zoo (own task)"}
    assert cmp["generated"] == {"mean": pytest.approx((77.0 + 78.0 + 77.0) / 3), "worst": 77.0, "tasks": 3}
    assert cmp["random"] == {"mean": pytest.approx((11.0 + 11.0 + 9.5) / 3), "worst": 9.5, "tasks": 3}
    # the own zoo, cut to the checkpoints labelled >= 79: a [78, 76] -> 77; b none -> best two [75, 65] -> 70;
    # c [77, 77.5] -> 77.25
    assert cmp["zoo (own task)"] == {"mean": pytest.approx((77.0 + 70.0 + 77.25) / 3), "worst": 70.0, "tasks": 3}
    assert out["above"] == ["random", "zoo (own task)"] and out["not_above"] == []


def test_split_prompt_at_the_top_is_no_extrapolation_and_equal_means_are_not_above():
    t = {"x": task("held out", [70.0, 70.0], [69.0, 70.0], [50.0, 52.0], b_one=[51.0], a_two=[51.0, 51.0],
                   c_three=[40.0], nearest_task=([60.0, 50.0], [71.0, 40.0]))}
    out = _split(t, 60.0, 70.0)
    (row,) = out["calibration"]
    assert row["extrapolation"] is False and row["val_median"] == 69.5 and row["honoured"] is True
    assert out["compare"]["nearest task"] == {"mean": 60.0, "worst": 60.0, "tasks": 1}
    assert out["above"] == ["c three"] and out["not_above"] == ["a two", "b one", "nearest task"]


def test_split_none_honoured_judges_the_prompt_missed_by_least():
    t = {"x": task("seen", [50.0, 70.0, 90.0], [45.0, 68.0, 94.0], [40.0, 60.0, 85.0], random=[10.0])}
    out = _split(t, 40.0, 95.0)
    assert [r["miss"] for r in out["calibration"]] == [-5.0, -2.0, 4.0]
    assert out["highest_honoured"] is None and out["judged_prompt"] == 70.0
    assert out["compare"]["generated"] == {"mean": 60.0, "worst": 60.0, "tasks": 1}
    assert out["above"] == ["random"]
    t["x"]["val"] = [45.0, 73.0, 87.0]  # misses -5, +3, -3: the first of the least
    assert _split(t, 40.0, 95.0)["judged_prompt"] == 70.0


def test_calibrate_by_split():
    per = tasks()
    per["h"] = task("held out", [60.0, 70.0], [60.0, 72.0], [55.0, 65.0], random=[10.0])
    per["other"] = task("neither", [60.0], [60.0], [55.0])
    out = calibrate(per, 55.0, 85.0)
    assert out["honoured_within"] == 1.0 and out["prompt_range"] == [55.0, 85.0]
    assert list(out["splits"]) == ["held out", "seen"]
    assert out["splits"]["seen"] == _split(tasks(), 55.0, 85.0)
    assert out["splits"]["held out"] == _split({"h": per["h"]}, 55.0, 85.0)
    only_seen = calibrate(tasks(), 55.0, 85.0)
    assert list(only_seen["splits"]) == ["seen"]
    assert calibrate({}, 1.0, 2.0) == {"honoured_within": 1.0, "prompt_range": [1.0, 2.0], "splits": {}}


def test_f():
    assert _f(None) == "—" and _f(NAN) == "—"
    assert _f(1.234) == "1.23" and _f(3) == "3.00" and _f(2.5, "+.1f") == "+2.5" and _f(0.0) == "0.00"
    assert _f(math.inf) == "inf" and _f(-math.inf) == "-inf"


def report():
    per = tasks()
    per["h"] = task("held out", [60.0, 60.0, 95.0], [60.0, 64.0, 70.0], [55.0, 65.0, 66.0], random=[10.0],
                    nearest_task=([70.0, 60.0], [50.0, 40.0]))
    return {"prompted": calibrate(per, 55.0, 85.0), "zoo": {"models": 40, "val_median": 70.125, "test_median": 68.5},
            "tasks": {"held out": ["h"], "seen": ["a", "b", "c"]}, "per_task": per}


def test_format_report():
    r = report()
    # report.json's keys come back sorted: the text keeps held out first
    r["prompted"]["splits"] = dict(sorted(r["prompted"]["splits"].items(), reverse=True))
    assert format_report(r) == "\n".join([
        "# Prompted dataset-conditioned generation: 1 held-out and 3 seen tasks", "",
        "The zoo's 40 checkpoints span 55.00..85.00% validation accuracy on their tasks (median 70.12; test median "
        "68.50). A prompt is honoured when the median over the tasks of each task's median validation accuracy is "
        "within 1 points of it.",
        "", "## Held out tasks", "",
        "| prompt (val %) | tasks | val median | worst task | test median | test mean | miss | honoured |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        "| 60.00 | 1 | 62.00 | 62.00 | 60.00 | 60.00 | +2.00 | no |",
        "| 95.00 | 1 | 70.00 | 70.00 | 66.00 | 66.00 | -25.00 | no (above every checkpoint) |",
        "", "No prompt was honoured; the comparison uses prompt 60.00, the one missed by least.", "",
        "| method (test %, at prompt 60.00) | mean over tasks | worst task |", "|---|---:|---:|",
        "| generated | 60.00 | 60.00 |",
        "| nearest task, checkpoints reaching the prompt | 65.00 | 65.00 |",
        "| random | 10.00 | 10.00 |",
        "", "Generated (60.00) is above: random; not above: nearest task.",
        "Above every checkpoint: prompt 95.00 gave validation median 70.00, test mean 66.00.",
        "", "## Seen tasks", "",
        "| prompt (val %) | tasks | val median | worst task | test median | test mean | miss | honoured |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        "| 60.00 | 3 | 60.50 | 59.50 | 58.50 | 58.67 | +0.50 | yes |",
        "| 80.00 | 3 | 79.00 | 78.75 | 77.00 | 77.33 | -1.00 | yes |",
        "| 90.00 | 3 | 85.50 | 85.00 | 82.00 | 82.67 | -4.50 | no (above every checkpoint) |",
        "", "Highest prompt honoured: 80.00.", "",
        "| method (test %, at prompt 80.00) | mean over tasks | worst task |", "|---|---:|---:|",
        "| generated | 77.33 | 77.00 |",
        "| random | 10.50 | 9.50 |",
        "| zoo (own task), checkpoints reaching the prompt | 74.75 | 70.00 |",
        "", "Generated (77.33) is above: random, zoo (own task); not above: none.",
        "Above every checkpoint: prompt 90.00 gave validation median 85.50, test mean 82.67.",
    ]) + "\n"


def test_format_report_one_split_none_above_no_extrapolation():
    per = {"h": task("held out", [60.0], [60.5], [50.0], random=[50.0], zoo=[51.0])}
    r = {"prompted": calibrate(per, 50.0, 60.0), "zoo": {"models": 3, "val_median": 55.0, "test_median": 54.0},
         "tasks": {"held out": ["h"], "seen": []}, "per_task": per}
    r["prompted"]["honoured_within"] = 1.5
    lines = format_report(r).split("\n")
    assert lines[0] == "# Prompted dataset-conditioned generation: 1 held-out and 0 seen tasks"
    assert lines[2].endswith("within 1.5 points of it.")
    assert "## Seen tasks" not in lines
    assert lines[-3:] == ["", "Generated (50.00) is above: none; not above: random, zoo.", ""]
    assert "| 60.00 | 1 | 60.50 | 60.50 | 50.00 | 50.00 | +0.50 | yes |" in lines


def test_format_report_two_rows_above_every_checkpoint():
    per = {"h": task("held out", [60.0, 90.0, 95.0], [60.0, 80.0, 82.0], [50.0, 70.0, 72.0], random=[10.0])}
    r = {"prompted": calibrate(per, 50.0, 85.0), "zoo": {"models": 3, "val_median": 55.0, "test_median": 54.0},
         "tasks": {"held out": ["h"], "seen": []}, "per_task": per}
    assert format_report(r).split("\n")[-2] == (
        "Above every checkpoint: prompt 90.00 gave validation median 80.00, test mean 70.00; prompt 95.00 gave "
        "validation median 82.00, test mean 72.00.")


def test_plot_calibration(monkeypatch, tmp_path):
    seen = {}

    def fake_save(fig, out_dir):
        seen.update(fig=fig, out_dir=out_dir)
        return "saved"

    monkeypatch.setattr(tc, "save_calibration", fake_save)
    r = report()
    with matplotlib.rc_context({"font.size": 13}):  # the title's 10 is its own, not the default
        assert plot_calibration(r, tmp_path) == "saved"
    fig = seen["fig"]
    assert seen["out_dir"] is tmp_path
    try:
        assert tuple(fig.get_size_inches()) == (11.0, 4.5)
        held, seen_ax = fig.axes
        assert held.get_title() == "held out tasks (1): thin lines one task each" and held.title.get_fontsize() == 10
        assert seen_ax.get_title() == "seen tasks (3): thin lines one task each"
        # seen: one thin line per task, then the two medians and the diagonal
        thin = seen_ax.lines[:3]
        assert [list(ln.get_ydata()) for ln in thin] == [[60.5, 79.25, 85.0], [59.5, 78.75, 88.0], [62.0, 79.0, 85.5]]
        for ln in thin:
            assert list(ln.get_xdata()) == [60.0, 80.0, 90.0]
            assert ln.get_color() == "C0" and ln.get_alpha() == 0.15 and ln.get_linewidth() == 0.8
        vmed, tmed, diag = seen_ax.lines[3:]
        assert (list(vmed.get_xdata()), list(vmed.get_ydata())) == ([60.0, 80.0, 90.0], [60.5, 79.0, 85.5])
        assert (vmed.get_marker(), vmed.get_linestyle(), vmed.get_color()) == ("o", "-", "C0")
        assert vmed.get_label() == "validation, median over tasks"
        assert (list(tmed.get_xdata()), list(tmed.get_ydata())) == ([60.0, 80.0, 90.0], [58.5, 77.0, 82.0])
        assert (tmed.get_marker(), tmed.get_linestyle(), tmed.get_color()) == ("s", "--", "C1")
        assert tmed.get_label() == "test, median over tasks"
        assert list(diag.get_xdata()) == [60.0, 90.0] and diag.get_label() == "achieved = prompted"
        (span,) = seen_ax.patches
        assert (span.get_x(), span.get_width()) == (55.0, 30.0) and span.get_label() == "zoo's validation range"
        assert [list(ln.get_ydata()) for ln in held.lines[:1]] == [[62.0, 70.0]]
        assert len(held.lines) == 4
    finally:
        plt.close(fig)


def test_plot_calibration_one_split(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(tc, "save_calibration", lambda fig, out: seen.update(fig=fig))
    per = tasks()
    r = {"prompted": calibrate(per, 55.0, 85.0), "per_task": per}
    plot_calibration(r, tmp_path)
    fig = seen["fig"]
    try:
        assert tuple(fig.get_size_inches()) == (5.5, 4.5) and len(fig.axes) == 1
        assert fig.axes[0].get_title().startswith("seen tasks (3)")
    finally:
        plt.close(fig)


def test_plot_calibration_saves(tmp_path):
    path = plot_calibration(report(), tmp_path)
    assert path == tmp_path / "calibration.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert math.isfinite(path.stat().st_size)


def test_plot_calibration_one_prompt(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(tc, "save_calibration", lambda fig, out: seen.update(fig=fig))
    per = {"h": task("held out", [60.0, 60.0], [59.0, 61.0], [50.0, 52.0]),
           "g": task("held out", [60.0], [62.0], [55.0])}
    plot_calibration({"prompted": calibrate(per, 55.0, 65.0), "per_task": per}, tmp_path)
    fig = seen["fig"]
    try:
        (ax,) = fig.axes
        assert ax.get_title() == "held out tasks (2): thin lines one task each"
        assert [list(ln.get_ydata()) for ln in ax.lines[:2]] == [[60.0], [62.0]]
    finally:
        plt.close(fig)

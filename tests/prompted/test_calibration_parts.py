"""pdiff_fast.prompted.calibration's parts, value by value: _stats, calibrate with the judge faked
(the rows per prompt, honoured at exactly HONOURED_WITHIN, the extrapolation rows, the judged prompt
with and without one honoured, NaN misses, the originals that reach it, what the judge is handed, the
whole report), the table and sentences of format_calibration, the plot's points, lines, diagonal,
range, labels and title, and save_calibration. Written against the mutants mutmut left alive
(tests/mutation, docs/mutation-scores.md); test_prompted_pipeline.py runs it for real."""
import math
import types
import warnings

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from torch import nn  # noqa: E402

import pdiff_fast.prompted.calibration as cal  # noqa: E402
from pdiff_fast.params import ParamSpec  # noqa: E402
from pdiff_fast.pipeline.collect import Population  # noqa: E402
from pdiff_fast.prompted.calibration import (HONOURED_WITHIN, _f, _stats, calibrate, finish_axes,  # noqa: E402
                                             format_calibration, plot_calibration, save_calibration)

NAN = float("nan")


# --- _stats and _f --------------------------------------------------------------------------------

def test_stats_by_hand():
    s = _stats(torch.tensor([1.0, 2.0, 3.0, math.inf, math.nan]))
    assert s == {"best": 3.0, "mean": 2.0, "median": 2.0, "n": 3, "std": 1.0}
    s = _stats(torch.tensor([4.0, 6.0]))
    assert s["std"] == pytest.approx(math.sqrt(2.0)) and s["n"] == 2


def test_stats_std_in_float64():
    acc = torch.tensor([0.1, 0.2, 0.4, 0.7])
    assert _stats(acc)["std"] == acc.double().std().item()
    assert _stats(acc)["std"] != acc.std().item()


def test_stats_of_one_or_no_finite_value_has_no_std_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        one = _stats(torch.tensor([5.0, math.nan]))
        none = _stats(torch.tensor([math.nan]))
    assert one["n"] == 1 and one["median"] == 5.0 and math.isnan(one["std"])
    assert none["n"] == 0 and math.isnan(none["std"]) and math.isnan(none["median"])


def test_f():
    assert _f(None) == "—" and _f(NAN) == "—" and _f(NAN, "+.2f") == "—"
    assert _f(1.234) == "1.23" and _f(-1.0, "+.2f") == "-1.00" and _f(0.5, "+.2f") == "+0.50"
    assert _f(3) == "3.00" and _f(0.0) == "0.00"
    assert _f(math.inf) == "inf" and _f(-math.inf) == "-inf"  # lower case, as every format of a finite value


# --- calibrate, the judge faked -------------------------------------------------------------------

def spec():
    return ParamSpec.from_model(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), "last-1-norm-layers")  # D = 4


def population(val, test):
    n = len(val)
    params = torch.arange(4 * n, dtype=torch.float32).reshape(n, 4)
    return Population(params, torch.tensor(test), spec(), {}, {}, val_accuracy=torch.tensor(val))


class Judge:
    """evaluate_rows and evaluate faked: a generated row's validation accuracy is its column 0 and
    its test accuracy its column 1; evaluate returns a report naming what it was handed."""

    def __init__(self, monkeypatch, x_val):
        self.x_val, self.rows_calls, self.calls = x_val, [], []
        monkeypatch.setattr(cal, "evaluate_rows", self.evaluate_rows)
        monkeypatch.setattr(cal, "evaluate", self.evaluate)

    def evaluate_rows(self, base_model, spec, flat, x, y, budget, shard=False):
        self.rows_calls.append((base_model, spec, flat, x, y, budget, shard))
        return types.SimpleNamespace(accuracy=flat[:, 0 if x is self.x_val else 1].clone())

    def evaluate(self, base_model, spec, original, generated, x_test, y_test, **kw):
        self.calls.append({"base": base_model, "spec": spec, "original": original, "generated": generated,
                           "x": x_test, "y": y_test, **kw})
        return {"judged": True}


def generated(pairs):
    """(val, test) per model -> (N, 4) rows read by the faked judge."""
    return torch.tensor([[v, t, 0.0, 0.0] for v, t in pairs])


X_VAL, Y_VAL, X_TEST, Y_TEST = torch.zeros(3, 2), torch.zeros(3), torch.ones(4, 2), torch.ones(4)


def run(monkeypatch, pop, gen, prompt, **kw):
    judge = Judge(monkeypatch, X_VAL)
    base = nn.Linear(1, 1)
    args = dict(noise_sigmas=(0.01, 0.1), seed=7, memory_budget_bytes=12345) | kw
    report = calibrate(base, pop, gen, torch.tensor(prompt), X_VAL, Y_VAL, X_TEST, Y_TEST, **args)
    return report, judge, base


def test_calibrate_by_hand(monkeypatch):
    pop = population([50.0, 60.0, 70.0, 80.0, 79.5], [48.0, 58.0, 69.0, 77.0, 78.0])
    gen = generated([(50.25, 48.0), (49.5, 47.0), (51.0, 49.0),  # 50: median 50.25, miss +0.25
                     (68.5, 66.0), (68.0, 65.0), (72.0, 70.0),  # 70: median 68.5, miss -1.5, not honoured
                     (80.0, 78.0), (81.0, 79.0), (79.0, 77.5),  # 80 (= the best checkpoint): not extrapolation
                     (81.0, 79.5), (80.5, 79.0), (83.5, 80.0)])  # 82: median 81, miss -1 exactly: honoured
    prompt = [50.0] * 3 + [70.0] * 3 + [80.0] * 3 + [82.0] * 3
    report, judge, base = run(monkeypatch, pop, gen, prompt)
    # both evaluations: every generated model, sharded, on validation then test
    assert len(judge.rows_calls) == 2
    for (b, s, flat, x, y, budget, shard), (wx, wy) in zip(judge.rows_calls, [(X_VAL, Y_VAL), (X_TEST, Y_TEST)]):
        assert b is base and s is pop.spec and flat is gen and x is wx and y is wy and budget == 12345 and shard is True
    pr = report.pop("prompted")
    assert report == {"judged": True}
    rows = pr["calibration"]
    assert [r["prompt"] for r in rows] == [50.0, 70.0, 80.0, 82.0]
    assert [r["n"] for r in rows] == [3, 3, 3, 3]
    assert [r["val"]["median"] for r in rows] == [50.25, 68.5, 80.0, 81.0]
    assert [r["test"]["median"] for r in rows] == [48.0, 66.0, 78.0, 79.5]
    assert [r["miss"] for r in rows] == [0.25, -1.5, 0.0, -1.0]
    assert [r["honoured"] for r in rows] == [True, False, True, True]
    assert [r["extrapolation"] for r in rows] == [False, False, False, True]
    assert all(type(r["honoured"]) is bool and type(r["n"]) is int for r in rows)
    assert rows[0]["val"] == _stats(torch.tensor([50.25, 49.5, 51.0]))
    assert rows[0]["test"] == _stats(torch.tensor([48.0, 47.0, 49.0]))
    # the judged prompt: the highest honoured (82), against the best two checkpoints (none reaches 81)
    (c,) = judge.calls
    assert c["base"] is base and c["spec"] is pop.spec and c["x"] is X_TEST and c["y"] is Y_TEST
    assert (c["noise_sigmas"], c["seed"], c["memory_budget_bytes"], c["shard"]) == ((0.01, 0.1), 7, 12345, True)
    assert torch.equal(c["original"], pop.params[[3, 4]])
    assert torch.equal(c["generated"], gen[9:])
    assert pr == {
        "calibration": rows, "honoured_within": 1.0, "highest_honoured": 82.0, "judged_prompt": 82.0,
        "judged_originals": 2, "prompt_range": [50.0, 80.0],
        "original_val": _stats(pop.val_accuracy), "original_test": _stats(pop.accuracy),
        "best_original_val": {"val": 80.0, "test": 77.0},
        "per_model": {"prompt": prompt, "val_accuracy": gen[:, 0].tolist(), "test_accuracy": gen[:, 1].tolist()}}
    assert HONOURED_WITHIN == 1.0


def test_calibrate_judges_against_the_checkpoints_that_reach_the_prompt(monkeypatch):
    pop = population([50.0, 69.0, 70.0, 75.0, 60.0, 69.5], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    gen = generated([(70.5, 1.0), (69.8, 2.0), (40.0, 3.0), (60.0, 4.0)])
    report, judge, _ = run(monkeypatch, pop, gen, [70.0, 70.0, 45.0, 45.0])
    pr = report["prompted"]
    # 70: the lower middle of (70.5, 69.8) is 69.8, miss -0.2; 45: 40.0, miss -5
    assert [r["val"]["median"] for r in pr["calibration"]] == [40.0, pytest.approx(69.8)]
    assert pr["highest_honoured"] == 70.0 and pr["judged_prompt"] == 70.0
    # >= 69: 69.0 (exactly at the bound), 70, 75, 69.5
    assert pr["judged_originals"] == 4
    assert torch.equal(judge.calls[0]["original"], pop.params[[1, 2, 3, 5]])
    assert torch.equal(judge.calls[0]["generated"], gen[:2])
    assert pr["best_original_val"] == {"val": 75.0, "test": 4.0}


def test_calibrate_one_reaching_checkpoint_becomes_the_best_two(monkeypatch):
    pop = population([50.0, 62.0, 70.0, 55.0], [1.0, 2.0, 3.0, 4.0])
    gen = generated([(69.5, 1.0), (69.5, 1.0)])
    report, judge, _ = run(monkeypatch, pop, gen, [70.0, 70.0])
    assert report["prompted"]["judged_originals"] == 2
    assert torch.equal(judge.calls[0]["original"], pop.params[[1, 2]])


def test_calibrate_one_checkpoint(monkeypatch):
    pop = population([50.0], [40.0])
    gen = generated([(50.0, 1.0)])
    report, judge, _ = run(monkeypatch, pop, gen, [80.0])
    pr = report["prompted"]
    assert pr["judged_originals"] == 1 and torch.equal(judge.calls[0]["original"], pop.params)
    assert pr["highest_honoured"] is None and pr["judged_prompt"] == 80.0
    assert pr["prompt_range"] == [50.0, 50.0]


def test_calibrate_none_honoured_judges_the_prompt_missed_by_least(monkeypatch):
    pop = population([50.0, 60.0, 70.0, 80.0], [1.0, 2.0, 3.0, 4.0])
    gen = generated([(NAN, 1.0), (NAN, 2.0),  # 40: no finite validation accuracy, miss NaN
                     (57.0, 3.0), (57.0, 3.0),  # 60: miss -3
                     (72.0, 4.0), (72.0, 4.0),  # 70: miss +2
                     (85.0, 5.0), (85.0, 5.0)])  # 90: miss -5
    report, judge, _ = run(monkeypatch, pop, gen, [40.0, 40.0, 60.0, 60.0, 70.0, 70.0, 90.0, 90.0])
    pr = report["prompted"]
    assert math.isnan(pr["calibration"][0]["miss"]) and pr["calibration"][0]["honoured"] is False
    assert [r["honoured"] for r in pr["calibration"]] == [False] * 4
    assert pr["highest_honoured"] is None and pr["judged_prompt"] == 70.0
    assert pr["judged_originals"] == 2  # >= 69: 70, 80
    assert torch.equal(judge.calls[0]["original"], pop.params[[2, 3]])
    assert torch.equal(judge.calls[0]["generated"], gen[4:6])
    assert [r["extrapolation"] for r in pr["calibration"]] == [False, False, False, True]


def test_calibrate_needs_one_prompt_per_model(monkeypatch):
    pop = population([50.0, 60.0], [1.0, 2.0])
    gen = generated([(50.0, 1.0)] * 3)
    for bad in ([50.0, 50.0], [[50.0, 50.0, 50.0]], [50.0] * 4):
        with pytest.raises(ValueError) as e:
            run(monkeypatch, pop, gen, bad)
        shape = tuple(torch.tensor(bad).shape)
        assert str(e.value) == f"one prompt per generated model is needed, got {shape} for 3 models"


# --- format_calibration ---------------------------------------------------------------------------

def stats(median, mean=None, std=None, best=None, n=3):
    return {"median": median, "mean": mean if mean is not None else median, "std": std, "best": best, "n": n}


def report(highest=80.0, judged=80.0, extrapolation=True):
    rows = [
        {"prompt": 60.0, "n": 4, "val": stats(60.5, 60.25, 0.5), "test": stats(58.0, best=59.125), "miss": 0.5,
         "honoured": True, "extrapolation": False},
        {"prompt": 80.0, "n": 4, "val": stats(78.0, 77.5, NAN), "test": stats(NAN, best=None), "miss": -2.0,
         "honoured": False, "extrapolation": False},
        {"prompt": 95.5, "n": 2, "val": stats(90.0, 89.0, 1.0), "test": stats(88.25, best=89.0), "miss": -5.5,
         "honoured": False, "extrapolation": extrapolation},
    ]
    return {"prompted": {"calibration": rows, "honoured_within": 1.0, "highest_honoured": highest,
                         "judged_prompt": judged, "judged_originals": 5, "prompt_range": [40.0, 92.346],
                         "original_val": {"median": 70.125, "n": 12},
                         "best_original_val": {"val": 92.346, "test": 91.0}}}


HEAD = ["Prompted generation: the checkpoints' validation accuracy spans 40.00..92.35 (median 70.12, n = 12); a "
        "prompt is honoured when its models' median validation accuracy is within 1 points of it.", "",
        "| prompt (val %) | models | val median | val mean ± std | test median | test best | miss | honoured |",
        "|---:|---:|---:|---:|---:|---:|---:|---|",
        "| 60.00 | 4 | 60.50 | 60.25 ± 0.50 | 58.00 | 59.12 | +0.50 | yes |",
        "| 80.00 | 4 | 78.00 | 77.50 ± — | — | — | -2.00 | no |"]


def test_format_calibration_honoured_with_extrapolation():
    text = format_calibration(report())
    assert text.split("\n") == HEAD + [
        "| 95.50 | 2 | 90.00 | 89.00 ± 1.00 | 88.25 | 89.00 | -5.50 | no (above every checkpoint) |", "",
        "Highest prompt honoured: 80.00. The table below judges its models against the 5 checkpoints whose "
        "validation accuracy reaches it (>= prompt - 1) and the baselines made from them, on the test set.",
        "Above every checkpoint (best checkpoint: validation 92.35, test 91.00): prompt 95.50 gave validation "
        "median 90.00, test median 88.25."]


def test_format_calibration_none_honoured_no_extrapolation():
    r = report(highest=None, judged=60.0, extrapolation=False)
    r["prompted"]["honoured_within"] = 1.5
    r["prompted"]["calibration"][0]["extrapolation"] = True
    r["prompted"]["calibration"][0]["honoured"] = False
    text = format_calibration(r)
    head = [HEAD[0].replace("within 1 points", "within 1.5 points")] + HEAD[1:4] + [
        HEAD[4].replace("| yes |", "| no (above every checkpoint) |"), HEAD[5]]
    assert text.split("\n") == head + [
        "| 95.50 | 2 | 90.00 | 89.00 ± 1.00 | 88.25 | 89.00 | -5.50 | no |", "",
        "No prompt was honoured; the table below judges the models of prompt 60.00, the one missed by least.",
        "Above every checkpoint (best checkpoint: validation 92.35, test 91.00): prompt 60.00 gave validation "
        "median 60.50, test median 58.00."]


def test_format_calibration_two_rows_above():
    r = report()
    r["prompted"]["calibration"][1]["extrapolation"] = True
    last = format_calibration(r).split("\n")[-1]
    assert last == ("Above every checkpoint (best checkpoint: validation 92.35, test 91.00): prompt 80.00 gave "
                    "validation median 78.00, test median —; prompt 95.50 gave validation median 90.00, test median "
                    "88.25.")


# --- the plot -------------------------------------------------------------------------------------

def plot_report():
    rows = [{"prompt": 50.0, "val": {"median": 51.0}, "test": {"median": 49.0}},
            {"prompt": 70.0, "val": {"median": 68.0}, "test": {"median": 66.5}},
            {"prompt": 90.0, "val": {"median": 85.0}, "test": {"median": 84.0}}]
    return {"prompted": {"calibration": rows, "prompt_range": [45.0, 88.0],
                         "per_model": {"prompt": [50.0, 50.0, 70.0, 90.0], "val_accuracy": [51.0, 52.0, 68.0, 85.0],
                                       "test_accuracy": [49.0, 48.0, 66.5, 84.0]}}}


def x_marker_path():
    fig, ax = plt.subplots()
    path = ax.scatter([0.0], [0.0], marker="x").get_paths()[0].vertices.tolist()
    plt.close(fig)
    return path


def test_plot_calibration(monkeypatch, tmp_path):
    seen = {}

    def fake_save(fig, out_dir):
        seen.update(fig=fig, out_dir=out_dir)
        return "saved"

    monkeypatch.setattr(cal, "save_calibration", fake_save)
    with matplotlib.rc_context({"font.size": 13}):  # the title's 10 is its own, not the default
        assert plot_calibration(plot_report(), tmp_path) == "saved"
    fig = seen["fig"]
    assert seen["out_dir"] is tmp_path
    try:
        assert tuple(fig.get_size_inches()) == (6.0, 4.5)
        (ax,) = fig.axes
        val, test = ax.collections
        assert val.get_offsets().tolist() == [[50, 51], [50, 52], [70, 68], [90, 85]]
        assert test.get_offsets().tolist() == [[50, 49], [50, 48], [70, 66.5], [90, 84]]
        assert val.get_sizes().tolist() == [8] and test.get_sizes().tolist() == [8]
        assert val.get_alpha() == 0.35 and test.get_alpha() == 0.35
        assert val.get_label() == "generated, validation" and test.get_label() == "generated, test"
        assert test.get_paths()[0].vertices.tolist() == x_marker_path()
        assert val.get_paths()[0].vertices.tolist() != x_marker_path()
        vmed, tmed, diag = ax.lines
        assert (list(vmed.get_xdata()), list(vmed.get_ydata())) == ([50, 70, 90], [51, 68, 85])
        assert (vmed.get_marker(), vmed.get_linestyle(), vmed.get_label()) == ("o", "-", "validation median")
        assert (list(tmed.get_xdata()), list(tmed.get_ydata())) == ([50, 70, 90], [49, 66.5, 84])
        assert (tmed.get_marker(), tmed.get_linestyle(), tmed.get_label()) == ("s", "--", "test median")
        assert (list(diag.get_xdata()), list(diag.get_ydata())) == ([50, 90], [50, 90])
        (span,) = ax.patches
        assert (span.get_x(), span.get_width()) == (45.0, 43.0)
        assert span.get_label() == "checkpoints' validation range"
        assert ax.get_title() == "accuracy asked for vs accuracy given" and ax.title.get_fontsize() == 10
    finally:
        plt.close(fig)


def test_finish_axes():
    fig, ax = plt.subplots()
    try:
        ax.plot([0, 1], [0, 1], label="mine")
        finish_axes(ax, [70.0, 55.0, 90.0, 60.0], (50.0, 85.0), "the range")
        diag = ax.lines[-1]
        assert (list(diag.get_xdata()), list(diag.get_ydata())) == ([55.0, 90.0], [55.0, 90.0])
        assert to_rgba(diag.get_color()) == to_rgba("gray") and diag.get_linewidth() == 1
        assert diag.get_label() == "achieved = prompted"
        (span,) = ax.patches
        assert (span.get_x(), span.get_width()) == (50.0, 35.0)
        assert span.get_facecolor() == to_rgba("gray", 0.1) and span.get_label() == "the range"
        assert ax.get_xlabel() == "prompted validation accuracy (%)"
        assert ax.get_ylabel() == "achieved accuracy (%)"
        legend = ax.get_legend()
        assert [t.get_text() for t in legend.get_texts()] == ["mine", "achieved = prompted", "the range"]
        assert legend.get_texts()[0].get_fontsize() == 7
    finally:
        plt.close(fig)


def test_save_calibration(tmp_path):
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([0, 1], [0, 1])
    other = plt.figure()  # the current figure is another one: only `fig` is closed
    laid_out = []
    fig.tight_layout = lambda *a, **k: laid_out.append(True)
    try:
        path = save_calibration(fig, str(tmp_path))
        assert path == tmp_path / "calibration.png" and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert laid_out == [True]
        assert not plt.fignum_exists(fig.number) and plt.fignum_exists(other.number)
    finally:
        plt.close(other)
        plt.close(fig)

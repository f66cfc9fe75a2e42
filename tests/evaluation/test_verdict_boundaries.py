"""The verdict's thresholds on both sides: COPY_RATIO (copies / close), 1 (close / new), SAME_ACCURACY
(level / above / below) for the originals and every baseline, and the degenerate cases. Synthetic
measures, so each case sits exactly where it is meant to (a planted COPY_RATIO of 0.5 or a level
band of 0.2 fails here)."""
import math

import pytest

from pdiff_fast.evaluation.novelty import BASELINES, COPY_RATIO, SAME_ACCURACY, verdict

TAU = 0.004


def sets(ratio, acc=97.0, orig=97.0, baselines=None, median=None, iou=(0.8, 0.9)):
    median = (ratio * TAU if ratio is not None else 0.0) if median is None else median
    out = {"generated": {"nn_distance": {"median": median}, "distance_ratio": ratio,
                         "accuracy": {"median": acc}, "max_iou_mean": iou[0], "new_and_better": 0.25},
           "original": {"accuracy": {"median": orig}, "new_and_better": 0.1}}
    for name, a in (baselines or {}).items():
        out[name] = {"accuracy": {"median": a}, "max_iou_mean": iou[1]}
    return out


@pytest.mark.parametrize("ratio, label", [
    (0.0, "copies"), (COPY_RATIO, "copies"), (COPY_RATIO * (1 + 1e-9), "close"), (0.2, "close"),
    (0.999, "close"), (1.0, "new"), (1.001, "new"), (40.0, "new"),
])
def test_how_new_on_both_sides_of_each_threshold(ratio, label):
    v = verdict(sets(ratio), TAU)
    assert v["label"] == label
    assert v["distance_ratio"] == ratio and v["median_distance"] == pytest.approx(ratio * TAU)


def test_one_original_and_no_finite_model():
    assert verdict(sets(None, median=0.0), math.nan)["label"] == "copies"
    assert verdict(sets(None, median=1e-6), math.nan)["label"] == "undetermined"
    v = verdict(sets(2.0, median=math.nan), TAU)
    assert v["label"] == "no finite models" and v["accuracy"] == "cannot be compared with"


@pytest.mark.parametrize("delta, word", [
    (0.0, "level with"), (SAME_ACCURACY, "level with"), (-SAME_ACCURACY, "level with"),
    (SAME_ACCURACY + 1e-6, "above"), (-SAME_ACCURACY - 1e-6, "below"), (0.15, "above"), (-3.0, "below"),
])
def test_accuracy_against_the_originals_on_both_sides_of_the_level_band(delta, word):
    base = 96.5  # exactly representable, so delta is not blurred by rounding at the boundary
    assert verdict(sets(2.0, acc=base + delta, orig=base), TAU)["accuracy"] == word


def test_baselines_beaten_only_beyond_the_level_band():
    acc = 96.5
    rivals = {BASELINES[0]: acc - SAME_ACCURACY - 1e-6, BASELINES[1]: acc - SAME_ACCURACY,
              BASELINES[2]: acc + SAME_ACCURACY + 1e-6, BASELINES[3]: acc}
    v = verdict(sets(2.0, acc=acc, baselines=rivals), TAU)
    assert v["beats"] == [BASELINES[0]]
    assert f"above {BASELINES[0]}" in v["text"] and f"level with {BASELINES[1]}" in v["text"]
    assert f"below {BASELINES[2]}" in v["text"] and f"level with {BASELINES[3]}" in v["text"]
    v = verdict(sets(2.0, acc=math.nan, baselines=rivals), TAU)
    assert v["accuracy"] == "cannot be compared with" and v["beats"] == []


def test_wrong_prediction_overlap_against_matched_noise():
    less = verdict(sets(2.0, baselines={"noise matched": 97.0}, iou=(0.80, 0.81)), TAU)["text"]
    same = verdict(sets(2.0, baselines={"noise matched": 97.0}, iou=(0.81, 0.81)), TAU)["text"]
    assert "overlap the originals' less than" in less and "as much or more" in same


def test_a_difference_of_exactly_the_band_is_level():
    # SAME_ACCURACY - 0.0 is exactly SAME_ACCURACY in floating point: the band is closed
    assert verdict(sets(2.0, acc=SAME_ACCURACY, orig=0.0), TAU)["accuracy"] == "level with"
    assert verdict(sets(2.0, acc=0.0, orig=SAME_ACCURACY), TAU)["accuracy"] == "level with"

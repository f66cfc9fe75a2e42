"""Prompts: checked with one clear line each, spread over the models in blocks, normalised to the
population's range; the default sweep covers the range and goes above it."""
import math

import pytest
import torch

from pdiff_fast.prompted.prompts import SWEEP_ABOVE, SWEEP_INSIDE, check_prompts, default_prompts, normalise, spread


def test_default_sweep_spans_the_range_and_goes_above():
    p = default_prompts(40.0, 90.0)
    assert p == [40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 91.0, 92.0]
    assert len(p) == SWEEP_INSIDE + len(SWEEP_ABOVE)
    assert default_prompts(50.0, 99.5)[-2:] == [99.5, 100.0]  # capped at 100: 100.5 and 101.5 are one prompt


@pytest.mark.parametrize("bad, match", [
    (math.nan, "not a finite number"), (math.inf, "not a finite number"), ("97", "not a finite number"),
    (True, "not a finite number"), (-1.0, r"outside \[0, 100\]"), (100.5, r"outside \[0, 100\]"),
    (39.99, r"outside the population's validation accuracies \[40.00, 90.00\]; pass --extrapolate"),
    (90.01, "pass --extrapolate"),
])
def test_bad_prompts_are_one_line_naming_the_prompt(bad, match):
    with pytest.raises(ValueError, match=match) as e:
        check_prompts([bad], 40.0, 90.0, extrapolate=False)
    assert "\n" not in str(e.value) and repr(bad) in str(e.value) or str(bad) in str(e.value)


def test_range_bounds_are_inside_and_extrapolate_allows_beyond():
    assert check_prompts([40, 90], 40.0, 90.0, extrapolate=False) == [40.0, 90.0]
    assert check_prompts([95.5, 10], 40.0, 90.0, extrapolate=True) == [95.5, 10.0]
    with pytest.raises(ValueError, match=r"outside \[0, 100\]"):  # extrapolation stays within [0, 100]
        check_prompts([101], 40.0, 90.0, extrapolate=True)
    with pytest.raises(ValueError, match="no prompt"):
        check_prompts([], 40.0, 90.0, extrapolate=True)


def test_spread_gives_each_prompt_a_contiguous_block():
    assert spread([1.0, 2.0, 3.0], 7).tolist() == [1, 1, 1, 2, 2, 3, 3]
    assert spread([5.0], 3).tolist() == [5, 5, 5]
    assert spread([1.0, 2.0], 2).tolist() == [1, 2]
    with pytest.raises(ValueError, match="2 models cannot cover 3 prompts"):
        spread([1.0, 2.0, 3.0], 2)


def test_normalise_maps_the_range_to_zero_one():
    a = normalise(torch.tensor([40.0, 65.0, 90.0, 95.0]), 40.0, 90.0)
    assert a.shape == (4, 1)
    torch.testing.assert_close(a.flatten(), torch.tensor([0.0, 0.5, 1.0, 1.1]))
    with pytest.raises(ValueError, match="do not spread"):
        normalise(torch.tensor([50.0]), 50.0, 50.0)

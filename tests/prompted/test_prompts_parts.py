"""pdiff_fast.prompted.prompts' parts, value by value: the default sweep (its grid, rounding, the cap
at 100), every check of a prompt with its whole message and its boundaries, the spread's blocks and
dtype, the normalisation's values and dtype. Written against the mutants mutmut left alive
(tests/mutation, docs/mutation-scores.md)."""
import math
import re

import pytest
import torch

from pdiff_fast.prompted.prompts import check_prompts, default_prompts, normalise, spread


def test_the_default_sweep_by_hand():
    # six from lo to hi (step (hi - lo) / 5), then hi + 1 and hi + 2
    assert default_prompts(0.0, 50.0) == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 51.0, 52.0]
    assert default_prompts(20.0, 30.0) == [20.0, 22.0, 24.0, 26.0, 28.0, 30.0, 31.0, 32.0]


def test_the_default_sweep_is_rounded_to_four_decimals_sorted_and_unique():
    p = default_prompts(10.0, 10.1)  # steps of 0.02: 10.02 + float noise is rounded away
    assert p == [10.0, 10.02, 10.04, 10.06, 10.08, 10.1, 11.1, 12.1]
    assert default_prompts(40.123456, 41.0) == [40.1235, 40.2988, 40.4741, 40.6494, 40.8247, 41.0, 42.0, 43.0]
    assert all(isinstance(x, float) for x in default_prompts(40.123456, 41.0))
    # the cap at 100: both points above 99.5 are 100, one prompt; above 99 only the second is capped
    assert default_prompts(89.5, 99.5) == [89.5, 91.5, 93.5, 95.5, 97.5, 99.5, 100.0]
    assert default_prompts(89.0, 99.0) == [89.0, 91.0, 93.0, 95.0, 97.0, 99.0, 100.0]
    assert default_prompts(90.0, 98.5) == [90.0, 91.7, 93.4, 95.1, 96.8, 98.5, 99.5, 100.0]
    assert default_prompts(50.0, 50.0) == [50.0, 51.0, 52.0]  # no spread: one inside point


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "97", None, True, False, [50.0]])
def test_a_prompt_that_is_not_a_finite_number(bad):
    with pytest.raises(ValueError) as e:
        check_prompts([50.0, bad], 0.0, 100.0, extrapolate=True)
    assert str(e.value) == f"prompt accuracy {bad!r} is not a finite number (a validation accuracy in %)"


@pytest.mark.parametrize("bad", [-0.01, -1, 100.01, 101])
def test_a_prompt_outside_0_100(bad):
    with pytest.raises(ValueError) as e:
        check_prompts([bad], -10.0, 200.0, extrapolate=True)
    assert str(e.value) == f"prompt accuracy {bad} is outside [0, 100] (a validation accuracy in %)"
    with pytest.raises(ValueError, match=re.escape(f"prompt accuracy {bad} is outside [0, 100]")):
        check_prompts([bad], -10.0, 200.0, extrapolate=False)


@pytest.mark.parametrize("bad", [39.99, 90.01, 0, 100])
def test_a_prompt_outside_the_populations_range_without_extrapolate(bad):
    with pytest.raises(ValueError) as e:
        check_prompts([60.0, bad], 40.0, 90.0, extrapolate=False)
    assert str(e.value) == (f"prompt accuracy {bad} is outside the population's validation accuracies "
                            f"[40.00, 90.00]; pass --extrapolate (prompt_extrapolate) to ask anyway")
    with pytest.raises(ValueError, match=r"\[40\.12, 89\.99\]"):
        check_prompts([bad], 40.1234, 89.9876, extrapolate=False)


def test_the_boundaries_are_inside():
    assert check_prompts([0, 100, 0.0, 100.0], 0.0, 100.0, extrapolate=False) == [0.0, 100.0, 0.0, 100.0]
    assert check_prompts([40, 90, 65.5], 40.0, 90.0, extrapolate=False) == [40.0, 90.0, 65.5]
    assert check_prompts([0, 100], 40.0, 90.0, extrapolate=True) == [0.0, 100.0]
    assert check_prompts([50], 50.0, 50.0, extrapolate=False) == [50.0]


def test_prompts_come_back_as_floats_in_order():
    out = check_prompts((70, 45, 80.5), 40.0, 90.0, extrapolate=False)
    assert out == [70.0, 45.0, 80.5] and all(type(x) is float for x in out)
    out = check_prompts(iter([95, 5]), 40.0, 90.0, extrapolate=True)
    assert out == [95.0, 5.0] and all(type(x) is float for x in out)


def test_no_prompt():
    for extrapolate in (False, True):
        with pytest.raises(ValueError) as e:
            check_prompts([], 40.0, 90.0, extrapolate=extrapolate)
        assert str(e.value) == "no prompt accuracy given"


def test_spread_by_hand():
    assert spread([1.0, 2.0, 3.0], 3).tolist() == [1.0, 2.0, 3.0]
    assert spread([1.0, 2.0, 3.0], 4).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert spread([1.0, 2.0, 3.0], 8).tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 3.0, 3.0]
    assert spread([10.0, 20.0], 5).tolist() == [10.0, 10.0, 10.0, 20.0, 20.0]
    assert spread([7.5], 1).tolist() == [7.5]


def test_spread_is_float32_whatever_the_prompts():
    s = spread([1, 2], 3)
    assert s.dtype == torch.float32 and s.tolist() == [1.0, 1.0, 2.0]
    assert spread([0.1], 2).dtype == torch.float32


def test_spread_needs_a_model_per_prompt():
    with pytest.raises(ValueError) as e:
        spread([1.0, 2.0, 3.0, 4.0], 3)
    assert str(e.value) == "3 models cannot cover 4 prompts (one model per prompt at least)"
    with pytest.raises(ValueError, match="0 models cannot cover 1 prompts"):
        spread([1.0], 0)


def test_normalise_by_hand():
    a = normalise(torch.tensor([20.0, 30.0, 45.0, 70.0, 10.0]), 20.0, 70.0)
    assert a.shape == (5, 1)
    torch.testing.assert_close(a, torch.tensor([[0.0], [0.2], [0.5], [1.0], [-0.2]]))


def test_normalise_is_float32_whatever_the_accuracies():
    a = normalise(torch.tensor([20.0, 45.0], dtype=torch.float64), 20.0, 70.0)
    assert a.dtype == torch.float32 and a.flatten().tolist() == [0.0, 0.5]
    a = normalise(torch.tensor([20, 45]), 20.0, 70.0)
    assert a.dtype == torch.float32 and a.flatten().tolist() == [0.0, 0.5]


def test_normalise_needs_a_spread():
    with pytest.raises(ValueError) as e:
        normalise(torch.tensor([50.0]), 50.0, 50.0)
    assert str(e.value) == ("the population's validation accuracies do not spread (all 50.0); prompting needs a "
                            "range")
    with pytest.raises(ValueError, match="do not spread"):
        normalise(torch.tensor([50.0]), 60.0, 50.0)
    torch.testing.assert_close(normalise(torch.tensor([50.0]), 50.0, 50.001), torch.tensor([[0.0]]))

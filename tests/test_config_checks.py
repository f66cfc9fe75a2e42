"""The config's field checks value by value: each kind of check on both sides of its bounds, with
its exact message, and the source named by each way a config is read. Written against the mutants
mutmut left alive (docs/mutation-scores.md)."""
import json
import math

import pytest
import torch

from pdiff_fast import config as c
from pdiff_fast.config import Config, ConfigError


def F(name, *args, **kwargs):
    """A check made by the factory `name` when the test runs (not at import: mutation testing swaps
    the factory's code per test)."""
    return lambda: getattr(c, name)(*args, **kwargs)


def P(name):
    return lambda: getattr(c, name)


CASES = [  # (the check, value, the problem it reports or None)
    (F("_int", 1), 1, None), (F("_int", 1), 0, "must be at least 1, got 0"), (F("_int"), -5, None),
    (F("_int", 1, 1000), 1000, None), (F("_int", 1, 1000), 1001, "must be at most 1000, got 1001"),
    (F("_int"), None, "expected an integer, got None"), (F("_int", none_ok=True), None, None),
    (F("_int", 1, none_ok=True), "3", "expected an integer or null, got '3'"),
    (F("_int"), True, "expected an integer, got True"), (F("_int"), 2.0, "expected an integer, got 2.0"),
    (F("_num", 0, lo_open=True), 0, "must be greater than 0, got 0"), (F("_num", 0, lo_open=True), 1e-9, None),
    (F("_num", 0), 0, None), (F("_num", 0), -0.5, "must be at least 0, got -0.5"), (F("_num"), -7.5, None),
    (F("_num", 0, 1), 1, None), (F("_num", 0, 1), 1.5, "must be at most 1, got 1.5"),
    (F("_num", 0, 1, hi_open=True), 1, "must be less than 1, got 1"), (F("_num", 0, 1, hi_open=True), 0.999, None),
    (F("_num"), math.nan, "expected a finite number, got nan"), (F("_num"), True, "expected a finite number, got True"),
    (F("_choice", "a", "b"), "a", None), (F("_choice", "a", "b"), "c", "must be one of ['a', 'b'], got 'c'"),
    (F("_choice", "1"), 1, "must be one of ['1'], got 1"),
    (F("_type", int, "an int"), 3, None), (F("_type", int, "an int"), True, "expected an int, got True"),
    (F("_type", str, "a name"), 3, "expected a name, got 3"), (F("_type", bool, "true or false"), True, None),
    (P("_subset"), "layer*", None), (P("_subset"), ["a.weight"], None),
    *[(P("_subset"), v, f"expected a pattern string or a non-empty list of parameter names, got {v!r}")
      for v in ("", 5, [], ["a", ""], [3])],
    (P("_channels"), None, None), (P("_channels"), [1, 2], None),
    *[(P("_channels"), v, f"expected null or a non-empty list of positive integers, got {v!r}")
      for v in ([0, 4], [], [1, 2.0], "8")],
    (P("_sigmas"), [0, 0.1], None), (P("_sigmas"), [], None),
    *[(P("_sigmas"), v, f"expected a list of non-negative numbers, got {v!r}") for v in ([-1], [math.nan], 0.1)],
    (P("_cuda_graph"), "auto", None), (P("_cuda_graph"), True, None), (P("_cuda_graph"), False, None),
    (P("_cuda_graph"), "yes", "expected true, false or 'auto', got 'yes'"),
    (P("_device"), "cpu", None), (P("_device"), "auto", None),
    *[(P("_device"), v, f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {v!r}") for v in ("gpu", 3, "abcde1", "cuda:")],
]


@pytest.mark.parametrize("make, value, problem", CASES)
def test_each_check_on_both_sides_of_its_bounds(make, value, problem):
    assert make()(value) == problem


@pytest.mark.parametrize("value", ["cuda", "cuda:0", "cuda:1", "cuda:12"])
def test_a_cuda_device_on_a_machine_without_one(value, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert c._device(value) == f"{value!r} was asked for but CUDA is not available on this machine (use 'cpu' or 'auto')"


def test_cuda_device_numbers_are_checked_against_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert c._device("cuda") is None and c._device("cuda:1") is None
    assert c._device("cuda:2") == "'cuda:2': this machine has 2 CUDA device(s)"
    assert c._device("cuda:12") == "'cuda:12': this machine has 2 CUDA device(s)"


def test_every_way_of_reading_a_config_names_its_source(tmp_path):
    assert c.check_fields({"k": 0, "seed": 1}) == ["config: field 'k': must be at least 1, got 0"]
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"k": 0, "eta": -1})
    assert str(e.value) == "config: field 'k': must be at least 1, got 0\nconfig: field 'eta': must be at least 0, got -1"
    with pytest.raises(ConfigError, match=r"^config: a config must be a JSON object of fields, not list$"):
        Config.from_dict([1])
    with pytest.raises(ConfigError, match=r"^config: field 'k': must be at least 1, got 0$"):
        Config(k=0).validate()
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"k": 0}))
    with pytest.raises(ConfigError, match=rf"^{path}: field 'k': must be at least 1, got 0$"):
        Config.from_file(path)
    path.write_text("{broken")
    with pytest.raises(ConfigError, match=rf"^{path}: config is not valid JSON \("):
        Config.from_file(path)

"""The config's field checks value by value: each kind of check on both sides of its bounds, with
its exact message, and the source named by each way a config is read. Written against the mutants
mutmut left alive (docs/mutation-scores.md)."""
import json
import math
import os
import sys
from pathlib import Path

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


# --- bounds the CLI fuzzer (tests/test_cli_fuzz.py) found missing --------------------------------------------
def test_integers_are_at_most_int64_and_numbers_fit_a_float():
    assert c._int()(2**63 - 1) is None and c._int(1)(2**63 - 1) is None
    assert c._int(1)(2**63) == "must be at most 9223372036854775807, got 9223372036854775808"
    assert c._int(1, none_ok=True)(10**400) == f"must be at most 9223372036854775807, got {10**400}"
    big = int(sys.float_info.max)
    assert c._num()(big) is None and c._num()(-big) is None and c._num(0)(2**1023) is None
    assert c._num()(2**1024) == f"expected a finite number, got {2**1024}"  # math.isfinite raised OverflowError
    assert c._num()(-(2**1024)) == f"expected a finite number, got {-(2**1024)}"
    assert c._sigmas([10**400]) == f"expected a list of non-negative numbers, got [{10**400}]"


@pytest.mark.parametrize("value", ["cuda:01", "cuda:00", "cuda:²", "cuda:٣", "cuda:+1", "cuda: 1", "cuda:-1", "Cuda"])
def test_device_names_torch_refuses_are_refused(value, monkeypatch):
    """Only the spellings torch.device takes (ASCII digits, no leading zero), with CUDA or without."""
    for available in (False, True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        assert c._device(value) == f"expected 'auto', 'cpu', 'cuda' or 'cuda:N', got {value!r}"


def test_a_device_number_of_any_length_is_checked_against_the_count(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    for value in ("cuda:" + "9" * 19, "cuda:" + "9" * 20, "cuda:" + "9" * 5000):  # int() of 4300+ digits raises
        assert c._device(value) == f"{value!r}: this machine has 2 CUDA device(s)"
    assert c._device("cuda:10") == "'cuda:10': this machine has 2 CUDA device(s)" and c._device("cuda:0") is None


# --- denoiser widths: AE_CNN_bottleneck takes exactly 4, ODUnet any number ---------------------------------------
AE_WIDTHS = "field 'denoiser_channels': the AE_CNN_bottleneck denoiser takes exactly 4 widths, got {n}: {v!r}"


@pytest.mark.parametrize("widths", [[4, 8, 16], [4, 8, 16, 32, 64], [8], [4, 8]])
def test_ae_cnn_bottleneck_needs_4_widths(widths):
    for d in ({"denoiser_channels": widths}, {"denoiser": "AE_CNN_bottleneck", "denoiser_channels": widths}):
        with pytest.raises(ConfigError) as e:
            Config.from_dict(d, "my.json")
        assert e.value.problems == ["my.json: " + AE_WIDTHS.format(n=len(widths), v=widths)]
    with pytest.raises(ConfigError) as e:  # a config changed after it was read is checked the same way
        Config(denoiser_channels=widths).validate("command-line flags")
    assert e.value.problems == ["command-line flags: " + AE_WIDTHS.format(n=len(widths), v=widths)]


def test_4_widths_pass_and_odunet_takes_any_number():
    for d in ({"denoiser_channels": [4, 8, 16, 32]}, {"denoiser": "AE_CNN_bottleneck", "denoiser_channels": [1] * 4},
              {"denoiser_channels": None}, {"denoiser": "ODUnet", "denoiser_channels": [4, 8, 16]},
              {"denoiser": "ODUnet", "denoiser_channels": [4, 8, 16, 32, 64]}, {"denoiser": "ODUnet",
                                                                                 "denoiser_channels": [8]}):
        Config.from_dict(d, "my.json").validate()
    # widths that are wrong on their own, or a denoiser that is, are reported once, by their own check
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"denoiser_channels": [0, 4]}, "my.json")
    assert e.value.problems == ["my.json: field 'denoiser_channels': expected null or a non-empty list of positive "
                                "integers, got [0, 4]"]
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"denoiser": "unet", "denoiser_channels": [4, 8]}, "my.json")
    assert e.value.problems == ["my.json: field 'denoiser': must be one of ['AE_CNN_bottleneck', 'ODUnet'], got 'unet'"]


@pytest.mark.parametrize("widths, ok", [([16, 32, 64, 128], True), ([16, 32, 64], False),
                                        ([8, 16, 32, 64, 128], False)])
def test_the_tasks_generator_needs_4_widths(widths, ok):
    from pdiff_fast.tasks.config import TaskConfig

    if ok:
        assert TaskConfig.from_dict({"denoiser_channels": widths}, "t.json").denoiser_channels == widths
        return
    with pytest.raises(ConfigError) as e:
        TaskConfig.from_dict({"denoiser_channels": widths}, "t.json")
    assert e.value.problems == [f"t.json: field 'denoiser_channels': the generator's AE_CNN_bottleneck denoiser takes "
                                f"exactly 4 widths, got {len(widths)}: {widths!r}"]


def test_a_bad_encoder_width_is_one_line():
    from pdiff_fast.tasks.config import TaskConfig

    for value, problem in ((True, "expected an integer, got True"), (2, "must be at least 4, got 2"),
                           (10, "must be a multiple of 4 (the set encoder's attention heads)")):
        with pytest.raises(ConfigError) as e:
            TaskConfig.from_dict({"encoder_width": value}, "t.json")
        assert e.value.problems == [f"t.json: field 'encoder_width': {problem}"]


# --- read_config_file: what is not a config file's JSON object -----------------------------------------------------
def test_a_path_that_is_not_a_regular_file(tmp_path):
    """A FIFO would block the read until a writer comes; a device is no config either."""
    fifo = tmp_path / "c.json"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/null")):
        with pytest.raises(ConfigError) as e:
            c.read_config_file(path)
        assert e.value.problems == [f"{path}: is not a regular file (a FIFO, socket or device), not a JSON config file"]
    (tmp_path / "link").symlink_to(fifo)
    with pytest.raises(ConfigError, match="is not a regular file"):
        c.read_config_file(tmp_path / "link")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="no such config file"):
        c.read_config_file(tmp_path / "dangling")
    with pytest.raises(ConfigError, match=r"cannot read the config file \(File name too long\)$"):
        c.read_config_file(tmp_path / ("a" * 300))


@pytest.mark.parametrize("text, what", [("null", "null"), ("true", "true"), ("3", "a number"), ("1e400", "a number"),
                                        ('"ab"', "a string"), ("[1, 2]", "an array"), ('[["k", 3]]', "an array")])
def test_a_config_file_that_is_not_an_object(tmp_path, text, what):
    path = tmp_path / "c.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        c.read_config_file(path)
    assert e.value.problems == [f"{path}: a config must be a JSON object of fields, not {what}"]


def test_json_nested_too_deeply(tmp_path):
    path = tmp_path / "c.json"
    too_deep = [f"{path}: config is nested too deeply (JSON arrays and objects more than {c.MAX_DEPTH} levels deep)"]
    inner = c.MAX_DEPTH - 2  # {"model_kwargs": {"a": [[...]]}}: two levels of objects around the arrays
    for text in ("[" * 100000, "[" * 100000 + "]" * 100000, '{"a":' * 100000,
                 '{"model_kwargs": {"a": ' + "[" * (inner + 1) + "]" * (inner + 1) + "}}"):
        path.write_text(text)
        with pytest.raises(ConfigError) as e:
            c.read_config_file(path)
        assert e.value.problems == too_deep
    path.write_text('{"model_kwargs": {"a": ' + "[" * inner + "]" * inner + "}}")
    assert Config.from_file(path).validate().model_kwargs["a"]  # MAX_DEPTH levels are read and checked


def test_an_integer_json_cannot_convert(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"k": 1' + "0" * 5000 + "}")
    with pytest.raises(ConfigError, match=rf"^{path}: config is not valid JSON \(Exceeds the limit"):
        c.read_config_file(path)


def test_a_config_file_larger_than_a_config_can_be_is_not_read(tmp_path, monkeypatch):
    import pdiff_fast.config as config_lib

    p = tmp_path / "big.json"
    p.write_text('{"k": 5}')
    monkeypatch.setattr(config_lib, "MAX_CONFIG_BYTES", 8)
    assert config_lib.read_config_file(p) == {"k": 5}  # 8 bytes: at the limit
    p.write_text('{"k": 50}')
    with pytest.raises(config_lib.ConfigError) as exc:
        config_lib.read_config_file(p)
    assert exc.value.problems == [f"{p}: 9 bytes, more than a config file can be (8 bytes)"]


def test_a_config_name_with_a_nul_byte_is_one_problem():
    with pytest.raises(ConfigError) as exc:
        c.read_config_file("bad\0name.json")
    assert exc.value.problems == ["bad\0name.json: cannot read the config file (embedded null byte)"]

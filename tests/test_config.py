"""Config validation: every field's type and range is checked when the config is read, before any
work, with one line per problem naming the field and the file."""
import json

import pytest
import torch

from pdiff_fast.config import Config, ConfigError

BAD = [  # (field, value, words the message must contain) -- the reliability issue's probes and more
    ("k", "abc", "expected an integer"),
    ("epochs", "3", "expected an integer"),
    ("ae_lr", "0.001", "expected a finite number"),
    ("seed", "x", "expected an integer"),
    ("device", "tpu", "'auto', 'cpu', 'cuda'"),
    ("noise_sigmas", 0.01, "list of non-negative numbers"),
    ("diffusion_batch_size", 0, "at least 1"),
    ("ae_steps", -5, "at least 1"),
    ("epochs", -1, "at least 1"),
    ("sample_steps", 0, "at least 1"),
    ("sample_steps", 1001, "at most 1000"),
    ("memory_budget_mb", 0, "at least 1"),
    ("memory_budget_mb", -1, "at least 1"),
    ("batch_size", 0, "at least 1"),
    ("num_samples", 0, "at least 1"),
    ("k", True, "expected an integer"),
    ("ae_lr", float("nan"), "finite number"),
    ("ema_decay", 1.0, "less than 1"),
    ("denoiser_channels", [8, 0], "positive integers"),
    ("subset", [], "non-empty list"),
    ("sampler", "euler", "one of"),
    ("standardize", "yes", "true or false"),
    ("cuda_graph", "yes", "expected true, false or 'auto'"),
    ("cuda_graph", 1, "expected true, false or 'auto'"),
]


@pytest.mark.parametrize("field,value,words", BAD, ids=[f"{f}={v!r}" for f, v, _ in BAD])
def test_bad_field_is_named_with_its_file(field, value, words):
    with pytest.raises(ConfigError) as e:
        Config.from_dict({field: value}, "my.json")
    assert len(e.value.problems) == 1
    line = e.value.problems[0]
    assert line.startswith(f"my.json: field {field!r}:") and words in line


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as e:
        Config.from_dict({"k": "abc", "epochs": "3", "nope": 1}, "c.json")
    assert e.value.problems == [
        "c.json: unknown field 'nope'",
        "c.json: field 'k': expected an integer, got 'abc'",
        "c.json: field 'epochs': expected an integer, got '3'",
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_device_without_cuda_is_refused():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        Config.from_dict({"device": "cuda"})


def test_defaults_and_good_values_pass():
    Config().validate()
    assert Config().cuda_graph == "auto"  # on for CUDA + the Triton DDPM step, off elsewhere (sample.use_cuda_graph)
    for v in ("auto", True, False):
        assert Config.from_dict({"cuda_graph": v}).cuda_graph == v
    cfg = Config.from_dict({"k": 5, "ae_lr": 1, "noise_sigmas": [], "diffusion_batch_size": None,
                            "subset": ["a.weight"], "device": "cpu", "sample_steps": 1000})
    assert cfg.ae_lr == 1 and cfg.sample_steps == 1000


def test_replaced_values_are_checked_too():
    with pytest.raises(ConfigError, match="'num_samples': must be at least 1"):
        Config().replace(num_samples=0).validate()


def test_files_that_are_not_configs(tmp_path):
    with pytest.raises(ConfigError, match="is a directory"):
        Config.from_file(tmp_path)
    p = tmp_path / "c.json"
    p.write_bytes(b'{"k": "\xff\xfe"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        Config.from_file(p)
    p.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        Config.from_file(p)
    p.write_text(json.dumps({"k": 3}))
    assert Config.from_file(p).k == 3
    with pytest.raises(ConfigError, match="no such config file"):
        Config.from_file(tmp_path / "missing.json")


def test_shipped_configs_by_name(tmp_path, monkeypatch):
    """`--config quick` names pdiff_fast/configs/quick.json; a file of that name in the working
    directory wins, and an unknown name is a missing file."""
    from pdiff_fast.config import SHIPPED, Config, ConfigError, read_config_file

    quick = read_config_file("quick")
    assert quick == json.loads((SHIPPED / "quick.json").read_text())
    Config.from_dict(quick, "quick").validate("quick")  # every shipped config is valid
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quick").write_text('{"k": 3}')
    assert read_config_file("quick") == {"k": 3}
    with pytest.raises(ConfigError, match="no such config file"):
        read_config_file("no-such-config")

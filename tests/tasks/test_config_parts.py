"""pdiff_fast.tasks.config's parts, value by value: the widths check (every kind of bad list), each
field's check and its message with the source named, the cross-field rules (encoder width a multiple
of 4, prompts only when prompted, the generator's denoiser takes 4 widths), the order of the problems,
the defaults, and the artifacts' fields. Written against the mutants mutmut left alive
(tests/mutation, docs/mutation-scores.md)."""
import dataclasses

import pytest

from pdiff_fast.config import ConfigError
from pdiff_fast.tasks.config import CHECKS, MADE_BY, STEP_FIELDS, TaskConfig, _problems, _widths


@pytest.mark.parametrize("v", [[32], [1], [64, 32, 1], [10**6]])
def test_widths_accepts_positive_integer_lists(v):
    assert _widths(v) is None


@pytest.mark.parametrize("v", [None, 32, "32", (32,), [], [0], [-1], [32, 0], [True], [32, False], [1.0], [32, "8"],
                               [None]])
def test_widths_refuses_everything_else_and_names_the_value(v):
    assert _widths(v) == f"expected a non-empty list of positive widths, got {v!r}"


def test_defaults_have_no_problems_and_the_values_documented():
    c = TaskConfig()
    assert _problems(c.to_dict(), "x") == [] and TaskConfig.problems(c.to_dict(), "x") == []
    assert (c.held_out_pairs, c.hidden, c.zoo_runs, c.rank, c.conditioning, c.encoder_width, c.guidance, c.sampler,
            c.sample_steps, c.eta, c.denoiser_channels, c.prompted, c.prompt_accuracy) == (
        9, [32], 10, 32, "blocks", 64, 4.0, "ddim", 20, 1.0, None, False, None)
    assert set(CHECKS) == {f.name for f in dataclasses.fields(TaskConfig)}


def test_each_problem_names_the_source_and_the_field():
    assert _problems({"hidden": []}, "run.json") == [
        "run.json: field 'hidden': expected a non-empty list of positive widths, got []"]
    assert _problems({"zoo_runs": 0}, "cfg") == ["cfg: field 'zoo_runs': must be at least 1, got 0"]
    assert _problems({"conditioning": "film"}, "cfg") == [
        "cfg: field 'conditioning': must be one of ['time', 'blocks'], got 'film'"]
    assert TaskConfig.problems({"standardize": 1}, "src") == ["src: field 'standardize': expected true or false, got 1"]


def test_problems_come_in_the_order_of_the_fields_given():
    d = {"seed": -1, "zoo_lr": 0, "held_out_pairs": 45}
    assert _problems(d, "c") == ["c: field 'seed': must be at least 0, got -1",
                                 "c: field 'zoo_lr': must be greater than 0, got 0",
                                 "c: field 'held_out_pairs': must be at most 44, got 45"]


def test_unknown_fields_are_left_to_from_dict():
    assert _problems({"no_such_field": object()}, "c") == []
    with pytest.raises(ConfigError) as e:
        TaskConfig.from_dict({"no_such_field": 1, "rank": 0}, "c.json")
    assert e.value.problems == ["c.json: unknown field 'no_such_field'", "c.json: field 'rank': must be at least 1, got 0"]


@pytest.mark.parametrize("field, good, bad", [
    ("held_out_pairs", [1, 44], [0, 45]), ("split_seed", [0], [-1]), ("zoo_runs", [1], [0]), ("zoo_steps", [1], [0]),
    ("zoo_lr", [1e-9], [0, -1]), ("batch_size", [1], [0]), ("rank", [1], [0]), ("ae_steps", [1], [0]),
    ("ae_lr", [1e-9], [0]), ("input_noise", [0, 1], [-0.1, 1.1]), ("latent_noise", [0, 1], [-0.1, 1.1]),
    ("encoder_width", [4, 8], [0, 3]), ("embed_dim", [1], [0]), ("support", [1], [0]), ("cond_drop", [0, 0.99], [1, -0.1]),
    ("diffusion_steps", [1], [0]), ("diffusion_lr", [1e-9], [0]), ("diffusion_batch_size", [1], [0]),
    ("ema_decay", [0, 0.999], [1]), ("checkpoint_every", [0], [-1]), ("guidance", [0, 7.5], [-0.1]),
    ("sampler", ["ddpm", "euler-a"], ["DDIM", "x"]), ("sample_steps", [1, 1000], [0, 1001]), ("eta", [0], [-1]),
    ("samples_per_task", [1], [0]), ("finetune_models", [1], [0]), ("finetune_steps", [1], [0]),
    ("finetune_lr", [1e-9], [0]), ("memory_budget_mb", [1], [0]), ("device", ["cpu", "auto"], ["gpu", 0]),
    ("seed", [0, 2**62], [-1, 2**62 + 1]), ("prompted", [True, False], [1, "true"]),
    ("val_fraction", [0.5], [0, 1]), ("span_keep", [2], [1]), ("prompt_extrapolate", [False], [0]),
    ("denoiser_channels", [None, [1, 2, 3, 4]], [[], [0, 1, 2, 3]]), ("hidden", [[2]], [[0]]),
])
def test_each_field_range(field, good, bad):
    for v in good:
        assert _problems({field: v}, "c") == [], (field, v)
    for v in bad:
        out = _problems({field: v}, "c")
        assert len(out) == 1 and out[0].startswith(f"c: field {field!r}: "), (field, v, out)


def test_encoder_width_must_be_a_multiple_of_four():
    msg = "c: field 'encoder_width': must be a multiple of 4 (the set encoder's attention heads)"
    assert _problems({"encoder_width": 6}, "c") == [msg]
    assert _problems({"encoder_width": 66}, "c") == [msg]
    for ok in (4, 8, 64):
        assert _problems({"encoder_width": ok}, "c") == []
    # a width its own check refuses is reported once, by that check (and a string is not taken modulo 4)
    assert _problems({"encoder_width": 2}, "c") == ["c: field 'encoder_width': must be at least 4, got 2"]
    assert _problems({"encoder_width": "%d"}, "c") == ["c: field 'encoder_width': expected an integer, got '%d'"]
    assert _problems({"encoder_width": 6.0}, "c") == ["c: field 'encoder_width': expected an integer, got 6.0"]
    # the rule reads the field as given, after the other fields' problems
    assert _problems({"rank": 0, "encoder_width": 6}, "c") == ["c: field 'rank': must be at least 1, got 0", msg]


def test_prompts_need_prompted_true():
    msg = "c: field 'prompt_accuracy': prompts need prompted: true"
    assert _problems({"prompt_accuracy": [50.0]}, "c") == [msg]
    assert _problems({"prompt_accuracy": [50.0], "prompted": False}, "c") == [msg]
    assert _problems({"prompt_accuracy": [50.0], "prompted": 1}, "c") == [
        "c: field 'prompted': expected true or false, got 1", msg]
    assert _problems({"prompt_accuracy": [50.0], "prompted": True}, "c") == []
    assert _problems({"prompt_accuracy": None}, "c") == []
    assert _problems({"prompt_accuracy": None, "prompted": True}, "c") == []
    assert _problems({"prompted": True}, "c") == []


def test_the_generators_denoiser_takes_four_widths():
    assert _problems({"denoiser_channels": [8, 16, 32]}, "c") == [
        "c: field 'denoiser_channels': the generator's AE_CNN_bottleneck denoiser takes exactly 4 widths, got 3: "
        "[8, 16, 32]"]
    assert _problems({"denoiser_channels": [8, 16, 32, 64]}, "c") == []
    assert _problems({"denoiser_channels": None}, "c") == []
    # the width count is checked last, after every other problem
    assert _problems({"denoiser_channels": [8] * 5, "encoder_width": 6, "prompt_accuracy": [1]}, "c") == [
        "c: field 'encoder_width': must be a multiple of 4 (the set encoder's attention heads)",
        "c: field 'prompt_accuracy': prompts need prompted: true",
        "c: field 'denoiser_channels': the generator's AE_CNN_bottleneck denoiser takes exactly 4 widths, got 5: "
        "[8, 8, 8, 8, 8]"]


def test_from_dict_gives_the_config_or_every_problem():
    c = TaskConfig.from_dict({"hidden": [16, 8], "encoder_width": 8, "prompted": True, "prompt_accuracy": [90]})
    assert c.hidden == [16, 8] and c.encoder_width == 8 and c.prompt_accuracy == [90] and c.rank == 32
    with pytest.raises(ConfigError) as e:
        TaskConfig.from_dict({"hidden": [0], "encoder_width": 10}, "t.json")
    assert e.value.problems == ["t.json: field 'hidden': expected a non-empty list of positive widths, got [0]",
                                "t.json: field 'encoder_width': must be a multiple of 4 (the set encoder's attention heads)"]


def test_every_step_field_is_a_config_field_and_every_step_is_made_by_a_command():
    names = {f.name for f in dataclasses.fields(TaskConfig)}
    for step, fields in STEP_FIELDS.items():
        assert set(fields) <= names, step
        assert "seed" in fields
    assert MADE_BY == {"zoo": "zoo", "generator": "train", "generated": "sample"}

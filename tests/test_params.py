import pytest
import torch
from torch import nn

from pdiff_fast.backend import use_backend
from pdiff_fast.nn.models import build_model
from pdiff_fast.params import ParamSpec, Standardizer, select_names


def cnn():
    return build_model("cnn1d", (1, 40), 10, channels=(4, 6, 8))


def test_presets_select_last_norm_layers():
    m = cnn()
    assert select_names(m, "last-2-norm-layers") == ["4.weight", "4.bias", "7.weight", "7.bias"]
    assert select_names(m, "last-1-norm-layers") == ["7.weight", "7.bias"]
    assert select_names(m, "all") == [n for n, _ in m.named_parameters()]


def test_glob_and_names_keep_model_order():
    m = cnn()
    assert select_names(m, ["7.bias", "4.*"]) == ["4.weight", "4.bias", "7.bias"]


@pytest.mark.parametrize("bad", ["nope.*", ["4.weight", "zzz"]])
def test_pattern_matching_nothing_is_an_error(bad):
    with pytest.raises(ValueError, match="matches no parameter"):
        select_names(cnn(), bad)


def test_too_many_norm_layers_is_an_error():
    with pytest.raises(ValueError, match="norm layers"):
        select_names(cnn(), "last-9-norm-layers")


@pytest.mark.parametrize("name,shape", [("cnn1d", (1, 40)), ("resnet", (1, 8, 8)), ("vit", (1, 8, 8)), ("mlp", (1, 8, 8))])
def test_flatten_unflatten_round_trip_is_bit_exact(name, shape):
    models = [build_model(name, shape, 10) for _ in range(3)]
    for m in models:  # random, non-trivial values everywhere
        for p in m.parameters():
            nn.init.normal_(p)
    spec = ParamSpec.from_model(models[0], "all")
    with use_backend("torch"):
        flat = spec.flatten(models)
        assert flat.shape == (3, spec.dim)
        fresh = [build_model(name, shape, 10) for _ in range(3)]
        spec.load_into_models(fresh, flat)
        for a, b in zip(models, fresh):
            for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
                assert torch.equal(pa, pb), n
        back = spec.unflatten(flat)
        assert torch.equal(back[1][spec.names[0]], dict(models[1].named_parameters())[spec.names[0]])


def test_flatten_state_dicts_equals_models():
    m = cnn()
    spec = ParamSpec.from_model(m)
    assert torch.equal(spec.flatten([m]), spec.flatten([m.state_dict()]))


def test_spec_json_round_trip():
    spec = ParamSpec.from_model(cnn())
    assert ParamSpec.from_json(spec.to_json()) == spec
    assert spec.offsets == [0, 6, 12, 20] and spec.dim == 28


def test_spec_that_does_not_fit_the_model_is_an_error():
    spec = ParamSpec.from_model(cnn())
    other = build_model("cnn1d", (1, 40), 10, channels=(4, 6, 9))
    with pytest.raises(ValueError, match="has shape"):
        spec.check(other)
    with pytest.raises(ValueError, match="not in the model"):
        spec.check(build_model("resnet", (1, 8, 8), 10))


def test_wrong_row_shapes_are_errors():
    m = cnn()
    spec = ParamSpec.from_model(m)
    with pytest.raises(ValueError):
        spec.load_into(m, torch.zeros(spec.dim + 1))
    with pytest.raises(ValueError):
        spec.unflatten(torch.zeros(2, spec.dim - 1))
    with pytest.raises(ValueError, match="N = 0"):
        spec.flatten([])


def test_bad_spec_description_is_an_error():
    with pytest.raises(ValueError, match="ParamSpec"):
        ParamSpec.from_dict({"names": ["a"]})


def test_standardizer_round_trip_and_scale():
    m = cnn()
    spec = ParamSpec.from_model(m)
    flat = torch.randn(50, spec.dim) * 3 + 1
    flat[:, spec.offsets[1]:spec.offsets[2]] = flat[:, spec.offsets[1]:spec.offsets[2]].abs() + 0.1
    std = Standardizer.fit(spec, flat, log_names=[spec.names[1]])
    z = std.transform(flat)
    seg = spec.segments[0]
    assert z[:, seg.offset:seg.offset + seg.numel].std(unbiased=False).item() == pytest.approx(1, abs=1e-4)
    torch.testing.assert_close(std.inverse(z), flat, rtol=1e-5, atol=1e-5)
    again = Standardizer.from_state_dict(spec, std.state_dict())
    torch.testing.assert_close(again.inverse(z), flat, rtol=1e-5, atol=1e-5)

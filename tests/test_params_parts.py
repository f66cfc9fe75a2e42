"""pdiff_fast.params' parts, value by value: which layers count as norm layers, the preset's exact
spelling and bounds, the error messages in full, the spec's layout, description and JSON text,
the standardiser's per-tensor mean and std (log-transformed and clamped where it says), and the
helpers that train a subset (norm layers frozen, SGD's defaults, requires_grad on the subset only).
Written against the mutants mutmut left alive (tests/mutation, docs/mutation-scores.md)."""
import json
import math
import re

import pytest
import torch
from torch import nn

from pdiff_fast import params
from pdiff_fast.params import ParamSpec, Segment, Standardizer, select_names


def norms():
    """One layer of each norm kind, with an affine, between two linears, and norms without
    parameters (which the presets skip)."""
    return nn.Sequential(
        nn.Linear(3, 4),                          # 0
        nn.BatchNorm1d(4),                        # 1
        nn.LayerNorm(4),                          # 2
        nn.LayerNorm(4, elementwise_affine=False),  # 3: no parameters
        nn.GroupNorm(2, 4),                       # 4
        nn.InstanceNorm1d(4, affine=True),        # 5
        nn.InstanceNorm1d(4),                     # 6: no parameters
        nn.BatchNorm2d(4, affine=False),          # 7: no parameters
        nn.Linear(4, 2),                          # 8
    )


def test_every_norm_kind_with_parameters_is_a_norm_layer():
    assert params._norm_layer_names(norms()) == ["1", "2", "4", "5"]
    assert select_names(norms(), "last-4-norm-layers") == [f"{i}.{w}" for i in (1, 2, 4, 5) for w in ("weight", "bias")]
    assert select_names(norms(), "last-1-norm-layer") == ["5.weight", "5.bias"]  # the singular too
    with pytest.raises(ValueError, match=r"^subset 'last-5-norm-layers': the model has 4 norm layers with "
                                         r"parameters$"):
        select_names(norms(), "last-5-norm-layers")
    with pytest.raises(ValueError, match=r"^subset 'last-0-norm-layers': the model has 4 norm layers"):
        select_names(norms(), "last-0-norm-layers")


@pytest.mark.parametrize("near", ["xlast-1-norm-layers", "last-1-norm-layersx", "last--1-norm-layers",
                                  "last-1-norm-layerss", "last-a-norm-layers", "ALL"])
def test_near_misses_of_the_presets_are_patterns(near):
    """Not a preset: read as a glob pattern, which matches no parameter."""
    with pytest.raises(ValueError, match=rf"^subset pattern {re.escape(repr(near))} matches no parameter of the "
                                         r"model \(it has 12, e\.g\. \['0\.weight', '0\.bias', '1\.weight'\]\)$"):
        select_names(norms(), near)


def test_a_pattern_picks_each_name_once_in_model_order():
    m = norms()
    assert select_names(m, "[58].*") == ["5.weight", "5.bias", "8.weight", "8.bias"]
    assert select_names(m, ["8.bias", "*.bias", "0.weight", "0.weight"]) == [
        "0.weight", "0.bias", "1.bias", "2.bias", "4.bias", "5.bias", "8.bias"]
    assert select_names(m, "2.weight") == ["2.weight"]
    # matched case-sensitively: "*.WEIGHT" is no parameter here
    with pytest.raises(ValueError, match="matches no parameter"):
        select_names(m, "*.WEIGHT")


def scalar_model():
    m = nn.Module()
    m.a = nn.Parameter(torch.tensor(2.5))
    m.b = nn.Parameter(torch.arange(6.0).reshape(2, 3).to(torch.float64))
    m.c = nn.Parameter(torch.ones(4, dtype=torch.float16))
    m.d = nn.Parameter(torch.zeros(1, 2, dtype=torch.bfloat16))
    m.e = nn.Parameter(torch.ones(5))
    return m


def test_the_layout_of_a_spec():
    spec = ParamSpec.from_model(scalar_model(), "all")
    assert spec.segments[0] == Segment("a", (), torch.float32, 0) and spec.segments[0].numel == 1
    assert spec.names == ["a", "b", "c", "d", "e"] and len(spec) == 5
    assert spec.shapes == [(), (2, 3), (4,), (1, 2), (5,)]
    assert spec.dtypes == [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.float32]
    assert spec.numels == [1, 6, 4, 2, 5] and spec.offsets == [0, 1, 7, 11, 13] and spec.dim == 18
    assert all(type(s) is int for seg in spec.segments for s in seg.shape)
    assert ParamSpec.from_model(scalar_model(), ["e", "b"]).offsets == [0, 6]  # model order, not the list's
    assert ParamSpec.from_model(norms()).names == ["4.weight", "4.bias", "5.weight", "5.bias"]  # default: last 2


def test_description_and_json_text():
    spec = ParamSpec.from_model(scalar_model(), "all")
    d = {"names": ["a", "b", "c", "d", "e"], "shapes": [[], [2, 3], [4], [1, 2], [5]],
         "dtypes": ["torch.float32", "torch.float64", "torch.float16", "torch.bfloat16", "torch.float32"]}
    assert spec.to_dict() == d
    assert spec.to_json() == json.dumps(d)
    again = ParamSpec.from_json(spec.to_json())
    assert again == spec and again.dtypes == spec.dtypes and again.shapes == spec.shapes
    assert repr(spec) == "ParamSpec(5 tensors, D=18: a, b, c, d...)"
    assert repr(ParamSpec(["x", "y"], [(2,), (3, 1)], [torch.float32] * 2)) == "ParamSpec(2 tensors, D=5: x, y)"
    assert repr(ParamSpec(list("wxyz"), [(1,)] * 4, [torch.float32] * 4)) == "ParamSpec(4 tensors, D=4: w, x, y, z)"
    assert spec != d and spec != ParamSpec.from_model(scalar_model(), ["a"])


@pytest.mark.parametrize("bad, why", [({"names": ["a"]}, "'shapes'|'dtypes'"), ({"shapes": [[1]], "dtypes": ["torch.float32"]}, "'names'"),
                                      ({"names": ["a"], "shapes": [[1]], "dtypes": ["torch.int64"]}, "'torch.int64'"),
                                      ({"names": ["a"], "shapes": [1], "dtypes": ["torch.float32"]}, "not iterable"),
                                      ({"names": ["a"], "shapes": [[1]], "dtypes": 3}, "not iterable")])
def test_bad_descriptions_are_one_value_error(bad, why):
    with pytest.raises(ValueError, match=rf"^not a valid ParamSpec description: .*({why})"):
        ParamSpec.from_dict(bad)


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match=r"^ParamSpec: empty subset$"):
        ParamSpec([], [], [])
    with pytest.raises(ValueError, match=r"^ParamSpec: duplicate parameter names$"):
        ParamSpec(["a", "b", "a"], [(1,)] * 3, [torch.float32] * 3)
    with pytest.raises(ValueError):  # a shape for every name
        ParamSpec(["a", "b"], [(1,)], [torch.float32] * 2)


def test_tensors_of_a_model_or_a_state_dict_checked_against_the_spec():
    m = scalar_model()
    spec = ParamSpec.from_model(m, ["b", "e"])
    got = spec.tensors_of(m)
    assert got[0] is m.b and got[1] is m.e  # the live parameters
    sd = {"b": torch.zeros(2, 3), "e": torch.ones(5), "other": torch.ones(1)}
    assert spec.tensors_of(sd)[0] is sd["b"]
    with pytest.raises(ValueError, match=r"^spec does not fit: 'e' is not in the model / state dict$"):
        spec.tensors_of({"b": torch.zeros(2, 3)})
    with pytest.raises(ValueError, match=r"^spec does not fit: 'b' has shape \(3, 2\), the spec says \(2, 3\)$"):
        spec.check(nn.ParameterDict({"b": nn.Parameter(torch.zeros(3, 2)), "e": nn.Parameter(torch.ones(5))}))
    spec.check(m)


def test_flatten_in_the_dtype_asked_and_back_in_each_tensors_dtype():
    m = scalar_model()
    with torch.no_grad():
        m.b.fill_(0.1)  # not a float32 number
    spec = ParamSpec.from_model(m, "all")
    want = torch.cat([p.detach().double().reshape(-1) for p in m.parameters()])
    flat64 = spec.flatten([m], dtype=torch.float64)
    assert flat64.dtype == torch.float64 and torch.equal(flat64[0], want) and flat64[0, 1].item() == 0.1
    assert spec.flatten([m]).dtype == torch.float32
    flat = torch.arange(36.0).reshape(2, 18)
    back = spec.unflatten(flat)
    assert len(back) == 2 and back[1]["a"].item() == 18.0 and back[1]["a"].shape == ()
    assert back[0]["b"].dtype == torch.float64 and torch.equal(back[0]["b"], torch.arange(1.0, 7.0).reshape(2, 3).double())
    stacked = spec.unflatten_stacked(flat[1])  # one row: a leading dim of 1
    assert stacked["e"].shape == (1, 5) and stacked["e"][0].tolist() == [31.0, 32.0, 33.0, 34.0, 35.0]
    assert list(stacked) == spec.names


def test_load_into_writes_one_row():
    m = scalar_model()
    spec = ParamSpec.from_model(m, ["a", "e"])
    assert spec.load_into(m, torch.arange(6.0)) is m
    assert m.a.item() == 0.0 and m.e.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    for bad in (torch.zeros(1, 6), torch.zeros(7), torch.zeros(5)):
        with pytest.raises(ValueError, match=rf"^load_into: expected a \(6,\) vector, got {re.escape(str(tuple(bad.shape)))}$"):
            spec.load_into(m, bad)


# --- Standardizer -------------------------------------------------------------------------

def two_segment_spec():
    return ParamSpec(["w", "var"], [(2, 2), (3,)], [torch.float32, torch.float32])


def test_standardizer_mean_and_std_per_tensor_over_all_models():
    spec = two_segment_spec()
    flat = torch.tensor([[1.0, 2.0, 3.0, 4.0, 1.0, 10.0, 100.0],
                         [5.0, 6.0, 7.0, 8.0, 1e3, 1e4, 1e5]])
    std = Standardizer.fit(spec, flat, log_names=["var"])
    assert std.spec is spec
    w = flat[:, :4].double()
    logs = flat[:, 4:].double().log()
    assert std.mean.dtype == std.std.dtype == torch.float32
    assert std.mean.tolist() == pytest.approx([w.mean().item()] * 4 + [logs.mean().item()] * 3, rel=1e-6)
    assert std.std.tolist() == pytest.approx([w.std(unbiased=False).item()] * 4
                                             + [logs.std(unbiased=False).item()] * 3, rel=1e-6)
    assert std.log_mask.tolist() == [False] * 4 + [True] * 3
    z = std.transform(flat)
    assert z[:, :4].mean().item() == pytest.approx(0, abs=1e-6)
    assert z[:, 4:].std(unbiased=False).item() == pytest.approx(1, abs=1e-5)
    torch.testing.assert_close(std.inverse(z), flat, rtol=1e-5, atol=0)
    plain = Standardizer.fit(spec, flat)  # no log names: nothing log-transformed
    assert not plain.log_mask.any() and plain.mean[4].item() == pytest.approx(flat[:, 4:].double().mean().item())


def test_standardizer_clamps_zeros_and_constants():
    spec = two_segment_spec()
    flat = torch.tensor([[3.0, 3.0, 3.0, 3.0, 0.0, 1.0, 1.0]] * 2)
    std = Standardizer.fit(spec, flat, log_names=["var"])
    assert std.std[0].item() == pytest.approx(1e-8)  # a constant tensor: std clamped, not 0
    logs = torch.tensor([math.log(1e-12), 0.0, 0.0], dtype=torch.float64)  # log(0) clamped to log(1e-12)
    assert std.mean[4].item() == pytest.approx(logs.mean().item(), rel=1e-6)
    z = std.transform(torch.tensor([[3.0, 3.0, 3.0, 3.0, 0.0, -1.0, 1.0]]))
    assert z[0, :4].tolist() == [0.0] * 4 and torch.isfinite(z).all()
    assert z[0, 4].item() == z[0, 5].item()  # 0 and -1 both clamp to 1e-12


def test_standardizer_state_dict_round_trip():
    spec = two_segment_spec()
    flat = torch.rand(4, 7) + 0.5
    std = Standardizer.fit(spec, flat, log_names=["var"])
    sd = std.state_dict()
    assert list(sd) == ["standardizer.mean", "standardizer.std", "standardizer.log_mask"]
    assert sd["standardizer.log_mask"].dtype == torch.uint8 and sd["standardizer.log_mask"].tolist() == [0] * 4 + [1] * 3
    again = Standardizer.from_state_dict(spec, sd)
    assert again.spec is spec and again.log_mask.dtype == torch.bool
    assert torch.equal(again.mean, std.mean) and torch.equal(again.std, std.std)
    assert torch.equal(again.transform(flat), std.transform(flat))


# --- training a subset ----------------------------------------------------------------------

def test_norm_layers_frozen_for_training_are_the_batch_norms_only():
    m = norms().train()
    params._set_norm_eval(m)
    assert [i for i, layer in enumerate(m) if not layer.training] == [1, 7]


def test_sgd_defaults_are_momentum_09_and_weight_decay_5e4():
    p = [nn.Parameter(torch.ones(2))]
    opt = params._sgd(p, 0.1)
    group = opt.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 5e-4)
    assert group["params"][0] is p[0]
    assert params._sgd(p, 0.2, momentum=0.0, weight_decay=0.0).param_groups[0]["momentum"] == 0.0


def test_subset_params_require_grad_on_the_subset_only():
    m = scalar_model()
    for p in m.parameters():
        p.requires_grad_(False)
    m.a.requires_grad_(True)
    spec = ParamSpec.from_model(m, ["e", "b"])
    got = params._subset_params(m, spec)
    assert got[0] is m.b and got[1] is m.e and len(got) == 2
    assert {n: p.requires_grad for n, p in m.named_parameters()} == {"a": False, "b": True, "c": False,
                                                                     "d": False, "e": True}


def test_presets_in_nested_modules_keep_the_whole_layer_name():
    """A norm layer's parameters are found by the layer's full dotted name ("stage.1.norm"), not by
    its first or any other part."""
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4)

    m = nn.Sequential()
    m.add_module("stage", nn.Sequential(Block(), Block()))
    m.add_module("head", nn.Linear(4, 2))
    assert params._norm_layer_names(m) == ["stage.0.norm", "stage.1.norm"]
    assert select_names(m, "last-1-norm-layers") == ["stage.1.norm.weight", "stage.1.norm.bias"]
    assert select_names(m, "last-2-norm-layers") == ["stage.0.norm.weight", "stage.0.norm.bias",
                                                     "stage.1.norm.weight", "stage.1.norm.bias"]

"""The stage planner of evaluate_population (pdiff_fast.evaluation.population_plan), part by
part: which modules fold the model axis into the batch, how a chain is found and named, when a
model runs whole (tied or root-level generated parameters), which norm + activation pairs are
fused, and models that exercise each of them end to end against the one-by-one reference with
nothing rechecked. Written against the mutants mutmut left alive (docs/mutation-scores.md)."""
import math
import warnings

import pytest
import torch
from torch import nn

from pdiff_fast.evaluation import population
from pdiff_fast.evaluation import population_plan as pp
from pdiff_fast.evaluation.population import evaluate_one_by_one, evaluate_population
from pdiff_fast.params import ParamSpec

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("error:evaluate_population.*fast path:RuntimeWarning")]


class Holder(nn.Module):
    """A container that is not a per-sample type: judged by its leaves."""

    def __init__(self, *children):
        super().__init__()
        self.inner = nn.ModuleList(children)


class CustomSequential(nn.Sequential):
    def forward(self, x):  # not nn.Sequential's forward: not expanded
        return super().forward(x) * 1.0


def test_per_sample_judges_leaves_and_batch_statistics():
    assert pp._per_sample(nn.Sequential(nn.Conv1d(1, 2, 3), nn.BatchNorm1d(2), nn.ReLU()))
    assert not pp._per_sample(nn.BatchNorm1d(2, track_running_stats=False))
    assert pp._per_sample(nn.Flatten()) and not pp._per_sample(nn.Flatten(start_dim=0))
    assert pp._per_sample(Holder(nn.Linear(2, 2), nn.ReLU()))
    assert not pp._per_sample(Holder(nn.BatchNorm1d(2, track_running_stats=False), nn.Linear(2, 2)))
    assert not pp._per_sample(Holder(nn.Softmax(dim=0)))  # an unknown leaf: not assumed per sample
    assert not pp._per_sample(nn.Softmax(dim=0))


def test_only_a_plain_sequential_is_expanded_with_qualified_names():
    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU())
    model = nn.Sequential(inner, nn.Linear(4, 2))
    assert pp._is_plain_sequential(model) and not pp._is_plain_sequential(CustomSequential(nn.ReLU()))
    assert not pp._is_plain_sequential(nn.Linear(2, 2))
    assert [n for n, _ in pp._expand("", model)] == ["0.0", "0.1", "1"]
    assert [n for n, _ in pp._expand("body", model)] == ["body.0.0", "body.0.1", "body.1"]
    custom = CustomSequential(nn.Linear(4, 4))
    assert pp._expand("c", custom) == [("c", custom)]


class CallsTwice(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(self.fc(x))


class Chain(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.body(x))


def test_chain_by_hooks_names_and_refusals():
    probe = torch.randn(2, 4)
    assert [n for n, _ in pp._chain(Chain(), probe)] == ["body.0", "body.1", "head"]
    assert pp._chain(CallsTwice(), probe) is None  # one child called twice is not a chain
    assert pp._chain(nn.Linear(4, 4), probe) is None  # no children


class TiedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.norm, self.out = nn.Linear(4, 4), nn.LayerNorm(4), nn.Linear(4, 4)
        self.out.weight = self.fc.weight  # one parameter, two names

    def forward(self, x):
        return self.out(self.norm(self.fc(x)))


class RootParameter(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc, self.norm = nn.Linear(4, 4), nn.LayerNorm(4)
        self.scale = nn.Parameter(torch.ones(4))

    def forward(self, x):
        return self.norm(self.fc(x)) * self.scale


class SpareParameter(nn.Module):
    """A chain whose forward never reads the root-level parameter `spare`."""

    def __init__(self):
        super().__init__()
        self.fc, self.norm = nn.Linear(4, 4), nn.LayerNorm(4)
        self.spare = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.norm(self.fc(x))


def test_generated_parameters_no_stage_holds_make_the_model_run_whole():
    probe, spare = torch.randn(2, 4), SpareParameter()
    assert [n for n, _ in pp._chain(spare, probe)] == ["fc", "norm"]
    for subset in (["spare"], ["spare", "norm.weight"]):
        plan = pp._plan(spare, ParamSpec.from_model(spare, subset), probe)
        assert plan.whole_model is True and plan.suffix[0].module is spare


def test_plan_of_a_chain_a_tied_model_and_a_root_parameter():
    probe = torch.randn(2, 4)
    plan = pp._plan(Chain(), ParamSpec.from_model(Chain(), ["body.1.weight", "body.1.bias"]), probe)
    assert [s.name for s in plan.prefix] == ["body.0"] and [s.name for s in plan.suffix] == ["body.1", "head"]
    assert plan.suffix[0].generated == {"weight": "body.1.weight", "bias": "body.1.bias"}
    assert plan.whole_model is False and plan.per_sample is True
    assert plan.pair_bytes == 2 * 4 * 4 and isinstance(plan.pair_bytes, int)  # widest: 4 values, float32
    tied = TiedHead()
    plan = pp._plan(tied, ParamSpec.from_model(tied, ["fc.weight"]), probe)
    assert plan.whole_model is True and plan.prefix == [] and plan.suffix[0].module is tied
    assert plan.suffix[0].generated == {"fc.weight": "fc.weight"}
    root = RootParameter()
    plan = pp._plan(root, ParamSpec.from_model(root, ["scale"]), probe)  # no stage holds it
    assert plan.whole_model is True and plan.per_sample is True  # a container of per-sample leaves
    plan = pp._plan(root, ParamSpec.from_model(root, ["scale", "norm.weight"]), probe)
    assert plan.whole_model is True


def test_widest_output_is_per_sample_even_for_a_one_sample_probe():
    model = nn.Sequential(nn.Linear(4, 9), nn.ReLU(), nn.Linear(9, 2))
    assert pp._widest_output(model, torch.randn(1, 4)) == 9 and isinstance(pp._widest_output(model, torch.randn(1, 4)), int)
    assert pp._widest_output(model, torch.randn(2, 4)) == 9
    assert pp._widest_output(nn.Sequential(nn.Linear(6, 2)), torch.randn(3, 6)) == 6  # the input itself


# --- end to end: each kind of suffix stage -----------------------------------------------------

class LeakyGroup(nn.Module):
    """LayerNorm (eps 1e-3) + LeakyReLU(0.2), LayerNorm without a bias + Identity, BatchNorm with
    only its weight generated + LeakyReLU(0.3): the activations the planner fuses, both norm
    kinds, and both affine defaults (the module's bias, zeros)."""

    def __init__(self):
        super().__init__()
        self.flat, self.fc1 = nn.Flatten(), nn.Linear(40, 16)
        self.ln1, self.act1 = nn.LayerNorm(16, eps=1e-3), nn.LeakyReLU(0.2)
        self.fc2, self.ln2, self.id2 = nn.Linear(16, 16), nn.LayerNorm(16, bias=False), nn.Identity()
        self.unflat, self.bn3, self.act3 = nn.Unflatten(1, (4, 4)), nn.BatchNorm1d(4), nn.LeakyReLU(0.3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x):
        x = self.act1(self.ln1(self.fc1(self.flat(x))))
        x = self.id2(self.ln2(self.fc2(x)))
        return self.head(self.act3(self.bn3(self.unflat(x))))


class ReluBeforeNorm(nn.Module):
    """A ReLU *before* a generated norm: the norm must fuse the stage after it, not before."""

    def __init__(self):
        super().__init__()
        self.flat, self.ln1, self.fc1, self.relu = nn.Flatten(), nn.LayerNorm(40), nn.Linear(40, 16), nn.ReLU()
        self.ln2, self.head = nn.LayerNorm(16), nn.Linear(16, 10)

    def forward(self, x):
        return self.head(self.ln2(self.relu(self.fc1(self.ln1(self.flat(x))))))


def randomised(model):
    g = torch.Generator().manual_seed(2)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.normal_(0, 0.5, generator=g)
            m.running_var.uniform_(0.5, 2.0, generator=g)
        for p in m.parameters(recurse=False):
            p.data.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


def cnn():
    return nn.Sequential(nn.Conv1d(1, 8, 5), nn.BatchNorm1d(8), nn.ReLU(), nn.Conv1d(8, 8, 3), nn.BatchNorm1d(8),
                         nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(8, 10))


CASES = {  # name -> (model, subset, the (activation, slope) of each norm_affine_act call of one suffix run)
    "leaky-identity-weight-only": (LeakyGroup, ["ln1.weight", "ln1.bias", "ln2.weight", "bn3.weight"],
                                   [("leaky_relu", 0.2), ("identity", 0.0), ("leaky_relu", 0.3)]),
    "relu-before-a-norm": (ReluBeforeNorm, ["ln1.weight", "ln2.weight", "ln2.bias"],
                           [("identity", 0.0), ("identity", 0.0)]),
    # a norm that is not generated (bn 4) runs as the module it is
    "norm-then-generated-conv": (cnn, ["1.weight", "1.bias", "3.weight"], [("relu", 0.0)]),
    "norm-at-the-end": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(40, 10), nn.LayerNorm(10)),
                        ["2.weight", "2.bias"], [("identity", 0.0)]),
    "activation-at-the-end": (lambda: nn.Sequential(nn.Flatten(), nn.Linear(40, 10), nn.LayerNorm(10), nn.ReLU()),
                              ["2.weight", "2.bias"], [("relu", 0.0)]),
}
FUSABLE = (nn.ReLU, nn.LeakyReLU, nn.Identity)


def case(name, n_models=7, n_test=61, dtype=torch.float32):
    make, subset, _ = CASES[name]
    torch.manual_seed(0)
    base = randomised(make()).to(dtype)
    spec = ParamSpec.from_model(base, subset)
    flat = spec.flatten([base], dtype=dtype) + 0.3 * torch.randn(n_models, spec.dim, dtype=dtype)
    return base, spec, flat, torch.randn(n_test, 1, 40, dtype=dtype), torch.randint(0, 10, (n_test,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(CASES))
def test_each_stage_kind_matches_the_reference_with_nothing_rechecked(name, dtype, monkeypatch):
    base, spec, flat, x, y = case(name, dtype=dtype)
    calls, suffix_runs, activations_run = [], [], []
    real_op, real_suffix = pp.norm_affine_act, population._run_suffix

    def recording(x, weight, bias, running_mean=None, running_var=None, eps=1e-5, act="relu", slope=0.01):
        calls.append((act, slope if act == "leaky_relu" else 0.0))  # relu and identity do not read the slope
        return real_op(x, weight, bias, running_mean, running_var, eps, act, slope)

    def counting(*args):
        suffix_runs.append(1)
        try:
            return real_suffix(*args)
        finally:
            suffix_runs.append(0)  # closed: hooks count only inside a suffix run
    monkeypatch.setattr(pp, "norm_affine_act", recording)
    monkeypatch.setattr(population, "_run_suffix", counting)
    # an activation right after a generated norm is fused into it: never run as a module of its own
    order, generated_norms = list(base.named_modules()), {n.rsplit(".", 1)[0] for n in spec.names}
    fused_modules = [m for (pn, pm), (_, m) in zip(order, order[1:]) if isinstance(m, FUSABLE)
                     and pn in generated_norms and isinstance(pm, (nn.LayerNorm, nn.BatchNorm1d))]
    def ran(*_):
        if suffix_runs[-1:] == [1]:  # inside a suffix run (the calibration's reference runs call them too)
            activations_run.append(1)
    hooks = [m.register_forward_hook(ran) for m in fused_modules]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning escapes the planner either
        res = evaluate_population(base, spec, flat, x, y, batch_size=32, tile_pairs=7 * 32)
    for h in hooks:
        h.remove()
    ref = evaluate_one_by_one(base, spec, flat, x, y, batch_size=32)
    assert torch.equal(res.predictions, ref.predictions)
    assert res.rechecked == 0 and res.max_logit_diff < 1e-5
    # exactly the generated norms, each with the activation after it, in every suffix run
    runs = sum(suffix_runs)
    assert runs >= math.ceil(61 / 32) and calls == CASES[name][2] * runs
    assert activations_run == []


def test_plain_torch_modules_under_vmap_raise_no_warning():
    """The zoo's ViT runs its encoder layers under vmap, which warns about a missing batching rule;
    the planner silences exactly that warning."""
    from pdiff_fast.nn.models import build_model
    torch.manual_seed(0)
    base = build_model("vit", (1, 8, 8), 10).eval()
    spec = ParamSpec.from_model(base, "last-2-norm-layers")
    flat = spec.flatten([base]) + 0.1 * torch.randn(3, spec.dim)
    x, y = torch.randn(9, 1, 8, 8), torch.randint(0, 10, (9,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = evaluate_population(base, spec, flat, x, y, batch_size=4)
    assert torch.equal(res.predictions, evaluate_one_by_one(base, spec, flat, x, y, batch_size=4).predictions)

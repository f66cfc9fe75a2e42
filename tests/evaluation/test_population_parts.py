"""evaluate_population's parts, value by value: the top-2 gap, the rows run, the input checks and
their messages, a recheck of one model that must leave the others alone, a population with no
finite model, and where the fast-path warning points. Written against the mutants mutmut left
alive (docs/mutation-scores.md)."""
import math
import os
import warnings

import pytest
import torch
from torch import nn

from pdiff_fast.evaluation import population
from pdiff_fast.evaluation.population import _Rows, _check, _top2_gap, check_test_set, evaluate_one_by_one
from pdiff_fast.evaluation.population import evaluate_population
from pdiff_fast.params import ParamSpec

pytestmark = pytest.mark.usefixtures("one_thread")


def test_top2_gap_values():
    pred, gap = _top2_gap(torch.tensor([[[1.0, 3.0, 2.5], [0.0, -1.0, 4.0]], [[2.0, 2.0, 0.0], [math.nan, 1.0, 0.0]]]))
    assert pred.tolist() == [[1, 2], [0, 0]] and gap.dtype == torch.float32
    assert gap[0].tolist() == [0.5, 4.0] and gap[1, 0] == 0.0 and math.isnan(gap[1, 1])
    pred, gap = _top2_gap(torch.tensor([[[0.3], [-2.0]]]))  # one class: never a close call
    assert pred.tolist() == [[0, 0]] and gap.shape == (1, 2) and (gap == math.inf).all()


def test_rows_run_are_the_finite_ones():
    flat = torch.arange(12.0).view(6, 2)
    every = _Rows(flat, torch.ones(6, dtype=torch.bool))
    assert every.all is True and every.n == 6 and every.out_rows(1, 3) == slice(1, 3)
    assert torch.equal(every.get(2, 4), flat[2:4])
    some = _Rows(flat, torch.tensor([True, False, True, True, False, True]))
    assert some.all is False and some.n == 4 and some.out_rows(1, 3).tolist() == [2, 3]
    assert torch.equal(some.get(1, 3), flat[[2, 3]])


def test_input_checks_name_the_problem():
    spec = ParamSpec(["w"], [(3,)], [torch.float32])
    x, y = torch.randn(4, 2), torch.zeros(4, dtype=torch.long)
    _check(spec, torch.zeros(1, 3), x[:1], y[:1])  # one sample is enough
    _check(spec, torch.zeros(2, 3), torch.zeros(4, 0), y)  # inputs of no features pass this check
    with pytest.raises(ValueError, match=r"^no parameter sets given \(N = 0\)$"):
        _check(spec, torch.zeros(0, 3), x, y)
    for xs, ys in ((torch.zeros(0, 2), torch.zeros(0, dtype=torch.long)), (x, y[:3]), (x, y[:, None])):
        with pytest.raises(ValueError, match=r"must hold the same \(non-zero\) number of samples, y_test 1-D$"):
            _check(spec, torch.zeros(2, 3), xs, ys)


class ThreeD(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 15)

    def forward(self, x):
        return self.fc(x).view(-1, 3, 5)


def test_the_label_check_reads_the_class_count_from_the_logits_only():
    model = nn.Linear(2, 4)
    x = torch.randn(5, 2)
    x[0, 1] = math.nan  # the first row too
    with pytest.raises(ValueError, match=r"^test inputs contain NaN or Inf: 1 non-finite values in x_test \(5, 2\)$"):
        check_test_set(model, x, torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"test labels must lie in \[0, 4\) .*: 1 do not, e\.g\. y_test\[0\] = 9$"):
        check_test_set(model, torch.randn(1, 2), torch.tensor([9]))  # a one-sample test set is checked too
    check_test_set(ThreeD(), torch.randn(3, 2), torch.tensor([4, 4, 4]))  # not (batch, classes): not judged here
    check_test_set(model, torch.randn(3, 2), torch.zeros(0, dtype=torch.long))  # no labels: nothing to check


def mlp_case(n_models=6, n_test=40):
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    spec = ParamSpec.from_model(base, "last-1-norm-layers")
    flat = spec.flatten([base]) + 0.5 * torch.randn(n_models, spec.dim)
    return base, spec, flat, torch.randn(n_test, 5), torch.randint(0, 3, (n_test,))


def test_a_recheck_of_one_model_rewrites_that_model_only(monkeypatch):
    """Model 2's gaps forced to 0 on every batch: exactly its pairs are redone by the reference,
    the other rows are the fast path's, and everything equals one-by-one."""
    base, spec, flat, x, y = mlp_case()
    real = population._top2_gap

    def one_close_model(logits):
        pred, gap = real(logits)
        if logits.shape[0] == flat.shape[0]:
            gap = gap.clone()
            gap[2] = 0.0
        return pred, gap
    monkeypatch.setattr(population, "_top2_gap", one_close_model)
    res = evaluate_population(base, spec, flat, x, y, batch_size=16, tile_pairs=10_000)
    ref = evaluate_one_by_one(base, spec, flat, x, y, batch_size=16)
    assert res.rechecked == math.ceil(40 / 16)
    assert torch.equal(res.predictions, ref.predictions) and torch.equal(res.wrong, ref.wrong)


def test_no_finite_model_runs_nothing():
    base, spec, flat, x, y = mlp_case(n_models=3)
    flat[:, 0] = math.nan
    res = evaluate_population(base, spec, flat, x, y)
    assert res.rechecked == 0 and res.max_logit_diff == 0.0 and (res.predictions == -1).all()
    assert torch.isnan(res.accuracy).all() and not res.finite.any()


def test_one_by_one_is_the_reference_and_leaves_the_model_alone():
    base, spec, flat, x, y = mlp_case(n_models=3)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    res = evaluate_one_by_one(base, spec, flat, x, y, batch_size=7)
    assert res.rechecked == 0 and res.predictions.dtype == torch.int64
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    model = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 3)).eval()
    model.load_state_dict(before)
    spec.load_into(model, flat[1])
    assert torch.equal(res.predictions[1], model(x).argmax(-1))


def test_the_fast_path_warning_points_at_the_caller(monkeypatch):
    base, spec, flat, x, y = mlp_case(n_models=2)
    real = population._run_suffix
    monkeypatch.setattr(population, "_run_suffix", lambda *a: real(*a) + 1.0)  # every logit off by one
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        evaluate_population(base, spec, flat, x, y)
    (w,) = [w for w in caught if "fast path is wrong" in str(w.message)]
    assert w.category is RuntimeWarning
    if "MUTANT_UNDER_TEST" not in os.environ:  # mutmut's trampoline is one more frame
        assert w.filename == __file__


def test_two_classes_and_logits_that_are_not_batch_by_classes():
    pred, gap = _top2_gap(torch.tensor([[[0.5, 2.0]]]))
    assert pred.tolist() == [[1]] and gap.tolist() == [[1.5]]
    x, y = torch.randn(6, 2), torch.zeros(6, dtype=torch.long)
    model = ThreeD()
    spec = ParamSpec.from_model(model, ["fc.bias"])
    with pytest.raises(ValueError, match=r"^evaluate_population: the model must output \(batch, classes\) logits, "
                                         r"got \(6, 3, 5\) per model$"):
        evaluate_population(model, spec, spec.flatten([model]), x, y)
    check_test_set(nn.Linear(2, 3), x, torch.zeros(6, dtype=torch.complex64))  # complex labels: not judged


def test_nan_logits_of_one_model_are_rechecked(monkeypatch):
    base, spec, flat, x, y = mlp_case()
    real = population._run_suffix

    def nan_model_3(plan, h, params, m):
        out = real(plan, h, params, m)
        if m == flat.shape[0]:
            out = out.clone()
            out[3] = math.nan
        return out
    monkeypatch.setattr(population, "_run_suffix", nan_model_3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the calibration model is fine; model 3 alone is off
        res = evaluate_population(base, spec, flat, x, y, batch_size=16, tile_pairs=10_000)
    ref = evaluate_one_by_one(base, spec, flat, x, y, batch_size=16)
    assert res.rechecked == math.ceil(40 / 16) and torch.equal(res.predictions, ref.predictions)


def test_65_models_in_chunks_calibrate_on_the_first_and_the_last():
    base, spec, flat, x, y = mlp_case(n_models=65, n_test=30)
    res = evaluate_population(base, spec, flat, x, y, batch_size=30, tile_pairs=8 * 30)  # 8 models a chunk
    ref = evaluate_one_by_one(base, spec, flat, x, y, batch_size=30)
    assert torch.equal(res.predictions, ref.predictions) and res.max_logit_diff < 1e-5


def test_finite_rows_in_blocks_of_one_row():
    flat = torch.zeros(10, 3)
    flat[7, 1] = math.inf
    finite = population._finite_rows(flat, budget=12)  # one row per block
    assert finite.tolist() == [True] * 7 + [False] + [True] * 2

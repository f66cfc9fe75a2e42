"""Recipe "span": checkpoints chosen evenly in validation accuracy from runs that climb from one
noisy start; labels are the validation accuracy of exactly the saved parameters."""
import pytest
import torch
from torch import nn

from pdiff_fast.data import digits
from pdiff_fast.params import ParamSpec
from pdiff_fast.pipeline.collect import accuracy
from pdiff_fast.pipeline.span import _perturb, collect_span, even_in_accuracy
from pdiff_fast.data import carve_validation


def test_even_in_accuracy_picks_the_candidates_nearest_an_even_grid():
    acc = [10, 20, 30, 40, 50, 60, 70, 80, 90, 91, 92, 92.5]
    assert even_in_accuracy(acc, 4) == [0, 3, 5, 11]  # targets 10, 37.5, 65 (a tie: the earlier), 92.5
    assert even_in_accuracy([5, 5, 5], 2) == [0, 1]  # each candidate once
    assert even_in_accuracy([3, 1, 2], 1) == [0]  # one checkpoint: the best
    assert even_in_accuracy([3, 1, 2], 3) == [0, 1, 2]
    with pytest.raises(ValueError, match="4 checkpoints cannot be chosen from 3 steps"):
        even_in_accuracy([1, 2, 3], 4)


def test_perturb_scales_noise_by_each_tensors_rms():
    m = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    with torch.no_grad():
        m[1].weight.fill_(2.0)
        m[1].bias.fill_(0.0)
    spec = ParamSpec.from_model(m, "last-1-norm-layers")
    before = spec.flatten([m])[0].clone()
    _perturb(m, spec, 0.5, torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(0)
    want_w = 2.0 + 0.5 * 2.0 * torch.randn(4, generator=g)
    want_b = torch.zeros(4) + 0.5 * 0.0 * torch.randn(4, generator=g)  # RMS 0: left as it is
    torch.testing.assert_close(m[1].weight.detach(), want_w)
    torch.testing.assert_close(m[1].bias.detach(), want_b)
    assert m[0].weight.abs().sum() > 0 and not torch.equal(before, spec.flatten([m])[0])


def test_span_population_spans_accuracy_with_true_labels():
    d = digits()
    d.x_train, d.x_test = d.x_train.flatten(1), d.x_test.flatten(1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10), nn.BatchNorm1d(10))
    spec = ParamSpec.from_model(model, "last-2-norm-layers")
    pop = collect_span(model, d, spec, epochs=5, k=10, trajectories=2, subset_lr=0.1, seed=3, progress=False,
                       val_fraction=0.2, span_noise=3.0)
    assert pop.params.shape == (10, spec.dim) and pop.trajectory.tolist() == [0] * 5 + [1] * 5
    for j in (0, 1):  # steps within a run increase; chosen evenly, so the labels spread
        steps = pop.step[pop.trajectory == j]
        assert (steps[1:] > steps[:-1]).all()
    _, x_val, y_val = carve_validation(d, 0.2, 3)
    for i in range(10):
        m = spec.load_into(model, pop.params[i])
        assert pop.val_accuracy[i].item() == pytest.approx(accuracy(m, x_val, y_val))
        assert pop.accuracy[i].item() == pytest.approx(accuracy(m, d.x_test, d.y_test))
    assert pop.val_accuracy.max() - pop.val_accuracy.min() > 20
    assert pop.meta["n_val"] == len(y_val) and pop.meta["n_train"] == len(d.y_train) - len(y_val)

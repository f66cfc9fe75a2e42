"""pdiff_fast.prompted.encoder's parts, value by value: AccuracyEncoder's layers, sizes and frequency
buffer, its forward pass against one written out here, TaskAndAccuracy's sum of the two embeddings
(the mask handed to the set encoder), and every check with its whole message. Written against the
mutants mutmut left alive (tests/mutation, docs/mutation-scores.md)."""
import math

import pytest
import torch
from torch import nn

from pdiff_fast.prompted.encoder import FREQUENCIES, AccuracyEncoder, TaskAndAccuracy


def test_the_layers_and_their_sizes():
    enc = AccuracyEncoder(width=10, out_dim=3)
    assert enc.out_dim == 3
    assert [type(m) for m in enc.mlp] == [nn.Linear, nn.SiLU, nn.Linear]
    assert (enc.mlp[0].in_features, enc.mlp[0].out_features) == (9, 10)
    assert (enc.mlp[2].in_features, enc.mlp[2].out_features) == (10, 3)
    default = AccuracyEncoder()
    assert default.out_dim == 32
    assert (default.mlp[0].out_features, default.mlp[2].in_features, default.mlp[2].out_features) == (64, 64, 32)


def test_the_frequencies_are_pi_times_powers_of_two_and_not_saved():
    enc = AccuracyEncoder(width=4, out_dim=2)
    assert FREQUENCIES == 4
    assert enc.freqs.dtype == torch.float32
    torch.testing.assert_close(enc.freqs, torch.tensor([math.pi, 2 * math.pi, 4 * math.pi, 8 * math.pi]))
    assert dict(enc.named_buffers()).keys() == {"freqs"}
    assert set(enc.state_dict()) == {"mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"}


def test_the_frequencies_are_float32_whatever_the_default_dtype():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        enc = AccuracyEncoder(width=4, out_dim=2)
    finally:
        torch.set_default_dtype(old)
    assert enc.freqs.dtype == torch.float32


def by_hand(enc, a):
    """The forward pass written out: [a, sin(pi 2^f a), cos(pi 2^f a)] -> Linear -> SiLU -> Linear."""
    a = a.double()
    f = torch.tensor([math.pi * 2.0 ** k for k in range(4)], dtype=torch.float64)
    x = torch.cat([a, (a * f).sin(), (a * f).cos()], 1)
    w1, b1 = enc.mlp[0].weight.double(), enc.mlp[0].bias.double()
    w2, b2 = enc.mlp[2].weight.double(), enc.mlp[2].bias.double()
    h = x @ w1.T + b1
    h = h * torch.sigmoid(h)
    return h @ w2.T + b2


def test_the_forward_pass_by_hand():
    torch.manual_seed(0)
    enc = AccuracyEncoder(width=12, out_dim=5)
    a = torch.tensor([[0.0], [0.13], [0.5], [1.0], [1.37], [-0.2]])
    out = enc(a)
    assert out.dtype == torch.float32 and out.shape == (6, 5)
    torch.testing.assert_close(out.double(), by_hand(enc, a), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc(a, None), out)


def test_float64_and_integer_accuracies_are_read_as_float32():
    torch.manual_seed(1)
    enc = AccuracyEncoder(width=8, out_dim=4)
    a = torch.tensor([[0.3], [0.7]])
    want = enc(a)
    got = enc(a.double())
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    got = enc(torch.tensor([[0], [1]]))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, enc(torch.tensor([[0.0], [1.0]])))


@pytest.mark.parametrize("shape", [(3,), (3, 2), (3, 1, 1), (1, 3), (3, 0), ()])
def test_only_b_by_1_accuracies(shape):
    enc = AccuracyEncoder(width=4, out_dim=2)
    with pytest.raises(ValueError) as e:
        enc(torch.zeros(shape))
    assert str(e.value) == f"AccuracyEncoder expects (B, 1) normalised accuracies, got {shape}"


def test_no_mask():
    enc = AccuracyEncoder(width=4, out_dim=2)
    for mask in (torch.ones(3, 1, dtype=torch.bool), torch.zeros(3, 1, dtype=torch.bool)):
        with pytest.raises(ValueError) as e:
            enc(torch.zeros(3, 1), mask)
        assert str(e.value) == "AccuracyEncoder: a prompt is one value; it takes no mask"
    assert enc(torch.zeros(3, 1), mask=None).shape == (3, 2)


class FakeSets(nn.Module):
    """A set encoder: the sum over each set's elements (times `scale`), and the mask it was given."""

    def __init__(self, out_dim, scale=1.0):
        super().__init__()
        self.out_dim, self.scale, self.masks = out_dim, scale, []

    def forward(self, sets, mask=None):
        self.masks.append(mask)
        return self.scale * sets.sum(1)


def test_task_and_accuracy_adds_the_two_embeddings():
    torch.manual_seed(2)
    acc = AccuracyEncoder(width=8, out_dim=3)
    sets = FakeSets(3, scale=2.0)
    both = TaskAndAccuracy(sets, acc)
    assert both.sets is sets and both.accuracy is acc and both.out_dim == 3
    assert dict(both.named_children()) == {"sets": sets, "accuracy": acc}
    s = torch.randn(4, 5, 3)
    a = torch.tensor([[0.1], [0.4], [0.9], [1.2]])
    out = both((s, a))
    torch.testing.assert_close(out, 2.0 * s.sum(1) + acc(a))
    assert sets.masks == [None]
    mask = torch.ones(4, 5, dtype=torch.bool)
    torch.testing.assert_close(both([s, a], mask), out)  # a list is as good as a tuple
    assert sets.masks[-1] is mask


def test_task_and_accuracy_needs_matching_widths():
    with pytest.raises(ValueError) as e:
        TaskAndAccuracy(FakeSets(5), AccuracyEncoder(width=4, out_dim=3))
    assert str(e.value) == ("TaskAndAccuracy: the set encoder gives 5 values, the accuracy encoder 3; they must "
                            "match to be added")


@pytest.mark.parametrize("cond", [torch.zeros(2, 1), (torch.zeros(2, 3, 3),), (torch.zeros(2, 3, 3),) * 3, "ab"])
def test_task_and_accuracy_needs_a_pair(cond):
    both = TaskAndAccuracy(FakeSets(3), AccuracyEncoder(width=4, out_dim=3))
    with pytest.raises(ValueError) as e:
        both(cond)
    assert str(e.value) == "TaskAndAccuracy expects (support sets, normalised accuracies)"


def test_task_and_accuracy_needs_one_accuracy_per_set():
    both = TaskAndAccuracy(FakeSets(3), AccuracyEncoder(width=4, out_dim=3))
    with pytest.raises(ValueError) as e:
        both((torch.zeros(2, 3, 3), torch.zeros(3, 1)))
    assert str(e.value) == "TaskAndAccuracy: 2 support sets but 3 accuracies"
    with pytest.raises(ValueError, match="4 support sets but 1 accuracies"):
        both((torch.zeros(4, 1, 3), torch.zeros(1, 1)))

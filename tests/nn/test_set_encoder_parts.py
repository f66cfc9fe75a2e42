"""pdiff_fast.nn.set_encoder's parts, value by value: its layers and their sizes, the forward pass
against one written out here (masked mean, multi-head attention of the learned query with padded
elements left out, the head), and the checks with their messages. Written against the mutants
mutmut left alive (tests/mutation, docs/mutation-scores.md)."""
import math
import re

import pytest
import torch
from torch import nn

from pdiff_fast.nn.set_encoder import SetEncoder


def test_the_layers_and_their_sizes():
    torch.manual_seed(0)
    enc = SetEncoder(5, width=12, out_dim=7, heads=3)
    assert (enc.in_features, enc.out_dim) == (5, 7)
    kinds = [type(m) for m in enc.element]
    assert kinds == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert [(m.in_features, m.out_features) for m in enc.element if isinstance(m, nn.Linear)] == [(5, 12), (12, 12),
                                                                                                   (12, 12)]
    assert enc.query.shape == (1, 1, 12)
    assert enc.attend.embed_dim == 12 and enc.attend.num_heads == 3 and enc.attend.batch_first is True
    assert [type(m) for m in enc.head] == [nn.LayerNorm, nn.Linear, nn.ReLU, nn.Linear]
    assert enc.head[0].normalized_shape == (24,)
    assert [(m.in_features, m.out_features) for m in enc.head if isinstance(m, nn.Linear)] == [(24, 12), (12, 7)]
    default = SetEncoder(3)
    assert (default.out_dim, default.attend.embed_dim, default.attend.num_heads) == (32, 64, 4)


def test_the_query_starts_at_unit_norm_scale():
    torch.manual_seed(0)
    q = SetEncoder(3, width=1024, heads=4).query
    assert q.std().item() == pytest.approx(1024 ** -0.5, rel=0.1)


def by_hand(enc, sets, mask=None):
    """The forward pass written out: element MLP, masked mean, one query attending per head
    (padding left out), the head on [mean, pooled]."""
    h = enc.element(sets)
    if mask is None:
        mask = torch.ones(sets.shape[:2], dtype=torch.bool)
    w = mask.float().unsqueeze(2)
    mean = (h * w).sum(1) / w.sum(1)
    a = enc.attend
    width, heads = a.embed_dim, a.num_heads
    wq, wk, wv = a.in_proj_weight.split(width)
    bq, bk, bv = a.in_proj_bias.split(width)
    q = (enc.query[0] @ wq.T + bq).reshape(1, heads, -1)  # (1, heads, d)
    k = (h @ wk.T + bk).reshape(*h.shape[:2], heads, -1)  # (B, n, heads, d)
    v = (h @ wv.T + bv).reshape(*h.shape[:2], heads, -1)
    scores = torch.einsum("qhd,bnhd->bhn", q, k) / math.sqrt(width // heads)
    scores = scores.masked_fill(~mask[:, None, :], -math.inf)
    pooled = torch.einsum("bhn,bnhd->bhd", scores.softmax(-1), v).reshape(len(sets), width)
    pooled = a.out_proj(pooled)
    return enc.head(torch.cat([mean, pooled], 1))


def test_forward_against_the_computation_written_out():
    torch.manual_seed(0)
    enc = SetEncoder(4, width=8, out_dim=3, heads=2).eval()
    sets = torch.randn(3, 5, 4)
    torch.testing.assert_close(enc(sets), by_hand(enc, sets), rtol=1e-5, atol=1e-6)
    mask = torch.tensor([[True, True, True, False, False], [True, False, False, False, False],
                         [True, True, True, True, True]])
    torch.testing.assert_close(enc(sets, mask), by_hand(enc, sets, mask), rtol=1e-5, atol=1e-6)
    # one real element: its own mean (not half of it) and all the attention on it
    torch.testing.assert_close(enc(sets, mask)[1], enc(sets[1:2, :1])[0], rtol=1e-5, atol=1e-6)
    assert enc(sets).shape == (3, 3)


@pytest.mark.parametrize("shape", [(2, 4), (2, 3, 5), (1, 2, 3, 4)])
def test_sets_of_the_wrong_shape_are_refused(shape):
    enc = SetEncoder(4, width=8, out_dim=3, heads=2)
    with pytest.raises(ValueError, match=rf"^SetEncoder expects \(B, n, 4\) sets, got {re.escape(str(shape))}$"):
        enc(torch.zeros(shape))


def test_an_empty_set_and_a_width_that_heads_do_not_divide_are_refused():
    enc = SetEncoder(4, width=8, out_dim=3, heads=2)
    with pytest.raises(ValueError, match=r"^SetEncoder: a set needs at least one element$"):
        enc(torch.zeros(2, 0, 4))
    with pytest.raises(ValueError, match=r"^SetEncoder: width 10 must be a multiple of heads 4$"):
        SetEncoder(5, 10, 3, heads=4)
    SetEncoder(5, 12, 3, heads=4)

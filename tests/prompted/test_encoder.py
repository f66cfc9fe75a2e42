"""The prompt encoder: (B, 1) -> (B, E), a function of each row alone, distinct prompts distinct
embeddings, and wrong inputs refused."""
import pytest
import torch

from pdiff_fast.prompted.encoder import FREQUENCIES, AccuracyEncoder


def test_rows_are_independent_and_distinct():
    enc = AccuracyEncoder(width=16, out_dim=8)
    a = torch.tensor([[0.0], [0.3], [1.0], [1.2]])
    out = enc(a)
    assert out.shape == (4, 8)
    for i in range(4):  # a row's embedding does not depend on the others in the batch
        torch.testing.assert_close(enc(a[i:i + 1]), out[i:i + 1])
    assert torch.cdist(out, out).fill_diagonal_(1.0).min() > 1e-4


def test_features_are_the_value_and_its_fourier_terms():
    enc = AccuracyEncoder(width=16, out_dim=8)
    first = enc.mlp[0]
    assert first.in_features == 1 + 2 * FREQUENCIES
    a = torch.tensor([[0.25]])
    seen = {}
    first.register_forward_pre_hook(lambda m, i: seen.update(x=i[0]))
    enc(a)
    ang = 0.25 * torch.pi * 2.0 ** torch.arange(FREQUENCIES)
    torch.testing.assert_close(seen["x"][0], torch.cat([torch.tensor([0.25]), ang.sin(), ang.cos()]))


def test_wrong_inputs_are_refused():
    enc = AccuracyEncoder()
    with pytest.raises(ValueError, match=r"\(B, 1\)"):
        enc(torch.zeros(3))
    with pytest.raises(ValueError, match="takes no mask"):
        enc(torch.zeros(3, 1), torch.ones(3, 1, dtype=torch.bool))

"""The autoencoder matches the reference v1 layout: keys, shapes and outputs (against `PlainAE`,
the reference's layer stack from stock nn modules, tests/nn/reference_autoencoder.py)."""
import pytest
import torch

from pdiff_fast.nn.autoencoder import ODEncoder2Decoder, medium, min_in_dim, small
from reference_autoencoder import PlainAE


@pytest.mark.parametrize("preset,k,fold,enc,dec,in_dim", [
    ("small", 3, 3, [2, 2, 2, 2], [2, 64, 64, 8], 300),
    ("small", 3, 3, [2, 2, 2, 2], [2, 64, 64, 8], 2048),
    ("medium", 5, 5, [4, 4, 4, 4], [4, 256, 256, 8], 2048),
])
def test_reference_state_dict_loads_strict_and_gives_same_outputs(preset, k, fold, enc, dec, in_dim):
    ref = PlainAE(in_dim, k, fold, enc, dec)
    ours = {"small": small, "medium": medium}[preset](in_dim, 0.001, 0.1)
    assert set(ours.state_dict()) == set(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(3, in_dim)
    z = ours.encode(x)
    torch.testing.assert_close(z, ref.encode(x), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.decode(z), ref.decode(z), rtol=1e-5, atol=1e-5)


def test_medium_on_2048_values_has_the_reference_lengths():
    ae = medium(2048, 0.001, 0.1)
    assert ae.real_input_dim == 2500
    assert ae.latent_shape() == (4, 3)
    assert ae(torch.randn(2, 2048)).shape == (2, 2048)


def test_noise_augmentation_is_the_reference_interpolation():
    ae = small(300, 0.0, 0.0)
    x = torch.randn(4, 300)
    torch.testing.assert_close(ae(x), ae.decode(ae.encode(x).clamp(-1, 1)))
    # each factor where it belongs: the input factor on x, the latent factor on the code (two
    # different, nonzero factors, so swapping or sharing them fails)
    ae = small(300, 0.05, 0.3).eval()
    torch.manual_seed(2)
    got = ae(x)
    torch.manual_seed(2)
    n_in = torch.randn_like(x)
    z = ae.encode(n_in * 0.05 + x * 0.95)
    want = ae.decode((torch.randn_like(z) * 0.3 + z * 0.7).clamp(-1, 1))
    torch.testing.assert_close(got, want)
    torch.manual_seed(1)
    y = ODEncoder2Decoder.add_noise(x, 0.25)
    torch.manual_seed(1)
    torch.testing.assert_close(y, torch.randn_like(x) * 0.25 + x * 0.75)


def test_too_short_input_and_wrong_shapes_are_errors():
    with pytest.raises(ValueError, match="at least 1250"):
        medium(700, 0.001, 0.1)
    assert min_in_dim(3, 3) == 81
    ae = small(300)
    with pytest.raises(ValueError, match=r"\(B, 300\)"):
        ae.encode(torch.randn(2, 299))

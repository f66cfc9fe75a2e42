"""pdiff_fast.nn.lowrank_autoencoder's parts, value by value: the untrained start, the
principal-component initialisation against an SVD written out here (codes exactly within
CODE_SCALE, dead components at zero), encode's input shapes and clamp, decode, and forward's noise
augmentation draw for draw. Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md)."""
import math

import pytest
import torch

from pdiff_fast.nn.lowrank_autoencoder import CODE_SCALE, LowRankAutoencoder, lowrank


def test_the_untrained_start():
    torch.manual_seed(0)
    ae = LowRankAutoencoder(25, rank=3, input_noise_factor=0.2, latent_noise_factor=0.3)
    assert (ae.in_dim, ae.rank, ae.input_noise_factor, ae.latent_noise_factor) == (25, 3, 0.2, 0.3)
    assert ae.encoder.weight.shape == (3, 25) and ae.decoder.weight.shape == (25, 3)
    assert 0.5 < ae.encoder.weight.std().item() < 1.5 and 0.5 < ae.decoder.weight.std().item() < 1.5
    assert torch.equal(ae.center, torch.zeros(25))
    assert torch.equal(ae.encoder_scale, torch.full((3,), 0.2)) and torch.equal(ae.decoder_scale, torch.full((3,), 0.2))
    assert ae.latent_shape() == (1, 3) and ae.decode_channels == 1
    default = LowRankAutoencoder(4)
    assert (default.rank, default.input_noise_factor, default.latent_noise_factor) == (64, 0.001, 0.1)
    preset = lowrank(9, 0.05, 0.5)
    assert (preset.rank, preset.in_dim, preset.input_noise_factor, preset.latent_noise_factor) == (64, 9, 0.05, 0.5)
    assert (lowrank(9).input_noise_factor, lowrank(9).latent_noise_factor) == (0.001, 0.1)


@pytest.mark.parametrize("in_dim, rank", [(0, 4), (4, 0), (-1, 4)])
def test_sizes_must_be_positive(in_dim, rank):
    with pytest.raises(ValueError, match=rf"^LowRankAutoencoder: in_dim and rank must be positive, got {in_dim}, "
                                         rf"{rank}$"):
        LowRankAutoencoder(in_dim, rank)
    LowRankAutoencoder(1, 1)


def test_initialize_is_the_principal_components_scaled_into_code_scale():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 10, generator=g) * torch.linspace(3, 0.1, 10)
    ae = LowRankAutoencoder(10, rank=4)
    ae.initialize(x)
    xd = x.double()
    mean = xd.mean(0)
    v = torch.linalg.svd(xd - mean, full_matrices=False)[2][:4]
    amplitude = ((xd - mean) @ v.T).abs().amax(0) / 0.9
    root = math.sqrt(10)
    torch.testing.assert_close(ae.center, mean.float())
    torch.testing.assert_close(ae.encoder.weight.data, (v * root).float())
    torch.testing.assert_close(ae.decoder.weight.data, (v.T * root).float())
    torch.testing.assert_close(ae.encoder_scale, (1 / (root * amplitude)).float())
    torch.testing.assert_close(ae.decoder_scale, (amplitude / root).float())
    z = ae.encode(x)
    assert CODE_SCALE == 0.9
    torch.testing.assert_close(z.abs().amax((0, 1)), torch.full((4,), 0.9), rtol=1e-5, atol=1e-6)
    # rank 4 of 6 centred vectors: the projection on the top four components
    proj = mean + ((xd - mean) @ v.T) @ v
    torch.testing.assert_close(ae.decode(z).double(), proj, rtol=1e-4, atol=1e-4)


def test_components_beyond_the_data_or_at_rounding_level_are_dead():
    base = torch.randn(1, 12)
    direction = torch.randn(1, 12)
    x = base + torch.tensor([[-1.0], [0.0], [1.0]]) * direction  # rank 1 after centring, float32
    ae = LowRankAutoencoder(12, rank=5)
    weights = ae.encoder.weight.data.clone()
    ae.initialize(x)
    assert ae.encoder_scale[0] > 0 and ae.decoder_scale[0] > 0
    assert torch.equal(ae.encoder_scale[1:], torch.zeros(4)) and torch.equal(ae.decoder_scale[1:], torch.zeros(4))
    assert torch.equal(ae.encoder.weight.data[3:], weights[3:])  # rows past min(K, D) = 3 untouched
    z = ae.encode(x)
    assert torch.equal(z[:, 0, 1:], torch.zeros(3, 4))
    torch.testing.assert_close(ae.decode(z), x, rtol=1e-5, atol=1e-5)
    same = LowRankAutoencoder(12, rank=5)
    same.initialize(x.repeat(2, 1))  # no RNG: the same start from the same vectors
    torch.testing.assert_close(same.encoder_scale, ae.encoder_scale)


def test_initialize_resets_old_scales():
    ae = LowRankAutoencoder(6, rank=4)
    ae.encoder_scale.fill_(7.0)
    ae.decoder_scale.fill_(7.0)
    ae.initialize(torch.randn(2, 6))  # one live component
    assert (ae.encoder_scale[1:] == 0).all() and (ae.decoder_scale[1:] == 0).all()


def test_encode_takes_b_d_or_b_1_d_and_clamps():
    ae = LowRankAutoencoder(5, rank=2)
    with torch.no_grad():
        ae.encoder.weight.copy_(torch.tensor([[1.0, 0, 0, 0, 0], [0, 1.0, 0, 0, 0]]))
        ae.encoder_scale.fill_(1.0)
        ae.center.fill_(0.5)
    x = torch.tensor([[0.75, 3.0, 9, 9, 9], [0.0, -5.0, 9, 9, 9]])
    z = ae.encode(x)
    assert z.shape == (2, 1, 2) and z[:, 0].tolist() == [[0.25, 1.0], [-0.5, -1.0]]
    assert torch.equal(ae.encode(x.unsqueeze(1)), z)
    for bad in (torch.zeros(2, 6), torch.zeros(2, 2, 5), torch.zeros(5), torch.zeros(1, 1, 1, 5)):
        with pytest.raises(ValueError, match=rf"^autoencoder expects \(B, 5\) parameter vectors, got "
                                             rf"{str(tuple(bad.shape)).replace('(', '[(]').replace(')', '[)]')}$"):
            ae.encode(bad)


def test_decode_is_the_scaled_code_times_p_plus_the_centre():
    ae = LowRankAutoencoder(3, rank=2)
    with torch.no_grad():
        ae.decoder.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0], [-1.0, 0.0]]))
        ae.decoder_scale.copy_(torch.tensor([2.0, 0.5]))
        ae.center.copy_(torch.tensor([10.0, 20.0, 30.0]))
    z = torch.tensor([[[1.0, 1.0]], [[0.5, -2.0]]])
    assert ae.decode(z).tolist() == [[13.0, 20.5, 28.0], [9.0, 19.0, 29.0]]


def test_forward_is_the_reference_augmentation_draw_for_draw():
    torch.manual_seed(0)
    ae = LowRankAutoencoder(8, rank=3, input_noise_factor=0.2, latent_noise_factor=0.9)
    ae.initialize(torch.randn(5, 8))
    x = torch.randn(64, 8)
    torch.manual_seed(7)
    got = ae(x)
    torch.manual_seed(7)
    noisy = torch.randn_like(x) * 0.2 + x * 0.8
    z = ae.encode(noisy)
    z = torch.randn_like(z) * 0.9 + z * 0.1
    torch.testing.assert_close(got, ae.decode(torch.clamp(z, -1, 1)))
    assert z.max() > 1.1 and z.min() < -2.1  # the clamp bites on both sides, below -2 too


@pytest.mark.parametrize("a,b,second_live", [
    (1000.0, 0.001, False),  # 1e-6 of the largest: rounding level, dead (relative to the largest, not absolute)
    (1e-3, 1e-7, True),  # 1e-4 of a small largest: live (no floor of 1 under the largest)
])
def test_the_dead_threshold_is_relative_to_the_largest_amplitude(a, b, second_live):
    x = torch.tensor([[a, 0.0, 0.0], [-a, 0.0, 0.0], [0.0, b, 0.0], [0.0, -b, 0.0]], dtype=torch.float64)
    ae = LowRankAutoencoder(3, 2)
    ae.initialize(x)
    assert ae.decoder_scale[0].item() == pytest.approx(a / CODE_SCALE / math.sqrt(3), rel=1e-6)
    assert (ae.decoder_scale[1].item() != 0) is second_live and (ae.encoder_scale[1].item() != 0) is second_live
    if second_live:
        assert ae.decoder_scale[1].item() == pytest.approx(b / CODE_SCALE / math.sqrt(3), rel=1e-6)

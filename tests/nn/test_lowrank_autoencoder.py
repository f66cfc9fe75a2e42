"""The whole-network autoencoder: principal-component start, shapes, noise augmentation, training."""
import pytest
import torch

from pdiff_fast.nn.lowrank_autoencoder import CODE_SCALE, LowRankAutoencoder, lowrank
from pdiff_fast.pipeline.train import fit_autoencoder


def low_rank_population(k=40, d=500, rank=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(d, generator=g)
    basis = torch.linalg.qr(torch.randn(d, rank, generator=g))[0]  # (d, rank) orthonormal
    coefficients = torch.randn(k, rank, generator=g) * torch.linspace(3, 0.5, rank)
    return mean + coefficients @ basis.T


def test_initialize_reconstructs_a_low_rank_population_exactly():
    x = low_rank_population()
    ae = LowRankAutoencoder(x.shape[1], rank=8)
    ae.initialize(x)
    z = ae.encode(x)
    assert z.shape == (len(x), 1, 8)
    assert z.abs().max() <= CODE_SCALE + 1e-5
    assert z[:, 0, 5:].abs().max() < 1e-3  # components the data does not have carry ~nothing
    torch.testing.assert_close(ae.decode(z), x, atol=1e-4, rtol=1e-4)


def test_rank_above_k_gives_dead_components_not_errors():
    x = low_rank_population(k=3, d=50, rank=2)
    ae = LowRankAutoencoder(50, rank=16)
    ae.initialize(x)
    assert (ae.encoder_scale[3:] == 0).all() and (ae.decoder_scale[3:] == 0).all()
    assert (ae.encode(x)[:, 0, 3:] == 0).all()
    torch.testing.assert_close(ae.decode(ae.encode(x)), x, atol=1e-4, rtol=1e-4)


def test_a_single_checkpoint_decodes_to_itself():
    x = torch.randn(1, 30)
    ae = lowrank(30)
    ae.initialize(x)
    assert (ae.encode(x) == 0).all()
    torch.testing.assert_close(ae.decode(ae.encode(x)), x)


def test_state_dict_keys_and_shapes():
    sd = lowrank(100).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "encoder.weight": (64, 100), "decoder.weight": (100, 64), "center": (100,),
        "encoder_scale": (64,), "decoder_scale": (64,)}


def test_bad_shapes_are_clear_errors():
    ae = lowrank(10)
    with pytest.raises(ValueError, match=r"expects \(B, 10\)"):
        ae.encode(torch.zeros(2, 11))
    with pytest.raises(ValueError, match="positive"):
        LowRankAutoencoder(0)


def test_training_with_noise_augmentation_keeps_a_good_start_good():
    """The reference augmentation (input and latent noise) is applied in forward; a short fit
    from the principal components stays close to them and is finite."""
    torch.manual_seed(0)
    x = low_rank_population(k=32, d=300, rank=4)
    ae = lowrank(300, 0.001, 0.1)
    losses = fit_autoencoder(ae, x, steps=60, progress=False)
    deviation = ((x - x.mean(0)) ** 2).mean().item()
    assert losses[-1] < 0.1 * deviation  # the latent noise alone costs ~7% at the start
    reconstruction = ((ae.decode(ae.encode(x)) - x) ** 2).mean().item()
    assert reconstruction < 0.01 * deviation


@pytest.mark.parametrize("d", [1, 7, 300_000])
def test_any_length_round_trips(d):
    ae = lowrank(d)
    x = torch.randn(3, d)
    ae.initialize(x)
    with torch.no_grad():
        torch.testing.assert_close(ae.decode(ae.encode(x)), x, rtol=1e-4, atol=1e-4)

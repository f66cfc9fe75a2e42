"""Subsets of any size: the automatic preset choice, padding short subsets, and a 48-value
subset of a user's own model end to end through the public API."""
import pytest
import torch
from torch import nn

from pdiff_fast import Config, PDiff, digits
from pdiff_fast.nn.autoencoder import medium, small
from pdiff_fast.nn.autoencoder_choice import AUTO_LOWRANK_FROM, build_autoencoder, choose_preset, padded_length
from pdiff_fast.io import read_meta
from pdiff_fast.pipeline.train import fit_autoencoder
from reference_autoencoder import PlainAE


def test_auto_picks_small_between_its_shortest_input_and_the_threshold():
    assert choose_preset("auto", 1) == "lowrank"
    assert choose_preset("auto", 80) == "lowrank"
    assert choose_preset("auto", 81) == "small"
    assert choose_preset("auto", AUTO_LOWRANK_FROM - 1) == "small"
    assert choose_preset("auto", AUTO_LOWRANK_FROM) == "lowrank"
    assert choose_preset("medium", 10**6) == "medium"  # an explicit preset is kept
    with pytest.raises(ValueError, match="unknown autoencoder preset 'huge'.*'auto'"):
        choose_preset("huge", 10)


@pytest.mark.parametrize("preset,shortest", [("small", 81), ("medium", 1250)])
@pytest.mark.parametrize("d", [1, 2, 47, 48, 80, 81, 82, 384])
def test_short_subsets_are_zero_padded_and_cut_back(preset, shortest, d):
    torch.manual_seed(0)
    ae = build_autoencoder(preset, d)
    assert ae.in_dim == d and ae.padded_dim == max(d, shortest) and ae.preset == preset
    x = torch.randn(3, d)
    y = ae(x)
    assert y.shape == (3, d)
    # the same as the preset built for the padded length, run on the zero padded vector
    full = {"small": small, "medium": medium}[preset](ae.padded_dim)
    full.load_state_dict(ae.state_dict(), strict=True)
    padded = nn.functional.pad(x, (0, ae.padded_dim - d))
    torch.testing.assert_close(ae.encode(x), full.encode(padded), rtol=0, atol=0)
    z = ae.encode(x)
    torch.testing.assert_close(ae.decode(z), full.decode(z)[:, :d], rtol=0, atol=0)


def test_the_reference_modules_still_refuse_short_inputs():
    with pytest.raises(ValueError, match="in_dim=48 is too short"):
        small(48)
    with pytest.raises(ValueError, match="at least 1 value"):
        padded_length("small", 0)


def test_hundreds_of_thousands_of_values_match_the_reference_stack():
    """`small` at D = 200,003: latent and output equal the reference layer stack's (PlainAE) on
    the same weights; instance norm over 200k-long rows, the length where an index or a
    reduction that only works for short rows shows."""
    d = 200_003
    torch.manual_seed(0)
    ae = build_autoencoder("small", d)
    ref = PlainAE(d, 3, 3, [2, 2, 2, 2], [2, 64, 64, 8])
    ae.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, d)
    with torch.no_grad():
        z = ae.encode(x)
        torch.testing.assert_close(z, ref.encode(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ae.decode(z), ref.decode(z), rtol=1e-4, atol=1e-4)


def test_hundreds_of_thousands_of_values_round_trip_through_lowrank():
    """`lowrank` at D = 300,001 started from the checkpoints (rank >= k) gives them back."""
    d = 300_001
    x = torch.randn(2, d)
    ae = build_autoencoder("lowrank", d)
    ae.initialize(x)
    with torch.no_grad():
        torch.testing.assert_close(ae.decode(ae.encode(x)), x, rtol=1e-4, atol=1e-4)


def tiny_population(d):
    """16 standardised checkpoints of d values around one model."""
    torch.manual_seed(0)
    x = torch.randn(1, d) + 0.3 * torch.randn(16, d)
    return (x - x.mean()) / x.std()


def fitted_error(preset, d):
    """Clean reconstruction error after a 150-step fit, over the checkpoints' own variance."""
    x = tiny_population(d)
    ae = build_autoencoder(preset, d)
    fit_autoencoder(ae, x, steps=150, progress=False)
    with torch.no_grad():
        error = ((ae.decode(ae.encode(x)) - x) ** 2).mean()
    return (error / ((x - x.mean(0)) ** 2).mean()).item()


@pytest.mark.parametrize("d", [1, 5, 48])
def test_a_quick_fit_on_tiny_subsets_learns_them(d):
    assert fitted_error("auto", d) < 0.05


@pytest.mark.parametrize("d", [1, 5, 48])
def test_padded_small_does_not_learn_tiny_subsets_which_is_why_auto_avoids_it(d):
    assert fitted_error("small", d) > 0.9


class GroupNormCNN(nn.Sequential):
    """A user's model: its last two norm layers hold 16 + 32 = 48 values."""

    def __init__(self):
        super().__init__(
            nn.Conv2d(1, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))


def test_auto_at_48_values_is_recorded_resolved(tmp_path):
    cfg = Config(epochs=1, k=4, device="cpu")
    p = PDiff(cfg, tmp_path / "run", model=GroupNormCNN(), data=digits(), progress=False, log=None)
    p.collect()
    assert p.autoencoder_preset() == "lowrank"
    assert p._fields("autoencoder")["autoencoder"] == "lowrank"


def test_a_48_value_subset_of_a_users_model_runs_end_to_end(tmp_path):
    """With `small` asked for, the subset is padded (and the log says so)."""
    cfg = Config(autoencoder="small", epochs=3, k=12, ae_steps=30, diffusion_steps=30, denoiser_channels=[8, 8, 16, 16],
                 sampler="ddim", sample_steps=5, num_samples=9, noise_sigmas=[0.05], device="cpu")
    logs = []
    p = PDiff(cfg, tmp_path / "run", model=GroupNormCNN(), data=digits(), progress=False, log=logs.append)
    report = p.run()
    assert p.population().spec.dim == 48
    assert any("48 values" in line and "padded to 81" in line for line in logs)
    meta, _ = read_meta(p.path("autoencoder"))
    assert meta["preset"] == "small" and meta["in_dim"] == 48 and meta["padded_dim"] == 81
    generated = p.sample(4)
    assert generated.shape == (4, 48) and torch.isfinite(generated).all()
    assert len(report["per_model"]["generated_accuracy"]) == 9

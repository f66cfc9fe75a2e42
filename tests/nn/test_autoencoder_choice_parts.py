"""pdiff_fast.nn.autoencoder_choice's parts, value by value: the presets and their shortest
inputs, the automatic choice at its bounds, the padded length of every preset, the error messages
in full, and the noise factors handed to the built autoencoder. Written against the mutants mutmut
left alive (tests/mutation, docs/mutation-scores.md); the end-to-end and fitting tests of
test_autoencoder_choice.py are left out of the mutation run (seconds to minutes per mutant)."""
import pytest

from pdiff_fast.nn import autoencoder_choice as choice
from pdiff_fast.nn.autoencoder import medium, min_in_dim, small
from pdiff_fast.nn.lowrank_autoencoder import LowRankAutoencoder, lowrank


def test_the_presets_and_their_shapes():
    assert choice.PRESETS == {"small": small, "medium": medium, "lowrank": lowrank}
    assert choice.CONV_SHAPES == {"small": (3, 3), "medium": (5, 5)}
    assert choice.SMALL_SHORTEST == 81 == min_in_dim(3, 3)
    assert choice.AUTO_LOWRANK_FROM == 4096


@pytest.mark.parametrize("d, want", [(1, "lowrank"), (80, "lowrank"), (81, "small"), (4095, "small"),
                                     (4096, "lowrank"), (10**6, "lowrank")])
def test_auto_at_its_bounds(d, want):
    assert choice.choose_preset("auto", d) == want


@pytest.mark.parametrize("preset", ["small", "medium", "lowrank"])
def test_an_explicit_preset_is_kept_at_any_length(preset):
    for d in (1, 81, 4096, 10**6):
        assert choice.choose_preset(preset, d) == preset


def test_an_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"^unknown autoencoder preset 'Small'; choose from \['auto', 'lowrank', "
                                         r"'medium', 'small'\]$"):
        choice.choose_preset("Small", 100)


@pytest.mark.parametrize("preset, d, want", [("small", 1, 81), ("small", 80, 81), ("small", 81, 81), ("small", 82, 82),
                                             ("medium", 1, 1250), ("medium", 1249, 1250), ("medium", 1251, 1251),
                                             ("lowrank", 1, 1), ("lowrank", 80, 80), ("auto", 5, 5)])
def test_the_padded_length(preset, d, want):
    assert choice.padded_length(preset, d) == want


@pytest.mark.parametrize("d", [0, -3])
def test_a_subset_needs_a_value(d):
    for preset in ("small", "lowrank"):
        with pytest.raises(ValueError, match=rf"^autoencoder: a subset needs at least 1 value, got in_dim={d}$"):
            choice.padded_length(preset, d)
    choice.padded_length("lowrank", 1)


def test_the_built_autoencoder_records_its_lengths_and_takes_the_noise_factors():
    ae = choice.build_autoencoder("auto", 48, 0.25, 0.5)
    assert type(ae) is lowrank and isinstance(ae, LowRankAutoencoder)
    assert (ae.in_dim, ae.padded_dim, ae.preset, ae.rank) == (48, 48, "lowrank", 64)
    assert (ae.input_noise_factor, ae.latent_noise_factor) == (0.25, 0.5)
    conv = choice.build_autoencoder("small", 48, 0.25, 0.5)
    assert type(conv) is small and (conv.in_dim, conv.padded_dim, conv.preset) == (48, 81, "small")
    assert (conv.input_noise_factor, conv.latent_noise_factor) == (0.25, 0.5)
    default = choice.build_autoencoder("auto", 100)
    assert type(default) is small and (default.in_dim, default.padded_dim, default.preset) == (100, 100, "small")
    assert (default.input_noise_factor, default.latent_noise_factor) == (0.001, 0.1)
    m = choice.build_autoencoder("medium", 7)
    assert type(m) is medium and m.padded_dim == 1250 and m.in_dim == 7

"""Which autoencoder a subset of D values gets, and subsets of any size.

- `auto` (the default): the reference conv preset `small` from its shortest input (81 values) up to
  AUTO_LOWRANK_FROM values; the `lowrank` preset (pdiff_fast.nn.lowrank_autoencoder) outside that.
  Measured on the CPU machine (benchmarks/results/subset_scaling_cpu.md, autoencoder_choice_cpu.md):
  - Above: `small` costs 4.3 s per training step at D = 10k (0.11 at D = 384) and 4.8 GB at D = 33k;
    after 100 steps on the whole digits MLP (D = 9,226) its reconstructions are 141x the
    checkpoints' own variance away (35% accuracy), `lowrank`'s 0.003x (97.26%, the originals').
  - Below 81: the conv presets' first instance norm divides out the scale of the whole (zero
    padded) vector, so a 1-value subset keeps only its sign; on 16 checkpoints of 1, 5 and 48 values
    a 150-step fit of padded `small` ends at or above the checkpoints' own variance, `lowrank` under
    5% of it (tests/test_autoencoder_choice.py).
  - In between, `auto` keeps the reference's `small`, the method the paper evaluates and the
    default pipeline's published results. It is not a quality verdict: after 100 steps on the
    default subset (D = 384) `lowrank` reconstructs closer (0.0045x vs 3.8x; at the pipeline's 1500
    steps `small` does well); `autoencoder: "lowrank"` uses it at any D.
- Any D with a conv preset chosen explicitly: the conv presets need a shortest input (81 values
  for `small`, 1250 for `medium`: instance norm needs two latent positions). A shorter subset is
  built for that length, its vector zero padded and the decoder's output cut back to D;
  `padded_dim` records the length (the reference pads every input with zeros to a multiple of
  fold_rate**4 anyway, so this is the same operation, longer). The modules themselves keep the
  reference behaviour: `small(48)` still raises.
"""
from __future__ import annotations

from torch import nn

from .autoencoder import min_in_dim, medium, small
from .lowrank_autoencoder import lowrank

PRESETS = {"small": small, "medium": medium, "lowrank": lowrank}
CONV_SHAPES = {"small": (3, 3), "medium": (5, 5)}  # fold_rate, kernel_size
SMALL_SHORTEST = min_in_dim(*CONV_SHAPES["small"])  # 81
AUTO_LOWRANK_FROM = 4096  # values; see the module docstring


def choose_preset(preset: str, in_dim: int) -> str:
    """The preset name `preset` stands for at D = in_dim (`auto` resolved)."""
    if preset == "auto":
        return "small" if SMALL_SHORTEST <= in_dim < AUTO_LOWRANK_FROM else "lowrank"
    if preset not in PRESETS:
        raise ValueError(f"unknown autoencoder preset {preset!r}; choose from {['auto', *sorted(PRESETS)]}")
    return preset


def padded_length(preset: str, in_dim: int) -> int:
    """The length the preset's modules are built for: in_dim, or the shortest a conv preset takes."""
    if in_dim < 1:
        raise ValueError(f"autoencoder: a subset needs at least 1 value, got in_dim={in_dim}")
    if preset in CONV_SHAPES:
        return max(in_dim, min_in_dim(*CONV_SHAPES[preset]))
    return in_dim


def build_autoencoder(preset: str, in_dim: int, input_noise: float = 0.001, latent_noise: float = 0.1) -> nn.Module:
    """The autoencoder for D = in_dim values: `preset` resolved (choose_preset), built for
    padded_length values; `ae.in_dim` is D (what encode takes and decode returns), `ae.padded_dim`
    the built length, `ae.preset` the resolved name."""
    name = choose_preset(preset, in_dim)
    padded = padded_length(name, in_dim)
    ae = PRESETS[name](padded, input_noise, latent_noise)
    # The conv presets pad D to real_input_dim and cut their output to in_dim: with in_dim = D the
    # padding starts at D instead of at `padded` (zeros either way) and the cut gives D values.
    ae.in_dim, ae.padded_dim, ae.preset = in_dim, padded, name
    return ae

"""The prompt's encoder: a normalised accuracy -> an embedding the conditioned denoiser reads
(pdiff_fast.tasks.conditional.ConditionedDenoiser, in place of its set encoder).

The accuracy a (0 at the population's lowest validation accuracy, 1 at its highest; above 1 when a
prompt asks for more) enters as itself and as sines and cosines of a few frequencies (Fourier
features: a small MLP reads a scalar's fine differences better from them), then a two-layer MLP.
The linear feature keeps a defined, smooth answer outside [0, 1].
"""
from __future__ import annotations

import math

import torch
from torch import nn

FREQUENCIES = 4  # sin / cos of pi * a * 2^f, f = 0..3: the finest period is a quarter of the range


class AccuracyEncoder(nn.Module):
    def __init__(self, width: int = 64, out_dim: int = 32):
        super().__init__()
        self.out_dim = out_dim
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(FREQUENCIES, dtype=torch.float32), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(1 + 2 * FREQUENCIES, width), nn.SiLU(), nn.Linear(width, out_dim))

    def forward(self, a: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, 1) normalised accuracies -> (B, out_dim). `mask` is the set encoder's argument; a prompt
        is one value, so it takes none."""
        if a.dim() != 2 or a.shape[1] != 1:
            raise ValueError(f"AccuracyEncoder expects (B, 1) normalised accuracies, got {tuple(a.shape)}")
        if mask is not None:
            raise ValueError("AccuracyEncoder: a prompt is one value; it takes no mask")
        angles = a.float() * self.freqs
        return self.mlp(torch.cat([a.float(), angles.sin(), angles.cos()], 1))


class TaskAndAccuracy(nn.Module):
    """A task and an accuracy asked for -> one embedding (prompted dataset-conditioned generation,
    pdiff_fast.prompted.tasks): the set encoder's embedding of the task's support set plus the
    AccuracyEncoder's of the prompt, so the conditioned denoiser reads both through its one condition
    input. The null embedding of classifier-free guidance stands for both at once."""

    def __init__(self, sets: nn.Module, accuracy: AccuracyEncoder):
        super().__init__()
        if sets.out_dim != accuracy.out_dim:
            raise ValueError(f"TaskAndAccuracy: the set encoder gives {sets.out_dim} values, the accuracy encoder "
                             f"{accuracy.out_dim}; they must match to be added")
        self.sets, self.accuracy, self.out_dim = sets, accuracy, sets.out_dim

    def forward(self, cond: tuple[torch.Tensor, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """cond: ((B, n, F) support sets, (B, 1) normalised accuracies) -> (B, out_dim)."""
        if not isinstance(cond, (tuple, list)) or len(cond) != 2:
            raise ValueError("TaskAndAccuracy expects (support sets, normalised accuracies)")
        sets, a = cond
        if a.shape[0] != sets.shape[0]:
            raise ValueError(f"TaskAndAccuracy: {sets.shape[0]} support sets but {a.shape[0]} accuracies")
        return self.sets(sets, mask) + self.accuracy(a)

"""Dataset encoder: a task's (x, y) samples -> one embedding, whatever their order.

DeepSets with attention pooling (the pooling-by-attention of Set Transformer, without its
self-attention blocks): every element goes through the same MLP, then two poolings that do not
depend on the order read the set: the mean, and a learned query attending over the elements
(multi-head). Both feed a small head. Sets may be padded: `mask` (B, n), True for real elements.
"""
from __future__ import annotations

import torch
from torch import nn


class SetEncoder(nn.Module):
    def __init__(self, in_features: int, width: int = 64, out_dim: int = 32, heads: int = 4):
        super().__init__()
        if width % heads:
            raise ValueError(f"SetEncoder: width {width} must be a multiple of heads {heads}")
        self.in_features, self.out_dim = in_features, out_dim
        self.element = nn.Sequential(nn.Linear(in_features, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                                     nn.Linear(width, width))
        self.query = nn.Parameter(torch.randn(1, 1, width) * width ** -0.5)
        self.attend = nn.MultiheadAttention(width, heads, batch_first=True)
        self.head = nn.Sequential(nn.LayerNorm(2 * width), nn.Linear(2 * width, width), nn.ReLU(),
                                  nn.Linear(width, out_dim))

    def forward(self, sets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, n, in_features) -> (B, out_dim)."""
        if sets.dim() != 3 or sets.shape[2] != self.in_features:
            raise ValueError(f"SetEncoder expects (B, n, {self.in_features}) sets, got {tuple(sets.shape)}")
        if sets.shape[1] == 0:
            raise ValueError("SetEncoder: a set needs at least one element")
        h = self.element(sets)  # (B, n, width)
        if mask is None:
            mean = h.mean(1)
        else:
            w = mask.to(h.dtype).unsqueeze(2)
            mean = (h * w).sum(1) / w.sum(1).clamp_min(1)
        query = self.query.expand(len(sets), -1, -1)
        pooled, _ = self.attend(query, h, h, key_padding_mask=None if mask is None else ~mask, need_weights=False)
        return self.head(torch.cat([mean, pooled.squeeze(1)], 1))

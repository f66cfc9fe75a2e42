"""A small model zoo covering the normalisation layers p-diff generates.

  cnn1d   1D CNN with BatchNorm for MNIST-1D (the default pipeline)
  resnet  small ResNet (BatchNorm) for 8x8 digits
  vit     small ViT (LayerNorm) for 8x8 digits
  mlp     MLP with LayerNorm, any input shape

Top-level children run in order (nn.Sequential), so the population evaluator can run the
shared prefix once and only the generated tail per model.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class CNN1d(nn.Sequential):
    def __init__(self, in_channels=1, num_classes=10, channels=(32, 64, 128)):
        c1, c2, c3 = channels
        super().__init__(
            nn.Conv1d(in_channels, c1, 5, padding=2), nn.BatchNorm1d(c1), nn.ReLU(),
            nn.Conv1d(c1, c2, 3, stride=2, padding=1), nn.BatchNorm1d(c2), nn.ReLU(),
            nn.Conv1d(c2, c3, 3, stride=2, padding=1), nn.BatchNorm1d(c3), nn.ReLU(),
            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(c3, num_classes),
        )


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNetSmall(nn.Sequential):
    """CIFAR-style ResNet scaled to 8x8 inputs: stem, two stages of one BasicBlock each."""

    def __init__(self, in_channels=1, num_classes=10, width=16):
        super().__init__(
            nn.Conv2d(in_channels, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            BasicBlock(width, width), BasicBlock(width, 2 * width, stride=2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2 * width, num_classes),
        )


class PatchEmbed(nn.Module):
    def __init__(self, in_channels, dim, patch, n_patches):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)
        self.pos = nn.Parameter(torch.randn(1, n_patches, dim) * 0.02)

    def forward(self, x):  # (B, C, H, W) -> (B, N, dim)
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class TokenMean(nn.Module):
    def forward(self, x):  # (B, N, dim) -> (B, dim)
        return x.mean(1)


class ViTSmall(nn.Sequential):
    """Pre-norm transformer on 2x2 patches of 8x8 images; its last norm layers are LayerNorms."""

    def __init__(self, in_channels=1, num_classes=10, image=8, patch=2, dim=32, depth=2, heads=4):
        n = (image // patch) ** 2
        blocks = [nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True)
                  for _ in range(depth)]
        super().__init__(PatchEmbed(in_channels, dim, patch, n), *blocks, nn.LayerNorm(dim), TokenMean(),
                         nn.Linear(dim, num_classes))


class MLP(nn.Sequential):
    def __init__(self, in_features, num_classes=10, hidden=(64, 64)):
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.LayerNorm(h), nn.ReLU()]
            prev = h
        layers.append(nn.Linear(prev, num_classes))
        super().__init__(*layers)


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, **kwargs) -> nn.Module:
    """Build a zoo model for inputs of `input_shape` (without the batch dimension)."""
    if name == "cnn1d":
        if len(input_shape) != 2:
            raise ValueError(f"cnn1d takes (C, L) inputs, got {input_shape}")
        return CNN1d(input_shape[0], num_classes, **kwargs)
    if name == "resnet":
        if len(input_shape) != 3:
            raise ValueError(f"resnet takes (C, H, W) inputs, got {input_shape}")
        return ResNetSmall(input_shape[0], num_classes, **kwargs)
    if name == "vit":
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise ValueError(f"vit takes square (C, H, W) inputs, got {input_shape}")
        return ViTSmall(input_shape[0], num_classes, image=input_shape[1], **kwargs)
    if name == "mlp":
        return MLP(math.prod(input_shape), num_classes, **kwargs)
    raise ValueError(f"unknown model {name!r}; the zoo has cnn1d, resnet, vit, mlp")


ZOO = ("cnn1d", "resnet", "vit", "mlp")

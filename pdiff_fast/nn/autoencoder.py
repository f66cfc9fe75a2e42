"""Parameter autoencoder of p-diff v1 (`ODEncoder2Decoder`, presets `small` and `medium`).

Same constructor arguments and state_dict keys as the reference
(`encoder.encoder.{i}.{2,5}.*`, `decoder.decoder.{i}.{2,5}.*`), so a reference state_dict
loads with strict=True. Each block runs as two `act_norm_conv1d` ops (see pdiff_fast.ops),
which dispatch to Triton on CUDA.

Shapes for `medium` on 2048 values: (B, 2048) -> pad to (B, 1, 2500) -> 499 -> 99 -> 19 -> 3
-> latent (B, 4, 3) -> decode back to (B, 2048).
"""
from __future__ import annotations

import random

import torch
from torch import nn

from ..ops import act_norm_conv1d


class _InstanceNorm(nn.InstanceNorm1d):
    """nn.InstanceNorm1d(num_features=length) as in the reference; the length argument is
    only a label there (no affine, no running stats), so it holds no state."""


class EncoderBlock(nn.Sequential):
    """[LeakyReLU] -> IN -> Conv1d(k, s1, p1) -> LeakyReLU -> IN -> Conv1d(k, stride=fold, p0) -> [Tanh]."""

    def __init__(self, length, kernel_size, fold_rate, in_channel, out_channel, last=False, first=False):
        super().__init__(
            nn.Identity() if first else nn.LeakyReLU(),
            _InstanceNorm(length),
            nn.Conv1d(1 if first else in_channel, in_channel, kernel_size, stride=1, padding=1),
            nn.LeakyReLU(),
            _InstanceNorm(length),
            nn.Conv1d(in_channel, out_channel, kernel_size, stride=fold_rate, padding=0),
            nn.Tanh() if last else nn.Identity(),
        )
        self.first, self.last, self.fold_rate = first, last, fold_rate

    def forward(self, x):  # (B, Cin, L) -> (B, Cout, L')
        c1, c2 = self[2], self[5]
        h = act_norm_conv1d(x, c1.weight, c1.bias, stride=1, padding=1, pre_act=not self.first)
        return act_norm_conv1d(h, c2.weight, c2.bias, stride=self.fold_rate, padding=0, pre_act=True,
                               post_tanh=self.last)


class DecoderBlock(nn.Sequential):
    """LeakyReLU -> IN -> ConvTranspose1d(k, stride=fold) -> LeakyReLU -> IN -> Conv1d(k, s1, p fold-1 | fold)."""

    def __init__(self, length, kernel_size, fold_rate, in_channel, out_channel, last=False):
        super().__init__(
            nn.LeakyReLU(),
            _InstanceNorm(length),
            nn.ConvTranspose1d(in_channel, in_channel, kernel_size, stride=fold_rate, padding=0),
            nn.LeakyReLU(),
            _InstanceNorm(length),
            nn.Conv1d(in_channel, out_channel, kernel_size, stride=1, padding=fold_rate if last else fold_rate - 1),
        )
        self.fold_rate = fold_rate
        self.out_padding = fold_rate if last else fold_rate - 1

    def forward(self, x):
        c1, c2 = self[2], self[5]
        h = act_norm_conv1d(x, c1.weight, c1.bias, stride=self.fold_rate, padding=0, transposed=True, pre_act=True)
        return act_norm_conv1d(h, c2.weight, c2.bias, stride=1, padding=self.out_padding, pre_act=True)


class ODEncoder(nn.Module):
    def __init__(self, in_dim_list, fold_rate, kernel_size, channel_list):
        super().__init__()
        self.in_dim_list, self.fold_rate, self.kernel_size = in_dim_list, fold_rate, kernel_size
        channels = [channel_list[0]] + list(channel_list)  # the reference repeats the first width
        self.channel_list = channels
        n = len(channels) - 1
        self.encoder = nn.ModuleList(
            EncoderBlock(in_dim_list[i], kernel_size, fold_rate, channels[i], channels[i + 1],
                         last=i == n - 1, first=i == 0)
            for i in range(n)
        )

    def forward(self, x, **kwargs):
        for block in self.encoder:
            x = block(x)
        return x


class ODDecoder(nn.Module):
    def __init__(self, in_dim_list, fold_rate, kernel_size, channel_list):
        super().__init__()
        self.in_dim_list, self.fold_rate, self.kernel_size = in_dim_list, fold_rate, kernel_size
        channels = list(channel_list) + [1]
        self.channel_list = channels
        n = len(channels) - 1
        self.decoder = nn.ModuleList(
            DecoderBlock(in_dim_list[i], kernel_size, fold_rate, channels[i], channels[i + 1], last=i == n - 1)
            for i in range(n)
        )

    def forward(self, x, **kwargs):
        for block in self.decoder:
            x = block(x)
        return x


def latent_length(in_dim: int, fold_rate: int, kernel_size: int, n_layers: int = 4) -> int:
    """Length of the encoder output for `in_dim` values (<= 0 when the input is too short)."""
    length = (in_dim // fold_rate**n_layers + 1) * fold_rate**n_layers
    for _ in range(n_layers):
        length = length + 2 - kernel_size + 1  # Conv1d(k, s1, p1)
        if length < kernel_size:
            return 0
        length = (length - kernel_size) // fold_rate + 1  # Conv1d(k, stride=fold, p0)
    return length


def min_in_dim(fold_rate: int, kernel_size: int, n_layers: int = 4) -> int:
    """Smallest in_dim whose latent keeps 2 or more positions (instance norm needs them)."""
    step = fold_rate**n_layers
    in_dim = 1
    while latent_length(in_dim, fold_rate, kernel_size, n_layers) < 2:
        in_dim = (in_dim // step + 1) * step
    return in_dim


class ODEncoder2Decoder(nn.Module):
    decode_channels = 64  # widest decoder activation, values per parameter (sizes sampling chunks)

    def __init__(self, in_dim, kernel_size=3, fold_rate=3, input_noise_factor=0.001, latent_noise_factor=0.1,
                 enc_channel_list=None, dec_channel_list=None):
        super().__init__()
        enc_channel_list = [2, 2, 2, 2] if enc_channel_list is None else list(enc_channel_list)
        dec_channel_list = [2, 64, 64, 8] if dec_channel_list is None else list(dec_channel_list)
        if len(enc_channel_list) != 4 or len(dec_channel_list) != 4:
            raise ValueError("ODEncoder2Decoder: enc_channel_list and dec_channel_list need 4 widths each")
        smallest = min_in_dim(fold_rate, kernel_size)
        if in_dim < smallest:
            raise ValueError(f"ODEncoder2Decoder: in_dim={in_dim} is too short for fold_rate={fold_rate}, "
                             f"kernel_size={kernel_size}; it needs at least {smallest} values")
        self.in_dim, self.fold_rate, self.kernel_size = in_dim, fold_rate, kernel_size
        self.input_noise_factor, self.latent_noise_factor = input_noise_factor, latent_noise_factor
        n = len(enc_channel_list)
        self.real_input_dim = (in_dim // fold_rate**n + 1) * fold_rate**n
        enc_dims = [self.real_input_dim // fold_rate**i for i in range(n)]
        dec_dims = [self.real_input_dim // fold_rate**(4 - i) for i in range(len(dec_channel_list))]
        self.encoder = ODEncoder(enc_dims, fold_rate, kernel_size, enc_channel_list)
        self.decoder = ODDecoder(dec_dims, fold_rate, kernel_size, dec_channel_list)

    def adjust_input(self, x):  # (B, D) or (B, 1, D) -> (B, 1, real_input_dim), zero padded
        if x.dim() == 2:
            x = x.view(x.shape[0], 1, -1)
        if x.dim() != 3 or x.shape[1] != 1 or x.shape[2] != self.in_dim:
            raise ValueError(f"autoencoder expects (B, {self.in_dim}) parameter vectors, got {tuple(x.shape)}")
        return nn.functional.pad(x, (0, self.real_input_dim - self.in_dim))

    def adjust_output(self, y):  # (B, 1, L) -> (B, in_dim)
        return y[:, :, :self.in_dim].squeeze(1)

    def encode(self, x, **kwargs):
        return self.encoder(self.adjust_input(x))  # (B, C_lat, L_lat)

    def decode(self, z, **kwargs):
        return self.adjust_output(self.decoder(z))  # (B, in_dim)

    @staticmethod
    def noise_factor(noise_factor) -> float:
        """A fixed factor, or one drawn from (low, high) with Python's random (the reference)."""
        if not isinstance(noise_factor, (float, int)):
            low, high = noise_factor
            noise_factor = random.uniform(low, high)
        return noise_factor

    @classmethod
    def add_noise(cls, x, noise_factor):
        """Reference noise augmentation: an interpolation towards Gaussian noise."""
        noise_factor = cls.noise_factor(noise_factor)
        return torch.randn_like(x) * noise_factor + x * (1 - noise_factor)

    def forward(self, x, **kwargs):
        x = self.add_noise(x, self.input_noise_factor)
        z = self.add_noise(self.encode(x), self.latent_noise_factor)
        return self.decode(torch.clamp(z, -1, 1))

    def latent_shape(self) -> tuple[int, int]:
        with torch.no_grad():
            z = self.encode(torch.zeros(1, self.in_dim, device=self.encoder.encoder[0][2].weight.device))
        return tuple(z.shape[1:])


class small(ODEncoder2Decoder):
    def __init__(self, in_dim, input_noise_factor=0.001, latent_noise_factor=0.1):
        super().__init__(in_dim, 3, 3, input_noise_factor, latent_noise_factor, [2, 2, 2, 2], [2, 64, 64, 8])


class medium(ODEncoder2Decoder):
    def __init__(self, in_dim, input_noise_factor=0.001, latent_noise_factor=0.1):
        super().__init__(in_dim, 5, 5, input_noise_factor, latent_noise_factor, [4, 4, 4, 4], [4, 256, 256, 8])


PRESETS = {"small": small, "medium": medium}

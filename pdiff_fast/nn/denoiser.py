"""Latent denoisers of p-diff v1 and the EMA wrapper.

`AE_CNN_bottleneck` (reference unet.py): a 1D-conv encoder-decoder without downsampling,
channels 1 -> 64 -> 128 -> 256 -> 512 and back, kernel 3, InstanceNorm + LeakyReLU, additive
skips, a learned nn.Embedding(T, in_dim) time embedding added to each block's input.
Same constructor arguments and state_dict keys as the reference. The reference gives every
sample the timestep of sample 0 (`time_emb[0]`); here each sample gets its own unless
`shared_timestep=True`.

`ODUnet` (reference od_unet.py; keys `encoder.encoder.*`, `deoder.decoder.*`, `time_encode`).
The reference's forward of this variant does not run (it calls a missing `self.decoder`); this
one runs the evident intent: encoder with skips, decoder adding them, output clamped to [-1, 1].
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import act_norm_conv1d


class DenoiserBlock(nn.Sequential):
    """[LeakyReLU] -> IN -> Conv1d(k3, p1) -> LeakyReLU -> IN -> Conv1d(k3, p1); the time add
    before and the skip add after are fused into the two convs."""

    def __init__(self, length, in_channel, mid_channel, out_channel, first=False):
        layers = [] if first else [nn.LeakyReLU()]
        layers += [
            nn.InstanceNorm1d(length),
            nn.Conv1d(in_channel, mid_channel, 3, stride=1, padding=1),
            nn.LeakyReLU(),
            nn.InstanceNorm1d(length),
            nn.Conv1d(mid_channel, out_channel, 3, stride=1, padding=1),
        ]
        super().__init__(*layers)
        self.first = first

    def forward(self, x, time_info=None, skip=None):  # (B, Cin, L) -> (B, Cout, L)
        c1, c2 = (self[1], self[4]) if self.first else (self[2], self[5])
        h = act_norm_conv1d(x, c1.weight, c1.bias, padding=1, pre_act=not self.first, add=time_info)
        return act_norm_conv1d(h, c2.weight, c2.bias, padding=1, pre_act=True, residual=skip)


class AE_CNN_bottleneck(nn.Module):
    def __init__(self, in_dim, in_channel=1, time_step=1000, dec=None, shared_timestep=False, channel_list=None):
        super().__init__()
        self.channel_list = list(channel_list or [64, 128, 256, 512])
        if len(self.channel_list) != 4:
            raise ValueError("AE_CNN_bottleneck: channel_list needs 4 widths")
        self.in_dim = self.real_input_dim = in_dim
        self.fold_rate, self.kernal_size = 1, 3  # reference attribute names
        self.dec = dec
        self.shared_timestep = shared_timestep
        c, L = self.channel_list, in_dim
        self.enc1 = DenoiserBlock(L, in_channel, c[0], c[0], first=True)
        self.enc2 = DenoiserBlock(L, c[0], c[1], c[1])
        self.enc3 = DenoiserBlock(L, c[1], c[2], c[2])
        self.enc4 = DenoiserBlock(L, c[2], c[3], c[3])
        self.dec1 = DenoiserBlock(L, c[3], c[2], c[2])
        self.dec2 = DenoiserBlock(L, c[2], c[1], c[1])
        self.dec3 = DenoiserBlock(L, c[1], c[0], c[0])
        self.dec4 = DenoiserBlock(L, c[0], c[0], in_channel)
        self.time_encode = nn.Embedding(time_step, in_dim)

    def time_info(self, time: torch.Tensor, batch: int) -> torch.Tensor:
        """(B,) timesteps -> (B, 1, in_dim) embeddings (all of sample 0's if shared_timestep)."""
        time = time.reshape(-1)
        if self.shared_timestep:
            return self.time_encode(time[:1]).view(1, 1, -1).expand(batch, 1, -1)
        if time.numel() == 1:
            return self.time_encode(time).view(1, 1, -1).expand(batch, 1, -1)
        return self.time_encode(time).view(batch, 1, -1)

    def forward(self, input, time, cond=None):
        shape = input.shape  # (B, C, L) with C * L == in_dim, or (B, in_dim)
        x = input.reshape(shape[0], 1, -1)  # (B, 1, in_dim)
        if x.shape[2] != self.in_dim:
            raise ValueError(f"denoiser expects {self.in_dim} latent values per sample, got {tuple(shape)}")
        t = self.time_info(time, shape[0])  # (B, 1, in_dim)
        if cond is not None:  # (B, in_dim): a condition (pdiff_fast.tasks.conditional), added where the time is
            t = t + cond.reshape(shape[0], 1, self.in_dim)
        e1 = self.enc1(x, t)
        e2 = self.enc2(e1, t)
        e3 = self.enc3(e2, t)
        e4 = self.enc4(e3, t)
        d1 = self.dec1(e4, t, skip=e3)
        d2 = self.dec2(d1, t, skip=e2)
        d3 = self.dec3(d2, t, skip=e1)
        return self.dec4(d3, t).reshape(shape)


class _ODUnetEncoder(nn.Module):
    def __init__(self, in_dim_list, channels, fold_rate, kernel_size):
        super().__init__()
        self.encoder = nn.ModuleList(
            nn.Sequential(
                nn.InstanceNorm1d(in_dim_list[i]),
                nn.Conv1d(channels[i], channels[i + 1], kernel_size, padding=1, stride=1),
                nn.LeakyReLU(),
                nn.InstanceNorm1d(in_dim_list[i]),
                nn.Conv1d(channels[i + 1], channels[i + 1], kernel_size, padding=1, stride=fold_rate),
                nn.LeakyReLU(),
            )
            for i in range(len(in_dim_list))
        )
        self.fold_rate = fold_rate

    def forward(self, x, time_info):
        outputs = []
        for layer in self.encoder:
            h = act_norm_conv1d(x, layer[1].weight, layer[1].bias, padding=1, add=time_info)
            h = act_norm_conv1d(h, layer[4].weight, layer[4].bias, padding=1, stride=self.fold_rate, pre_act=True)
            x = F.leaky_relu(h)
            outputs.append(x)
        return outputs


class _ODUnetDecoder(nn.Module):
    def __init__(self, in_dim_list, channels, fold_rate, kernel_size):
        super().__init__()
        n = len(in_dim_list)
        self.decoder = nn.ModuleList(
            nn.Sequential(
                nn.InstanceNorm1d(in_dim_list[i]),
                nn.Conv1d(channels[i], channels[i + 1], kernel_size, padding=fold_rate, stride=1),
                nn.LeakyReLU(),
                nn.InstanceNorm1d(in_dim_list[i]),
                nn.Conv1d(channels[i + 1], channels[i + 1], kernel_size, padding=1, stride=1),
                nn.LeakyReLU() if i < n - 1 else nn.Identity(),
            )
            for i in range(n)
        )
        self.fold_rate = fold_rate

    def forward(self, skips, time_info):
        y = skips[-1]
        n = len(self.decoder)
        for i, layer in enumerate(self.decoder):
            last = i == n - 1
            h = act_norm_conv1d(y, layer[1].weight, layer[1].bias, padding=self.fold_rate, add=time_info)
            h = act_norm_conv1d(h, layer[4].weight, layer[4].bias, padding=1, pre_act=True)
            y = h if last else F.leaky_relu(h) + skips[n - 2 - i]
        return y


class ODUnet(nn.Module):
    def __init__(self, in_dim, in_channel=1, time_step=1000, enc_channel_list=None, dec_channel_list=None,
                 fold_rate=1, kernal_size=3, shared_timestep=False):
        super().__init__()
        if fold_rate != 1:
            raise ValueError("ODUnet: only fold_rate=1 keeps the skip lengths equal (as the reference uses it)")
        enc = list(enc_channel_list or [64, 128, 256, 512])
        dec = list(dec_channel_list or [512, 256, 128, 64])
        self.in_dim, self.shared_timestep = in_dim, shared_timestep
        dims = [in_dim] * len(enc)
        self.encoder = _ODUnetEncoder(dims, [in_channel] + enc, fold_rate, kernal_size)
        self.deoder = _ODUnetDecoder(dims, dec + [in_channel], fold_rate, kernal_size)  # reference spelling
        self.time_encode = nn.Embedding(time_step, in_dim)

    time_info = AE_CNN_bottleneck.time_info

    def forward(self, input, time, cond=None):
        shape = input.shape
        x = input.reshape(shape[0], 1, -1)
        t = self.time_info(time, shape[0])
        y = self.deoder(self.encoder(x, t), t)
        return torch.clamp(y, -1, 1).reshape(shape)


class EMA(nn.Module):
    """A model and its exponential moving average, both in the state_dict (`model.*`, `ema.*`)."""

    def __init__(self, model: nn.Module, decay: float = 0.9999):
        super().__init__()
        self.model = model
        self.ema = copy.deepcopy(model).requires_grad_(False)
        self.decay = decay

    def update(self, decay: float | None = None) -> None:
        d = self.decay if decay is None else decay
        with torch.no_grad():  # not the decorator, the same: mutmut leaves decorated functions unmutated
            for e, m in zip(self.ema.parameters(), self.model.parameters()):
                e.lerp_(m.detach(), 1.0 - d)

    def forward(self, *args, **kwargs):
        return self.model(*args, **kwargs)


DENOISERS = {"AE_CNN_bottleneck": AE_CNN_bottleneck, "ODUnet": ODUnet}

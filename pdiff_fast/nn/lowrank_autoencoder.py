"""Parameter autoencoder for whole networks (preset `lowrank`): a per-position linear code.

Why not the reference conv autoencoder: its decoder shares its weights across positions, so all
that tells weight j from weight j' is the latent, and the latent is D/81 (small) or D/625
(medium) values long; the reference p-diff does not reconstruct whole networks (its issues #13,
#20, #27, #30). The peers that do generate whole networks give every parameter position learned
state of its own (RPG and SANE: parameter tokens with position embeddings; D2NWG: per-layer
chunk codes). The cheapest form of that is a linear decoder whose weight has one row per
position:

    encode: x (B, D) -> clamp(((x - c) @ Q.T) * a, -1, 1) -> (B, 1, rank)
    decode: z (B, 1, rank) -> (z * b) @ P.T + c -> (B, D)

Cost per sample is 2 * D * rank multiply-adds each way and memory D * rank per matrix: both grow
linearly in D, and the latent (rank values) does not grow at all, so the latent denoiser costs
the same at D = 1M as at D = 1k. `initialize(x)` starts it at the principal components of the
training vectors: c their mean, the rows of Q and P the top `rank` right singular vectors times
sqrt(D) (entries of order 1, so AdamW's steps of ~lr are the same relative change for every
component), a and b per-component scales that put each training code in [-CODE_SCALE, CODE_SCALE]
(on the DDPM's [-1, 1] range, well above the reference latent noise of 0.1). Untrained,
decode(encode(x)) is then the projection of x on those components. Training adapts it to the
reference noise augmentation (input noise, latent noise, clamp), as for the conv autoencoder.
Components beyond min(K, D), or at float32 rounding level, get zero scales (their latent values
are 0). benchmarks/subset_scaling.py measures it against `small`.
"""
from __future__ import annotations

import torch
from torch import nn

from .autoencoder import ODEncoder2Decoder

CODE_SCALE = 0.9  # largest |code| of a training vector after initialize()


class LowRankAutoencoder(nn.Module):
    """Whole-network autoencoder: parameters `encoder.weight` Q (rank, D) and `decoder.weight` P (D, rank);
    buffers `center` c (D,), `encoder_scale` a and `decoder_scale` b (rank,)."""

    decode_channels = 1  # activation values per parameter when decoding (the conv presets: 64)

    def __init__(self, in_dim: int, rank: int = 64, input_noise_factor=0.001, latent_noise_factor=0.1):
        super().__init__()
        if in_dim < 1 or rank < 1:
            raise ValueError(f"LowRankAutoencoder: in_dim and rank must be positive, got {in_dim}, {rank}")
        self.in_dim, self.rank = in_dim, rank
        self.input_noise_factor, self.latent_noise_factor = input_noise_factor, latent_noise_factor
        self.encoder = nn.Module()
        self.encoder.weight = nn.Parameter(torch.randn(rank, in_dim))
        self.decoder = nn.Module()
        self.decoder.weight = nn.Parameter(torch.randn(in_dim, rank))
        self.register_buffer("center", torch.zeros(in_dim))
        self.register_buffer("encoder_scale", torch.full((rank,), in_dim ** -0.5))
        self.register_buffer("decoder_scale", torch.full((rank,), in_dim ** -0.5))

    def initialize(self, x: torch.Tensor) -> None:
        """Principal-component start from the (K, D) training vectors (deterministic: no RNG)."""
        with torch.no_grad():  # not the decorator, the same: mutmut leaves decorated functions unmutated
            x = x.double()
            mean = x.mean(0)
            _, _, vh = torch.linalg.svd(x - mean, full_matrices=False)  # (min(K, D), D)
            r = min(self.rank, vh.shape[0])
            v = vh[:r]
            amplitude = ((x - mean) @ v.T).abs().amax(0) / CODE_SCALE  # (r,): code j = projection / amplitude_j
            live = amplitude > 1e-5 * amplitude.max().clamp_min(1e-30)  # float32 input: below that is rounding
            root = self.in_dim ** 0.5
            self.center.copy_(mean)
            self.encoder.weight[:r] = v * root
            self.decoder.weight[:, :r] = v.T * root
            self.encoder_scale.zero_()
            self.decoder_scale.zero_()
            self.encoder_scale[:r] = torch.where(live, 1 / (root * amplitude.clamp_min(1e-12)), 0)
            self.decoder_scale[:r] = torch.where(live, amplitude / root, 0)

    def encode(self, x, **kwargs):  # (B, D) -> (B, 1, rank) in [-1, 1]
        if x.dim() == 3 and x.shape[1] == 1:
            x = x.squeeze(1)
        if x.dim() != 2 or x.shape[1] != self.in_dim:
            raise ValueError(f"autoencoder expects (B, {self.in_dim}) parameter vectors, got {tuple(x.shape)}")
        z = ((x - self.center) @ self.encoder.weight.T) * self.encoder_scale
        return torch.clamp(z, -1, 1).unsqueeze(1)

    def decode(self, z, **kwargs):  # (B, 1, rank) -> (B, D)
        return torch.addmm(self.center, z.reshape(z.shape[0], self.rank) * self.decoder_scale, self.decoder.weight.T)

    noise_factor = staticmethod(ODEncoder2Decoder.noise_factor)
    add_noise = ODEncoder2Decoder.add_noise

    def forward(self, x, **kwargs):  # the reference noise augmentation, as ODEncoder2Decoder.forward
        x = self.add_noise(x, self.input_noise_factor)
        z = self.add_noise(self.encode(x), self.latent_noise_factor)
        return self.decode(torch.clamp(z, -1, 1))

    def latent_shape(self) -> tuple[int, int]:
        return (1, self.rank)


class lowrank(LowRankAutoencoder):
    """The preset: rank 64 (the signature of `small` / `medium`)."""

    def __init__(self, in_dim, input_noise_factor=0.001, latent_noise_factor=0.1):
        super().__init__(in_dim, 64, input_noise_factor, latent_noise_factor)

"""The networks. Parameter autoencoders: the reference's convolutional ODEncoder2Decoder (presets
`small`, `medium`) and the low-rank one for large subsets, `build_autoencoder` picking one for D
values (autoencoder_choice). Latent denoisers: AE_CNN_bottleneck, ODUnet and their EMA. The set
encoder that embeds a task from its (x, y) samples. The base models whose parameters are collected
(`build_model`). Imports only the shared base (pdiff_fast.ops, pdiff_fast.params, ...)."""
from .autoencoder import ODEncoder2Decoder, medium, small
from .autoencoder_choice import build_autoencoder, choose_preset
from .denoiser import DENOISERS, EMA, AE_CNN_bottleneck, ODUnet
from .lowrank_autoencoder import LowRankAutoencoder, lowrank
from .models import MLP, build_model
from .set_encoder import SetEncoder

__all__ = ["ODEncoder2Decoder", "small", "medium", "LowRankAutoencoder", "lowrank", "build_autoencoder",
           "choose_preset", "AE_CNN_bottleneck", "ODUnet", "EMA", "DENOISERS", "SetEncoder", "MLP", "build_model"]

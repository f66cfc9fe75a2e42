"""Shared by the sampling tests: a small autoencoder and denoiser (random weights, eval mode)."""
import pytest
import torch

from pdiff_fast.nn.autoencoder import small
from pdiff_fast.nn.denoiser import AE_CNN_bottleneck


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    ae = small(150).eval()
    den = AE_CNN_bottleneck(int(torch.Size(ae.latent_shape()).numel()), 1, channel_list=[4, 4, 8, 8]).eval()
    return ae, den

import pytest
import torch
from torch import nn

from pdiff_fast.nn.denoiser import EMA, AE_CNN_bottleneck, ODUnet


def plain_forward(m: AE_CNN_bottleneck, x, time_info):
    """The reference computation with stock modules run in order (nn.Sequential semantics)."""
    seq = lambda blk, h: nn.Sequential.forward(blk, h)  # noqa: E731
    e1 = seq(m.enc1, x + time_info)
    e2 = seq(m.enc2, e1 + time_info)
    e3 = seq(m.enc3, e2 + time_info)
    e4 = seq(m.enc4, e3 + time_info)
    d1 = seq(m.dec1, e4 + time_info) + e3
    d2 = seq(m.dec2, d1 + time_info) + e2
    d3 = seq(m.dec3, d2 + time_info) + e1
    return seq(m.dec4, d3 + time_info)


def test_reference_keys():
    keys = set(AE_CNN_bottleneck(12, 1).state_dict())
    assert {"enc1.1.weight", "enc1.4.bias", "enc2.2.weight", "enc2.5.weight", "dec4.5.bias",
            "time_encode.weight"} <= keys
    assert AE_CNN_bottleneck(12, 1).state_dict()["dec1.2.weight"].shape == (256, 512, 3)


def test_shared_timestep_reproduces_the_reference_quirk():
    m = AE_CNN_bottleneck(12, 1, shared_timestep=True)
    x, t = torch.randn(5, 4, 3), torch.randint(0, 1000, (5,))
    quirk = m.time_encode(t)[0, None, None].repeat(5, 1, 1)  # every sample gets sample 0's step
    torch.testing.assert_close(m(x, t), plain_forward(m, x.reshape(5, 1, 12), quirk).reshape(5, 4, 3))


def test_per_sample_timestep_is_the_default():
    m = AE_CNN_bottleneck(12, 1)
    x, t = torch.randn(5, 4, 3), torch.randint(0, 1000, (5,))
    per = m.time_encode(t).view(5, 1, 12)
    torch.testing.assert_close(m(x, t), plain_forward(m, x.reshape(5, 1, 12), per).reshape(5, 4, 3))
    one = m(x[2:3], t[2:3])
    torch.testing.assert_close(m(x, t)[2:3], one, rtol=1e-4, atol=1e-5)


def test_wrong_latent_size_is_an_error():
    with pytest.raises(ValueError, match="12 latent values"):
        AE_CNN_bottleneck(12, 1)(torch.randn(2, 13), torch.zeros(2, dtype=torch.long))


def test_odunet_runs_with_reference_keys_and_clamps():
    m = ODUnet(12)
    keys = set(m.state_dict())
    assert "encoder.encoder.0.1.weight" in keys and "deoder.decoder.3.4.weight" in keys
    y = m(torch.randn(3, 4, 3) * 5, torch.randint(0, 1000, (3,)))
    assert y.shape == (3, 4, 3) and y.abs().max() <= 1


def test_ema_is_in_the_state_dict_and_moves_towards_the_model():
    e = EMA(AE_CNN_bottleneck(12, 1, channel_list=[4, 4, 4, 4]), decay=0.5)
    assert any(k.startswith("ema.") for k in e.state_dict()) and any(k.startswith("model.") for k in e.state_dict())
    before = e.ema.enc1[1].weight.clone()
    with torch.no_grad():
        e.model.enc1[1].weight.add_(1.0)
    e.update()
    torch.testing.assert_close(e.ema.enc1[1].weight, before + 0.5)

"""pdiff_fast.nn.autoencoder's parts, value by value: each block's layers and its forward pass against
the same computation written out with torch.nn.functional, the encoder's and decoder's widths,
flags and lengths, latent_length and min_in_dim worked by hand, the padding and cutting of the
parameter vectors with their messages, the noise factors and the noisy forward pass, and the
presets' settings. Written against the mutants mutmut left alive (tests/mutation,
docs/mutation-scores.md); test_autoencoder.py compares whole models with the reference's layers."""
import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdiff_fast.nn.autoencoder import (PRESETS, DecoderBlock, EncoderBlock, ODDecoder, ODEncoder, ODEncoder2Decoder,
                                       latent_length, medium, min_in_dim, small)


def lrelu(x):
    return F.leaky_relu(x, 0.01)


def inorm(x):
    return F.instance_norm(x, eps=1e-5)


def conv(m):
    return (type(m).__name__, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def enc_ref(b, x):
    h = F.conv1d(inorm(x if b.first else lrelu(x)), b[2].weight, b[2].bias, padding=1)
    y = F.conv1d(inorm(lrelu(h)), b[5].weight, b[5].bias, stride=b.fold_rate)
    return torch.tanh(y) if b.last else y


def dec_ref(b, x):
    h = F.conv_transpose1d(inorm(lrelu(x)), b[2].weight, b[2].bias, stride=b.fold_rate)
    return F.conv1d(inorm(lrelu(h)), b[5].weight, b[5].bias, padding=b.out_padding)


def test_encoder_block_layers_and_forward():
    b = EncoderBlock(20, 3, 2, 4, 5, first=True)
    assert [type(x).__name__ for x in b] == ["Identity", "_InstanceNorm", "Conv1d", "LeakyReLU", "_InstanceNorm",
                                            "Conv1d", "Identity"]
    assert conv(b[2]) == ("Conv1d", 1, 4, (3,), (1,), (1,)) and conv(b[5]) == ("Conv1d", 4, 5, (3,), (2,), (0,))
    assert b[1].num_features == 20 and b[4].num_features == 20 and isinstance(b[1], nn.InstanceNorm1d)
    assert (b.first, b.last, b.fold_rate) == (True, False, 2)
    x = torch.randn(2, 1, 20, generator=gen(1))
    with torch.no_grad():
        torch.testing.assert_close(b(x), enc_ref(b, x))
    b = EncoderBlock(20, 5, 3, 4, 2, last=True)
    assert [type(x).__name__ for x in b] == ["LeakyReLU", "_InstanceNorm", "Conv1d", "LeakyReLU", "_InstanceNorm",
                                            "Conv1d", "Tanh"]
    assert conv(b[2]) == ("Conv1d", 4, 4, (5,), (1,), (1,)) and conv(b[5]) == ("Conv1d", 4, 2, (5,), (3,), (0,))
    assert (b.first, b.last, b.fold_rate) == (False, True, 3)
    x = torch.randn(2, 4, 20, generator=gen(2)) * 3
    with torch.no_grad():
        y = b(x)
        torch.testing.assert_close(y, enc_ref(b, x))
        assert y.shape == (2, 2, 5)  # 20 -> 18 -> (18 - 5) // 3 + 1
    assert EncoderBlock(9, 3, 3, 2, 2).first is False and EncoderBlock(9, 3, 3, 2, 2).last is False


def test_decoder_block_layers_and_forward():
    b = DecoderBlock(6, 3, 2, 4, 5)
    assert [type(x).__name__ for x in b] == ["LeakyReLU", "_InstanceNorm", "ConvTranspose1d", "LeakyReLU",
                                            "_InstanceNorm", "Conv1d"]
    assert conv(b[2]) == ("ConvTranspose1d", 4, 4, (3,), (2,), (0,)) and conv(b[5]) == ("Conv1d", 4, 5, (3,), (1,), (1,))
    assert b[1].num_features == 6 and b[4].num_features == 6 and (b.fold_rate, b.out_padding) == (2, 1)
    x = torch.randn(2, 4, 6, generator=gen(3))
    with torch.no_grad():
        y = b(x)
        torch.testing.assert_close(y, dec_ref(b, x))
        assert y.shape == (2, 5, 13)  # (6 - 1) * 2 + 3 = 13, then padding 1 keeps it
    b = DecoderBlock(6, 3, 3, 4, 1, last=True)
    assert conv(b[5]) == ("Conv1d", 4, 1, (3,), (1,), (3,)) and (b.fold_rate, b.out_padding) == (3, 3)
    with torch.no_grad():
        y = b(x)
        torch.testing.assert_close(y, dec_ref(b, x))
        assert y.shape == (2, 1, 22)  # (6 - 1) * 3 + 3 = 18, then padding 3: 22


def test_encoder_and_decoder_widths_and_flags():
    e = ODEncoder([81, 27, 9, 3], 3, 3, [2, 3, 4, 5])
    assert e.channel_list == [2, 2, 3, 4, 5] and (e.in_dim_list, e.fold_rate, e.kernel_size) == ([81, 27, 9, 3], 3, 3)
    assert [(b.first, b.last) for b in e.encoder] == [(True, False), (False, False), (False, False), (False, True)]
    assert [(b[2].in_channels, b[2].out_channels, b[5].out_channels) for b in e.encoder] == [
        (1, 2, 2), (2, 2, 3), (3, 3, 4), (4, 4, 5)]
    assert [b[1].num_features for b in e.encoder] == [81, 27, 9, 3]
    x = torch.randn(2, 1, 81, generator=gen(4))
    with torch.no_grad():
        h = x
        for b in e.encoder:
            h = enc_ref(b, h)
        torch.testing.assert_close(e(x, unused=1), h)
    d = ODDecoder([1, 3, 9, 27], 3, 3, [5, 4, 3, 2])
    assert d.channel_list == [5, 4, 3, 2, 1] and (d.in_dim_list, d.fold_rate, d.kernel_size) == ([1, 3, 9, 27], 3, 3)
    assert [b.out_padding for b in d.decoder] == [2, 2, 2, 3]
    assert [(b[2].in_channels, b[5].out_channels) for b in d.decoder] == [(5, 4), (4, 3), (3, 2), (2, 1)]
    assert [b[1].num_features for b in d.decoder] == [1, 3, 9, 27]
    z = torch.randn(2, 5, 2, generator=gen(5))
    with torch.no_grad():
        h = z
        for b in d.decoder:
            h = dec_ref(b, h)
        torch.testing.assert_close(d(z, unused=1), h)


def test_latent_length_by_hand():
    assert latent_length(150, 3, 3) == 2  # 162 -> 54 -> 18 -> 6 -> 2
    assert latent_length(10, 3, 3) == 1  # 81 -> 27 -> 9 -> 3 -> 1
    assert latent_length(2048, 5, 5) == 3  # 2500 -> 2498 -> 499 -> 497 -> 99 -> 97 -> 19 -> 17 -> 3
    assert latent_length(700, 5, 5) == 1 and latent_length(1300, 5, 5) == 2 and latent_length(600, 5, 5) == 0
    assert latent_length(10, 3, 3, n_layers=2) == 2  # 18 -> 6 -> 2
    assert latent_length(1, 3, 3, n_layers=1) == 1  # 3: exactly the kernel is long enough
    assert latent_length(1, 2, 3, n_layers=1) == 0  # 2: shorter than the kernel
    assert latent_length(2, 2, 3, n_layers=1) == 1  # 4 -> (4 - 3) // 2 + 1
    assert latent_length(7, 2, 3, n_layers=1) == 3  # 8 -> (8 - 3) // 2 + 1
    assert latent_length(5, 1, 3, n_layers=1) == 4  # 6 -> 4


def test_min_in_dim():
    assert min_in_dim(3, 3) == 81 and min_in_dim(5, 5) == 1250
    assert min_in_dim(2, 3, n_layers=1) == 4  # 4 -> 1 and 6 -> 2: the first multiple of 2 with 2 positions
    assert min_in_dim(1, 3, n_layers=1) == 3
    assert min_in_dim(1, 1, n_layers=1) == 1  # the search starts at one value
    assert min_in_dim(3, 3, n_layers=2) == 9  # 18 -> 6 -> 2


def test_autoencoder_sizes_defaults_and_checks():
    ae = ODEncoder2Decoder(100, enc_channel_list=(2, 3, 4, 5), dec_channel_list=(5, 4, 3, 2))
    assert (ae.in_dim, ae.fold_rate, ae.kernel_size) == (100, 3, 3) and ae.real_input_dim == 162
    assert (ae.input_noise_factor, ae.latent_noise_factor) == (0.001, 0.1)
    assert ae.encoder.in_dim_list == [162, 54, 18, 6] and ae.decoder.in_dim_list == [2, 6, 18, 54]
    for dims in (ae.encoder.in_dim_list, ae.decoder.in_dim_list):  # whole numbers, as the reference's labels
        assert all(type(d) is int for d in dims)
    assert all(type(b[1].num_features) is int for b in [*ae.encoder.encoder, *ae.decoder.decoder])
    assert ae.encoder.channel_list == [2, 2, 3, 4, 5] and ae.decoder.channel_list == [5, 4, 3, 2, 1]
    assert ae.latent_shape() == (5, 2) and ae.decode_channels == 64
    d = ODEncoder2Decoder(81)
    assert d.encoder.channel_list == [2, 2, 2, 2, 2] and d.decoder.channel_list == [2, 64, 64, 8, 1]
    assert d.real_input_dim == 162 and d.latent_shape() == (2, 2)
    ae5 = ODEncoder2Decoder(1250, 5, 5, 0.2, 0.3)
    assert (ae5.kernel_size, ae5.fold_rate, ae5.input_noise_factor, ae5.latent_noise_factor) == (5, 5, 0.2, 0.3)
    assert ae5.real_input_dim == 1875 and ae5.encoder.in_dim_list == [1875, 375, 75, 15]
    assert ae5.decoder.in_dim_list == [3, 15, 75, 375] and ae5.latent_shape() == (2, 2)
    for enc, dec in (([2, 2, 2], None), (None, [2, 2, 2, 2, 2])):
        with pytest.raises(ValueError) as e:
            ODEncoder2Decoder(100, enc_channel_list=enc, dec_channel_list=dec)
        assert str(e.value) == "ODEncoder2Decoder: enc_channel_list and dec_channel_list need 4 widths each"
    with pytest.raises(ValueError) as e:
        ODEncoder2Decoder(80)
    assert str(e.value) == "ODEncoder2Decoder: in_dim=80 is too short for fold_rate=3, kernel_size=3; it needs at least 81 values"


def test_padding_cutting_encode_and_decode():
    torch.manual_seed(0)
    ae = ODEncoder2Decoder(100, enc_channel_list=(2, 3, 4, 5), dec_channel_list=(5, 4, 3, 2))
    x = torch.randn(2, 100, generator=gen(6))
    padded = ae.adjust_input(x)
    assert padded.shape == (2, 1, 162) and torch.equal(padded[:, 0, :100], x) and not padded[:, :, 100:].any()
    assert torch.equal(ae.adjust_input(x.view(2, 1, 100)), padded)
    for bad, shown in ((torch.randn(2, 99), (2, 1, 99)), (torch.randn(2, 2, 100), (2, 2, 100)),
                       (torch.randn(2, 1, 1, 100), (2, 1, 1, 100)), (torch.randn(2, 1, 101), (2, 1, 101))):
        with pytest.raises(ValueError) as e:
            ae.adjust_input(bad)
        assert str(e.value) == f"autoencoder expects (B, 100) parameter vectors, got {shown}"  # 2-D: as (B, 1, D)
    y = torch.randn(2, 1, 170, generator=gen(7))
    assert torch.equal(ae.adjust_output(y), y[:, 0, :100])
    with torch.no_grad():
        z = ae.encode(x, unused=1)
        torch.testing.assert_close(z, ae.encoder(padded))
        torch.testing.assert_close(ae.decode(z, unused=1), ae.decoder(z)[:, 0, :100])
        assert ae.decode(z).shape == (2, 100)


def test_noise_factors_and_the_noisy_forward():
    assert ODEncoder2Decoder.noise_factor(0.25) == 0.25 and ODEncoder2Decoder.noise_factor(1) == 1
    random.seed(3)
    want = random.uniform(0.1, 0.4)
    random.seed(3)
    assert ODEncoder2Decoder.noise_factor((0.1, 0.4)) == want and 0.1 <= want <= 0.4
    random.seed(3)
    assert ODEncoder2Decoder.noise_factor([0.1, 0.4]) == want
    x = torch.randn(3, 4, generator=gen(8))
    torch.manual_seed(1)
    got = ODEncoder2Decoder.add_noise(x, 0.25)
    torch.manual_seed(1)
    torch.testing.assert_close(got, torch.randn_like(x) * 0.25 + x * 0.75)
    random.seed(5)
    torch.manual_seed(1)
    got = ODEncoder2Decoder.add_noise(x, (0.2, 0.6))
    random.seed(5)
    f = random.uniform(0.2, 0.6)
    torch.manual_seed(1)
    torch.testing.assert_close(got, torch.randn_like(x) * f + x * (1 - f))
    ae = ODEncoder2Decoder(100, input_noise_factor=0.3, latent_noise_factor=0.6,
                           enc_channel_list=(2, 3, 4, 5), dec_channel_list=(5, 4, 3, 2))
    x = torch.randn(2, 100, generator=gen(9))
    with torch.no_grad():
        torch.manual_seed(4)
        got = ae(x, unused=1)
        torch.manual_seed(4)
        z = ae.encode(torch.randn_like(x) * 0.3 + x * 0.7)
        z = torch.randn_like(z) * 0.6 + z * 0.4
        torch.testing.assert_close(got, ae.decode(z.clamp(-1, 1)))
        assert (z.abs() > 1).any()  # the clamp matters


def test_presets():
    s = small(100)
    assert (s.kernel_size, s.fold_rate, s.input_noise_factor, s.latent_noise_factor) == (3, 3, 0.001, 0.1)
    assert s.encoder.channel_list == [2, 2, 2, 2, 2] and s.decoder.channel_list == [2, 64, 64, 8, 1]
    s = small(100, 0.2, 0.3)
    assert (s.input_noise_factor, s.latent_noise_factor) == (0.2, 0.3)
    m = medium(1250)
    assert (m.kernel_size, m.fold_rate, m.input_noise_factor, m.latent_noise_factor) == (5, 5, 0.001, 0.1)
    assert m.encoder.channel_list == [4, 4, 4, 4, 4] and m.decoder.channel_list == [4, 256, 256, 8, 1]
    m = medium(1250, 0.2, 0.3)
    assert (m.input_noise_factor, m.latent_noise_factor) == (0.2, 0.3)
    assert PRESETS == {"small": small, "medium": medium}

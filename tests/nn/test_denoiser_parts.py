"""pdiff_fast.nn.denoiser's parts, value by value: each block's layers and its forward pass against
the same computation written out with torch.nn.functional (the time added before the first conv,
the skip after the second), the time embedding per sample, shared or broadcast, the condition, the
ODUnet's encoder and decoder with their skips and clamp, the EMA's update with and without a decay
given, and the messages of the checks. Written against the mutants mutmut left alive
(tests/mutation, docs/mutation-scores.md); test_denoiser.py checks the reference keys."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdiff_fast.nn.denoiser import DENOISERS, EMA, AE_CNN_bottleneck, DenoiserBlock, ODUnet


def lrelu(x):
    return F.leaky_relu(x, 0.01)  # nn.LeakyReLU's default slope, the reference's


def inorm(x):
    return F.instance_norm(x, eps=1e-5)


def conv(m):
    return (type(m).__name__, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding)


def block_ref(b, x, t=None, skip=None, first=False):
    c1, c2 = (b[1], b[4]) if first else (b[2], b[5])
    h = x if t is None else x + t
    h = F.conv1d(inorm(h if first else lrelu(h)), c1.weight, c1.bias, padding=1)
    y = F.conv1d(inorm(lrelu(h)), c2.weight, c2.bias, padding=1)
    return y if skip is None else y + skip


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_denoiser_block_layers():
    b = DenoiserBlock(7, 2, 3, 4, first=True)
    assert [type(x).__name__ for x in b] == ["InstanceNorm1d", "Conv1d", "LeakyReLU", "InstanceNorm1d", "Conv1d"]
    assert conv(b[1]) == ("Conv1d", 2, 3, (3,), (1,), (1,)) and conv(b[4]) == ("Conv1d", 3, 4, (3,), (1,), (1,))
    assert b[0].num_features == 7 and b[3].num_features == 7 and b.first is True
    b = DenoiserBlock(7, 2, 3, 4)
    assert [type(x).__name__ for x in b] == ["LeakyReLU", "InstanceNorm1d", "Conv1d", "LeakyReLU", "InstanceNorm1d", "Conv1d"]
    assert conv(b[2]) == ("Conv1d", 2, 3, (3,), (1,), (1,)) and conv(b[5]) == ("Conv1d", 3, 4, (3,), (1,), (1,))
    assert b[1].num_features == 7 and b[4].num_features == 7 and b.first is False


def test_denoiser_block_forward_adds_the_time_before_and_the_skip_after():
    x, t, skip = torch.randn(2, 3, 6, generator=gen(1)), torch.randn(2, 1, 6, generator=gen(2)), torch.randn(2, 4, 6, generator=gen(3))
    with torch.no_grad():
        for first in (True, False):
            b = DenoiserBlock(6, 3, 5, 4, first=first)
            torch.testing.assert_close(b(x, t, skip), block_ref(b, x, t, skip, first))
            torch.testing.assert_close(b(x), block_ref(b, x, first=first))
            torch.testing.assert_close(b(x, t), block_ref(b, x, t, first=first))
            torch.testing.assert_close(b(x, skip=skip), block_ref(b, x, skip=skip, first=first))


def bottleneck_ref(m, x, t):
    e1 = block_ref(m.enc1, x, t, first=True)
    e2 = block_ref(m.enc2, e1, t)
    e3 = block_ref(m.enc3, e2, t)
    e4 = block_ref(m.enc4, e3, t)
    d1 = block_ref(m.dec1, e4, t, e3)
    d2 = block_ref(m.dec2, d1, t, e2)
    d3 = block_ref(m.dec3, d2, t, e1)
    return block_ref(m.dec4, d3, t)


def test_bottleneck_layers_and_attributes():
    widths = [2, 3, 4, 5]
    m = AE_CNN_bottleneck(6, 1, time_step=9, dec="x", channel_list=widths)
    widths.append(6)
    assert m.channel_list == [2, 3, 4, 5] and m.in_dim == 6 and m.real_input_dim == 6
    assert (m.fold_rate, m.kernal_size, m.dec, m.shared_timestep) == (1, 3, "x", False)
    blocks = [m.enc1, m.enc2, m.enc3, m.enc4, m.dec1, m.dec2, m.dec3, m.dec4]
    assert [b.first for b in blocks] == [True] + [False] * 7
    assert [(b[-4].in_channels, b[-4].out_channels, b[-1].out_channels) for b in blocks] == [
        (1, 2, 2), (2, 3, 3), (3, 4, 4), (4, 5, 5), (5, 4, 4), (4, 3, 3), (3, 2, 2), (2, 2, 1)]
    assert all(b[-2].num_features == 6 for b in blocks)
    assert m.time_encode.num_embeddings == 9 and m.time_encode.embedding_dim == 6
    d = AE_CNN_bottleneck(6)
    assert d.channel_list == [64, 128, 256, 512] and d.time_encode.num_embeddings == 1000 and d.dec is None
    assert d.enc1[1].in_channels == 1 and d.dec4[5].out_channels == 1
    assert AE_CNN_bottleneck(6, shared_timestep=True).shared_timestep is True
    for bad in ([1, 2, 3], [1, 2, 3, 4, 5]):
        with pytest.raises(ValueError) as e:
            AE_CNN_bottleneck(6, channel_list=bad)
        assert str(e.value) == "AE_CNN_bottleneck: channel_list needs 4 widths"


def test_time_info_per_sample_broadcast_or_shared():
    m = AE_CNN_bottleneck(4, time_step=10, channel_list=[2, 2, 2, 2])
    emb = m.time_encode.weight.detach()
    t = torch.tensor([3, 7, 1])
    with torch.no_grad():
        assert torch.equal(m.time_info(t, 3), emb[[3, 7, 1]].view(3, 1, 4))
        assert torch.equal(m.time_info(t.view(3, 1), 3), emb[[3, 7, 1]].view(3, 1, 4))
        assert torch.equal(m.time_info(torch.tensor([5]), 3), emb[5].expand(3, 1, 4))
        assert torch.equal(m.time_info(torch.tensor(5), 2), emb[5].expand(2, 1, 4))
        m.shared_timestep = True
        assert torch.equal(m.time_info(t, 3), emb[3].expand(3, 1, 4))


def test_bottleneck_forward_with_time_and_condition():
    torch.manual_seed(0)
    m = AE_CNN_bottleneck(6, time_step=10, channel_list=[2, 3, 4, 5])
    x, t = torch.randn(3, 2, 3, generator=gen(4)), torch.tensor([1, 8, 4])
    cond = torch.randn(3, 6, generator=gen(5))
    with torch.no_grad():
        emb = m.time_encode.weight[t].view(3, 1, 6)
        out = m(x, t)
        assert out.shape == (3, 2, 3)
        torch.testing.assert_close(out, bottleneck_ref(m, x.reshape(3, 1, 6), emb).reshape(3, 2, 3))
        torch.testing.assert_close(m(x, t, cond), bottleneck_ref(m, x.reshape(3, 1, 6), emb + cond.view(3, 1, 6)).reshape(3, 2, 3))
        torch.testing.assert_close(m(x.reshape(3, 6), t), out.reshape(3, 6))
    for bad in (torch.randn(2, 7), torch.randn(2, 2, 2)):
        with pytest.raises(ValueError) as e:
            m(bad, torch.zeros(2, dtype=torch.long))
        assert str(e.value) == f"denoiser expects 6 latent values per sample, got {tuple(bad.shape)}"


def odunet_ref(m, x, t):
    skips, h = [], x
    for layer in m.encoder.encoder:
        h = F.conv1d(inorm(h + t), layer[1].weight, layer[1].bias, padding=1)
        h = lrelu(F.conv1d(inorm(lrelu(h)), layer[4].weight, layer[4].bias, padding=1))
        skips.append(h)
    y, n = skips[-1], len(m.deoder.decoder)
    for i, layer in enumerate(m.deoder.decoder):
        h = F.conv1d(inorm(y + t), layer[1].weight, layer[1].bias, padding=1)
        h = F.conv1d(inorm(lrelu(h)), layer[4].weight, layer[4].bias, padding=1)
        y = h if i == n - 1 else lrelu(h) + skips[n - 2 - i]
    return y.clamp(-1, 1)


def test_odunet_layers_and_forward():
    torch.manual_seed(0)
    m = ODUnet(6, time_step=10, enc_channel_list=[2, 3, 4], dec_channel_list=[4, 3, 2])
    enc, dec = m.encoder.encoder, m.deoder.decoder
    assert [(conv(b[1]), conv(b[4])) for b in enc] == [
        (("Conv1d", 1, 2, (3,), (1,), (1,)), ("Conv1d", 2, 2, (3,), (1,), (1,))),
        (("Conv1d", 2, 3, (3,), (1,), (1,)), ("Conv1d", 3, 3, (3,), (1,), (1,))),
        (("Conv1d", 3, 4, (3,), (1,), (1,)), ("Conv1d", 4, 4, (3,), (1,), (1,)))]
    assert [(conv(b[1]), conv(b[4])) for b in dec] == [
        (("Conv1d", 4, 3, (3,), (1,), (1,)), ("Conv1d", 3, 3, (3,), (1,), (1,))),
        (("Conv1d", 3, 2, (3,), (1,), (1,)), ("Conv1d", 2, 2, (3,), (1,), (1,))),
        (("Conv1d", 2, 1, (3,), (1,), (1,)), ("Conv1d", 1, 1, (3,), (1,), (1,)))]
    assert [type(b[5]).__name__ for b in dec] == ["LeakyReLU", "LeakyReLU", "Identity"]
    for b in [*enc, *dec]:  # the reference's layer stack (its printout; the forward runs the fused ops)
        assert [type(x).__name__ for x in b][:5] == ["InstanceNorm1d", "Conv1d", "LeakyReLU", "InstanceNorm1d", "Conv1d"]
    assert all(type(b[5]).__name__ == "LeakyReLU" for b in enc)
    assert all(b[0].num_features == 6 and b[3].num_features == 6 for b in [*enc, *dec])
    assert m.encoder.fold_rate == 1 and m.deoder.fold_rate == 1 and m.in_dim == 6 and m.shared_timestep is False
    assert m.time_encode.num_embeddings == 10 and m.time_encode.embedding_dim == 6
    x, t = torch.randn(3, 2, 3, generator=gen(6)) * 3, torch.tensor([2, 9, 0])
    with torch.no_grad():
        out = m(x, t)
        ref = odunet_ref(m, x.reshape(3, 1, 6), m.time_encode.weight[t].view(3, 1, 6)).reshape(3, 2, 3)
        torch.testing.assert_close(out, ref)
        assert out.shape == (3, 2, 3) and (out.abs() == 1).any() and (out.abs() < 1).any()
        s = ODUnet(6, time_step=10, enc_channel_list=[2, 3, 4], dec_channel_list=[4, 3, 2], shared_timestep=True)
        assert s.shared_timestep is True
        torch.testing.assert_close(s(x, t), odunet_ref(s, x.reshape(3, 1, 6), s.time_encode.weight[2].expand(3, 1, 6)).reshape(3, 2, 3))
    d = ODUnet(6)
    assert [b[1].out_channels for b in d.encoder.encoder] == [64, 128, 256, 512]
    assert [b[1].out_channels for b in d.deoder.decoder] == [256, 128, 64, 1]
    assert d.encoder.encoder[0][1].kernel_size == (3,) and d.time_encode.num_embeddings == 1000
    assert ODUnet(6, kernal_size=5, enc_channel_list=[2], dec_channel_list=[2]).encoder.encoder[0][1].kernel_size == (5,)
    for fold in (2, 0):
        with pytest.raises(ValueError) as e:
            ODUnet(6, fold_rate=fold)
        assert str(e.value) == "ODUnet: only fold_rate=1 keeps the skip lengths equal (as the reference uses it)"


def test_odunet_encoder_strides_by_its_fold_rate():
    """ODUnet itself takes fold_rate 1 only; its encoder keeps the reference's stride=fold_rate."""
    from pdiff_fast.nn.denoiser import _ODUnetEncoder

    torch.manual_seed(0)
    e = _ODUnetEncoder([8], [1, 2], 2, 3)
    (layer,) = e.encoder
    assert conv(layer[1]) == ("Conv1d", 1, 2, (3,), (1,), (1,)) and conv(layer[4]) == ("Conv1d", 2, 2, (3,), (2,), (1,))
    x, t = torch.randn(2, 1, 8, generator=gen(7)), torch.randn(2, 1, 8, generator=gen(8))
    with torch.no_grad():
        h = F.conv1d(inorm(x + t), layer[1].weight, layer[1].bias, padding=1)
        h = lrelu(F.conv1d(inorm(lrelu(h)), layer[4].weight, layer[4].bias, padding=1, stride=2))
        (out,) = e(x, t)
        assert out.shape == (2, 2, 4)
        torch.testing.assert_close(out, h)


def test_ema_update_and_forward():
    model = nn.Linear(2, 2)
    e = EMA(model)
    assert e.decay == 0.9999 and e.model is model and e.ema is not model
    assert all(not p.requires_grad for p in e.ema.parameters()) and all(p.requires_grad for p in model.parameters())
    start = [p.detach().clone() for p in e.ema.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    after = [p.detach().clone() for p in model.parameters()]
    e.update()
    for s, a, p in zip(start, after, e.ema.parameters()):
        torch.testing.assert_close(p, s + 0.0001 * (a - s))
    e.update(0.25)
    for s, a, p in zip(start, after, e.ema.parameters()):
        torch.testing.assert_close(p, a + 0.25 * 0.9999 * (s - a))
    for a, p in zip(after, model.parameters()):
        assert torch.equal(p, a)  # the model is left as it is
    e.update(0.0)
    for a, p in zip(after, e.ema.parameters()):
        torch.testing.assert_close(p, a)
    x = torch.randn(3, 2)
    assert torch.equal(e(x), model(x)) and torch.equal(e(input=x), model(x))
    assert EMA(model, decay=0.5).decay == 0.5
    assert DENOISERS == {"AE_CNN_bottleneck": AE_CNN_bottleneck, "ODUnet": ODUnet}

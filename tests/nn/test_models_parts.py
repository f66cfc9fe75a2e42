"""pdiff_fast.nn.models' parts, layer by layer: every zoo model's layers with their sizes, kernels,
strides and paddings, each block's forward pass against the same computation written out with
torch.nn.functional, the ViT's encoder settings and position embedding, and build_model's shape
checks, messages and keyword arguments. Written against the mutants mutmut left alive
(tests/mutation, docs/mutation-scores.md)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pdiff_fast.nn.models import (MLP, ZOO, BasicBlock, CNN1d, PatchEmbed, ResNetSmall, TokenMean, ViTSmall,
                                  build_model)


def conv(m):
    return (type(m).__name__, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.bias is not None)


def randomise_norms(model, seed=0):
    """Random affine parameters and running statistics, so that a norm layer is not the identity."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            m.weight.data.copy_(torch.randn(m.weight.shape, generator=g))
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g))
    return model


def bn(x, m):
    return F.batch_norm(x, m.running_mean, m.running_var, m.weight, m.bias, False, 0.0, m.eps)


def test_cnn1d_layers():
    m = CNN1d(3, 7, channels=(4, 5, 6))
    assert [type(x).__name__ for x in m] == ["Conv1d", "BatchNorm1d", "ReLU"] * 3 + ["AdaptiveAvgPool1d", "Flatten", "Linear"]
    assert conv(m[0]) == ("Conv1d", 3, 4, (5,), (1,), (2,), True)
    assert conv(m[3]) == ("Conv1d", 4, 5, (3,), (2,), (1,), True)
    assert conv(m[6]) == ("Conv1d", 5, 6, (3,), (2,), (1,), True)
    assert [m[i].num_features for i in (1, 4, 7)] == [4, 5, 6]
    assert m[9].output_size == 1 and (m[11].in_features, m[11].out_features) == (6, 7)
    d = CNN1d()
    assert conv(d[0])[1:3] == (1, 32) and conv(d[3])[1:3] == (32, 64) and conv(d[6])[1:3] == (64, 128)
    assert d[11].out_features == 10
    x = torch.randn(2, 3, 9)
    assert m(x).shape == (2, 7)


def test_basic_block_forward_and_shortcut():
    same = randomise_norms(BasicBlock(4, 4)).eval()
    assert conv(same.conv1) == ("Conv2d", 4, 4, (3, 3), (1, 1), (1, 1), False)
    assert conv(same.conv2) == ("Conv2d", 4, 4, (3, 3), (1, 1), (1, 1), False)
    assert same.bn1.num_features == 4 and same.bn2.num_features == 4 and len(same.shortcut) == 0
    x = torch.randn(2, 4, 6, 6)
    with torch.no_grad():
        out = F.relu(bn(same.conv2(F.relu(bn(same.conv1(x), same.bn1))), same.bn2) + x)
        torch.testing.assert_close(same(x), out)
    for cin, cout, stride in ((4, 8, 2), (4, 8, 1), (4, 4, 2)):
        b = randomise_norms(BasicBlock(cin, cout, stride=stride), seed=cin + cout + stride).eval()
        assert conv(b.conv1) == ("Conv2d", cin, cout, (3, 3), (stride, stride), (1, 1), False)
        assert conv(b.conv2) == ("Conv2d", cout, cout, (3, 3), (1, 1), (1, 1), False)
        sc_conv, sc_bn = b.shortcut
        assert conv(sc_conv) == ("Conv2d", cin, cout, (1, 1), (stride, stride), (0, 0), False)
        assert isinstance(sc_bn, nn.BatchNorm2d) and sc_bn.num_features == cout
        x = torch.randn(2, cin, 6, 6)
        with torch.no_grad():
            h = F.relu(bn(b.conv1(x), b.bn1))
            out = F.relu(bn(b.conv2(h), b.bn2) + bn(sc_conv(x), sc_bn))
            torch.testing.assert_close(b(x), out)


def test_resnet_layers():
    m = ResNetSmall(3, 7, width=4)
    assert [type(x).__name__ for x in m] == ["Conv2d", "BatchNorm2d", "ReLU", "BasicBlock", "BasicBlock",
                                            "AdaptiveAvgPool2d", "Flatten", "Linear"]
    assert conv(m[0]) == ("Conv2d", 3, 4, (3, 3), (1, 1), (1, 1), False) and m[1].num_features == 4
    assert conv(m[3].conv1) == ("Conv2d", 4, 4, (3, 3), (1, 1), (1, 1), False) and len(m[3].shortcut) == 0
    assert conv(m[4].conv1) == ("Conv2d", 4, 8, (3, 3), (2, 2), (1, 1), False) and len(m[4].shortcut) == 2
    assert m[5].output_size == 1 and (m[7].in_features, m[7].out_features) == (8, 7)
    d = ResNetSmall()
    assert conv(d[0])[1:3] == (1, 16) and d[7].in_features == 32 and d[7].out_features == 10
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 7)


def test_patch_embed_and_token_mean():
    torch.manual_seed(0)
    p = PatchEmbed(3, 64, 2, 100)
    assert conv(p.proj) == ("Conv2d", 3, 64, (2, 2), (2, 2), (0, 0), True)
    assert p.pos.shape == (1, 100, 64) and 0.018 < p.pos.std().item() < 0.022 and abs(p.pos.mean().item()) < 0.002
    small = PatchEmbed(2, 5, 2, 4)
    x = torch.randn(3, 2, 4, 4)
    with torch.no_grad():
        y = F.conv2d(x, small.proj.weight, small.proj.bias, stride=2)  # (3, 5, 2, 2)
        torch.testing.assert_close(small(x), y.reshape(3, 5, 4).permute(0, 2, 1) + small.pos)
    t = torch.randn(2, 3, 4)
    torch.testing.assert_close(TokenMean()(t), t.mean(dim=1))


def test_vit_layers_and_settings():
    m = ViTSmall(3, 7, image=6, patch=3, dim=8, depth=3, heads=2)
    assert [type(x).__name__ for x in m] == (["PatchEmbed"] + ["TransformerEncoderLayer"] * 3
                                            + ["LayerNorm", "TokenMean", "Linear"])
    assert conv(m[0].proj) == ("Conv2d", 3, 8, (3, 3), (3, 3), (0, 0), True) and m[0].pos.shape == (1, 4, 8)
    for layer in list(m)[1:4]:
        assert layer.self_attn.embed_dim == 8 and layer.self_attn.num_heads == 2 and layer.self_attn.batch_first
        assert (layer.linear1.in_features, layer.linear1.out_features) == (8, 16) and layer.linear2.out_features == 8
        assert layer.norm_first and layer.dropout.p == 0.0 and layer.dropout1.p == 0.0 and layer.dropout2.p == 0.0
    assert m[1] is not m[2]
    assert m[4].normalized_shape == (8,) and (m[6].in_features, m[6].out_features) == (8, 7)
    assert ViTSmall(patch=3)[0].pos.shape == (1, 4, 32)  # images of 8: (8 // 3) ** 2 patches
    d = ViTSmall()
    assert d[0].pos.shape == (1, 16, 32) and conv(d[0].proj)[1:4] == (1, 32, (2, 2))
    assert len(d) == 6 and d[1].self_attn.num_heads == 4 and d[1].linear1.out_features == 64 and d[5].out_features == 10
    # pre-norm, no dropout: the block is x + attn(norm1(x)), then + ff(norm2(.)), in training mode too
    layer = m[1].train()
    x = torch.randn(2, 4, 8)
    h = layer.norm1(x)
    h = x + layer.self_attn(h, h, h, need_weights=False)[0]
    out = h + layer.linear2(F.relu(layer.linear1(layer.norm2(h))))
    torch.testing.assert_close(layer(x), out)
    m.eval()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        y = m[4](m[3](m[2](m[1](m[0](x)))))
        torch.testing.assert_close(m(x), y.mean(1) @ m[6].weight.T + m[6].bias)


def test_mlp_layers_and_forward():
    m = randomise_norms(MLP(6, 4, hidden=(5, 3)))
    assert [type(x).__name__ for x in m] == ["Flatten"] + ["Linear", "LayerNorm", "ReLU"] * 2 + ["Linear"]
    assert [(x.in_features, x.out_features) for x in m if isinstance(x, nn.Linear)] == [(6, 5), (5, 3), (3, 4)]
    assert [x.normalized_shape for x in m if isinstance(x, nn.LayerNorm)] == [(5,), (3,)]
    x = torch.randn(2, 2, 3)
    with torch.no_grad():
        h = x.reshape(2, 6)
        for lin, ln in ((m[1], m[2]), (m[4], m[5])):
            h = F.relu(F.layer_norm(lin(h), ln.normalized_shape, ln.weight, ln.bias, ln.eps))
        torch.testing.assert_close(m(x), m[7](h))
    d = MLP(9)
    assert [(x.in_features, x.out_features) for x in d if isinstance(x, nn.Linear)] == [(9, 64), (64, 64), (64, 10)]
    assert [type(x).__name__ for x in MLP(4, 2, hidden=())] == ["Flatten", "Linear"]


def test_build_model_shapes_kwargs_and_messages():
    m = build_model("cnn1d", (3, 20), 7, channels=(4, 5, 6))
    assert isinstance(m, CNN1d) and conv(m[0])[1:3] == (3, 4) and m[11].out_features == 7
    m = build_model("resnet", (2, 8, 8), 5, width=4)
    assert isinstance(m, ResNetSmall) and conv(m[0])[1:3] == (2, 4) and m[7].out_features == 5
    m = build_model("vit", (2, 6, 6), 5, patch=3, dim=8, heads=2, depth=1)
    assert isinstance(m, ViTSmall) and m[0].pos.shape == (1, 4, 8) and m[0].proj.in_channels == 2
    assert build_model("vit", (1, 4, 4), 5, dim=8, heads=2)[0].pos.shape == (1, 4, 8)  # the image size is the input's
    assert len(m) == 5 and m[4].out_features == 5
    m = build_model("mlp", (2, 3, 4), 5, hidden=(7,))
    assert isinstance(m, MLP) and m[1].in_features == 24 and m[1].out_features == 7 and m[4].out_features == 5
    assert build_model("mlp", (11,), 3)[1].in_features == 11
    for name, shape, message in (
            ("cnn1d", (1, 8, 8), "cnn1d takes (C, L) inputs, got (1, 8, 8)"),
            ("cnn1d", (40,), "cnn1d takes (C, L) inputs, got (40,)"),
            ("resnet", (1, 8), "resnet takes (C, H, W) inputs, got (1, 8)"),
            ("resnet", (1, 1, 8, 8), "resnet takes (C, H, W) inputs, got (1, 1, 8, 8)"),
            ("vit", (1, 8), "vit takes square (C, H, W) inputs, got (1, 8)"),
            ("vit", (1, 8, 8, 8), "vit takes square (C, H, W) inputs, got (1, 8, 8, 8)"),
            ("vit", (1, 8, 6), "vit takes square (C, H, W) inputs, got (1, 8, 6)"),
            ("vit", (1, 6, 8), "vit takes square (C, H, W) inputs, got (1, 6, 8)"),
            ("gpt", (1, 8), "unknown model 'gpt'; the zoo has cnn1d, resnet, vit, mlp"),
            ("CNN1D", (1, 8), "unknown model 'CNN1D'; the zoo has cnn1d, resnet, vit, mlp")):
        with pytest.raises(ValueError) as e:
            build_model(name, shape, 10)
        assert str(e.value) == message
    assert ZOO == ("cnn1d", "resnet", "vit", "mlp")
    for name in ZOO:
        build_model(name, {"cnn1d": (1, 8)}.get(name, (1, 4, 4)), 3)

import pytest
import torch

from pdiff_fast.nn.models import ZOO, build_model
from pdiff_fast.params import ParamSpec


@pytest.mark.parametrize("name,shape,norm", [
    ("cnn1d", (1, 40), torch.nn.BatchNorm1d), ("resnet", (1, 8, 8), torch.nn.BatchNorm2d),
    ("vit", (1, 8, 8), torch.nn.LayerNorm), ("mlp", (1, 8, 8), torch.nn.LayerNorm)])
def test_zoo_models_run_and_expose_norm_subsets(name, shape, norm):
    m = build_model(name, shape, 10)
    assert m(torch.randn(3, *shape)).shape == (3, 10)
    spec = ParamSpec.from_model(m, "last-2-norm-layers")
    # the subset is exactly the last two norm layers' weight and bias, found by walking the modules
    layers = [n for n, mod in m.named_modules() if isinstance(mod, norm)][-2:]
    assert spec.names == [f"{layer}.{p}" for layer in layers for p in ("weight", "bias")]
    assert name in ZOO


@pytest.mark.parametrize("name,shape", [("cnn1d", (1, 40)), ("resnet", (1, 8, 8)), ("vit", (1, 8, 8)),
                                        ("mlp", (1, 8, 8))])
def test_a_row_written_into_a_zoo_model_is_its_parameters_and_its_outputs(name, shape):
    """Values: flatten is the parameters in spec order; a row loaded into a model is read back
    unchanged and gives the outputs of the model whose parameters were set one by one."""
    torch.manual_seed(0)
    m = build_model(name, shape, 10).eval()
    spec = ParamSpec.from_model(m, "last-2-norm-layers")
    params = dict(m.named_parameters())
    flat = spec.flatten([m])
    assert torch.equal(flat[0], torch.cat([params[n].detach().reshape(-1) for n in spec.names]))
    before = {k: v.clone() for k, v in m.state_dict().items()}
    row = torch.randn(spec.dim)
    spec.load_into(m, row)
    assert torch.equal(spec.flatten([m])[0], row)
    by_hand = build_model(name, shape, 10).eval()
    by_hand.load_state_dict(before)
    offset = 0
    with torch.no_grad():
        for n in spec.names:
            p = dict(by_hand.named_parameters())[n]
            p.copy_(row[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
    x = torch.randn(4, *shape)
    with torch.no_grad():
        torch.testing.assert_close(m(x), by_hand(x), rtol=0, atol=0)


def test_wrong_input_shape_or_name_is_an_error():
    with pytest.raises(ValueError, match="cnn1d takes"):
        build_model("cnn1d", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gpt", (1, 8), 10)

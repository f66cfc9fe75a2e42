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
    modules = dict(m.named_modules())
    assert all(isinstance(modules[n.rsplit(".", 1)[0]], norm) for n in spec.names)
    assert name in ZOO


def test_wrong_input_shape_or_name_is_an_error():
    with pytest.raises(ValueError, match="cnn1d takes"):
        build_model("cnn1d", (1, 8, 8), 10)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("gpt", (1, 8), 10)

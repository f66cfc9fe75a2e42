import pytest
import torch

from pdiff_fast.collect import Population, collect_v1, collect_v2, rebuild_base
from pdiff_fast.data import digits
from pdiff_fast.models import build_model
from pdiff_fast.params import ParamSpec


@pytest.fixture(scope="module")
def small_digits():
    d = digits()
    d.x_train, d.y_train = d.x_train[:400], d.y_train[:400]
    return d


@pytest.mark.parametrize("recipe", [collect_v1, collect_v2])
def test_recipes_save_k_checkpoints_that_only_change_the_subset(recipe, small_digits, tmp_path):
    torch.manual_seed(0)
    m = build_model("mlp", small_digits.input_shape, 10, hidden=(32, 32))
    spec = ParamSpec.from_model(m)
    pop = recipe(m, small_digits, spec, epochs=3, k=5, progress=False)
    assert pop.params.shape == (5, spec.dim) and pop.accuracy.shape == (5,)
    assert (pop.accuracy > 50).all()
    assert not torch.equal(pop.params[0], pop.params[-1])  # the subset kept training
    base_w = pop.base_state["1.weight"]  # not in the subset: identical to the trained model's
    assert torch.equal(base_w, dict(m.named_parameters())["1.weight"].detach())
    pop.save(tmp_path / "pop.safetensors")
    back = Population.load(tmp_path / "pop.safetensors")
    assert torch.equal(back.params, pop.params) and back.spec == spec and back.meta["recipe"] == pop.meta["recipe"]
    model = rebuild_base(build_model("mlp", small_digits.input_shape, 10, hidden=(32, 32)), back)
    spec.load_into(model, back.params[2])
    from pdiff_fast.collect import accuracy
    assert accuracy(model, small_digits.x_test, small_digits.y_test) == pytest.approx(pop.accuracy[2].item())


def test_population_file_checks(tmp_path):
    from pdiff_fast.io import save_tensors
    save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(1)})
    with pytest.raises(ValueError, match="not a pdiff_fast population"):
        Population.load(tmp_path / "x.safetensors")
    spec = ParamSpec(["w"], [(3,)], [torch.float32])
    with pytest.raises(ValueError, match=r"\(K, 3\)"):
        Population(torch.zeros(2, 4), torch.zeros(2), spec, {})


def test_k_must_be_positive(small_digits):
    m = build_model("mlp", small_digits.input_shape, 10)
    with pytest.raises(ValueError, match="k must be"):
        collect_v1(m, small_digits, ParamSpec.from_model(m), epochs=0, k=0, progress=False)

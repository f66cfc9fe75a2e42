"""eps_mse: the epsilon-prediction loss mean((pred - target)^2), the fused Triton reduction (auto on
CUDA) against the torch reference op and torch.compile of it.

    pytest benchmarks/kernels/test_eps_mse.py [-m eps_mse]

Fewest bytes: read pred and target (8 B per element); the scalar written is nothing.
"""
import pytest

from pdiff_fast.ops.eps_mse import eps_mse, eps_mse_torch

from .. import common
from . import cases

pytestmark = pytest.mark.eps_mse


@pytest.mark.parametrize("peer", [pytest.param("auto", marks=pytest.mark.quick),
                                  pytest.param("torch", marks=pytest.mark.quick), "compile"])
@pytest.mark.parametrize("shape", cases.SHAPES)
def test_eps_mse(benchmark, device, sizes, peer, shape):
    a = cases.inputs(shape, device)
    loss = common.compile_or_skip(eps_mse_torch) if peer == "compile" else eps_mse

    def fn():
        loss(a["x"], a["eps"])
    info = cases.elementwise_work(a["x"], 2, 0)
    info["bytes_min"] -= 8 * a["x"].shape[0]  # no timestep read
    common.time_op(benchmark, fn, device=device, sizes=sizes, peer=peer, stage="eps_mse",
                   group=f"eps_mse/{shape}{list(a['x'].shape)}", info=info)

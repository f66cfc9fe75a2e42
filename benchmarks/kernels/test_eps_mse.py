"""eps_mse: the epsilon-prediction loss mean((pred - target)^2), the fused Triton reduction (auto on
CUDA) against the torch reference op and torch.compile of it.

    pytest benchmarks/kernels/test_eps_mse.py      # or: pytest tests benchmarks -m eps_mse

Fewest bytes: read pred and target (8 B per element); the scalar written is nothing.
"""
import pytest

from pdiff_fast.ops.eps_mse import eps_mse, eps_mse_torch

from .. import common
from . import cases


@pytest.mark.parametrize("peer", cases.PEERS)
@pytest.mark.parametrize("shape", cases.SHAPES)
def test_eps_mse(benchmark, device, sizes, peer, shape):
    a = cases.inputs(shape, device)
    loss = common.compile_or_skip(eps_mse_torch) if peer == "compile" else eps_mse

    def fn():
        loss(a["x"], a["eps"])
    info = cases.elementwise_work(a["x"], 2, 0)
    info["bytes_min"] -= 8 * a["x"].shape[0]  # no timestep read
    cases.time_elementwise(benchmark, fn, op="eps_mse", shape=shape, x=a["x"], device=device, sizes=sizes,
                           peer=peer, info=info)

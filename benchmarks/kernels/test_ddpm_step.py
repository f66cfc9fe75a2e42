"""ddpm_step: one DDPM reverse step with its noise drawn on the device, the fused Triton kernel
(auto on CUDA) against the torch reference op and torch.compile of it.

    pytest benchmarks/kernels/test_ddpm_step.py      # or: pytest tests benchmarks -m ddpm_step

Fewest bytes: read x_t and eps, write x_prev and pred_x0 (16 B per element).
"""
import pytest
import torch

from pdiff_fast.ops.ddpm_step import ddpm_step, ddpm_step_torch

from .. import common
from . import cases


@pytest.mark.parametrize("peer", cases.PEERS)
@pytest.mark.parametrize("shape", cases.SHAPES)
def test_ddpm_step(benchmark, device, sizes, peer, shape):
    a = cases.inputs(shape, device)
    if peer == "compile":
        step = common.compile_or_skip(
            lambda x, eps, t: ddpm_step_torch(x, eps, t, torch.randn_like(x), a["step"]))

        def fn():
            step(a["x"], a["eps"], a["t"])
    else:
        def fn():
            ddpm_step(a["x"], a["eps"], a["t"], None, a["step"], seed=0)
    cases.time_elementwise(benchmark, fn, op="ddpm_step", shape=shape, x=a["x"], device=device, sizes=sizes,
                           peer=peer, info=cases.elementwise_work(a["x"], 2, 2))

"""ddim_step: one DDIM step (eta 0.5, so noise is drawn on the device), the fused Triton kernel
(auto on CUDA) against the torch reference op and torch.compile of it.

    pytest benchmarks/kernels/test_ddim_step.py      # or: pytest tests benchmarks -m ddim_step

Fewest bytes: read x_t and eps, write x_prev and pred_x0 (16 B per element).
"""
import pytest
import torch

from pdiff_fast.ops.ddim_step import ddim_step, ddim_step_torch

from .. import common
from . import cases

A_T, A_PREV, ETA = 0.4, 0.6, 0.5


@pytest.mark.parametrize("peer", cases.PEERS)
@pytest.mark.parametrize("shape", cases.SHAPES)
def test_ddim_step(benchmark, device, sizes, peer, shape):
    a = cases.inputs(shape, device)
    if peer == "compile":
        step = common.compile_or_skip(
            lambda x, eps: ddim_step_torch(x, eps, A_T, A_PREV, torch.randn_like(x), ETA))

        def fn():
            step(a["x"], a["eps"])
    else:
        def fn():
            ddim_step(a["x"], a["eps"], A_T, A_PREV, None, ETA, seed=0)
    cases.time_elementwise(benchmark, fn, op="ddim_step", shape=shape, x=a["x"], device=device, sizes=sizes,
                           peer=peer, info=cases.elementwise_work(a["x"], 2, 2))

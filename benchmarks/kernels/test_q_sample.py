"""q_sample: forward noising with the noise drawn in the same pass (training), the fused Triton
kernel (auto on CUDA) against the torch reference op and torch.compile of it.

    pytest benchmarks/kernels/test_q_sample.py      # or: pytest tests benchmarks -m q_sample

Fewest bytes: read x0, write x_t and the noise (the loss needs it): 12 B per element.
"""
import pytest
import torch

from pdiff_fast.ops.q_sample import q_sample, q_sample_torch

from .. import common
from . import cases


@pytest.mark.parametrize("peer", cases.PEERS)
@pytest.mark.parametrize("shape", cases.SHAPES)
def test_q_sample(benchmark, device, sizes, peer, shape):
    a = cases.inputs(shape, device)
    if peer == "compile":
        noise_in = common.compile_or_skip(lambda x, t: q_sample_torch(x, t, a["noising"], torch.randn_like(x)))

        def fn():
            noise_in(a["x"], a["t"])
    else:
        def fn():
            q_sample(a["x"], a["t"], a["noising"], seed=0)
    cases.time_elementwise(benchmark, fn, op="q_sample", shape=shape, x=a["x"], device=device, sizes=sizes,
                           peer=peer, info=cases.elementwise_work(a["x"], 1, 2))

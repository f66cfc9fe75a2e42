"""act_norm_conv1d: the fused (add ->) leaky_relu -> instance_norm -> conv1d (-> + residual) block,
forward alone (sampling, decoding) and forward + backward (training), the Triton kernels against
the torch reference op and torch.compile of it.

    pytest benchmarks/kernels/test_act_norm_conv1d.py      # or: pytest tests benchmarks -m act_norm_conv1d

Cases are the heaviest blocks the resnet18 configuration runs (recorded from its modules), at
B = 1000 models on CUDA, B = 8 on a CPU:
  den_wide   denoiser encoder block: x (B, 256, 12), weight (512, 256, 3), time embedding added
  den_skip   denoiser decoder block: x (B, 256, 12), weight (256, 256, 3), residual added
  dec_conv   `medium` decoder conv: x (B, 256, 95), weight (256, 256, 5), padding 4
  dec_up     `medium` decoder upsampling: conv_transpose x (B, 256, 19), weight (256, 256, 5), stride 5
Peers: auto (fused for the forward; torch for training, where the fused backward measured slower on
the H100), triton (fused always, CUDA), torch, compile.
Work: FLOPs of the convolution (2 per multiply-add; x3 with the backward); fewest bytes: read x,
the weight and any add / residual once, write y (forward); the backward adds reading grad_y and
writing grad_x and grad_weight.
"""
import contextlib

import pytest
import torch

from pdiff_fast.backend import use_backend
from pdiff_fast.ops.act_norm_conv1d import act_norm_conv1d, act_norm_conv1d_torch

from .. import common

# name: (Cin, Cout, L, K, stride, padding, transposed, add, residual)
CASES = {
    "den_wide": (256, 512, 12, 3, 1, 1, False, True, False),
    "den_skip": (256, 256, 12, 3, 1, 1, False, False, True),
    "dec_conv": (256, 256, 95, 5, 1, 4, False, False, False),
    "dec_up": (256, 256, 19, 5, 5, 0, True, False, False),
}


def make(case: str, device: torch.device):
    cin, cout, length, k, stride, padding, transposed, add, residual = CASES[case]
    b = 1000 if device.type == "cuda" else 8
    lout = (length - 1) * stride - 2 * padding + k if transposed else (length + 2 * padding - k) // stride + 1
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, cin, length, generator=g)
    w = torch.randn((cin, cout, k) if transposed else (cout, cin, k), generator=g) / (cin * k) ** 0.5
    kwargs = dict(stride=stride, padding=padding, transposed=transposed, pre_act=True)
    if add:
        kwargs["add"] = torch.randn(b, 1, length, generator=g).to(device)
    if residual:
        kwargs["residual"] = torch.randn(b, cout, lout, generator=g).to(device)
    tensors = {"x": x.to(device), "w": w.to(device), "bias": torch.zeros(cout, device=device)}
    macs = b * cout * cin * k * (length if transposed else lout)
    extra = sum(v.numel() for v in kwargs.values() if torch.is_tensor(v))
    fwd_bytes = 4 * (x.numel() + w.numel() + b * cout * lout + extra)
    return tensors, kwargs, {"flops": 2 * macs, "bytes_min": fwd_bytes, "B": b, "case": case}


@pytest.mark.parametrize("peer", [pytest.param("auto", marks=pytest.mark.quick), "triton",
                                  pytest.param("torch", marks=pytest.mark.quick), "compile"])
@pytest.mark.parametrize("mode", ["forward", "train"])
@pytest.mark.parametrize("case", list(CASES))
def test_act_norm_conv1d(benchmark, device, sizes, peer, mode, case):
    t, kwargs, work = make(case, device)
    op = common.compile_or_skip(act_norm_conv1d_torch) if peer == "compile" else act_norm_conv1d
    if mode == "forward":
        def fn():
            with torch.no_grad(), use_backend("triton") if peer == "triton" else contextlib.nullcontext():
                op(t["x"], t["w"], t["bias"], **kwargs)
    else:
        x = t["x"].requires_grad_()
        w = t["w"].requires_grad_()
        work = {**work, "flops": 3 * work["flops"], "bytes_min": 2 * work["bytes_min"] + 4 * (x.numel() + w.numel())}

        def fn():
            with use_backend("triton") if peer == "triton" else contextlib.nullcontext():
                y = op(x, w, t["bias"], **kwargs)
                y.backward(torch.ones_like(y))
    common.time_op(benchmark, fn, device=device, sizes=sizes, peer=peer, stage=f"act_norm_conv1d_{mode}",
                   group=f"act_norm_conv1d_{mode}/{case}/B={work['B']}", info=work)


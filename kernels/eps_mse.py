"""eps_mse: the epsilon-prediction loss mean((pred - target)^2) with Triton forward and backward.

Forward, two launches, deterministic (no atomics): each program sums (pred - target)^2 in
fp32 over a strided set of blocks into one partial; a single program adds the partials and
divides by N. Backward, one launch: grad_pred = 2 * (pred - target) * g / N, and
grad_target = -grad_pred when the target requires grad; g is read on the device (no sync).
Same value as `pdiff_fast.ops.eps_mse.eps_mse_torch`.

Floor (bytes moved per call, fp32, N = numel):
    forward:  read pred, target                          = 2 * 4 * N bytes (+ <= 4 KiB partials)
    backward: read pred, target + write grad_pred        = 3 * 4 * N bytes
              (+ 4 * N more when grad_target is needed)
The forward saves no intermediate: backward re-reads pred and target instead of storing
pred - target, which would cost the same 4 * N bytes to write as to read back.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch

_BLOCK = 4096  # elements per loop iteration of a partial-sum program
_MAX_PARTIALS = 1024  # programs of the first forward pass (and length of the partials)
_BWD_BLOCK = 2048  # elements per backward program


@triton.jit
def _eps_mse_partial_kernel(
    pred_ptr,  # (N,) prediction
    target_ptr,  # (N,) target
    partial_ptr,  # (n_programs,) float32 output: sum of squared differences per program
    N,  # number of elements
    n_blocks,  # cdiv(N, BLOCK)
    n_programs,  # launched programs (the stride over blocks)
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], dtype=tl.float32)  # (BLOCK,)
    # a while loop, not range(pid, n_blocks, n_programs): Triton 3.6's interpreter turns a
    # runtime range bound into an int with int(shape-(1,) array), which NumPy >= 2.4 rejects
    blk = pid
    while blk < n_blocks:
        offs = blk.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        p = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        q = tl.load(target_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        d = p - q
        acc += d * d
        blk += n_programs
    tl.store(partial_ptr + pid, tl.sum(acc, axis=0))


@triton.jit
def _eps_mse_finish_kernel(
    partial_ptr,  # (n_partials,) float32
    loss_ptr,  # (1,) float32 output: the mean
    n_partials,  # number of partial sums
    n_elements,  # N as a float, the divisor
    BLOCK: tl.constexpr,  # >= n_partials is typical; loops otherwise
):
    acc = tl.zeros([BLOCK], dtype=tl.float32)  # (BLOCK,)
    start = 0
    while start < n_partials:  # not range(): see _eps_mse_partial_kernel
        offs = start + tl.arange(0, BLOCK)
        acc += tl.load(partial_ptr + offs, mask=offs < n_partials, other=0.0)
        start += BLOCK
    tl.store(loss_ptr, tl.sum(acc, axis=0) / n_elements)


@triton.jit
def _eps_mse_backward_kernel(
    pred_ptr,  # (N,) prediction
    target_ptr,  # (N,) target
    grad_out_ptr,  # (1,) upstream gradient of the loss
    grad_pred_ptr,  # (N,) output; unused unless NEED_PRED
    grad_target_ptr,  # (N,) output; unused unless NEED_TARGET
    N,  # number of elements
    two_over_n,  # 2 / N
    NEED_PRED: tl.constexpr,
    NEED_TARGET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
    mask = offs < N
    scale = tl.load(grad_out_ptr).to(tl.float32) * two_over_n
    p = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    q = tl.load(target_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    g = (p - q) * scale
    if NEED_PRED:
        tl.store(grad_pred_ptr + offs, g, mask=mask)
    if NEED_TARGET:
        tl.store(grad_target_ptr + offs, -g, mask=mask)


def eps_mse_forward(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean((pred - target)^2) of two contiguous same-shape tensors, as a 0-dim tensor."""
    N = pred.numel()
    if N == 0:
        return torch.full((), float("nan"), device=pred.device, dtype=pred.dtype)
    n_blocks = launch.cdiv(N, _BLOCK)
    n_programs = min(n_blocks, _MAX_PARTIALS)
    partials = torch.empty(n_programs, device=pred.device, dtype=torch.float32)
    loss = torch.empty((), device=pred.device, dtype=torch.float32)
    _eps_mse_partial_kernel[(n_programs,)](
        pred, target, partials, N, n_blocks, n_programs, BLOCK=_BLOCK, num_warps=8)
    _eps_mse_finish_kernel[(1,)](
        partials, loss, n_programs, float(N),
        BLOCK=min(launch.next_pow2(n_programs), _MAX_PARTIALS), num_warps=4)
    return loss.to(pred.dtype)


def eps_mse_backward(pred, target, grad_out, need_pred: bool, need_target: bool):
    """(grad_pred, grad_target), each None when not needed; shapes of pred."""
    N = pred.numel()
    grad_pred = torch.empty_like(pred) if need_pred else None
    grad_target = torch.empty_like(target) if need_target else None
    if N == 0 or not (need_pred or need_target):
        return grad_pred, grad_target
    grad_out = grad_out.reshape(1).contiguous()
    _eps_mse_backward_kernel[(launch.cdiv(N, _BWD_BLOCK),)](
        pred, target, grad_out,
        grad_pred if need_pred else pred, grad_target if need_target else pred,
        N, 2.0 / N,
        NEED_PRED=need_pred, NEED_TARGET=need_target, BLOCK=_BWD_BLOCK, num_warps=4,
    )
    return grad_pred, grad_target


class EpsMSEFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pred, target):
        pred_c, target_c = pred.contiguous(), target.contiguous()
        ctx.save_for_backward(pred_c, target_c)
        return eps_mse_forward(pred_c, target_c)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        pred, target = ctx.saved_tensors
        return eps_mse_backward(pred, target, grad_out, *ctx.needs_input_grad[:2])


@launch.on_input_device
def eps_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean((pred - target)^2) over all elements: a 0-dim tensor that backpropagates."""
    if pred.shape != target.shape:
        raise ValueError(f"eps_mse: prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return EpsMSEFunction.apply(pred, target)

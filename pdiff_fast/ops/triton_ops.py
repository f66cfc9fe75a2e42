"""The Triton kernels as torch ops, so that torch.compile(fullgraph=True) traces the dispatchers.

    pdiff_fast::ddpm_step_triton         -> (x_prev, pred_x0)
    pdiff_fast::ddim_step_triton         -> (x_prev, pred_x0)
    pdiff_fast::q_sample_triton          -> x_t              (noise given; autograd in x0, noise)
    pdiff_fast::q_sample_noise_triton    -> (x_t, noise)     (noise drawn; autograd in x0)
    pdiff_fast::eps_mse_triton           -> loss             (autograd in pred, target)
    pdiff_fast::act_norm_conv1d_triton   -> (y, mean, rstd)  (autograd: the fused backward)
  and the backward ops the autograd formulas call: q_sample_backward_triton,
  eps_mse_backward_triton, act_norm_conv1d_backward_triton (each -> the wanted gradients).

torch.library.custom_op, not triton_op: under TRITON_INTERPRET=1 (how the tests run the kernels
on CPU) triton.jit gives interpreted kernels, and a triton_op wrapping one fails to compile on
triton 3.6 and 3.9 alike (tracing the body with fake tensors runs the interpreter on them: "Cannot
access data pointer of Tensor"); the launchers also do host-side work (tile choice, noise
arguments, split reductions) that triton_op would trace. A custom op is opaque to the compiler:
its kernels run as in eager, so compiled results equal eager ones bit for bit.

Only compiled code calls these ops (the dispatchers test torch.compiler.is_compiling(), 0.2 us);
eager calls the launchers directly. Measured on CPU with stand-in launchers that return empty
tensors, so only dispatch is timed: 2-5 us direct, 20-23 us through the op (a trivial
two-argument custom_op alone: ~10 us). That is of the order of a Triton launch's own host cost
on a GPU, and sampling loops of small models are launch bound, so eager keeps the direct call.

Schemas take no torch.Generator: the dispatchers turn (seed, generator) into `seed_t` (a (1,)
int64 tensor on the data's device, read in the kernel) or the int `seed`; `row_offset_t` /
`row_offset` likewise. Each op imports its kernel module only when it runs, through
`pdiff_fast.backend` (which checks that Triton can run), so registering them needs no Triton.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import backend
from .noise import seed_tensor


def implementation(op: str):
    """What a dispatcher calls `op`'s Triton path on: this module (the torch ops) under
    torch.compile, else the kernel module's launcher directly (see the module docstring); both
    have a function named `op` with the same arguments, bitwise the same results."""
    return sys.modules[__name__] if torch.compiler.is_compiling() else backend.load_triton_op(op)


def _kernels(op: str):
    mod = backend.load_triton_op(op)
    if isinstance(mod, Exception):
        raise RuntimeError(f"pdiff_fast: {op}'s Triton kernel could not be imported ({mod})")
    return mod


def _like(x: Tensor) -> Tensor:
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def seed_arguments(seed, generator, like: Tensor) -> tuple[Optional[Tensor], int]:
    """(seed_t, seed) of an op call from the dispatchers' seed / generator. seed=None draws from
    `generator` (else torch's CPU generator) the value the eager launcher draws, but keeps it a
    tensor on like's device: an .item() would break the graph, and the kernel reads it there."""
    if isinstance(seed, Tensor):
        return seed, 0
    if seed is None:
        return seed_tensor(generator).to(like.device), 0
    return None, int(seed)


def _tensor_or_int(v) -> tuple[Optional[Tensor], int]:
    return (v, 0) if isinstance(v, Tensor) else (None, int(v))


# --- ddpm_step / ddim_step (sampling: no autograd; the dispatchers pass detached inputs) --------

@torch.library.custom_op("pdiff_fast::ddpm_step_triton", mutates_args=())
def ddpm_step_triton(x_t: Tensor, eps: Tensor, t: Tensor, noise: Optional[Tensor], coefs: Tensor, clip: bool,
                     seed_t: Optional[Tensor], seed: int, seed_offset: int, row_offset_t: Optional[Tensor],
                     row_offset: int) -> tuple[Tensor, Tensor]:
    return _kernels("ddpm_step").ddpm_step(
        x_t, eps, t, noise, coefs, clip, seed=seed if seed_t is None else seed_t, seed_offset=seed_offset,
        row_offset=row_offset if row_offset_t is None else row_offset_t)


@ddpm_step_triton.register_fake
def _(x_t, eps, t, noise, coefs, clip, seed_t, seed, seed_offset, row_offset_t, row_offset):
    return _like(x_t), _like(x_t)


@torch.library.custom_op("pdiff_fast::ddim_step_triton", mutates_args=())
def ddim_step_triton(x_t: Tensor, eps: Tensor, a_t: float, a_prev: float, noise: Optional[Tensor], eta: float,
                     clip: bool, clamp: bool, seed_t: Optional[Tensor], seed: int, seed_offset: int,
                     row_offset_t: Optional[Tensor], row_offset: int) -> tuple[Tensor, Tensor]:
    return _kernels("ddim_step").ddim_step(
        x_t, eps, a_t, a_prev, noise, eta, clip, clamp=clamp, seed=seed if seed_t is None else seed_t, seed_offset=seed_offset,
        row_offset=row_offset if row_offset_t is None else row_offset_t)


@ddim_step_triton.register_fake
def _(x_t, eps, a_t, a_prev, noise, eta, clip, clamp, seed_t, seed, seed_offset, row_offset_t, row_offset):
    return _like(x_t), _like(x_t)


def ddpm_step(x_t, eps, t, noise, coefs, clip=True, *, generator=None, seed=None, seed_offset=0, row_offset=0):
    """The op with the launcher's arguments."""
    seed_t, seed_v = (None, 0) if noise is not None else seed_arguments(seed, generator, x_t)
    row_t, row_v = _tensor_or_int(row_offset)
    return ddpm_step_triton(x_t.detach(), eps.detach(), t, None if noise is None else noise.detach(), coefs,
                            bool(clip), seed_t, seed_v, int(seed_offset), row_t, row_v)


def ddim_step(x_t, eps, a_t, a_prev, noise, eta=0.0, clip=True, *, clamp=False, generator=None, seed=None, seed_offset=0,
              row_offset=0):
    """The op with the launcher's arguments."""
    drawn = noise is None and _kernels("ddim_step").sigma_of(float(a_t), float(a_prev), float(eta)) > 0.0
    seed_t, seed_v = seed_arguments(seed, generator, x_t) if drawn else (None, 0)
    row_t, row_v = _tensor_or_int(row_offset)
    return ddim_step_triton(x_t.detach(), eps.detach(), float(a_t), float(a_prev),
                            None if noise is None else noise.detach(), float(eta), bool(clip), bool(clamp), seed_t, seed_v,
                            int(seed_offset), row_t, row_v)


# --- q_sample ---------------------------------------------------------------------------------

def _q_coefs(t: Tensor, coefs: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
    # the launcher's conversions, for the backward
    return (t.to(device=like.device, dtype=torch.int64).contiguous(),
            coefs[:2].to(device=like.device, dtype=torch.float32).contiguous())


@torch.library.custom_op("pdiff_fast::q_sample_triton", mutates_args=())
def q_sample_triton(x0: Tensor, t: Tensor, coefs: Tensor, noise: Tensor) -> Tensor:
    with torch.no_grad():
        return _kernels("q_sample").q_sample(x0, t, coefs, noise)[0]


@q_sample_triton.register_fake
def _(x0, t, coefs, noise):
    return _like(x0)


@torch.library.custom_op("pdiff_fast::q_sample_noise_triton", mutates_args=())
def q_sample_noise_triton(x0: Tensor, t: Tensor, coefs: Tensor, seed_t: Optional[Tensor], seed: int,
                          seed_offset: int, row_offset_t: Optional[Tensor], row_offset: int) -> tuple[Tensor, Tensor]:
    with torch.no_grad():
        return _kernels("q_sample").q_sample(
            x0, t, coefs, None, seed=seed if seed_t is None else seed_t, seed_offset=seed_offset,
            row_offset=row_offset if row_offset_t is None else row_offset_t)


@q_sample_noise_triton.register_fake
def _(x0, t, coefs, seed_t, seed, seed_offset, row_offset_t, row_offset):
    return _like(x0), _like(x0)


@torch.library.custom_op("pdiff_fast::q_sample_backward_triton", mutates_args=())
def q_sample_backward_triton(grad: Tensor, t: Tensor, coefs: Tensor, need_x0: bool, need_noise: bool) -> list[Tensor]:
    t_c, coefs_c = _q_coefs(t, coefs, grad)
    grads = _kernels("q_sample")._q_sample_backward(grad, t_c, coefs_c, need_x0, need_noise)
    return [g for g in grads if g is not None]


@q_sample_backward_triton.register_fake
def _(grad, t, coefs, need_x0, need_noise):
    return [_like(grad) for need in (need_x0, need_noise) if need]


def _q_sample_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])


def _q_sample_backward(ctx, grad_x_t):
    t, coefs = ctx.saved_tensors
    need_x0, need_noise = ctx.needs_input_grad[0], ctx.needs_input_grad[3]
    grads = iter(q_sample_backward_triton(grad_x_t, t, coefs, need_x0, need_noise))
    return next(grads) if need_x0 else None, None, None, next(grads) if need_noise else None


def _q_sample_noise_backward(ctx, grad_x_t, _grad_noise):
    t, coefs = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return (None,) * 8
    (grad_x0,) = q_sample_backward_triton(grad_x_t, t, coefs, True, False)
    return (grad_x0,) + (None,) * 7


def _q_sample_noise_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1], inputs[2])
    ctx.mark_non_differentiable(output[1])


q_sample_triton.register_autograd(_q_sample_backward, setup_context=_q_sample_setup)
q_sample_noise_triton.register_autograd(_q_sample_noise_backward, setup_context=_q_sample_noise_setup)


def q_sample(x0, t, coefs, noise=None, generator=None, *, seed=None, seed_offset=0, row_offset=0):
    """The ops with the launcher's arguments; returns (x_t, noise)."""
    if noise is not None:
        return q_sample_triton(x0, t, coefs, noise), noise
    seed_t, seed_v = seed_arguments(seed, generator, x0)
    row_t, row_v = _tensor_or_int(row_offset)
    return q_sample_noise_triton(x0, t, coefs, seed_t, seed_v, int(seed_offset), row_t, row_v)


# --- eps_mse ----------------------------------------------------------------------------------

@torch.library.custom_op("pdiff_fast::eps_mse_triton", mutates_args=())
def eps_mse_triton(pred: Tensor, target: Tensor) -> Tensor:
    return _kernels("eps_mse").eps_mse_forward(pred.contiguous(), target.contiguous())


@eps_mse_triton.register_fake
def _(pred, target):
    return pred.new_empty(())


@torch.library.custom_op("pdiff_fast::eps_mse_backward_triton", mutates_args=())
def eps_mse_backward_triton(pred: Tensor, target: Tensor, grad_out: Tensor, need_pred: bool,
                            need_target: bool) -> list[Tensor]:
    grads = _kernels("eps_mse").eps_mse_backward(pred.contiguous(), target.contiguous(), grad_out, need_pred,
                                                 need_target)
    return [g for g in grads if g is not None]


@eps_mse_backward_triton.register_fake
def _(pred, target, grad_out, need_pred, need_target):
    return [_like(x) for x, need in ((pred, need_pred), (target, need_target)) if need]


def _eps_mse_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _eps_mse_backward(ctx, grad_out):
    pred, target = ctx.saved_tensors
    need_pred, need_target = ctx.needs_input_grad[:2]
    grads = iter(eps_mse_backward_triton(pred, target, grad_out, need_pred, need_target))
    return next(grads) if need_pred else None, next(grads) if need_target else None


eps_mse_triton.register_autograd(_eps_mse_backward, setup_context=_eps_mse_setup)


def eps_mse(pred, target):
    """The op with the launcher's arguments."""
    return eps_mse_triton(pred, target)


# --- act_norm_conv1d --------------------------------------------------------------------------

@torch.library.custom_op("pdiff_fast::act_norm_conv1d_triton", mutates_args=())
def act_norm_conv1d_triton(x: Tensor, weight: Tensor, bias: Optional[Tensor], add: Optional[Tensor],
                           residual: Optional[Tensor], stride: int, padding: int, transposed: bool, pre_act: bool,
                           post_tanh: bool) -> tuple[Tensor, Tensor, Tensor]:
    """(y, mean, rstd): the statistics are outputs so that the backward can reuse them."""
    return _kernels("act_norm_conv1d").act_norm_conv1d_forward(
        x, weight, bias, add, residual, stride, padding, transposed, pre_act, post_tanh)


@act_norm_conv1d_triton.register_fake
def _(x, weight, bias, add, residual, stride, padding, transposed, pre_act, post_tanh):
    B, Cin, L = x.shape
    K = weight.shape[2]
    Cout = weight.shape[1] if transposed else weight.shape[0]
    Lout = (L - 1) * stride - 2 * padding + K if transposed else (L + 2 * padding - K) // stride + 1
    stat = x.new_empty(B * Cin, dtype=torch.float32)
    return x.new_empty((B, Cout, Lout)), stat, torch.empty_like(stat)


@torch.library.custom_op("pdiff_fast::act_norm_conv1d_backward_triton", mutates_args=())
def act_norm_conv1d_backward_triton(
        grad_out: Tensor, x: Tensor, weight: Tensor, bias: Optional[Tensor], add: Optional[Tensor],
        y: Optional[Tensor], mean: Tensor, rstd: Tensor, residual_shape: Optional[Sequence[int]],
        residual_dtype: Optional[torch.dtype], stride: int, padding: int, transposed: bool, pre_act: bool,
        post_tanh: bool, needs: Sequence[bool]) -> list[Tensor]:
    """The gradients of (x, weight, bias, add, residual) that `needs` asks for, in that order."""
    residual_meta = None if residual_shape is None else (tuple(residual_shape), residual_dtype)
    Cout = weight.shape[1] if transposed else weight.shape[0]
    y_shape = (x.shape[0], Cout, grad_out.shape[2])
    grads = _kernels("act_norm_conv1d").act_norm_conv1d_backward(
        grad_out, x, weight, bias, add, residual_meta, y_shape, y, mean, rstd, stride, padding, transposed, pre_act,
        post_tanh, tuple(needs))
    return [g for g in grads if g is not None]


@act_norm_conv1d_backward_triton.register_fake
def _(grad_out, x, weight, bias, add, y, mean, rstd, residual_shape, residual_dtype, stride, padding, transposed,
      pre_act, post_tanh, needs):
    Cout = weight.shape[1] if transposed else weight.shape[0]
    metas = [(x.shape, x.dtype), (weight.shape, weight.dtype),
             ((Cout,), bias.dtype if bias is not None else x.dtype),
             (add.shape if add is not None else (), add.dtype if add is not None else x.dtype),
             (residual_shape if residual_shape is not None else (), residual_dtype or x.dtype)]
    return [x.new_empty(tuple(shape), dtype=dtype) for (shape, dtype), need in zip(metas, needs) if need]


def _act_norm_conv1d_setup(ctx, inputs, output):
    x, weight, bias, add, residual, *conf = inputs
    y, mean, rstd = output
    post_tanh = conf[4]
    ctx.save_for_backward(x, weight, bias, add, y if post_tanh else None, mean, rstd)
    ctx.mark_non_differentiable(mean, rstd)
    ctx.conf = tuple(conf)
    ctx.residual_meta = (list(residual.shape), residual.dtype) if residual is not None else (None, None)


def _act_norm_conv1d_backward(ctx, grad_y, _grad_mean, _grad_rstd):
    x, weight, bias, add, y, mean, rstd = ctx.saved_tensors
    needs = list(ctx.needs_input_grad[:5])
    grads = [None] * 5
    if any(needs):
        computed = iter(act_norm_conv1d_backward_triton(
            grad_y, x, weight, bias, add, y, mean, rstd, *ctx.residual_meta, *ctx.conf, needs))
        grads = [next(computed) if need else None for need in needs]
    return (*grads, None, None, None, None, None)


act_norm_conv1d_triton.register_autograd(_act_norm_conv1d_backward, setup_context=_act_norm_conv1d_setup)


def act_norm_conv1d(x, weight, bias, *, stride=1, padding=0, transposed=False, pre_act=False, add=None,
                    residual=None, post_tanh=False) -> Tensor:
    """The op with the launcher's arguments; returns y."""
    return act_norm_conv1d_triton(x, weight, bias, add, residual, int(stride), int(padding), bool(transposed),
                                  bool(pre_act), bool(post_tanh))[0]

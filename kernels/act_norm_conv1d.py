"""act_norm_conv1d in Triton: [x + add] -> [leaky_relu] -> instance_norm -> conv1d | conv_transpose1d
-> [+ residual] -> [tanh], forward and backward (reference: pdiff_fast.ops.act_norm_conv1d).

Four files: this one holds the conv kernel (forward and adjoint), its launcher and tile table,
the torch.autograd.Function and the public `act_norm_conv1d`; the weight gradient is in
kernels/act_norm_conv1d_weight_grad.py; the row statistics, the
backward through the normalization and the gradient sums (`_stats_kernel`, `_norm_bwd_*_kernel`,
`_sum_kernel`) are in kernels/act_norm_conv1d_stats.py; the launch helpers (buffers, tile sizes,
dot precision, the int32 batch chunks) in kernels/launch.py.

Forward, 2 or 3 launches:
  1. `_stats_kernel`: per (b, c) row mean / rstd of act(x + add) in fp32. A row is split into
     L-tiles over many programs; each tile writes (tile mean, tile M2) and `_stats_finalize_kernel`
     merges them (Chan's parallel formula, robust to large means). When one tile covers L, the
     stats kernel writes mean / rstd itself.
  2. `_conv_kernel`: implicit GEMM with tl.dot, tiles over (Cout, B * Lout), reduction over
     Cin chunks x the K taps. The input tile is loaded, the add / leaky relu / normalization are
     applied in registers (the normalized activation never touches memory); bias, residual and
     tanh are fused into the epilogue. Transposed convs split the outputs into `stride` phases
     (j = q * stride + r), so each phase only runs the taps that reach it and loads contiguously.
Backward:
  gz = g * (1 - y^2) (`_tanh_bwd_kernel`, only with post_tanh); d_residual = gz;
  d_bias = sum_{b, j} gz and d_add = d_x summed over broadcast dims (`_sum_kernel`, split over the
  reduced dim when it is long); d_weight (`_weight_grad_kernel`, tl.dot, split over B * L,
  re-normalizing x on load); d_hn = the adjoint conv of gz (`_conv_kernel` again, with the
  weight's channel roles swapped and the other conv mode) into an fp32 (B, Cin, L) buffer;
  then `_norm_bwd_sums_kernel` (row sums of d_hn and d_hn * xhat, split over L) and
  `_norm_bwd_dx_kernel` (d_x = rstd * (d_hn - mean(d_hn) - xhat * mean(d_hn * xhat)) * act').
  Everything is Triton except one degenerate case: an `add` or `residual` broadcast along the
  length dimension (size 1 there) has its gradient reduced with torch's `sum_to_size`.

Floor counts, for benchmarks to report % of floor (e = bytes per element of x / y / g, fp32: 4;
Lout = (L + 2p - K) // s + 1, or (L - 1) * s - 2p + K when transposed; Nx = B*Cin*L, Ny = B*Cout*Lout,
Nw = Cout*Cin*K + Cout):
  Autoencoder (memory bound), forward:
    floor bytes = e * (Nx [x] + numel(add) + Ny [y] + [Ny residual] + Nw)
    this design = floor + e * (Nx + numel(add))  [the stats pass reads x / add once more]
                  + 8 * B*Cin [mean, rstd]  (+ 16 * B*Cin * ceil(L / 2048) partials when L > 2048)
  Autoencoder, backward (read x, add, g, [y], weights; write dx, d_add, [d_residual], dW, db):
    floor bytes = e * (2*Nx + 2*numel(add) + Ny [g] + [Ny y] + [Ny d_residual] + 2*Nw)
    this design ~ floor + e * (2*Ny [g again: dW, d_bias] + 2*Nx + 2*numel(add) [x again: dW, sums])
                  + 12 * Nx [fp32 d_hn written, read twice] + 4 * Cout*Lout * 2 [d_bias partial]
                  (+ e * 3*Ny with post_tanh: gz written and re-read; + e * Nx with add: d_add
                  re-reads d_x; + e * Ny with residual: d_residual is a copy of gz)
  Denoiser (compute bound), forward FLOPs = 2 * B * Cout * Lout * Cin * K  (transposed:
    2 * B * Cin * L * Cout * K); backward FLOPs = 2 x forward (d_x conv + d_weight GEMM).
    The elementwise norm / activation work (~10 FLOPs per input element) is not counted.

fp32 dots use input_precision "tf32" on CUDA when torch's conv allows TF32
(torch.backends.cudnn.conv.fp32_precision, or cudnn.allow_tf32 on older torch), else "ieee".
fp16 / bf16 inputs run the dots in that dtype with fp32 accumulation; statistics are always fp32.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

from pdiff_fast.ops.act_norm_conv1d import NEGATIVE_SLOPE

from . import act_norm_conv1d_stats as stats
from . import launch
from .act_norm_conv1d_stats import activation
from .act_norm_conv1d_weight_grad import _weight_grad
from .launch import batch_chunks

# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------


@triton.jit
def _tanh(v):
    """tanh from tl.exp (no libdevice): series near 0, (1 - e^-2|v|) / (1 + e^-2|v|) elsewhere."""
    a = tl.abs(v)
    e = tl.exp(-2.0 * a)
    t = (1.0 - e) / (1.0 + e)
    a2 = a * a
    series = a * (1.0 - a2 * (1.0 / 3.0 - a2 * (2.0 / 15.0 - a2 * (17.0 / 315.0))))
    t = tl.where(a < 0.2, series, t)
    return tl.where(v < 0, -t, t)


# B and the batch strides vary with the number of models (and a tail chunk): not specialized, so a
# new N reuses the compiled variants instead of compiling ~9 more (its int == 1 / % 16 checks)
@triton.jit(do_not_specialize=["B", "stride_xb", "stride_ab", "stride_rb", "stride_yb"])
def _conv_kernel(
    x_ptr,  # (B, Ci, Li) input
    add_ptr,  # broadcast to (B, Ci, Li) by strides; unused without HAS_ADD
    mean_ptr, rstd_ptr,  # (B * Ci,) fp32; unused without NORMALIZE
    w_ptr,  # weight, read as w[o, c, k] through (stride_wo, stride_wc, stride_wk)
    bias_ptr,  # (Co,); unused without HAS_BIAS
    res_ptr,  # broadcast to (B, Co, Lo) by strides; unused without HAS_RES
    y_ptr,  # (B, Co, Lo) output
    B, Ci, Li, Co, Lo,
    Q,  # TRANSPOSED: outputs per phase, cdiv(Lo, conv_stride)
    conv_stride, padding,
    stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
    stride_wo, stride_wc, stride_wk,
    stride_rb, stride_rc, stride_rl, stride_yb, stride_yc, stride_yl,
    K: tl.constexpr, TRANSPOSED: tl.constexpr,
    HAS_ADD: tl.constexpr, PRE_ACT: tl.constexpr, NORMALIZE: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, POST_TANH: tl.constexpr,
    NEG_SLOPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_O: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, NUM_STAGES: tl.constexpr,
):
    """y[b, o, j] = bias[o] + sum_{c, k} w[o, c, k] * h[b, c, i] with h = norm(act(x + add)) and
    i = j * s - p + k (conv) or j = i * s - p + k (transposed); then + residual, tanh.
    The launcher keeps B * Lo (and B * Q) below 2^31, so the flattened n fits int32."""
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # flattened (b, output position)
    o = tl.program_id(1) * BLOCK_O + tl.arange(0, BLOCK_O)  # (BLOCK_O,)
    if TRANSPOSED:
        phase = tl.program_id(2)  # this program's outputs are j = q * s + phase
        b = n // Q
        q = n % Q
        j = q * conv_stride + phase
    else:
        b = n // Lo
        j = n % Lo
    n_mask = (b < B) & (j < Lo)  # (BLOCK_N,)
    o_mask = o < Co
    b64 = b.to(tl.int64)
    x_row = b64 * stride_xb  # (BLOCK_N,) per-column bases, hoisted out of the channel loop
    a_row = b64 * stride_ab
    s_row = b64 * Ci  # the (b, c) statistics row is b * Ci + c
    acc = tl.zeros([BLOCK_O, BLOCK_N], dtype=tl.float32)
    if not TRANSPOSED and not NORMALIZE and not HAS_ADD:
        # a plain implicit GEMM over (channel chunk, tap) pairs: each step loads one weight tile and
        # one shifted input tile straight into the dot, so tl.range pipelines both with async copies
        n_steps = tl.cdiv(Ci, BLOCK_C) * K
        for step in tl.range(0, n_steps, num_stages=NUM_STAGES):
            c = (step // K) * BLOCK_C + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
            k = step % K
            i = j * conv_stride - padding + k  # (BLOCK_N,)
            c_mask = c < Ci
            mask = c_mask[:, None] & (n_mask & (i >= 0) & (i < Li))[None, :]
            h = tl.load(x_ptr + x_row[None, :] + c[:, None] * stride_xc + i[None, :] * stride_xl, mask=mask, other=0.0)
            w = tl.load(w_ptr + o[:, None] * stride_wo + c[None, :] * stride_wc + k * stride_wk,
                        mask=o_mask[:, None] & c_mask[None, :], other=0.0)  # (BLOCK_O, BLOCK_C)
            acc = tl.dot(w, h.to(w.dtype), acc, input_precision=DOT_PRECISION)
    else:
        # normalize on load (long rows, whose statistics need a second pass) or a transposed conv
        # (each phase runs only the taps that reach it: K unrolled)
        for c0 in tl.range(0, Ci, BLOCK_C, num_stages=NUM_STAGES):
            c = c0 + tl.arange(0, BLOCK_C)  # (BLOCK_C,)
            c_mask = c < Ci
            cn_mask = c_mask[:, None] & n_mask[None, :]  # (BLOCK_C, BLOCK_N)
            if NORMALIZE:  # per (b, c) statistics, shared by the K taps
                row = s_row[None, :] + c[:, None]
                mean = tl.load(mean_ptr + row, mask=cn_mask, other=0.0)
                rstd = tl.load(rstd_ptr + row, mask=cn_mask, other=0.0)
            w_mask = o_mask[:, None] & c_mask[None, :]
            for k in tl.static_range(K):
                if TRANSPOSED:
                    # j + p - k = i * s: phase r reaches tap k only when (r + p - k) % s == 0
                    d = phase + padding - k + conv_stride * K  # shifted to stay >= 0
                    reaches = (d % conv_stride) == 0
                    i = q + d // conv_stride - K
                else:
                    reaches = True  # a plain conv's every tap reaches every output: no runtime test
                    i = j * conv_stride - padding + k
                if reaches:
                    mask = cn_mask & ((i >= 0) & (i < Li))[None, :]
                    h = tl.load(x_ptr + x_row[None, :] + c[:, None] * stride_xc + i[None, :] * stride_xl,
                                mask=mask, other=0.0).to(tl.float32)
                    if HAS_ADD:
                        h += tl.load(add_ptr + a_row[None, :] + c[:, None] * stride_ac + i[None, :] * stride_al,
                                     mask=mask, other=0.0).to(tl.float32)
                    if NORMALIZE:
                        h = (activation(h, PRE_ACT, NEG_SLOPE) - mean) * rstd
                        h = tl.where(mask, h, 0.0)  # zero padding applies to the normalized input
                    w = tl.load(w_ptr + o[:, None] * stride_wo + c[None, :] * stride_wc + k * stride_wk,
                                mask=w_mask, other=0.0)  # (BLOCK_O, BLOCK_C)
                    acc = tl.dot(w, h.to(w.dtype), acc, input_precision=DOT_PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + o, mask=o_mask, other=0.0).to(tl.float32)[:, None]
    out_mask = o_mask[:, None] & n_mask[None, :]
    if HAS_RES:
        acc += tl.load(res_ptr + b64[None, :] * stride_rb + o[:, None] * stride_rc + j[None, :] * stride_rl,
                       mask=out_mask, other=0.0).to(tl.float32)
    if POST_TANH:
        acc = _tanh(acc)
    tl.store(y_ptr + b64[None, :] * stride_yb + o[:, None] * stride_yc + j[None, :] * stride_yl,
             acc.to(y_ptr.dtype.element_ty), mask=out_mask)


@triton.jit
def _tanh_bwd_kernel(
    g_ptr, y_ptr, gz_ptr,  # (N,) contiguous each: gz = g * (1 - y^2)
    N,
    BLOCK: tl.constexpr,
):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(gz_ptr + offs, (g * (1.0 - y * y)).to(gz_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------


def _as_3d(t: torch.Tensor, shape: tuple[int, int, int], name: str) -> torch.Tensor:
    """`t` as a (possibly stride-0) view of `shape`; raises when it does not broadcast."""
    while t.dim() < 3:
        t = t.unsqueeze(0)
    try:
        return t.expand(shape)
    except RuntimeError:
        raise ValueError(f"act_norm_conv1d: {name} of shape {tuple(t.shape)} does not broadcast "
                         f"to {tuple(shape)}") from None


def conv_tiles(device: torch.device, n_cols: int, Co: int, Ci: int, plain: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_O, BLOCK_N, BLOCK_C, num_warps, num_stages) of the conv kernel for n_cols flattened
    (b, position) columns per phase; `plain`: the pipelined implicit-GEMM loop (input already
    normalized, not transposed). Chosen from the sm_90a compile (benchmarks/results/sm90_kernels.md):
    plain: 128 x 128 output tiles on 8 warps, 2 stages, no spill; normalize-on-load and transposed:
    at most 64 x 64 on 8 warps (larger tiles, or 4 warps, sat at the 255-register cap and spilled),
    not pipelined (pipelining the gathered loads multiplied shared memory). Tiles narrow until the
    grid gives each SM two. Under the CPU interpreter: wide tiles, few programs."""
    block_c = launch.pow2(Ci, 16, 32)
    if not launch.on_gpu(device):
        block_o = launch.pow2(Co, 16, 64)
        return block_o, 128 if block_o <= 32 else 512, block_c, 4, 1
    cap = 128 if plain else 64
    block_o, block_n = launch.pow2(Co, 16, cap), cap
    want = 2 * launch.sm_count(device)
    while block_o > 64 and launch.cdiv(Co, block_o) * launch.cdiv(n_cols, block_n) < want:
        block_o //= 2
    while block_n > 32 and launch.cdiv(Co, block_o) * launch.cdiv(n_cols, block_n) < want:
        block_n //= 2
    warps = 8 if (block_o * block_n >= 128 * 64 or not plain) else 4
    return block_o, block_n, block_c, warps, 2 if plain else 1


def _conv(inp, w, w_strides, Co: int, Lo: int, conv_stride: int, padding: int, transposed: bool,
          out: torch.Tensor, *, add3=None, mean=None, rstd=None, pre_act=False, bias=None,
          res3=None, post_tanh=False) -> torch.Tensor:
    """out (B, Co, Lo) = conv of inp (B, Ci, Li), normalized on load when `mean` is given;
    w is read as w[o, c, k] through w_strides."""
    B, Ci, Li = inp.shape
    K = w.shape[2]
    Q = launch.cdiv(Lo, conv_stride) if transposed else 1
    per_sample = Q if transposed else Lo
    plain = mean is None and add3 is None and not transposed  # the kernel's pipelined loop
    block_o, block_n, block_c, warps, stages = conv_tiles(inp.device, B * per_sample, Co, Ci, plain)
    for b0, b1 in batch_chunks(B, max(per_sample, Li, Lo), block_n):
        x, o = inp[b0:b1], out[b0:b1]
        a = add3[b0:b1] if add3 is not None else x
        r = res3[b0:b1] if res3 is not None else o
        m = mean[b0 * Ci:b1 * Ci] if mean is not None else x
        s = rstd[b0 * Ci:b1 * Ci] if rstd is not None else x
        grid = (launch.cdiv((b1 - b0) * per_sample, block_n), launch.cdiv(Co, block_o),
                conv_stride if transposed else 1)
        _conv_kernel[grid](
            x, a, m, s, w, bias if bias is not None else w, r, o,
            b1 - b0, Ci, Li, Co, Lo, Q, conv_stride, padding,
            *x.stride(), *a.stride(), *w_strides, *r.stride(), *o.stride(),
            K=K, TRANSPOSED=transposed, HAS_ADD=add3 is not None, PRE_ACT=pre_act,
            NORMALIZE=mean is not None, HAS_BIAS=bias is not None, HAS_RES=res3 is not None,
            POST_TANH=post_tanh, NEG_SLOPE=NEGATIVE_SLOPE, DOT_PRECISION=launch.dot_precision(w.dtype, inp.device),
            BLOCK_O=block_o, BLOCK_N=block_n, BLOCK_C=block_c, NUM_STAGES=stages, num_warps=warps,
        )
    return out


def _out_length(L: int, K: int, stride: int, padding: int, transposed: bool) -> int:
    return (L - 1) * stride - 2 * padding + K if transposed else (L + 2 * padding - K) // stride + 1


def act_norm_conv1d_forward(x, weight, bias, add, residual, stride, padding, transposed, pre_act, post_tanh):
    """Returns y (B, Cout, Lout) and the fp32 (B * Cin,) mean / rstd kept for the backward."""
    if x.dim() != 3 or weight.dim() != 3:
        raise ValueError(f"act_norm_conv1d: x and weight must be 3-D, got {tuple(x.shape)}, {tuple(weight.shape)}")
    B, Cin, L = x.shape
    K = weight.shape[2]
    w_cin, Cout = (weight.shape[0], weight.shape[1]) if transposed else (weight.shape[1], weight.shape[0])
    if w_cin != Cin:
        raise ValueError(f"act_norm_conv1d: weight {tuple(weight.shape)} does not take {Cin} input channels")
    if stride < 1 or padding < 0:
        raise ValueError(f"act_norm_conv1d: stride={stride}, padding={padding}")
    Lout = _out_length(L, K, stride, padding, transposed)
    if Lout < 1:
        raise ValueError(f"act_norm_conv1d: input length {L} too short for kernel {K}, padding {padding}")
    add3 = _as_3d(add, (B, Cin, L), "add") if add is not None else None
    res3 = _as_3d(residual, (B, Cout, Lout), "residual") if residual is not None else None
    # short rows (one stats program per row): the stats kernel also writes h = norm(act(x + add)),
    # and the conv reads it as a plain input; long rows: the conv normalizes on load
    mean, rstd, h = stats.row_stats(x, add3, pre_act, h_dtype=weight.dtype)
    y = launch.alloc((B, Cout, Lout), x.dtype, x.device)
    w0, w1, w2 = weight.stride()
    w_strides = (w1, w0, w2) if transposed else (w0, w1, w2)  # read as w[out, in, k]
    if h is not None:
        _conv(h, weight, w_strides, Cout, Lout, stride, padding, transposed, y, bias=bias, res3=res3,
              post_tanh=post_tanh)
    else:
        _conv(x, weight, w_strides, Cout, Lout, stride, padding, transposed, y, add3=add3, mean=mean, rstd=rstd,
              pre_act=pre_act, bias=bias, res3=res3, post_tanh=post_tanh)
    return y, mean, rstd


def act_norm_conv1d_backward(grad_out, x, weight, bias, add, residual_meta, y_shape, y, mean, rstd, stride,
                             padding, transposed, pre_act, post_tanh, needs):
    """Gradients (dx, dweight, dbias, dadd, dresidual); `needs` says which are wanted (else None).
    `y` (the forward output) is only needed, and only given, with post_tanh."""
    need_x, need_w, need_b, need_add, need_res = needs
    B, Cin, L = x.shape
    _, Cout, Lout = y_shape
    g = grad_out.contiguous()
    if post_tanh:
        gz = launch.alloc(g.shape, g.dtype, g.device)
        block = 1024
        _tanh_bwd_kernel[(launch.cdiv(g.numel(), block),)](g, y, gz, g.numel(), BLOCK=block)
    else:
        gz = g
    add3 = _as_3d(add, (B, Cin, L), "add") if add is not None else None
    dx = dw = db = dadd = dres = None
    if need_res:
        dres = stats.reduce_to(gz, *residual_meta)
    if need_b:
        per_pos = launch.alloc((Cout, Lout), torch.float32, g.device)  # sum over the batch first, then the length
        stats.reduce_sum(gz, 1, B, Cout * Lout, (0, Cout * Lout, 1), per_pos, (0, 1))
        db = launch.alloc(Cout, bias.dtype, g.device)
        stats.reduce_sum(per_pos, Cout, Lout, 1, (Lout, 1, 0), db, (1, 0))
    if need_w:
        dw = _weight_grad(x, add3, mean, rstd, gz, weight, stride, padding, transposed, pre_act)
    if need_x or need_add:
        # adjoint conv: a conv's input gradient is a transposed conv of gz and vice versa
        dh = launch.alloc((B, Cin, L), torch.float32, x.device)
        w0, w1, w2 = weight.stride()
        w_strides = (w0, w1, w2) if transposed else (w1, w0, w2)  # read as w[cin, cout, k]
        _conv(gz, weight, w_strides, Cin, L, stride, padding, not transposed, dh)
        da = stats.norm_backward(dh, x, add3, mean, rstd, pre_act)
        if need_add:
            dadd = stats.reduce_to(da, tuple(add.shape), add.dtype)
        if need_x:
            dx = da
    return dx, dw, db, dadd, dres


# ------------------------------------------------------------------------------------------------
# Autograd
# ------------------------------------------------------------------------------------------------


class ActNormConv1dFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, add, residual, stride, padding, transposed, pre_act, post_tanh):
        y, mean, rstd = act_norm_conv1d_forward(x, weight, bias, add, residual, stride, padding, transposed,
                                                pre_act, post_tanh)
        ctx.save_for_backward(x, weight, bias, add, y if post_tanh else None, mean, rstd)
        ctx.conf = (stride, padding, transposed, pre_act, post_tanh)
        ctx.y_shape = tuple(y.shape)
        ctx.residual_meta = (tuple(residual.shape), residual.dtype) if residual is not None else None
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, weight, bias, add, y, mean, rstd = ctx.saved_tensors
        stride, padding, transposed, pre_act, post_tanh = ctx.conf
        needs = ctx.needs_input_grad[:5]
        dx, dw, db, dadd, dres = act_norm_conv1d_backward(
            grad_out, x, weight, bias, add, ctx.residual_meta, ctx.y_shape, y, mean, rstd, stride, padding, transposed,
            pre_act, post_tanh, needs)
        return dx, dw, db, dadd, dres, None, None, None, None, None


@launch.on_input_device
def act_norm_conv1d(x, weight, bias, *, stride=1, padding=0, transposed=False, pre_act=False, add=None,
                    residual=None, post_tanh=False) -> torch.Tensor:
    """Fused [x + add] -> [leaky_relu] -> instance_norm -> conv1d / conv_transpose1d -> [+ residual]
    -> [tanh]; same arguments and result as `pdiff_fast.ops.act_norm_conv1d.act_norm_conv1d_torch`."""
    return ActNormConv1dFunction.apply(x, weight, bias, add, residual, int(stride), int(padding),
                                       bool(transposed), bool(pre_act), bool(post_tanh))

"""The weight gradient of act_norm_conv1d (kernels/act_norm_conv1d.py): dW as a tl.dot GEMM over the
flattened (b, position) pairs, split over them into fp32 partials that `_sum_kernel` reduces; the
normalized input is rebuilt on load from x, add and the forward's mean / rstd."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pdiff_fast.ops.act_norm_conv1d import NEGATIVE_SLOPE

from . import act_norm_conv1d_stats as stats
from . import launch
from .act_norm_conv1d_stats import activation, load_x_add


@triton.jit
def _weight_grad_kernel(
    x_ptr,  # (B, Cin, Lin) forward input
    add_ptr,  # broadcast to x by strides; unused without HAS_ADD
    mean_ptr, rstd_ptr,  # (B * Cin,) fp32
    g_ptr,  # (B, Cout, Lout) gradient of the conv output
    dw_ptr,  # (splits, D, S, K) partial weight gradients, D x S = Cout x Cin (conv) or Cin x Cout
    B, Cin, Lin, Cout, Lout,
    conv_stride, padding, m_per_split,
    stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
    stride_gb, stride_gc, stride_gl,
    stride_ws, stride_wd, stride_wsc, stride_wk,
    HAS_ADD: tl.constexpr, PRE_ACT: tl.constexpr, TRANSPOSED: tl.constexpr,
    NEG_SLOPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """dW[d, s, k] = sum_{b, m} D[b, d, m] * S[b, s, m * stride - p + k], where (D, S) = (g, h)
    for a conv and (h, g) for a transposed conv; h = norm(act(x + add)) is rebuilt on load."""
    k = tl.program_id(1)
    split = tl.program_id(2)
    if TRANSPOSED:
        DC = Cin
        SC = Cout
        Ld = Lin
        Ls = Lout
    else:
        DC = Cout
        SC = Cin
        Ld = Lout
        Ls = Lin
    n_s_tiles = tl.cdiv(SC, BLOCK_S)
    dc = (tl.program_id(0) // n_s_tiles) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,)
    sc = (tl.program_id(0) % n_s_tiles) * BLOCK_S + tl.arange(0, BLOCK_S)  # (BLOCK_S,)
    dc_mask = dc < DC
    sc_mask = sc < SC
    M = B * Ld
    acc = tl.zeros([BLOCK_D, BLOCK_S], dtype=tl.float32)
    m_lo = split * m_per_split
    m0 = m_lo
    while m0 < m_lo + m_per_split:  # not range(): see act_norm_conv1d_stats._stats_finalize_kernel
        m = m0 + tl.arange(0, BLOCK_M)  # (BLOCK_M,) flattened (b, dense position)
        m_mask = m < M
        b = m // Ld
        l = m % Ld
        pos = l * conv_stride - padding + k  # gathered position
        pos_mask = m_mask & (pos >= 0) & (pos < Ls)
        if TRANSPOSED:
            d_mask = dc_mask[:, None] & m_mask[None, :]  # (BLOCK_D, BLOCK_M)
            row = b[None, :].to(tl.int64) * Cin + dc[:, None]
            mean = tl.load(mean_ptr + row, mask=d_mask, other=0.0)
            rstd = tl.load(rstd_ptr + row, mask=d_mask, other=0.0)
            a = load_x_add(x_ptr, add_ptr, b[None, :], dc[:, None], l[None, :], d_mask,
                           stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al, HAS_ADD)
            dt = tl.where(d_mask, (activation(a, PRE_ACT, NEG_SLOPE) - mean) * rstd, 0.0)
            s_mask = pos_mask[:, None] & sc_mask[None, :]  # (BLOCK_M, BLOCK_S)
            st = tl.load(g_ptr + b.to(tl.int64)[:, None] * stride_gb + sc[None, :] * stride_gc
                         + pos[:, None] * stride_gl, mask=s_mask, other=0.0)
        else:
            d_mask = dc_mask[:, None] & m_mask[None, :]
            dt = tl.load(g_ptr + b.to(tl.int64)[None, :] * stride_gb + dc[:, None] * stride_gc
                         + l[None, :] * stride_gl, mask=d_mask, other=0.0)
            s_mask = pos_mask[:, None] & sc_mask[None, :]
            row = b[:, None].to(tl.int64) * Cin + sc[None, :]
            mean = tl.load(mean_ptr + row, mask=s_mask, other=0.0)
            rstd = tl.load(rstd_ptr + row, mask=s_mask, other=0.0)
            a = load_x_add(x_ptr, add_ptr, b[:, None], sc[None, :], pos[:, None], s_mask,
                           stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al, HAS_ADD)
            st = tl.where(s_mask, (activation(a, PRE_ACT, NEG_SLOPE) - mean) * rstd, 0.0)
        dot_t = g_ptr.dtype.element_ty
        acc = tl.dot(dt.to(dot_t), st.to(dot_t), acc, input_precision=DOT_PRECISION)
        m0 += BLOCK_M
    out = dw_ptr + split * stride_ws + dc[:, None] * stride_wd + sc[None, :] * stride_wsc + k * stride_wk
    tl.store(out, acc.to(dw_ptr.dtype.element_ty), mask=dc_mask[:, None] & sc_mask[None, :])


def _weight_grad(x, add3, mean, rstd, gz, weight, stride, padding, transposed, pre_act) -> torch.Tensor:
    B, Cin, L = x.shape
    _, Cout, Lout = gz.shape
    DC, SC, K = weight.shape  # (Cout, Cin, K), or (Cin, Cout, K) when transposed
    Ld = L if transposed else Lout
    block_d = launch.pow2(DC, 16, 64)
    block_s = launch.pow2(SC, 16, 64)
    block_m = launch.stream_tile(x.device, 64, 512)
    chunks = launch.batch_chunks(B, max(L, Lout), block_m)
    if len(chunks) > 1:  # int32 (b, position) indices: one weight gradient per batch chunk, summed
        total = torch.zeros(weight.shape, dtype=torch.float32, device=x.device)
        for b0, b1 in chunks:
            total += _weight_grad(x[b0:b1], add3[b0:b1] if add3 is not None else None, mean[b0 * Cin:b1 * Cin],
                                  rstd[b0 * Cin:b1 * Cin], gz[b0:b1], weight, stride, padding, transposed, pre_act)
        return total.to(weight.dtype)
    tiles = launch.cdiv(DC, block_d) * launch.cdiv(SC, block_s)
    M = B * Ld
    splits = max(1, min(launch.cdiv(M, block_m), launch.cdiv(launch.target_programs(x.device), tiles * K),
                        launch.MAX_SPLITS))
    m_per_split = launch.cdiv(launch.cdiv(M, splits), block_m) * block_m
    splits = launch.cdiv(M, m_per_split)
    dw = launch.alloc(weight.shape, weight.dtype, x.device)
    part = dw if splits == 1 else launch.alloc((splits,) + tuple(weight.shape), torch.float32, x.device)
    a = add3 if add3 is not None else x
    _weight_grad_kernel[(tiles, K, splits)](
        x, a, mean, rstd, gz, part, B, Cin, L, Cout, Lout, stride, padding, m_per_split,
        *x.stride(), *a.stride(), *gz.stride(), DC * SC * K, SC * K, K, 1,
        HAS_ADD=add3 is not None, PRE_ACT=pre_act, TRANSPOSED=transposed, NEG_SLOPE=NEGATIVE_SLOPE,
        DOT_PRECISION=launch.dot_precision(gz.dtype, gz.device), BLOCK_D=block_d, BLOCK_S=block_s, BLOCK_M=block_m,
    )
    if splits > 1:
        stats.reduce_sum(part, 1, splits, DC * SC * K, (0, DC * SC * K, 1), dw, (0, 1))
    return dw

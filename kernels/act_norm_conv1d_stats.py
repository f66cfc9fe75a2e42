"""The reductions of act_norm_conv1d (kernels/act_norm_conv1d.py): the per-(b, c) row statistics
of act(x + add) that the conv normalizes with, the backward through that normalization, and the
split sum behind every gradient that reduces over a broadcast.

  `_stats_kernel`: per (b, c) row mean / rstd of act(x + add) in fp32. A row is split into
    L-tiles over many programs; each tile writes (tile mean, tile M2) and `_stats_finalize_kernel`
    merges them (Chan's parallel formula, robust to large means). When one tile covers L, the
    stats kernel writes mean / rstd itself.
  `_norm_bwd_sums_kernel`: row sums of d_hn and d_hn * xhat (split over L, partials summed by
    `_sum_kernel`); `_norm_bwd_dx_kernel`: d_x = rstd * (d_hn - mean(d_hn) - xhat * mean(d_hn * xhat)) * act'.
  `_sum_kernel`: out[p, s] = sum_q in[p, q, s] over strided views, split over q when it is long
    and the partials summed again (deterministic, no atomics).

`load_x_add` and `activation` are the input prologue every kernel of the op shares: the
statistics must see exactly the values the conv normalizes. `row_tile` is the tile preamble of the
three per-row kernels, `tile_block` that of the two passes over the tile partials.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from pdiff_fast.ops.act_norm_conv1d import EPS, NEGATIVE_SLOPE

from . import launch

ROW_TILE = 2048  # elements of one row per stats / norm-backward program


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------


@triton.jit
def load_x_add(
    x_ptr, add_ptr,  # x: (B, C, L), add: broadcast to (B, C, L) by its strides
    b, c, pos, mask,  # broadcast-compatible index tensors and the load mask
    stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
    HAS_ADD: tl.constexpr,
):
    """a = x + add at (b, c, pos), in fp32, 0 where masked."""
    b64 = b.to(tl.int64)
    a = tl.load(x_ptr + b64 * stride_xb + c * stride_xc + pos * stride_xl, mask=mask, other=0.0).to(tl.float32)
    if HAS_ADD:
        a += tl.load(add_ptr + b64 * stride_ab + c * stride_ac + pos * stride_al, mask=mask, other=0.0).to(tl.float32)
    return a


@triton.jit
def activation(a, PRE_ACT: tl.constexpr, NEG_SLOPE: tl.constexpr):
    """leaky_relu(a) when PRE_ACT, else a."""
    if PRE_ACT:
        a = tl.where(a > 0, a, a * NEG_SLOPE)
    return a


@triton.jit
def row_tile(
    x_ptr, add_ptr,
    row_block, l_block,  # this program's block of rows and of positions
    R, C, L,
    stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
    HAS_ADD: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    """The (BLOCK_R, BLOCK_L) tile of the rows r = b * C + c one program of a per-row kernel reads:
    (r, l, r_mask, mask, a = x + add in fp32, 0 where masked)."""
    r = row_block * BLOCK_R + tl.arange(0, BLOCK_R)  # (BLOCK_R,)
    l = l_block * BLOCK_L + tl.arange(0, BLOCK_L)  # (BLOCK_L,)
    r_mask = r < R
    mask = r_mask[:, None] & (l < L)[None, :]
    b = r // C
    c = r % C
    a = load_x_add(x_ptr, add_ptr, b[:, None], c[:, None], l[None, :], mask,
                   stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al, HAS_ADD)
    return r, l, r_mask, mask, a


@triton.jit
def tile_block(t0, T, L, tile_len, r_mask, BLOCK_T: tl.constexpr):
    """Tiles t0 .. t0 + BLOCK_T of the finalize loop: (t, mask, count), where tile t covers
    count = min(tile_len, L - t * tile_len) elements."""
    t = t0 + tl.arange(0, BLOCK_T)
    mask = (t < T)[:, None] & r_mask[None, :]
    count = tl.minimum(L - t * tile_len, tile_len).to(tl.float32)
    return t, mask, count


@triton.jit(do_not_specialize=["R", "stride_xb", "stride_ab"])  # R = B * C: see _conv_kernel
def _stats_kernel(
    x_ptr,  # (B, C, L)
    add_ptr,  # (B|1, C|1, L) as strides; unused without HAS_ADD
    mean_ptr, rstd_ptr,  # (B * C,) fp32; written when SINGLE_TILE
    pmean_ptr, pm2_ptr,  # (T, B * C) fp32 tile means / tile M2; written otherwise
    h_ptr,  # (B * C, L) contiguous: the normalized input, written with WRITE_H (needs SINGLE_TILE)
    R, C, L,  # R = B * C rows
    stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
    eps,
    HAS_ADD: tl.constexpr, PRE_ACT: tl.constexpr, SINGLE_TILE: tl.constexpr, WRITE_H: tl.constexpr,
    NEG_SLOPE: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    t = tl.program_id(1)
    r, l, r_mask, mask, a = row_tile(x_ptr, add_ptr, tl.program_id(0), t, R, C, L,
                                     stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
                                     HAS_ADD, BLOCK_R, BLOCK_L)
    h = tl.where(mask, activation(a, PRE_ACT, NEG_SLOPE), 0.0)  # (BLOCK_R, BLOCK_L)
    count = tl.minimum(L - t * BLOCK_L, BLOCK_L).to(tl.float32)
    tile_mean = tl.sum(h, axis=1) / count  # (BLOCK_R,)
    diff = tl.where(mask, h - tile_mean[:, None], 0.0)
    tile_m2 = tl.sum(diff * diff, axis=1)
    if SINGLE_TILE:
        rstd = 1.0 / tl.sqrt(tile_m2 / count + eps)
        tl.store(mean_ptr + r, tile_mean, mask=r_mask)
        tl.store(rstd_ptr + r, rstd, mask=r_mask)
        if WRITE_H:  # the conv then reads h as a plain input: one load per element, pipelined
            h_out = (h - tile_mean[:, None]) * rstd[:, None]
            tl.store(h_ptr + r[:, None].to(tl.int64) * L + l[None, :], h_out.to(h_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(pmean_ptr + t * R + r, tile_mean, mask=r_mask)
        tl.store(pm2_ptr + t * R + r, tile_m2, mask=r_mask)


@triton.jit
def _stats_finalize_kernel(
    pmean_ptr, pm2_ptr,  # (T, R) fp32
    mean_ptr, rstd_ptr,  # (R,) fp32
    R, T, L, tile_len,  # tile t covers min(tile_len, L - t * tile_len) elements
    eps,
    BLOCK_T: tl.constexpr, BLOCK_R: tl.constexpr,
):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = r < R
    acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
    t0 = 0
    while t0 < T:  # while loops: runtime range() bounds break Triton 3.6's interpreter (NumPy >= 2.4)
        t, mask, count = tile_block(t0, T, L, tile_len, r_mask, BLOCK_T)
        acc += count[:, None] * tl.load(pmean_ptr + t[:, None] * R + r[None, :], mask=mask, other=0.0)
        t0 += BLOCK_T
    mean = tl.sum(acc, axis=0) / L  # (BLOCK_R,)
    acc = tl.zeros([BLOCK_T, BLOCK_R], dtype=tl.float32)
    t0 = 0
    while t0 < T:
        t, mask, count = tile_block(t0, T, L, tile_len, r_mask, BLOCK_T)
        pm = tl.load(pmean_ptr + t[:, None] * R + r[None, :], mask=mask, other=0.0)
        pm2 = tl.load(pm2_ptr + t[:, None] * R + r[None, :], mask=mask, other=0.0)
        d = pm - mean[None, :]
        acc += tl.where(mask, pm2 + count[:, None] * d * d, 0.0)
        t0 += BLOCK_T
    var = tl.sum(acc, axis=0) / L
    tl.store(mean_ptr + r, mean, mask=r_mask)
    tl.store(rstd_ptr + r, 1.0 / tl.sqrt(var + eps), mask=r_mask)


@triton.jit
def _sum_kernel(
    in_ptr,  # read as (P, Q, S) through its strides
    out_ptr,  # (splits, P, S): out[split, p, s] = sum of in[p, q, s] over this split's q range
    Q, S, U, q_per_split,  # U = P * S kept elements, flattened as u = p * S + s
    stride_ip, stride_iq, stride_is, stride_osplit, stride_op, stride_os,
    BLOCK_Q: tl.constexpr, BLOCK_U: tl.constexpr,
):
    u = tl.program_id(0) * BLOCK_U + tl.arange(0, BLOCK_U)  # (BLOCK_U,)
    split = tl.program_id(1)
    u_mask = u < U
    p = (u // S).to(tl.int64)
    s = (u % S).to(tl.int64)
    base = in_ptr + p * stride_ip + s * stride_is  # (BLOCK_U,) pointers
    acc = tl.zeros([BLOCK_Q, BLOCK_U], dtype=tl.float32)
    q_lo = split * q_per_split
    q0 = q_lo
    while q0 < q_lo + q_per_split:  # not range(): see _stats_finalize_kernel
        q = q0 + tl.arange(0, BLOCK_Q)  # (BLOCK_Q,)
        mask = (q < Q)[:, None] & u_mask[None, :]
        acc += tl.load(base[None, :] + q[:, None].to(tl.int64) * stride_iq, mask=mask, other=0.0).to(tl.float32)
        q0 += BLOCK_Q
    total = tl.sum(acc, axis=0)
    tl.store(out_ptr + split.to(tl.int64) * stride_osplit + p * stride_op + s * stride_os,
             total.to(out_ptr.dtype.element_ty), mask=u_mask)


@triton.jit
def _norm_bwd_sums_kernel(
    dh_ptr,  # (B * C, L) fp32 contiguous: gradient w.r.t. the normalized input
    x_ptr, add_ptr,  # as in _stats_kernel
    mean_ptr, rstd_ptr,  # (R,) fp32
    s1_ptr, s2_ptr,  # (T, R) fp32: per-tile sums of dh and of dh * xhat
    R, C, L,
    stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
    HAS_ADD: tl.constexpr, PRE_ACT: tl.constexpr, NEG_SLOPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    t = tl.program_id(1)
    r, l, r_mask, mask, a = row_tile(x_ptr, add_ptr, tl.program_id(0), t, R, C, L,
                                     stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
                                     HAS_ADD, BLOCK_R, BLOCK_L)
    mean = tl.load(mean_ptr + r, mask=r_mask, other=0.0)
    rstd = tl.load(rstd_ptr + r, mask=r_mask, other=0.0)
    xhat = tl.where(mask, (activation(a, PRE_ACT, NEG_SLOPE) - mean[:, None]) * rstd[:, None], 0.0)
    dh = tl.load(dh_ptr + r[:, None].to(tl.int64) * L + l[None, :], mask=mask, other=0.0)
    tl.store(s1_ptr + t * R + r, tl.sum(dh, axis=1), mask=r_mask)
    tl.store(s2_ptr + t * R + r, tl.sum(dh * xhat, axis=1), mask=r_mask)


@triton.jit
def _norm_bwd_dx_kernel(
    dh_ptr,  # (B * C, L) fp32 contiguous
    x_ptr, add_ptr, mean_ptr, rstd_ptr,
    s1_ptr, s2_ptr,  # (R,) fp32 row sums
    dx_ptr,  # (B, C, L) contiguous: gradient w.r.t. x (= w.r.t. x + add)
    R, C, L,
    stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
    HAS_ADD: tl.constexpr, PRE_ACT: tl.constexpr, NEG_SLOPE: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
):
    r, l, r_mask, mask, a = row_tile(x_ptr, add_ptr, tl.program_id(0), tl.program_id(1), R, C, L,
                                     stride_xb, stride_xc, stride_xl, stride_ab, stride_ac, stride_al,
                                     HAS_ADD, BLOCK_R, BLOCK_L)
    mean = tl.load(mean_ptr + r, mask=r_mask, other=0.0)[:, None]
    rstd = tl.load(rstd_ptr + r, mask=r_mask, other=0.0)[:, None]
    mean_dh = (tl.load(s1_ptr + r, mask=r_mask, other=0.0) / L)[:, None]
    mean_dh_xhat = (tl.load(s2_ptr + r, mask=r_mask, other=0.0) / L)[:, None]
    xhat = (activation(a, PRE_ACT, NEG_SLOPE) - mean) * rstd
    offs = r[:, None].to(tl.int64) * L + l[None, :]
    dh = tl.load(dh_ptr + offs, mask=mask, other=0.0)
    dx = rstd * (dh - mean_dh - xhat * mean_dh_xhat)
    if PRE_ACT:
        dx = tl.where(a > 0, dx, dx * NEG_SLOPE)
    tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Launchers
# ------------------------------------------------------------------------------------------------


def row_tiles(L: int, R: int) -> tuple[int, int, int]:
    """(BLOCK_L, BLOCK_R, T) for the per-(b, c)-row kernels."""
    block_l = launch.pow2(L, 16, ROW_TILE)
    block_r = launch.pow2(R, 1, max(1, 4096 // block_l))
    return block_l, block_r, launch.cdiv(L, block_l)


def reduce_sum(src: torch.Tensor, P: int, Q: int, S: int, in_strides, out: torch.Tensor, out_strides) -> None:
    """out[p, s] = sum_q src[p, q, s] (views given by strides); a long Q is split over programs and
    the partials reduced again."""
    U = P * S
    block_u = launch.pow2(U, 2, launch.stream_tile(src.device, 128, 1024))
    block_q = launch.pow2(Q, 1, max(1, launch.stream_tile(src.device, 4096, 16384) // block_u))
    programs = launch.cdiv(U, block_u)
    splits = max(1, min(launch.cdiv(Q, block_q), launch.cdiv(launch.target_programs(src.device), programs),
                        launch.MAX_SPLITS))
    q_per_split = launch.cdiv(launch.cdiv(Q, splits), block_q) * block_q
    splits = launch.cdiv(Q, q_per_split)
    if splits == 1:
        dst, dst_strides = out, (0,) + tuple(out_strides)
    else:
        dst = launch.alloc((splits, P, S), torch.float32, src.device)
        dst_strides = (P * S, S, 1)
    _sum_kernel[(programs, splits)](
        src, dst, Q, S, U, q_per_split, *in_strides, *dst_strides,
        BLOCK_Q=block_q, BLOCK_U=block_u,
    )
    if splits > 1:
        reduce_sum(dst, P, splits, S, (S, P * S, 1), out, out_strides)


def reduce_to(t: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """The gradient of a broadcast: contiguous (B, C, L) `t` summed down to `shape`."""
    B, C, L = t.shape
    shape3 = (1,) * (3 - len(shape)) + tuple(shape)
    if shape3[2] == 1 and L > 1:  # broadcast along the length: degenerate, left to torch
        return t.sum_to_size(shape3).to(dtype).reshape(shape)
    out = launch.alloc(shape3, dtype, t.device)
    red_b, red_c = shape3[0] == 1 and B > 1, shape3[1] == 1 and C > 1
    if red_b and red_c:
        P, Q, S, strides = 1, B * C, L, (0, L, 1)
    elif red_b:
        P, Q, S, strides = 1, B, C * L, (0, C * L, 1)
    elif red_c:
        P, Q, S, strides = B, C, L, (C * L, L, 1)
    else:
        P, Q, S, strides = 1, 1, B * C * L, (0, 0, 1)
    reduce_sum(t, P, Q, S, strides, out, (S, 1))
    return out.reshape(shape)


def row_stats(x, add3, pre_act: bool, h_dtype: torch.dtype | None = None):
    """Per-(b, c) mean and rstd of act(x + add), fp32 (B * C,) each, and h, the normalized input
    (B, C, L) in `h_dtype`, when h_dtype is given and one program holds whole rows (else None)."""
    B, C, L = x.shape
    R = B * C
    mean = launch.alloc(R, torch.float32, x.device)
    rstd = launch.alloc(R, torch.float32, x.device)
    block_l, block_r, T = row_tiles(L, R)
    a = add3 if add3 is not None else x
    if T > 1:
        pmean = launch.alloc((T, R), torch.float32, x.device)
        pm2 = launch.alloc((T, R), torch.float32, x.device)
    else:
        pmean = pm2 = mean
    h = launch.alloc((B, C, L), h_dtype, x.device) if h_dtype is not None and T == 1 else None
    _stats_kernel[(launch.cdiv(R, block_r), T)](
        x, a, mean, rstd, pmean, pm2, h if h is not None else mean, R, C, L, *x.stride(), *a.stride(), EPS,
        HAS_ADD=add3 is not None, PRE_ACT=pre_act, SINGLE_TILE=T == 1, WRITE_H=h is not None,
        NEG_SLOPE=NEGATIVE_SLOPE, BLOCK_R=block_r, BLOCK_L=block_l,
    )
    if T > 1:
        block_rf = launch.pow2(R, 16, 128)
        _stats_finalize_kernel[(launch.cdiv(R, block_rf),)](
            pmean, pm2, mean, rstd, R, T, L, block_l, EPS,
            BLOCK_T=launch.pow2(T, 1, 32), BLOCK_R=block_rf,
        )
    return mean, rstd, h


def norm_backward(dh, x, add3, mean, rstd, pre_act) -> torch.Tensor:
    """Gradient w.r.t. x + add from the gradient w.r.t. the normalized input (fp32, contiguous)."""
    B, C, L = x.shape
    R = B * C
    block_l, block_r, T = row_tiles(L, R)
    a = add3 if add3 is not None else x
    s1 = launch.alloc((T, R), torch.float32, x.device)
    s2 = launch.alloc((T, R), torch.float32, x.device)
    grid = (launch.cdiv(R, block_r), T)
    flags = dict(HAS_ADD=add3 is not None, PRE_ACT=pre_act, NEG_SLOPE=NEGATIVE_SLOPE,
                 BLOCK_R=block_r, BLOCK_L=block_l)
    _norm_bwd_sums_kernel[grid](dh, x, a, mean, rstd, s1, s2, R, C, L, *x.stride(), *a.stride(), **flags)
    if T > 1:
        r1 = launch.alloc(R, torch.float32, x.device)
        r2 = launch.alloc(R, torch.float32, x.device)
        reduce_sum(s1, 1, T, R, (0, R, 1), r1, (0, 1))
        reduce_sum(s2, 1, T, R, (0, R, 1), r2, (0, 1))
        s1, s2 = r1, r2
    dx = launch.alloc((B, C, L), x.dtype, x.device)
    _norm_bwd_dx_kernel[grid](dh, x, a, mean, rstd, s1, s2, dx, R, C, L, *x.stride(), *a.stride(), **flags)
    return dx

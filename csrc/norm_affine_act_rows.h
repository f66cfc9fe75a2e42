// norm_affine_act_rows.h: the work split of the CUDA kernel of norm_affine_act, as plain
// C++ so the C++ tests can replay a launch on the host (csrc/tests/test_norm_affine_act.cpp).
//
// A 2-D grid: blockIdx.y walks the N * C (model, channel) rows, whose scale / shift each thread
// computes once per row; blockIdx.x * blockDim.x + threadIdx.x walks the row's B * L elements
// (b, l), which lie at b * C * L + l. The element index is split into (b, l) with FastDivmod,
// no 64-bit division or modulo per element. Index is uint32_t when the output has fewer than
// 2^31 elements (every offset then fits), int64_t (plain division) otherwise.
#pragma once

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fast_divmod.h"
#include "norm_affine_act_math.h"

namespace pdiff_fast {

template <typename Index>
struct NormAffineActRows {
  Index rows;       // N * C
  Index c, l;       // channels, positions
  Index row_len;    // B * L elements per (model, channel) row
  Index cl;         // C * L: stride between samples
  Index per_model;  // B * C * L
  bool x_shared;
  FastDivmod by_l;  // j -> (b, l) for uint32_t indices
};

// The split for `shape`; Index must hold N * B * C * L.
template <typename Index>
NormAffineActRows<Index> make_rows(const NormAffineActShape& s) {
  NormAffineActRows<Index> g;
  g.rows = static_cast<Index>(s.n * s.c);
  g.c = static_cast<Index>(s.c);
  g.l = static_cast<Index>(s.l);
  g.row_len = static_cast<Index>(s.b * s.l);
  g.cl = static_cast<Index>(s.c * s.l);
  g.per_model = static_cast<Index>(s.b * s.c * s.l);
  g.x_shared = s.x_shared;
  g.by_l = FastDivmod(static_cast<uint32_t>(std::is_same_v<Index, uint32_t> ? s.l : 1));
  return g;
}

// 32-bit indices hold every offset of out (and of x, no larger) when out has < 2^31 elements
inline bool rows_fit_32bit(const NormAffineActShape& s) {
  return s.n * s.b * s.c * s.l < (int64_t{1} << 31);
}

struct NormAffineActLaunch {
  uint32_t threads, grid_x, grid_y;
};

// Threads: the row length rounded up to a warp, at most 256. grid_x covers a row (capped;
// the threads then stride), grid_y the rows (capped at 65535; blocks then stride).
template <typename Index>
NormAffineActLaunch launch_dims(const NormAffineActRows<Index>& g) {
  const int64_t len = static_cast<int64_t>(g.row_len), rows = static_cast<int64_t>(g.rows);
  const int64_t threads = std::min<int64_t>(256, (len + 31) / 32 * 32);
  const int64_t gx = std::min<int64_t>((len + threads - 1) / threads, 1 << 16);
  const int64_t gy = std::min<int64_t>(rows, 65535);
  return {static_cast<uint32_t>(threads), static_cast<uint32_t>(gx), static_cast<uint32_t>(gy)};
}

// One thread's share of one (model, channel) row: elements j0, j0 + step, ... of its B * L.
template <int Act, typename T, typename Index>
PDIFF_HD void norm_affine_act_row(const T* __restrict__ x, const NormAffineActParams<T>& p,
                                  T* __restrict__ out, const NormAffineActRows<Index>& g, Index row,
                                  Index j0, Index step) {
  if (j0 >= g.row_len) return;
  const Index n = row / g.c, c = row - n * g.c;  // once per row
  T scale, shift;
  affine_terms(p, static_cast<int64_t>(n), static_cast<int64_t>(c), static_cast<int64_t>(g.c), &scale,
               &shift);
  const T* xr = x + (g.x_shared ? Index(0) : n * g.per_model) + c * g.l;
  T* o = out + n * g.per_model + c * g.l;
  for (Index j = j0; j < g.row_len; j += step) {
    Index b, l;
    if constexpr (std::is_same_v<Index, uint32_t>) {
      g.by_l.divmod(j, &b, &l);
    } else {
      b = j / g.l;
      l = j - b * g.l;
    }
    const Index off = b * g.cl + l;
    o[off] = activate<Act>(fused_mul_add(xr[off], scale, shift), p.negative_slope);
  }
}

}  // namespace pdiff_fast

// flatten_cpu.cpp: one parallel pass over all segments of all models, with the dtype cast
// fused into the copy. Contiguous pairs of the same dtype are memcpy; contiguous pairs of
// different dtypes run a loop specialised per (src, dst) dtype; strided views (transposed
// parameters, non-contiguous targets) go element by element through their Layout.
#include "flatten_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

namespace pdiff_fast {
namespace {

constexpr int64_t kGrain = 1 << 15;  // elements per task: small tensors stay on one thread

template <int S, int D>
void cast_range(const void* src, void* dst, int64_t lo, int64_t hi) {
  if (S == kFloat64 || D == kFloat64) {
    for (int64_t k = lo; k < hi; ++k) store_from_double(dst, D, k, load_as_double(src, S, k));
  } else {
    for (int64_t k = lo; k < hi; ++k) store_from_float(dst, D, k, load_as_float(src, S, k));
  }
}

using CastFn = void (*)(const void*, void*, int64_t, int64_t);

#define PDIFF_CAST_ROW(S) {cast_range<S, 0>, cast_range<S, 1>, cast_range<S, 2>, cast_range<S, 3>}
const CastFn kCast[4][4] = {PDIFF_CAST_ROW(0), PDIFF_CAST_ROW(1), PDIFF_CAST_ROW(2), PDIFF_CAST_ROW(3)};
#undef PDIFF_CAST_ROW

// Copy elements [lo, hi) of one entry.
void copy_entry(const SegmentCopy& e, const Layout* layouts, int64_t lo, int64_t hi) {
  if (e.src_layout < 0 && e.dst_layout < 0) {
    if (e.src_dtype == e.dst_dtype) {
      const int64_t size = dtype_size(e.src_dtype);
      std::memcpy(static_cast<char*>(e.dst) + lo * size,
                  static_cast<const char*>(e.src) + lo * size, (hi - lo) * size);
    } else {
      kCast[e.src_dtype][e.dst_dtype](e.src, e.dst, lo, hi);
    }
    return;
  }
  const Layout* ls = e.src_layout < 0 ? nullptr : layouts + e.src_layout;
  const Layout* ld = e.dst_layout < 0 ? nullptr : layouts + e.dst_layout;
  for (int64_t k = lo; k < hi; ++k) {
    const int64_t si = ls ? strided_offset(*ls, k) : k;
    const int64_t di = ld ? strided_offset(*ld, k) : k;
    copy_element(e, si, di);
  }
}

}  // namespace

void segment_copy_cpu(const SegmentCopy* entries, int64_t n_entries, const Layout* layouts,
                      int64_t total) {
  if (n_entries == 0 || total == 0) return;
  at::parallel_for(0, total, kGrain, [&](int64_t begin, int64_t end) {
    for (int64_t k = find_entry(entries, n_entries, begin); k < n_entries; ++k) {
      const SegmentCopy& e = entries[k];
      if (e.start >= end) break;
      const int64_t lo = std::max(begin, e.start) - e.start;
      const int64_t hi = std::min(end, e.start + e.numel) - e.start;
      copy_entry(e, layouts, lo, hi);
    }
  });
}

}  // namespace pdiff_fast

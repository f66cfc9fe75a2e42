// segment_table.h: the table that drives flatten / unflatten of parameter subsets.
//
// Every (model i, tensor j) pair is one SegmentCopy: `numel` values read from `src` and
// written to `dst`, each side with its dtype and, when it is not contiguous, a Layout (element
// strides). Entries are laid end to end in one global element range ([start, start + numel)),
// so a single pass (one parallel_for on CPU, one kernel launch on CUDA) covers all segments of
// all models: a worker finds its first entry by binary search on `start`.
//
// Plain C++ with no PyTorch headers: the CUDA kernels include it.
#pragma once

#include <cstdint>

#include "float_cast.h"

namespace pdiff_fast {

constexpr int kMaxDims = 8;  // after collapsing dims; views with more are copied first

struct Layout {
  int32_t ndim;                // >= 1
  int32_t pad_;
  int64_t sizes[kMaxDims];     // outermost first
  int64_t strides[kMaxDims];   // in elements
};

struct SegmentCopy {
  const void* src;
  void* dst;
  int64_t numel;       // > 0 (empty segments are left out of the table)
  int64_t start;       // first index of this entry in the global element range
  int32_t src_dtype;   // DTypeCode
  int32_t dst_dtype;
  int32_t src_layout;  // index into the layout array, -1 = contiguous
  int32_t dst_layout;
};

// Offset in elements of the k-th element (row-major order) of a strided view.
PDIFF_HD int64_t strided_offset(const Layout& l, int64_t k) {
  int64_t offset = 0;
  for (int d = l.ndim - 1; d >= 0; --d) {
    const int64_t size = l.sizes[d];
    offset += (k % size) * l.strides[d];
    k /= size;
  }
  return offset;
}

// Copy one element: src[si] -> dst[di] with the entry's dtypes. Same dtype: the bits, as they
// are; otherwise through fp32, or fp64 when either side is fp64.
PDIFF_HD void copy_element(const SegmentCopy& e, int64_t si, int64_t di) {
  if (e.src_dtype == e.dst_dtype) {
    switch (dtype_size(e.src_dtype)) {
      case 2: static_cast<uint16_t*>(e.dst)[di] = static_cast<const uint16_t*>(e.src)[si]; break;
      case 4: static_cast<uint32_t*>(e.dst)[di] = static_cast<const uint32_t*>(e.src)[si]; break;
      default: static_cast<uint64_t*>(e.dst)[di] = static_cast<const uint64_t*>(e.src)[si]; break;
    }
  } else if (e.src_dtype == kFloat64 || e.dst_dtype == kFloat64) {
    store_from_double(e.dst, e.dst_dtype, di, load_as_double(e.src, e.src_dtype, si));
  } else {
    store_from_float(e.dst, e.dst_dtype, di, load_as_float(e.src, e.src_dtype, si));
  }
}

// Index of the entry holding global element g: the last entry with start <= g.
PDIFF_HD int64_t find_entry(const SegmentCopy* entries, int64_t n, int64_t g) {
  int64_t lo = 0, hi = n - 1;
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (entries[mid].start <= g) lo = mid; else hi = mid - 1;
  }
  return lo;
}

}  // namespace pdiff_fast

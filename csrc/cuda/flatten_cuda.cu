// flatten_cuda.cu: one launch for all segments of all models. Each thread walks the global
// element range with a grid stride, finds its entry by binary search on `start` and copies
// one element with the dtype cast fused (same conversions as the CPU kernel: float_cast.h).
#include "flatten_cuda.h"

#include <algorithm>

namespace pdiff_fast {
namespace {

constexpr int kThreads = 256;

__global__ void segment_copy_kernel(const SegmentCopy* __restrict__ entries, int64_t n_entries,
                                    const Layout* __restrict__ layouts, int64_t total) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < total;
       g += stride) {
    const SegmentCopy& e = entries[find_entry(entries, n_entries, g)];
    const int64_t k = g - e.start;
    const int64_t si = e.src_layout < 0 ? k : strided_offset(layouts[e.src_layout], k);
    const int64_t di = e.dst_layout < 0 ? k : strided_offset(layouts[e.dst_layout], k);
    copy_element(e, si, di);
  }
}

}  // namespace

cudaError_t segment_copy_cuda(const SegmentCopy* entries, int64_t n_entries,
                              const Layout* layouts, int64_t total, cudaStream_t stream) {
  if (n_entries == 0 || total == 0) return cudaSuccess;
  const int64_t blocks = std::min<int64_t>((total + kThreads - 1) / kThreads, 65535);
  segment_copy_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
      entries, n_entries, layouts, total);
  return cudaGetLastError();
}

}  // namespace pdiff_fast

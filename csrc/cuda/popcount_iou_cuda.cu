// popcount_iou_cuda.cu: one thread per (i, j) pair; 16 x 16 threads per block, so a block
// reads 16 rows of A and 16 of B and each row is reused 16 times from L1. Words are 64-bit
// when the row length and both pointers allow it, else 32-bit, else bytes.
#include "popcount_iou_cuda.h"

#include <algorithm>

namespace pdiff_fast {
namespace {

constexpr int kTile = 16;

__device__ __forceinline__ int popcount(uint64_t w) { return __popcll(w); }
__device__ __forceinline__ int popcount(uint32_t w) { return __popc(w); }
__device__ __forceinline__ int popcount(uint8_t w) { return __popc(static_cast<uint32_t>(w)); }

template <typename Word>
__global__ void iou_kernel(const Word* __restrict__ a, int64_t na, const Word* __restrict__ b,
                           int64_t nb, int64_t words, float* __restrict__ out) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kTile + threadIdx.x;
  if (j >= nb) return;
  const Word* rb = b + j * words;
  // grid.y is capped at 65535 blocks: stride over the rows of A beyond that
  for (int64_t i = static_cast<int64_t>(blockIdx.y) * kTile + threadIdx.y; i < na;
       i += static_cast<int64_t>(gridDim.y) * kTile) {
    const Word* ra = a + i * words;
    int64_t inter = 0, uni = 0;
    for (int64_t k = 0; k < words; ++k) {
      const Word x = ra[k], y = rb[k];
      inter += popcount(static_cast<Word>(x & y));
      uni += popcount(static_cast<Word>(x | y));
    }
    out[i * nb + j] =
        uni == 0 ? 1.0f : __fdiv_rn(static_cast<float>(inter), static_cast<float>(uni));
  }
}

template <typename Word>
cudaError_t launch(const uint8_t* a, int64_t na, const uint8_t* b, int64_t nb, int64_t row_bytes,
                   float* out, cudaStream_t stream) {
  const dim3 block(kTile, kTile);
  const int64_t blocks_y = std::min<int64_t>((na + kTile - 1) / kTile, 65535);
  const dim3 grid(static_cast<unsigned>((nb + kTile - 1) / kTile),
                  static_cast<unsigned>(blocks_y));
  iou_kernel<Word><<<grid, block, 0, stream>>>(reinterpret_cast<const Word*>(a), na,
                                               reinterpret_cast<const Word*>(b), nb,
                                               row_bytes / static_cast<int64_t>(sizeof(Word)), out);
  return cudaGetLastError();
}

bool aligned(const void* p, uintptr_t n) { return reinterpret_cast<uintptr_t>(p) % n == 0; }

}  // namespace

cudaError_t iou_matrix_cuda(const uint8_t* a, int64_t na, const uint8_t* b, int64_t nb,
                            int64_t row_bytes, float* out, cudaStream_t stream) {
  if (na == 0 || nb == 0) return cudaSuccess;
  if (row_bytes % 8 == 0 && aligned(a, 8) && aligned(b, 8))
    return launch<uint64_t>(a, na, b, nb, row_bytes, out, stream);
  if (row_bytes % 4 == 0 && aligned(a, 4) && aligned(b, 4))
    return launch<uint32_t>(a, na, b, nb, row_bytes, out, stream);
  return launch<uint8_t>(a, na, b, nb, row_bytes, out, stream);
}

}  // namespace pdiff_fast

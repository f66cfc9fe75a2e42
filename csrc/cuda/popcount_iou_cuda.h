// popcount_iou_cuda.h: CUDA kernel of iou_matrix. Raw pointers, no PyTorch headers.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace pdiff_fast {

// a: (na, row_bytes), b: (nb, row_bytes) packed bitsets in device memory, rows contiguous;
// out: (na, nb) float32 in device memory. Returns the launch status.
cudaError_t iou_matrix_cuda(const uint8_t* a, int64_t na, const uint8_t* b, int64_t nb,
                            int64_t row_bytes, float* out, cudaStream_t stream);

}  // namespace pdiff_fast

// norm_affine_act_cuda.h: CUDA kernel of norm_affine_act. Raw pointers, no PyTorch headers.
#pragma once

#include <cuda_runtime_api.h>

#include "../norm_affine_act_math.h"

namespace pdiff_fast {

// Device pointers, contiguous: x (B, C, L) if shape.x_shared else (N, B, C, L); the pointers
// in `params` ((N, C) weight / bias, (C,) mean / var or null); out (N, B, C, L).
// Instantiated for float and double. Returns the launch status.
template <typename T>
cudaError_t norm_affine_act_cuda(const T* x, const NormAffineActParams<T>& params, T* out,
                                 const NormAffineActShape& shape, int32_t act, cudaStream_t stream);

}  // namespace pdiff_fast

// norm_affine_act_math.h: the element math of norm_affine_act, shared by the CPU and CUDA
// kernels. Plain C++ with no PyTorch headers.
//
// BatchNorm (eval) terms as PyTorch's CPU kernel computes them, fused multiply-adds included
// (its vectorised loops are compiled with FMA contraction on AVX2 / AVX-512):
//   scale = weight * (1 / sqrt(running_var + eps))
//   shift = fma(-running_mean, scale, bias)
//   y     = act(fma(x, scale, shift))
// so the CPU result is bit-identical to F.batch_norm(...) followed by F.relu.
#pragma once

#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace pdiff_fast {

// The activations population evaluation fuses (pdiff_fast/population_plan.py): exactly those of
// the torch reference pdiff_fast.ops.norm_affine_act_torch.
enum ActCode : int32_t { kActIdentity = 0, kActRelu = 1, kActLeakyRelu = 2 };

struct NormAffineActShape {
  int64_t n, b, c, l;  // models, samples, channels, positions
  bool x_shared;       // x is (B, C, L) for all models, else (N, B, C, L)
};

// Per-model parameters. mean / var null: plain affine (scale = weight, shift = bias).
template <typename T>
struct NormAffineActParams {
  const T* weight;  // (N, C)
  const T* bias;    // (N, C)
  const T* mean;    // (C,) running mean, or null
  const T* var;     // (C,) running var, or null
  T eps;
  T negative_slope;
};

template <typename T>
PDIFF_HD T fused_mul_add(T a, T b, T c) {
#if defined(__CUDA_ARCH__)
  return fma(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// 1 / sqrt(v), each step correctly rounded (also under nvcc --use_fast_math)
template <typename T>
PDIFF_HD T inv_sqrt(T v) {
#if defined(__CUDA_ARCH__)
  if constexpr (sizeof(T) == 4) return __fdiv_rn(1.0f, __fsqrt_rn(v));
  else return __ddiv_rn(1.0, __dsqrt_rn(v));
#else
  return T(1) / std::sqrt(v);
#endif
}

template <typename T>
PDIFF_HD void affine_terms(const NormAffineActParams<T>& p, int64_t n, int64_t c, int64_t n_channels,
                           T* scale, T* shift) {
  const T w = p.weight[n * n_channels + c], b = p.bias[n * n_channels + c];
  if (p.mean == nullptr) {
    *scale = w;
    *shift = b;
    return;
  }
  *scale = w * inv_sqrt(p.var[c] + p.eps);
  *shift = fused_mul_add(-p.mean[c], *scale, b);
}

// ReLU as torch: NaN stays NaN, -0.0 becomes +0.0.
template <typename T>
PDIFF_HD T relu(T v) { return v > T(0) ? v : (v != v ? v : T(0)); }

template <int Act, typename T>
PDIFF_HD T activate(T v, T slope) {
  if constexpr (Act == kActIdentity) return v;
  if constexpr (Act == kActRelu) return relu(v);
  if constexpr (Act == kActLeakyRelu) return v > T(0) ? v : v * slope;
  return v;
}

}  // namespace pdiff_fast

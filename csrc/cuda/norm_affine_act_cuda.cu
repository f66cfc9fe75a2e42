// norm_affine_act_cuda.cu: a 2-D grid (norm_affine_act_rows.h): blockIdx.y over the N * C
// (model, channel) rows, whose scale / shift each thread computes once per row, and the x axis
// over a row's B * L elements, split into (sample, position) by a 32-bit FastDivmod (64-bit
// division only when the output has 2^31 elements or more). The activation is a template
// parameter. sqrt, division and fma are the correctly rounded forms and this file is compiled
// without --use_fast_math, so the result matches the CPU kernel bit for bit for the
// piecewise-linear activations.
#include "norm_affine_act_cuda.h"

#include <cstdint>

#include "../norm_affine_act_rows.h"

namespace pdiff_fast {
namespace {

template <int Act, typename T, typename Index>
__global__ void norm_affine_act_kernel(const T* __restrict__ x, NormAffineActParams<T> p,
                                       T* __restrict__ out, NormAffineActRows<Index> g) {
  const Index j0 = static_cast<Index>(blockIdx.x) * blockDim.x + threadIdx.x;
  const Index step = static_cast<Index>(gridDim.x) * blockDim.x;
  for (Index row = blockIdx.y; row < g.rows; row += gridDim.y) {
    norm_affine_act_row<Act>(x, p, out, g, row, j0, step);
  }
}

template <int Act, typename T, typename Index>
cudaError_t launch_as(const T* x, const NormAffineActParams<T>& p, T* out,
                      const NormAffineActShape& s, cudaStream_t stream) {
  const NormAffineActRows<Index> g = make_rows<Index>(s);
  const NormAffineActLaunch d = launch_dims(g);
  norm_affine_act_kernel<Act, T, Index><<<dim3(d.grid_x, d.grid_y), d.threads, 0, stream>>>(x, p, out, g);
  return cudaGetLastError();
}

template <int Act, typename T>
cudaError_t launch(const T* x, const NormAffineActParams<T>& p, T* out,
                   const NormAffineActShape& s, cudaStream_t stream) {
  if (s.n * s.b * s.c * s.l == 0) return cudaSuccess;
  return rows_fit_32bit(s) ? launch_as<Act, T, uint32_t>(x, p, out, s, stream)
                           : launch_as<Act, T, int64_t>(x, p, out, s, stream);
}

}  // namespace

template <typename T>
cudaError_t norm_affine_act_cuda(const T* x, const NormAffineActParams<T>& p, T* out,
                                 const NormAffineActShape& s, int32_t act, cudaStream_t stream) {
  switch (act) {
    case kActIdentity: return launch<kActIdentity>(x, p, out, s, stream);
    case kActRelu: return launch<kActRelu>(x, p, out, s, stream);
    default: return launch<kActLeakyRelu>(x, p, out, s, stream);
  }
}

template cudaError_t norm_affine_act_cuda<float>(const float*, const NormAffineActParams<float>&,
                                                 float*, const NormAffineActShape&, int32_t,
                                                 cudaStream_t);
template cudaError_t norm_affine_act_cuda<double>(const double*, const NormAffineActParams<double>&,
                                                  double*, const NormAffineActShape&, int32_t,
                                                  cudaStream_t);

}  // namespace pdiff_fast

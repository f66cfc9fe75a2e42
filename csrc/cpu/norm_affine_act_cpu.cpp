// norm_affine_act_cpu.cpp: the (N, C) scale / shift terms first, then a parallel pass over
// (model, sample, channel) rows. The loop over a row's L positions is specialised per
// activation and, on x86-64, compiled a second time for AVX2 + FMA (picked at run time) so
// the fused multiply-add is one instruction instead of a libm call.
#include "norm_affine_act_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

namespace pdiff_fast {
namespace {

template <typename T>
struct Rows {
  const T* x;
  const T* scale;  // (N, C)
  const T* shift;  // (N, C)
  T* out;
  NormAffineActShape s;
  T slope;
};

template <int Act, typename T>
__attribute__((always_inline)) inline void rows_body(const Rows<T>& a, int64_t r0, int64_t r1) {
  const NormAffineActShape& s = a.s;
  for (int64_t r = r0; r < r1; ++r) {  // r = (n * B + b) * C + c
    const int64_t c = r % s.c;
    const int64_t n = r / (s.b * s.c);
    const T* xr = a.x + (s.x_shared ? r - n * s.b * s.c : r) * s.l;
    const T sc = a.scale[n * s.c + c], sh = a.shift[n * s.c + c];
    T* o = a.out + r * s.l;
    for (int64_t k = 0; k < s.l; ++k) o[k] = activate<Act>(fused_mul_add(xr[k], sc, sh), a.slope);
  }
}

template <int Act, typename T>
void rows_generic(const Rows<T>& a, int64_t r0, int64_t r1) { rows_body<Act>(a, r0, r1); }

#if defined(__x86_64__) && defined(__GNUC__)
#define PDIFF_HAVE_FMA_CLONE 1
template <int Act, typename T>
__attribute__((target("avx2,fma"))) void rows_fma(const Rows<T>& a, int64_t r0, int64_t r1) {
  rows_body<Act>(a, r0, r1);
}
#endif

template <int Act, typename T>
void run(const Rows<T>& a, int64_t n_rows, int64_t grain) {
  auto fn = &rows_generic<Act, T>;
#ifdef PDIFF_HAVE_FMA_CLONE
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) fn = &rows_fma<Act, T>;
#endif
  at::parallel_for(0, n_rows, grain, [&](int64_t r0, int64_t r1) { fn(a, r0, r1); });
}

}  // namespace

template <typename T>
void norm_affine_act_cpu(const T* x, const NormAffineActParams<T>& params, T* out,
                         const NormAffineActShape& shape, int32_t act) {
  std::vector<T> scale(shape.n * shape.c), shift(shape.n * shape.c);
  for (int64_t n = 0; n < shape.n; ++n)
    for (int64_t c = 0; c < shape.c; ++c)
      affine_terms(params, n, c, shape.c, &scale[n * shape.c + c], &shift[n * shape.c + c]);
  const Rows<T> a{x, scale.data(), shift.data(), out, shape, params.negative_slope};
  const int64_t n_rows = shape.n * shape.b * shape.c;
  const int64_t grain = std::max<int64_t>(1, (1 << 15) / std::max<int64_t>(1, shape.l));
  switch (act) {
    case kActIdentity: return run<kActIdentity>(a, n_rows, grain);
    case kActRelu: return run<kActRelu>(a, n_rows, grain);
    default: return run<kActLeakyRelu>(a, n_rows, grain);
  }
}

template void norm_affine_act_cpu<float>(const float*, const NormAffineActParams<float>&, float*,
                                         const NormAffineActShape&, int32_t);
template void norm_affine_act_cpu<double>(const double*, const NormAffineActParams<double>&,
                                          double*, const NormAffineActShape&, int32_t);

}  // namespace pdiff_fast

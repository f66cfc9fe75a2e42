// norm_affine_act_cpu.h: CPU kernel of norm_affine_act (raw pointers, contiguous).
#pragma once

#include "../norm_affine_act_math.h"

namespace pdiff_fast {

// x: (B, C, L) if shape.x_shared else (N, B, C, L); out: (N, B, C, L).
template <typename T>
void norm_affine_act_cpu(const T* x, const NormAffineActParams<T>& params, T* out,
                         const NormAffineActShape& shape, int32_t act);

}  // namespace pdiff_fast

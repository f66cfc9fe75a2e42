// popcount_iou_cpu.h: CPU kernel of iou_matrix (raw pointers, rows contiguous).
#pragma once

#include <cstdint>

namespace pdiff_fast {

// a: (na, row_bytes), b: (nb, row_bytes) packed bitsets; out: (na, nb) float32.
void iou_matrix_cpu(const uint8_t* a, int64_t na, const uint8_t* b, int64_t nb,
                    int64_t row_bytes, float* out);

}  // namespace pdiff_fast

// popcount_iou.h: IoU matrix of wrong-prediction sets stored as packed bitsets.
// Dispatch to csrc/cpu/popcount_iou_cpu.cpp and csrc/cuda/popcount_iou_cuda.cu.
#pragma once

#include <ATen/ATen.h>

namespace pdiff_fast {

// a_bits (Na, W), b_bits (Nb, W): integer tensors of one dtype (uint8 or int64 words; any
// integer dtype works, only the bits count), one packed bitset per row. Returns a float32
// (Na, Nb) tensor: |A & B| / |A | B|, 1.0 where both sets are empty.
at::Tensor iou_matrix(const at::Tensor& a_bits, const at::Tensor& b_bits);

}  // namespace pdiff_fast

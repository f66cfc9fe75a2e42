// flatten.h: gather a parameter subset of N models into one (N, D) tensor and scatter it back.
// Dispatch to csrc/cpu/flatten_cpu.cpp and csrc/cuda/flatten_cuda.cu (built WITH_CUDA).
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pdiff_fast {

// sources[i][j]: model i's j-th subset tensor (any of fp16/bf16/fp32/fp64, any strides);
// numels[j]: its number of values. Returns an (N, D) tensor of `dtype`, D = sum(numels),
// row i = model i's tensors flattened one after the other (row-major, cast to `dtype`).
at::Tensor flatten_params(const std::vector<std::vector<at::Tensor>>& sources,
                          const std::vector<int64_t>& numels, at::ScalarType dtype);

// flat: (N, D). Returns one contiguous (N, *shapes[j]) tensor of dtypes[j] per segment.
std::vector<at::Tensor> unflatten_params(const at::Tensor& flat,
                                         const std::vector<std::vector<int64_t>>& shapes,
                                         const std::vector<at::ScalarType>& dtypes);

// Copy row i of flat (N, D) into model i's tensors targets[i] in place (any strides; each
// target keeps its dtype). Bumps the targets' version counters as an in-place op does.
void unflatten_into(const at::Tensor& flat, const std::vector<std::vector<at::Tensor>>& targets);

// Whether this build has the CUDA kernels.
bool has_cuda();

}  // namespace pdiff_fast

// flatten.h: gather a parameter subset of N models into one (N, D) tensor and scatter it back.
// Dispatch to csrc/cpu/flatten_cpu.cpp and csrc/cuda/flatten_cuda.cu (built WITH_CUDA).
//
// flatten.cpp registers the three as torch ops (torch.ops.pdiff_fast.*; CPU, CUDA when built
// WITH_CUDA, and a non-differentiable Autograd kernel). Schemas take no nested lists: the
// tensors of N models come as one flat list, model i's tensor j at index i * n_segments + j,
// and the segments' shapes as their sizes end to end plus each segment's number of dims; the
// segments' dtypes as c10::ScalarType codes (int(at::kFloat) = 6, ...): torch 2.13 accepts
// `ScalarType[]` in a schema, but neither torch.export's serializer nor opcheck's schema check
// take it.
//
//   flatten_params(Tensor[] sources, int n_models, int[] numels, ScalarType dtype) -> Tensor
//   unflatten_params(Tensor flat, int[] sizes, int[] ndims, int[] dtype_codes) -> Tensor[]
//   unflatten_into(Tensor flat, Tensor(a!)[] targets, int n_models) -> ()
#pragma once

#include <ATen/ATen.h>

#include <vector>

namespace pdiff_fast {

// sources: n_models * n_segments tensors (n_segments = numels.size()), model i's tensor j at
// index i * n_segments + j (any of fp16/bf16/fp32/fp64, any strides); numels[j]: tensor j's
// number of values. Returns an (N, D) tensor of `dtype`, D = sum(numels), row i = model i's
// tensors flattened one after the other (row-major, cast to `dtype`).
at::Tensor flatten_params(at::TensorList sources, int64_t n_models, at::IntArrayRef numels,
                          at::ScalarType dtype);

// flat: (N, D). Segment j has ndims[j] dims, its sizes at sizes[ndims[0] + ... + ndims[j-1]]
// onwards, and the dtype whose c10::ScalarType code is dtype_codes[j]. Returns one contiguous
// (N, *shape_j) tensor of that dtype per segment.
std::vector<at::Tensor> unflatten_params(const at::Tensor& flat, at::IntArrayRef sizes,
                                         at::IntArrayRef ndims, at::IntArrayRef dtype_codes);

// Copy row i of flat (N, D) into model i's tensors in place: targets holds n_models *
// n_segments tensors, model i's tensor j at index i * n_segments + j (any strides; each target
// keeps its dtype). Bumps the targets' version counters as an in-place op does.
void unflatten_into(const at::Tensor& flat, at::TensorList targets, int64_t n_models);

// Whether this build has the CUDA kernels.
bool has_cuda();

}  // namespace pdiff_fast

// popcount_iou.cpp: checks and dispatch of iou_matrix; registered as the torch op
// pdiff_fast::iou_matrix (CPU, and CUDA when built WITH_CUDA); Python calls
// torch.ops.pdiff_fast.iou_matrix (pdiff_fast/ops/iou_matrix.py).
#include "popcount_iou.h"

#include <torch/library.h>

#include "cpu/popcount_iou_cpu.h"

#ifdef WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/popcount_iou_cuda.h"
#endif

namespace pdiff_fast {

at::Tensor iou_matrix(const at::Tensor& a_bits, const at::Tensor& b_bits) {
  const char* op = "iou_matrix";
  TORCH_CHECK(a_bits.defined() && b_bits.defined(), op, ": a_bits and b_bits must be tensors");
  TORCH_CHECK(a_bits.dim() == 2 && b_bits.dim() == 2, op,
              ": a_bits and b_bits must be 2-D (N, W) packed bitsets, got shapes ",
              a_bits.sizes(), " and ", b_bits.sizes());
  TORCH_CHECK(!at::isFloatingType(a_bits.scalar_type()) && !at::isComplexType(a_bits.scalar_type()) &&
                  a_bits.scalar_type() != at::kBool,
              op, ": bitsets must be an integer dtype (uint8 or int64 words), got ",
              a_bits.scalar_type());
  TORCH_CHECK(a_bits.scalar_type() == b_bits.scalar_type(), op, ": mismatched dtypes: a_bits is ",
              a_bits.scalar_type(), ", b_bits is ", b_bits.scalar_type());
  TORCH_CHECK(a_bits.size(1) == b_bits.size(1), op, ": mismatched widths: a_bits has W = ",
              a_bits.size(1), ", b_bits has W = ", b_bits.size(1));
  TORCH_CHECK(a_bits.device() == b_bits.device(), op, ": mismatched devices: a_bits is on ",
              a_bits.device(), ", b_bits is on ", b_bits.device());
  const at::Tensor a = a_bits.contiguous(), b = b_bits.contiguous();
  const int64_t na = a.size(0), nb = b.size(0);
  const int64_t row_bytes = a.size(1) * a.element_size();
  at::Tensor out = at::empty({na, nb}, a.options().dtype(at::kFloat));
  if (na == 0 || nb == 0) return out;
  const auto* pa = static_cast<const uint8_t*>(a.const_data_ptr());
  const auto* pb = static_cast<const uint8_t*>(b.const_data_ptr());
  if (a.device().is_cpu()) {
    iou_matrix_cpu(pa, na, pb, nb, row_bytes, out.data_ptr<float>());
    return out;
  }
#ifdef WITH_CUDA
  TORCH_CHECK(a.device().is_cuda(), op, ": tensors on ", a.device(), " are not supported");
  c10::cuda::CUDAGuard guard(a.device());
  const cudaError_t err = iou_matrix_cuda(pa, na, pb, nb, row_bytes, out.data_ptr<float>(),
                                          at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
#else
  TORCH_CHECK(false, op, ": tensors on ", a.device(), " need a CUDA build of pdiff_fast._C");
#endif
}

TORCH_LIBRARY_FRAGMENT(pdiff_fast, m) {
  m.def("iou_matrix(Tensor a_bits, Tensor b_bits) -> Tensor");
}

TORCH_LIBRARY_IMPL(pdiff_fast, CPU, m) { m.impl("iou_matrix", &iou_matrix); }

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(pdiff_fast, CUDA, m) { m.impl("iou_matrix", &iou_matrix); }
#endif

}  // namespace pdiff_fast

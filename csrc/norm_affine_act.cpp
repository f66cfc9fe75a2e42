// norm_affine_act.cpp: checks and dispatch of norm_affine_act; registered as the torch op
// pdiff_fast::norm_affine_act (CPU, and CUDA when built WITH_CUDA); Python calls
// torch.ops.pdiff_fast.norm_affine_act (pdiff_fast/ops/norm_affine_act.py).
#include "norm_affine_act.h"

#include <torch/library.h>

#include "cpu/norm_affine_act_cpu.h"

#ifdef WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/norm_affine_act_cuda.h"
#endif

namespace pdiff_fast {
namespace {

int32_t act_code(const std::string& act) {
  if (act == "identity") return kActIdentity;
  if (act == "relu") return kActRelu;
  if (act == "leaky_relu") return kActLeakyRelu;
  TORCH_CHECK(false, "norm_affine_act: unknown activation '", act,
              "'; choose identity, relu or leaky_relu");
}

void check_like(const at::Tensor& t, const at::Tensor& x, const char* name) {
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "norm_affine_act: mismatched dtypes: x is ",
              x.scalar_type(), ", ", name, " is ", t.scalar_type());
  TORCH_CHECK(t.device() == x.device(), "norm_affine_act: mismatched devices: x is on ", x.device(),
              ", ", name, " is on ", t.device());
}

template <typename T>
NormAffineActParams<T> params_of(const at::Tensor& w, const at::Tensor& b, const at::Tensor& mean,
                                 const at::Tensor& var, double eps, double slope) {
  return {w.const_data_ptr<T>(), b.const_data_ptr<T>(),
          mean.defined() ? mean.const_data_ptr<T>() : nullptr,
          var.defined() ? var.const_data_ptr<T>() : nullptr, static_cast<T>(eps),
          static_cast<T>(slope)};
}

}  // namespace

at::Tensor norm_affine_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const std::optional<at::Tensor>& running_mean,
                           const std::optional<at::Tensor>& running_var, double eps,
                           const std::string& act, double negative_slope) {
  const char* op = "norm_affine_act";
  TORCH_CHECK(x.defined() && weight.defined() && bias.defined(), op,
              ": x, weight and bias must be tensors");
  TORCH_CHECK(x.dim() == 3 || x.dim() == 4, op,
              ": x must be (B, C, L) shared by all models or (N, B, C, L), got shape ", x.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.sizes() == bias.sizes(), op,
              ": weight and bias must both be (N, C), got ", weight.sizes(), " and ", bias.sizes());
  const int64_t n = weight.size(0);
  const bool shared = x.dim() == 3;
  const int64_t b = x.size(shared ? 0 : 1), c = x.size(shared ? 1 : 2), l = x.size(shared ? 2 : 3);
  TORCH_CHECK(n > 0, op, ": no models (N = 0)");
  TORCH_CHECK(weight.size(1) == c, op, ": x has C = ", c, " channels, weight has ", weight.size(1));
  TORCH_CHECK(shared || x.size(0) == n, op, ": x has ", x.size(0), " models, weight has ", n);
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
              ": x must be float32 or float64, got ", x.scalar_type());
  check_like(weight, x, "weight");
  check_like(bias, x, "bias");
  const bool bn = running_mean.has_value() && running_mean->defined();
  TORCH_CHECK(bn == (running_var.has_value() && running_var->defined()), op,
              ": give both running_mean and running_var, or neither");
  at::Tensor mean, var;
  if (bn) {
    TORCH_CHECK(running_mean->dim() == 1 && running_mean->size(0) == c && running_var->dim() == 1 &&
                    running_var->size(0) == c,
                op, ": running_mean and running_var must be (C,) = (", c, ",), got ",
                running_mean->sizes(), " and ", running_var->sizes());
    check_like(*running_mean, x, "running_mean");
    check_like(*running_var, x, "running_var");
    mean = running_mean->contiguous();
    var = running_var->contiguous();
  }
  const int32_t code = act_code(act);
  const at::Tensor xc = x.contiguous(), wc = weight.contiguous(), bc = bias.contiguous();
  at::Tensor out = at::empty({n, b, c, l}, x.options());
  if (out.numel() == 0) return out;
  const NormAffineActShape shape{n, b, c, l, shared};
  const bool is_float = x.scalar_type() == at::kFloat;
  if (x.device().is_cpu()) {
    if (is_float) {
      norm_affine_act_cpu(xc.const_data_ptr<float>(),
                          params_of<float>(wc, bc, mean, var, eps, negative_slope),
                          out.data_ptr<float>(), shape, code);
    } else {
      norm_affine_act_cpu(xc.const_data_ptr<double>(),
                          params_of<double>(wc, bc, mean, var, eps, negative_slope),
                          out.data_ptr<double>(), shape, code);
    }
    return out;
  }
#ifdef WITH_CUDA
  TORCH_CHECK(x.device().is_cuda(), op, ": tensors on ", x.device(), " are not supported");
  c10::cuda::CUDAGuard guard(x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const cudaError_t err =
      is_float ? norm_affine_act_cuda(xc.const_data_ptr<float>(),
                                      params_of<float>(wc, bc, mean, var, eps, negative_slope),
                                      out.data_ptr<float>(), shape, code, stream)
               : norm_affine_act_cuda(xc.const_data_ptr<double>(),
                                      params_of<double>(wc, bc, mean, var, eps, negative_slope),
                                      out.data_ptr<double>(), shape, code, stream);
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
  return out;
#else
  TORCH_CHECK(false, op, ": tensors on ", x.device(), " need a CUDA build of pdiff_fast._C");
#endif
}

TORCH_LIBRARY_FRAGMENT(pdiff_fast, m) {
  m.def("norm_affine_act(Tensor x, Tensor weight, Tensor bias, Tensor? running_mean=None, "
        "Tensor? running_var=None, float eps=1e-05, str act='relu', float negative_slope=0.01) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(pdiff_fast, CPU, m) { m.impl("norm_affine_act", &norm_affine_act); }

#ifdef WITH_CUDA
TORCH_LIBRARY_IMPL(pdiff_fast, CUDA, m) { m.impl("norm_affine_act", &norm_affine_act); }
#endif

}  // namespace pdiff_fast

// norm_affine_act.h: the norm layer's affine of N models on one normalised input, fused with
// the activation that follows it (population evaluation: N models that differ only in their
// norm layers' weight and bias).
//
//   y[n, b, c, l] = act(fma(x[(n,) b, c, l], scale[n, c], shift[n, c]))
//
// BatchNorm in eval mode (running_mean / running_var given): x = the layer's input,
//   scale = weight[n] / sqrt(running_var + eps), shift = fma(-running_mean, scale, bias[n]),
//   which is how PyTorch's CPU kernel computes it: bit-identical to F.batch_norm + F.relu.
// Plain affine (no running stats): scale = weight[n], shift = bias[n]; for LayerNorm pass the
//   normalised input (x - mean) * rstd as x with shape (B, features, 1).
// Dispatch to csrc/cpu/norm_affine_act_cpu.cpp and csrc/cuda/norm_affine_act_cuda.cu.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string>

namespace pdiff_fast {

// x: (B, C, L) shared by all models or (N, B, C, L), float32 or float64; weight, bias: (N, C);
// running_mean, running_var: (C,) or both absent; all of x's dtype and device.
// act: "identity", "relu" or "leaky_relu" (negative_slope). Returns a new (N, B, C, L) tensor.
at::Tensor norm_affine_act(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                           const std::optional<at::Tensor>& running_mean,
                           const std::optional<at::Tensor>& running_var, double eps,
                           const std::string& act, double negative_slope);

}  // namespace pdiff_fast

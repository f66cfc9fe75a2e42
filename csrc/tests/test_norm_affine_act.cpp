// test_norm_affine_act.cpp: the fused per-model norm affine + activation on CPU against
// at::batch_norm (eval, running stats) followed by the activation, one model at a time.
#include <ATen/ATen.h>
#include <ATen/Version.h>

#include "check.h"
#include "norm_affine_act.h"

namespace {
// PyTorch's vectorised BatchNorm uses fused multiply-adds only in its AVX2 / AVX-512 builds
bool torch_bn_uses_fma() {
  return at::get_cpu_capability() != "DEFAULT";
}
}  // namespace

TEST(bit_identical_to_batch_norm_relu) {
  at::manual_seed(0);
  const int64_t n = 5, c = 16;
  const at::Tensor w = at::randn({n, c}), b = at::randn({n, c});
  const at::Tensor mean = at::randn({c}), var = at::rand({c}) + 0.5;
  for (const auto& x : {at::randn({7, c, 36}), at::randn({7, c, 1}), at::randn({3, c, 5})}) {
    const at::Tensor y = pdiff_fast::norm_affine_act(x, w, b, mean, var, 1e-5, "relu", 0.0);
    for (int64_t i = 0; i < n; ++i) {
      const at::Tensor ref = at::relu(at::batch_norm(x, w[i], b[i], mean, var, false, 0.1, 1e-5, false));
      EXPECT(torch_bn_uses_fma() ? at::equal(y[i], ref) : at::allclose(y[i], ref));
    }
  }
}

TEST(per_model_input_and_activations) {
  at::manual_seed(1);
  const at::Tensor x = at::randn({3, 4, 6, 5}, at::kDouble);
  const at::Tensor w = at::randn({3, 6}, at::kDouble), b = at::randn({3, 6}, at::kDouble);
  const at::Tensor lin = x * w.unsqueeze(1).unsqueeze(-1) + b.unsqueeze(1).unsqueeze(-1);
  auto run = [&](const char* act, double slope) {
    return pdiff_fast::norm_affine_act(x, w, b, std::nullopt, std::nullopt, 0.0, act, slope);
  };
  EXPECT(at::allclose(run("identity", 0), lin));
  EXPECT(at::allclose(run("relu", 0), at::relu(lin)));
  EXPECT(at::allclose(run("leaky_relu", 0.2), at::leaky_relu(lin, 0.2)));
  EXPECT(at::allclose(run("tanh", 0), at::tanh(lin)));
  EXPECT(at::allclose(run("sigmoid", 0), at::sigmoid(lin)));
  EXPECT(at::allclose(run("silu", 0), at::silu(lin)));
  EXPECT(at::allclose(run("gelu", 0), at::gelu(lin)));
}

TEST(non_finite_values_propagate) {
  at::Tensor x = at::randn({2, 3, 4});
  at::Tensor w = at::ones({2, 3}), b = at::zeros({2, 3});
  w[1][2] = std::numeric_limits<float>::quiet_NaN();
  const at::Tensor y = pdiff_fast::norm_affine_act(x, w, b, std::nullopt, std::nullopt, 0.0, "relu", 0);
  EXPECT(at::isnan(y[1].select(1, 2)).all().item<bool>());
  EXPECT(!at::isnan(y[0]).any().item<bool>());
}

TEST(bad_inputs_raise_named_errors) {
  const at::Tensor x = at::zeros({2, 3, 4}), s = at::zeros({5, 3});
  const std::nullopt_t none = std::nullopt;
  using pdiff_fast::norm_affine_act;
  EXPECT_THROWS(norm_affine_act(x, at::zeros({5, 4}), at::zeros({5, 4}), none, none, 0, "relu", 0), "channels");
  EXPECT_THROWS(norm_affine_act(x, s, s, none, none, 0, "swish", 0), "unknown activation");
  EXPECT_THROWS(norm_affine_act(x, s.to(at::kDouble), s, none, none, 0, "relu", 0), "mismatched dtypes");
  EXPECT_THROWS(norm_affine_act(at::zeros({4, 2, 3, 4}), s, s, none, none, 0, "relu", 0), "models");
  EXPECT_THROWS(norm_affine_act(x, at::zeros({0, 3}), at::zeros({0, 3}), none, none, 0, "relu", 0), "N = 0");
  EXPECT_THROWS(norm_affine_act(x, s, s, at::zeros({3}), none, 0, "relu", 0), "neither");
  EXPECT_THROWS(norm_affine_act(x, s, s, at::zeros({4}), at::zeros({4}), 0, "relu", 0), "(C,)");
}

int main() { return check::run_all(); }

// test_norm_affine_act.cpp: the fused per-model norm affine + activation on CPU against
// at::batch_norm (eval, running stats) followed by the activation, one model at a time; and
// the CUDA kernel's work split (norm_affine_act_rows.h) replayed on the host, block by block
// and thread by thread, against the CPU kernel, so its index math is checked without a GPU.
#include <ATen/ATen.h>
#include <ATen/Version.h>

#include <limits>

#include "check.h"
#include "norm_affine_act.h"
#include "norm_affine_act_rows.h"

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
  EXPECT_THROWS(run("tanh", 0), "unknown activation");  // not fused: population evaluation vmaps it
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

namespace {
// The CUDA launch of norm_affine_act for `Index`, replayed on the host: every (blockIdx.y,
// blockIdx.x, threadIdx.x) of launch_dims() runs the kernel's loop. out starts as NaN, so an
// element no thread writes shows up.
template <int Act, typename Index>
at::Tensor replay_cuda_launch(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
                              const at::Tensor& mean, const at::Tensor& var, double eps, double slope) {
  const bool shared = x.dim() == 3;
  const int64_t n = w.size(0), c = w.size(1);
  const pdiff_fast::NormAffineActShape s{n, x.size(shared ? 0 : 1), c, x.size(shared ? 2 : 3), shared};
  at::Tensor out = at::full({s.n, s.b, s.c, s.l}, std::numeric_limits<double>::quiet_NaN(), x.options());
  const pdiff_fast::NormAffineActParams<float> p{
      w.const_data_ptr<float>(), b.const_data_ptr<float>(),
      mean.defined() ? mean.const_data_ptr<float>() : nullptr,
      var.defined() ? var.const_data_ptr<float>() : nullptr, static_cast<float>(eps), static_cast<float>(slope)};
  const auto g = pdiff_fast::make_rows<Index>(s);
  const auto d = pdiff_fast::launch_dims(g);
  const Index step = static_cast<Index>(d.grid_x) * d.threads;
  for (uint32_t by = 0; by < d.grid_y; ++by)
    for (Index row = by; row < g.rows; row += d.grid_y)
      for (uint32_t bx = 0; bx < d.grid_x; ++bx)
        for (uint32_t tx = 0; tx < d.threads; ++tx)
          pdiff_fast::norm_affine_act_row<Act>(x.const_data_ptr<float>(), p, out.data_ptr<float>(), g, row,
                                               static_cast<Index>(bx) * d.threads + tx, step);
  return out;
}

template <typename Index>
void check_replay_matches_cpu(const at::Tensor& x, int64_t n, bool bn) {
  const int64_t c = x.size(x.dim() - 2);
  const at::Tensor w = at::randn({n, c}), b = at::randn({n, c});
  const at::Tensor mean = bn ? at::randn({c}) : at::Tensor(), var = bn ? at::rand({c}) + 0.5 : at::Tensor();
  const std::optional<at::Tensor> m = bn ? std::optional<at::Tensor>(mean) : std::nullopt;
  const std::optional<at::Tensor> v = bn ? std::optional<at::Tensor>(var) : std::nullopt;
  const at::Tensor relu = pdiff_fast::norm_affine_act(x, w, b, m, v, 1e-5, "relu", 0.0);
  EXPECT(at::equal(replay_cuda_launch<pdiff_fast::kActRelu, Index>(x, w, b, mean, var, 1e-5, 0.0), relu));
  const at::Tensor leaky = pdiff_fast::norm_affine_act(x, w, b, m, v, 1e-5, "leaky_relu", 0.1);
  EXPECT(at::equal(replay_cuda_launch<pdiff_fast::kActLeakyRelu, Index>(x, w, b, mean, var, 1e-5, 0.1), leaky));
}
}  // namespace

TEST(cuda_work_split_replayed_on_host_matches_cpu) {
  at::manual_seed(2);
  for (bool bn : {true, false}) {
    check_replay_matches_cpu<uint32_t>(at::randn({7, 16, 36}), 5, bn);     // shared x
    check_replay_matches_cpu<uint32_t>(at::randn({3, 4, 6, 5}), 3, bn);    // per-model x
    check_replay_matches_cpu<uint32_t>(at::randn({1, 3, 1}), 2, bn);       // L = 1
    check_replay_matches_cpu<uint32_t>(at::randn({300, 2, 3}), 2, bn);     // rows longer than a block
    check_replay_matches_cpu<int64_t>(at::randn({7, 16, 36}), 5, bn);      // the 64-bit path
    check_replay_matches_cpu<int64_t>(at::randn({3, 4, 6, 5}), 3, bn);
  }
}

TEST(cuda_work_split_caps_the_grid_and_strides) {
  at::manual_seed(3);
  // N * C = 70,400 rows: more than grid_y's 65,535, so blocks take a second row
  check_replay_matches_cpu<uint32_t>(at::randn({1, 64, 1}), 1100, false);
  // a row of 2^24 + 1000 elements: more than grid_x * threads, so threads take a second element
  check_replay_matches_cpu<uint32_t>(at::randn({1, 1, (1 << 24) + 1000}), 1, true);
  const pdiff_fast::NormAffineActShape big{1000, 1000, 128, 40, true};  // 5.1e9 elements
  EXPECT(!pdiff_fast::rows_fit_32bit(big));
  EXPECT(pdiff_fast::rows_fit_32bit({1000, 1000, 32, 40, true}));  // 1.28e9
  const auto d = pdiff_fast::launch_dims(pdiff_fast::make_rows<int64_t>(big));
  EXPECT(d.grid_y == 65535 && d.threads == 256 && d.grid_x == (40000 + 255) / 256);
}

int main() { return check::run_all(); }

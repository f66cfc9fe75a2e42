// test_flatten.cpp: flatten_params / unflatten_params / unflatten_into on CPU against
// at::cat / slicing references: round trips bit-exact, casts as Tensor::to, errors named.
// The ops take flat lists (model i's tensor j at index i * n_segments + j; shapes as sizes end
// to end plus ndims; dtypes as ScalarType codes): the helpers below build them from nested ones.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include "check.h"
#include "flatten.h"

using pdiff_fast::flatten_params;
using pdiff_fast::unflatten_into;
using pdiff_fast::unflatten_params;

namespace {

using Models = std::vector<std::vector<at::Tensor>>;

std::vector<at::Tensor> concat(const Models& models) {
  std::vector<at::Tensor> out;
  for (const auto& m : models) out.insert(out.end(), m.begin(), m.end());
  return out;
}

at::Tensor flatten(const Models& sources, const std::vector<int64_t>& numels, at::ScalarType dtype) {
  return flatten_params(concat(sources), static_cast<int64_t>(sources.size()), numels, dtype);
}

std::vector<at::Tensor> unflatten(const at::Tensor& flat, const std::vector<std::vector<int64_t>>& shapes,
                                  const std::vector<at::ScalarType>& dtypes) {
  std::vector<int64_t> sizes, ndims, codes;
  for (const auto& s : shapes) {
    sizes.insert(sizes.end(), s.begin(), s.end());
    ndims.push_back(static_cast<int64_t>(s.size()));
  }
  for (auto d : dtypes) codes.push_back(static_cast<int64_t>(d));
  return unflatten_params(flat, sizes, ndims, codes);
}

void into(const at::Tensor& flat, const Models& targets) {
  unflatten_into(flat, concat(targets), static_cast<int64_t>(targets.size()));
}

// Model i's tensors: a transposed fp32 matrix, a 0-d fp16, a bf16 vector, an fp64 tensor
// with a size-1 dim, an empty tensor and a sliced (strided) fp32 view.
std::vector<at::Tensor> model_tensors() {
  return {at::randn({4, 3}).t(), at::randn({}).to(at::kHalf), at::randn({5}).to(at::kBFloat16),
          at::randn({2, 1, 3}, at::kDouble), at::empty({0, 2}), at::randn({6, 4}).slice(1, 0, 4, 2)};
}

at::Tensor reference_row(const std::vector<at::Tensor>& ts, at::ScalarType dtype) {
  std::vector<at::Tensor> parts;
  for (const auto& t : ts) parts.push_back(t.reshape({-1}).to(dtype));
  return at::cat(parts);
}

bool bit_equal(const at::Tensor& a, const at::Tensor& b) {
  return a.scalar_type() == b.scalar_type() && a.sizes() == b.sizes() &&
         at::equal(a.reshape({-1}).contiguous().view(at::kByte),
                   b.reshape({-1}).contiguous().view(at::kByte));
}

}  // namespace

TEST(flatten_matches_cat_for_each_row_dtype) {
  at::manual_seed(0);
  std::vector<std::vector<at::Tensor>> sources;
  for (int i = 0; i < 7; ++i) sources.push_back(model_tensors());
  std::vector<int64_t> numels;
  for (const auto& t : sources[0]) numels.push_back(t.numel());
  for (auto dtype : {at::kFloat, at::kDouble, at::kHalf, at::kBFloat16}) {
    const at::Tensor flat = flatten(sources, numels, dtype);
    EXPECT(flat.size(0) == 7 && flat.size(1) == 12 + 1 + 5 + 6 + 0 + 12);
    for (int i = 0; i < 7; ++i) EXPECT(bit_equal(flat[i], reference_row(sources[i], dtype)));
  }
}

// fp64 rows hold every source dtype exactly (fp32 rows too, but for the fp64 tensor)
TEST(round_trip_is_bit_exact) {
  at::manual_seed(1);
  std::vector<std::vector<at::Tensor>> sources;
  for (int i = 0; i < 200; ++i) sources.push_back(model_tensors());
  sources[3][0][1][2] = std::numeric_limits<float>::quiet_NaN();  // non-finite kept
  sources[5][2][0] = -std::numeric_limits<float>::infinity();
  std::vector<int64_t> numels;
  std::vector<std::vector<int64_t>> shapes;
  std::vector<at::ScalarType> dtypes;
  for (const auto& t : sources[0]) {
    numels.push_back(t.numel());
    shapes.push_back(t.sizes().vec());
    dtypes.push_back(t.scalar_type());
  }
  const at::Tensor flat = flatten(sources, numels, at::kDouble);
  const auto stacked = unflatten(flat, shapes, dtypes);
  for (size_t j = 0; j < shapes.size(); ++j) {
    EXPECT(stacked[j].is_contiguous());
    for (int i = 0; i < 200; ++i) EXPECT(bit_equal(stacked[j][i], sources[i][j]));
  }
  // into fresh non-contiguous targets of the same shapes
  std::vector<std::vector<at::Tensor>> targets;
  for (int i = 0; i < 200; ++i) {
    targets.push_back({at::zeros({4, 3}).t(), at::zeros({}, at::kHalf), at::zeros({5}, at::kBFloat16),
                       at::zeros({2, 1, 3}, at::kDouble), at::empty({0, 2}),
                       at::zeros({6, 4}).slice(1, 1, 4, 2)});
  }
  into(flat, targets);
  for (int i = 0; i < 200; ++i)
    for (size_t j = 0; j < shapes.size(); ++j) EXPECT(bit_equal(targets[i][j], sources[i][j]));
}

TEST(unflatten_reads_strided_rows) {
  const at::Tensor base = at::randn({9, 5});
  const at::Tensor flat = base.t();  // (5, 9) with column stride 5
  const auto outs = unflatten(flat, {{2, 3}, {2}, {1}}, {at::kFloat, at::kDouble, at::kHalf});
  EXPECT(bit_equal(outs[0], flat.slice(1, 0, 6).reshape({5, 2, 3})));
  EXPECT(bit_equal(outs[1], flat.slice(1, 6, 8).to(at::kDouble)));
  EXPECT(bit_equal(outs[2], flat.slice(1, 8, 9).to(at::kHalf)));
}

TEST(bad_inputs_raise_named_errors) {
  const std::vector<at::Tensor> one = {at::zeros({3})};
  EXPECT_THROWS(flatten({}, {3}, at::kFloat), "N = 0");
  EXPECT_THROWS(flatten({one}, {4}, at::kFloat), "spec says 4");
  EXPECT_THROWS(flatten({one}, {3, 1}, at::kFloat), "has 1 tensors");
  EXPECT_THROWS(flatten({{at::zeros({3}, at::kInt)}}, {3}, at::kFloat), "dtype");
  EXPECT_THROWS(flatten({one}, {3}, at::kLong), "row dtype");
  EXPECT_THROWS(unflatten(at::zeros({2, 5}), {{2, 2}}, {at::kFloat}), "wrong D");
  EXPECT_THROWS(unflatten(at::zeros({0, 4}), {{2, 2}}, {at::kFloat}), "N = 0");
  EXPECT_THROWS(unflatten(at::zeros({4}), {{2, 2}}, {at::kFloat}), "2-D");
  EXPECT_THROWS(unflatten(at::zeros({1, 4}), {{2, 2}}, {}), "dtypes");
  EXPECT_THROWS(unflatten(at::zeros({1, 4}), {{2, 2}}, {at::kInt}), "dtypes[0] has dtype Int");
  EXPECT_THROWS(unflatten_params(at::zeros({1, 4}), {2, 2}, {3}, {6}), "ndims add up to more");
  EXPECT_THROWS(unflatten_params(at::zeros({1, 4}), {2, 2}, {1}, {6}), "ndims add up to 1");
  EXPECT_THROWS(unflatten_params(at::zeros({1, 4}), {4}, {1}, {99}), "not a c10::ScalarType code");
  EXPECT_THROWS(into(at::zeros({2, 3}), {one}), "1 models");
  EXPECT_THROWS(into(at::zeros({1, 3}), {{at::zeros({1}).expand({3})}}), "single memory location");
  EXPECT_THROWS(unflatten_into(at::zeros({2, 3}), {at::zeros({3}), at::zeros({3}), at::zeros({3})}, 2),
                "not a multiple of n_models = 2");
  EXPECT_THROWS(unflatten_into(at::zeros({1, 3}), {at::zeros({3})}, 0), "N = 0");
}

// the torch ops that flatten.cpp registers run the same code through the dispatcher
TEST(torch_ops_are_registered) {
  const auto flatten_op = c10::Dispatcher::singleton()
                              .findSchemaOrThrow("pdiff_fast::flatten_params", "")
                              .typed<at::Tensor(at::TensorList, int64_t, at::IntArrayRef, at::ScalarType)>();
  const std::vector<at::Tensor> sources = {at::randn({2, 3}), at::randn({4}, at::kDouble),
                                           at::randn({2, 3}), at::randn({4}, at::kDouble)};
  const at::Tensor flat = flatten_op.call(sources, 2, {6, 4}, at::kDouble);
  EXPECT(bit_equal(flat, flatten({{sources[0], sources[1]}, {sources[2], sources[3]}}, {6, 4}, at::kDouble)));
  for (const char* name : {"pdiff_fast::unflatten_params", "pdiff_fast::unflatten_into"}) {
    EXPECT(c10::Dispatcher::singleton().findSchema({name, ""}).has_value());
  }
}

int main() { return check::run_all(); }

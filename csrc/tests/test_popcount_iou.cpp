// test_popcount_iou.cpp: iou_matrix on CPU against a bit-by-bit count, uint8 and int64 words.
#include <ATen/ATen.h>

#include "check.h"
#include "popcount_iou.h"

namespace {

// Unpack (N, W) integer words into (N, W * bits) bool, little-endian bit order.
at::Tensor unpack(const at::Tensor& words) {
  const at::Tensor bytes = words.contiguous().view(at::kByte);  // (N, W * itemsize)
  const at::Tensor shifts = at::arange(8, at::kByte);
  return at::bitwise_and(at::bitwise_right_shift(bytes.unsqueeze(-1), shifts), 1)
      .to(at::kBool)
      .flatten(1);
}

at::Tensor reference(const at::Tensor& a, const at::Tensor& b) {
  const at::Tensor ua = unpack(a).unsqueeze(1), ub = unpack(b).unsqueeze(0);
  const at::Tensor inter = at::logical_and(ua, ub).sum(-1).to(at::kFloat);
  const at::Tensor uni = at::logical_or(ua, ub).sum(-1).to(at::kFloat);
  return at::where(uni == 0, at::ones_like(uni), inter / uni);
}

}  // namespace

TEST(matches_bitwise_reference) {
  at::manual_seed(0);
  for (int64_t width : {1, 7, 8, 13, 125}) {
    const at::Tensor a = at::randint(0, 256, {9, width}, at::kByte);
    const at::Tensor b = at::randint(0, 256, {4, width}, at::kByte);
    EXPECT(at::equal(pdiff_fast::iou_matrix(a, b), reference(a, b)));
    const at::Tensor a64 = at::randint(-(1LL << 62), 1LL << 62, {5, width}, at::kLong);
    EXPECT(at::equal(pdiff_fast::iou_matrix(a64, a64), reference(a64, a64)));
  }
}

TEST(empty_sets_have_iou_one) {
  const at::Tensor z = at::zeros({3, 4}, at::kByte);
  EXPECT(at::equal(pdiff_fast::iou_matrix(z, z), at::ones({3, 3})));
  EXPECT(pdiff_fast::iou_matrix(at::zeros({0, 4}, at::kByte), z).size(0) == 0);
}

TEST(bad_inputs_raise_named_errors) {
  const at::Tensor a = at::zeros({3, 4}, at::kByte);
  EXPECT_THROWS(pdiff_fast::iou_matrix(a, at::zeros({3, 5}, at::kByte)), "widths");
  EXPECT_THROWS(pdiff_fast::iou_matrix(a, at::zeros({3, 4}, at::kLong)), "mismatched dtypes");
  EXPECT_THROWS(pdiff_fast::iou_matrix(at::zeros({3, 4}), at::zeros({3, 4})), "integer dtype");
  EXPECT_THROWS(pdiff_fast::iou_matrix(at::zeros({4}, at::kByte), a), "2-D");
}

int main() { return check::run_all(); }

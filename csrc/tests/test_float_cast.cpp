// test_float_cast.cpp: the shared fp16/bf16 conversions (float_cast.h) against c10::Half /
// c10::BFloat16 (torch's own) on every fp16/bf16 bit pattern and on a sweep of fp32 values.
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstring>
#include <random>

#include "check.h"
#include "float_cast.h"

using namespace pdiff_fast;

namespace {
uint16_t bits_of(c10::Half h) { return h.x; }
uint16_t bits_of(c10::BFloat16 b) { return b.x; }
bool same_float(float a, float b) { return (std::isnan(a) && std::isnan(b)) || float_bits(a) == float_bits(b); }
}  // namespace

TEST(every_half_widens_like_c10_and_round_trips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    EXPECT(same_float(f, static_cast<float>(c10::Half(static_cast<uint16_t>(h), c10::Half::from_bits()))));
    EXPECT(float_to_half(f) == h);
  }
}

TEST(every_bf16_widens_like_c10_and_round_trips) {
  for (uint32_t b = 0; b < 65536; ++b) {
    const float f = bf16_to_float(static_cast<uint16_t>(b));
    EXPECT(same_float(f, static_cast<float>(c10::BFloat16(static_cast<uint16_t>(b), c10::BFloat16::from_bits()))));
    EXPECT(float_to_bf16(f) == b);
  }
}

TEST(narrowing_rounds_like_c10) {
  std::mt19937 rng(0);
  int mismatches = 0;
  for (int k = 0; k < 2000000; ++k) {
    uint32_t u = rng();
    float f = bits_float(u);
    if (std::isnan(f)) continue;  // NaN payloads: c10 canonicalises, we keep them
    if (float_to_half(f) != bits_of(c10::Half(f))) ++mismatches;
    if (float_to_bf16(f) != bits_of(c10::BFloat16(f))) ++mismatches;
  }
  // ties and the edges of the fp16 range
  for (float f : {65504.0f, 65519.99f, 65520.0f, 6.1035156e-05f, 5.9604645e-08f, 2.9802322e-08f,
                  2.9802326e-08f, 1.0009766f, 1.0004883f, -0.0f, INFINITY, -INFINITY}) {
    if (float_to_half(f) != bits_of(c10::Half(f))) ++mismatches;
    if (float_to_bf16(f) != bits_of(c10::BFloat16(f))) ++mismatches;
  }
  EXPECT(mismatches == 0);
}

TEST(nan_stays_nan) {
  const float qnan = bits_float(0x7fc00001u), low_payload = bits_float(0x7f800001u);
  EXPECT(std::isnan(half_to_float(float_to_half(qnan))));
  EXPECT(std::isnan(half_to_float(float_to_half(low_payload))));
  EXPECT(std::isnan(bf16_to_float(float_to_bf16(low_payload))));
}

int main() { return check::run_all(); }

// test_fast_divmod.cpp: FastDivmod (the 32-bit division of the CUDA kernels, host path) against
// plain division, for small and huge divisors and dividends up to 2^32 - 1.
#include <cstdint>
#include <random>

#include "check.h"
#include "fast_divmod.h"

namespace {
bool matches(uint32_t d, uint32_t n) {
  const pdiff_fast::FastDivmod f(d);
  uint32_t q, r;
  f.divmod(n, &q, &r);
  return q == n / d && r == n % d;
}
}  // namespace

TEST(small_divisors_every_small_dividend) {
  bool ok = true;
  for (uint32_t d = 1; d <= 600; ++d)
    for (uint32_t n = 0; n < 5000; ++n) ok = ok && matches(d, n);
  EXPECT(ok);
}

TEST(edge_dividends_and_divisors) {
  const uint32_t big[] = {1u, 2u, 3u, 5u, 7u, 40u, 1000u, 65535u, 65536u, 65537u, (1u << 31) - 1,
                          1u << 31, (1u << 31) + 1, 0xFFFFFFFEu, 0xFFFFFFFFu};
  bool ok = true;
  for (uint32_t d : big) {
    for (uint32_t n : big) ok = ok && matches(d, n);
    for (uint32_t k = 0; k < 64; ++k) {
      ok = ok && matches(d, 0xFFFFFFFFu - k) && matches(d, k * d) && (k == 0 || matches(d, k * d - 1));
    }
  }
  EXPECT(ok);
}

TEST(random_pairs) {
  std::mt19937 rng(0);
  bool ok = true;
  for (int i = 0; i < 200000; ++i) {
    const uint32_t d = std::max<uint32_t>(1, rng() >> (rng() % 32));
    ok = ok && matches(d, rng());
  }
  EXPECT(ok);
}

int main() { return check::run_all(); }

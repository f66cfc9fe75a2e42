// fast_divmod.h: unsigned 32-bit division by a divisor fixed at launch time, as one high
// multiply, one add and one shift (Granlund & Montgomery, "Division by invariant integers
// using multiplication", 1994, round-up method). Exact for every n < 2^32 and d >= 1.
// Plain C++ (host) and CUDA (device); no PyTorch headers.
#pragma once

#include <cstdint>

#include "host_device.h"

namespace pdiff_fast {

struct FastDivmod {
  uint32_t d = 1;      // the divisor
  uint32_t m = 1;      // floor(2^32 * (2^s - d) / d) + 1
  uint32_t shift = 0;  // s = ceil(log2(d))

  FastDivmod() = default;
  explicit FastDivmod(uint32_t divisor) : d(divisor) {
    while ((uint64_t{1} << shift) < divisor) ++shift;
    m = static_cast<uint32_t>(((uint64_t{1} << 32) * ((uint64_t{1} << shift) - divisor)) / divisor + 1);
  }

  PDIFF_HD uint32_t div(uint32_t n) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(m, n);
#else
    const uint32_t hi = static_cast<uint32_t>((static_cast<uint64_t>(m) * n) >> 32);
#endif
    return static_cast<uint32_t>((static_cast<uint64_t>(hi) + n) >> shift);
  }

  // quotient and remainder
  PDIFF_HD void divmod(uint32_t n, uint32_t* q, uint32_t* r) const {
    *q = div(n);
    *r = n - *q * d;
  }
};

}  // namespace pdiff_fast

// float_cast.h: bit-level conversions between the four floating dtypes pdiff_fast stores
// parameters in (fp16, bf16, fp32, fp64), shared by the CPU and CUDA kernels.
//
// Plain C++ with no PyTorch headers, so nvcc compiles it on machines whose torch has no CUDA
// headers. Finite values and infinities convert exactly as torch's `Tensor.to(dtype)`:
// round to nearest even, fp64 -> fp16/bf16 through fp32 (as c10::Half / c10::BFloat16 do).
// NaNs stay NaN with their payload kept where it fits, so a fp16/bf16 -> fp32 -> fp16/bf16
// round trip is bit-exact for every bit pattern, NaNs included.
#pragma once

#include <cstdint>
#include <cstring>

#include "host_device.h"

namespace pdiff_fast {

// dtype codes stored in segment tables (ScalarType is not available to nvcc here)
enum DTypeCode : int32_t { kFloat16 = 0, kBFloat16 = 1, kFloat32 = 2, kFloat64 = 3 };

PDIFF_HD int64_t dtype_size(int32_t code) {
  return code == kFloat64 ? 8 : (code == kFloat32 ? 4 : 2);
}

PDIFF_HD uint32_t float_bits(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
}

PDIFF_HD float bits_float(uint32_t u) {
  float f;
  memcpy(&f, &u, 4);
  return f;
}

// fp16 bits -> fp32, exact for every input (NaN payload kept).
PDIFF_HD float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0x1fu) return bits_float(sign | 0x7f800000u | (mant << 13));  // inf / NaN
  if (exp != 0) return bits_float(sign | ((exp + 112u) << 23) | (mant << 13));  // normal
  // zero or subnormal: mant * 2^-24 is exact in fp32 (and a normal fp32 number)
  const float magnitude = static_cast<float>(mant) * 5.9604644775390625e-8f;
  return bits_float(sign | float_bits(magnitude));
}

// fp32 -> fp16 bits, round to nearest even; overflow -> inf.
PDIFF_HD uint16_t float_to_half(float f) {
  const uint32_t u = float_bits(f);
  const uint32_t sign = (u >> 16) & 0x8000u;
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) {  // NaN: keep the top payload bits, never turn into inf
    uint32_t payload = (a >> 13) & 0x3ffu;
    if (payload == 0) payload = 0x200u;
    return static_cast<uint16_t>(sign | 0x7c00u | payload);
  }
  if (a >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (a < 0x38800000u) {
    // below the smallest normal fp16 (2^-14): the result is a multiple of 2^-24. Adding 0.5
    // (whose ulp is 2^-24) rounds |f| to that grid, nearest even, in one fp32 addition.
    const float rounded = bits_float(a) + 0.5f;
    return static_cast<uint16_t>(sign | (float_bits(rounded) - 0x3f000000u));
  }
  // normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits
  const uint32_t odd = (a >> 13) & 1u;
  return static_cast<uint16_t>(sign | ((a - 0x38000000u + 0xfffu + odd) >> 13));
}

PDIFF_HD float bf16_to_float(uint16_t b) { return bits_float(static_cast<uint32_t>(b) << 16); }

// fp32 -> bf16 bits, round to nearest even; NaN keeps its top payload bits.
PDIFF_HD uint16_t float_to_bf16(float f) {
  const uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    uint32_t hi = u >> 16;
    if ((hi & 0x7fu) == 0) hi |= 0x40u;
    return static_cast<uint16_t>(hi);
  }
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// Load element i of a buffer of dtype `code` as fp64 (exact for all four dtypes).
PDIFF_HD double load_as_double(const void* p, int32_t code, int64_t i) {
  switch (code) {
    case kFloat16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case kFloat32: return static_cast<const float*>(p)[i];
    default: return static_cast<const double*>(p)[i];
  }
}

// Store an fp64 value as dtype `code` (fp64 -> fp32 -> fp16/bf16, as torch).
PDIFF_HD void store_from_double(void* p, int32_t code, int64_t i, double v) {
  switch (code) {
    case kFloat16: static_cast<uint16_t*>(p)[i] = float_to_half(static_cast<float>(v)); break;
    case kBFloat16: static_cast<uint16_t*>(p)[i] = float_to_bf16(static_cast<float>(v)); break;
    case kFloat32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    default: static_cast<double*>(p)[i] = v; break;
  }
}

// Load as fp32: exact for fp16/bf16/fp32 (callers use it only when no fp64 is involved).
PDIFF_HD float load_as_float(const void* p, int32_t code, int64_t i) {
  switch (code) {
    case kFloat16: return half_to_float(static_cast<const uint16_t*>(p)[i]);
    case kBFloat16: return bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

PDIFF_HD void store_from_float(void* p, int32_t code, int64_t i, float v) {
  switch (code) {
    case kFloat16: static_cast<uint16_t*>(p)[i] = float_to_half(v); break;
    case kBFloat16: static_cast<uint16_t*>(p)[i] = float_to_bf16(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

}  // namespace pdiff_fast

// popcount_iou_cpu.cpp: |A & B| by popcount over 64-bit words, |A | B| = |A| + |B| - |A & B|
// from per-row counts computed once. Parallel over rows of A. On x86-64 the pair loop is
// compiled a second time for the POPCNT instruction and picked at run time.
#include "popcount_iou_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace pdiff_fast {
namespace {

inline uint64_t load_word(const uint8_t* p) {
  uint64_t w;
  std::memcpy(&w, p, 8);
  return w;
}

inline uint64_t load_tail(const uint8_t* p, int64_t n) {  // n < 8 bytes, zero-padded
  uint64_t w = 0;
  std::memcpy(&w, p, static_cast<size_t>(n));
  return w;
}

__attribute__((always_inline)) inline int64_t and_count(const uint8_t* x, const uint8_t* y,
                                                        int64_t bytes) {
  int64_t count = 0, k = 0;
  for (; k + 8 <= bytes; k += 8) count += __builtin_popcountll(load_word(x + k) & load_word(y + k));
  if (k < bytes) count += __builtin_popcountll(load_tail(x + k, bytes - k) & load_tail(y + k, bytes - k));
  return count;
}

__attribute__((always_inline)) inline void iou_rows(const uint8_t* a, const uint8_t* b, int64_t nb,
                                                    int64_t row_bytes, const int64_t* count_a,
                                                    const int64_t* count_b, int64_t i0, int64_t i1,
                                                    float* out) {
  for (int64_t i = i0; i < i1; ++i) {
    const uint8_t* ra = a + i * row_bytes;
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t inter = and_count(ra, b + j * row_bytes, row_bytes);
      const int64_t uni = count_a[i] + count_b[j] - inter;
      out[i * nb + j] = uni == 0 ? 1.0f : static_cast<float>(inter) / static_cast<float>(uni);
    }
  }
}

void iou_rows_generic(const uint8_t* a, const uint8_t* b, int64_t nb, int64_t row_bytes,
                      const int64_t* count_a, const int64_t* count_b, int64_t i0, int64_t i1,
                      float* out) {
  iou_rows(a, b, nb, row_bytes, count_a, count_b, i0, i1, out);
}

#if defined(__x86_64__) && defined(__GNUC__)
__attribute__((target("popcnt"))) void iou_rows_popcnt(const uint8_t* a, const uint8_t* b,
                                                       int64_t nb, int64_t row_bytes,
                                                       const int64_t* count_a,
                                                       const int64_t* count_b, int64_t i0,
                                                       int64_t i1, float* out) {
  iou_rows(a, b, nb, row_bytes, count_a, count_b, i0, i1, out);
}
#endif

void row_counts(const uint8_t* x, int64_t n, int64_t row_bytes, int64_t* counts) {
  for (int64_t i = 0; i < n; ++i) counts[i] = and_count(x + i * row_bytes, x + i * row_bytes, row_bytes);
}

}  // namespace

void iou_matrix_cpu(const uint8_t* a, int64_t na, const uint8_t* b, int64_t nb,
                    int64_t row_bytes, float* out) {
  std::vector<int64_t> count_a(na), count_b(nb);
  row_counts(a, na, row_bytes, count_a.data());
  row_counts(b, nb, row_bytes, count_b.data());
  auto rows = &iou_rows_generic;
#if defined(__x86_64__) && defined(__GNUC__)
  if (__builtin_cpu_supports("popcnt")) rows = &iou_rows_popcnt;
#endif
  const int64_t work_per_row = std::max<int64_t>(1, nb * (row_bytes / 8 + 1));
  const int64_t grain = std::max<int64_t>(1, (1 << 16) / work_per_row);
  at::parallel_for(0, na, grain, [&](int64_t i0, int64_t i1) {
    rows(a, b, nb, row_bytes, count_a.data(), count_b.data(), i0, i1, out);
  });
}

}  // namespace pdiff_fast

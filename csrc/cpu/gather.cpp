#include "cpu/gather.h"

#include <algorithm>
#include <type_traits>

#include "cpu/threads.h"

namespace fnn_fast::cpu {

namespace {

// As the FM forward: rows asked for 32 lookups ahead, row widths of the common K (4, 8, 10, 16,
// 32) known at compile time so the per-row loop unrolls. A bound must be at least as well made
// as the kernels it bounds.
constexpr int64_t kAhead = 32;

inline void prefetch(const float* row, int64_t dim) {
  for (int64_t d = 0; d < dim; d += 16) __builtin_prefetch(row + d);
  __builtin_prefetch(row + dim - 1);
}

template <int kDim>
int64_t gather_sum_impl(const float* table, int64_t num_rows, int64_t runtime_dim,
                        const int64_t* ids, int64_t batch, int64_t slots, float* out) {
  const int64_t dim = kDim ? kDim : runtime_dim;
  const int64_t lookups = batch * slots;
  int64_t first_bad = lookups;  // min-reduced; lookups stands for "none"
#pragma omp parallel for num_threads(threads_for(lookups)) schedule(static) \
    reduction(min : first_bad)
  for (int64_t b = 0; b < batch; ++b) {
    float* sum = out + b * dim;
    std::fill(sum, sum + dim, 0.0f);
    for (int64_t s = 0; s < slots; ++s) {
      const int64_t ahead = b * slots + s + kAhead;  // in this sample or the next ones
      if (ahead < lookups) {
        const int64_t next = ids[ahead];
        if (next >= 0 && next < num_rows) prefetch(table + next * dim, dim);
      }
      const int64_t id = ids[b * slots + s];
      if (id < 0 || id >= num_rows) {
        first_bad = std::min(first_bad, b * slots + s);
        continue;
      }
      const float* row = table + id * dim;
      for (int64_t d = 0; d < dim; ++d) sum[d] += row[d];
    }
  }
  return first_bad == lookups ? -1 : first_bad;
}

}  // namespace

int64_t gather_sum(const float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                   int64_t batch, int64_t slots, float* out) {
  if (batch <= 0 || dim <= 0) return -1;
  switch (dim) {
    case 5: return gather_sum_impl<5>(table, num_rows, dim, ids, batch, slots, out);
    case 9: return gather_sum_impl<9>(table, num_rows, dim, ids, batch, slots, out);
    case 11: return gather_sum_impl<11>(table, num_rows, dim, ids, batch, slots, out);
    case 17: return gather_sum_impl<17>(table, num_rows, dim, ids, batch, slots, out);
    case 33: return gather_sum_impl<33>(table, num_rows, dim, ids, batch, slots, out);
    default: return gather_sum_impl<0>(table, num_rows, dim, ids, batch, slots, out);
  }
}

}  // namespace fnn_fast::cpu

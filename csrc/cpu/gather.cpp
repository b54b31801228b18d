#include "cpu/gather.h"

#include <algorithm>
#include <cstring>

#include "cpu/threads.h"

namespace fnn_fast::cpu {

namespace {

constexpr int64_t kAhead = 16;  // lookups between a row's prefetch and its read

inline void prefetch(const float* row, int64_t dim) {
  for (int64_t d = 0; d < dim; d += 16) __builtin_prefetch(row + d);
  __builtin_prefetch(row + dim - 1);
}

}  // namespace

int64_t gather_sum(const float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                   int64_t batch, int64_t slots, float* out) {
  int64_t first_bad = -1;
  if (batch <= 0 || dim <= 0) return first_bad;
  const int64_t lookups = batch * slots;
  first_bad = lookups;  // min-reduced; lookups stands for "none"
#pragma omp parallel for num_threads(threads_for(lookups)) schedule(static) \
    reduction(min : first_bad)
  for (int64_t b = 0; b < batch; ++b) {
    float* sum = out + b * dim;
    std::fill(sum, sum + dim, 0.0f);
    const int64_t* row_ids = ids + b * slots;
    for (int64_t s = 0; s < slots; ++s) {
      // the lookup kAhead positions on (in this sample or the next ones)
      const int64_t ahead = b * slots + s + kAhead;
      if (ahead < lookups) {
        const int64_t next = ids[ahead];
        if (next >= 0 && next < num_rows) prefetch(table + next * dim, dim);
      }
      const int64_t id = row_ids[s];
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

}  // namespace fnn_fast::cpu

#include "cpu/fm.h"

#include <algorithm>
#include <vector>

namespace fnn_fast::cpu {

void fm_forward(const float* table, int64_t dim, const int64_t* ids, const float* values,
                int64_t batch, int64_t slots, float w0, float* logits) {
  const int64_t k = dim - 1;
#pragma omp parallel
  {
    // Per-thread accumulators: sum_s x v and sum_s (x v)^2 for each factor.
    std::vector<float> sum(k), sum_sq(k);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      std::fill(sum.begin(), sum.end(), 0.0f);
      std::fill(sum_sq.begin(), sum_sq.end(), 0.0f);
      float linear = w0;
      for (int64_t s = 0; s < slots; ++s) {
        const float x = values ? values[b * slots + s] : 1.0f;
        const float* row = table + ids[b * slots + s] * dim;  // int64 offset: tables > 2^31 ok
        linear += x * row[0];
        for (int64_t j = 0; j < k; ++j) {
          const float xv = x * row[1 + j];
          sum[j] += xv;
          sum_sq[j] += xv * xv;
        }
      }
      float pair = 0.0f;
      for (int64_t j = 0; j < k; ++j) pair += sum[j] * sum[j] - sum_sq[j];
      logits[b] = linear + 0.5f * pair;
    }
  }
}

}  // namespace fnn_fast::cpu

#include "cpu/fm.h"

#include <algorithm>
#include <vector>

#include "cpu/group_by_row.h"

namespace fnn_fast::cpu {

void fm_forward(const float* table, int64_t dim, const int64_t* ids, const float* values,
                int64_t batch, int64_t slots, float* logits, float* sums) {
  const int64_t k = dim - 1;
#pragma omp parallel
  {
    // Per thread: sum_s x v and sum_s (x v)^2, in double: the difference of the two squares
    // cancels, and float32 sums over many fields would lose the digits that remain.
    std::vector<double> sum(k), sum_sq(k);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      std::fill(sum.begin(), sum.end(), 0.0);
      std::fill(sum_sq.begin(), sum_sq.end(), 0.0);
      double linear = 0.0;
      for (int64_t s = 0; s < slots; ++s) {
        const float x = values ? values[b * slots + s] : 1.0f;
        const float* row = table + ids[b * slots + s] * dim;
        linear += x * row[0];
        for (int64_t j = 0; j < k; ++j) {
          const double xv = x * row[1 + j];
          sum[j] += xv;
          sum_sq[j] += xv * xv;
        }
      }
      double pair = 0.0;
      for (int64_t j = 0; j < k; ++j) pair += sum[j] * sum[j] - sum_sq[j];
      logits[b] = static_cast<float>(linear + 0.5 * pair);
      if (sums) {
        for (int64_t j = 0; j < k; ++j) sums[b * k + j] = static_cast<float>(sum[j]);
      }
    }
  }
}

void fm_backward_update(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                        const float* values, int64_t batch, int64_t slots, const float* sums,
                        const float* grad_logits, const UpdateParams& params,
                        const OptimizerState& state) {
  const int64_t k = dim - 1;
  const RowGroups groups = group_by_row(ids, batch * slots, num_rows);
  const int64_t runs = static_cast<int64_t>(groups.rows.size());
#pragma omp parallel
  {
    std::vector<float> grad(dim);
#pragma omp for schedule(dynamic, 64)
    for (int64_t r = 0; r < runs; ++r) {
      float* row = table + groups.rows[r] * dim;
      std::fill(grad.begin(), grad.end(), 0.0f);
      for (int64_t i = groups.run_starts[r]; i < groups.run_starts[r + 1]; ++i) {
        const int64_t position = groups.positions[i];
        const int64_t b = position / slots;
        const float x = values ? values[position] : 1.0f;
        const float gx = grad_logits[b] * x;
        const float* sum = sums + b * k;
        grad[0] += gx;
        for (int64_t j = 0; j < k; ++j) grad[1 + j] += gx * (sum[j] - x * row[1 + j]);
      }
      update_row(params, state, groups.rows[r], row, grad.data(), dim);
    }
  }
}

void fnn_gather(const float* table, int64_t dim, const int64_t* ids, const float* values,
                int64_t batch, int64_t slots, const int64_t* slot_fields, int64_t num_fields,
                float* z) {
  const int64_t width = num_fields * dim;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    float* out = z + b * width;
    if (slot_fields) std::fill(out, out + width, 0.0f);
    for (int64_t s = 0; s < slots; ++s) {
      const float x = values ? values[b * slots + s] : 1.0f;
      const float* row = table + ids[b * slots + s] * dim;
      float* field = out + (slot_fields ? slot_fields[s] : s) * dim;
      if (slot_fields) {
        for (int64_t d = 0; d < dim; ++d) field[d] += x * row[d];
      } else {
        for (int64_t d = 0; d < dim; ++d) field[d] = x * row[d];
      }
    }
  }
}

void fnn_gather_backward_update(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                                const float* values, int64_t batch, int64_t slots,
                                const int64_t* slot_fields, int64_t num_fields,
                                const float* grad_z, const UpdateParams& params,
                                const OptimizerState& state) {
  const int64_t width = num_fields * dim;
  const RowGroups groups = group_by_row(ids, batch * slots, num_rows);
  const int64_t runs = static_cast<int64_t>(groups.rows.size());
#pragma omp parallel
  {
    std::vector<float> grad(dim);
#pragma omp for schedule(dynamic, 64)
    for (int64_t r = 0; r < runs; ++r) {
      std::fill(grad.begin(), grad.end(), 0.0f);
      for (int64_t i = groups.run_starts[r]; i < groups.run_starts[r + 1]; ++i) {
        const int64_t position = groups.positions[i];
        const int64_t b = position / slots, s = position % slots;
        const float x = values ? values[position] : 1.0f;
        const float* g = grad_z + b * width + (slot_fields ? slot_fields[s] : s) * dim;
        for (int64_t d = 0; d < dim; ++d) grad[d] += x * g[d];
      }
      update_row(params, state, groups.rows[r], table + groups.rows[r] * dim, grad.data(), dim);
    }
  }
}

}  // namespace fnn_fast::cpu

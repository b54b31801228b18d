#include "cpu/fm.h"

#include <algorithm>
#include <vector>

#include "cpu/group_by_row.h"

#ifdef FNN_FAST_OPENMP
#include <omp.h>
#endif

namespace fnn_fast::cpu {

namespace {

// Rows are scattered over a table far larger than the caches: ask for a row this many lookups
// ahead so its cache lines arrive while the current one is being used.
constexpr int64_t kPrefetchDistance = 16;  // lookups ahead, in the forward
constexpr int64_t kPrefetchRuns = 24;      // rows ahead, in the update (less work per row)

// Every cache line the row touches: a 44-byte row often straddles two.
inline void prefetch_row(const float* row, int64_t dim) {
  for (int64_t d = 0; d < dim; d += 16) __builtin_prefetch(row + d);
  __builtin_prefetch(row + dim - 1);
}

// Takes the rule and the state's addresses by value: GCC drops a prefetch guarded by a field read
// through a reference that the loop's stores might alias (the state was never prefetched).
inline void prefetch_state(Rule rule, const float* state1, const float* state2, int64_t row,
                           int64_t dim) {
  if (rule == Rule::kRowwiseAdagrad) {
    __builtin_prefetch(state1 + row);
  } else if (rule != Rule::kSGD) {
    prefetch_row(state1 + row * dim, dim);
    if (rule == Rule::kAdam) prefetch_row(state2 + row * dim, dim);
  }
}

// Groups the batch's lookups by row; for each unique row (one thread each), sums the gradient of
// its occurrences in (b, s) order with accumulate(b, s, grad), completes it with
// finish(row, grad), then updates the row. grad has one spare element after the row's dim.
template <typename Accumulate, typename Finish>
void update_grouped_rows(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                         int64_t batch, int64_t slots, const UpdateParams& params,
                         const OptimizerState& state, Accumulate accumulate, Finish finish) {
  static thread_local RowGroups workspace;
  group_by_row(ids, batch, slots, num_rows, workspace);
  // A plain reference for the OpenMP threads: inside the parallel region, `workspace` would
  // name each worker thread's own (empty) thread_local instance.
  const RowGroups& groups = workspace;
  const int64_t runs = static_cast<int64_t>(groups.rows.size());
  const int slot_bits = groups.slot_bits;
  const int64_t slot_mask = (int64_t{1} << slot_bits) - 1;
  const Rule rule = params.rule;
  const float* const state1 = state.state1;
  const float* const state2 = state.state2;
  const int64_t lookups = batch * slots;
#pragma omp parallel
  {
    // Each thread takes a contiguous stretch of runs holding about its share of the lookups:
    // a hot row's long run does not leave one thread with most of the work, and the prefetch
    // below runs ahead within the thread's own rows.
#ifdef FNN_FAST_OPENMP
    const int64_t threads = omp_get_num_threads(), t = omp_get_thread_num();
#else
    const int64_t threads = 1, t = 0;
#endif
    const auto first_run = [&](int64_t u) {
      const int64_t* starts = groups.run_starts.data();
      return static_cast<int64_t>(std::lower_bound(starts, starts + runs, lookups * u / threads) -
                                  starts);
    };
    const int64_t begin = first_run(t), end = t + 1 == threads ? runs : first_run(t + 1);
    std::vector<float> grad(dim + 1);
    for (int64_t r = begin; r < end; ++r) {
      if (r + kPrefetchRuns < end) {
        const int64_t ahead = groups.rows[r + kPrefetchRuns];
        prefetch_row(table + ahead * dim, dim);
        prefetch_state(rule, state1, state2, ahead, dim);
      }
      float* row = table + groups.rows[r] * dim;
      std::fill(grad.begin(), grad.end(), 0.0f);
      for (int64_t i = groups.run_starts[r]; i < groups.run_starts[r + 1]; ++i) {
        const int64_t position = groups.positions[i];
        accumulate(position >> slot_bits, position & slot_mask, grad.data());
      }
      finish(row, grad.data());
      update_row(params, state, groups.rows[r], row, grad.data(), dim);
    }
  }
}

}  // namespace

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
        const int64_t ahead = b * slots + s + kPrefetchDistance;
        if (ahead < batch * slots) prefetch_row(table + ids[ahead] * dim, dim);
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
  // Summed over a row's occurrences, g x (sums_b - x v) = sum(g x sums_b) - v sum(g x^2): the
  // loop accumulates the first term and the scalar sum(g x^2) (kept in grad[dim]), and the row
  // is read once at the end.
  update_grouped_rows(
      table, num_rows, dim, ids, batch, slots, params, state,
      [&](int64_t b, int64_t s, float* __restrict grad) {
        const float x = values ? values[b * slots + s] : 1.0f;
        const float gx = grad_logits[b] * x;
        const float* __restrict sum = sums + b * k;
        grad[0] += gx;
        for (int64_t j = 0; j < k; ++j) grad[1 + j] += gx * sum[j];
        grad[dim] += gx * x;
      },
      [&](const float* row, float* grad) {
        for (int64_t j = 0; j < k; ++j) grad[1 + j] -= grad[dim] * row[1 + j];
      });
}

constexpr int64_t kGatherAhead = 16;  // lookups; enough misses in flight, few wasted at the end

void fnn_gather(const float* table, int64_t dim, const int64_t* ids, const float* values,
                int64_t batch, int64_t slots, const int64_t* slot_fields, int64_t num_fields,
                float* z) {
  const int64_t width = num_fields * dim;
  const int64_t lookups = batch * slots;
#pragma omp parallel for schedule(static)
  for (int64_t b = 0; b < batch; ++b) {
    float* out = z + b * width;
    if (slot_fields) std::fill(out, out + width, 0.0f);
    for (int64_t s = 0; s < slots; ++s) {
      // Random rows miss the cache: ask for a later lookup's row while this one is copied.
      const int64_t ahead = b * slots + s + kGatherAhead;
      if (ahead < lookups) prefetch_row(table + ids[ahead] * dim, dim);
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
  update_grouped_rows(
      table, num_rows, dim, ids, batch, slots, params, state,
      [&](int64_t b, int64_t s, float* __restrict grad) {
        const float x = values ? values[b * slots + s] : 1.0f;
        const int64_t field = slot_fields ? slot_fields[s] : s;
        const float* __restrict g = grad_z + b * width + field * dim;
        for (int64_t d = 0; d < dim; ++d) grad[d] += x * g[d];
      },
      [](const float*, float*) {});
}

}  // namespace fnn_fast::cpu

#include "cpu/fm.h"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cpu/group_by_row.h"
#include "cpu/threads.h"

#ifdef FNN_FAST_OPENMP
#include <omp.h>
#endif

namespace fnn_fast::cpu {

namespace {

// Rows are scattered over a table far larger than the caches: ask for a row this many lookups
// ahead so its cache lines arrive while the current one is being used.
constexpr int64_t kPrefetchDistance = 32;  // lookups ahead, in the forward
constexpr int64_t kPrefetchRuns = 24;      // rows ahead, in the update (less work per row)
constexpr int64_t kPrefetchLookups = 16;   // lookups ahead, for the gradient each one reads

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

// The kernels are compiled for common row widths D = 1 + K (K = 4, 8, 10, 16, 32) so the
// per-row loops unroll into a few vector operations; kDim = 0 is the generic version, reading
// the width at run time.
template <int kDim>
constexpr int64_t width(int64_t dim) {
  return kDim ? kDim : dim;
}

template <typename Kernel>
void with_dim(int64_t dim, Kernel&& kernel) {
  switch (dim) {
    case 5: return kernel(std::integral_constant<int, 5>{});
    case 9: return kernel(std::integral_constant<int, 9>{});
    case 11: return kernel(std::integral_constant<int, 11>{});
    case 17: return kernel(std::integral_constant<int, 17>{});
    case 33: return kernel(std::integral_constant<int, 33>{});
    default: return kernel(std::integral_constant<int, 0>{});
  }
}

// A row-sized buffer plus one spare float: on the stack for a compile-time width.
template <int kDim>
struct RowBuffer {
  float values[kDim + 1];
  explicit RowBuffer(int64_t) {}
  float* data() { return values; }
};
template <>
struct RowBuffer<0> {
  std::vector<float> values;
  explicit RowBuffer(int64_t dim) : values(dim + 1) {}
  float* data() { return values.data(); }
};

// Groups the batch's lookups by row; for each unique row, sums the gradient of its occurrences
// in (b, s) order with accumulate(b, s, grad), completes it with finish(row, grad), then updates
// the row. grad has one spare element after the row's dim. source(b, s) is the address
// accumulate will read for that lookup, fetched kPrefetchLookups lookups ahead. Returns -1, or
// the flat position of the first id outside the table, and then updates nothing.
template <int kDim, typename Accumulate, typename Finish, typename Source>
int64_t update_grouped_rows(float* table, int64_t num_rows, int64_t dim_arg, const int64_t* ids,
                            int64_t batch, int64_t slots, const UpdateParams& params,
                            const OptimizerState& state, Accumulate accumulate, Finish finish,
                            Source source) {
  const int64_t dim = width<kDim>(dim_arg);
  static thread_local RowGroups workspace;
  const int64_t first_bad = group_by_row(ids, batch, slots, num_rows, workspace);
  if (first_bad >= 0) return first_bad;
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
#pragma omp parallel num_threads(threads_for(lookups))
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
    const int64_t last = groups.run_starts[end];  // past this thread's last lookup
    // Derived again here: OpenMP outlines this region into its own function, which sees the
    // captured `dim` as a runtime value; width<kDim> makes it a constant again.
    const int64_t row_dim = width<kDim>(dim);
    RowBuffer<kDim> buffer(row_dim);
    float* grad = buffer.data();
    for (int64_t r = begin; r < end; ++r) {
      if (r + kPrefetchRuns < end) {
        const int64_t ahead = groups.rows[r + kPrefetchRuns];
        prefetch_row(table + ahead * row_dim, row_dim);
        prefetch_state(rule, state1, state2, ahead, row_dim);
      }
      float* row = table + groups.rows[r] * row_dim;
      std::fill(grad, grad + row_dim + 1, 0.0f);
      for (int64_t i = groups.run_starts[r]; i < groups.run_starts[r + 1]; ++i) {
        if (i + kPrefetchLookups < last) {
          const int64_t ahead = groups.positions[i + kPrefetchLookups];
          prefetch_row(source(ahead >> slot_bits, ahead & slot_mask), row_dim);
        }
        const int64_t position = groups.positions[i];
        accumulate(position >> slot_bits, position & slot_mask, grad);
      }
      finish(row, grad);
      update_row(params, state, groups.rows[r], row, grad, row_dim);
    }
  }
  return -1;
}

// An id outside the table: the lookup is skipped and the first such position kept.
inline bool out_of_range(int64_t id, int64_t num_rows) {
  return static_cast<uint64_t>(id) >= static_cast<uint64_t>(num_rows);
}

template <int kDim>
int64_t fm_forward_kernel(const float* table, int64_t num_rows, int64_t dim_arg,
                          const int64_t* ids, const float* values, int64_t batch, int64_t slots,
                          float* logits, float* sums) {
  constexpr int kMaxK = kDim ? kDim - 1 : 1;
  int64_t first_bad = INT64_MAX;
#pragma omp parallel num_threads(threads_for(batch * slots)) reduction(min : first_bad)
  {
    const int64_t dim = width<kDim>(dim_arg), k = dim - 1;  // a constant inside the region
    // Per thread: sum_s x v and sum_s (x v)^2, in double: the difference of the two squares
    // cancels, and float32 sums over many fields would lose the digits that remain.
    double fixed_sum[kMaxK], fixed_sum_sq[kMaxK];
    std::vector<double> dynamic_sum(kDim ? 0 : k), dynamic_sum_sq(kDim ? 0 : k);
    double* sum = kDim ? fixed_sum : dynamic_sum.data();
    double* sum_sq = kDim ? fixed_sum_sq : dynamic_sum_sq.data();
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b) {
      std::fill(sum, sum + k, 0.0);
      std::fill(sum_sq, sum_sq + k, 0.0);
      double linear = 0.0;
      for (int64_t s = 0; s < slots; ++s) {
        const int64_t ahead = b * slots + s + kPrefetchDistance;
        if (ahead < batch * slots) prefetch_row(table + ids[ahead] * dim, dim);
        const int64_t id = ids[b * slots + s];
        if (out_of_range(id, num_rows)) {
          first_bad = std::min(first_bad, b * slots + s);
          continue;
        }
        const float x = values ? values[b * slots + s] : 1.0f;
        const float* row = table + id * dim;
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
  return first_bad == INT64_MAX ? -1 : first_bad;
}

template <int kDim>
int64_t fm_backward_update_kernel(float* table, int64_t num_rows, int64_t dim_arg,
                                  const int64_t* ids, const float* values, int64_t batch,
                                  int64_t slots, const float* sums, const float* grad_logits,
                                  const UpdateParams& params, const OptimizerState& state) {
  const int64_t dim = width<kDim>(dim_arg);
  // Summed over a row's occurrences, g x (sums_b - x v) = sum(g x sums_b) - v sum(g x^2): the
  // loop accumulates the first term and the scalar sum(g x^2) (kept in grad[dim]), and the row
  // is read once at the end.
  return update_grouped_rows<kDim>(
      table, num_rows, dim, ids, batch, slots, params, state,
      [=](int64_t b, int64_t s, float* __restrict grad) {
        const int64_t d = width<kDim>(dim), k = d - 1;
        const float x = values ? values[b * slots + s] : 1.0f;
        const float gx = grad_logits[b] * x;
        const float* __restrict sum = sums + b * k;
        grad[0] += gx;
        for (int64_t j = 0; j < k; ++j) grad[1 + j] += gx * sum[j];
        grad[d] += gx * x;
      },
      [=](const float* row, float* grad) {
        const int64_t d = width<kDim>(dim), k = d - 1;
        for (int64_t j = 0; j < k; ++j) grad[1 + j] -= grad[d] * row[1 + j];
      },
      [=](int64_t b, int64_t) { return sums + b * (width<kDim>(dim) - 1); });
}

constexpr int64_t kGatherAhead = 16;  // lookups; enough misses in flight, few wasted at the end

template <int kDim>
int64_t fnn_fields_kernel(const float* table, int64_t num_rows, int64_t dim_arg,
                          const int64_t* ids, const float* values, int64_t batch, int64_t slots,
                          const int64_t* slot_fields, int64_t num_fields, float* z,
                          int64_t z_width) {
  const int64_t lookups = batch * slots;
  int64_t first_bad = INT64_MAX;
#pragma omp parallel for num_threads(threads_for(lookups)) schedule(static) \
    reduction(min : first_bad)
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t dim = width<kDim>(dim_arg), row_width = num_fields * dim;
    float* out = z + b * z_width;
    std::fill(out + row_width, out + z_width, 0.0f);
    if (slot_fields || slots == 0) std::fill(out, out + row_width, 0.0f);
    for (int64_t s = 0; s < slots; ++s) {
      // Random rows miss the cache: ask for a later lookup's row while this one is copied.
      const int64_t ahead = b * slots + s + kGatherAhead;
      if (ahead < lookups) prefetch_row(table + ids[ahead] * dim, dim);
      const int64_t id = ids[b * slots + s];
      if (out_of_range(id, num_rows)) {
        first_bad = std::min(first_bad, b * slots + s);
        continue;
      }
      const float x = values ? values[b * slots + s] : 1.0f;
      const float* row = table + id * dim;
      float* field = out + (slot_fields ? slot_fields[s] : s) * dim;
      if (slot_fields) {
        for (int64_t d = 0; d < dim; ++d) field[d] += x * row[d];
      } else {
        for (int64_t d = 0; d < dim; ++d) field[d] = x * row[d];
      }
    }
  }
  return first_bad == INT64_MAX ? -1 : first_bad;
}

template <int kDim>
int64_t fnn_fields_backward_update_kernel(float* table, int64_t num_rows, int64_t dim_arg,
                                          const int64_t* ids, const float* values, int64_t batch,
                                          int64_t slots, const int64_t* slot_fields,
                                          int64_t num_fields, const float* grad_z,
                                          int64_t grad_width, const UpdateParams& params,
                                          const OptimizerState& state) {
  return update_grouped_rows<kDim>(
      table, num_rows, dim_arg, ids, batch, slots, params, state,
      [=](int64_t b, int64_t s, float* __restrict grad) {
        const int64_t dim = width<kDim>(dim_arg);
        const float x = values ? values[b * slots + s] : 1.0f;
        const int64_t field = slot_fields ? slot_fields[s] : s;
        const float* __restrict g = grad_z + b * grad_width + field * dim;
        for (int64_t d = 0; d < dim; ++d) grad[d] += x * g[d];
      },
      [](const float*, float*) {},
      [=](int64_t b, int64_t s) {
        const int64_t field = slot_fields ? slot_fields[s] : s;
        return grad_z + b * grad_width + field * width<kDim>(dim_arg);
      });
}

// What the kernels index with, checked before they run (the Python side checks first, with
// clearer messages; this keeps a direct call from writing outside its outputs).
void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("fnn_fast CPU kernels: " + what);
}

void check_batch(int64_t num_rows, int64_t dim, int64_t batch, int64_t slots) {
  require(num_rows >= 0 && dim >= 1 && batch >= 0 && slots >= 0,
          "need num_rows >= 0, dim >= 1, batch >= 0 and slots >= 0");
}

// Without slot_fields slot s is field s, so slots must equal num_fields (more would write past
// z's row, fewer would leave fields unwritten), or be 0 (an empty slot_fields arrives as
// nullptr: every field sums nothing); with it, every entry must name a field.
void check_fields(int64_t slots, const int64_t* slot_fields, int64_t num_fields, int64_t dim,
                  int64_t row_width) {
  require(num_fields >= 0, "num_fields must not be negative");
  require(row_width >= num_fields * dim, "z's rows are narrower than num_fields * dim");
  if (!slot_fields) {
    require(slots == num_fields || slots == 0,
            "without slot_fields, slots must equal num_fields");
    return;
  }
  for (int64_t s = 0; s < slots; ++s) {
    if (slot_fields[s] < 0 || slot_fields[s] >= num_fields) {
      require(false, "slot_fields maps a column to field " + std::to_string(slot_fields[s]) +
                         ", outside the " + std::to_string(num_fields) + " fields");
    }
  }
}

}  // namespace

int64_t fm_forward(const float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                   const float* values, int64_t batch, int64_t slots, float* logits,
                   float* sums) {
  check_batch(num_rows, dim, batch, slots);
  int64_t first_bad = -1;
  with_dim(dim, [&](auto d) {
    first_bad = fm_forward_kernel<decltype(d)::value>(table, num_rows, dim, ids, values, batch,
                                                      slots, logits, sums);
  });
  return first_bad;
}

int64_t fm_backward_update(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                           const float* values, int64_t batch, int64_t slots, const float* sums,
                           const float* grad_logits, const UpdateParams& params,
                           const OptimizerState& state) {
  check_batch(num_rows, dim, batch, slots);
  int64_t first_bad = -1;
  with_dim(dim, [&](auto d) {
    first_bad = fm_backward_update_kernel<decltype(d)::value>(
        table, num_rows, dim, ids, values, batch, slots, sums, grad_logits, params, state);
  });
  return first_bad;
}

int64_t fnn_fields(const float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                   const float* values, int64_t batch, int64_t slots, const int64_t* slot_fields,
                   int64_t num_fields, float* z, int64_t z_width) {
  check_batch(num_rows, dim, batch, slots);
  check_fields(slots, slot_fields, num_fields, dim, z_width);
  int64_t first_bad = -1;
  with_dim(dim, [&](auto d) {
    first_bad = fnn_fields_kernel<decltype(d)::value>(table, num_rows, dim, ids, values, batch,
                                                      slots, slot_fields, num_fields, z, z_width);
  });
  return first_bad;
}

int64_t fnn_fields_backward_update(float* table, int64_t num_rows, int64_t dim,
                                   const int64_t* ids, const float* values, int64_t batch,
                                   int64_t slots, const int64_t* slot_fields, int64_t num_fields,
                                   const float* grad_z, int64_t grad_width,
                                   const UpdateParams& params, const OptimizerState& state) {
  check_batch(num_rows, dim, batch, slots);
  check_fields(slots, slot_fields, num_fields, dim, grad_width);
  int64_t first_bad = -1;
  with_dim(dim, [&](auto d) {
    first_bad = fnn_fields_backward_update_kernel<decltype(d)::value>(
        table, num_rows, dim, ids, values, batch, slots, slot_fields, num_fields, grad_z,
        grad_width, params, state);
  });
  return first_bad;
}

}  // namespace fnn_fast::cpu

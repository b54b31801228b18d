// The fused backward kernels: the gradient of every row present in the batch, summed over its
// occurrences, with the optimizer applied in place. No float atomics, no gradient the size of
// the table: deterministic whatever the scheduling.
//
//   1. prepare: 32-bit keys from the ids, positions 0 .. n - 1.
//   2. cub radix sort of (row, position) pairs on only the bits num_rows needs. The sort is
//      stable, so a row's positions stay in (b, s) order.
//   3. cub select: the start of every run of equal rows.
//   4. short runs: a group of lanes per run (a warp or a fraction of one, common.cuh) sums the
//      run's gradient in order and updates the row. A run longer than long_run is cut into
//      segments of long_run occurrences, listed for the next two kernels.
//   5. segments: a group per segment writes the segment's partial gradient.
//   6. long runs: a block per long run sums its segments' partials in a fixed order and
//      updates the row. A hot row in every sample is thus spread over many multiprocessors.
#include <cub/device/device_radix_sort.cuh>
#include <cub/device/device_select.cuh>

#include <algorithm>

#include "cuda/common.cuh"

namespace fnn_fast::cuda {

namespace {

constexpr int kThreads = 256;
using Key = uint32_t;  // rows below 2^32: half the sort traffic of 64-bit keys

// Counters in the workspace, zeroed by the prepare kernel.
enum Counter { kRuns = 0, kLongRuns = 1, kSegments = 2, kCounters = 3 };

// Occurrences whose loads a lane issues before summing any: more when a lane holds few columns.
template <class Cols>
struct OccurrencesInFlight {
  static constexpr int value = Cols::kPerLane <= 2 ? 8 : 4;
};

// --- Where each occurrence's gradient comes from -----------------------------------------------

// FM (fm.h): occurrence (b, s) contributes g_b x [1, sums_b] to its row's gradient and g_b x^2
// to the scalar that, times -v, completes it once the run is summed.
template <class Cols>
struct FmGradient {
  using Columns = Cols;
  static constexpr int kN = Cols::kPerLane;
  struct Item {
    float gx, x, term[kN];
  };
  const float* sums;         // [batch, dim - 1]
  const float* grad_logits;  // [batch]
  const float* values;       // [batch, slots] or nullptr
  int slots, dim;

  __device__ __forceinline__ void load(int32_t position, const Group& g, Item& item) const {
    const int32_t b = static_cast<int32_t>(static_cast<uint32_t>(position) /
                                           static_cast<uint32_t>(slots));
    item.x = values ? values[position] : 1.0f;
    item.gx = grad_logits[b] * item.x;
    const float* sample_sums = sums + static_cast<int64_t>(b) * (dim - 1);
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const int col = Cols::column(i, g);
      item.term[i] = col == 0 ? 1.0f : col < dim ? sample_sums[col - 1] : 0.0f;
    }
  }
  __device__ __forceinline__ static void add(const Item& item, float (&acc)[kN], float& row_term) {
#pragma unroll
    for (int i = 0; i < kN; ++i) acc[i] += item.gx * item.term[i];
    row_term += item.gx * item.x;
  }
};

// FNN input: occurrence (b, s) contributes x grad_z[b, field(s) block].
template <class Cols>
struct FnnGradient {
  using Columns = Cols;
  static constexpr int kN = Cols::kPerLane;
  struct Item {
    float x, term[kN];
  };
  const float* grad_z;         // [batch, num_fields * dim]
  const float* values;         // [batch, slots] or nullptr
  const int64_t* slot_fields;  // [slots] or nullptr (slot s is field s)
  int slots, num_fields, dim;

  __device__ __forceinline__ void load(int32_t position, const Group& g, Item& item) const {
    const uint32_t b = static_cast<uint32_t>(position) / static_cast<uint32_t>(slots);
    const int32_t s = position - static_cast<int32_t>(b * static_cast<uint32_t>(slots));
    const int64_t field = slot_fields ? slot_fields[s] : s;
    item.x = values ? values[position] : 1.0f;
    Cols::load(grad_z + (static_cast<int64_t>(b) * num_fields + field) * dim, dim, g, item.term);
  }
  __device__ __forceinline__ static void add(const Item& item, float (&acc)[kN], float&) {
#pragma unroll
    for (int i = 0; i < kN; ++i) acc[i] += item.x * item.term[i];
  }
};

// Sums the gradient of the occurrences positions[begin .. end), in order.
template <class Source>
__device__ __forceinline__ void accumulate(const Source& source,
                                           const int32_t* __restrict__ positions, int32_t begin,
                                           int32_t end, const Group& g,
                                           float (&acc)[Source::kN], float& row_term) {
  constexpr int kAhead = OccurrencesInFlight<typename Source::Columns>::value;
  int32_t i = begin;
  for (; i + kAhead <= end; i += kAhead) {
    int32_t position[kAhead];
    typename Source::Item item[kAhead];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) position[u] = positions[i + u];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) source.load(position[u], g, item[u]);
#pragma unroll
    for (int u = 0; u < kAhead; ++u) Source::add(item[u], acc, row_term);
  }
  for (; i < end; ++i) {
    typename Source::Item item;
    source.load(positions[i], g, item);
    Source::add(item, acc, row_term);
  }
}

// --- 1 and 3: keys, positions, run starts ------------------------------------------------------

__global__ void prepare_sort(const int64_t* __restrict__ ids, int32_t n, Key* __restrict__ keys,
                             int32_t* __restrict__ positions, int32_t* __restrict__ counters) {
  const int64_t first = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (first < kCounters) counters[first] = 0;
  for (int64_t i = first; i < n; i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    keys[i] = static_cast<Key>(ids[i]);
    positions[i] = static_cast<int32_t>(i);
  }
}

// Select's predicate over the indices 0 .. n - 1: does a run of equal sorted keys start here?
struct IsRunStart {
  const Key* sorted_keys;
  __device__ __forceinline__ bool operator()(const int32_t& i) const {
    return i == 0 || sorted_keys[i] != sorted_keys[i - 1];
  }
};

// --- 4, 5, 6: the runs ---------------------------------------------------------------------------

// Where run r ends: the next run's start, or n for the last one.
__device__ __forceinline__ int32_t run_end(const int32_t* run_starts, int32_t run, int32_t runs,
                                           int32_t n) {
  return run + 1 < runs ? run_starts[run + 1] : n;
}

__device__ __forceinline__ int32_t segments_of(int32_t length, int32_t long_run) {
  return static_cast<int32_t>((static_cast<int64_t>(length) + long_run - 1) / long_run);
}

template <class Source>
__global__ void __launch_bounds__(kThreads)
    update_short_runs(RowUpdate update, float* __restrict__ table, int dim, Source source,
                      const Key* __restrict__ sorted_keys,
                      const int32_t* __restrict__ sorted_positions,
                      const int32_t* __restrict__ run_starts, int32_t n, int32_t long_run,
                      int32_t* __restrict__ counters, int2* __restrict__ long_runs,
                      int2* __restrict__ segments, int group) {
  const Group g = make_group(group);
  const int32_t runs = counters[kRuns];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kThreads / group);
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * (kThreads / group) + threadIdx.x / group;
       r < runs; r += stride) {
    const int32_t run = static_cast<int32_t>(r);
    const int32_t begin = run_starts[run];
    const int32_t end = run_end(run_starts, run, runs, n);
    if (end - begin > long_run) {  // list its segments: (run, segment index)
      const int32_t pieces = segments_of(end - begin, long_run);
      int32_t first = 0;
      if (g.lane == 0) {
        first = atomicAdd(&counters[kSegments], pieces);
        long_runs[atomicAdd(&counters[kLongRuns], 1)] = make_int2(run, first);
      }
      first = __shfl_sync(g.mask, first, 0, g.size);
      for (int32_t p = g.lane; p < pieces; p += g.size) segments[first + p] = make_int2(run, p);
      continue;
    }
    const int64_t row = sorted_keys[begin];
    RowState<typename Source::Columns> state;
    load_row_state(update, table, row, dim, g, state);
    float acc[Source::kN], row_term = 0.0f;
#pragma unroll
    for (int i = 0; i < Source::kN; ++i) acc[i] = 0.0f;
    accumulate(source, sorted_positions, begin, end, g, acc, row_term);
    update_row(update, table, row, dim, g, state, acc, row_term);
  }
}

// Partial gradient of each segment: partials[j] = [columns 0 .. dim - 1, row term].
template <class Source>
__global__ void __launch_bounds__(kThreads)
    sum_segments(Source source, int dim, const int32_t* __restrict__ sorted_positions,
                 const int32_t* __restrict__ run_starts, int32_t n, int32_t long_run,
                 const int32_t* __restrict__ counters, const int2* __restrict__ segments,
                 float* __restrict__ partials, int group) {
  using Cols = typename Source::Columns;
  const Group g = make_group(group);
  const int32_t runs = counters[kRuns];
  const int32_t count = counters[kSegments];
  const int64_t stride = static_cast<int64_t>(gridDim.x) * (kThreads / group);
  for (int64_t j = static_cast<int64_t>(blockIdx.x) * (kThreads / group) + threadIdx.x / group;
       j < count; j += stride) {
    const int2 segment = segments[j];  // (run, segment index)
    const int32_t begin = run_starts[segment.x] + segment.y * long_run;
    const int32_t end = static_cast<int32_t>(
        min(static_cast<int64_t>(begin) + long_run,
            static_cast<int64_t>(run_end(run_starts, segment.x, runs, n))));
    float acc[Source::kN], row_term = 0.0f;
#pragma unroll
    for (int i = 0; i < Source::kN; ++i) acc[i] = 0.0f;
    accumulate(source, sorted_positions, begin, end, g, acc, row_term);
    float* out = partials + j * (dim + 1);
#pragma unroll
    for (int i = 0; i < Source::kN; ++i) {
      const int col = Cols::column(i, g);
      if (col < dim) out[col] = acc[i];
    }
    if (g.lane == 0) out[dim] = row_term;
  }
}

// A block per long run: its slices of G lanes sum every slices-th partial, then one thread per
// column adds the slices' sums in slice order (fixed, so the result is deterministic), and the
// first slice updates the row.
template <class Cols>
__global__ void __launch_bounds__(kThreads)
    update_long_runs(RowUpdate update, float* __restrict__ table, int dim,
                     const Key* __restrict__ sorted_keys, const int32_t* __restrict__ run_starts,
                     int32_t n, int32_t long_run, const int32_t* __restrict__ counters,
                     const int2* __restrict__ long_runs, const float* __restrict__ partials,
                     int group) {
  constexpr int kN = Cols::kPerLane;
  extern __shared__ float shared[];  // [slices + 1][dim + 1]: each slice's sum, then the total
  const Group g = make_group(group);
  const int slices = kThreads / group;
  const int slice = threadIdx.x / group;
  const int width = dim + 1;
  float* total = shared + slices * width;
  const int32_t runs = counters[kRuns];
  const int32_t count = counters[kLongRuns];
  for (int32_t l = blockIdx.x; l < count; l += gridDim.x) {
    const int2 entry = long_runs[l];  // (run, its first segment)
    const int32_t begin = run_starts[entry.x];
    const int32_t pieces = segments_of(run_end(run_starts, entry.x, runs, n) - begin, long_run);
    float acc[kN], row_term = 0.0f;
#pragma unroll
    for (int i = 0; i < kN; ++i) acc[i] = 0.0f;
#pragma unroll 4
    for (int32_t p = slice; p < pieces; p += slices) {  // unrolled: several loads in flight
      const float* part = partials + static_cast<int64_t>(entry.y + p) * width;
#pragma unroll
      for (int i = 0; i < kN; ++i) {
        const int col = Cols::column(i, g);
        if (col < dim) acc[i] += part[col];
      }
      row_term += part[dim];
    }
    float* mine = shared + slice * width;
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const int col = Cols::column(i, g);
      if (col < dim) mine[col] = acc[i];
    }
    if (g.lane == 0) mine[dim] = row_term;
    __syncthreads();
    for (int c = threadIdx.x; c < width; c += kThreads) {
      float sum = 0.0f;
      for (int s = 0; s < slices; ++s) sum += shared[s * width + c];
      total[c] = sum;
    }
    __syncthreads();
    if (slice == 0) {
      const int64_t row = sorted_keys[begin];
      RowState<Cols> state;
      load_row_state(update, table, row, dim, g, state);
      float grad[kN];
#pragma unroll
      for (int i = 0; i < kN; ++i) {
        const int col = Cols::column(i, g);
        grad[i] = col < dim ? total[col] : 0.0f;
      }
      update_row(update, table, row, dim, g, state, grad, total[dim]);
    }
    __syncthreads();  // before the next run overwrites shared memory
  }
}

// --- Workspace ---------------------------------------------------------------------------------

int key_bits(int64_t num_rows) {
  int bits = 1;  // cub wants a non-empty bit range
  while (bits < 32 && (int64_t{1} << bits) < num_rows) ++bits;
  return bits;
}

struct Workspace {
  Key* keys;
  Key* sorted_keys;
  int32_t* positions;
  int32_t* sorted_positions;
  int32_t* run_starts;
  int32_t* counters;
  int2* long_runs;
  int2* segments;
  float* partials;
  void* temp;
  std::size_t temp_bytes;
  std::size_t total;
  int32_t max_long_runs, max_segments;
};

// Cuts `base` (nullptr: only measure) into the arrays the kernels need, each 256-byte aligned.
Workspace carve(char* base, int32_t n, int64_t dim, int32_t long_run, std::size_t temp_bytes) {
  std::size_t offset = 0;
  auto take = [&](std::size_t bytes) -> void* {
    offset = (offset + 255) / 256 * 256;
    void* p = base ? base + offset : nullptr;
    offset += bytes;
    return p;
  };
  Workspace w{};
  // A long run has more than long_run occurrences and at most length / long_run + 1 segments,
  // so there are at most n / (long_run + 1) long runs and 2 n / long_run segments.
  w.max_long_runs = n / (long_run + 1) + 1;
  w.max_segments =
      static_cast<int32_t>(std::min<int64_t>(2 * static_cast<int64_t>(n) / long_run + 1, n));
  w.keys = static_cast<Key*>(take(sizeof(Key) * n));
  w.sorted_keys = static_cast<Key*>(take(sizeof(Key) * n));
  w.positions = static_cast<int32_t*>(take(sizeof(int32_t) * n));
  w.sorted_positions = static_cast<int32_t*>(take(sizeof(int32_t) * n));
  w.run_starts = static_cast<int32_t*>(take(sizeof(int32_t) * n));
  w.counters = static_cast<int32_t*>(take(sizeof(int32_t) * kCounters));
  w.long_runs = static_cast<int2*>(take(sizeof(int2) * w.max_long_runs));
  w.segments = static_cast<int2*>(take(sizeof(int2) * w.max_segments));
  w.partials = static_cast<float*>(take(sizeof(float) * w.max_segments * (dim + 1)));
  w.temp = take(temp_bytes);
  w.temp_bytes = temp_bytes;
  w.total = offset;
  return w;
}

// cub's scratch space for the sort and the select (the same memory serves both, in turn).
std::size_t cub_temp_bytes(int32_t n, int bits, cudaStream_t stream) {
  std::size_t sort_bytes = 0, select_bytes = 0;
  check(cub::DeviceRadixSort::SortPairs(nullptr, sort_bytes, static_cast<const Key*>(nullptr),
                                        static_cast<Key*>(nullptr),
                                        static_cast<const int32_t*>(nullptr),
                                        static_cast<int32_t*>(nullptr), n, 0, bits, stream),
        "radix sort (size query)");
  check(cub::DeviceSelect::If(nullptr, select_bytes, static_cast<const int32_t*>(nullptr),
                              static_cast<int32_t*>(nullptr), static_cast<int32_t*>(nullptr), n,
                              IsRunStart{nullptr}, stream),
        "select (size query)");
  return std::max(sort_bytes, select_bytes);
}

void check_sizes(int64_t items, int64_t num_rows, int64_t long_run) {
  if (items >= (int64_t{1} << 31)) {
    throw std::invalid_argument("fnn_fast CUDA: batch * slots must be below 2^31");
  }
  if (num_rows > (int64_t{1} << 32)) {
    throw std::invalid_argument("fnn_fast CUDA: tables above 2^32 rows are not supported");
  }
  if (long_run < 1) throw std::invalid_argument("fnn_fast CUDA: long_run must be positive");
}

int32_t clamp_long_run(int64_t long_run, int64_t items) {
  return static_cast<int32_t>(std::min<int64_t>(long_run, std::max<int64_t>(items, 1)));
}

Workspace plan_workspace(char* base, int64_t items, int64_t num_rows, int64_t dim,
                         int64_t long_run, cudaStream_t stream) {
  const int32_t n = static_cast<int32_t>(items);
  return carve(base, n, dim, clamp_long_run(long_run, items),
               cub_temp_bytes(n, key_bits(num_rows), stream));
}

// Steps 1 to 6 for one gradient source.
template <class Source>
void backward_update(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                     int64_t items, const Source& source, const RowUpdate& update,
                     int group, void* workspace, std::size_t workspace_bytes, int64_t long_run,
                     const Launch& launch) {
  const int multiprocessors = use_device(launch);
  cudaStream_t stream = stream_of(launch);
  const int32_t n = static_cast<int32_t>(items);
  const int32_t segment = clamp_long_run(long_run, items);
  const int bits = key_bits(num_rows);
  const Workspace w =
      plan_workspace(static_cast<char*>(workspace), items, num_rows, dim, long_run, stream);
  if (workspace == nullptr || workspace_bytes < w.total) {
    throw std::invalid_argument("fnn_fast CUDA: the backward workspace is too small");
  }
  const int idim = static_cast<int>(dim);
  const int groups_per_block = kThreads / group;
  // Enough blocks for the work, at most a few per multiprocessor: the kernels loop over the rest.
  auto persistent_blocks = [&](int64_t work, int per_block, int per_multiprocessor) {
    const int64_t wanted = (work + per_block - 1) / per_block;
    const int64_t most = int64_t{multiprocessors} * per_multiprocessor;
    return static_cast<unsigned>(std::max<int64_t>(1, std::min(wanted, most)));
  };

  prepare_sort<<<persistent_blocks(n, kThreads, 8), kThreads, 0, stream>>>(
      ids, n, w.keys, w.positions, w.counters);
  check_launch("prepare_sort");
  std::size_t temp_bytes = w.temp_bytes;
  check(cub::DeviceRadixSort::SortPairs(w.temp, temp_bytes, w.keys, w.sorted_keys, w.positions,
                                        w.sorted_positions, n, 0, bits, stream),
        "radix sort");
  // The sort leaves its inputs alone: `positions` still holds 0 .. n - 1, the indices to select.
  temp_bytes = w.temp_bytes;
  check(cub::DeviceSelect::If(w.temp, temp_bytes, w.positions, w.run_starts,
                              w.counters + kRuns, n, IsRunStart{w.sorted_keys}, stream),
        "select run starts");
  update_short_runs<Source><<<persistent_blocks(n, groups_per_block, 8), kThreads, 0, stream>>>(
      update, table, idim, source, w.sorted_keys, w.sorted_positions, w.run_starts, n, segment,
      w.counters, w.long_runs, w.segments, group);
  check_launch("update_short_runs");
  sum_segments<Source>
      <<<persistent_blocks(w.max_segments, groups_per_block, 8), kThreads, 0, stream>>>(
          source, idim, w.sorted_positions, w.run_starts, n, segment, w.counters, w.segments,
          w.partials, group);
  check_launch("sum_segments");
  const std::size_t shared_bytes = sizeof(float) * (groups_per_block + 1) * (dim + 1);
  update_long_runs<typename Source::Columns>
      <<<persistent_blocks(w.max_long_runs, 1, 4), kThreads, shared_bytes, stream>>>(
          update, table, idim, w.sorted_keys, w.run_starts, n, segment, w.counters, w.long_runs,
          w.partials, group);
  check_launch("update_long_runs");
}

RowUpdate row_update(const UpdateParams& params, const OptimizerState& state) {
  return {params, state, params.rule == Rule::kAdam ? adam_step_size(params) : 0.0f};
}

// VEC = 4 needs every row the kernels read or write in 16-byte steps to be 16-byte aligned.
bool rows_aligned(const float* table, const UpdateParams& params, const OptimizerState& state) {
  const bool state1_rows = params.rule == Rule::kAdagrad || params.rule == Rule::kAdam;
  return aligned16(table) && (!state1_rows || aligned16(state.state1)) &&
         (params.rule != Rule::kAdam || aligned16(state.state2));
}

}  // namespace

std::size_t backward_workspace_bytes(int64_t items, int64_t num_rows, int64_t dim,
                                     int64_t long_run, Launch launch) {
  check_sizes(items, num_rows, long_run);
  if (items == 0) return 0;
  use_device(launch);
  return plan_workspace(nullptr, items, num_rows, dim, long_run, stream_of(launch)).total;
}

void fm_backward_update(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                        const float* values, int64_t batch, int64_t slots, const float* sums,
                        const float* grad_logits, const UpdateParams& params,
                        const OptimizerState& state, void* workspace,
                        std::size_t workspace_bytes, int64_t long_run, Launch launch) {
  const ColumnPlan plan =
      plan_columns(dim, rows_aligned(table, params, state), launch.row_lanes);
  check_sizes(batch * slots, num_rows, long_run);
  if (batch * slots == 0) return;
  with_columns(plan, [&](auto cols) {
    using Source = FmGradient<decltype(cols)>;
    const Source source{sums, grad_logits, values, static_cast<int>(slots),
                        static_cast<int>(dim)};
    backward_update(table, num_rows, dim, ids, batch * slots, source, row_update(params, state),
                    plan.group, workspace, workspace_bytes, long_run, launch);
  });
}

void fnn_fields_backward_update(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                                const float* values, int64_t batch, int64_t slots,
                                const int64_t* slot_fields, int64_t num_fields,
                                const float* grad_z, const UpdateParams& params,
                                const OptimizerState& state, void* workspace,
                                std::size_t workspace_bytes, int64_t long_run, Launch launch) {
  const bool aligned = rows_aligned(table, params, state) && aligned16(grad_z);
  const ColumnPlan plan = plan_columns(dim, aligned, launch.row_lanes);
  check_sizes(batch * slots, num_rows, long_run);
  if (batch * slots == 0) return;
  with_columns(plan, [&](auto cols) {
    using Source = FnnGradient<decltype(cols)>;
    const Source source{grad_z, values, slot_fields, static_cast<int>(slots),
                        static_cast<int>(num_fields), static_cast<int>(dim)};
    backward_update(table, num_rows, dim, ids, batch * slots, source, row_update(params, state),
                    plan.group, workspace, workspace_bytes, long_run, launch);
  });
}

}  // namespace fnn_fast::cuda

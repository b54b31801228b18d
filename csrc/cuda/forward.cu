// The fused forward kernels: lookup + FM interaction, and the FNN's gathered input. A group of
// lanes (common.cuh) per sample walks its slots, so each row is read by consecutive lanes and
// the loads of several slots are in flight before the first is used.
#include "cuda/common.cuh"

namespace fnn_fast::cuda {

namespace {

constexpr int kThreads = 256;

// Slots whose rows a lane loads before using any: enough independent loads in flight to cover
// the latency of rows scattered over a table far larger than L2, within a modest register count.
template <class Cols>
struct SlotsInFlight {
  static constexpr int value = Cols::kPerLane <= 2 ? 8 : 4;
};

// One group per sample. In double: the pairwise term is a difference of two sums of squares
// that cancel, and a float32 sum over many fields would lose the digits that remain (as on CPU).
template <class Cols>
__global__ void __launch_bounds__(kThreads)
    fm_forward_kernel(const float* __restrict__ table, int dim, const int64_t* __restrict__ ids,
                      const float* __restrict__ values, int64_t batch, int slots,
                      float* __restrict__ logits, float* __restrict__ sums, int group) {
  constexpr int kN = Cols::kPerLane;
  constexpr int kAhead = SlotsInFlight<Cols>::value;
  const Group g = make_group(group);
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (kThreads / group) + threadIdx.x / group;
  if (b >= batch) return;  // the whole group leaves together
  const int64_t* sample_ids = ids + b * slots;
  const float* sample_values = values ? values + b * slots : nullptr;

  double linear = 0.0, sum[kN], sum_sq[kN];
#pragma unroll
  for (int i = 0; i < kN; ++i) sum[i] = sum_sq[i] = 0.0;
  auto accumulate = [&](float x, const float(&row)[kN]) {
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const float xv = x * row[i];
      if (Cols::column(i, g) == 0) {
        linear += xv;
      } else {
        sum[i] += xv;
        sum_sq[i] += static_cast<double>(xv) * xv;
      }
    }
  };

  int s = 0;
  for (; s + kAhead <= slots; s += kAhead) {
    int64_t id[kAhead];
    float x[kAhead], row[kAhead][kN];
#pragma unroll
    for (int u = 0; u < kAhead; ++u) {
      id[u] = sample_ids[s + u];
      x[u] = sample_values ? sample_values[s + u] : 1.0f;
    }
#pragma unroll
    for (int u = 0; u < kAhead; ++u) Cols::load(table + id[u] * dim, dim, g, row[u]);
#pragma unroll
    for (int u = 0; u < kAhead; ++u) accumulate(x[u], row[u]);
  }
  for (; s < slots; ++s) {
    float row[kN];
    Cols::load(table + sample_ids[s] * dim, dim, g, row);
    accumulate(sample_values ? sample_values[s] : 1.0f, row);
  }

  double pair = 0.0;
#pragma unroll
  for (int i = 0; i < kN; ++i) pair += sum[i] * sum[i] - sum_sq[i];  // zero at column 0
  linear = group_sum(linear, g);
  pair = group_sum(pair, g);
  if (g.lane == 0) logits[b] = static_cast<float>(linear + 0.5 * pair);
  if (sums) {
    float* out = sums + b * (dim - 1);
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      const int col = Cols::column(i, g);
      if (col >= 1 && col < dim) out[col - 1] = static_cast<float>(sum[i]);
    }
  }
}

// One group per sample: z[b, f * dim ...] = sum over the slots of field f of x row.
template <class Cols>
__global__ void __launch_bounds__(kThreads)
    fnn_fields_kernel(const float* __restrict__ table, int dim, const int64_t* __restrict__ ids,
                      const float* __restrict__ values, int64_t batch, int slots,
                      const int64_t* __restrict__ field_slots,
                      const int64_t* __restrict__ field_offsets, int num_fields,
                      float* __restrict__ z, int group) {
  constexpr int kN = Cols::kPerLane;
  constexpr int kAhead = SlotsInFlight<Cols>::value;
  const Group g = make_group(group);
  const int64_t b = static_cast<int64_t>(blockIdx.x) * (kThreads / group) + threadIdx.x / group;
  if (b >= batch) return;
  const int64_t* sample_ids = ids + b * slots;
  const float* sample_values = values ? values + b * slots : nullptr;
  float* out = z + b * num_fields * dim;

  if (field_offsets == nullptr) {  // slot s is field s: a scaled copy of each row
    int s = 0;
    for (; s + kAhead <= slots; s += kAhead) {
      int64_t id[kAhead];
      float x[kAhead], row[kAhead][kN];
#pragma unroll
      for (int u = 0; u < kAhead; ++u) {
        id[u] = sample_ids[s + u];
        x[u] = sample_values ? sample_values[s + u] : 1.0f;
      }
#pragma unroll
      for (int u = 0; u < kAhead; ++u) Cols::load(table + id[u] * dim, dim, g, row[u]);
#pragma unroll
      for (int u = 0; u < kAhead; ++u) {
#pragma unroll
        for (int i = 0; i < kN; ++i) row[u][i] *= x[u];
        Cols::store(out + static_cast<int64_t>(s + u) * dim, dim, g, row[u]);
      }
    }
    for (; s < slots; ++s) {
      float row[kN];
      Cols::load(table + sample_ids[s] * dim, dim, g, row);
      const float x = sample_values ? sample_values[s] : 1.0f;
#pragma unroll
      for (int i = 0; i < kN; ++i) row[i] *= x;
      Cols::store(out + static_cast<int64_t>(s) * dim, dim, g, row);
    }
    return;
  }

  // Multi-valued fields: sum the slots of each field in slot order (as on CPU).
  for (int f = 0; f < num_fields; ++f) {
    float acc[kN];
#pragma unroll
    for (int i = 0; i < kN; ++i) acc[i] = 0.0f;
    const int64_t end = field_offsets[f + 1];
    for (int64_t k = field_offsets[f]; k < end; ++k) {
      const int64_t s = field_slots[k];
      float row[kN];
      Cols::load(table + sample_ids[s] * dim, dim, g, row);
      const float x = sample_values ? sample_values[s] : 1.0f;
#pragma unroll
      for (int i = 0; i < kN; ++i) acc[i] += x * row[i];
    }
    Cols::store(out + static_cast<int64_t>(f) * dim, dim, g, acc);
  }
}

}  // namespace

int device_count() {
  int count = 0;
  // No driver or no GPU: the runtime says so with an error, which here just means none.
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear it, so it is not reported by a later check
    return 0;
  }
  return count;
}

int use_device(const Launch& launch) {
  constexpr int kMaxDevices = 64;
  static int multiprocessors[kMaxDevices] = {};
  if (launch.device < 0 || launch.device >= kMaxDevices) {
    throw std::invalid_argument("fnn_fast CUDA: device index out of range");
  }
  check(cudaSetDevice(launch.device), "cudaSetDevice");
  int& count = multiprocessors[launch.device];
  if (count == 0) {
    check(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, launch.device),
          "cudaDeviceGetAttribute");
  }
  return count;
}

void fm_forward(const float* table, int64_t dim, const int64_t* ids, const float* values,
                int64_t batch, int64_t slots, float* logits, float* sums, Launch launch) {
  const ColumnPlan plan = plan_columns(dim, aligned16(table), launch.row_lanes);
  if (batch == 0) return;
  use_device(launch);
  const int64_t blocks = (batch + kThreads / plan.group - 1) / (kThreads / plan.group);
  with_columns(plan, [&](auto cols) {
    fm_forward_kernel<decltype(cols)>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream_of(launch)>>>(
        table, static_cast<int>(dim), ids, values, batch, static_cast<int>(slots), logits, sums,
        plan.group);
  });
  check_launch("fm_forward");
}

void fnn_fields(const float* table, int64_t dim, const int64_t* ids, const float* values,
                int64_t batch, int64_t slots, const int64_t* field_slots,
                const int64_t* field_offsets, int64_t num_fields, float* z, Launch launch) {
  const ColumnPlan plan =
      plan_columns(dim, aligned16(table) && aligned16(z), launch.row_lanes);
  if (batch == 0) return;
  use_device(launch);
  const int64_t blocks = (batch + kThreads / plan.group - 1) / (kThreads / plan.group);
  with_columns(plan, [&](auto cols) {
    fnn_fields_kernel<decltype(cols)>
        <<<static_cast<unsigned>(blocks), kThreads, 0, stream_of(launch)>>>(
        table, static_cast<int>(dim), ids, values, batch, static_cast<int>(slots), field_slots,
        field_offsets, static_cast<int>(num_fields), z, plan.group);
  });
  check_launch("fnn_fields");
}

}  // namespace fnn_fast::cuda

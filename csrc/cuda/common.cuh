// What the CUDA kernels share: error checks, the lane-group layout of a row's columns, vector
// loads, group reductions, and the row update (the rules of row_update.h spread over a group).
//
// Layout. A row of dim floats is handled by a group of G lanes, G a power of two of at most 32
// (so a group never straddles a warp). Lane l of the group holds the columns
//     (c * G + l) * VEC + v,   c < CHUNKS, v < VEC,
// in registers, VEC = 4 (one 16-byte load) when dim is a multiple of 4 and the rows are 16-byte
// aligned, else 1. Consecutive lanes read consecutive columns, so a group's loads of one row
// coalesce. Columns at or past dim hold zeros and are never stored.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/kernels.h"
#include "row_update.h"

namespace fnn_fast::cuda {

inline void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) {
    throw std::runtime_error(std::string("fnn_fast CUDA: ") + what + ": " +
                             cudaGetErrorString(status));
  }
}

// Kernel launches report bad configurations through the last error.
inline void check_launch(const char* what) { check(cudaGetLastError(), what); }

inline cudaStream_t stream_of(const Launch& launch) {
  return static_cast<cudaStream_t>(launch.stream);
}

// Makes the launch's device current for this thread (torch may be on another) and returns
// its number of multiprocessors, which sizes the persistent grids.
int use_device(const Launch& launch);

inline bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

// --- Lane groups -------------------------------------------------------------------------------

struct Group {
  int lane;       // 0 .. size - 1
  int size;       // G
  unsigned mask;  // the group's lanes within the warp, for the *_sync intrinsics
};

__device__ __forceinline__ Group make_group(int size) {
  const int warp_lane = static_cast<int>(threadIdx.x & 31u);
  Group g;
  g.size = size;
  g.lane = warp_lane & (size - 1);
  g.mask = size == 32 ? 0xffffffffu : ((1u << size) - 1u) << (warp_lane & ~(size - 1));
  return g;
}

// Sum over the group's lanes; every lane gets the total. Only the group's lanes take part, so
// groups of one warp may be at different points of their loops.
template <class T>
__device__ __forceinline__ T group_sum(T value, const Group& g) {
  for (int offset = g.size / 2; offset > 0; offset /= 2) {
    value += __shfl_xor_sync(g.mask, value, offset);
  }
  return value;
}

// --- A row's columns in registers --------------------------------------------------------------

template <int VEC, int CHUNKS>
struct Columns {
  static constexpr int kVec = VEC;
  static constexpr int kChunks = CHUNKS;
  static constexpr int kPerLane = VEC * CHUNKS;

  // The column held in register i (i = c * VEC + v) of lane g.lane.
  __device__ __forceinline__ static int column(int i, const Group& g) {
    return ((i / VEC) * g.size + g.lane) * VEC + i % VEC;
  }

  // Loads the lane's columns of row (zeros past dim). With VEC = 4, row must be 16-byte aligned.
  __device__ __forceinline__ static void load(const float* row, int dim, const Group& g,
                                              float (&out)[kPerLane]) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int col = (c * g.size + g.lane) * VEC;
      if constexpr (VEC == 4) {
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (col < dim) v = *reinterpret_cast<const float4*>(row + col);
        out[c * 4 + 0] = v.x;
        out[c * 4 + 1] = v.y;
        out[c * 4 + 2] = v.z;
        out[c * 4 + 3] = v.w;
      } else {
        out[c] = col < dim ? row[col] : 0.0f;
      }
    }
  }

  __device__ __forceinline__ static void store(float* row, int dim, const Group& g,
                                               const float (&in)[kPerLane]) {
#pragma unroll
    for (int c = 0; c < CHUNKS; ++c) {
      const int col = (c * g.size + g.lane) * VEC;
      if (col >= dim) continue;
      if constexpr (VEC == 4) {
        *reinterpret_cast<float4*>(row + col) =
            make_float4(in[c * 4 + 0], in[c * 4 + 1], in[c * 4 + 2], in[c * 4 + 3]);
      } else {
        row[col] = in[c];
      }
    }
  }
};

// --- Choosing the layout on the host -----------------------------------------------------------

struct ColumnPlan {
  bool vec4;
  int group;   // G
  int chunks;  // 1, 2 or 4
};

// By default a lane holds one 16-byte vector of a row, or two scalar columns: for the narrow rows
// of CTR models (K = 10: 11 floats) a warp then works on four rows at once rather than two, and
// more rows in flight hide more of the latency of their scattered loads. row_lanes > 0 sets the
// lanes per row instead (rounded down to a power of two), for tuning.
inline ColumnPlan plan_columns(int64_t dim, bool vec4_allowed, int row_lanes) {
  const bool vec4 = vec4_allowed && dim % 4 == 0;
  const int64_t lanes = vec4 ? dim / 4 : dim;
  const int64_t wanted = row_lanes > 0 ? row_lanes : vec4 ? lanes : (lanes + 1) / 2;
  int group = 1;
  while (group < 32 && group * 2 <= wanted) group *= 2;
  if (row_lanes <= 0 && group < wanted && group < 32) group *= 2;  // round the default up
  const int64_t chunks = (lanes + group - 1) / group;
  if (dim < 1 || chunks > 4) {
    throw std::invalid_argument(
        "fnn_fast CUDA: rows of " + std::to_string(dim) + " floats are not supported with " +
        std::to_string(group) + " lanes a row: a lane holds at most 4 columns, or 4 vectors of "
        "4 floats when rows are a multiple of 4 floats and 16-byte aligned");
  }
  return {vec4, group, chunks <= 1 ? 1 : chunks <= 2 ? 2 : 4};
}

// Calls f(Columns<VEC, CHUNKS>{}) for the plan's instantiation.
template <class F>
void with_columns(const ColumnPlan& plan, F&& f) {
  if (plan.vec4) {
    if (plan.chunks == 1) return f(Columns<4, 1>{});
    if (plan.chunks == 2) return f(Columns<4, 2>{});
    return f(Columns<4, 4>{});
  }
  if (plan.chunks == 1) return f(Columns<1, 1>{});
  if (plan.chunks == 2) return f(Columns<1, 2>{});
  return f(Columns<1, 4>{});
}

// --- The row update, a group per row -----------------------------------------------------------

struct RowUpdate {
  UpdateParams params;
  OptimizerState state;
  float adam_step_size;  // computed once on the host
};

// A row and its optimizer state as the lanes of a group hold them: loaded before the row's
// gradient is summed, so these loads overlap the gradient's instead of following them.
template <class Cols>
struct RowState {
  float w[Cols::kPerLane];
  float s1[Cols::kPerLane];  // Adagrad's sums, Adam's first moment
  float s2[Cols::kPerLane];  // Adam's second moment
  float row_sum;             // row-wise Adagrad's state (lane 0)
};

template <class Cols>
__device__ __forceinline__ void load_row_state(const RowUpdate& u, const float* table,
                                               int64_t row, int dim, const Group& g,
                                               RowState<Cols>& r) {
  Cols::load(table + row * dim, dim, g, r.w);
  r.row_sum = 0.0f;
  switch (u.params.rule) {
    case Rule::kSGD:
      break;
    case Rule::kAdagrad:
      Cols::load(u.state.state1 + row * dim, dim, g, r.s1);
      break;
    case Rule::kRowwiseAdagrad:
      if (g.lane == 0) r.row_sum = u.state.state1[row];
      break;
    case Rule::kAdam:
      Cols::load(u.state.state1 + row * dim, dim, g, r.s1);
      Cols::load(u.state.state2 + row * dim, dim, g, r.s2);
      break;
  }
}

// grad: the lane's columns of the row's summed gradient (overwritten). row_term: for the FM,
// sum over occurrences of g x^2, whose product with v completes the gradient of columns 1..
// (see fm.h); 0 elsewhere. Applies the rule to the row r holds (table[row]) and stores it and
// its state.
template <class Cols>
__device__ __forceinline__ void update_row(const RowUpdate& u, float* table, int64_t row, int dim,
                                           const Group& g, RowState<Cols>& r,
                                           float (&grad)[Cols::kPerLane], float row_term) {
  constexpr int kN = Cols::kPerLane;
  const UpdateParams& p = u.params;
  if (row_term != 0.0f) {
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      if (Cols::column(i, g) >= 1) grad[i] -= row_term * r.w[i];
    }
  }
  if (p.weight_decay != 0.0f) {
#pragma unroll
    for (int i = 0; i < kN; ++i) grad[i] = decayed(p, grad[i], r.w[i]);
  }
  switch (p.rule) {
    case Rule::kSGD:
#pragma unroll
      for (int i = 0; i < kN; ++i) sgd_step(p, r.w[i], grad[i]);
      break;
    case Rule::kAdagrad:
#pragma unroll
      for (int i = 0; i < kN; ++i) adagrad_step(p, r.w[i], r.s1[i], grad[i]);
      Cols::store(u.state.state1 + row * dim, dim, g, r.s1);
      break;
    case Rule::kRowwiseAdagrad: {
      float squares = 0.0f;
#pragma unroll
      for (int i = 0; i < kN; ++i) squares += grad[i] * grad[i];
      squares = group_sum(squares, g);
      // Lane 0 holds and writes the row's state, then hands the scale to the others.
      float scale = 0.0f;
      if (g.lane == 0) {
        scale = rowwise_adagrad_scale(p, r.row_sum, squares, dim);
        u.state.state1[row] = r.row_sum;
      }
      scale = __shfl_sync(g.mask, scale, 0, g.size);
#pragma unroll
      for (int i = 0; i < kN; ++i) r.w[i] -= scale * grad[i];
      break;
    }
    case Rule::kAdam:
#pragma unroll
      for (int i = 0; i < kN; ++i) {
        adam_step(p, u.adam_step_size, r.w[i], r.s1[i], r.s2[i], grad[i]);
      }
      Cols::store(u.state.state1 + row * dim, dim, g, r.s1);
      Cols::store(u.state.state2 + row * dim, dim, g, r.s2);
      break;
  }
  Cols::store(table + row * dim, dim, g, r.w);
}

}  // namespace fnn_fast::cuda

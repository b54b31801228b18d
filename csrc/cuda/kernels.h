// Torch-free CUDA kernels for the factorization machine and the FNN input: the host-side entry
// points, plain C++ so that bindings.cpp needs no CUDA header. Same layouts as csrc/cpu/fm.h:
// tables row-major float32 [num_rows, dim], dim = 1 + K; ids int64 [batch, slots], already
// range-checked; values float32 [batch, slots] or nullptr (all ones). Every pointer is device
// memory. dim is at most 128 (512 when a multiple of 4); the backward needs batch * slots < 2^31
// and num_rows <= 2^32. Work is queued on `stream` (a cudaStream_t, e.g. torch's current stream)
// of `device`; nothing here synchronizes. Errors (a bad launch, an unsupported dim) throw
// std::runtime_error or std::invalid_argument.
#pragma once
#include <cstddef>
#include <cstdint>

#include "row_update.h"

namespace fnn_fast::cuda {

struct Launch {
  int device;
  void* stream;       // cudaStream_t
  int row_lanes = 0;  // lanes that share a row (a power of two up to 32); 0: the default plan
};

// Devices the CUDA runtime linked into fnn_fast._C sees (0 without a driver or a GPU).
int device_count();

// logits[b] = sum_s x w + 1/2 sum_k [(sum_s x v_k)^2 - sum_s (x v_k)^2]   (no bias)
// sums (optional, [batch, K]): sum_s x v_k, what the backward needs.
void fm_forward(const float* table, int64_t dim, const int64_t* ids, const float* values,
                int64_t batch, int64_t slots, float* logits, float* sums, Launch launch);

// z[b, f * dim + d] = sum over slots s of field f of x_bs table[ids_bs, d]   ([batch, F * dim]).
// Slot s is field s when field_offsets is nullptr; otherwise field f owns the slots
// field_slots[field_offsets[f] .. field_offsets[f + 1]) (int64 [slots] and [F + 1]: the slots
// ordered by field), and a field without slots gets zeros.
void fnn_fields(const float* table, int64_t dim, const int64_t* ids, const float* values,
                int64_t batch, int64_t slots, const int64_t* field_slots,
                const int64_t* field_offsets, int64_t num_fields, float* z, Launch launch);

// Bytes of device workspace the backward-and-update kernels need for `items` = batch * slots
// lookups into a table of num_rows rows of dim floats, runs longer than long_run being split.
std::size_t backward_workspace_bytes(int64_t items, int64_t num_rows, int64_t dim,
                                     int64_t long_run, Launch launch);

// With g_b = dL/dlogit_b, the gradient of row i at slot s of sample b is g_b x [1, sums_b - x v_i],
// summed over all occurrences of the row, then applied by the update rule, in place.
// workspace: backward_workspace_bytes(batch * slots, num_rows, dim, long_run) bytes.
void fm_backward_update(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                        const float* values, int64_t batch, int64_t slots, const float* sums,
                        const float* grad_logits, const UpdateParams& params,
                        const OptimizerState& state, void* workspace,
                        std::size_t workspace_bytes, int64_t long_run, Launch launch);

// Row gradient: sum over occurrences of x_bs grad_z[b, field(s) * dim : ...], then the update.
// slot_fields: int64 [slots] or nullptr (slot s is field s).
void fnn_fields_backward_update(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                                const float* values, int64_t batch, int64_t slots,
                                const int64_t* slot_fields, int64_t num_fields,
                                const float* grad_z, const UpdateParams& params,
                                const OptimizerState& state, void* workspace,
                                std::size_t workspace_bytes, int64_t long_run, Launch launch);

}  // namespace fnn_fast::cuda

// Torch-free CPU kernels for the factorization machine and the FNN input. Tables are row-major
// float32 [num_rows, dim], dim = 1 + K: column 0 holds w_i, columns 1..K hold v_i. ids are
// int64 [batch, slots], their range checked by every kernel as it reads them; values are
// float32 [batch, slots] or nullptr (all ones). Row offsets are computed in int64, so tables above
// 2^31 elements work.
#pragma once
#include <cstdint>

#include "row_update.h"

namespace fnn_fast::cpu {

// logits[b] = sum_s x w + 1/2 sum_k [(sum_s x v_k)^2 - sum_s (x v_k)^2]   (no bias)
// sums (optional, [batch, K]): sum_s x v_k, what the backward needs.
// Returns -1, or the flat index b * slots + s of the first id outside [0, num_rows): such a
// lookup is never read, and the outputs are then not to be used.
int64_t fm_forward(const float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                   const float* values, int64_t batch, int64_t slots, float* logits, float* sums);

// With g_b = dL/dlogit_b, the gradient of row i at slot s of sample b is
//   g_b x [1, sums_b - x v_i]
// summed over all occurrences of the row, then applied by the update rule. Updates the table
// and optimizer state in place. Returns as fm_forward does; with a bad id nothing is updated.
int64_t fm_backward_update(float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                           const float* values, int64_t batch, int64_t slots, const float* sums,
                           const float* grad_logits, const UpdateParams& params,
                           const OptimizerState& state);

// z[b, f * dim + d] = sum over slots s of field f of x_bs table[ids_bs, d]   ([batch, z_width])
// slot_fields: int64 [slots] or nullptr (slot s is field s). z_width >= F * dim: the columns
// past F * dim are zeroed (padding a row to a multiple of 16 floats makes the matrix products
// on z and its gradient much faster). Without slot_fields, slots must equal num_fields (or be 0:
// z is then zeros, as with an empty slot_fields). Returns
// as fm_forward does; sizes that do not fit (num_fields < 0, z_width < F * dim, a slot_fields
// entry outside [0, F)) throw std::invalid_argument before anything is written.
int64_t fnn_fields(const float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                   const float* values, int64_t batch, int64_t slots, const int64_t* slot_fields,
                   int64_t num_fields, float* z, int64_t z_width);

// Row gradient: sum over occurrences of x_bs grad_z[b, field(s) * dim : ...], then the update.
// grad_z: [batch, grad_width], grad_width >= F * dim. Checks and returns as fnn_fields does;
// with a bad id nothing is updated.
int64_t fnn_fields_backward_update(float* table, int64_t num_rows, int64_t dim,
                                   const int64_t* ids, const float* values, int64_t batch,
                                   int64_t slots, const int64_t* slot_fields, int64_t num_fields,
                                   const float* grad_z, int64_t grad_width,
                                   const UpdateParams& params, const OptimizerState& state);

}  // namespace fnn_fast::cpu

// Torch-free CPU kernels for the factorization machine. Tables are row-major float32
// [num_rows, dim] with dim = 1 + K: column 0 holds w_i, columns 1..K hold v_i.
#pragma once
#include <cstdint>

namespace fnn_fast::cpu {

// logits[b] = w0 + sum_s x_bs w_{i_bs}
//           + 0.5 * sum_k [(sum_s x_bs v_{i_bs,k})^2 - sum_s x_bs^2 v_{i_bs,k}^2]
// ids: int64 [batch, slots]; values: float32 [batch, slots] or nullptr (all ones).
// Ids must already be range-checked by the caller.
void fm_forward(const float* table, int64_t dim, const int64_t* ids, const float* values,
                int64_t batch, int64_t slots, float w0, float* logits);

}  // namespace fnn_fast::cpu

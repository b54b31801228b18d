// The benchmark's gather bound: the least work that reads every row a batch looks up.
#pragma once
#include <cstdint>

namespace fnn_fast::cpu {

// out[b, d] = sum over slots s of table[ids[b, s], d]   (out: [batch, dim], float32)
// Reads each looked-up row once, prefetched 32 lookups ahead as the FM forward does, and writes
// one row per sample: what any kernel reading the batch's rows must at least do (fnn-fast
// bench's `gather-bound`). Returns -1, or the flat index b * slots + s of the first id outside
// [0, num_rows) (that lookup is not read; out is then not to be used).
int64_t gather_sum(const float* table, int64_t num_rows, int64_t dim, const int64_t* ids,
                   int64_t batch, int64_t slots, float* out);

}  // namespace fnn_fast::cpu

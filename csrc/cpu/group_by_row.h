// Group the (row, position) pairs of a batch by row, FBGEMM-style: after sorting, each run of
// equal rows is handled by one thread, which sums that row's gradients in position order and
// applies the update once. No atomics, no dense gradient, deterministic whatever the threads.
#pragma once
#include <cstdint>
#include <vector>

namespace fnn_fast::cpu {

struct RowGroups {
  std::vector<int64_t> positions;  // batch positions (b * slots + s), sorted by row, then position
  std::vector<int64_t> run_starts;  // run r covers positions[run_starts[r] .. run_starts[r + 1])
  std::vector<int64_t> rows;        // the row of each run
};

// ids: n row indices in [0, num_rows). LSD radix sort on only the bits num_rows needs, so the
// sort is stable and positions stay in order within a row.
RowGroups group_by_row(const int64_t* ids, int64_t n, int64_t num_rows);

}  // namespace fnn_fast::cpu

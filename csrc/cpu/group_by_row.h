// Group the (row, position) pairs of a batch by row, FBGEMM-style: after sorting, each run of
// equal rows is handled by one thread, which sums that row's gradients in position order and
// applies the update once. No atomics, no dense gradient, deterministic whatever the threads.
#pragma once
#include <cstdint>
#include <vector>

namespace fnn_fast::cpu {

struct RowGroups {
  // Lookups (b, s) packed as (b << slot_bits) | s, sorted by row, then by (b, s): a consumer
  // splits them with a shift and a mask instead of a division by the slot count.
  std::vector<int64_t> positions;
  int slot_bits = 0;
  std::vector<int64_t> run_starts;  // run r covers positions[run_starts[r] .. run_starts[r + 1])
  std::vector<int64_t> rows;        // the row of each run
  // Workspace kept between calls, so a training step does not fault in fresh pages each time.
  std::vector<uint64_t> items, scratch;
  std::vector<int64_t> counts, thread_runs;  // the radix sort's per-thread histograms, run counts
};

// ids: [batch, slots] row indices in [0, num_rows). LSD radix sort on only the bits num_rows
// needs, so the sort is stable and lookups stay in (b, s) order within a row; every OpenMP
// thread takes part, with the same result for any thread count. Fills `groups`, reusing its
// memory. Call it from outside a parallel region. Returns -1, or the flat position b * slots + s
// of the first id outside [0, num_rows) (checked as the ids are read): `groups` is then unusable.
int64_t group_by_row(const int64_t* ids, int64_t batch, int64_t slots, int64_t num_rows,
                     RowGroups& groups);

}  // namespace fnn_fast::cpu

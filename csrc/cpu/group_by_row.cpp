#include "cpu/group_by_row.h"

#include <algorithm>
#include <array>

namespace fnn_fast::cpu {

RowGroups group_by_row(const int64_t* ids, int64_t n, int64_t num_rows) {
  RowGroups groups;
  std::vector<int64_t> order(n), scratch(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  int bits = 0;
  while (bits < 63 && (int64_t{1} << bits) < num_rows) ++bits;
  constexpr int kRadixBits = 8;
  for (int shift = 0; shift < bits; shift += kRadixBits) {
    std::array<int64_t, (1 << kRadixBits) + 1> count{};
    for (int64_t i = 0; i < n; ++i) ++count[((ids[order[i]] >> shift) & 0xff) + 1];
    for (int d = 0; d < (1 << kRadixBits); ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < n; ++i) scratch[count[(ids[order[i]] >> shift) & 0xff]++] = order[i];
    order.swap(scratch);
  }
  groups.positions = std::move(order);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t row = ids[groups.positions[i]];
    if (i == 0 || row != groups.rows.back()) {
      groups.run_starts.push_back(i);
      groups.rows.push_back(row);
    }
  }
  groups.run_starts.push_back(n);
  return groups;
}

}  // namespace fnn_fast::cpu

#include "cpu/group_by_row.h"

#include <algorithm>
#include <array>
#include <cstdint>


namespace fnn_fast::cpu {

namespace {

int bits_for(int64_t count) {
  int bits = 0;
  while (bits < 63 && (int64_t{1} << bits) < count) ++bits;
  return bits;
}

// Stable LSD radix sort of `items` on bits [shift, shift + key_bits) only, with as few passes as
// digits of at most 11 bits allow. Single-threaded: at a batch's size (about 10^5 items) the
// passes stream through L2, and threads cost more in start-up than they save.
void radix_sort(std::vector<uint64_t>& items, std::vector<uint64_t>& scratch, int shift,
                int key_bits) {
  if (key_bits == 0) return;
  const int passes = (key_bits + 10) / 11;
  const int digit_bits = (key_bits + passes - 1) / passes;
  const uint64_t mask = (uint64_t{1} << digit_bits) - 1;
  std::vector<int64_t> count((size_t{1} << digit_bits) + 1);
  scratch.resize(items.size());
  for (int pass = 0; pass < passes; ++pass) {
    const int at = shift + pass * digit_bits;
    std::fill(count.begin(), count.end(), 0);
    for (const uint64_t item : items) ++count[((item >> at) & mask) + 1];
    for (size_t d = 1; d < count.size(); ++d) count[d] += count[d - 1];
    for (const uint64_t item : items) scratch[count[(item >> at) & mask]++] = item;
    items.swap(scratch);
  }
}

}  // namespace

void group_by_row(const int64_t* ids, int64_t batch, int64_t slots, int64_t num_rows,
                  RowGroups& groups) {
  groups.run_starts.clear();
  groups.rows.clear();
  groups.slot_bits = bits_for(slots);
  const int position_bits = bits_for(batch) + groups.slot_bits;
  const int row_bits = bits_for(num_rows);
  const int64_t n = batch * slots;
  groups.positions.resize(n);
  if (position_bits + row_bits <= 64) {
    // Pack (row, b, s) into one word: the sort then streams contiguous memory.
    std::vector<uint64_t>& items = groups.items;
    items.resize(n);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t s = 0; s < slots; ++s) {
        items[b * slots + s] = (static_cast<uint64_t>(ids[b * slots + s]) << position_bits) |
                               (static_cast<uint64_t>(b) << groups.slot_bits) |
                               static_cast<uint64_t>(s);
      }
    }
    radix_sort(items, groups.scratch, position_bits, row_bits);
    const uint64_t position_mask = (uint64_t{1} << position_bits) - 1;
    for (int64_t i = 0; i < n; ++i) {
      groups.positions[i] = static_cast<int64_t>(items[i] & position_mask);
      const int64_t row = static_cast<int64_t>(items[i] >> position_bits);
      if (i == 0 || row != groups.rows.back()) {
        groups.run_starts.push_back(i);
        groups.rows.push_back(row);
      }
    }
  } else {
    // Too many rows and lookups to pack: sort flat indices, reading rows indirectly.
    std::vector<int64_t> order(n), scratch(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    for (int shift = 0; shift < row_bits; shift += 8) {
      std::array<int64_t, 257> count{};
      for (int64_t i = 0; i < n; ++i) ++count[((ids[order[i]] >> shift) & 0xff) + 1];
      for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
      for (int64_t i = 0; i < n; ++i) scratch[count[(ids[order[i]] >> shift) & 0xff]++] = order[i];
      order.swap(scratch);
    }
    for (int64_t i = 0; i < n; ++i) {
      const int64_t flat = order[i], b = flat / slots, s = flat % slots;
      groups.positions[i] = (b << groups.slot_bits) | s;
      const int64_t row = ids[flat];
      if (i == 0 || row != groups.rows.back()) {
        groups.run_starts.push_back(i);
        groups.rows.push_back(row);
      }
    }
  }
  groups.run_starts.push_back(n);
}

}  // namespace fnn_fast::cpu

#include "cpu/group_by_row.h"

#include <array>
#include <cstdint>

namespace fnn_fast::cpu {

namespace {

int bits_for(int64_t count) {
  int bits = 0;
  while (bits < 63 && (int64_t{1} << bits) < count) ++bits;
  return bits;
}

// Stable LSD radix sort of `items` on bits [shift, shift + key_bits) only.
void radix_sort(std::vector<uint64_t>& items, int shift, int key_bits) {
  constexpr int kRadixBits = 8;
  std::vector<uint64_t> scratch(items.size());
  for (int pass = 0; pass < key_bits; pass += kRadixBits) {
    const int at = shift + pass;
    std::array<int64_t, (1 << kRadixBits) + 1> count{};
    for (const uint64_t item : items) ++count[((item >> at) & 0xff) + 1];
    for (int d = 0; d < (1 << kRadixBits); ++d) count[d + 1] += count[d];
    for (const uint64_t item : items) scratch[count[(item >> at) & 0xff]++] = item;
    items.swap(scratch);
  }
}

}  // namespace

RowGroups group_by_row(const int64_t* ids, int64_t n, int64_t num_rows) {
  RowGroups groups;
  const int position_bits = bits_for(n);
  const int row_bits = bits_for(num_rows);
  std::vector<uint64_t> items(n);
  if (position_bits + row_bits <= 64) {
    // Pack (row, position) into one word: the sort then streams contiguous memory.
    for (int64_t i = 0; i < n; ++i) {
      items[i] = (static_cast<uint64_t>(ids[i]) << position_bits) | static_cast<uint64_t>(i);
    }
    radix_sort(items, position_bits, row_bits);
    const uint64_t position_mask = (uint64_t{1} << position_bits) - 1;
    groups.positions.resize(n);
    for (int64_t i = 0; i < n; ++i) {
      groups.positions[i] = static_cast<int64_t>(items[i] & position_mask);
      const int64_t row = static_cast<int64_t>(items[i] >> position_bits);
      if (i == 0 || row != groups.rows.back()) {
        groups.run_starts.push_back(i);
        groups.rows.push_back(row);
      }
    }
  } else {
    // Too many rows and positions to pack: sort positions, reading rows indirectly.
    std::vector<int64_t> order(n), scratch(n);
    for (int64_t i = 0; i < n; ++i) order[i] = i;
    for (int shift = 0; shift < row_bits; shift += 8) {
      std::array<int64_t, 257> count{};
      for (int64_t i = 0; i < n; ++i) ++count[((ids[order[i]] >> shift) & 0xff) + 1];
      for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
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
  }
  groups.run_starts.push_back(n);
  return groups;
}

}  // namespace fnn_fast::cpu

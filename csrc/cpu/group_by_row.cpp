#include "cpu/group_by_row.h"

#include "cpu/threads.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cstdint>

#ifdef FNN_FAST_OPENMP
#include <omp.h>
#endif

namespace fnn_fast::cpu {

namespace {

int bits_for(int64_t count) {
  int bits = 0;
  while (bits < 63 && (int64_t{1} << bits) < count) ++bits;
  return bits;
}

// Thread t of `threads` takes items [n t / threads, n (t + 1) / threads).
inline int64_t chunk_start(int64_t n, int t, int threads) { return n * t / threads; }

inline bool out_of_range(int64_t id, int64_t num_rows) {
  return static_cast<uint64_t>(id) >= static_cast<uint64_t>(num_rows);
}

// Packs (row, b, s) into one word per lookup and sorts the words with a stable LSD radix sort
// on the row bits only, digits of at most 12 bits (two passes up to 2^24 rows). Each pass
// runs on every thread: a histogram per thread over its own chunk, then each thread scatters
// its chunk to offsets that keep the global order, so the result is the same for any number
// of threads. The last pass also finds the runs of equal rows. Returns as group_by_row does.
int64_t group_packed(const int64_t* ids, int64_t n, int64_t num_rows, int slot_bits,
                     int position_bits, int row_bits, int64_t slots, RowGroups& groups) {
  const int passes = std::max(1, (row_bits + 11) / 12);
  const int digit_bits = std::max(1, (row_bits + passes - 1) / passes);
  const int64_t digits = int64_t{1} << digit_bits;
  const uint64_t digit_mask = static_cast<uint64_t>(digits - 1);
  const uint64_t position_mask = (uint64_t{1} << position_bits) - 1;
  const int threads = threads_for(n);
  groups.items.resize(n);
  groups.scratch.resize(n);
  groups.positions.resize(n);
  groups.counts.assign(static_cast<size_t>(threads) * digits, 0);
  groups.thread_runs.assign(threads + 1, 0);
  uint64_t* items = groups.items.data();
  uint64_t* scratch = groups.scratch.data();
  int64_t* counts = groups.counts.data();
  int64_t* thread_runs = groups.thread_runs.data();
  int64_t first_bad = INT64_MAX;

#pragma omp parallel num_threads(threads) reduction(min : first_bad)
  {
#ifdef FNN_FAST_OPENMP
    const int t = omp_get_thread_num();
#else
    const int t = 0;
#endif
    const int64_t lo = chunk_start(n, t, threads), hi = chunk_start(n, t + 1, threads);
    int64_t* count = counts + static_cast<int64_t>(t) * digits;
    // Pack, counting the first digit on the way.
    for (int64_t i = lo, b = lo / slots, s = lo % slots; i < hi; ++i) {
      // A bad id still sorts (its digits are masked) but the caller gets its position back.
      if (out_of_range(ids[i], num_rows)) first_bad = std::min(first_bad, i);
      const uint64_t item = (static_cast<uint64_t>(ids[i]) << position_bits) |
                            (static_cast<uint64_t>(b) << slot_bits) | static_cast<uint64_t>(s);
      items[i] = item;
      ++count[(item >> position_bits) & digit_mask];
      if (++s == slots) s = 0, ++b;
    }
    uint64_t* from = items;
    uint64_t* to = scratch;
    for (int pass = 0; pass < passes; ++pass) {
      const int shift = position_bits + pass * digit_bits;
#pragma omp barrier
#pragma omp single
      {
        // Exclusive offsets, digit-major then thread: thread t's items of digit d go after
        // every item of a smaller digit and after threads < t's items of digit d.
        int64_t total = 0;
        for (int64_t d = 0; d < digits; ++d) {
          for (int u = 0; u < threads; ++u) {
            const int64_t c = counts[static_cast<int64_t>(u) * digits + d];
            counts[static_cast<int64_t>(u) * digits + d] = total;
            total += c;
          }
        }
      }  // implicit barrier
      for (int64_t i = lo; i < hi; ++i) {
        const uint64_t item = from[i];
        to[count[(item >> shift) & digit_mask]++] = item;
      }
      std::swap(from, to);
#pragma omp barrier
      if (pass + 1 < passes) {
        std::fill(count, count + digits, 0);
        const int next = shift + digit_bits;
        for (int64_t i = lo; i < hi; ++i) ++count[(from[i] >> next) & digit_mask];
      }
    }
    // Runs: unpack positions, count the rows that start a run in this chunk...
    int64_t starts = 0;
    for (int64_t i = lo; i < hi; ++i) {
      groups.positions[i] = static_cast<int64_t>(from[i] & position_mask);
      starts += i == 0 || (from[i] >> position_bits) != (from[i - 1] >> position_bits);
    }
    thread_runs[t + 1] = starts;
#pragma omp barrier
#pragma omp single
    {
      for (int u = 0; u < threads; ++u) thread_runs[u + 1] += thread_runs[u];
      groups.rows.resize(thread_runs[threads]);
      groups.run_starts.resize(thread_runs[threads] + 1);
      groups.run_starts[thread_runs[threads]] = n;
    }  // implicit barrier
    // ...then write them at this chunk's offset.
    int64_t run = thread_runs[t];
    for (int64_t i = lo; i < hi; ++i) {
      const uint64_t row = from[i] >> position_bits;
      if (i == 0 || row != (from[i - 1] >> position_bits)) {
        groups.rows[run] = static_cast<int64_t>(row);
        groups.run_starts[run] = i;
        ++run;
      }
    }
  }
  return first_bad == INT64_MAX ? -1 : first_bad;
}

// More rows and lookups than one word packs: sort flat indices, reading rows indirectly
// (single-threaded; only tables beyond 2^40 rows or so get here).
int64_t group_indirect(const int64_t* ids, int64_t n, int64_t num_rows, int64_t slots,
                       int slot_bits, int row_bits, RowGroups& groups) {
  for (int64_t i = 0; i < n; ++i) {
    if (out_of_range(ids[i], num_rows)) return i;
  }
  std::vector<int64_t> order(n), scratch(n);
  for (int64_t i = 0; i < n; ++i) order[i] = i;
  for (int shift = 0; shift < row_bits; shift += 8) {
    std::array<int64_t, 257> count{};
    for (int64_t i = 0; i < n; ++i) ++count[((ids[order[i]] >> shift) & 0xff) + 1];
    for (int d = 0; d < 256; ++d) count[d + 1] += count[d];
    for (int64_t i = 0; i < n; ++i) scratch[count[(ids[order[i]] >> shift) & 0xff]++] = order[i];
    order.swap(scratch);
  }
  groups.positions.resize(n);
  groups.rows.clear();
  groups.run_starts.clear();
  for (int64_t i = 0; i < n; ++i) {
    const int64_t flat = order[i], b = flat / slots, s = flat % slots;
    groups.positions[i] = (b << slot_bits) | s;
    const int64_t row = ids[flat];
    if (i == 0 || row != groups.rows.back()) {
      groups.run_starts.push_back(i);
      groups.rows.push_back(row);
    }
  }
  groups.run_starts.push_back(n);
  return -1;
}

}  // namespace

int64_t group_by_row(const int64_t* ids, int64_t batch, int64_t slots, int64_t num_rows,
                     RowGroups& groups) {
  groups.slot_bits = bits_for(slots);
  const int position_bits = bits_for(batch) + groups.slot_bits;
  const int row_bits = bits_for(num_rows);
  const int64_t n = batch * slots;
  if (n == 0) {
    groups.positions.clear();
    groups.rows.clear();
    groups.run_starts.assign(1, 0);
    return -1;
  }
  if (position_bits + row_bits <= 64) {
    return group_packed(ids, n, num_rows, groups.slot_bits, position_bits, row_bits, slots,
                        groups);
  }
  return group_indirect(ids, n, num_rows, slots, groups.slot_bits, row_bits, groups);
}

}  // namespace fnn_fast::cpu

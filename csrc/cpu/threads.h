// How many OpenMP threads a kernel's parallel region takes for a given amount of work.
#pragma once
#include <algorithm>
#include <cstdint>

#ifdef FNN_FAST_OPENMP
#include <omp.h>
#endif

namespace fnn_fast::cpu {

// Lookups each thread must have before a kernel splits a batch between threads. A parallel
// region costs microseconds on an idle machine, but when another process holds one of the
// cores, every region waits for its descheduled thread: a scheduler time slice, milliseconds.
// A training step at batch 256 over 39 fields (10k lookups) is about a millisecond of work on
// one thread; split in two on a shared 2-core host it ran 10x slower than on one thread
// (benchmarks/RESULTS.md, "Training in memory and streamed"). Batch 4096 (160k lookups) still
// takes every thread.
constexpr int64_t kLookupsPerThread = 16384;

// The threads for `lookups` lookups: one per kLookupsPerThread, at least 1, at most OpenMP's
// count (omp_get_max_threads: torch.set_num_threads sets it for the same runtime).
inline int threads_for(int64_t lookups) {
#ifdef FNN_FAST_OPENMP
  const int64_t most = omp_get_max_threads();
  return static_cast<int>(std::max<int64_t>(1, std::min(most, lookups / kLookupsPerThread)));
#else
  (void)lookups;
  return 1;
#endif
}

}  // namespace fnn_fast::cpu

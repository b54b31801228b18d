// Times the CPU kernels without Python: grouping by row alone, and the fused FM backward with
// row-wise Adagrad, at the Criteo-like shape (batch 4096, 39 fields, K = 10, Zipf(1.1) ids).
//
//   g++ -O3 -march=native -g -fopenmp -DFNN_FAST_OPENMP=1 -DROWS=1000000 -Icsrc \
//       benchmarks/cpu_kernel_harness.cpp csrc/cpu/fm.cpp csrc/cpu/group_by_row.cpp -o harness
//   ./harness                      # or: perf record ./harness && perf annotate
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/fm.h"
#include "cpu/group_by_row.h"

#ifndef ROWS
#define ROWS 1000000
#endif

using namespace fnn_fast;
using namespace fnn_fast::cpu;

int main() {
  const int64_t rows = ROWS, batch = 4096, slots = 39, k = 10, dim = 1 + k;
  std::mt19937_64 rng(0);
  std::vector<int64_t> ids(batch * slots), permutation(rows);
  for (int64_t i = 0; i < rows; ++i) permutation[i] = i;
  std::shuffle(permutation.begin(), permutation.end(), rng);
  // Zipf(1.1) ranks: P(rank > r) ~ r^-0.1, hot ranks spread over the table.
  std::uniform_real_distribution<double> uniform(0, 1);
  for (auto& id : ids) {
    const auto rank = static_cast<int64_t>(std::pow(uniform(rng), -1.0 / 0.1)) - 1;
    id = permutation[std::min(rank, rows - 1)];
  }
  std::vector<float> table(rows * dim, 0.01f), state(rows), sums(batch * k, 0.5f);
  std::vector<float> grad_logits(batch, 1e-3f);
  const UpdateParams params{Rule::kRowwiseAdagrad, 0.05f, 0.0f, 1e-10f, 0.9f, 0.999f, 1};
  const int repeats = 50;
  RowGroups groups;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) group_by_row(ids.data(), batch, slots, rows, groups);
  const auto t1 = std::chrono::steady_clock::now();
  for (int i = 0; i < repeats; ++i) {
    fm_backward_update(table.data(), rows, dim, ids.data(), nullptr, batch, slots, sums.data(),
                       grad_logits.data(), params, {state.data(), nullptr});
  }
  const auto t2 = std::chrono::steady_clock::now();
  const auto ms = [&](auto a, auto b) {
    return std::chrono::duration<double, std::milli>(b - a).count() / repeats;
  };
  std::printf("%lld rows, %zu distinct per batch: group by row %.3f ms, fused backward %.3f ms\n",
              static_cast<long long>(rows), groups.rows.size(), ms(t0, t1), ms(t1, t2));
}

// Times the CPU kernels without Python, piece by piece, at the Criteo-like shape (batch 4096,
// 39 fields, K = 10, Zipf ids per field as `fnn-fast bench` draws them): the FM forward,
// grouping by row alone, the fused FM backward with row-wise Adagrad, the FNN gather and its
// fused backward; each warm (the same few batches again and again) and cold (after streaming
// 48 MB through the caches, as a training step's MLP does between forward and backward).
//
//   g++ -O3 -march=native -fopenmp -DFNN_FAST_OPENMP=1 -Icsrc benchmarks/cpu_kernel_harness.cpp
//       csrc/cpu/fm.cpp csrc/cpu/group_by_row.cpp -o harness
//   ./harness [rows=1000000] [huge_pages=1]       # OMP_NUM_THREADS sets the threads
//   perf record ./harness && perf report          # where the time goes
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "cpu/fm.h"
#include "cpu/group_by_row.h"

using namespace fnn_fast;
using namespace fnn_fast::cpu;

namespace {

constexpr int64_t kBatch = 4096, kFields = 39, kDim = 11, kBatches = 8;
constexpr int64_t kWidth = 432;  // z's rows: F * dim = 429 floats padded to a multiple of 16

// Zeroed floats on 2 MB boundaries, in huge pages when asked (as fnn_fast.memory does).
float* zeroed(int64_t count, bool huge) {
  const size_t align = size_t{2} << 20;
  const size_t bytes = (count * sizeof(float) + align - 1) / align * align;
  void* memory = std::aligned_alloc(align, bytes);
  if (huge) madvise(memory, bytes, MADV_HUGEPAGE);
  std::memset(memory, 0, bytes);
  return static_cast<float*>(memory);
}

// Per field: rank r has probability about (r + 1)^-1.1, ranks scattered over the field's rows.
std::vector<int64_t> zipf_ids(int64_t rows, std::mt19937_64& rng) {
  std::vector<int64_t> ids(kBatches * kBatch * kFields);
  std::uniform_real_distribution<double> uniform(0, 1);
  const double a = 1.0 - 1.1;
  for (int64_t i = 0; i < static_cast<int64_t>(ids.size()); ++i) {
    const int64_t f = i % kFields;
    const int64_t dim = rows / kFields + (f < rows % kFields);
    const int64_t offset = f * (rows / kFields) + std::min(f, rows % kFields);
    const double x = std::pow((std::pow(dim + 1.0, a) - 1.0) * uniform(rng) + 1.0, 1.0 / a);
    const int64_t rank = std::clamp<int64_t>(static_cast<int64_t>(x) - 1, 0, dim - 1);
    ids[i] = offset + (rank * 1000003 + f * 7919) % dim;
  }
  return ids;
}

template <typename Call>
double median_ms(Call call, bool cold, std::vector<float>& junk) {
  std::vector<double> times;
  for (int i = 0; i < 41; ++i) {
    if (cold) {
      for (size_t j = 0; j < junk.size(); j += 16) junk[j] += 1.0f;
    }
    const auto start = std::chrono::steady_clock::now();
    call(i % kBatches);
    times.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
  }
  std::nth_element(times.begin(), times.begin() + 20, times.end());
  return times[20];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t rows = argc > 1 ? std::atoll(argv[1]) : 1000000;
  const bool huge = argc > 2 ? std::atoi(argv[2]) != 0 : true;
  const int64_t lookups = kBatch * kFields, k = kDim - 1;
  std::mt19937_64 rng(0);
  const std::vector<int64_t> ids = zipf_ids(rows, rng);
  float* table = zeroed(rows * kDim, huge);
  float* state = zeroed(rows, huge);
  std::normal_distribution<float> normal(0.0f, 0.01f);
  for (int64_t i = 0; i < rows * kDim; ++i) table[i] = normal(rng);
  std::vector<float> logits(kBatch), sums(kBatch * k), grad_logits(kBatch), z(kBatch * kWidth);
  std::vector<float> grad_z(kBatch * kWidth), junk(12 << 20);
  for (auto& g : grad_logits) g = normal(rng);
  for (auto& g : grad_z) g = normal(rng);
  const UpdateParams params{Rule::kRowwiseAdagrad, 0.01f, 0.0f, 1e-10f, 0.9f, 0.999f, 1};
  const OptimizerState states{state, nullptr};
  RowGroups groups;
  const auto batch_ids = [&](int b) { return ids.data() + b * lookups; };

  std::printf("rows %lld, huge pages %d, batch %lld x %lld fields, K %lld (ms, median of 41)\n",
              static_cast<long long>(rows), huge, static_cast<long long>(kBatch),
              static_cast<long long>(kFields), static_cast<long long>(k));
  std::printf("%-22s %8s %8s\n", "", "warm", "cold");
  const auto report = [&](const char* name, auto call) {
    const double warm = median_ms(call, false, junk);
    const double cold = median_ms(call, true, junk);
    std::printf("%-22s %8.3f %8.3f\n", name, warm, cold);
  };
  report("fm forward", [&](int b) {
    fm_forward(table, rows, kDim, batch_ids(b), nullptr, kBatch, kFields, logits.data(),
               sums.data());
  });
  report("group by row", [&](int b) { group_by_row(batch_ids(b), kBatch, kFields, rows, groups); });
  report("fm backward + update", [&](int b) {
    fm_backward_update(table, rows, kDim, batch_ids(b), nullptr, kBatch, kFields, sums.data(),
                       grad_logits.data(), params, states);
  });
  report("fnn gather", [&](int b) {
    fnn_fields(table, rows, kDim, batch_ids(b), nullptr, kBatch, kFields, nullptr, kFields,
               z.data(), kWidth);
  });
  report("fnn backward + update", [&](int b) {
    fnn_fields_backward_update(table, rows, kDim, batch_ids(b), nullptr, kBatch, kFields,
                               nullptr, kFields, grad_z.data(), kWidth, params, states);
  });
  std::printf("distinct rows in the last batch: %zu of %lld lookups\n", groups.rows.size(),
              static_cast<long long>(lookups));
  return 0;
}

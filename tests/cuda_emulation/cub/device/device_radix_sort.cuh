#pragma once
#include <cuda_runtime.h>
namespace cub {
struct DeviceRadixSort {
  template <class K, class V>
  static cudaError_t SortPairs(void* temp, std::size_t& bytes, const K* kin, K* kout, const V* vin,
                               V* vout, int n, int begin_bit, int end_bit, cudaStream_t) {
    if (!temp) { bytes = 1024; return cudaSuccess; }
    if (bytes < 1024) std::abort();
    std::vector<int> order(n);
    for (int i = 0; i < n; ++i) order[i] = i;
    const unsigned long long mask = end_bit - begin_bit >= 64 ? ~0ull : ((1ull << (end_bit - begin_bit)) - 1);
    auto digit = [&](int i) { return (static_cast<unsigned long long>(kin[i]) >> begin_bit) & mask; };
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return digit(a) < digit(b); });
    for (int i = 0; i < n; ++i) { kout[i] = kin[order[i]]; vout[i] = vin[order[i]]; }
    std::memset(temp, 0x7f, bytes);
    return cudaSuccess;
  }
};
}  // namespace cub

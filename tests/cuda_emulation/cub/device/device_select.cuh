#pragma once
#include <cuda_runtime.h>
namespace cub {
struct DeviceSelect {
  template <class In, class Out, class Count, class Op>
  static cudaError_t If(void* temp, std::size_t& bytes, In in, Out out, Count count, int n, Op op,
                        cudaStream_t) {
    if (!temp) { bytes = 512; return cudaSuccess; }
    if (bytes < 512) std::abort();
    int selected = 0;
    for (int i = 0; i < n; ++i) if (op(in[i])) out[selected++] = in[i];
    *count = selected;
    return cudaSuccess;
  }
};
}  // namespace cub

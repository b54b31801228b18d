// A CPU stand-in for the parts of CUDA the fnn_fast kernels use, so that their logic runs (under
// AddressSanitizer or ThreadSanitizer) on a machine without a GPU; see run.sh. Each block runs as
// blockDim.x threads, one after another; a shuffle is an exchange among the lanes its mask names,
// which must all take part (stricter than a warp, whose lanes share an instruction stream);
// __syncthreads is a barrier; atomics are std::atomic_ref. Not modelled: timing, memory spaces,
// the hardware's weaker memory ordering between blocks of one kernel.
#pragma once
#include <algorithm>
#include <atomic>
#include <barrier>
#include <cassert>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__
#define __restrict__

using std::max;
using std::min;

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct float4 { float x, y, z, w; };
struct int2 { int x, y; };
inline float4 make_float4(float a, float b, float c, float d) { return {a, b, c, d}; }
inline int2 make_int2(int a, int b) { return {a, b}; }

using cudaError_t = int;
constexpr cudaError_t cudaSuccess = 0;
using cudaStream_t = void*;
enum cudaDeviceAttr { cudaDevAttrMultiProcessorCount };
inline const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
inline cudaError_t cudaGetLastError() { return cudaSuccess; }
inline cudaError_t cudaSetDevice(int) { return cudaSuccess; }
inline cudaError_t cudaGetDeviceCount(int* n) { *n = 1; return cudaSuccess; }
extern int emu_multiprocessors;
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr, int) {
  *v = emu_multiprocessors;
  return cudaSuccess;
}

namespace emu {
struct Warp {
  std::mutex m;
  std::condition_variable cv;
  unsigned long long value[32][4];
  long count[32] = {};
};
struct Block {
  std::unique_ptr<std::barrier<>> barrier;
  std::vector<std::unique_ptr<Warp>> warps;
  std::vector<char> shared;
};
extern Block* block;
extern std::atomic<long> errors;
}  // namespace emu

extern thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

inline void __syncthreads() { emu::block->barrier->arrive_and_wait(); }

template <class T>
T emu_exchange(unsigned mask, T v, int src) {
  const int lane = threadIdx.x % 32;
  emu::Warp& w = *emu::block->warps[threadIdx.x / 32];
  if (!(mask >> lane & 1u) || !(mask >> src & 1u)) {
    std::fprintf(stderr, "shuffle: lane %d or source %d not in mask %08x\n", lane, src, mask);
    std::abort();
  }
  std::unique_lock<std::mutex> lock(w.m);
  const long k = w.count[lane];
  std::memcpy(&w.value[lane][k % 4], &v, sizeof(T));
  w.count[lane] = k + 1;
  w.cv.notify_all();
  w.cv.wait(lock, [&] {
    for (int l = 0; l < 32; ++l)
      if ((mask >> l & 1u) && w.count[l] < k + 1) return false;
    return true;
  });
  // A lane leaves round k only once all of the mask reached it, so the source is at most one round
  // ahead and its value for round k is still in the ring.
  if (w.count[src] > k + 2) { std::fprintf(stderr, "shuffle: source ran ahead\n"); std::abort(); }
  T out;
  std::memcpy(&out, &w.value[src][k % 4], sizeof(T));
  return out;
}
template <class T>
T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const int lane = threadIdx.x % 32;
  (void)width;
  return emu_exchange(mask, v, lane ^ lane_mask);
}
template <class T>
T __shfl_sync(unsigned mask, T v, int src_lane, int width = 32) {
  const int lane = threadIdx.x % 32;
  return emu_exchange(mask, v, (lane & ~(width - 1)) + src_lane % width);
}
inline int atomicAdd(int* p, int v) { return std::atomic_ref<int>(*p).fetch_add(v); }

namespace emu {
struct Config {
  dim3 grid;
  dim3 block;
  std::size_t shared;
  cudaStream_t stream;
};
// A pool of threads that stand in for one block's threads, reused block after block.
struct Pool {
  static constexpr unsigned kThreads = 256;
  std::barrier<> start{kThreads + 1}, done{kThreads + 1};
  std::function<void()> body;
  bool stop = false;
  std::vector<std::thread> threads;
  unsigned current_block = 0;
  Pool() {
    for (unsigned t = 0; t < kThreads; ++t) {
      threads.emplace_back([this, t] {
        threadIdx = dim3(t);
        for (;;) {
          start.arrive_and_wait();
          if (stop) return;
          blockIdx = dim3(current_block);
          body();
          done.arrive_and_wait();
        }
      });
    }
  }
  ~Pool() {
    stop = true;
    start.arrive_and_wait();
    for (auto& t : threads) t.join();
  }
};
Pool& pool();
template <class Body>
void launch(Config c, Body body) {
  if (c.block.x != Pool::kThreads || c.grid.x == 0) {
    std::fprintf(stderr, "bad launch %u x %u\n", c.grid.x, c.block.x);
    std::abort();
  }
  if (c.shared > 48 * 1024) { std::fprintf(stderr, "too much shared memory\n"); std::abort(); }
  gridDim = c.grid;
  blockDim = c.block;
  Pool& p = pool();
  p.body = body;
  for (unsigned b = 0; b < c.grid.x; ++b) {
    Block blk;
    blk.barrier = std::make_unique<std::barrier<>>(c.block.x);
    for (unsigned w = 0; w < c.block.x / 32; ++w) blk.warps.push_back(std::make_unique<Warp>());
    blk.shared.assign(c.shared, char(0x7f));  // poison: NaN-ish floats
    block = &blk;
    p.current_block = b;
    p.start.arrive_and_wait();
    p.done.arrive_and_wait();
  }
}
template <class T>
T* dynamic_shared() { return reinterpret_cast<T*>(block->shared.data()); }
}  // namespace emu

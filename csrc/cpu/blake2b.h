// BLAKE2b (RFC 7693) with an 8-byte digest and no key: the token hash of fnn_fast.data.tokens
// (hashlib.blake2b(token, digest_size=8), read little-endian), so that keys made in C++ equal
// the keys the Python readers make for the same bytes.
#pragma once
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>

namespace fnn_fast::cpu {

namespace blake2b_detail {

constexpr uint64_t kIV[8] = {0x6a09e667f3bcc908ull, 0xbb67ae8584caa73bull, 0x3c6ef372fe94f82bull,
                             0xa54ff53a5f1d36f1ull, 0x510e527fade682d1ull, 0x9b05688c2b3e6c1full,
                             0x1f83d9abfb41bd6bull, 0x5be0cd19137e2179ull};

constexpr uint8_t kSigma[12][16] = {
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
    {11, 8, 12, 0, 5, 2, 15, 13, 10, 14, 3, 6, 7, 1, 9, 4},
    {7, 9, 3, 1, 13, 12, 11, 14, 2, 6, 5, 10, 4, 0, 15, 8},
    {9, 0, 5, 7, 2, 4, 10, 15, 14, 1, 11, 12, 6, 8, 3, 13},
    {2, 12, 6, 10, 0, 11, 8, 3, 4, 13, 7, 5, 15, 14, 1, 9},
    {12, 5, 1, 15, 14, 13, 4, 10, 0, 7, 6, 3, 9, 2, 8, 11},
    {13, 11, 7, 14, 12, 1, 3, 9, 5, 0, 15, 4, 8, 6, 2, 10},
    {6, 15, 14, 9, 11, 3, 0, 8, 12, 2, 13, 7, 1, 4, 10, 5},
    {10, 2, 8, 4, 7, 6, 1, 5, 15, 11, 9, 14, 3, 12, 13, 0},
    {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15},
    {14, 10, 4, 8, 9, 15, 13, 6, 1, 12, 0, 2, 11, 7, 5, 3},
};

// The twelve rounds of the compression function on the work vector v and message m. Word is
// uint64_t, or a GCC vector of them for several messages side by side (one per lane).
template <typename Word>
inline void rounds(Word v[16], const Word m[16]) {
  auto rotr = [](Word x, int n) { return (x >> n) | (x << (64 - n)); };
  auto g = [&](int a, int b, int c, int d, const Word& x, const Word& y) {
    v[a] = v[a] + v[b] + x;
    v[d] = rotr(v[d] ^ v[a], 32);
    v[c] = v[c] + v[d];
    v[b] = rotr(v[b] ^ v[c], 24);
    v[a] = v[a] + v[b] + y;
    v[d] = rotr(v[d] ^ v[a], 16);
    v[c] = v[c] + v[d];
    v[b] = rotr(v[b] ^ v[c], 63);
  };
  for (const auto& s : kSigma) {
    g(0, 4, 8, 12, m[s[0]], m[s[1]]);
    g(1, 5, 9, 13, m[s[2]], m[s[3]]);
    g(2, 6, 10, 14, m[s[4]], m[s[5]]);
    g(3, 7, 11, 15, m[s[6]], m[s[7]]);
    g(0, 5, 10, 15, m[s[8]], m[s[9]]);
    g(1, 6, 11, 12, m[s[10]], m[s[11]]);
    g(2, 7, 8, 13, m[s[12]], m[s[13]]);
    g(3, 4, 9, 14, m[s[14]], m[s[15]]);
  }
}

inline void compress(uint64_t h[8], const uint8_t block[128], uint64_t bytes, bool last) {
  uint64_t m[16], v[16];
  for (int i = 0; i < 16; ++i) {
    uint64_t word = 0;
    for (int b = 7; b >= 0; --b) word = (word << 8) | block[8 * i + b];  // little-endian
    m[i] = word;
  }
  for (int i = 0; i < 8; ++i) {
    v[i] = h[i];
    v[i + 8] = kIV[i];
  }
  v[12] ^= bytes;  // the byte counter's high word stays 0: a token is far below 2^64 bytes
  if (last) v[14] = ~v[14];
  rounds(v, m);
  for (int i = 0; i < 8; ++i) h[i] ^= v[i] ^ v[i + 8];
}

}  // namespace blake2b_detail

// The 8-byte BLAKE2b digest of data[0, size) as a little-endian integer.
inline uint64_t blake2b_64(const char* data, size_t size) {
  using namespace blake2b_detail;
  uint64_t h[8];
  for (int i = 0; i < 8; ++i) h[i] = kIV[i];
  h[0] ^= 0x01010000ull ^ 8;  // digest length 8, no key, fanout 1, depth 1
  const auto* bytes = reinterpret_cast<const uint8_t*>(data);
  uint64_t counted = 0;
  while (size > 128) {  // the last block, even a full one, is compressed as the final block
    counted += 128;
    compress(h, bytes, counted, false);
    bytes += 128;
    size -= 128;
  }
  uint8_t block[128] = {};
  std::memcpy(block, bytes, size);
  compress(h, block, counted + size, true);
  return h[0];
}

// blake2b_64 of up to kBlake2bLanes inputs of at most 128 bytes each (one block), hashed side
// by side in SIMD lanes: the misses of a block of lines are hashed together, about as fast as
// one of them alone. out[i] = blake2b_64(data[i], sizes[i]) for i < count.
constexpr int kBlake2bLanes = 8;

inline void blake2b_64_lanes(const char* const* data, const int64_t* sizes, int count,
                             uint64_t* out) {
  using namespace blake2b_detail;
  typedef uint64_t Lanes __attribute__((vector_size(8 * kBlake2bLanes)));
  Lanes m[16] = {};
  Lanes counted = {};
  for (int lane = 0; lane < count; ++lane) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(data[lane]);
    counted[lane] = static_cast<uint64_t>(sizes[lane]);
    for (int64_t word = 0; word * 8 < sizes[lane]; ++word) {
      uint8_t padded[8] = {};
      std::memcpy(padded, bytes + word * 8, std::min<int64_t>(8, sizes[lane] - word * 8));
      uint64_t value = 0;
      for (int b = 7; b >= 0; --b) value = (value << 8) | padded[b];  // little-endian
      m[word][lane] = value;
    }
  }
  Lanes v[16];
  for (int i = 0; i < 8; ++i) {
    v[i] = Lanes{} + kIV[i];
    v[i + 8] = Lanes{} + kIV[i];
  }
  v[0] ^= 0x01010000ull ^ 8;
  v[12] ^= counted;
  v[14] = ~v[14];
  rounds(v, m);
  const Lanes h0 = (Lanes{} + (kIV[0] ^ 0x01010000ull ^ 8)) ^ v[0] ^ v[8];
  for (int lane = 0; lane < count; ++lane) out[lane] = h0[lane];
}

}  // namespace fnn_fast::cpu

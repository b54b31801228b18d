#include "cpu/encode.h"

namespace fnn_fast::cpu {
namespace {

constexpr int64_t kPadKey = -1;

inline uint64_t slot_of(int64_t key, int64_t field, int64_t capacity) {
  // splitmix64 finalizer over the key mixed with its field: hashed tokens are already random,
  // but bucketized numbers and libFM indices are small consecutive integers.
  uint64_t x = static_cast<uint64_t>(key) ^ (static_cast<uint64_t>(field) * 0x9E3779B97F4A7C15ull);
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  x ^= x >> 31;
  return x & static_cast<uint64_t>(capacity - 1);
}

}  // namespace

void build_vocab_table(const VocabTable& table, const int64_t* keys, const int64_t* fields,
                       const int64_t* ids, int64_t n) {
  for (int64_t i = 0; i < table.capacity; ++i) table.keys[i] = kPadKey;
  const uint64_t mask = static_cast<uint64_t>(table.capacity - 1);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t at = slot_of(keys[i], fields[i], table.capacity);
    while (table.keys[at] != kPadKey) at = (at + 1) & mask;
    table.keys[at] = keys[i];
    table.fields[at] = static_cast<int32_t>(fields[i]);
    table.ids[at] = ids[i];
  }
}

void encode_keys(const VocabTable& table, const int64_t* keys, const float* values,
                 int64_t rows, int64_t slots, const int64_t* slot_fields, const int64_t* oov_ids,
                 int64_t* out_ids, float* out_values) {
  const uint64_t mask = static_cast<uint64_t>(table.capacity - 1);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t s = 0; s < slots; ++s) {
      const int64_t at_rs = r * slots + s;
      const int64_t key = keys[at_rs];
      const int64_t field = slot_fields[s];
      int64_t id = oov_ids[field];
      if (key != kPadKey) {
        uint64_t at = slot_of(key, field, table.capacity);
        while (table.keys[at] != kPadKey) {
          if (table.keys[at] == key && table.fields[at] == field) {
            id = table.ids[at];
            break;
          }
          at = (at + 1) & mask;
        }
      }
      out_ids[at_rs] = id;
      out_values[at_rs] = key == kPadKey ? 0.0f : (values ? values[at_rs] : 1.0f);
    }
  }
}

}  // namespace fnn_fast::cpu

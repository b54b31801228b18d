// Feature encoding: 63-bit keys -> dense feature ids through per-field vocabularies. An
// open-addressing table (linear probing) built once from the encoder's vocabularies replaces a
// binary search per key: one or two cache lines per key instead of log2(vocabulary) probes.
#pragma once
#include <cstdint>

namespace fnn_fast::cpu {

// The table's three arrays have `capacity` entries (a power of two, above the vocabulary's
// size); an empty entry holds key -1 (keys are >= 0; -1 is the PAD key of an empty slot).
struct VocabTable {
  int64_t* keys;
  int32_t* fields;
  int64_t* ids;
  int64_t capacity;
};

// Insert n (key, field, id) triples; keys are distinct within a field.
void build_vocab_table(const VocabTable& table, const int64_t* keys, const int64_t* fields,
                       const int64_t* ids, int64_t n);

// out_ids[r, s] = id of (keys[r, s], slot_fields[s]), or oov_ids[field] when the key is unseen
// or PAD; out_values[r, s] = values[r, s] (1 when values is null), 0 for PAD slots.
void encode_keys(const VocabTable& table, const int64_t* keys, const float* values,
                 int64_t rows, int64_t slots, const int64_t* slot_fields, const int64_t* oov_ids,
                 int64_t* out_ids, float* out_values);

}  // namespace fnn_fast::cpu

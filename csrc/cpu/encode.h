// Feature encoding: keys -> dense feature ids through the encoder's per-field vocabularies, and
// delimited text (Criteo, plain CSV) -> feature ids in one pass, for scoring.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace fnn_fast::cpu {

// Every (key, field) -> id of a FeatureEncoder in one open-addressing table (linear probing).
// An entry is {key, id}, 16 bytes, so a lookup usually costs one cache line; the field is not
// stored: field f owns the ids (begin[f], end[f]), so an entry matches (key, f) when its id is
// in that range. begin[f] is f's out-of-vocabulary id.
class Vocabulary {
 public:
  // n (key, field, id) triples, keys distinct within a field, ids in their field's range.
  Vocabulary(const int64_t* keys, const int64_t* fields, const int64_t* ids, int64_t n,
             const int64_t* field_begin, const int64_t* field_end, int64_t num_fields);

  int64_t num_fields() const { return static_cast<int64_t>(begin_.size()); }
  int64_t oov_id(int64_t field) const { return begin_[field]; }
  int64_t oov_end(int64_t field) const { return end_[field]; }  // one past its last id

  // The id of (key, field); the field's OOV id when the key is unseen or PAD (-1).
  int64_t find(int64_t key, int64_t field) const;

  // find() in two steps, so that a caller can prefetch the entry between them: home() is
  // where the search starts, probe() the search.
  uint64_t home(int64_t key, int64_t field) const;
  void prefetch(uint64_t at) const { __builtin_prefetch(&entries_[at]); }
  int64_t probe(uint64_t at, int64_t key, int64_t field) const;

  // The fields of numbers under rule 3 (FeatureEncoder.value_fields): there encode_keys reads
  // a value key it does not know as its bucket's (the key's value bits cleared).
  void set_value_fields(const std::vector<int64_t>& fields);

  // out_ids[r, s] = find(keys[r, s], slot_fields[s]); out_values[r, s] = values[r, s] (1 when
  // values is null), 0 for PAD slots. `threads` > 1 splits the rows between OpenMP threads.
  void encode_keys(const int64_t* keys, const float* values, int64_t rows, int64_t slots,
                   const int64_t* slot_fields, int64_t* out_ids, float* out_values,
                   int threads) const;

 private:
  struct Entry {
    int64_t key;  // -1: empty
    int64_t id;
  };
  std::vector<Entry> entries_;
  uint64_t mask_ = 0;
  std::vector<int64_t> begin_, end_;
  std::vector<uint8_t> value_fields_;  // per field: 1 where rule-3 values back off
};

// The cells of delimited lines straight to feature ids: the same ids as parsing the lines in
// Python (fnn_fast.data.delimited, .tokens) and encoding their keys, for the plain lines that
// make up nearly every file. A line it does not handle exactly (a wrong number of cells, a
// number it does not parse strictly, a quote, a carriage return, an empty line) stops it, and
// the caller reads the part with the Python readers, which report or skip bad lines.
class DelimitedEncoder {
 public:
  // kBucketized, kSignedBuckets: numeric rule 1, 2 (fnn_fast.data.tokens.bucket_token);
  // kValueOrBucket: rule 3, the value's key, or its rule-2 bucket's where the value is not in
  // the vocabulary (fnn_fast.data.tokens.value_key).
  enum Kind : int32_t {
    kSkip = 0,
    kToken = 1,
    kBucketized = 2,
    kValue = 3,
    kSignedBuckets = 4,
    kValueOrBucket = 5
  };

  // Each of the `columns` columns: its slot (-1: not read) and Kind; a line of another width is
  // left to Python. memo_bits: log2 of the most cells remembered per slot.
  DelimitedEncoder(const Vocabulary& vocabulary, char delimiter, std::vector<int32_t> column_slots,
                   std::vector<int32_t> column_kinds, std::vector<int64_t> slot_fields,
                   int memo_bits);

  struct Result {
    int64_t rows = 0;      // lines encoded (all of them when ok)
    bool ok = true;        // false: the line after the encoded ones is not handled here
    bool all_ones = true;  // every value written is 1
    std::string reason;    // why not ok
  };

  // Lines of data[0, size) (the last may lack its newline), after skipping `skip_lines`
  // (a header). out_ids / out_values: [max_rows, slots].
  Result encode(const char* data, int64_t size, int64_t skip_lines, int64_t max_rows,
                int64_t* out_ids, float* out_values);

 private:
  // The ids of recently seen cells, per slot: a direct-mapped cache keyed by the cell's bytes
  // (cells of up to 16 bytes, zero-padded into two words), so a popular cell is hashed and
  // looked up once, not once per row. 32 bytes, one cache line per lookup.
  struct alignas(32) MemoEntry {
    uint64_t low, high;  // the bytes
    int64_t id;
    int64_t size;  // -1: empty
  };
  static constexpr int64_t kMemoBytes = 16;

  // A cell on its way to an id: lines are read in blocks, and each lookup (memo, then the
  // vocabulary for the cells the memo misses) is requested for the whole block before any is
  // read, so that the cache misses overlap instead of following one another.
  struct Cell {
    const char* bytes;
    int64_t size;
    int64_t slot;
    int64_t out;  // index into out_ids / out_values
    uint64_t low, high, hash;
    const char* token;  // what is hashed once the memo missed: the cell, or its bucket
    int64_t token_size;
    char bucket[24];
    int64_t key;  // the vocabulary key
    uint64_t value_bits;  // kValueOrBucket: the value's low key bits (0: the cell is empty)
    int64_t bucket_key;  // kValueOrBucket: the key tried when the value's is not known
    uint64_t home;
  };

  bool resolve_block(std::vector<Cell>& cells, int64_t* out_ids, float* out_values,
                     Result& result);
  MemoEntry& memo_of(const Cell& cell) {
    return memo_[memo_offset_[cell.slot] + (cell.hash & memo_mask_[cell.slot])];
  }

  const Vocabulary& vocabulary_;
  char delimiter_;
  std::vector<int32_t> column_slots_, column_kinds_;
  std::vector<int64_t> slot_fields_;
  std::vector<int32_t> slot_kinds_;
  int64_t slots_;
  // Each slot's memo: 2^memo_bits entries, fewer for a field with a smaller vocabulary.
  std::vector<int64_t> memo_offset_;
  std::vector<uint64_t> memo_mask_;
  std::vector<MemoEntry> memo_;
  int64_t missing_key_;  // the key of the empty cell
  std::vector<Cell> block_;
  std::vector<Cell*> misses_, to_hash_;
};

}  // namespace fnn_fast::cpu

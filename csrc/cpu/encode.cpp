#include "cpu/encode.h"

#include <math.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstring>
#include <limits>

#include "cpu/blake2b.h"

#ifdef FNN_FAST_OPENMP
#include <omp.h>
#endif

namespace fnn_fast::cpu {
namespace {

constexpr int64_t kPadKey = -1;
constexpr uint64_t kKeyMax = (uint64_t{1} << 63) - 1;
// Numeric rule 3's keys (fnn_fast.data.tokens.value_key): the bucket's key in the high bits,
// a hash of the value in the low 32 (never 0).
constexpr uint64_t kValueBits = 0xFFFFFFFFull;
constexpr uint64_t kBucketBits = kKeyMax & ~kValueBits;
constexpr int64_t kValueKey = 0;  // numeric_mode="value": the single feature of a numeric field
constexpr int64_t kRowsAhead = 2;  // encode_keys prefetches the table entries this many rows ahead

// libm's own log and pow, called through pointers: the compiler must not rewrite pow(x, 2) as
// x * x, which Python's `math.log(x) ** 2` (libm's pow) may differ from in the last bit.
double (*volatile libm_log)(double) = ::log;
double (*volatile libm_pow)(double, double) = ::pow;

inline uint64_t mix(uint64_t x) {  // splitmix64's finalizer
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The cell's first `size` (<= 16) bytes as two zero-padded words. Whole-word loads where the
// buffer allows (a byte-wise copy then a word load stalls on store forwarding).
inline void padded_words(const char* cell, int64_t size, const char* buffer_end, uint64_t* low,
                         uint64_t* high) {
  if (cell + 16 <= buffer_end) {
    uint64_t a, b;
    std::memcpy(&a, cell, 8);
    std::memcpy(&b, cell + 8, 8);
    auto keep = [](uint64_t word, int64_t bytes) {  // the first `bytes` (0..8) bytes
      return bytes >= 8 ? word : bytes <= 0 ? 0 : word & ((uint64_t{1} << (8 * bytes)) - 1);
    };
    *low = keep(a, size);
    *high = keep(b, size - 8);
    return;
  }
  char padded[16] = {};
  std::memcpy(padded, cell, size);
  std::memcpy(low, padded, 8);
  std::memcpy(high, padded + 8, 8);
}

// Bit 8i + 7 set where byte i of `word` equals the byte whose copies fill `pattern`.
inline uint64_t bytes_equal(uint64_t word, uint64_t pattern) {
  const uint64_t x = word ^ pattern;
  const uint64_t low7 = 0x7F7F7F7F7F7F7F7Full;
  return ~(((x & low7) + low7) | x | low7);
}

inline int64_t token_key(const char* token, int64_t size) {
  return static_cast<int64_t>(blake2b_64(token, size) & kKeyMax);
}

// Python's float(cell) for the strict spelling [+-]?(d+(.d*)?|.d+)([eE][+-]?d+)?, finite.
// Anything else (spaces, underscores, inf, nan, overflow) returns false: Python decides.
bool parse_number(const char* s, int64_t size, double* x) {
  int64_t i = 0;
  const bool negative = size > 0 && s[0] == '-';
  if (size > 0 && (s[0] == '+' || s[0] == '-')) ++i;
  const int64_t start = i;
  int64_t digits = 0;
  auto is_digit = [](char c) { return c >= '0' && c <= '9'; };
  while (i < size && is_digit(s[i])) ++i, ++digits;
  if (i < size && s[i] == '.') {
    ++i;
    while (i < size && is_digit(s[i])) ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < size && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < size && (s[i] == '+' || s[i] == '-')) ++i;
    int64_t exponent_digits = 0;
    while (i < size && is_digit(s[i])) ++i, ++exponent_digits;
    if (exponent_digits == 0) return false;
  }
  if (i != size) return false;
  const char* first = s + start;
  if (*first == '.') {  // from_chars wants a digit first: let the C library read ".5"
    char buffer[64];
    if (size - start + 2 > static_cast<int64_t>(sizeof buffer)) return false;
    buffer[0] = '0';
    std::memcpy(buffer + 1, first, size - start);
    auto [end, error] = std::from_chars(buffer, buffer + 1 + (size - start), *x);
    if (error != std::errc() || end != buffer + 1 + (size - start)) return false;
  } else {
    auto [end, error] = std::from_chars(first, s + size, *x);
    if (error != std::errc() || end != s + size) return false;
  }
  if (negative) *x = -*x;
  return std::isfinite(*x);
}

// The token of fnn_fast.data.tokens.bucket_token(x, rule) for rule 1 (kind kBucketized) or 2
// (kSignedBuckets). False where rule 1's int(x) would not fit 64 bits.
bool bucket_token(double x, int32_t kind, char* out, int64_t* size) {
  char* p = out;
  int64_t bucket;
  if (kind == DelimitedEncoder::kBucketized) {
    if (x > 2) {
      bucket = static_cast<int64_t>(std::floor(libm_pow(libm_log(x), 2.0)));
    } else {
      if (!(x > -9.0e18)) return false;
      bucket = static_cast<int64_t>(x);  // truncation toward zero, as int()
    }
  } else if (x == 0) {  // -0 included
    bucket = 0;
  } else {
    if (x < 0) *p++ = '-';
    const double magnitude = std::fabs(x);
    if (magnitude > 2) {
      bucket = static_cast<int64_t>(std::floor(libm_pow(libm_log(magnitude), 2.0)));
    } else {
      *p++ = 's';
      bucket = static_cast<int64_t>(std::floor(libm_log(magnitude) * 4.0));
    }
  }
  auto [end, error] = std::to_chars(p, out + 24, bucket);
  if (error != std::errc()) return false;
  *size = end - out;
  return true;
}

}  // namespace

// --- Vocabulary ---------------------------------------------------------------------------

Vocabulary::Vocabulary(const int64_t* keys, const int64_t* fields, const int64_t* ids, int64_t n,
                       const int64_t* field_begin, const int64_t* field_end, int64_t num_fields)
    : begin_(field_begin, field_begin + num_fields), end_(field_end, field_end + num_fields) {
  uint64_t capacity = 16;
  while (capacity < 2 * static_cast<uint64_t>(n) + 1) capacity <<= 1;  // load <= 1/2
  entries_.assign(capacity, Entry{kPadKey, 0});
  mask_ = capacity - 1;
  for (int64_t i = 0; i < n; ++i) {
    uint64_t at = home(keys[i], fields[i]);
    while (entries_[at].key != kPadKey) at = (at + 1) & mask_;
    entries_[at] = Entry{keys[i], ids[i]};
  }
}

uint64_t Vocabulary::home(int64_t key, int64_t field) const {
  // Mixed with the field: hashed tokens are random already, but bucketized numbers and libFM
  // indices are small consecutive integers shared by many fields.
  return mix(static_cast<uint64_t>(key) ^ (static_cast<uint64_t>(field) * 0x9E3779B97F4A7C15ull)) &
         mask_;
}

int64_t Vocabulary::probe(uint64_t at, int64_t key, int64_t field) const {
  const int64_t low = begin_[field], high = end_[field];
  for (;; at = (at + 1) & mask_) {
    const Entry& entry = entries_[at];
    if (entry.key == kPadKey) return low;
    if (entry.key == key && entry.id > low && entry.id < high) return entry.id;
  }
}

int64_t Vocabulary::find(int64_t key, int64_t field) const {
  if (key == kPadKey) return begin_[field];
  return probe(home(key, field), key, field);
}

void Vocabulary::set_value_fields(const std::vector<int64_t>& fields) {
  value_fields_.assign(begin_.size(), 0);
  for (int64_t field : fields) value_fields_.at(field) = 1;
}

void Vocabulary::encode_keys(const int64_t* keys, const float* values, int64_t rows,
                             int64_t slots, const int64_t* slot_fields, int64_t* out_ids,
                             float* out_values, int threads) const {
  // Table entries are scattered over far more memory than the caches hold: each row's entries
  // are requested kRowsAhead rows before they are read, so the misses overlap.
  auto encode_rows = [&](int64_t first, int64_t last) {
    std::vector<uint64_t> homes((kRowsAhead + 1) * slots);
    auto request = [&](int64_t r) {
      uint64_t* at = &homes[(r % (kRowsAhead + 1)) * slots];
      for (int64_t s = 0; s < slots; ++s) {
        const int64_t key = keys[r * slots + s];
        if (key == kPadKey) continue;
        at[s] = home(key, slot_fields[s]);
        __builtin_prefetch(&entries_[at[s]]);
      }
    };
    for (int64_t r = first; r < std::min(first + kRowsAhead, last); ++r) request(r);
    for (int64_t r = first; r < last; ++r) {
      if (r + kRowsAhead < last) request(r + kRowsAhead);
      const uint64_t* at = &homes[(r % (kRowsAhead + 1)) * slots];
      for (int64_t s = 0; s < slots; ++s) {
        const int64_t i = r * slots + s, key = keys[i], field = slot_fields[s];
        const bool pad = key == kPadKey;
        int64_t id = pad ? begin_[field] : probe(at[s], key, field);
        if (id == begin_[field] && !pad && !value_fields_.empty() && value_fields_[field] &&
            (static_cast<uint64_t>(key) & kValueBits) != 0)  // a rare value: its bucket
          id = find(static_cast<int64_t>(static_cast<uint64_t>(key) & kBucketBits), field);
        out_ids[i] = id;
        out_values[i] = pad ? 0.0f : (values ? values[i] : 1.0f);
      }
    }
  };
#ifdef FNN_FAST_OPENMP
  if (threads > 1 && rows > 1024) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t count = omp_get_num_threads(), t = omp_get_thread_num();
      encode_rows(rows * t / count, rows * (t + 1) / count);
    }
    return;
  }
#endif
  (void)threads;
  encode_rows(0, rows);
}

// --- DelimitedEncoder ---------------------------------------------------------------------

namespace {
constexpr int64_t kBlockLines = 32;  // lines whose lookups are requested together
}

DelimitedEncoder::DelimitedEncoder(const Vocabulary& vocabulary, char delimiter,
                                   std::vector<int32_t> column_slots,
                                   std::vector<int32_t> column_kinds,
                                   std::vector<int64_t> slot_fields, int memo_bits)
    : vocabulary_(vocabulary),
      delimiter_(delimiter),
      column_slots_(std::move(column_slots)),
      column_kinds_(std::move(column_kinds)),
      slot_fields_(std::move(slot_fields)),
      slot_kinds_(slot_fields_.size(), kSkip),
      slots_(static_cast<int64_t>(slot_fields_.size())),
      missing_key_(token_key("", 0)) {
  for (size_t c = 0; c < column_slots_.size(); ++c)
    if (column_slots_[c] >= 0) slot_kinds_[column_slots_[c]] = column_kinds_[c];
  // A field of few values needs a small memo, which stays in cache; raw numeric cells are
  // more varied than their buckets, so they get the full size.
  int64_t entries = 0;
  for (int64_t slot = 0; slot < slots_; ++slot) {
    const int64_t field = slot_fields_[slot];
    const int64_t vocabulary_size = vocabulary.oov_end(field) - vocabulary.oov_id(field);
    int bits = slot_kinds_[slot] == kValue ? 0 : memo_bits;
    if (slot_kinds_[slot] == kToken) {
      int needed = 6;
      while (needed < memo_bits && (int64_t{1} << (needed - 1)) < vocabulary_size) ++needed;
      bits = needed;
    }
    memo_offset_.push_back(entries);
    memo_mask_.push_back((uint64_t{1} << bits) - 1);
    entries += int64_t{1} << bits;
  }
  memo_.assign(entries, MemoEntry{0, 0, 0, -1});
  block_.reserve(kBlockLines * slots_);
  misses_.reserve(kBlockLines * slots_);
  to_hash_.reserve(kBlockLines * slots_);
}

bool DelimitedEncoder::resolve_block(std::vector<Cell>& cells, int64_t* out_ids,
                                     float* out_values, Result& result) {
  // 1. the memo: hits are done; the misses' tokens are collected for hashing
  misses_.clear();
  to_hash_.clear();
  for (Cell& cell : cells) {
    const int32_t kind = slot_kinds_[cell.slot];
    const int64_t field = slot_fields_[cell.slot];
    if (kind == kValue) {  // one feature per field, valued x: nothing to memoize
      float value = 1.0f;
      int64_t key = missing_key_;
      if (cell.size > 0) {
        double x;
        if (!parse_number(cell.bytes, cell.size, &x)) {
          result.reason = "a numeric cell not in plain decimal";
          return false;
        }
        if (!(std::fabs(x) <= std::numeric_limits<float>::max())) {  // inf as a float32 value
          result.reason = "a numeric value past float32's range";
          return false;
        }
        key = kValueKey;
        value = static_cast<float>(x);
      }
      out_ids[cell.out] = vocabulary_.find(key, field);
      out_values[cell.out] = value;
      result.all_ones &= value == 1.0f;
      continue;
    }
    out_values[cell.out] = 1.0f;
    if (cell.size <= kMemoBytes) {
      const MemoEntry& memo = memo_of(cell);
      if (memo.low == cell.low && memo.high == cell.high && memo.size == cell.size) {
        out_ids[cell.out] = memo.id;
        continue;
      }
    }
    misses_.push_back(&cell);
    cell.token = cell.bytes;
    cell.token_size = cell.size;
    cell.value_bits = 0;
    if ((kind == kBucketized || kind == kSignedBuckets || kind == kValueOrBucket) &&
        cell.size > 0) {
      double x;
      const int32_t rule_kind = kind == kValueOrBucket ? kSignedBuckets : kind;
      if (!parse_number(cell.bytes, cell.size, &x) ||
          !bucket_token(x, rule_kind, cell.bucket, &cell.token_size)) {
        result.reason = "a numeric cell not in plain decimal";
        return false;
      }
      cell.token = cell.bucket;
      if (kind == kValueOrBucket) {
        const double value = x + 0.0;  // -0.0 as 0.0
        char bytes[8];
        std::memcpy(bytes, &value, 8);  // little-endian, as struct.pack("<d")
        cell.value_bits = (blake2b_64(bytes, 8) & kValueBits) | 1;
      }
    }
    if (cell.token_size == 0) {
      cell.key = kind == kValueOrBucket ? static_cast<int64_t>(missing_key_ & kBucketBits)
                                        : missing_key_;
    } else if (cell.token_size > 128) {
      cell.key = token_key(cell.token, cell.token_size);
    } else {
      to_hash_.push_back(&cell);
      continue;
    }
    cell.home = vocabulary_.home(cell.key, field);
    vocabulary_.prefetch(cell.home);
  }
  // 2. hashing, several tokens side by side
  for (size_t first = 0; first < to_hash_.size(); first += kBlake2bLanes) {
    const int count = static_cast<int>(std::min<size_t>(kBlake2bLanes, to_hash_.size() - first));
    const char* tokens[kBlake2bLanes];
    int64_t sizes[kBlake2bLanes];
    uint64_t digests[kBlake2bLanes];
    for (int i = 0; i < count; ++i) {
      tokens[i] = to_hash_[first + i]->token;
      sizes[i] = to_hash_[first + i]->token_size;
    }
    blake2b_64_lanes(tokens, sizes, count, digests);
    for (int i = 0; i < count; ++i) {
      Cell& cell = *to_hash_[first + i];
      cell.key = static_cast<int64_t>(digests[i] & kKeyMax);
      if (cell.value_bits != 0) {
        cell.bucket_key = static_cast<int64_t>(digests[i] & kBucketBits);
        cell.key = static_cast<int64_t>(cell.bucket_key | cell.value_bits);
      }
      cell.home = vocabulary_.home(cell.key, slot_fields_[cell.slot]);
      vocabulary_.prefetch(cell.home);
    }
  }
  // 3. the vocabulary, for the cells the memo missed; the memo learns them
  for (Cell* cell : misses_) {
    const int64_t field = slot_fields_[cell->slot];
    int64_t id = vocabulary_.probe(cell->home, cell->key, field);
    if (cell->value_bits != 0 && id == vocabulary_.oov_id(field))  // a rare value: its bucket
      id = vocabulary_.find(cell->bucket_key, field);
    out_ids[cell->out] = id;
    if (cell->size <= kMemoBytes) memo_of(*cell) = MemoEntry{cell->low, cell->high, id, cell->size};
  }
  return true;
}

DelimitedEncoder::Result DelimitedEncoder::encode(const char* data, int64_t size,
                                                  int64_t skip_lines, int64_t max_rows,
                                                  int64_t* out_ids, float* out_values) {
  Result result;
  const char* p = data;
  const char* const end = data + size;
  for (int64_t i = 0; i < skip_lines && p < end; ++i) {
    const char* newline = static_cast<const char*>(std::memchr(p, '\n', end - p));
    p = newline ? newline + 1 : end;
  }
  const int64_t columns = static_cast<int64_t>(column_slots_.size());
  std::vector<const char*> starts(columns + 2);
  auto fail = [&result](const char* reason) {
    result.ok = false;
    result.reason = reason;
    return result;
  };
  constexpr uint64_t kCarriageReturns = 0x0D0D0D0D0D0D0D0Dull;
  const uint64_t delimiters = 0x0101010101010101ull * static_cast<uint8_t>(delimiter_);
  int64_t block_rows = 0;  // lines read into block_ and not yet resolved
  block_.clear();
  while (p < end) {
    if (result.rows + block_rows == max_rows) return fail("more lines than counted");
    const char* newline = static_cast<const char*>(std::memchr(p, '\n', end - p));
    const char* line_end = newline ? newline : end;
    if (line_end == p) return fail("an empty line");
    // starts[c]: where cell c starts; the entry after the last cell is one past its end.
    int64_t count = 0;
    starts[count++] = p;
    const char* c = p;
    for (; c + 8 <= line_end; c += 8) {  // eight bytes at a time, no branch per byte
      uint64_t word;
      std::memcpy(&word, c, 8);
      if (bytes_equal(word, kCarriageReturns)) return fail("a carriage return");
      for (uint64_t found = bytes_equal(word, delimiters); found; found &= found - 1) {
        if (count > columns) return fail("more cells than columns");
        starts[count++] = c + __builtin_ctzll(found) / 8 + 1;
      }
    }
    for (; c < line_end; ++c) {
      if (*c == delimiter_) {
        if (count > columns) return fail("more cells than columns");
        starts[count++] = c + 1;
      } else if (*c == '\r') {
        return fail("a carriage return");
      }
    }
    starts[count] = line_end + 1;
    if (count != columns) return fail("a line of another width");
    const int64_t row = result.rows + block_rows;
    for (int64_t c = 0; c < count; ++c) {
      const int64_t slot = column_slots_[c];
      if (slot < 0) continue;
      Cell cell;
      cell.bytes = starts[c];
      cell.size = starts[c + 1] - 1 - starts[c];
      cell.slot = slot;
      cell.out = row * slots_ + slot;
      if (cell.size <= kMemoBytes && column_kinds_[c] != kValue) {
        padded_words(cell.bytes, cell.size, end, &cell.low, &cell.high);
        cell.hash = mix(cell.low * 0x9E3779B97F4A7C15ull ^ cell.high ^
                        static_cast<uint64_t>(cell.size) << 56);
        __builtin_prefetch(&memo_of(cell));
      }
      block_.push_back(cell);
    }
    ++block_rows;
    p = newline ? newline + 1 : end;
    if (block_rows == kBlockLines || p >= end) {
      if (!resolve_block(block_, out_ids, out_values, result)) {
        result.ok = false;
        return result;
      }
      result.rows += block_rows;
      block_rows = 0;
      block_.clear();
    }
  }
  return result;
}

}  // namespace fnn_fast::cpu

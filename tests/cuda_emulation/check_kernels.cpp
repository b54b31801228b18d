// The CUDA kernels of csrc/cuda, run on CPU threads by the stand-in in cuda_runtime.h, against
// the CPU kernels of csrc/cpu on the same inputs. See run.sh. Prints each mismatch; exit status 1
// if any. "quick" as the first argument runs the main shapes only.
#include <cuda_runtime.h>

#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "cpu/fm.h"
#include "cuda/kernels.h"

// Few multiprocessors: the persistent grids then loop, as they do on a GPU with a large batch.
int emu_multiprocessors = 2;
thread_local dim3 threadIdx, blockIdx;
dim3 blockDim, gridDim;
namespace emu {
Block* block = nullptr;
Pool& pool() {
  static Pool instance;
  return instance;
}
}  // namespace emu

using namespace fnn_fast;
namespace {

int failures = 0;
std::mt19937_64 rng(1);
cuda::Launch kLaunch{0, nullptr};  // row_lanes varies in main

std::vector<float> randn(size_t n, float scale = 1.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = normal(rng);
  return v;
}

// |got - want| <= atol + rtol |want| everywhere (NaN fails).
void expect_close(const char* what, const std::string& tag, const float* got, const float* want,
                  size_t n, double rtol, double atol) {
  for (size_t i = 0; i < n; ++i) {
    const double error = std::abs(double(got[i]) - double(want[i]));
    if (!(error <= atol + rtol * std::abs(double(want[i])))) {
      ++failures;
      std::printf("FAIL %s %s: at %zu got %.8g want %.8g\n", what, tag.c_str(), i, got[i],
                  want[i]);
      return;
    }
  }
}

struct Batch {
  std::vector<int64_t> ids;
  std::vector<float> values;
};

// Random ids with hot rows: the last row in every sample (twice in half of them), row 5 in slot
// 1 of every sample, rows 0..6 in slot 2 of the first 300 samples.
Batch make_batch(int64_t batch, int64_t slots, int64_t rows, bool with_values) {
  Batch b;
  std::uniform_int_distribution<int64_t> pick(0, rows - 1);
  std::uniform_real_distribution<float> value(0.5f, 1.5f);
  b.ids.resize(batch * slots);
  for (auto& id : b.ids) id = pick(rng);
  for (int64_t i = 0; i < batch && slots > 0; ++i) {
    b.ids[i * slots] = rows - 1;
    if (i % 2 == 0) b.ids[i * slots + slots - 1] = rows - 1;
    if (slots > 2) b.ids[i * slots + 1] = 5 % rows;
    if (slots > 3 && i < 300) b.ids[i * slots + 2] = i % 7;
  }
  if (with_values) {
    b.values.resize(batch * slots);
    for (auto& x : b.values) x = value(rng);
  }
  return b;
}

// Forward kernels; offset 1 misaligns the table, which turns the 16-byte vector path off.
void test_forward(int64_t batch, int64_t slots, int64_t dim, bool with_values, int offset) {
  const int64_t rows = 97;
  std::vector<float> storage = randn(rows * dim + 4);
  const float* table = storage.data() + offset;
  Batch b = make_batch(batch, slots, rows, with_values);
  const float* values = with_values ? b.values.data() : nullptr;
  const std::string tag = "batch " + std::to_string(batch) + " slots " + std::to_string(slots) +
                          " dim " + std::to_string(dim) + " offset " + std::to_string(offset);

  std::vector<float> logits(batch, NAN), sums(batch * (dim - 1), NAN);
  std::vector<float> want_logits(batch), want_sums(batch * (dim - 1));
  cuda::fm_forward(table, dim, b.ids.data(), values, batch, slots, logits.data(), sums.data(),
                   kLaunch);
  cpu::fm_forward(table, rows, dim, b.ids.data(), values, batch, slots, want_logits.data(),
                  want_sums.data());
  expect_close("fm logits", tag, logits.data(), want_logits.data(), batch, 1e-5, 1e-5);
  expect_close("fm sums", tag, sums.data(), want_sums.data(), sums.size(), 1e-5, 1e-5);
  std::vector<float> scores(batch, NAN);
  cuda::fm_forward(table, dim, b.ids.data(), values, batch, slots, scores.data(), nullptr,
                   kLaunch);
  expect_close("fm scores", tag, scores.data(), want_logits.data(), batch, 1e-5, 1e-5);

  std::vector<float> z(batch * slots * dim, NAN), want_z(batch * slots * dim);
  cuda::fnn_fields(table, dim, b.ids.data(), values, batch, slots, nullptr, nullptr, slots,
                   z.data(), kLaunch);
  cpu::fnn_fields(table, rows, dim, b.ids.data(), values, batch, slots, nullptr, slots,
                  want_z.data(), slots * dim);
  expect_close("fnn gather", tag, z.data(), want_z.data(), z.size(), 0, 0);

  // Fields with several slots, fields with none; the CUDA kernel takes them ordered by field.
  const int64_t fields = slots + 2;
  std::vector<int64_t> slot_fields(slots);
  for (int64_t s = 0; s < slots; ++s) slot_fields[s] = (s * 3 + 1) % fields;
  if (slots > 2) slot_fields[slots - 1] = slot_fields[0];
  std::vector<int64_t> field_slots, field_offsets(fields + 1);
  for (int64_t f = 0; f < fields; ++f) {
    field_offsets[f] = static_cast<int64_t>(field_slots.size());
    for (int64_t s = 0; s < slots; ++s) {
      if (slot_fields[s] == f) field_slots.push_back(s);
    }
  }
  field_offsets[fields] = static_cast<int64_t>(field_slots.size());
  std::vector<float> zf(batch * fields * dim, NAN), want_zf(batch * fields * dim);
  cuda::fnn_fields(table, dim, b.ids.data(), values, batch, slots, field_slots.data(),
                   field_offsets.data(), fields, zf.data(), kLaunch);
  cpu::fnn_fields(table, rows, dim, b.ids.data(), values, batch, slots, slot_fields.data(),
                  fields, want_zf.data(), fields * dim);
  expect_close("fnn gather by field", tag, zf.data(), want_zf.data(), zf.size(), 1e-6, 1e-6);
}

// Fused backward + update over several steps: tables and optimizer states against the CPU's.
void test_backward(bool fm, Rule rule, int64_t batch, int64_t slots, int64_t dim,
                   bool with_values, int64_t long_run, bool multi_valued, int steps = 3) {
  const int64_t rows = 61;
  std::vector<float> table = randn(rows * dim, 0.3f), want_table = table;
  const bool per_column = rule == Rule::kAdagrad || rule == Rule::kAdam;
  const size_t state1_size = rule == Rule::kSGD ? 0 : per_column ? rows * dim : rows;
  std::vector<float> s1(state1_size, 0.0f), want_s1 = s1;
  std::vector<float> s2(rule == Rule::kAdam ? rows * dim : 0, 0.0f), want_s2 = s2;
  std::vector<int64_t> slot_fields;
  int64_t fields = slots;
  if (multi_valued) {
    fields = slots + 1;
    for (int64_t s = 0; s < slots; ++s) slot_fields.push_back((s + 1) / 2);
  }
  const std::string tag = std::string(fm ? "fm" : "fnn") + " rule " +
                          std::to_string(static_cast<int>(rule)) + " batch " +
                          std::to_string(batch) + " slots " + std::to_string(slots) + " dim " +
                          std::to_string(dim) + " long_run " + std::to_string(long_run) +
                          (multi_valued ? " multi-valued" : "") + (with_values ? " values" : "");
  for (int step = 1; step <= steps; ++step) {
    Batch b = make_batch(batch, slots, rows, with_values);
    const float* values = with_values ? b.values.data() : nullptr;
    const UpdateParams p{rule,   rule == Rule::kAdam ? 0.01f : 0.1f,
                         0.01f,  rule == Rule::kAdam ? 1e-8f : 1e-10f,
                         0.9f,   0.999f,
                         step};
    const int64_t items = batch * slots;
    const size_t bytes = cuda::backward_workspace_bytes(items, rows, dim, long_run, kLaunch);
    std::vector<char> workspace(bytes + 256);
    char* aligned = workspace.data() + (256 - reinterpret_cast<uintptr_t>(workspace.data()) % 256);
    std::memset(aligned, 0x7f, bytes);  // poison
    void* ws = bytes ? aligned : nullptr;
    if (fm) {
      // Both sides read the same sums: the CPU table's, before this step.
      std::vector<float> sums(batch * (dim - 1)), logits(batch);
      cpu::fm_forward(want_table.data(), rows, dim, b.ids.data(), values, batch, slots,
                      logits.data(), sums.data());
      std::vector<float> grad = randn(batch);
      cuda::fm_backward_update(table.data(), rows, dim, b.ids.data(), values, batch, slots,
                               sums.data(), grad.data(), p, {s1.data(), s2.data()}, ws, bytes,
                               long_run, kLaunch);
      cpu::fm_backward_update(want_table.data(), rows, dim, b.ids.data(), values, batch, slots,
                              sums.data(), grad.data(), p, {want_s1.data(), want_s2.data()});
    } else {
      std::vector<float> grad = randn(batch * fields * dim);
      const int64_t* sf = multi_valued ? slot_fields.data() : nullptr;
      cuda::fnn_fields_backward_update(table.data(), rows, dim, b.ids.data(), values, batch,
                                       slots, sf, fields, grad.data(), p, {s1.data(), s2.data()},
                                       ws, bytes, long_run, kLaunch);
      cpu::fnn_fields_backward_update(want_table.data(), rows, dim, b.ids.data(), values, batch,
                                      slots, sf, fields, grad.data(), fields * dim, p,
                                      {want_s1.data(), want_s2.data()});
    }
  }
  expect_close("table", tag, table.data(), want_table.data(), table.size(), 1e-4, 2e-5);
  expect_close("state1", tag, s1.data(), want_s1.data(), s1.size(), 1e-4, 1e-6);
  expect_close("state2", tag, s2.data(), want_s2.data(), s2.size(), 1e-4, 1e-8);
}

}  // namespace

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::string(argv[1]) == "quick";
  // Dims 4, 8, 16, 64, 256, 384: the vector path, 1 to 4 chunks a lane; the others scalar.
  for (int64_t dim : {2, 4, 6, 8, 11, 16, 41, 64, 101, 256, 384}) {
    for (int offset : {0, 1}) {
      if (offset && dim > 128) continue;  // scalar rows of more than 128 floats are refused
      test_forward(37, 7, dim, true, offset);
      if (quick) continue;
      test_forward(1, 1, dim, false, offset);
      test_forward(0, 3, dim, true, offset);
      test_forward(5, 39, dim, false, offset);
      test_forward(3, 0, dim, true, offset);
    }
  }
  std::printf("forward: %d failures\n", failures);
  for (bool fm : {true, false}) {
    for (Rule rule : {Rule::kSGD, Rule::kAdagrad, Rule::kRowwiseAdagrad, Rule::kAdam}) {
      for (int64_t dim : {2, 4, 11, 16, 41}) {
        for (int64_t long_run : {int64_t{1}, int64_t{3}, int64_t{64}, int64_t{1} << 30}) {
          test_backward(fm, rule, 150, 5, dim, true, long_run, false);
          if (quick) continue;
          test_backward(fm, rule, 1, 3, dim, false, long_run, false);
          if (!fm) test_backward(fm, rule, 40, 5, dim, true, long_run, true);
        }
      }
    }
    std::printf("backward %s: %d failures\n", fm ? "fm" : "fnn", failures);
  }
  // Lanes per row set by hand: narrower and wider groups than the default plan.
  for (int lanes : {4, 16, 32}) {
    kLaunch.row_lanes = lanes;
    test_forward(37, 7, 11, true, 0);
    test_forward(21, 5, 16, false, 0);
    test_backward(true, Rule::kRowwiseAdagrad, 150, 5, 11, true, 3, false);
    test_backward(false, Rule::kAdam, 150, 5, 16, true, 64, false);
  }
  kLaunch.row_lanes = 0;
  std::printf("row lanes set by hand: %d failures\n", failures);
  // A hot row with far more segments than the combining block has slices; an empty batch.
  test_backward(true, Rule::kRowwiseAdagrad, 1200, 4, 11, true, 2, false, 2);
  test_backward(false, Rule::kAdam, 1200, 4, 8, true, 2, false, 2);
  test_backward(true, Rule::kAdagrad, 600, 4, 4, true, 1, false, 2);
  test_backward(true, Rule::kAdam, 0, 4, 11, true, 64, false, 1);
  std::printf("%s: %d failures\n", failures ? "FAILED" : "PASSED", failures);
  return failures != 0;
}

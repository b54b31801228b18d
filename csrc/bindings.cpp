// pybind11 module fnn_fast._C. Kernels take raw addresses (Tensor.data_ptr()) and sizes; the
// Python side (fnn_fast/ops/native.py) checks dtype, device, shape, contiguity and id range
// before any address crosses over. The GIL is released while a kernel runs.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/encode.h"
#include "cpu/fm.h"

#ifdef FNN_FAST_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
namespace cpu = fnn_fast::cpu;
using Address = std::uintptr_t;  // 0 stands for "absent" (no values, no slot_fields, no state)

template <typename T>
static T* ptr(Address address) {
  return reinterpret_cast<T*>(address);
}

static cpu::UpdateParams update_params(int64_t rule, float lr, float weight_decay, float eps,
                                       float beta1, float beta2, int64_t step) {
  if (rule < 0 || rule > 3) throw py::value_error("unknown update rule");
  return {static_cast<cpu::Rule>(rule), lr, weight_decay, eps, beta1, beta2, step};
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fnn_fast native CPU kernels (torch-free)";

  m.def(
      "fm_forward",
      [](Address table, int64_t dim, Address ids, Address values, int64_t batch, int64_t slots,
         Address logits, Address sums) {
        py::gil_scoped_release release;
        cpu::fm_forward(ptr<const float>(table), dim, ptr<const int64_t>(ids),
                        ptr<const float>(values), batch, slots, ptr<float>(logits),
                        ptr<float>(sums));
      },
      "FM logits without bias; also sum_s x v per sample when sums != 0.");

  m.def(
      "fm_backward_update",
      [](Address table, int64_t num_rows, int64_t dim, Address ids, Address values,
         int64_t batch, int64_t slots, Address sums, Address grad_logits, int64_t rule, float lr,
         float weight_decay, float eps, float beta1, float beta2, int64_t step, Address state1,
         Address state2) {
        const auto params = update_params(rule, lr, weight_decay, eps, beta1, beta2, step);
        py::gil_scoped_release release;
        cpu::fm_backward_update(ptr<float>(table), num_rows, dim, ptr<const int64_t>(ids),
                                ptr<const float>(values), batch, slots, ptr<const float>(sums),
                                ptr<const float>(grad_logits), params,
                                {ptr<float>(state1), ptr<float>(state2)});
      },
      "FM backward fused with the sparse update of the rows present in the batch.");

  m.def(
      "fnn_gather",
      [](Address table, int64_t dim, Address ids, Address values, int64_t batch, int64_t slots,
         Address slot_fields, int64_t num_fields, Address z) {
        py::gil_scoped_release release;
        cpu::fnn_gather(ptr<const float>(table), dim, ptr<const int64_t>(ids),
                        ptr<const float>(values), batch, slots, ptr<const int64_t>(slot_fields),
                        num_fields, ptr<float>(z));
      },
      "The FNN input [batch, fields * dim] (without w0).");

  m.def(
      "fnn_gather_backward_update",
      [](Address table, int64_t num_rows, int64_t dim, Address ids, Address values,
         int64_t batch, int64_t slots, Address slot_fields, int64_t num_fields, Address grad_z,
         int64_t rule, float lr, float weight_decay, float eps, float beta1, float beta2,
         int64_t step, Address state1, Address state2) {
        const auto params = update_params(rule, lr, weight_decay, eps, beta1, beta2, step);
        py::gil_scoped_release release;
        cpu::fnn_gather_backward_update(
            ptr<float>(table), num_rows, dim, ptr<const int64_t>(ids), ptr<const float>(values),
            batch, slots, ptr<const int64_t>(slot_fields), num_fields,
            ptr<const float>(grad_z), params, {ptr<float>(state1), ptr<float>(state2)});
      },
      "FNN gather backward fused with the sparse update of the rows present in the batch.");

  m.def(
      "build_vocab_table",
      [](Address table_keys, Address table_fields, Address table_ids, int64_t capacity,
         Address keys, Address fields, Address ids, int64_t n) {
        if (capacity <= n || (capacity & (capacity - 1)) != 0)
          throw py::value_error("capacity must be a power of two above the vocabulary size");
        py::gil_scoped_release release;
        cpu::build_vocab_table(
            {ptr<int64_t>(table_keys), ptr<int32_t>(table_fields), ptr<int64_t>(table_ids),
             capacity},
            ptr<const int64_t>(keys), ptr<const int64_t>(fields), ptr<const int64_t>(ids), n);
      },
      "Fill an open-addressing table of (key, field) -> feature id.");

  m.def(
      "encode_keys",
      [](Address table_keys, Address table_fields, Address table_ids, int64_t capacity,
         Address keys, Address values, int64_t rows, int64_t slots, Address slot_fields,
         Address oov_ids, Address out_ids, Address out_values) {
        py::gil_scoped_release release;
        cpu::encode_keys(
            {ptr<int64_t>(table_keys), ptr<int32_t>(table_fields), ptr<int64_t>(table_ids),
             capacity},
            ptr<const int64_t>(keys), ptr<const float>(values), rows, slots,
            ptr<const int64_t>(slot_fields), ptr<const int64_t>(oov_ids), ptr<int64_t>(out_ids),
            ptr<float>(out_values));
      },
      "Keys [rows, slots] -> feature ids and values (0 for PAD slots).");

  m.def("num_threads", []() {
#ifdef FNN_FAST_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
}

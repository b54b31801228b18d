// pybind11 module fnn_fast._C. Kernels take raw addresses (Tensor.data_ptr()) and sizes; the
// Python side (fnn_fast/ops/checks.py) checks dtype, device, shape and contiguity before any
// address crosses over; the CPU kernels also check the sizes they are given and each id they
// read (an invalid size raises ValueError here). The GIL is released while a CPU
// kernel runs. The submodule _C.cuda exists when the CUDA kernels were compiled in
// (FNN_FAST_CUDA): its functions queue work on a stream given as an integer (a cudaStream_t).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>

#include "cpu/encode.h"
#include "cpu/fm.h"
#include "cpu/gather.h"
#ifdef FNN_FAST_CUDA
#include "cuda/kernels.h"
#endif

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

static fnn_fast::UpdateParams update_params(int64_t rule, float lr, float weight_decay, float eps,
                                       float beta1, float beta2, int64_t step) {
  if (rule < 0 || rule > 3) throw py::value_error("unknown update rule");
  return {static_cast<fnn_fast::Rule>(rule), lr, weight_decay, eps, beta1, beta2, step};
}

#ifdef FNN_FAST_CUDA
namespace cuda = fnn_fast::cuda;

// row_lanes: lanes per row, 0 for the kernels' own choice (see cuda/common.cuh).
static cuda::Launch launch_on(int device, Address stream, int row_lanes) {
  return {device, reinterpret_cast<void*>(stream), row_lanes};
}

// Launches are asynchronous and cheap: the GIL stays held (no thread could use the time).
static void add_cuda_functions(py::module_ m) {
  m.def("device_count", &cuda::device_count, "GPUs the linked CUDA runtime sees (0 without).");

  m.def(
      "fm_forward",
      [](Address table, int64_t dim, Address ids, Address values, int64_t batch, int64_t slots,
         Address logits, Address sums, int device, Address stream, int row_lanes) {
        cuda::fm_forward(ptr<const float>(table), dim, ptr<const int64_t>(ids),
                         ptr<const float>(values), batch, slots, ptr<float>(logits),
                         ptr<float>(sums), launch_on(device, stream, row_lanes));
      },
      "FM logits without bias; also sum_s x v per sample when sums != 0.");

  m.def(
      "fnn_fields",
      [](Address table, int64_t dim, Address ids, Address values, int64_t batch, int64_t slots,
         Address field_slots, Address field_offsets, int64_t num_fields, Address z, int device,
         Address stream, int row_lanes) {
        cuda::fnn_fields(ptr<const float>(table), dim, ptr<const int64_t>(ids),
                         ptr<const float>(values), batch, slots, ptr<const int64_t>(field_slots),
                         ptr<const int64_t>(field_offsets), num_fields, ptr<float>(z),
                         launch_on(device, stream, row_lanes));
      },
      "The FNN input [batch, fields * dim] (without w0); fields given as slots ordered by field.");

  m.def(
      "backward_workspace_bytes",
      [](int64_t items, int64_t num_rows, int64_t dim, int64_t long_run, int device,
         Address stream, int row_lanes) {
        return cuda::backward_workspace_bytes(items, num_rows, dim, long_run,
                                              launch_on(device, stream, row_lanes));
      },
      "Device bytes the fused backward needs for batch * slots lookups.");

  m.def(
      "fm_backward_update",
      [](Address table, int64_t num_rows, int64_t dim, Address ids, Address values,
         int64_t batch, int64_t slots, Address sums, Address grad_logits, int64_t rule, float lr,
         float weight_decay, float eps, float beta1, float beta2, int64_t step, Address state1,
         Address state2, Address workspace, std::size_t workspace_bytes, int64_t long_run,
         int device, Address stream, int row_lanes) {
        cuda::fm_backward_update(
            ptr<float>(table), num_rows, dim, ptr<const int64_t>(ids), ptr<const float>(values),
            batch, slots, ptr<const float>(sums), ptr<const float>(grad_logits),
            update_params(rule, lr, weight_decay, eps, beta1, beta2, step),
            {ptr<float>(state1), ptr<float>(state2)}, ptr<void>(workspace), workspace_bytes,
            long_run, launch_on(device, stream, row_lanes));
      },
      "FM backward fused with the sparse update of the rows present in the batch.");

  m.def(
      "fnn_fields_backward_update",
      [](Address table, int64_t num_rows, int64_t dim, Address ids, Address values,
         int64_t batch, int64_t slots, Address slot_fields, int64_t num_fields, Address grad_z,
         int64_t rule, float lr, float weight_decay, float eps, float beta1, float beta2,
         int64_t step, Address state1, Address state2, Address workspace,
         std::size_t workspace_bytes, int64_t long_run, int device, Address stream,
         int row_lanes) {
        cuda::fnn_fields_backward_update(
            ptr<float>(table), num_rows, dim, ptr<const int64_t>(ids), ptr<const float>(values),
            batch, slots, ptr<const int64_t>(slot_fields), num_fields, ptr<const float>(grad_z),
            update_params(rule, lr, weight_decay, eps, beta1, beta2, step),
            {ptr<float>(state1), ptr<float>(state2)}, ptr<void>(workspace), workspace_bytes,
            long_run, launch_on(device, stream, row_lanes));
      },
      "FNN gather backward fused with the sparse update of the rows present in the batch.");
}
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "fnn_fast native kernels (torch-free): CPU, and CUDA in _C.cuda when compiled in";
#ifndef FNN_FAST_CUDA
  m.attr("cuda_unavailable_reason") = FNN_FAST_NO_CUDA_REASON;
#endif
  // The sanitizer this build runs under (FNN_FAST_SANITIZE), "" for none: lets CI confirm that
  // its sanitized test run loaded the sanitized build.
  m.attr("sanitize") = FNN_FAST_SANITIZE_NAME;

  m.def(
      "fm_forward",
      [](Address table, int64_t num_rows, int64_t dim, Address ids, Address values,
         int64_t batch, int64_t slots, Address logits, Address sums) {
        py::gil_scoped_release release;
        return cpu::fm_forward(ptr<const float>(table), num_rows, dim, ptr<const int64_t>(ids),
                               ptr<const float>(values), batch, slots, ptr<float>(logits),
                               ptr<float>(sums));
      },
      "FM logits without bias; also sum_s x v per sample when sums != 0. Returns -1, or the "
      "flat position of the first id outside the table (the outputs are then unusable).");

  m.def(
      "fm_backward_update",
      [](Address table, int64_t num_rows, int64_t dim, Address ids, Address values,
         int64_t batch, int64_t slots, Address sums, Address grad_logits, int64_t rule, float lr,
         float weight_decay, float eps, float beta1, float beta2, int64_t step, Address state1,
         Address state2) {
        const auto params = update_params(rule, lr, weight_decay, eps, beta1, beta2, step);
        py::gil_scoped_release release;
        return cpu::fm_backward_update(ptr<float>(table), num_rows, dim, ptr<const int64_t>(ids),
                                ptr<const float>(values), batch, slots, ptr<const float>(sums),
                                ptr<const float>(grad_logits), params,
                                {ptr<float>(state1), ptr<float>(state2)});
      },
      "FM backward fused with the sparse update of the rows present in the batch. Returns as "
      "fm_forward does (nothing is updated when an id is outside the table).");

  m.def(
      "fnn_fields",
      [](Address table, int64_t num_rows, int64_t dim, Address ids, Address values,
         int64_t batch, int64_t slots, Address slot_fields, int64_t num_fields, Address z,
         int64_t z_width) {
        py::gil_scoped_release release;
        return cpu::fnn_fields(ptr<const float>(table), num_rows, dim, ptr<const int64_t>(ids),
                               ptr<const float>(values), batch, slots,
                               ptr<const int64_t>(slot_fields), num_fields, ptr<float>(z),
                               z_width);
      },
      "The FNN input [batch, z_width] (without w0; zeros past fields * dim). Returns as "
      "fm_forward does.");

  m.def(
      "fnn_fields_backward_update",
      [](Address table, int64_t num_rows, int64_t dim, Address ids, Address values,
         int64_t batch, int64_t slots, Address slot_fields, int64_t num_fields, Address grad_z,
         int64_t grad_width, int64_t rule, float lr, float weight_decay, float eps, float beta1,
         float beta2, int64_t step, Address state1, Address state2) {
        const auto params = update_params(rule, lr, weight_decay, eps, beta1, beta2, step);
        py::gil_scoped_release release;
        return cpu::fnn_fields_backward_update(
            ptr<float>(table), num_rows, dim, ptr<const int64_t>(ids), ptr<const float>(values),
            batch, slots, ptr<const int64_t>(slot_fields), num_fields, ptr<const float>(grad_z),
            grad_width, params, {ptr<float>(state1), ptr<float>(state2)});
      },
      "FNN gather backward fused with the sparse update of the rows present in the batch; "
      "grad_z rows are grad_width floats apart. Returns as fm_backward_update does.");

  m.def(
      "gather_sum",
      [](Address table, int64_t num_rows, int64_t dim, Address ids, int64_t batch, int64_t slots,
         Address out) {
        py::gil_scoped_release release;
        return cpu::gather_sum(ptr<const float>(table), num_rows, dim, ptr<const int64_t>(ids),
                               batch, slots, ptr<float>(out));
      },
      "out [batch, dim] = each sample's looked-up rows summed (prefetched): fnn-fast bench's "
      "gather bound. Returns as fm_forward does.");

  py::class_<cpu::Vocabulary>(m, "Vocabulary",
                              "A FeatureEncoder's (key, field) -> feature id, as one hash table.")
      .def(py::init([](Address keys, Address fields, Address ids, int64_t n, Address field_begin,
                       Address field_end, int64_t num_fields) {
             py::gil_scoped_release release;
             return new cpu::Vocabulary(ptr<const int64_t>(keys), ptr<const int64_t>(fields),
                                        ptr<const int64_t>(ids), n,
                                        ptr<const int64_t>(field_begin),
                                        ptr<const int64_t>(field_end), num_fields);
           }),
           "n (key, field, id) triples; field f owns the ids (begin[f], end[f]).")
      .def("find", &cpu::Vocabulary::find, "The id of (key, field), or the field's OOV id.")
      .def("set_value_fields", &cpu::Vocabulary::set_value_fields,
           "Fields whose unknown rule-3 value keys encode_keys reads as their bucket's.")
      .def(
          "encode_keys",
          [](const cpu::Vocabulary& vocabulary, Address keys, Address values, int64_t rows,
             int64_t slots, Address slot_fields, Address out_ids, Address out_values,
             int threads) {
            py::gil_scoped_release release;
            vocabulary.encode_keys(ptr<const int64_t>(keys), ptr<const float>(values), rows,
                                   slots, ptr<const int64_t>(slot_fields), ptr<int64_t>(out_ids),
                                   ptr<float>(out_values), threads);
          },
          "Keys [rows, slots] -> feature ids and values (0 for PAD slots).");

  py::class_<cpu::DelimitedEncoder>(m, "DelimitedEncoder",
                                    "Delimited lines straight to feature ids (one thread).")
      .def(py::init<const cpu::Vocabulary&, char, std::vector<int32_t>, std::vector<int32_t>,
                    std::vector<int64_t>, int>(),
           py::arg("vocabulary"), py::arg("delimiter"), py::arg("column_slots"),
           py::arg("column_kinds"), py::arg("slot_fields"), py::arg("memo_bits"),
           py::keep_alive<1, 2>())
      .def(
          "encode",
          [](cpu::DelimitedEncoder& encoder, py::buffer data, int64_t skip_lines,
             int64_t max_rows, Address out_ids, Address out_values) {
            py::buffer_info bytes = data.request();
            cpu::DelimitedEncoder::Result result;
            {
              py::gil_scoped_release release;
              result = encoder.encode(static_cast<const char*>(bytes.ptr),
                                      bytes.size * bytes.itemsize, skip_lines, max_rows,
                                      ptr<int64_t>(out_ids), ptr<float>(out_values));
            }
            return py::make_tuple(result.rows, result.ok, result.all_ones, result.reason);
          },
          "(rows, ok, all_ones, reason): ok is False at the first line it does not handle.");

#ifdef FNN_FAST_CUDA
  add_cuda_functions(m.def_submodule("cuda", "fnn_fast CUDA kernels (torch-free)"));
#endif

  m.def("num_threads", []() {
#ifdef FNN_FAST_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
  m.def(
      "set_num_threads",
      [](int threads) {
#ifdef FNN_FAST_OPENMP
        if (threads > 0) omp_set_num_threads(threads);
#else
        (void)threads;
#endif
      },
      "Threads the CPU kernels use from now on (OpenMP's count; torch's own is separate).");
}

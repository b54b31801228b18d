// pybind11 module fnn_fast._C. Kernels take raw addresses (Tensor.data_ptr()) and sizes;
// the Python side (fnn_fast/ops/native.py) checks dtype, device, shape, contiguity and id range.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "cpu/fm.h"

#ifdef FNN_FAST_OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

template <typename T>
static T* as_ptr(std::uintptr_t address) {
  return reinterpret_cast<T*>(address);
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "fnn_fast native kernels (torch-free)";
  m.def(
      "fm_forward",
      [](std::uintptr_t table, int64_t dim, std::uintptr_t ids, std::uintptr_t values,
         int64_t batch, int64_t slots, float w0, std::uintptr_t logits) {
        py::gil_scoped_release release;
        fnn_fast::cpu::fm_forward(as_ptr<const float>(table), dim, as_ptr<const int64_t>(ids),
                                  values ? as_ptr<const float>(values) : nullptr, batch, slots,
                                  w0, as_ptr<float>(logits));
      },
      py::arg("table"), py::arg("dim"), py::arg("ids"), py::arg("values"), py::arg("batch"),
      py::arg("slots"), py::arg("w0"), py::arg("logits"),
      "FM logits for a batch of ids (inference). values == 0 means all ones.");
  m.def("num_threads", []() {
#ifdef FNN_FAST_OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
  });
}

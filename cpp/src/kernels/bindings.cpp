// Python access to the CPU kernels (cmir_trt._C.kernels), for the tests and the per-op benchmarks.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace cmir {

void register_kernel_bindings(py::module_& m) {
  py::module_ k = m.def_submodule("kernels", "cmir_trt's own CPU kernels (NHWC float32) and their scalar references");
  (void)k;
}

}  // namespace cmir

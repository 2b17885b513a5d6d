// The CPU extension module cmir_trt._C. It never calls CUDA, so it imports on any machine.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "cmir/build_info.hpp"

namespace py = pybind11;

namespace cmir {
void register_kernel_bindings(py::module_& m);  // cpp/src/kernels/bindings.cpp
#if CMIR_HAS_NATIVE
void register_engine_bindings(py::module_& m);  // cpp/src/engine_bindings.cpp
#endif
}  // namespace cmir

PYBIND11_MODULE(_C, m) {
  m.doc() = "cmir_trt native CPU core";
  m.def("build_info", []() {
    const cmir::BuildInfo info = cmir::build_info();
    py::dict d;
    d["version"] = info.version;
    d["cpu"] = true;
    d["cuda"] = info.cuda;
    d["cuda_archs"] = info.cuda_archs;
    d["tensorrt_plugins"] = info.tensorrt_plugins;
    d["cxx_compiler"] = info.cxx_compiler;
    d["cuda_compiler"] = info.cuda_compiler;
    d["build_type"] = info.build_type;
    d["native_engine"] = CMIR_HAS_NATIVE != 0;
    return d;
  }, "What this build of cmir_trt contains (CPU, CUDA archs, TensorRT plugins, compilers).");
  cmir::register_kernel_bindings(m);
#if CMIR_HAS_NATIVE
  cmir::register_engine_bindings(m);
#endif
}

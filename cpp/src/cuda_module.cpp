// The CUDA extension module cmir_trt._cuda: thin pybind11 wrappers over the plain launchers in cuda/.
// Imported lazily by cmir_trt.cuda, so a machine without a GPU never loads it unless asked.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <stdexcept>
#include <string>

#include "common.cuh"
#include "cuda_bindings/bindings.hpp"
#include "device.cuh"

namespace py = pybind11;

namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
  }
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "cmir_trt CUDA kernels";
  m.def("device_count", []() {
    int n = 0;
    const cudaError_t err = cmir_device_count(&n);
    // No driver or no device is an answer (0), not an error, for this query.
    if (err == cudaErrorNoDevice || err == cudaErrorInsufficientDriver) {
      cudaGetLastError();
      return 0;
    }
    check(err, "cudaGetDeviceCount");
    return n;
  });
  m.def("device_properties", [](int device) {
    std::array<char, 256> name{};
    int major = 0, minor = 0;
    size_t mem = 0;
    check(cmir_device_properties(device, name.data(), static_cast<int>(name.size()), &major, &minor, &mem),
          "cudaGetDeviceProperties");
    py::dict d;
    d["name"] = std::string(name.data());
    d["compute_capability"] = py::make_tuple(major, minor);
    d["total_memory"] = mem;
    return d;
  });
  m.def("runtime_version", []() {
    int v = 0;
    check(cmir_runtime_version(&v), "cudaRuntimeGetVersion");
    return v;
  });
  // Element types of the launchers (CmirDType), and what this module's kernels were compiled for.
  m.attr("DTYPE_FLOAT32") = static_cast<int>(CmirDType::kFloat32);
  m.attr("DTYPE_FLOAT16") = static_cast<int>(CmirDType::kFloat16);
  m.attr("DTYPE_BFLOAT16") = static_cast<int>(CmirDType::kBFloat16);
  m.attr("KERNELS") = py::make_tuple("involution", "involution_fused", "cmam", "pointwise_conv");
  cmir_bindings::register_involution(m);
  cmir_bindings::register_cmam(m);
  cmir_bindings::register_pointwise(m);
  cmir_bindings::register_conv2d(m);
  cmir_bindings::register_spatial_attention(m);
}

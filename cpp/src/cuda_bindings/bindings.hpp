// pybind11 registration of the CUDA launchers (one function per op file), called from cuda_module.cpp.
#pragma once
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

namespace cmir_bindings {

// A launcher's error as a Python exception: invalid arguments -> ValueError, anything else -> RuntimeError.
inline void check_launch(cudaError_t err, const char* what) {
  if (err == cudaSuccess) return;
  const std::string msg = std::string(what) + ": " + cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")";
  if (err == cudaErrorInvalidValue || err == cudaErrorNotSupported) throw pybind11::value_error(msg);
  throw std::runtime_error(msg);
}

// Device pointers and streams cross the boundary as Python ints (torch data_ptr(), cupy .data.ptr,
// __cuda_array_interface__['data'][0], torch.cuda.Stream.cuda_stream).
template <typename T>
inline T* as_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
inline cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void register_involution(pybind11::module_& m);
void register_cmam(pybind11::module_& m);
void register_pointwise(pybind11::module_& m);
void register_conv2d(pybind11::module_& m);
void register_spatial_attention(pybind11::module_& m);

}  // namespace cmir_bindings

// Shared helpers of the CUDA kernels. No torch, no TensorRT: plain CUDA runtime only.
#pragma once
#include <cuda_runtime.h>

// Return the first error of a CUDA call from a function that returns cudaError_t.
#define CMIR_CUDA_TRY(expr)                      \
  do {                                           \
    const cudaError_t cmir_err_ = (expr);        \
    if (cmir_err_ != cudaSuccess) return cmir_err_; \
  } while (0)

namespace cmir_cuda {

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

}  // namespace cmir_cuda

// Element type of a kernel's tensors (all tensors of one op share it; accumulation is always fp32).
enum class CmirDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

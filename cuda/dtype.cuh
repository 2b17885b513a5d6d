// Element-type helpers shared by the kernels: load/store fp32/fp16/bf16 as fp32 (all accumulation is fp32).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "common.cuh"

namespace cmir_cuda {

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
// The raw 16 bits of a half / bfloat16 and back (packing two channels into one 32-bit word).
__device__ __forceinline__ unsigned short to_bits(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned short to_bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
template <typename T>
__device__ __forceinline__ T from_bits(unsigned short b);
template <>
__device__ __forceinline__ __half from_bits<__half>(unsigned short b) { return __ushort_as_half(b); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_bits<__nv_bfloat16>(unsigned short b) { return __ushort_as_bfloat16(b); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Read-only load through the non-coherent cache (the inputs of every kernel here are never written by it).
template <typename T>
__device__ __forceinline__ float ldg_f32(const T* p) { return to_f32(__ldg(p)); }

inline size_t dtype_size(CmirDType t) { return t == CmirDType::kFloat32 ? 4 : 2; }

inline bool valid_dtype(CmirDType t) {
  return t == CmirDType::kFloat32 || t == CmirDType::kFloat16 || t == CmirDType::kBFloat16;
}

// Number of SMs of the current device (cached per device: the launchers must stay cheap and allocation-free).
inline cudaError_t sm_count(int* count) {
  int dev = 0;
  CMIR_CUDA_TRY(cudaGetDevice(&dev));
  return cudaDeviceGetAttribute(count, cudaDevAttrMultiProcessorCount, dev);
}

}  // namespace cmir_cuda

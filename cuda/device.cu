#include <cstring>

#include "common.cuh"
#include "device.cuh"

cudaError_t cmir_device_count(int* count) {
  *count = 0;
  return cudaGetDeviceCount(count);
}

cudaError_t cmir_device_properties(int device, char* name, int name_len, int* major, int* minor,
                                   size_t* total_memory) {
  cudaDeviceProp prop{};
  CMIR_CUDA_TRY(cudaGetDeviceProperties(&prop, device));
  if (name_len > 0) {
    std::strncpy(name, prop.name, static_cast<size_t>(name_len) - 1);
    name[name_len - 1] = '\0';
  }
  *major = prop.major;
  *minor = prop.minor;
  *total_memory = prop.totalGlobalMem;
  return cudaSuccess;
}

cudaError_t cmir_runtime_version(int* version) { return cudaRuntimeGetVersion(version); }

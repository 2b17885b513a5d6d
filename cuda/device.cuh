// Device discovery for the _cuda module: no kernel, just what the runtime sees.
#pragma once
#include <cuda_runtime.h>

// Number of CUDA devices; returns the runtime's error (e.g. cudaErrorNoDevice, cudaErrorInsufficientDriver).
cudaError_t cmir_device_count(int* count);
// Name and compute capability of one device; name must hold at least 256 bytes.
cudaError_t cmir_device_properties(int device, char* name, int name_len, int* major, int* minor,
                                   size_t* total_memory);
// Version of the CUDA runtime linked into this module (e.g. 13000).
cudaError_t cmir_runtime_version(int* version);

// Involution kernel aggregation on the GPU (plain launcher: no torch, no TensorRT types).
#pragma once
#include <cuda_runtime.h>

#include "common.cuh"

// y[n,c,h,w] = sum_{kh,kw} kernel[n, c/group_channels, kh, kw, h, w] * x[n, c, h*s-p+kh, w*s-p+kw]
// (zero padding p = (K-1)/2, Ho = ceil(H/s), Wo = ceil(W/s)).
// Layouts, all dense row-major: x [B, C, H, W]; kernel [B, G, K, K, Ho, Wo] (G = C / group_channels);
// y [B, C, Ho, Wo]. Returns cudaErrorInvalidValue for bad sizes; never allocates; runs on `stream`.
cudaError_t launch_involution(cudaStream_t stream, CmirDType dtype, const void* x, const void* kernel, void* y,
                              int batch, int channels, int height, int width, int kernel_size, int stride,
                              int group_channels);

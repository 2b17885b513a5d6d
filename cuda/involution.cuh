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

// launch_involution with a per-channel epilogue applied before the single store (the model's
// Involution -> BatchNorm -> ReLU with BN folded): y = act(agg * scale[c] + shift[c]). scale/shift are fp32 [C]
// device pointers, either may be null (1 / 0); relu != 0 clamps at 0. Same layouts and rules as launch_involution.
cudaError_t launch_involution_epilogue(cudaStream_t stream, CmirDType dtype, const void* x, const void* kernel,
                                       void* y, int batch, int channels, int height, int width, int kernel_size,
                                       int stride, int group_channels, const float* scale, const float* shift,
                                       int relu);

// Kernel generation and aggregation in one pass: the [B, G, K, K, Ho, Wo] kernel tensor never reaches memory.
// Per output pixel: xp = avg_pool_{s x s, ceil mode}(x) (s = stride; the mean of the valid pixels of the block),
// h = relu(w1 . xp + b1) (BN of the generator folded into w1/b1), k = w2 . h + b2 (the G*K*K weights of the pixel),
// then the aggregation of launch_involution_epilogue. w1 fp32 [hidden, C], b1 fp32 [hidden], w2 fp32
// [G*K*K, hidden] (row g*K*K + kh*K + kw), b2 fp32 [G*K*K]; x / y in `dtype`. Never allocates.
cudaError_t launch_involution_fused(cudaStream_t stream, CmirDType dtype, const void* x, const float* w1,
                                    const float* b1, const float* w2, const float* b2, void* y, int batch,
                                    int channels, int height, int width, int kernel_size, int stride,
                                    int group_channels, int hidden, const float* scale, const float* shift, int relu);

// Convolution as an implicit GEMM + bias [+ residual] [+ ReLU] (plain launcher: no torch, no TensorRT types).
#pragma once
#include <cuda_runtime.h>

#include "common.cuh"

// Largest batch * Ho * Wo (GEMM rows) and Cin * kh * kw (GEMM K): int indices with a tile's slack.
constexpr long long kConv2dMaxRows = 1LL << 30;
constexpr long long kConv2dMaxK = 1LL << 30;

// Output size of one spatial dimension (PyTorch's floor rule); < 1 when the kernel does not fit.
inline int conv2d_output_size(int in, int kernel, int stride, int pad) { return (in + 2 * pad - kernel) / stride + 1; }

// nullptr when launch_conv2d supports these sizes, else why not (one line, for error messages).
inline const char* conv2d_unsupported(int batch, int cin, int cout, int height, int width, int kh, int kw,
                                      int stride, int pad) {
  if (batch < 1 || cin < 1 || cout < 1 || height < 1 || width < 1) return "sizes must be positive";
  if (kh < 1 || kw < 1 || stride < 1 || pad < 0) return "kernel and stride must be >= 1, padding >= 0";
  if (pad >= kh || pad >= kw) return "padding must be smaller than the kernel";
  const int ho = conv2d_output_size(height, kh, stride, pad), wo = conv2d_output_size(width, kw, stride, pad);
  if (ho < 1 || wo < 1) return "the kernel does not fit the padded input";
  if (static_cast<long long>(ho) * wo * batch > kConv2dMaxRows) return "batch * Ho * Wo exceeds 2^30";
  if (static_cast<long long>(cin) * kh * kw > kConv2dMaxK) return "Cin * kh * kw exceeds 2^30";
  if (cout > 65535LL * 128) return "Cout exceeds 65535 * 128 (grid y)";
  return nullptr;
}

// Bytes of the split-K workspace launch_conv2d can use for these sizes on any card (0: it never splits K for them;
// the workspace contract is pointwise_conv's: cuda/pointwise.cuh, kPointwiseWorkspaceZeroBytes leading zero bytes).
// Sizes must be supported (conv2d_unsupported == nullptr).
size_t conv2d_workspace_size(int batch, int cin, int cout, int height, int width, int kh, int kw, int stride,
                             int pad);

// y[b, n, oy, ox] = [ReLU](sum_{c, ky, kx} w[n, c, ky, kx] * x[b, c, oy*s + ky - pad, ox*s + kx - pad] + bias[n]
//                         + residual[b, n, oy, ox]), zero outside x (one group, dilation 1).
// x [B, Cin, H, W], w [Cout, Cin, kh, kw] (PyTorch's layout), bias [Cout], residual [B, Cout, Ho, Wo] (nullable),
// y [B, Cout, Ho, Wo] (Ho, Wo: conv2d_output_size); all in `dtype`, fp32 accumulation, one rounding at the store
// (fp32: 3xTF32 tensor cores). One launch of the shared GEMM (gemm.cuh) with x gathered through registers as the
// implicit GEMM's A (m = output pixel, k = (c, ky, kx)); no memset, never allocates; runs on `stream`. workspace:
// nullptr (K never split) or as for launch_pointwise_conv. y must not overlap any input or the workspace (checked).
cudaError_t launch_conv2d(cudaStream_t stream, CmirDType dtype, const void* x, const void* w, const void* bias,
                          const void* residual, void* y, void* workspace, size_t workspace_bytes, int batch, int cin,
                          int cout, int height, int width, int kh, int kw, int stride, int pad, int relu);

// Pointwise (1x1) convolution with a fused epilogue (plain launcher: no torch, no TensorRT types).
#pragma once
#include <cuda_runtime.h>

#include "common.cuh"

// Largest batch * H * W (GEMM rows, int indices with a 64-row tile's slack) and Cout (grid y of 128-wide tiles).
constexpr long long kPointwiseMaxRows = 1LL << 30;
constexpr long long kPointwiseMaxCout = 65535LL * 128;

// nullptr when launch_pointwise_conv supports these sizes, else why not (one line, for error messages). A size < 1
// is reported as such. Element offsets are 64-bit; the limits are the GEMM's int row and channel indices.
inline const char* pointwise_conv_unsupported(int batch, int cin, int cout, int height, int width) {
  if (batch < 1 || cin < 1 || cout < 1 || height < 1 || width < 1) return "sizes must be positive";
  if (static_cast<long long>(height) * width * batch > kPointwiseMaxRows) return "batch * H * W exceeds 2^30";
  if (cout > kPointwiseMaxCout) return "Cout exceeds 65535 * 128 (grid y)";
  return nullptr;
}

// A projection shortcut computed in the same GEMM (a ResNet block's strided 1x1 downsample, added before the
// epilogue): x [B, channels, height, width] in the op's dtype, read at every stride-th pixel of every stride-th row
// (a stride-s 1x1 convolution: ceil(height / s) and ceil(width / s) are the output's H and W); its weights are the
// last `channels` columns of w ([Cout, Cin + channels]), its bias folded into `bias` by the caller.
struct PointwiseShortcut {
  const void* x;
  int channels, height, width, stride;
};

// nullptr when a shortcut of these sizes can join a pointwise convolution of Cin input channels onto an H x W
// output, else why not (one line). Cin must be a multiple of 32 (the GEMM's k-step: each step reads one input).
inline const char* pointwise_shortcut_unsupported(int cin, int height, int width, const PointwiseShortcut& s) {
  if (s.channels < 1 || s.height < 1 || s.width < 1 || s.stride < 1) return "shortcut sizes must be positive";
  if (cin % 32 != 0) return "Cin must be a multiple of 32 with a shortcut";
  if ((s.height + s.stride - 1) / s.stride != height || (s.width + s.stride - 1) / s.stride != width) {
    return "the strided shortcut's map must be the output's H x W";
  }
  if (static_cast<long long>(cin) + s.channels > (1LL << 30)) return "Cin + shortcut channels exceeds 2^30";
  return nullptr;
}

// Leading bytes of a split-K workspace that must be zero before its first use (the tile counters).
constexpr size_t kPointwiseWorkspaceZeroBytes = 4096;

// Bytes of the split-K workspace launch_pointwise_conv can use for these sizes on any card (0: it never splits K
// for them); with a shortcut, cin = Cin + its channels (the GEMM's K). Sizes must be supported
// (pointwise_conv_unsupported == nullptr). Where the output tiles alone leave
// most SMs idle (small maps, long K: the last ResNet stages at batch 1) the launch splits K over blocks: each split
// stores an fp32 partial tile in the workspace and the last block of a tile adds them in split order and applies
// the epilogue — still one launch, deterministic, no memset.
size_t pointwise_conv_workspace_size(int batch, int cin, int cout, int height, int width);

// y[b, n, p] = [ReLU](sum_k w[n, k] * x[b, k, p] + bias[n] + residual[b, n, p]), p = h * W + w (NCHW).
// x [B, Cin, H, W], w [Cout, Cin] (= a [Cout, Cin, 1, 1] conv weight), bias [Cout], residual [B, Cout, H, W]
// (nullable), y [B, Cout, H, W]; all in `dtype`, fp32 accumulation, one rounding at the store (fp32: 3xTF32 tensor
// cores, fp32-level accuracy). y must not overlap any input (checked). One kernel launch, no memset; never
// allocates; runs on `stream`. relu: 0 or 1.
// workspace: nullptr (K never split), or a device buffer of at least pointwise_conv_workspace_size(...) bytes (any
// larger size: one workspace can serve every call) whose first kPointwiseWorkspaceZeroBytes are zero before its
// first use — zero it once when allocating; every launch leaves them zero. A workspace serves one stream at a time
// (launches that overlap in time must not share one); it must not overlap the inputs or y (checked).
// shortcut: nullptr, or a projection shortcut added in the same GEMM (PointwiseShortcut; w is then
// [Cout, Cin + shortcut->channels]); it must not overlap y or the workspace (checked).
cudaError_t launch_pointwise_conv(cudaStream_t stream, CmirDType dtype, const void* x, const void* w,
                                  const void* bias, const void* residual, void* y, void* workspace,
                                  size_t workspace_bytes, int batch, int cin, int cout, int height, int width,
                                  int relu, const PointwiseShortcut* shortcut = nullptr);

// CMIR's spatial attention over two maps as two launches (plain launcher: no torch, no TensorRT types).
#pragma once
#include <cuda_runtime.h>

#include "common.cuh"

// Largest H * W (the statistics, the attention map and the slice partials of an image are held in shared memory:
// 20 bytes a pixel from 256 pixels on — 40 KB at the limit, within the 48 KB default) and kernel size (odd).
constexpr int kSpatialAttentionMaxPixels = 2048;
constexpr int kSpatialAttentionMaxKernel = 15;
// Channels per block (the statistics' partial sums, the multiply's channel slice).
constexpr int kSpatialAttentionSliceChannels = 32;

// nullptr when launch_spatial_attention supports these sizes, else why not (one line, for error messages).
inline const char* spatial_attention_unsupported(int batch, int ca, int cp, int height, int width, int k) {
  if (batch < 1 || ca < 1 || cp < 0 || height < 1 || width < 1) return "sizes must be positive (cp may be 0)";
  if (k < 1 || k % 2 == 0 || k > kSpatialAttentionMaxKernel) return "kernel size must be odd, 1..15";
  if (static_cast<long long>(height) * width > kSpatialAttentionMaxPixels) return "H * W exceeds 2048";
  if (static_cast<long long>(ca) + cp > (1LL << 30) || batch > 65535) return "channels exceed 2^30 or batch 65535";
  return nullptr;
}

// Bytes of fp32 workspace launch_spatial_attention needs for these sizes (the per-slice partial statistics; no
// initial contents: every launch writes what it reads). Sizes must be supported.
size_t spatial_attention_workspace_size(int batch, int ca, int cp, int height, int width);

// The channel concatenation x = [a; p] ([B, Ca + Cp, H, W], never materialised) reduced per pixel to
// s0 = mean over channels and s1 = max over channels; att[b, q] = sigmoid(bias + sum_{c<2, ky, kx} w[c, ky, kx] *
// s_c[b, qy + ky - r, qx + kx - r]) (zero outside, r = (k - 1) / 2): a k x k conv of the two statistics, as
// PyTorch's SpatialAttention; then ya = a * att, yp = p * att (att broadcast over channels), att [B, 1, H, W].
// a, p, ya, yp, att in `dtype` (p / yp nullptr when cp = 0); w [2, k, k] and bias [1] fp32; statistics, the conv
// and the products in fp32, one rounding at each store. Two launches (the partial statistics of 32-channel slices,
// then per slice: the image's statistics summed in slice order, the conv, the sigmoid and the multiply; slice 0
// stores att), no memset, no atomics; never allocates; runs on `stream`. Outputs must not overlap the inputs or the
// workspace (checked).
cudaError_t launch_spatial_attention(cudaStream_t stream, CmirDType dtype, const void* a, const void* p,
                                     const float* w, const float* bias, void* ya, void* yp, void* att,
                                     float* workspace, size_t workspace_bytes, int batch, int ca, int cp, int height,
                                     int width, int k);

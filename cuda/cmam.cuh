// CMAM (cross-modality attention, both directions) on the GPU (plain launcher: no torch, no TensorRT types).
#pragma once
#include <cstddef>

#include <cuda_runtime.h>

#include "common.cuh"

// Number of elements of one packed weight buffer (see export/plugin_schema.json, CMIRCrossModalAttention):
// Wq[dim,C], bq[dim], Wk[dim,C], bk[dim], Wv[dim,C], bv[dim], Wo[C,dim], bo[C], ln_gamma[C], ln_beta[C].
inline size_t cmam_packed_weights_size(int channels, int dim) {
  const size_t c = static_cast<size_t>(channels), d = static_cast<size_t>(dim);
  return 4 * d * c + 3 * d + 3 * c;
}

// Largest head_dim = dim / heads the attention kernel supports (8 output dims per lane of a warp).
constexpr int kCmamMaxHeadDim = 256;

// nullptr when launch_cmam supports these sizes, else why not (one line, for error messages: the TensorRT plugin
// refuses them at create/configurePlugin instead of failing at enqueue). A size < 1 is reported as such; pass the
// profile's largest shape to check a whole range (the limits are upper bounds).
inline const char* cmam_unsupported(int batch, int channels, int height, int width, int dim, int heads) {
  if (batch < 1 || channels < 1 || height < 1 || width < 1) return "sizes must be positive";
  if (dim < 1 || heads < 1 || dim % heads != 0) return "dim must be a positive multiple of heads";
  if (dim / heads > kCmamMaxHeadDim) return "head_dim = dim / heads exceeds the kernel's limit of 256";
  if (heads > 65535) return "heads exceeds 65535 (attention grid y)";
  const long long rows = static_cast<long long>(height) * width * batch;
  if (rows > (1LL << 24)) return "batch * H * W exceeds 2^24 tokens";
  if (static_cast<long long>(channels) * rows > (1LL << 40)) return "batch * C * H * W exceeds 2^40 elements";
  return nullptr;
}

// Bytes of device scratch the launcher needs (0 allowed; the caller allocates it, e.g. TensorRT's workspace).
size_t cmam_workspace_size(CmirDType dtype, int batch, int channels, int height, int width, int dim, int heads);

// art, pv, art_out, pv_out: [B, C, H, W] (tokens are the H*W pixels); weights_art / weights_pv: packed buffers of
// the same dtype. art_out = LN_a(t_a + O_a(MHA(Q_a t_a, K_a t_p, V_a t_p))), pv_out symmetric; softmax scale
// 1/sqrt(dim/heads). Outputs must not alias inputs. Never allocates; runs on `stream`. Pointers of any alignment
// work; fp16/bf16 at large batch takes the fastest (mma.sync) kernels only with 16-byte aligned inputs, weights and
// workspace (else the WMMA ones).
cudaError_t launch_cmam(cudaStream_t stream, CmirDType dtype, const void* art, const void* pv,
                        const void* weights_art, const void* weights_pv, void* art_out, void* pv_out,
                        void* workspace, size_t workspace_bytes, int batch, int channels, int height, int width,
                        int dim, int heads, float eps);

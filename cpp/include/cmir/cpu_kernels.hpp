// cmir_trt's own CPU kernels (the layers oneDNN does not have). Activations are NHWC, float32.
// Each kernel has a scalar reference (suffix _ref) used by the tests; the fast version picks AVX-512 or AVX2 at run
// time. `threads` <= 0 means all cores; results are bit-identical run to run for a given thread count.
#pragma once
#include <cstddef>

namespace cmir::cpu {

// Involution aggregation. x [B, H, W, C]; kernel [B, Ho, Wo, G, K, K] (the span 1x1 conv output in NHWC, channel
// g*K*K + kh*K + kw); y [B, Ho, Wo, C]; Ho = ceil(H/stride); zero padding (K-1)/2; G = C / group_channels.
void involution_nhwc(const float* x, const float* kernel, float* y, int batch, int height, int width, int channels,
                     int kernel_size, int stride, int group_channels, int threads);
void involution_nhwc_ref(const float* x, const float* kernel, float* y, int batch, int height, int width,
                         int channels, int kernel_size, int stride, int group_channels);

// CMAM, both directions. art/pv [B, N, C] tokens (= NHWC maps with N = H*W); packed weights as in
// export/plugin_schema.json (Wq[dim,C], bq, Wk, bk, Wv, bv, Wo[C,dim], bo, ln_gamma, ln_beta); outputs [B, N, C].
// scratch: at least cmam_scratch_floats(...) floats (caller-owned, so repeated calls allocate nothing).
std::size_t cmam_scratch_floats(int batch, int tokens, int channels, int dim, int heads);
void cmam(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,
          float* pv_out, float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps,
          int threads);
void cmam_ref(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,
              float* pv_out, int batch, int tokens, int channels, int dim, int heads, float eps);

// Spatial attention over two phases: stats = [mean_c, max_c] over the C channels of a and the C of p together;
// att = sigmoid(conv_KxK(stats) + bias) with weight [1, 2, K, K] (OIHW), zero padding; att [B, H, W];
// a_out = a * att, p_out = p * att (NHWC [B, H, W, C]; p/p_out may be null for a single phase). In-place allowed.
void spatial_attention_nhwc(const float* a, const float* p, const float* weight, float bias, int kernel_size,
                            float* att, float* a_out, float* p_out, int batch, int height, int width, int channels,
                            int threads);
void spatial_attention_nhwc_ref(const float* a, const float* p, const float* weight, float bias, int kernel_size,
                                float* att, float* a_out, float* p_out, int batch, int height, int width,
                                int channels);

}  // namespace cmir::cpu

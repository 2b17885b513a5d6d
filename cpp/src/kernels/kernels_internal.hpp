// Entry points of the ISA-specific translation units (kernels_avx512.cpp, kernels_avx2.cpp). Arguments are already
// validated by the dispatchers in kernels.cpp; `threads` is already resolved (>= 1).
#pragma once
#include <cstddef>

#include "cmir/cpu_kernels.hpp"

namespace cmir::cpu::detail {

// Scratch layout of cmam (floats, every block 64-byte aligned relative to the scratch start): q/k/v/o hold both
// directions ([2, B*N, dim]), probs [2, B, heads, N, N], y_art/y_pv [B*N, C].
struct CmamScratch {
  std::size_t q, k, v, o, probs, y_art, y_pv, total;
};
CmamScratch cmam_scratch_layout(int batch, int tokens, int channels, int dim, int heads);

// Pixels per tile of the fused involution, and one thread's scratch (pooled input, hidden, kernels of one tile).
constexpr int kFusedTile = 8;
std::size_t involution_fused_thread_floats(int channels, int hidden, int groups, int kernel_size);
// ... and of the bf16 variant: the above plus the tile's generation input and hidden rows in bf16.
std::size_t involution_fused_bf16_thread_floats(int channels, int hidden, int groups, int kernel_size);

#define CMIR_DECLARE_ISA_KERNELS(ns)                                                                                 \
  namespace ns {                                                                                                     \
  void involution(const float* x, const float* kernel, float* y, int batch, int height, int width, int channels,      \
                  int kernel_size, int stride, int group_channels, const Epilogue& epi, int threads);                \
  void involution_fused(const float* x, const InvolutionGeneration& gen, float* y, float* scratch, int batch,         \
                        int height, int width, int channels, int kernel_size, int stride, int group_channels,        \
                        const Epilogue& epi, int threads);                                                           \
  void cmam(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,    \
            float* pv_out, float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps,        \
            int threads);                                                                                            \
  void spatial_attention(const float* a, const float* p, const float* weight, float bias, int kernel_size,            \
                         float* att, float* a_out, float* p_out, float* scratch, int batch, int height, int width,   \
                         int channels, int threads);                                                                 \
  }

CMIR_DECLARE_ISA_KERNELS(avx512)
CMIR_DECLARE_ISA_KERNELS(avx2)
#undef CMIR_DECLARE_ISA_KERNELS

namespace avx512 {  // avx512_bf16 only (compiled into kernels_avx512.cpp; called after a CPUID check)
void involution_fused_bf16(const float* x, const InvolutionGenerationBf16& gen, float* y, float* scratch, int batch,
                           int height, int width, int channels, int kernel_size, int stride, int group_channels,
                           const Epilogue& epi, int threads);
void cmam_bf16(const float* art, const float* pv, const float* weights_art, const float* weights_pv,
               const std::uint16_t* packed_art, const std::uint16_t* packed_pv, float* art_out, float* pv_out,
               float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps, int threads);
}

}  // namespace cmir::cpu::detail

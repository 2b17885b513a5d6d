// cmir_trt's own CPU kernels (the layers oneDNN does not have). Activations are NHWC, float32.
// Each kernel has a scalar reference (suffix _ref, float64 accumulation, single thread) used by the tests; the fast
// version picks AVX-512 or AVX2 at run time (see Isa). `threads` <= 0 means all cores (omp_get_max_threads()).
// Work is split statically over output pixels / rows / columns and every output element is computed by the same
// instruction sequence whatever the split, so results are bit-identical run to run (and across thread counts) for a
// given ISA. Bad dimensions throw std::invalid_argument. The fast kernels never allocate (scratch is the caller's);
// the _ref functions (and Isa::kScalar, which runs them) allocate temporaries and are meant for tests.
#pragma once
#include <cstddef>
#include <cstdint>

namespace cmir::cpu {

// Instruction set of the fast kernels. kAuto = the best one this CPU supports, unless the environment variable
// CMIR_CPU_ISA (auto | avx512 | avx2 | scalar, read once; unknown or unsupported -> std::invalid_argument) names
// another. kScalar runs the _ref code (one thread).
enum class Isa { kAuto = 0, kScalar = 1, kAvx2 = 2, kAvx512 = 3 };
bool isa_supported(Isa isa);   // kAuto and kScalar: always true
Isa resolve_isa(Isa isa);      // kAuto -> the ISA used; an unsupported explicit ISA throws std::invalid_argument
const char* isa_name(Isa isa); // "auto", "scalar", "avx2", "avx512"
int resolve_threads(int threads);  // <= 0 -> omp_get_max_threads(); otherwise threads
// Smallest amount of work (multiply-adds) worth one more thread: a layer of W multiply-adds runs on at most
// max(1, W / grain) of its `threads` (small layers skip the fork/join). Default 2^18; 0 always uses all `threads`.
// Process-wide and atomic; it changes speed only, never a result. Returns the previous value.
double set_parallel_grain(double multiply_adds);
double parallel_grain();

// ---------------------------------------------------------------- involution
// Involution aggregation. x [B, H, W, C]; kernel [B, Ho, Wo, G, K, K] (the span 1x1 conv output in NHWC, channel
// g*K*K + kh*K + kw); y [B, Ho, Wo, C]; Ho = ceil(H/stride); zero padding (K-1)/2; G = C / group_channels.
// y must not overlap x or kernel. Fast path: group_channels a multiple of 16 (AVX-512: one group = one register) or
// of 8 (AVX2); other group sizes run a correct but unvectorised loop.
void involution_nhwc(const float* x, const float* kernel, float* y, int batch, int height, int width, int channels,
                     int kernel_size, int stride, int group_channels, int threads, Isa isa = Isa::kAuto);
void involution_nhwc_ref(const float* x, const float* kernel, float* y, int batch, int height, int width,
                         int channels, int kernel_size, int stride, int group_channels);

// Per-channel affine + ReLU applied to an involution's output in the same pass (the model's Involution -> BN -> ReLU
// with BN folded to scale/shift): y = max(0, agg * scale[c] + shift[c]). scale/shift may be null (1 / 0).
struct Epilogue {
  const float* scale = nullptr;
  const float* shift = nullptr;
  bool relu = false;
};
void involution_nhwc_epilogue(const float* x, const float* kernel, float* y, int batch, int height, int width,
                              int channels, int kernel_size, int stride, int group_channels, const Epilogue& epilogue,
                              int threads, Isa isa = Isa::kAuto);
void involution_nhwc_epilogue_ref(const float* x, const float* kernel, float* y, int batch, int height, int width,
                                  int channels, int kernel_size, int stride, int group_channels,
                                  const Epilogue& epilogue);

// Fused involution: kernel generation and aggregation tile by tile (a few output pixels at a time), so the kernel
// tensor [B, Ho, Wo, G*K*K] (several times larger than the activations) is never written to memory.
// Generation as in Involution2d: avg-pool stride x stride (ceil mode, a border block averages its valid pixels; none
// at stride 1) -> 1x1 conv C -> hidden with BN folded in (weight * gamma/sqrt(var+eps), bias beta - mean*that) ->
// ReLU -> 1x1 conv hidden -> G*K*K with bias. Both 1x1 weights are passed TRANSPOSED ([in, out], i.e. the torch
// weight [out, in, 1, 1] transposed once at load time) so that the per-tile GEMMs run along contiguous outputs.
struct InvolutionGeneration {
  const float* reduce_wt = nullptr;  // [C, hidden]
  const float* reduce_b = nullptr;   // [hidden]
  const float* span_wt = nullptr;    // [hidden, G*K*K]
  const float* span_b = nullptr;     // [G*K*K]
  int hidden = 0;
};
// Scratch for `threads` threads (resolved: <= 0 -> all cores); the call checks that `scratch_floats` is enough.
std::size_t involution_fused_scratch_floats(int channels, int hidden, int groups, int kernel_size, int threads);
void involution_fused_nhwc(const float* x, const InvolutionGeneration& gen, float* y, float* scratch,
                           std::size_t scratch_floats, int batch, int height, int width, int channels,
                           int kernel_size, int stride, int group_channels, const Epilogue& epilogue, int threads,
                           Isa isa = Isa::kAuto);
void involution_fused_nhwc_ref(const float* x, const InvolutionGeneration& gen, float* y, int batch, int height,
                               int width, int channels, int kernel_size, int stride, int group_channels,
                               const Epilogue& epilogue);

// The fused involution with its kernel GENERATION in bf16, for the engine's bf16 precision: the generation input
// (x, or its average pool) and the hidden activations are rounded to bf16 (nearest even), the two 1x1 weights are
// given rounded and packed (bf16_pack_pairs), products are summed in fp32 (vdpbf16ps). Pooling, the aggregation
// with the generated kernels and the epilogue stay fp32, exactly as in involution_fused_nhwc. Needs avx512_bf16
// (bf16_kernels_supported(); otherwise std::invalid_argument).
bool bf16_kernels_supported();
std::uint16_t bf16_round(float v);  // fp32 -> bf16 bits, round to nearest even (NaN stays NaN)
// Weights [k, n] (the transposed layout of InvolutionGeneration) -> bf16 pairs of k: out[(q*n + j)*2 + r] =
// bf16(w[(2q + r)*n + j]), zero where 2q + r >= k. bf16_pack_pairs_size: ceil(k/2) * n * 2 elements.
std::size_t bf16_pack_pairs_size(int k, int n);
void bf16_pack_pairs(const float* wt, int k, int n, std::uint16_t* out);
struct InvolutionGenerationBf16 {
  const std::uint16_t* reduce_w = nullptr;  // bf16_pack_pairs(reduce_wt, C, hidden)
  const float* reduce_b = nullptr;          // [hidden]
  const std::uint16_t* span_w = nullptr;    // bf16_pack_pairs(span_wt, hidden, G*K*K)
  const float* span_b = nullptr;            // [G*K*K]
  int hidden = 0;
};
std::size_t involution_fused_bf16_scratch_floats(int channels, int hidden, int groups, int kernel_size, int threads);
void involution_fused_nhwc_bf16(const float* x, const InvolutionGenerationBf16& gen, float* y, float* scratch,
                                std::size_t scratch_floats, int batch, int height, int width, int channels,
                                int kernel_size, int stride, int group_channels, const Epilogue& epilogue,
                                int threads);

// ---------------------------------------------------------------- CMAM
// CMAM, both directions. art/pv [B, N, C] tokens (= NHWC maps with N = H*W); packed weights as in
// export/plugin_schema.json (Wq[dim,C], bq, Wk, bk, Wv, bv, Wo[C,dim], bo, ln_gamma, ln_beta); outputs [B, N, C].
// art_out = LN_a(art + O_a(MHA(Q_a art, K_a pv, V_a pv))), pv_out likewise with the roles swapped; softmax scale
// 1/sqrt(dim/heads). Both outputs are computed from the inputs before either is written, so art_out may be art and
// pv_out may be pv (in place). scratch: at least cmam_scratch_floats(...) floats (caller-owned, so repeated calls
// allocate nothing); its content on entry is irrelevant.
std::size_t cmam_weight_floats(int channels, int dim);  // 4*dim*C + 3*dim + 3*C
std::size_t cmam_scratch_floats(int batch, int tokens, int channels, int dim, int heads);
void cmam(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,
          float* pv_out, float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps,
          int threads, Isa isa = Isa::kAuto);
void cmam_ref(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,
              float* pv_out, int batch, int tokens, int channels, int dim, int heads, float eps);

// CMAM with its eight projections in bf16 (the engine's bf16 precision): the Q/K/V and output projection weights of
// one direction packed once by cmam_pack_bf16 (rounded to bf16, rows zero-padded to a multiple of 32: wq, wk, wv
// [dim, round32(C)], then wo [C, round32(dim)]), the activations rounded to bf16 before each projection, products
// summed in fp32 (vdpbf16ps); biases, attention, softmax, residual and LayerNorm stay fp32 and are read from the fp32
// packed weights as in cmam(). Needs avx512_bf16.
std::size_t cmam_bf16_weight_elems(int channels, int dim);
void cmam_pack_bf16(const float* weights, int channels, int dim, std::uint16_t* out);
std::size_t cmam_bf16_scratch_floats(int batch, int tokens, int channels, int dim, int heads);
void cmam_bf16(const float* art, const float* pv, const float* weights_art, const float* weights_pv,
               const std::uint16_t* packed_art, const std::uint16_t* packed_pv, float* art_out, float* pv_out,
               float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps, int threads);

// ---------------------------------------------------------------- spatial attention (SA)
// Spatial attention over two phases: stats = [mean_c, max_c] over the C channels of a and the C of p together;
// att = sigmoid(conv_KxK(stats) + bias) with weight [1, 2, K, K] (OIHW), zero padding; att [B, H, W];
// a_out = a * att, p_out = p * att (NHWC [B, H, W, C]; p/p_out may be null for a single phase). In-place allowed
// (a_out == a, p_out == p); att must not overlap the maps.
// The scratch overload takes spatial_attention_scratch_floats(...) caller-owned floats (the per-pixel statistics);
// the overload without scratch keeps a per-thread buffer that grows to the largest size seen (no allocation once
// warm for a given shape).
std::size_t spatial_attention_scratch_floats(int batch, int height, int width);  // 2*B*H*W
void spatial_attention_nhwc(const float* a, const float* p, const float* weight, float bias, int kernel_size,
                            float* att, float* a_out, float* p_out, float* scratch, int batch, int height, int width,
                            int channels, int threads, Isa isa = Isa::kAuto);
void spatial_attention_nhwc(const float* a, const float* p, const float* weight, float bias, int kernel_size,
                            float* att, float* a_out, float* p_out, int batch, int height, int width, int channels,
                            int threads);
void spatial_attention_nhwc_ref(const float* a, const float* p, const float* weight, float bias, int kernel_size,
                                float* att, float* a_out, float* p_out, int batch, int height, int width,
                                int channels);

}  // namespace cmir::cpu

// Argument checks, instruction-set selection and dispatch of the CPU kernels (compiled for the baseline ISA; the
// vector code lives in kernels_avx512.cpp / kernels_avx2.cpp and only runs after a CPUID check).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "cmir/cpu_kernels.hpp"
#include "kernels_internal.hpp"

namespace cmir::cpu {
namespace {

bool cpu_has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("fma");
}

bool cpu_has_avx2() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

Isa best_supported() {
  if (cpu_has_avx512()) return Isa::kAvx512;
  if (cpu_has_avx2()) return Isa::kAvx2;
  return Isa::kScalar;
}

// kAuto: the best ISA, capped by CMIR_CPU_ISA when set (an unknown or unsupported value is an error, not ignored).
Isa auto_isa() {
  static const Isa chosen = [] {
    const Isa best = best_supported();
    const char* env = std::getenv("CMIR_CPU_ISA");
    if (env == nullptr || *env == '\0' || std::strcmp(env, "auto") == 0) return best;
    Isa want;
    if (std::strcmp(env, "avx512") == 0) {
      want = Isa::kAvx512;
    } else if (std::strcmp(env, "avx2") == 0) {
      want = Isa::kAvx2;
    } else if (std::strcmp(env, "scalar") == 0) {
      want = Isa::kScalar;
    } else {
      throw std::invalid_argument(std::string("CMIR_CPU_ISA='") + env +
                                  "' is not one of auto, avx512, avx2, scalar");
    }
    if (!isa_supported(want)) {
      throw std::invalid_argument(std::string("CMIR_CPU_ISA='") + env + "' is not supported by this CPU");
    }
    return want;
  }();
  return chosen;
}

[[noreturn]] void fail(const std::string& what) { throw std::invalid_argument(what); }

void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) fail(std::string(fn) + ": " + what);
}

void require_ptr(const void* p, const char* fn, const char* name) {
  if (p == nullptr) fail(std::string(fn) + ": " + name + " is null");
}

// Element count of a product of positive ints, with an overflow check (sizes come from untrusted plans).
// Caller-owned scratch of `per_thread` floats for each of `threads` threads.
void require_scratch(const char* fn, const float* scratch, std::size_t have, std::size_t per_thread, int threads) {
  require_ptr(scratch, fn, "scratch");
  const std::size_t need = static_cast<std::size_t>(threads) * per_thread;
  require(have >= need, fn,
          "scratch has " + std::to_string(have) + " floats, " + std::to_string(need) + " needed for " +
              std::to_string(threads) + " threads");
}

std::size_t checked_count(const char* fn, std::initializer_list<long long> dims) {
  constexpr long long kMax = std::numeric_limits<std::int32_t>::max();  // kernels index with long; keep slack
  long long n = 1;
  for (long long d : dims) {
    if (d <= 0) fail(std::string(fn) + ": dimensions must be positive");
    if (n > (std::numeric_limits<long long>::max() / 4) / d) fail(std::string(fn) + ": tensor too large");
    n *= d;
  }
  if (n > kMax * 64LL) fail(std::string(fn) + ": tensor too large");
  return static_cast<std::size_t>(n);
}

// Shape checks shared by the plain and the fused involution (kernel: null for the fused one).
void check_involution(const char* fn, const float* x, const float* kernel, const float* y, int batch, int height,
                      int width, int channels, int kernel_size, int stride, int group_channels, bool fused = false) {
  require_ptr(x, fn, "x");
  if (!fused) require_ptr(kernel, fn, "kernel");
  require_ptr(y, fn, "y");
  require(kernel_size >= 1 && kernel_size % 2 == 1 && kernel_size <= 63, fn,
          "kernel_size must be odd and in [1, 63], got " + std::to_string(kernel_size));
  require(stride >= 1 && stride <= 16, fn, "stride must be in [1, 16], got " + std::to_string(stride));
  require(group_channels >= 1, fn, "group_channels must be >= 1, got " + std::to_string(group_channels));
  require(channels >= 1 && channels % group_channels == 0, fn,
          "channels (" + std::to_string(channels) + ") must be a positive multiple of group_channels (" +
              std::to_string(group_channels) + ")");
  const int ho = (height + stride - 1) / stride;
  const int wo = (width + stride - 1) / stride;
  checked_count(fn, {batch, height, width, channels});
  checked_count(fn, {batch, ho, wo, channels / group_channels, kernel_size, kernel_size});
}

void check_cmam(const char* fn, const float* art, const float* pv, const float* wa, const float* wp,
                const float* art_out, const float* pv_out, int batch, int tokens, int channels, int dim, int heads,
                float eps) {
  require_ptr(art, fn, "art");
  require_ptr(pv, fn, "pv");
  require_ptr(wa, fn, "weights_art");
  require_ptr(wp, fn, "weights_pv");
  require_ptr(art_out, fn, "art_out");
  require_ptr(pv_out, fn, "pv_out");
  require(heads >= 1 && dim >= 1 && dim % heads == 0, fn,
          "dim (" + std::to_string(dim) + ") must be a positive multiple of heads (" + std::to_string(heads) + ")");
  require(std::isfinite(eps) && eps >= 0.0f, fn, "eps must be finite and >= 0");
  checked_count(fn, {batch, tokens, channels});
  checked_count(fn, {4, dim, channels});
  checked_count(fn, {batch, heads, tokens, tokens});
}

void check_sa(const char* fn, const float* a, const float* p, const float* weight, const float* att,
              const float* a_out, const float* p_out, int kernel_size, int batch, int height, int width,
              int channels) {
  require_ptr(a, fn, "a");
  require_ptr(weight, fn, "weight");
  require_ptr(att, fn, "att");
  require_ptr(a_out, fn, "a_out");
  require((p == nullptr) == (p_out == nullptr), fn, "p and p_out must both be given or both be null");
  require(kernel_size >= 1 && kernel_size % 2 == 1 && kernel_size <= 63, fn,
          "kernel_size must be odd and in [1, 63], got " + std::to_string(kernel_size));
  checked_count(fn, {batch, height, width, channels});
}

}  // namespace

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::kAuto:
    case Isa::kScalar:
      return true;
    case Isa::kAvx2:
      return cpu_has_avx2();
    case Isa::kAvx512:
      return cpu_has_avx512();
  }
  return false;
}

Isa resolve_isa(Isa isa) {
  if (isa == Isa::kAuto) return auto_isa();
  if (!isa_supported(isa)) fail(std::string("instruction set ") + isa_name(isa) + " is not supported by this CPU");
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kAuto:
      return "auto";
    case Isa::kScalar:
      return "scalar";
    case Isa::kAvx2:
      return "avx2";
    case Isa::kAvx512:
      return "avx512";
  }
  return "unknown";
}

int resolve_threads(int threads) { return threads > 0 ? threads : omp_get_max_threads(); }

namespace {
std::atomic<double> g_parallel_grain{262144.0};
}  // namespace

double set_parallel_grain(double multiply_adds) {
  if (!(multiply_adds >= 0.0) || !std::isfinite(multiply_adds)) {
    fail("set_parallel_grain: the grain must be a finite number >= 0");
  }
  return g_parallel_grain.exchange(multiply_adds);
}

double parallel_grain() { return g_parallel_grain.load(std::memory_order_relaxed); }

namespace detail {

CmamScratch cmam_scratch_layout(int batch, int tokens, int channels, int dim, int heads) {
  // Every block starts on a 16-float (64-byte) boundary relative to the scratch start.
  auto round16 = [](std::size_t n) { return (n + 15) / 16 * 16; };
  const std::size_t m = static_cast<std::size_t>(batch) * static_cast<std::size_t>(tokens);
  CmamScratch s{};
  std::size_t off = 0;
  // q, k, v, o: both directions (2 * m * dim each); probs: one row of `tokens` per (direction, batch, head, query).
  s.q = off;
  off += round16(2 * m * dim);
  s.k = off;
  off += round16(2 * m * dim);
  s.v = off;
  off += round16(2 * m * dim);
  s.o = off;
  off += round16(2 * m * dim);
  s.probs = off;
  off += round16(2 * m * static_cast<std::size_t>(heads) * tokens);
  s.y_art = off;
  off += round16(m * channels);
  s.y_pv = off;
  off += round16(m * channels);
  s.total = off;
  return s;
}

std::size_t involution_fused_thread_floats(int channels, int hidden, int groups, int kernel_size) {
  auto round16 = [](std::size_t n) { return (n + 15) / 16 * 16; };
  const std::size_t t = kFusedTile;
  return round16(t * channels) + round16(t * hidden) +
         round16(t * static_cast<std::size_t>(groups) * kernel_size * kernel_size);
}

std::size_t involution_fused_bf16_thread_floats(int channels, int hidden, int groups, int kernel_size) {
  auto round16 = [](std::size_t n) { return (n + 15) / 16 * 16; };
  const std::size_t t = kFusedTile, cp = (channels + 1) / 2 * 2, hp = (hidden + 1) / 2 * 2;
  return involution_fused_thread_floats(channels, hidden, groups, kernel_size) + round16(t * cp / 2) +
         round16(t * hp / 2);
}

}  // namespace detail

// ---------------------------------------------------------------- bf16
bool bf16_kernels_supported() { return cpu_has_avx512() && __builtin_cpu_supports("avx512bf16"); }

std::uint16_t bf16_round(float v) {
  std::uint32_t bits;
  std::memcpy(&bits, &v, sizeof(bits));
  if ((bits & 0x7F800000u) == 0x7F800000u && (bits & 0x007FFFFFu) != 0)
    return static_cast<std::uint16_t>((bits >> 16) | 0x0040u);  // NaN: keep it a (quiet) NaN
  bits += 0x7FFFu + ((bits >> 16) & 1u);
  return static_cast<std::uint16_t>(bits >> 16);
}

std::size_t bf16_pack_pairs_size(int k, int n) {
  checked_count("bf16_pack_pairs_size", {k, n});
  return static_cast<std::size_t>((k + 1) / 2) * static_cast<std::size_t>(n) * 2;
}

void bf16_pack_pairs(const float* wt, int k, int n, std::uint16_t* out) {
  require_ptr(wt, "bf16_pack_pairs", "wt");
  require_ptr(out, "bf16_pack_pairs", "out");
  const int pairs = (k + 1) / 2;
  for (int q = 0; q < pairs; ++q)
    for (int j = 0; j < n; ++j)
      for (int r = 0; r < 2; ++r) {
        const int kk = 2 * q + r;
        out[(static_cast<std::size_t>(q) * n + j) * 2 + r] =
            kk < k ? bf16_round(wt[static_cast<std::size_t>(kk) * n + j]) : std::uint16_t{0};
      }
}

// ---------------------------------------------------------------- involution
void involution_nhwc_epilogue(const float* x, const float* kernel, float* y, int batch, int height, int width,
                              int channels, int kernel_size, int stride, int group_channels, const Epilogue& epilogue,
                              int threads, Isa isa) {
  const char* fn = "involution_nhwc";
  check_involution(fn, x, kernel, y, batch, height, width, channels, kernel_size, stride, group_channels);
  const int nt = resolve_threads(threads);
  switch (resolve_isa(isa)) {
    case Isa::kAvx512:
      detail::avx512::involution(x, kernel, y, batch, height, width, channels, kernel_size, stride, group_channels,
                                 epilogue, nt);
      return;
    case Isa::kAvx2:
      detail::avx2::involution(x, kernel, y, batch, height, width, channels, kernel_size, stride, group_channels,
                               epilogue, nt);
      return;
    default:
      involution_nhwc_epilogue_ref(x, kernel, y, batch, height, width, channels, kernel_size, stride, group_channels,
                                   epilogue);
      return;
  }
}

void involution_nhwc(const float* x, const float* kernel, float* y, int batch, int height, int width, int channels,
                     int kernel_size, int stride, int group_channels, int threads, Isa isa) {
  involution_nhwc_epilogue(x, kernel, y, batch, height, width, channels, kernel_size, stride, group_channels,
                           Epilogue{}, threads, isa);
}

// ---------------------------------------------------------------- fused involution
std::size_t involution_fused_scratch_floats(int channels, int hidden, int groups, int kernel_size, int threads) {
  checked_count("involution_fused_scratch_floats", {channels, hidden, groups, kernel_size, kernel_size});
  return static_cast<std::size_t>(resolve_threads(threads)) *
         detail::involution_fused_thread_floats(channels, hidden, groups, kernel_size);
}

void involution_fused_nhwc(const float* x, const InvolutionGeneration& gen, float* y, float* scratch,
                           std::size_t scratch_floats, int batch, int height, int width, int channels,
                           int kernel_size, int stride, int group_channels, const Epilogue& epilogue, int threads,
                           Isa isa) {
  const char* fn = "involution_fused_nhwc";
  check_involution(fn, x, nullptr, y, batch, height, width, channels, kernel_size, stride, group_channels, true);
  require(gen.hidden >= 1, fn, "hidden must be >= 1");
  require_ptr(gen.reduce_wt, fn, "reduce_wt");
  require_ptr(gen.reduce_b, fn, "reduce_b");
  require_ptr(gen.span_wt, fn, "span_wt");
  require_ptr(gen.span_b, fn, "span_b");
  const Isa use = resolve_isa(isa);
  if (use == Isa::kScalar) {
    involution_fused_nhwc_ref(x, gen, y, batch, height, width, channels, kernel_size, stride, group_channels,
                              epilogue);
    return;
  }
  const int nt = resolve_threads(threads);
  require_scratch(fn, scratch, scratch_floats,
                  detail::involution_fused_thread_floats(channels, gen.hidden, channels / group_channels, kernel_size),
                  nt);
  if (use == Isa::kAvx512) {
    detail::avx512::involution_fused(x, gen, y, scratch, batch, height, width, channels, kernel_size, stride,
                                     group_channels, epilogue, nt);
  } else {
    detail::avx2::involution_fused(x, gen, y, scratch, batch, height, width, channels, kernel_size, stride,
                                   group_channels, epilogue, nt);
  }
}

std::size_t involution_fused_bf16_scratch_floats(int channels, int hidden, int groups, int kernel_size, int threads) {
  checked_count("involution_fused_bf16_scratch_floats", {channels, hidden, groups, kernel_size, kernel_size});
  return static_cast<std::size_t>(resolve_threads(threads)) *
         detail::involution_fused_bf16_thread_floats(channels, hidden, groups, kernel_size);
}

void involution_fused_nhwc_bf16(const float* x, const InvolutionGenerationBf16& gen, float* y, float* scratch,
                                std::size_t scratch_floats, int batch, int height, int width, int channels,
                                int kernel_size, int stride, int group_channels, const Epilogue& epilogue,
                                int threads) {
  const char* fn = "involution_fused_nhwc_bf16";
  if (!bf16_kernels_supported()) fail(std::string(fn) + ": this CPU has no avx512_bf16");
  check_involution(fn, x, nullptr, y, batch, height, width, channels, kernel_size, stride, group_channels, true);
  require(gen.hidden >= 1, fn, "hidden must be >= 1");
  require_ptr(gen.reduce_w, fn, "reduce_w");
  require_ptr(gen.reduce_b, fn, "reduce_b");
  require_ptr(gen.span_w, fn, "span_w");
  require_ptr(gen.span_b, fn, "span_b");
  const int nt = resolve_threads(threads);
  require_scratch(fn, scratch, scratch_floats,
                  detail::involution_fused_bf16_thread_floats(channels, gen.hidden, channels / group_channels,
                                                              kernel_size),
                  nt);
  detail::avx512::involution_fused_bf16(x, gen, y, scratch, batch, height, width, channels, kernel_size, stride,
                                        group_channels, epilogue, nt);
}

// ---------------------------------------------------------------- CMAM
std::size_t cmam_weight_floats(int channels, int dim) {
  return 4 * static_cast<std::size_t>(dim) * static_cast<std::size_t>(channels) + 3 * static_cast<std::size_t>(dim) +
         3 * static_cast<std::size_t>(channels);
}

std::size_t cmam_scratch_floats(int batch, int tokens, int channels, int dim, int heads) {
  checked_count("cmam_scratch_floats", {batch, tokens, channels, dim, heads});
  return detail::cmam_scratch_layout(batch, tokens, channels, dim, heads).total;
}

void cmam(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,
          float* pv_out, float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps,
          int threads, Isa isa) {
  const char* fn = "cmam";
  check_cmam(fn, art, pv, weights_art, weights_pv, art_out, pv_out, batch, tokens, channels, dim, heads, eps);
  const Isa use = resolve_isa(isa);
  if (use == Isa::kScalar) {
    cmam_ref(art, pv, weights_art, weights_pv, art_out, pv_out, batch, tokens, channels, dim, heads, eps);
    return;
  }
  require_ptr(scratch, fn, "scratch");
  const int nt = resolve_threads(threads);
  if (use == Isa::kAvx512) {
    detail::avx512::cmam(art, pv, weights_art, weights_pv, art_out, pv_out, scratch, batch, tokens, channels, dim,
                         heads, eps, nt);
  } else {
    detail::avx2::cmam(art, pv, weights_art, weights_pv, art_out, pv_out, scratch, batch, tokens, channels, dim,
                       heads, eps, nt);
  }
}

std::size_t cmam_bf16_weight_elems(int channels, int dim) {
  checked_count("cmam_bf16_weight_elems", {channels, dim});
  const std::size_t cp = (channels + 31) / 32 * 32, dp = (dim + 31) / 32 * 32;
  return 3 * static_cast<std::size_t>(dim) * cp + static_cast<std::size_t>(channels) * dp;
}

void cmam_pack_bf16(const float* weights, int channels, int dim, std::uint16_t* out) {
  require_ptr(weights, "cmam_pack_bf16", "weights");
  require_ptr(out, "cmam_pack_bf16", "out");
  const std::size_t cp = (channels + 31) / 32 * 32, dp = (dim + 31) / 32 * 32;
  const std::size_t dc = static_cast<std::size_t>(dim) * channels;
  std::fill(out, out + cmam_bf16_weight_elems(channels, dim), std::uint16_t{0});
  for (int m = 0; m < 3; ++m) {  // wq, wk, wv: [dim, C] each, every one followed by its bias (dim floats)
    const float* w = weights + m * (dc + dim);
    for (int r = 0; r < dim; ++r)
      for (int c = 0; c < channels; ++c)
        out[m * dim * cp + r * cp + c] = bf16_round(w[static_cast<std::size_t>(r) * channels + c]);
  }
  const float* wo = weights + 3 * (dc + dim);  // [C, dim]
  std::uint16_t* o = out + 3 * dim * cp;
  for (int r = 0; r < channels; ++r)
    for (int c = 0; c < dim; ++c) o[r * dp + c] = bf16_round(wo[static_cast<std::size_t>(r) * dim + c]);
}

std::size_t cmam_bf16_scratch_floats(int batch, int tokens, int channels, int dim, int heads) {
  checked_count("cmam_bf16_scratch_floats", {batch, tokens, channels, dim, heads});
  const std::size_t m = static_cast<std::size_t>(batch) * tokens;
  const std::size_t cp = (channels + 31) / 32 * 32, dp = (dim + 31) / 32 * 32;
  return detail::cmam_scratch_layout(batch, tokens, channels, dim, heads).total + (2 * m * cp + 2 * m * dp) / 2 + 16;
}

void cmam_bf16(const float* art, const float* pv, const float* weights_art, const float* weights_pv,
               const std::uint16_t* packed_art, const std::uint16_t* packed_pv, float* art_out, float* pv_out,
               float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps, int threads) {
  const char* fn = "cmam_bf16";
  if (!bf16_kernels_supported()) fail(std::string(fn) + ": this CPU has no avx512_bf16");
  check_cmam(fn, art, pv, weights_art, weights_pv, art_out, pv_out, batch, tokens, channels, dim, heads, eps);
  require_ptr(packed_art, fn, "packed_art");
  require_ptr(packed_pv, fn, "packed_pv");
  require_ptr(scratch, fn, "scratch");
  detail::avx512::cmam_bf16(art, pv, weights_art, weights_pv, packed_art, packed_pv, art_out, pv_out, scratch, batch,
                            tokens, channels, dim, heads, eps, resolve_threads(threads));
}

// ---------------------------------------------------------------- spatial attention
std::size_t spatial_attention_scratch_floats(int batch, int height, int width) {
  return 2 * checked_count("spatial_attention_scratch_floats", {batch, height, width});
}

void spatial_attention_nhwc(const float* a, const float* p, const float* weight, float bias, int kernel_size,
                            float* att, float* a_out, float* p_out, float* scratch, int batch, int height, int width,
                            int channels, int threads, Isa isa) {
  const char* fn = "spatial_attention_nhwc";
  check_sa(fn, a, p, weight, att, a_out, p_out, kernel_size, batch, height, width, channels);
  const Isa use = resolve_isa(isa);
  if (use == Isa::kScalar) {
    spatial_attention_nhwc_ref(a, p, weight, bias, kernel_size, att, a_out, p_out, batch, height, width, channels);
    return;
  }
  require_ptr(scratch, fn, "scratch");
  const int nt = resolve_threads(threads);
  if (use == Isa::kAvx512) {
    detail::avx512::spatial_attention(a, p, weight, bias, kernel_size, att, a_out, p_out, scratch, batch, height,
                                      width, channels, nt);
  } else {
    detail::avx2::spatial_attention(a, p, weight, bias, kernel_size, att, a_out, p_out, scratch, batch, height, width,
                                    channels, nt);
  }
}

void spatial_attention_nhwc(const float* a, const float* p, const float* weight, float bias, int kernel_size,
                            float* att, float* a_out, float* p_out, int batch, int height, int width, int channels,
                            int threads) {
  // Per-thread buffer that only grows: no allocation once warm for a given shape.
  thread_local std::vector<float> buffer;
  const std::size_t need = spatial_attention_scratch_floats(batch, height, width);
  if (buffer.size() < need) buffer.resize(need);
  spatial_attention_nhwc(a, p, weight, bias, kernel_size, att, a_out, p_out, buffer.data(), batch, height, width,
                         channels, threads, Isa::kAuto);
}

}  // namespace cmir::cpu

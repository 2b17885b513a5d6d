// Batched tensor-core GEMM shared by the CUDA ops (CMAM's projections, the 1x1 and the implicit-GEMM convolutions):
//   out(m, n) = [ReLU](A(m, .) . W(n, .) + bias[n] + res(m, n)),   W [n_out, K] row-major (torch Linear / 1x1 conv)
// for up to kMaxProblems problems of one shape in one launch (blockIdx.z = problem x K split). Header-only (templates
// and inline functions) so that several .cu files include it; sm_80+ (the only architectures built).
//
// Use (host):
//   cmir_gemm::GemmBatch gb{};                  // zero-initialised: fp32 output, no residual, no ReLU
//   gb.M = rows_total; gb.n_out = N; gb.K = K; gb.rows = rows per batch item; gb.a_m_contig = 0/1;
//   gb.out_mode = cmir_gemm::kOutTyped; gb.relu = 0/1;
//   GemmProblem& p = gb.p[0]; p.a = ...; p.a_bs/a_rs/a_ks = ...; p.w = ...; p.bias = ... (nullable);
//   p.res = ... (nullable); p.r_bs/r_rs/r_ns; p.out_t = ...; p.o_bs/o_rs/o_ns = ...;
//   CMIR_CUDA_TRY(cmir_gemm::plan_and_launch_gemm<T>(stream, gb, /*problems=*/1, /*a_is_float=*/false, sms,
//                                                    /*max_splits=*/1));
// with sms from cmir_cuda::sm_count. Element (m, .) of A / res / out is that of batch item b = m / rows, row
// r = m % rows. T (W's dtype) is the op's dtype: W, bias, res and a typed output are T; A is T, or fp32 when
// a_is_float (rounded to T once when staged). Accumulation fp32. fp32 (T = float) runs as error-compensated 3xTF32
// on tensor cores (fp32-level accuracy); fp16/bf16 as m16n16k16 MMAs.
// Output modes: kOutF32 writes fp32 `out` [M][n_out] row-major (K may then be split over blocks: SplitMode);
// kOutTyped writes out_t(b, r, n) rounded to T; split over K only with a split workspace (gb.counters, gb.part: see
// kSplitCounters): every split stores its fp32 partial tile, the last block of a tile to finish adds the partials in
// split order (the same sum whichever block is last), applies the epilogue once and re-zeroes the tile's counter.
// For NCHW activations: A(b, r = pixel, k = channel) with a_bs = C*HW, a_rs = 1, a_ks = HW, a_m_contig = 1,
// rows = HW; an NCHW output has o_bs = Cout*HW, o_rs = 1, o_ns = HW (the epilogue then walks tokens fastest, so the
// stores coalesce). A is staged by 16-byte cp.async when it is T, m-contiguous and aligned (HW, C*HW multiples of
// 16 bytes' worth of elements, 16-byte aligned base); W when K is a multiple of 16 bytes' worth and W 16-byte aligned.
// Gathered segment (gb.gather, launch_gemm<T, true>): A's columns from k_seg on are an implicit-GEMM convolution of
// an NCHW input (any kernel, stride, zero padding), loaded through registers: conv2d.cu (k_seg = 0) and the pointwise
// op's projection shortcut (k_seg = Cin).
#pragma once
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include <cuda_pipeline.h>
#include <mma.h>

#include "common.cuh"
#include "dtype.cuh"

namespace cmir_gemm {

using cmir_cuda::ceil_div;
using cmir_cuda::from_f32;
using cmir_cuda::ldg_f32;

constexpr int kMaxProblems = 6;

struct GemmProblem {
  const void* a;                  // A(m, k) at a[b*a_bs + r*a_rs + k*a_ks], m = b*rows + r
  int64_t a_bs, a_rs, a_ks;
  const void* g_src;              // the gathered segment's input (GemmBatch::gather), dense NCHW, A's dtype
  const void* w;                  // W [n_out, K] row-major (torch Linear layout)
  const void* bias;               // nullable, [n_out]
  const void* res;                // nullable, W's dtype: res(b, r, n) at res[b*r_bs + r*r_rs + n*r_ns]
  int64_t r_bs, r_rs, r_ns;
  float* out;                     // kOutF32: [M, n_out] row-major fp32
  void* out_t;                    // kOutTyped: W's dtype, out(b, r, n) at out_t[b*o_bs + r*o_rs + n*o_ns]
  int64_t o_bs, o_rs, o_ns;
};

// How split-K blocks combine (no memset, no extra launch in either case):
enum SplitMode : int {
  kSplitPartials = 0,  // split s stores its partial sum to out + s * M * n_out; the consumer kernel adds them
  kSplitAtomic = 1,    // fp32 atomics into out, zeroed beforehand by the previous kernel of the sequence
};

enum OutMode : int {
  kOutF32 = 0,    // fp32 `out`, row-major [M][n_out]; split-K allowed
  kOutTyped = 1,  // `out_t` in W's dtype at the problem's strides; split-K only with a split workspace
};

// Split workspace of a typed output (one buffer any plan can use, one stream at a time): kSplitCounters unsigned tile
// counters first — all zero before the first launch (the caller zeroes the buffer once) and left zero by every
// launch — then the fp32 partial tiles, [tile][split][BM * kWN]. A plan splits only while tiles * splits < 2 * SMs
// (<= 2 * kPlanSms), so a split plan has fewer than 320 tiles and the counters never overlap the partials of another
// plan's layout.
constexpr int kSplitCounters = 1024;
constexpr size_t kSplitCounterBytes = kSplitCounters * sizeof(unsigned);

struct GemmBatch {
  GemmProblem p[kMaxProblems];
  int M, n_out, K, rows;          // rows: rows (tokens) per batch item
  int splits, k_per_split;        // set by the planner
  int split_mode;                 // SplitMode, when splits > 1
  int out_mode;                   // OutMode
  int relu;                       // 1: max(0, .) after bias and residual
  int bm;                         // rows per block tile (16 or 64), set by the planner
  int a_m_contig;                 // 1: consecutive m are adjacent in memory (NCHW tokens) -> load A m-fastest
  int w_async;                    // set by launch_gemm: W rows staged by 16-byte cp.async
  int a_async;                    // set by launch_gemm: A (m-contiguous, in T) staged by 16-byte cp.async
  unsigned* counters;             // typed split-K: the workspace's tile counters (kSplitCounters)
  float* part;                    // typed split-K: its partial tiles
  // gather = 1: A's columns k >= k_seg are an implicit-GEMM convolution of p.g_src ([B][g_c][g_h][g_w]), loaded
  // through registers: A(m, k) = g_src[b][c][oy * g_stride + ky - g_pad][ox * g_stride + kx - g_pad] (zero outside
  // the image), (oy, ox) = (r / g_ow, r % g_ow), k - k_seg = (c * g_kh + ky) * g_kw + kx. k_seg is a multiple of kWK
  // (every k-step reads one segment); columns k < k_seg are the strided A above (K = k_seg + g_c * g_kh * g_kw).
  int gather, k_seg;
  int g_c, g_h, g_w, g_kh, g_kw, g_stride, g_pad, g_ow;
};

// Stage W rows n0 .. n0 + ROWS - 1, columns k0 .. k0 + COLS - 1 into ws[ROWS][LD] by 16-byte cp.async, THREADS
// threads with thread index tid (K a multiple of 16 bytes' worth and W 16-byte aligned: a chunk is wholly inside or
// outside [0, n_out) x [k0, k_end)); chunks outside are zeroed (plain stores: the stage is free). Sizes are read from
// gb where used (kernel parameters; copies held in registers made the fp32 64-row WMMA tile spill).
template <typename T, int ROWS, int COLS, int THREADS, int LD>
__device__ __forceinline__ void stage_w_async(T (*ws)[LD], const T* w, const GemmBatch& gb, int n0, int k0, int k_end,
                                              int tid, T zero) {
  constexpr int kChunk = 16 / static_cast<int>(sizeof(T));
  constexpr int kChunks = ROWS * (COLS / kChunk);
  static_assert(kChunks % THREADS == 0, "whole chunks per thread");
#pragma unroll
  for (int i = 0; i < kChunks / THREADS; ++i) {
    const int c = tid + i * THREADS;
    const int nn = c / (COLS / kChunk), kk = (c % (COLS / kChunk)) * kChunk;
    const int n = n0 + nn, k = k0 + kk;
    T* dst = &ws[nn][kk];
    if (n < gb.n_out && k < k_end) {
      __pipeline_memcpy_async(dst, w + static_cast<int64_t>(n) * gb.K + k, 16);
    } else {
#pragma unroll
      for (int j = 0; j < kChunk; ++j) dst[j] = zero;
    }
  }
}

// One output element: bias and residual once (by the first K split), [ReLU], then a plain store, a store of this
// split's partial sum, an atomic add (SplitMode), or a store rounded to T at the typed output's strides.
template <typename TW>
__device__ __forceinline__ void gemm_store(const GemmBatch& gb, const GemmProblem& p, int split, int m, int n,
                                           float v) {
  const int b = m / gb.rows, r = m - (m / gb.rows) * gb.rows;
  if (split == 0) {
    if (p.bias != nullptr) v += ldg_f32(static_cast<const TW*>(p.bias) + n);
    const TW* res = static_cast<const TW*>(p.res);  // residual has the op's dtype (= the weights')
    if (res != nullptr) v += ldg_f32(res + b * p.r_bs + r * p.r_rs + n * p.r_ns);
    if (gb.relu) v = fmaxf(v, 0.f);
  }
  if (gb.out_mode == kOutTyped) {
    static_cast<TW*>(p.out_t)[b * p.o_bs + r * p.o_rs + n * p.o_ns] = from_f32<TW>(v);
    return;
  }
  float* o = p.out + static_cast<int64_t>(m) * gb.n_out + n;
  if (gb.splits > 1 && gb.split_mode == kSplitAtomic) {
    atomicAdd(o, v);
  } else {
    o[gb.splits > 1 ? static_cast<int64_t>(split) * gb.M * gb.n_out : 0] = v;
  }
}

// ---------------------------------------------------------------- the tensor-core kernel
// Block tile 16·MF (tokens) x 128 (outputs) x 32 (k). MF = 1 at small batch: the 16-row WMMA tile matches the 16
// tokens per image of the CMAM (a 64-row tile is 3/4 padding there); MF = 4 from moderate sizes on (wmma_tile), so
// W is staged once per 64 tokens instead of per 16. Each of the 8 warps owns MF 16x16 fp32 accumulators
// (one 16-column slice of the tile). A and W are staged in T (T x T products are exact in fp32); an fp32 A with a
// 16-bit T is rounded to T once when staged, as PyTorch's module rounds it. A(m, k) at As[k][m] (loaded along m for
// NCHW tokens, along k for row-major A), W(n, k) at Ws[n][k] (rows of W contiguous), both read as column-major
// fragments. Pitches are multiples of 16 bytes and fragment origins 32-byte aligned, as WMMA requires.
constexpr int kWM = 16, kWN = 128, kWK = 32, kWmmaThreads = 256;
constexpr int kLdW = kWK + 8, kLdC = kWN + 4;
// k-steps in flight: the MMAs of step s read stage s % kStages while the copies of steps s+1 .. s+kStages-1 fly, so
// a step waits for a load issued kStages-1 steps earlier (two steps of MMAs cover an L2 round trip at batch 64).
constexpr int kStages = 3;
static_assert(kWN == 16 * (kWmmaThreads / 32), "one 16-column fragment per warp");

// MMA operand type and k per MMA: fp16/bf16 m16n16k16; fp32 as tf32 m16n16k8, three MMAs per k8 (3xTF32).
template <typename T>
struct MmaOperand {
  using type = T;
  static constexpr int kK = 16;
};
template <>
struct MmaOperand<float> {
  using type = nvcuda::wmma::precision::tf32;
  static constexpr int kK = 8;
};

// Dynamic shared memory of gemm_wmma_kernel<., T, MF, .>: max(kStages stages of A and W, the fp32 C tile + the
// split-K flag) + 32 bytes of alignment slack. 16-bit: 35,360 bytes at MF = 1, 44,576 at MF = 4 (within the 48 KiB
// default); fp32: 70,688 / 89,120 (opt-in: launch_gemm sets cudaFuncAttributeMaxDynamicSharedMemorySize).
// The fp32 C tile, [BM][kLdC] or [kWN][BM + 4] (the split-K flag follows it).
template <int MF>
__host__ __device__ constexpr size_t wmma_c_bytes() {
  constexpr size_t c_rows = sizeof(float) * static_cast<size_t>(kWM * MF) * kLdC;
  constexpr size_t c_cols = sizeof(float) * static_cast<size_t>(kWN) * (kWM * MF + 4);
  return c_rows > c_cols ? c_rows : c_cols;
}
template <typename T, int MF>
constexpr size_t wmma_smem_bytes() {
  constexpr size_t stages = kStages * sizeof(T) *
                            (static_cast<size_t>(kWK) * (kWM * MF + 8) + static_cast<size_t>(kWN) * kLdW);
  constexpr size_t c = wmma_c_bytes<MF>() + 16;
  return (stages > c ? stages : c) + 32;
}

// 3xTF32: v = big + small with both parts tf32 (big = v rounded to tf32, small = the rounding error, rounded), so
// big_a·big_b + big_a·small_b + small_a·big_b misses only small_a·small_b (~2^-22 relative) and fp32-like accuracy
// survives the tf32 operands.
template <typename Frag>
__device__ __forceinline__ void split_tf32(Frag& big, Frag& small) {
#pragma unroll
  for (int e = 0; e < big.num_elements; ++e) {
    const float v = big.x[e];
    const float hi = nvcuda::wmma::__float_to_tf32(v);
    big.x[e] = hi;
    small.x[e] = nvcuda::wmma::__float_to_tf32(v - hi);
  }
}

// kGather: the gathered A segment is compiled in (its index registers would make the fp32 64-row variant spill;
// only the pointwise op's shortcut launches use it).
template <typename TA, typename T, int MF, bool kGather>
__global__ void __launch_bounds__(kWmmaThreads, MF == 1 ? 3 : 2) gemm_wmma_kernel(GemmBatch gb) {
  using namespace nvcuda;
  using FT = typename MmaOperand<T>::type;
  constexpr int kMK = MmaOperand<T>::kK;
  constexpr int BM = kWM * MF, kLdA = BM + 8;
  constexpr int kAPerThread = (BM * kWK) / kWmmaThreads;  // A elements a thread stages per k-step (2 or 8)
  constexpr int kChunk = 16 / static_cast<int>(sizeof(T));  // elements per 16-byte cp.async (8, fp32: 4)
  constexpr int kAChunks = (BM * kWK) / kChunk;   // 16-byte chunks of an A stage
  constexpr int kLdCm = BM + 4;                   // C tile stored [n][m] (typed NCHW output)
  // kStages stages of A and W, aliased by the fp32 C tile after the k loop: wmma_smem_bytes<T, MF>() of dynamic
  // shared memory (cp.async needs a destination the emulator knows as shared memory; static arrays of a template
  // kernel are not in its section), 32-byte aligned here.
  constexpr size_t kABytes = sizeof(T) * kWK * kLdA;
  CMIR_DYNAMIC_SHARED(unsigned char, smem_raw);
  unsigned char* const smem = smem_raw + ((32 - reinterpret_cast<uintptr_t>(smem_raw) % 32) % 32);
  auto As = reinterpret_cast<T(*)[kWK][kLdA]>(smem);                      // [kStages][kWK][kLdA]
  auto Ws = reinterpret_cast<T(*)[kWN][kLdW]>(smem + kStages * kABytes);  // [kStages][kWN][kLdW]
  const int prob = blockIdx.z / gb.splits;
  const int split = blockIdx.z - prob * gb.splits;
  const GemmProblem& p = gb.p[prob];
  const TA* a = static_cast<const TA*>(p.a);
  const T* w = static_cast<const T*>(p.w);
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * kWN;
  const int k_begin = split * gb.k_per_split;
  const int k_end = min(gb.K, k_begin + gb.k_per_split);
  const int tid = threadIdx.x, warp = tid / 32;
  const T zero = from_f32<T>(0.f);

  // A through registers (row-major A, fp32 A with a 16-bit T, unaligned tokens): loaded when its stage is issued,
  // stored after that step's MMAs.
  // Register sets of A (the register path): one, or — kLead2, the gathered 16-row variants — two used in turn, so
  // that a k-step's loads are issued two steps before they are stored (see the k loop). (The 64-row variants would
  // spill at their 128-register bound: 48-56 bytes.)
  constexpr bool kLead2 = kGather && MF == 1;
  TA areg[kAPerThread];
  TA areg2[kLead2 ? kAPerThread : 1];
  // Tile position (row mm, k index kk) of a thread's i-th A element: along m for NCHW tokens, along k otherwise.
  auto a_pos = [&](int i, int& mm, int& kk) {
    const int e = tid + i * kWmmaThreads;
    mm = gb.a_m_contig ? e % BM : e / kWK;
    kk = gb.a_m_contig ? e / BM : e % kWK;
  };
  // The k-step at k0 reads the gathered segment (uniform over the block).
  auto gathered = [&](int k0) { return kGather && k0 >= gb.k_seg; };
  // The gathered segment (gb.gather: a_m_contig, checked by launch_gemm): a thread's elements share its row
  // (BM divides the block), so the pixel's position is worked out once per k-step; element i is k index
  // kk0 + i * (threads / BM).
  auto load_gather = [&](int k0, TA(&regs)[kAPerThread]) {
    static_assert(kWmmaThreads % BM == 0, "a thread's gathered elements share one row");
    int mm, kk0;
    a_pos(0, mm, kk0);
    const int m = m0 + mm;
    const bool m_in = m < gb.M;
    const int b = m_in ? m / gb.rows : 0, r = m_in ? m - b * gb.rows : 0;
    const int oy = r / gb.g_ow, ox = r - oy * gb.g_ow;
    const int iy0 = oy * gb.g_stride - gb.g_pad, ix0 = ox * gb.g_stride - gb.g_pad;
    const TA* img = static_cast<const TA*>(p.g_src) + static_cast<int64_t>(b) * gb.g_c * gb.g_h * gb.g_w;
    const int taps = gb.g_kh * gb.g_kw;
#pragma unroll
    for (int i = 0; i < kAPerThread; ++i) {
      const int k = k0 + kk0 + i * (kWmmaThreads / BM);
      TA v = static_cast<TA>(zero);
      if (m_in && k < k_end) {
        const int kg = k - gb.k_seg, c = kg / taps, t = kg - c * taps, ky = t / gb.g_kw, kx = t - ky * gb.g_kw;
        const int iy = iy0 + ky, ix = ix0 + kx;
        if (iy >= 0 && iy < gb.g_h && ix >= 0 && ix < gb.g_w) {
          v = __ldg(img + (static_cast<int64_t>(c) * gb.g_h + iy) * gb.g_w + ix);
        }
      }
      regs[i] = v;
    }
  };
  auto load_a = [&](int k0, TA(&regs)[kAPerThread]) {
    if constexpr (kGather) {
      if (gathered(k0)) {
        load_gather(k0, regs);
        return;
      }
    }
#pragma unroll
    for (int i = 0; i < kAPerThread; ++i) {
      int mm, kk;
      a_pos(i, mm, kk);
      const int m = m0 + mm, k = k0 + kk;
      TA v = static_cast<TA>(zero);
      if (m < gb.M && k < k_end) {
        const int b = m / gb.rows, r = m - (m / gb.rows) * gb.rows;
        v = __ldg(a + b * p.a_bs + r * p.a_rs + k * p.a_ks);
      }
      regs[i] = v;
    }
  };
  auto store_a = [&](int stage, const TA(&regs)[kAPerThread]) {
#pragma unroll
    for (int i = 0; i < kAPerThread; ++i) {
      int mm, kk;
      a_pos(i, mm, kk);
      if constexpr (std::is_same<TA, T>::value) {
        As[stage][kk][mm] = regs[i];
      } else {
        As[stage][kk][mm] = from_f32<T>(regs[i]);
      }
    }
  };
  // A by cp.async (gb.a_async: TA = T, a_rs = 1, rows, a_bs, a_ks multiples of kChunk, base 16-byte aligned): a
  // chunk is kChunk consecutive tokens of one image (m0 and rows are multiples of kChunk), wholly inside or outside
  // [0, M) and [k, k_end).
  auto stage_a_async = [&](int stage, int k0) {
#pragma unroll
    for (int i = 0; i < (kAChunks + kWmmaThreads - 1) / kWmmaThreads; ++i) {
      const int c = tid + i * kWmmaThreads;
      if (kAChunks % kWmmaThreads == 0 || c < kAChunks) {
        const int kk = c / (BM / kChunk), mm = (c % (BM / kChunk)) * kChunk;
        const int m = m0 + mm, k = k0 + kk;
        T* dst = &As[stage][kk][mm];
        if (m < gb.M && k < k_end) {
          const int b = m / gb.rows, r = m - (m / gb.rows) * gb.rows;
          __pipeline_memcpy_async(dst, reinterpret_cast<const T*>(a) + b * p.a_bs + r + k * p.a_ks, 16);
        } else {
#pragma unroll
          for (int j = 0; j < kChunk; ++j) dst[j] = zero;
        }
      }
    }
  };
  // W: rows contiguous along k. cp.async of 16-byte chunks straight into the stage (no registers) when every row
  // and chunk is 16-byte aligned (gb.w_async: K a multiple of kChunk, W 16-byte aligned; a chunk is then wholly
  // inside or wholly outside [k, k_end)); else plain loads and stores (the stage is free: see the k loop).
  auto stage_w = [&](int stage, int k0) {
    if (gb.w_async) {
      stage_w_async<T, kWN, kWK, kWmmaThreads>(Ws[stage], w, gb, n0, k0, k_end, tid, zero);
    } else {
#pragma unroll 4
      for (int i = 0; i < (kWN * kWK) / kWmmaThreads; ++i) {
        const int e = tid + i * kWmmaThreads;
        const int kk = e % kWK, nn = e / kWK;
        const int n = n0 + nn, k = k0 + kk;
        Ws[stage][nn][kk] = (n < gb.n_out && k < k_end) ? __ldg(w + static_cast<int64_t>(n) * gb.K + k) : zero;
      }
    }
  };
  // A of the k-step at k0 staged by cp.async (else through registers: load_a, then store_a after the MMAs).
  auto a_by_async = [&](int k0) { return gb.a_async != 0 && !gathered(k0); };
  // Issue the loads of the k-step at k0 into `stage`; A through registers goes to `regs`, stored by the caller
  // (store_a).
  auto issue = [&](int stage, int k0, TA(&regs)[kAPerThread]) {
    stage_w(stage, k0);
    if (a_by_async(k0)) {
      stage_a_async(stage, k0);
    } else {
      load_a(k0, regs);
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, kMK, float> acc[MF];
#pragma unroll
  for (int i = 0; i < MF; ++i) wmma::fill_fragment(acc[i], 0.f);
  // Prologue: the first kStages-1 k-steps. One commit group per k-step, empty or not, so that "all but the newest
  // kStages-2 groups" is always exactly "up to this k-step". kLead2: the register-path A of the last prologue step
  // stays in areg2, stored after the first step's MMAs (below).
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    const int k0 = k_begin + s * kWK;
    if (k0 < k_end) {
      bool stored_later = false;
      if constexpr (kLead2) {
        if (s == kStages - 2) {
          issue(s, k0, areg2);
          stored_later = true;
        }
      }
      if (!stored_later) {
        issue(s, k0, areg);
        if (!a_by_async(k0)) store_a(s, areg);
      }
    }
    __pipeline_commit();
  }
  // One k-step: wait for its stage, refill the stage read in the previous step with step k0 + kStages-1 (A through
  // registers into `load_regs`), multiply, then store register-path A: without kLead2 the step just loaded (one step
  // of MMAs to land); with kLead2 the next step's, loaded one step earlier into `store_regs` (two steps of MMAs).
  auto k_step = [&](int k0, int stage, TA(&load_regs)[kAPerThread], TA(&store_regs)[kAPerThread]) {
    __pipeline_wait_prior(kStages - 2);  // this thread's copies of this k-step have landed
    __syncthreads();  // ... everyone's; and the stage refilled below was last read in the previous step
    const int k_ahead = k0 + (kStages - 1) * kWK;
    const int ahead = stage == 0 ? kStages - 1 : stage - 1;  // (stage + kStages - 1) % kStages
    if (k_ahead < k_end) issue(ahead, k_ahead, load_regs);
    __pipeline_commit();
#pragma unroll 1
    for (int kk = 0; kk < kWK; kk += kMK) {
      wmma::fragment<wmma::matrix_b, 16, 16, kMK, FT, wmma::col_major> fb;
      wmma::load_matrix_sync(fb, &Ws[stage][warp * 16][kk], kLdW);
      if constexpr (std::is_same<T, float>::value) {
        wmma::fragment<wmma::matrix_b, 16, 16, kMK, FT, wmma::col_major> fb_small;
        split_tf32(fb, fb_small);
#pragma unroll
        for (int i = 0; i < MF; ++i) {
          wmma::fragment<wmma::matrix_a, 16, 16, kMK, FT, wmma::col_major> fa, fa_small;
          wmma::load_matrix_sync(fa, &As[stage][kk][16 * i], kLdA);
          split_tf32(fa, fa_small);
          wmma::mma_sync(acc[i], fa_small, fb, acc[i]);  // small terms first: they are the least significant
          wmma::mma_sync(acc[i], fa, fb_small, acc[i]);
          wmma::mma_sync(acc[i], fa, fb, acc[i]);
        }
      } else {
#pragma unroll
        for (int i = 0; i < MF; ++i) {
          wmma::fragment<wmma::matrix_a, 16, 16, kMK, FT, wmma::col_major> fa;
          wmma::load_matrix_sync(fa, &As[stage][kk][16 * i], kLdA);
          wmma::mma_sync(acc[i], fa, fb, acc[i]);
        }
      }
    }
    if constexpr (kLead2) {
      // Step k0 + kWK lives in stage + 1, read from the next step's barrier on.
      const int k_next = k0 + kWK, next = stage == kStages - 1 ? 0 : stage + 1;
      if (k_next < k_end && !a_by_async(k_next)) store_a(next, store_regs);
    } else {
      (void)store_regs;
      if (k_ahead < k_end && !a_by_async(k_ahead)) store_a(ahead, load_regs);
    }
  };
  auto next_stage = [](int s) { return s == kStages - 1 ? 0 : s + 1; };
  int stage = 0;
  if constexpr (kLead2) {
#pragma unroll 1
    for (int k0 = k_begin; k0 < k_end;) {  // two k-steps per turn: the register sets trade places
      k_step(k0, stage, areg, areg2);
      k0 += kWK;
      stage = next_stage(stage);
      if (k0 >= k_end) break;
      k_step(k0, stage, areg2, areg);
      k0 += kWK;
      stage = next_stage(stage);
    }
  } else {
#pragma unroll 1
    for (int k0 = k_begin; k0 < k_end; k0 += kWK, stage = next_stage(stage)) k_step(k0, stage, areg, areg);
  }
  __pipeline_wait_prior(0);  // only empty groups remain; nothing may land on the C tile
  __syncthreads();           // every warp's last MMAs have read the stages that the C tile overwrites
  const bool m_fast = gb.out_mode == kOutTyped && p.o_rs == 1;  // NCHW output: consecutive threads, tokens
  float* const cs = reinterpret_cast<float*>(smem);
  if (m_fast) {  // C tile [n][m]
#pragma unroll
    for (int i = 0; i < MF; ++i) {
      wmma::store_matrix_sync(cs + warp * 16 * kLdCm + 16 * i, acc[i], kLdCm, wmma::mem_col_major);
    }
  } else {  // [m][n]
#pragma unroll
    for (int i = 0; i < MF; ++i) {
      wmma::store_matrix_sync(cs + 16 * i * kLdC + warp * 16, acc[i], kLdC, wmma::mem_row_major);
    }
  }
  __syncthreads();
  // Tile element e: consecutive threads take consecutive outputs of one row (row-major out), or consecutive tokens
  // (NCHW out).
  auto tile_pos = [&](int e, int& mm, int& nn) {
    nn = m_fast ? e / BM : e % kWN;
    mm = m_fast ? e % BM : e / kWN;
  };
  auto tile_value = [&](int mm, int nn) { return m_fast ? cs[nn * kLdCm + mm] : cs[mm * kLdC + nn]; };
  if (gb.out_mode == kOutTyped && gb.splits > 1) {
    // Typed split-K: store this split's partial tile, count the split in; the last to arrive sums all partials.
    constexpr int kTile = BM * kWN;
    const int tile = (prob * static_cast<int>(gridDim.y) + static_cast<int>(blockIdx.y)) * static_cast<int>(gridDim.x) +
                     static_cast<int>(blockIdx.x);
    float* const tp = gb.part + static_cast<int64_t>(tile) * gb.splits * kTile;
#pragma unroll 4
    for (int i = 0; i < kTile / kWmmaThreads; ++i) {
      const int e = tid + i * kWmmaThreads;
      int mm, nn;
      tile_pos(e, mm, nn);
      tp[split * kTile + e] = tile_value(mm, nn);
    }
    __threadfence();  // this thread's partials are visible device-wide before the count below can be seen
    __syncthreads();  // ... every thread's (an order between blocks: not observable in the emulator)
    int* const last = reinterpret_cast<int*>(smem + wmma_c_bytes<MF>());
    if (tid == 0) *last = atomicAdd(gb.counters + tile, 1u) == static_cast<unsigned>(gb.splits - 1) ? 1 : 0;
    __syncthreads();
    if (*last == 0) return;
    __threadfence();  // the other splits' partials (their fences preceded their counts) are read after the count
    // kU elements at a time, two splits' loads in flight per element (16 L2 loads per thread), each element
    // summed in split order.
    constexpr int kU = 8;
    static_assert((kTile / kWmmaThreads) % kU == 0, "whole element groups per thread");
    for (int i0 = 0; i0 < kTile / kWmmaThreads; i0 += kU) {
      float v[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) v[u] = 0.f;
#pragma unroll 2
      for (int s = 0; s < gb.splits; ++s) {
#pragma unroll
        for (int u = 0; u < kU; ++u) v[u] += __ldcg(tp + s * kTile + tid + (i0 + u) * kWmmaThreads);  // L2
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        int mm, nn;
        tile_pos(tid + (i0 + u) * kWmmaThreads, mm, nn);
        const int m = m0 + mm, n = n0 + nn;
        if (m < gb.M && n < gb.n_out) gemm_store<T>(gb, p, 0, m, n, v[u]);
      }
    }
    if (tid == 0) gb.counters[tile] = 0;  // every split has counted: ready for the next launch
    return;
  }
#pragma unroll 4
  for (int i = 0; i < (BM * kWN) / kWmmaThreads; ++i) {
    const int e = tid + i * kWmmaThreads;
    int mm, nn;
    tile_pos(e, mm, nn);
    const int m = m0 + mm, n = n0 + nn;
    if (m < gb.M && n < gb.n_out) gemm_store<T>(gb, p, split, m, n, tile_value(mm, nn));
  }
}

// ---------------------------------------------------------------- host side: plan and launch
// Split K over blocks when the tiles alone cannot fill the GPU (about two blocks per SM; at least 4 k-steps per
// split). The SM count is capped at kPlanSms so that a workspace sized without a device query (kPlanSms SMs) bounds
// every plan: more SMs never give fewer splits.
constexpr int kPlanSms = 160;  // >= H100/H200 (132) and B200 (148)

struct GemmTile {
  int bm, bn, bk;
};
constexpr GemmTile kWmmaTile{kWM, kWN, kWK};
constexpr GemmTile kWmmaTile4{4 * kWM, kWN, kWK};

// Output tiles of bm x bn over all problems (grid x * y * problems).
inline int64_t tile_count(const GemmBatch& gb, int problems, int bm, int bn) {
  return static_cast<int64_t>(ceil_div(gb.M, bm)) * ceil_div(gb.n_out, bn) * problems;
}

// Most K splits a plan may use: max_splits (>= 1), and >= 4 k-steps of bk per split.
inline int split_cap(const GemmBatch& gb, int bk, int max_splits) {
  return std::max(1, std::min(max_splits, gb.K / (4 * bk)));
}

// K split `splits` ways in whole k-steps of bk (the split count can shrink when they round up), bm-row tiles.
inline void set_plan(GemmBatch& gb, int splits, int bm, int bk) {
  gb.k_per_split = ceil_div(ceil_div(gb.K, splits), bk) * bk;
  gb.splits = ceil_div(gb.K, gb.k_per_split);
  gb.bm = bm;
}

// max_splits >= 1 caps the split count (1: never split; a typed output needs 1).
inline void plan_splits(GemmBatch& gb, int problems, int sms, GemmTile t, int max_splits) {
  sms = std::min(sms, kPlanSms);
  const int64_t tiles = tile_count(gb, problems, t.bm, t.bn);
  int splits = 1;
  const int cap = split_cap(gb, t.bk, max_splits);
  while (splits < cap && tiles * splits < 2 * static_cast<int64_t>(sms)) splits *= 2;
  set_plan(gb, std::min(splits, cap), t.bm, t.bk);
}

// Tile: 64 rows when those tiles alone fill the GPU, or when M wastes at most 1/8 of them in padding and, split over
// K, they give at least one block per two SMs (e.g. CMAM from batch 4: 16 tokens per image). A 64-row k-step costs
// about twice a 16-row one in shared-memory traffic (the W stage and its fragments serve 4x the rows), so taller
// tiles do the same work with half the staging; 16 rows otherwise (small batch: 3/4 of a 64-row tile is padding).
inline GemmTile wmma_tile(const GemmBatch& gb, int problems, int sms, int max_splits) {
  sms = std::min(sms, kPlanSms);
  const int64_t tiles64 = tile_count(gb, problems, 4 * kWM, kWN);
  if (tiles64 >= sms) return kWmmaTile4;
  const int64_t padded = static_cast<int64_t>(ceil_div(gb.M, 4 * kWM)) * 4 * kWM;
  const int cap = split_cap(gb, kWK, max_splits);
  const bool little_padding = 8 * padded <= 9 * static_cast<int64_t>(gb.M);
  return little_padding && 2 * tiles64 * cap >= sms ? kWmmaTile4 : kWmmaTile;
}

// The whole plan (tile, splits) for `sms` SMs (a typed output splits only with a workspace: the caller passes
// max_splits = 1 without one).
inline void plan_gemm(GemmBatch& gb, int problems, int sms, int max_splits) {
  plan_splits(gb, problems, sms, wmma_tile(gb, problems, sms, max_splits), max_splits);
}

// Blocks' tiles of a planned batch (grid x * y * problems).
inline int64_t plan_tiles(const GemmBatch& gb, int problems) {
  return tile_count(gb, problems, gb.bm, kWN);
}

// Bytes of a planned typed split's workspace: the counters, then [tile][split][BM * kWN] fp32 partials.
inline size_t split_workspace_bytes(const GemmBatch& gb, int problems) {
  if (gb.splits <= 1) return 0;
  return kSplitCounterBytes + static_cast<size_t>(plan_tiles(gb, problems)) * gb.splits * gb.bm * kWN * sizeof(float);
}

// A workspace size that serves the plan on any card (0: no plan splits): the larger of the plans with either tile
// at kPlanSms SMs (fewer SMs never give more splits with the same tile).
inline size_t typed_split_workspace_bound(GemmBatch gb, int problems, int max_splits) {
  size_t most = 0;
  for (const GemmTile t : {kWmmaTile, kWmmaTile4}) {
    plan_splits(gb, problems, kPlanSms, t, max_splits);
    most = std::max(most, split_workspace_bytes(gb, problems));
  }
  return most;
}

template <typename TA, typename T, int MF, bool kGather>
cudaError_t launch_wmma(cudaStream_t stream, const GemmBatch& gb, dim3 grid) {
  constexpr size_t smem = wmma_smem_bytes<T, MF>();
  return cmir_cuda::launch_opt_in(gemm_wmma_kernel<TA, T, MF, kGather>, grid, dim3(kWmmaThreads), smem, stream, gb);
}

// Launch a planned batch (plan_gemm / plan_splits set bm, splits, k_per_split). T: W's dtype; a_is_float: A is fp32.
// kGather: the variant with the gathered A segment (gb.gather = 1 needs it; A then in T: a_is_float refused).
template <typename T, bool kGather = false>
cudaError_t launch_gemm(cudaStream_t stream, GemmBatch gb, int problems, bool a_is_float) {
  if (problems < 1 || problems > kMaxProblems || gb.splits < 1 || gb.M < 1 || gb.n_out < 1 || gb.K < 1 ||
      gb.rows < 1 || (gb.bm != kWM && gb.bm != 4 * kWM)) {
    return cudaErrorInvalidValue;
  }
  if (gb.out_mode == kOutTyped && gb.splits > 1 &&
      (gb.counters == nullptr || gb.part == nullptr || plan_tiles(gb, problems) > kSplitCounters)) {
    return cudaErrorInvalidValue;
  }
  if ((gb.gather != 0) != kGather) return cudaErrorInvalidValue;
  if (gb.gather != 0) {
    if (a_is_float || gb.a_m_contig == 0 || gb.k_seg < 0 || gb.k_seg % kWK != 0 || gb.g_c < 1 || gb.g_h < 1 ||
        gb.g_w < 1 || gb.g_kh < 1 || gb.g_kw < 1 || gb.g_stride < 1 || gb.g_pad < 0 || gb.g_ow < 1 ||
        gb.rows % gb.g_ow != 0 ||
        static_cast<int64_t>(gb.g_c) * gb.g_kh * gb.g_kw != static_cast<int64_t>(gb.K) - gb.k_seg) {
      return cudaErrorInvalidValue;
    }
    for (int i = 0; i < problems; ++i) {
      if (gb.p[i].g_src == nullptr) return cudaErrorInvalidValue;
    }
  }
  constexpr int chunk = 16 / static_cast<int>(sizeof(T));
  gb.w_async = gb.K % chunk == 0 ? 1 : 0;
  const bool a_in_t = !a_is_float || std::is_same<T, float>::value;
  gb.a_async = a_in_t && gb.a_m_contig && gb.rows % chunk == 0 ? 1 : 0;
  for (int i = 0; i < problems; ++i) {
    const GemmProblem& p = gb.p[i];
    if (reinterpret_cast<uintptr_t>(p.w) % 16 != 0) gb.w_async = 0;
    if (reinterpret_cast<uintptr_t>(p.a) % 16 != 0 || p.a_rs != 1 || p.a_bs % chunk != 0 || p.a_ks % chunk != 0) {
      gb.a_async = 0;
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(gb.M, gb.bm)), static_cast<unsigned>(ceil_div(gb.n_out, kWN)),
                  static_cast<unsigned>(problems * gb.splits));
  if (grid.y > 65535 || grid.z > 65535) return cudaErrorInvalidValue;
  if constexpr (kGather) {
    if (gb.bm == 4 * kWM) return launch_wmma<T, T, 4, true>(stream, gb, grid);
    return launch_wmma<T, T, 1, true>(stream, gb, grid);
  } else {
    if (gb.bm == 4 * kWM) {
      if (a_is_float) return launch_wmma<float, T, 4, false>(stream, gb, grid);
      return launch_wmma<T, T, 4, false>(stream, gb, grid);
    }
    if (a_is_float) return launch_wmma<float, T, 1, false>(stream, gb, grid);
    return launch_wmma<T, T, 1, false>(stream, gb, grid);
  }
}

// ---------------------------------------------------------------- the convolution ops' common part
// Splits a typed-output op allows with a workspace: as many as the planner finds useful (>= 4 k-steps per split).
constexpr int kMaxTypedSplits = 1 << 20;

// A typed NCHW output (and residual) of `cout` channels over `hw` pixels per image: consecutive rows m (pixels) are
// adjacent, so the epilogue's stores coalesce.
inline void nchw_output(GemmProblem& p, int cout, int64_t hw) {
  p.r_bs = p.o_bs = static_cast<int64_t>(cout) * hw;
  p.r_rs = p.o_rs = 1;
  p.r_ns = p.o_ns = hw;
}

// Plan a typed-output batch for `sms` SMs — K split over blocks only with a workspace (nullptr: never) — and point
// the plan at it (see kSplitCounters); cudaErrorInvalidValue when the workspace is smaller than the plan needs.
inline cudaError_t plan_typed(GemmBatch& gb, int problems, int sms, void* ws, size_t ws_bytes) {
  plan_gemm(gb, problems, sms, ws == nullptr ? 1 : kMaxTypedSplits);
  if (gb.splits > 1) {
    if (split_workspace_bytes(gb, problems) > ws_bytes) return cudaErrorInvalidValue;
    gb.counters = static_cast<unsigned*>(ws);
    gb.part = reinterpret_cast<float*>(static_cast<unsigned char*>(ws) + kSplitCounterBytes);
  }
  return cudaSuccess;
}

// The convolution ops' launch (pointwise.cu, conv2d.cu): one problem with these pointers (a: the strided A, g_src:
// the gathered segment's input; either may be null when unused), planned by plan_typed and launched.
template <typename T, bool kGather>
cudaError_t launch_typed_conv(cudaStream_t stream, GemmBatch gb, const void* a, const void* g_src, const void* w,
                              const void* bias, const void* res, void* out, void* ws, size_t ws_bytes, int sms) {
  GemmProblem& p = gb.p[0];
  p.a = a;
  p.g_src = g_src;
  p.w = w;
  p.bias = bias;
  p.res = res;
  p.out_t = out;
  CMIR_CUDA_TRY(plan_typed(gb, 1, sms, ws, ws_bytes));
  return launch_gemm<T, kGather>(stream, gb, 1, false);
}

// plan_gemm + launch_gemm: the entry point of a single GEMM op (e.g. a 1x1 convolution).
template <typename T>
cudaError_t plan_and_launch_gemm(cudaStream_t stream, GemmBatch& gb, int problems, bool a_is_float, int sms,
                                 int max_splits) {
  if (problems < 1 || problems > kMaxProblems || sms < 1 || max_splits < 1) return cudaErrorInvalidValue;
  plan_gemm(gb, problems, sms, max_splits);
  return launch_gemm<T>(stream, gb, problems, a_is_float);
}

}  // namespace cmir_gemm

// CMAM (cross-modality attention, both directions) on the GPU. Four launches at every batch size, each covering both
// directions, no memset (graph-capturable as one short sequence):
//   1. the six Q/K/V projections (one batched GEMM, tokens read straight from NCHW; split-K when the batch is small,
//      each split storing its partial sums, which kernel 2 adds)
//   2. multi-head attention, one warp per query, keys streamed through shared memory with an online softmax; also
//      zeroes the sums of kernel 3 when it splits K
//   3. the two output projections with bias and residual (batched GEMM, split-K by fp32 atomics)
//   4. LayerNorm over channels, written back to NCHW through shared-memory transposes (coalesced along tokens).
// The GEMMs run on tensor cores (WMMA) for fp16/bf16 on sm_80+, on CUDA cores in fp32.
// Intermediates are fp32 in the caller's workspace; inputs/weights/outputs in the op's dtype; accumulation fp32.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include <cuda_pipeline.h>
#include <mma.h>

#include "cmam.cuh"
#include "dtype.cuh"

namespace {

using cmir_cuda::ceil_div;
using cmir_cuda::from_f32;
using cmir_cuda::ldg_f32;

// ---------------------------------------------------------------- batched GEMM: out = A . W^T + bias (+ residual)
constexpr int kBM = 64, kBN = 64, kBK = 16, kGemmThreads = 256;
constexpr int kMaxProblems = 6;

struct GemmProblem {
  const void* a;                  // A(m, k) at a[b*a_bs + r*a_rs + k*a_ks], m = b*rows + r
  int64_t a_bs, a_rs, a_ks;
  const void* w;                  // W [n_out, K] row-major (torch Linear layout)
  const void* bias;               // [n_out]
  const void* res;                // nullable, W's dtype: res(b, r, n) at res[b*r_bs + r*r_rs + n*r_ns]
  int64_t r_bs, r_rs, r_ns;
  float* out;                     // [M, n_out] row-major fp32
};

// How split-K blocks combine (no memset, no extra launch in either case):
enum SplitMode : int {
  kSplitPartials = 0,  // split s stores its partial sum to out + s * M * n_out; the consumer kernel adds them
  kSplitAtomic = 1,    // fp32 atomics into out, zeroed beforehand by the previous kernel of the sequence
};

struct GemmBatch {
  GemmProblem p[kMaxProblems];
  int M, n_out, K, rows;          // rows: rows (tokens) per batch item
  int splits, k_per_split;
  int split_mode;                 // SplitMode, when splits > 1
  int bm;                         // rows per block tile (the tensor-core kernel: 16 or 64)
  int a_m_contig;                 // 1: consecutive m are adjacent in memory (NCHW tokens) -> load A m-fastest
  int w_async;                    // tensor-core kernel: W rows staged by 16-byte cp.async (K % 8 == 0, W aligned)
};

// One output element of a GEMM problem: bias and residual once (by the first K split), then a plain store, a store
// of this split's partial sum, or an atomic add (SplitMode).
template <typename TW>
__device__ __forceinline__ void gemm_store(const GemmBatch& gb, const GemmProblem& p, int split, int m, int n,
                                           float v) {
  if (split == 0) {
    v += ldg_f32(static_cast<const TW*>(p.bias) + n);
    const TW* res = static_cast<const TW*>(p.res);  // residual has the op's dtype (= the weights')
    if (res != nullptr) {
      const int b = m / gb.rows, r = m - (m / gb.rows) * gb.rows;
      v += ldg_f32(res + b * p.r_bs + r * p.r_rs + n * p.r_ns);
    }
  }
  float* o = p.out + static_cast<int64_t>(m) * gb.n_out + n;
  if (gb.splits > 1 && gb.split_mode == kSplitAtomic) {
    atomicAdd(o, v);
  } else {
    o[gb.splits > 1 ? static_cast<int64_t>(split) * gb.M * gb.n_out : 0] = v;
  }
}

template <typename TA, typename TW>
__global__ void __launch_bounds__(kGemmThreads) gemm_bias_kernel(GemmBatch gb) {
  __shared__ float As[kBK][kBM + 1];
  __shared__ float Ws[kBK][kBN + 1];
  const int prob = blockIdx.z / gb.splits;
  const int split = blockIdx.z - prob * gb.splits;
  const GemmProblem& p = gb.p[prob];
  const TA* a = static_cast<const TA*>(p.a);
  const TW* w = static_cast<const TW*>(p.w);
  const int m0 = blockIdx.x * kBM, n0 = blockIdx.y * kBN;
  const int k_begin = split * gb.k_per_split;
  const int k_end = min(gb.K, k_begin + gb.k_per_split);
  const int tid = threadIdx.x;
  const int tx = tid % 16, ty = tid / 16;

  float acc[4][4] = {};
  for (int k0 = k_begin; k0 < k_end; k0 += kBK) {
#pragma unroll
    for (int i = 0; i < (kBM * kBK) / kGemmThreads; ++i) {
      const int e = tid + i * kGemmThreads;
      const int mm = gb.a_m_contig ? e % kBM : e / kBK;
      const int kk = gb.a_m_contig ? e / kBM : e % kBK;
      const int m = m0 + mm, k = k0 + kk;
      float v = 0.f;
      if (m < gb.M && k < k_end) {
        const int b = m / gb.rows, r = m - (m / gb.rows) * gb.rows;
        v = ldg_f32(a + b * p.a_bs + r * p.a_rs + k * p.a_ks);
      }
      As[kk][mm] = v;
    }
#pragma unroll
    for (int i = 0; i < (kBN * kBK) / kGemmThreads; ++i) {
      const int e = tid + i * kGemmThreads;
      const int nn = e / kBK, kk = e % kBK;
      const int n = n0 + nn, k = k0 + kk;
      Ws[kk][nn] = (n < gb.n_out && k < k_end) ? ldg_f32(w + static_cast<int64_t>(n) * gb.K + k) : 0.f;
    }
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kBK; ++kk) {
      float av[4], wv[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) av[i] = As[kk][ty + 16 * i];
#pragma unroll
      for (int j = 0; j < 4; ++j) wv[j] = Ws[kk][tx + 16 * j];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], wv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + ty + 16 * i;
    if (m >= gb.M) continue;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tx + 16 * j;
      if (n < gb.n_out) gemm_store<TW>(gb, p, split, m, n, acc[i][j]);
    }
  }
}

// ---------------------------------------------------------------- tensor-core GEMM (fp16/bf16 projections)
// Block tile 16·MF (tokens) x 128 (outputs) x 32 (k). MF = 1 at small batch: the 16-row WMMA tile matches the 16
// tokens per image of the model (a 64-row SIMT tile is 3/4 padding there); MF = 4 when 64-row tiles still fill the
// GPU (batch >= ~48), so W is re-read from L2 once per 64 tokens instead of per 16. Each of the 8 warps owns MF
// 16x16 fp32 accumulators (one 16-column slice of the tile). A and W
// are staged in the op's dtype T (T x T products are exact in fp32; accumulation fp32, as the SIMT kernel); an fp32
// A (the attention output, TA = float) is rounded to T once when staged, as PyTorch's fp16 module rounds it.
// A(m, k) at As[k][m] (loaded along m for NCHW tokens, along k for row-major A), W(n, k) at Ws[n][k] (rows of W
// contiguous), both read as column-major fragments. Pitches are multiples of 16 bytes and fragment origins 32-byte
// aligned, as WMMA requires.
constexpr int kWM = 16, kWN = 128, kWK = 32, kWmmaThreads = 256;
constexpr int kLdW = kWK + 8, kLdC = kWN + 4;
static_assert(kWN == 16 * (kWmmaThreads / 32), "one 16-column fragment per warp");

// Dynamic shared memory of gemm_wmma_kernel<., T, MF>: max(two stages of A and W, the fp32 C tile) + 32 bytes of
// alignment slack: 23,584 bytes at MF = 1, 33,824 at MF = 4 (C), within the 48 KiB default.
template <typename T, int MF>
constexpr size_t wmma_smem_bytes() {
  constexpr size_t stages =
      2 * sizeof(T) * (static_cast<size_t>(kWK) * (kWM * MF + 8) + static_cast<size_t>(kWN) * kLdW);
  constexpr size_t c = sizeof(float) * static_cast<size_t>(kWM * MF) * kLdC;
  return (stages > c ? stages : c) + 32;
}

template <typename TA, typename T, int MF>
__global__ void __launch_bounds__(kWmmaThreads, MF == 1 ? 3 : 2) gemm_wmma_kernel(GemmBatch gb) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  // fp16/bf16 WMMA and cp.async need sm_80+; the launcher never picks this kernel on older devices.
#else
  using namespace nvcuda;
  constexpr int BM = kWM * MF, kLdA = BM + 8;
  constexpr int kAPerThread = (BM * kWK) / kWmmaThreads;  // A elements a thread stages per k-step (2 or 8)
  constexpr int kWChunk = 16 / static_cast<int>(sizeof(T));  // W elements per 16-byte cp.async (8)
  constexpr int kWChunks = (kWN * kWK) / (kWChunk * kWmmaThreads);  // 16-byte chunks a thread copies per k-step (2)
  // Two stages of A and W (the k-step being multiplied and the next one in flight), aliased by the fp32 C tile
  // after the k loop: wmma_smem_bytes<T, MF>() of dynamic shared memory (cp.async needs a destination the emulator
  // knows as shared memory; static arrays of a template kernel are not in its section), 32-byte aligned here.
  constexpr size_t kABytes = sizeof(T) * kWK * kLdA;
  CMIR_DYNAMIC_SHARED(unsigned char, smem_raw);
  unsigned char* const smem = smem_raw + ((32 - reinterpret_cast<uintptr_t>(smem_raw) % 32) % 32);
  auto As = reinterpret_cast<T(*)[kWK][kLdA]>(smem);                // [2][kWK][kLdA]
  auto Ws = reinterpret_cast<T(*)[kWN][kLdW]>(smem + 2 * kABytes);  // [2][kWN][kLdW]
  auto Cs = reinterpret_cast<float(*)[kLdC]>(smem);                 // [BM][kLdC], after the k loop
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

  // A: loaded into registers one k-step ahead, stored into the other stage after this step's MMAs.
  TA areg[kAPerThread];  // an fp32 A (the attention output) is rounded to T when stored
  auto load_a = [&](int k0) {
#pragma unroll
    for (int i = 0; i < kAPerThread; ++i) {
      const int e = tid + i * kWmmaThreads;
      const int mm = gb.a_m_contig ? e % BM : e / kWK;
      const int kk = gb.a_m_contig ? e / BM : e % kWK;
      const int m = m0 + mm, k = k0 + kk;
      TA v = static_cast<TA>(zero);
      if (m < gb.M && k < k_end) {
        const int b = m / gb.rows, r = m - (m / gb.rows) * gb.rows;
        v = __ldg(a + b * p.a_bs + r * p.a_rs + k * p.a_ks);
      }
      areg[i] = v;
    }
  };
  auto store_a = [&](int stage) {
#pragma unroll
    for (int i = 0; i < kAPerThread; ++i) {
      const int e = tid + i * kWmmaThreads;
      const int mm = gb.a_m_contig ? e % BM : e / kWK;
      const int kk = gb.a_m_contig ? e / BM : e % kWK;
      if constexpr (std::is_same<TA, T>::value) {
        As[stage][kk][mm] = areg[i];
      } else {
        As[stage][kk][mm] = from_f32<T>(areg[i]);
      }
    }
  };
  // W: rows contiguous along k. cp.async of 16-byte chunks straight into the stage (no registers) when every row
  // and chunk is 16-byte aligned (gb.w_async: K % 8 == 0 and W 16-byte aligned; a chunk is then wholly inside or
  // wholly outside [k, k_end)); else plain loads and stores.
  auto stage_w = [&](int stage, int k0) {
    if (gb.w_async) {
#pragma unroll
      for (int i = 0; i < kWChunks; ++i) {
        const int c = tid + i * kWmmaThreads;
        const int nn = c / (kWK / kWChunk), kk = (c % (kWK / kWChunk)) * kWChunk;
        const int n = n0 + nn, k = k0 + kk;
        T* dst = &Ws[stage][nn][kk];
        if (n < gb.n_out && k < k_end) {
          __pipeline_memcpy_async(dst, w + static_cast<int64_t>(n) * gb.K + k, 16);
        } else {
#pragma unroll
          for (int j = 0; j < kWChunk; ++j) dst[j] = zero;
        }
      }
      __pipeline_commit();
    } else {
#pragma unroll
      for (int i = 0; i < (kWN * kWK) / kWmmaThreads; ++i) {
        const int e = tid + i * kWmmaThreads;
        const int kk = e % kWK, nn = e / kWK;
        const int n = n0 + nn, k = k0 + kk;
        Ws[stage][nn][kk] = (n < gb.n_out && k < k_end) ? __ldg(w + static_cast<int64_t>(n) * gb.K + k) : zero;
      }
    }
  };

  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[MF];
#pragma unroll
  for (int i = 0; i < MF; ++i) wmma::fill_fragment(acc[i], 0.f);
  load_a(k_begin);
  stage_w(0, k_begin);
  store_a(0);
  int stage = 0;
  for (int k0 = k_begin; k0 < k_end; k0 += kWK, stage ^= 1) {
    const bool next = k0 + kWK < k_end;
    if (gb.w_async) __pipeline_wait_prior(0);  // this thread's W copies of this k-step have landed
    __syncthreads();  // stage `stage` complete everywhere; the other stage's last reader (the step before) is done
    if (next) {       // the next k-step's loads fly while this one multiplies
      stage_w(stage ^ 1, k0 + kWK);
      load_a(k0 + kWK);
    }
#pragma unroll
    for (int kk = 0; kk < kWK; kk += 16) {
      wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb;
      wmma::load_matrix_sync(fb, &Ws[stage][warp * 16][kk], kLdW);
#pragma unroll
      for (int i = 0; i < MF; ++i) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::col_major> fa;
        wmma::load_matrix_sync(fa, &As[stage][kk][16 * i], kLdA);
        wmma::mma_sync(acc[i], fa, fb, acc[i]);
      }
    }
    if (next) store_a(stage ^ 1);
  }
  __syncthreads();  // every warp's last MMAs have read the stages that Cs overwrites
#pragma unroll
  for (int i = 0; i < MF; ++i) wmma::store_matrix_sync(&Cs[16 * i][warp * 16], acc[i], kLdC, wmma::mem_row_major);
  __syncthreads();
#pragma unroll
  for (int i = 0; i < (BM * kWN) / kWmmaThreads; ++i) {
    const int e = tid + i * kWmmaThreads;
    const int nn = e % kWN, mm = e / kWN;  // consecutive threads: consecutive outputs of one row (coalesced)
    const int m = m0 + mm, n = n0 + nn;
    if (m < gb.M && n < gb.n_out) gemm_store<T>(gb, p, split, m, n, Cs[mm][nn]);
  }
#endif
}

// ---------------------------------------------------------------- attention
constexpr int kAttWarps = 4;      // queries per block (one warp each)
constexpr int kKeyTile = 32;      // keys per shared-memory tile (one per lane)
constexpr int kMaxHeadDim = kCmamMaxHeadDim;  // 8 output dims per lane
static_assert(kMaxHeadDim % 32 == 0, "whole output dims per lane");
constexpr size_t kDefaultSmem = 48 * 1024;  // dynamic shared memory without cudaFuncSetAttribute
// Loads in flight per thread where a runtime-count loop sums or scans L2-resident data (the split-K partials here,
// the pre-norm rows in the LayerNorm). A plain loop puts a trip-count branch between its loads and waits for each
// value before the next load issues: one L2 round trip per element. strided_load issues kLoadUnroll loads at once
// (predicated, no branch between them): a whole batch-1 split-K sum (16 partials), or 16 of a row's elements, cost
// one round trip.
constexpr int kLoadUnroll = 16;  // LayerNorm rows
constexpr int kSplitUnroll = 8;  // attention's split-K sums (16 would take 165 registers: 3 blocks per SM)

template <int U>
__device__ __forceinline__ void strided_load(float (&t)[U], const float* base, int64_t stride, int i, int n) {
#pragma unroll
  for (int u = 0; u < U; ++u) t[u] = i + u < n ? base[(i + u) * stride] : 0.f;
}

// sum_{i < n} base[i * stride], added in order of i, U loads at a time.
template <int U>
__device__ __forceinline__ float strided_sum(const float* base, int64_t stride, int n) {
  float v = 0.f;
#pragma unroll 1  // U loads at a time (unrolling this loop too would only add registers)
  for (int i = 0; i < n; i += U) {
    float t[U];
    strided_load(t, base, stride, i, n);
#pragma unroll
    for (int u = 0; u < U; ++u) {
      if (i + u < n) v += t[u];
    }
  }
  return v;
}
constexpr int kDimsPerLane = kMaxHeadDim / 32;

struct AttArgs {
  const float* qkv;  // [2 dir][3 (q,k,v)][splits][M][dim]: the projections' split-K partial sums, added here
  float* att;        // [2 dir][M][dim]
  int splits;        // split-K partials per projection (1: plain results)
  float* zero;       // nullable: zeroed here for the next launch's split-K atomics (a folded memset)
  int64_t zero_count;
  int B, N, dim, heads, head_dim;
  float scale;
  int qgroups;       // ceil(N / kAttWarps)
};

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// grid: (B * 2 * qgroups, heads). Dynamic shared memory: K and V tiles [kKeyTile][hd+1], q [kAttWarps][hd],
// p [kAttWarps][kKeyTile]. SU: split-K partials loaded at a time (kSplitUnroll when the projections split K more than
// twice, i.e. at small batch where the sums are long and the blocks few; 1 otherwise, for fewer registers).
template <int SU>
__global__ void __launch_bounds__(kAttWarps * 32) attention_kernel(AttArgs a) {
  CMIR_DYNAMIC_SHARED(float, sm);
  const int hd = a.head_dim, ld = hd + 1;
  float* ks = sm;
  float* vs = ks + kKeyTile * ld;
  float* qs = vs + kKeyTile * ld;
  float* ps = qs + kAttWarps * hd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  // blockIdx.x = (b * 2 + dir) * qgroups + query group: the batch rides on grid x (2^31 - 1), never on y/z (65535).
  const int h = blockIdx.y;
  const int bd = blockIdx.x / a.qgroups;
  const int b = bd / 2, dir = bd % 2;
  const int q = (blockIdx.x - bd * a.qgroups) * kAttWarps + warp;
  const bool valid_q = q < a.N;
  const int64_t M = static_cast<int64_t>(a.B) * a.N;
  const int64_t part = M * a.dim;  // one split's partial sums
  const float* Q = a.qkv + (static_cast<int64_t>(dir) * 3 + 0) * a.splits * part;
  const float* Kt = a.qkv + (static_cast<int64_t>(dir) * 3 + 1) * a.splits * part;
  const float* V = a.qkv + (static_cast<int64_t>(dir) * 3 + 2) * a.splits * part;
  auto sum_splits = [&](const float* base, int64_t off) {
    if constexpr (SU > 1) {
      return strided_sum<SU>(base + off, part, a.splits);
    } else {
      float v = base[off];
      for (int s = 1; s < a.splits; ++s) v += base[s * part + off];
      return v;
    }
  };
  if (a.zero != nullptr) {  // grid-stride over every thread of the launch
    const int64_t nthreads = static_cast<int64_t>(gridDim.x) * gridDim.y * blockDim.x;
    const int64_t first = (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x;
    for (int64_t i = first; i < a.zero_count; i += nthreads) a.zero[i] = 0.f;
  }
  const int64_t row0 = static_cast<int64_t>(b) * a.N;
  const int col0 = h * hd;

  for (int d = lane; d < hd; d += 32) {
    qs[warp * hd + d] = valid_q ? sum_splits(Q, (row0 + q) * a.dim + col0 + d) * a.scale : 0.f;
  }
  float acc[kDimsPerLane];
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) acc[i] = 0.f;
  float m_run = -INFINITY, l_run = 0.f;

  for (int t0 = 0; t0 < a.N; t0 += kKeyTile) {
    const int nt = min(kKeyTile, a.N - t0);
    __syncthreads();  // previous tile fully consumed (and q staged, on the first pass)
    for (int e = threadIdx.x; e < nt * hd; e += blockDim.x) {
      const int j = e / hd, d = e - (e / hd) * hd;
      const int64_t off = (row0 + t0 + j) * a.dim + col0 + d;
      ks[j * ld + d] = sum_splits(Kt, off);
      vs[j * ld + d] = sum_splits(V, off);
    }
    __syncthreads();
    float s = -INFINITY;
    if (lane < nt) {
      float dot = 0.f;
      for (int d = 0; d < hd; ++d) dot = fmaf(qs[warp * hd + d], ks[lane * ld + d], dot);
      s = dot;
    }
    const float m_new = fmaxf(m_run, warp_max(s));  // finite: every tile has at least one key
    const float p = lane < nt ? __expf(s - m_new) : 0.f;
    const float corr = __expf(m_run - m_new);         // 0 on the first tile (m_run = -inf)
    l_run = l_run * corr + warp_sum(p);
    ps[warp * kKeyTile + lane] = p;
    __syncwarp();
#pragma unroll
    for (int i = 0; i < kDimsPerLane; ++i) {
      const int d = lane + 32 * i;
      if (d < hd) {
        float v = acc[i] * corr;
        for (int j = 0; j < nt; ++j) v = fmaf(ps[warp * kKeyTile + j], vs[j * ld + d], v);
        acc[i] = v;
      }
    }
    __syncwarp();
    m_run = m_new;
  }
  if (!valid_q) return;
  const float inv = 1.f / l_run;
  float* out = a.att + static_cast<int64_t>(dir) * M * a.dim + (row0 + q) * a.dim + col0;
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) out[d] = acc[i] * inv;
  }
}

// ---------------------------------------------------------------- LayerNorm over C, back to NCHW
constexpr int kLnThreads = 256;
constexpr int kLnWarps = kLnThreads / 32;
constexpr int kLnTokens = 32;  // tokens per block, all of one image: the NCHW writes run along them
constexpr int kLnMaxCSlices = 8;

// grid: (B * tok_tiles, 2 directions, C slices). Statistics: one warp per token, lanes along C (coalesced reads of
// the [M][C] pre-norm rows), two passes as nn.LayerNorm (mean, then biased variance), over all of C in every C
// slice. Output: the block's channels in 32 x 32 tiles transposed through shared memory, so reads run along C and
// the NCHW writes along tokens (one contiguous run of up to 32 tokens per channel instead of one element per
// sector). C slices only when too few token tiles fill the GPU (batch 1-8): each recomputes the statistics.
template <typename T>
__global__ void __launch_bounds__(kLnThreads) layernorm_nchw_kernel(const float* __restrict__ pre, const T* gamma_a,
                                                                    const T* beta_a, const T* gamma_p,
                                                                    const T* beta_p, T* out_a, T* out_p, int B, int N,
                                                                    int C, int tok_tiles, int c_per_slice, float eps) {
  __shared__ float mean_s[kLnTokens];
  __shared__ float rstd_s[kLnTokens];
  __shared__ float tile[32][33];
  const int dir = blockIdx.y;
  const int b = blockIdx.x / tok_tiles;
  const int t0 = (blockIdx.x - b * tok_tiles) * kLnTokens;
  const int nt = min(kLnTokens, N - t0);
  const int c_begin = blockIdx.z * c_per_slice, c_end = min(C, c_begin + c_per_slice);
  const int64_t M = static_cast<int64_t>(B) * N;
  const float* rows = pre + (dir * M + static_cast<int64_t>(b) * N + t0) * C;  // token t's row: rows + t * C
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int t = warp; t < nt; t += kLnWarps) {  // warp-uniform loop: the shuffles see all 32 lanes
    const float* row = rows + static_cast<int64_t>(t) * C;
    const int cnt = lane < C ? (C - lane + 31) / 32 : 0;  // this lane's elements: row[lane + 32 * i], i < cnt
    const float mean = warp_sum(strided_sum<kLoadUnroll>(row + lane, 32, cnt)) / static_cast<float>(C);
    float sq = 0.f;
#pragma unroll 1
    for (int i = 0; i < cnt; i += kLoadUnroll) {  // second pass (L1 hits), in the same order
      float t[kLoadUnroll];
      strided_load(t, row + lane, 32, i, cnt);
#pragma unroll
      for (int u = 0; u < kLoadUnroll; ++u) {
        const float d = t[u] - mean;
        if (i + u < cnt) sq = fmaf(d, d, sq);
      }
    }
    const float var = warp_sum(sq) / static_cast<float>(C);  // biased, as LayerNorm
    if (lane == 0) {
      mean_s[t] = mean;
      rstd_s[t] = rsqrtf(var + eps);
    }
  }
  __syncthreads();
  const T* gamma = dir == 0 ? gamma_a : gamma_p;
  const T* beta = dir == 0 ? beta_a : beta_p;
  T* o = (dir == 0 ? out_a : out_p) + static_cast<int64_t>(b) * C * N + t0;  // channel c, token t: o[c * N + t]
  for (int c0 = c_begin; c0 < c_end; c0 += 32) {
    const int c = c0 + lane;
    if (c < c_end) {  // read along C: lane = channel, warps over tokens
      const float g = ldg_f32(gamma + c), be = ldg_f32(beta + c);
      for (int t = warp; t < nt; t += kLnWarps) {
        tile[lane][t] = (rows[static_cast<int64_t>(t) * C + c] - mean_s[t]) * rstd_s[t] * g + be;
      }
    }
    __syncthreads();
    if (lane < nt) {  // write along tokens: lane = token, warps over channels
      for (int cc = warp; cc < 32 && c0 + cc < c_end; cc += kLnWarps) {
        o[static_cast<int64_t>(c0 + cc) * N + lane] = from_f32<T>(tile[cc][lane]);
      }
    }
    __syncthreads();  // the tile is rewritten by the next chunk
  }
}

// ---------------------------------------------------------------- host side
constexpr size_t kAlign = 256;
size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

// Split K over blocks when the tiles alone cannot fill the GPU (about two blocks per SM; at least 4 k-steps per
// split). The SM count is capped at kPlanSms so that cmam_workspace_size (no device query) bounds every plan: more
// SMs never give fewer splits.
constexpr int kPlanSms = 160;  // >= H100/H200 (132) and B200 (148)

struct GemmTile {
  int bm, bn, bk;
};
constexpr GemmTile kSimtTile{kBM, kBN, kBK};
constexpr GemmTile kWmmaTile{kWM, kWN, kWK};
constexpr GemmTile kWmmaTile4{4 * kWM, kWN, kWK};

void plan_splits(GemmBatch& gb, int problems, int sms, GemmTile t) {
  sms = std::min(sms, kPlanSms);
  const int64_t tiles = static_cast<int64_t>(ceil_div(gb.M, t.bm)) * ceil_div(gb.n_out, t.bn) * problems;
  int splits = 1;
  const int max_splits = std::max(1, gb.K / (4 * t.bk));
  while (splits < max_splits && tiles * splits < 2 * static_cast<int64_t>(sms)) splits *= 2;
  splits = std::min(splits, max_splits);
  gb.k_per_split = ceil_div(ceil_div(gb.K, splits), t.bk) * t.bk;
  gb.splits = ceil_div(gb.K, gb.k_per_split);
  gb.bm = t.bm;
}

// Tensor-core tile: 64 rows when those tiles alone fill the GPU, else 16.
GemmTile wmma_tile(const GemmBatch& gb, int problems, int sms) {
  const int64_t tiles64 = static_cast<int64_t>(ceil_div(gb.M, 4 * kWM)) * ceil_div(gb.n_out, kWN) * problems;
  return tiles64 >= std::min(sms, kPlanSms) ? kWmmaTile4 : kWmmaTile;
}

// fp16/bf16 projections (all eight) on tensor cores (sm_80+), fp32 on CUDA cores: TF32 operands would exceed the
// fp32 tolerance (normwise 1.0e-4 to 1.7e-4 vs 1e-4; benchmarks/RESULTS.md).
bool proj_on_tensor_cores(CmirDType dtype, int cc_major) { return dtype != CmirDType::kFloat32 && cc_major >= 8; }

// Split-K partial sums of the Q/K/V projections held at most (any device: kPlanSms bounds the plan; the tensor-core
// plan with its smaller tiles splits at least as much as the SIMT one).
int max_proj_splits(CmirDType dtype, int batch, int tokens, int channels, int dim) {
  GemmBatch gb{};
  gb.M = batch * tokens;
  gb.n_out = dim;
  gb.K = channels;
  plan_splits(gb, 6, kPlanSms, kSimtTile);
  int splits = gb.splits;
  if (proj_on_tensor_cores(dtype, 8)) {
    for (const GemmTile t : {kWmmaTile, kWmmaTile4}) {
      plan_splits(gb, 6, kPlanSms, t);
      splits = std::max(splits, gb.splits);
    }
  }
  return splits;
}

struct Workspace {
  size_t qkv, att, pre, total;  // byte offsets
};

// qkv: [6][proj splits][M][dim] (split-K partials, summed by the attention kernel), att: [2][M][dim],
// pre: [2][M][C] (output projections + residual; split-K accumulates atomically after the attention kernel zeroed it).
Workspace workspace_layout(CmirDType dtype, int batch, int tokens, int channels, int dim) {
  const size_t M = static_cast<size_t>(batch) * tokens;
  const size_t splits = static_cast<size_t>(max_proj_splits(dtype, batch, tokens, channels, dim));
  Workspace w{};
  w.qkv = 0;
  w.att = align_up(w.qkv + 6 * splits * M * dim * sizeof(float));
  w.pre = align_up(w.att + 2 * M * dim * sizeof(float));
  w.total = align_up(w.pre + 2 * M * channels * sizeof(float));
  return w;
}

bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bn && pb < pa + an;
}

template <typename T>
cudaError_t launch_gemm(cudaStream_t stream, GemmBatch gb, int problems, bool a_is_float, bool wmma) {
  if constexpr (!std::is_same<T, float>::value) {
    if (wmma) {
      gb.w_async = gb.K % 8 == 0 ? 1 : 0;
      for (int i = 0; i < problems; ++i) {
        if (reinterpret_cast<uintptr_t>(gb.p[i].w) % 16 != 0) gb.w_async = 0;
      }
      const dim3 grid(static_cast<unsigned>(ceil_div(gb.M, gb.bm)), static_cast<unsigned>(ceil_div(gb.n_out, kWN)),
                      static_cast<unsigned>(problems * gb.splits));
      const dim3 block(kWmmaThreads);
      if (gb.bm == 4 * kWM) {
        constexpr size_t smem = wmma_smem_bytes<T, 4>();
        if (a_is_float) return cmir_cuda::launch(gemm_wmma_kernel<float, T, 4>, grid, block, smem, stream, gb);
        return cmir_cuda::launch(gemm_wmma_kernel<T, T, 4>, grid, block, smem, stream, gb);
      }
      constexpr size_t smem = wmma_smem_bytes<T, 1>();
      if (a_is_float) return cmir_cuda::launch(gemm_wmma_kernel<float, T, 1>, grid, block, smem, stream, gb);
      return cmir_cuda::launch(gemm_wmma_kernel<T, T, 1>, grid, block, smem, stream, gb);
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(gb.M, kBM)), static_cast<unsigned>(ceil_div(gb.n_out, kBN)),
                  static_cast<unsigned>(problems * gb.splits));
  if (a_is_float) return cmir_cuda::launch(gemm_bias_kernel<float, T>, grid, dim3(kGemmThreads), 0, stream, gb);
  return cmir_cuda::launch(gemm_bias_kernel<T, T>, grid, dim3(kGemmThreads), 0, stream, gb);
}

template <typename T>
cudaError_t launch_typed(cudaStream_t stream, const T* art, const T* pv, const T* wa, const T* wp, T* art_out,
                         T* pv_out, char* ws, int B, int C, int N, int dim, int heads, float eps) {
  const CmirDType dtype = std::is_same<T, float>::value      ? CmirDType::kFloat32
                         : std::is_same<T, __half>::value ? CmirDType::kFloat16
                                                          : CmirDType::kBFloat16;
  const Workspace layout = workspace_layout(dtype, B, N, C, dim);
  float* qkv = reinterpret_cast<float*>(ws + layout.qkv);
  float* att = reinterpret_cast<float*>(ws + layout.att);
  float* pre = reinterpret_cast<float*>(ws + layout.pre);
  const int M = B * N;
  const int64_t dC = static_cast<int64_t>(dim) * C;
  // Offsets in the packed weight buffer (export/plugin_schema.json).
  const int64_t o_wq = 0, o_bq = dC, o_wk = dC + dim, o_bk = 2 * dC + dim, o_wv = 2 * dC + 2 * dim,
                o_bv = 3 * dC + 2 * dim, o_wo = 3 * dC + 3 * dim, o_bo = 4 * dC + 3 * dim, o_g = o_bo + C,
                o_b = o_bo + 2 * C;
  int sms = 0, dev = 0, cc_major = 0;
  CMIR_CUDA_TRY(cmir_cuda::sm_count(&sms));
  CMIR_CUDA_TRY(cudaGetDevice(&dev));
  CMIR_CUDA_TRY(cudaDeviceGetAttribute(&cc_major, cudaDevAttrComputeCapabilityMajor, dev));
  const bool wmma = proj_on_tensor_cores(dtype, cc_major);

  // 1) projections. dir 0 (art output, weights_art): Q from art, K/V from pv; dir 1 symmetric.
  GemmBatch proj{};
  proj.M = M;
  proj.n_out = dim;
  proj.K = C;
  proj.rows = N;
  proj.a_m_contig = 1;
  for (int dir = 0; dir < 2; ++dir) {
    const T* xq = dir == 0 ? art : pv;
    const T* xkv = dir == 0 ? pv : art;
    const T* wt = dir == 0 ? wa : wp;
    const int64_t wofs[3] = {o_wq, o_wk, o_wv}, bofs[3] = {o_bq, o_bk, o_bv};
    for (int j = 0; j < 3; ++j) {
      GemmProblem& p = proj.p[dir * 3 + j];
      p.a = j == 0 ? xq : xkv;
      p.a_bs = static_cast<int64_t>(C) * N;  // token r, channel k of image b: x[b, k, r]
      p.a_rs = 1;
      p.a_ks = N;
      p.w = wt + wofs[j];
      p.bias = wt + bofs[j];
      p.res = nullptr;
    }
  }
  plan_splits(proj, 6, sms, wmma ? wmma_tile(proj, 6, sms) : kSimtTile);
  proj.split_mode = kSplitPartials;
  for (int i = 0; i < 6; ++i) proj.p[i].out = qkv + static_cast<int64_t>(i) * proj.splits * M * dim;
  CMIR_CUDA_TRY(launch_gemm<T>(stream, proj, 6, false, wmma));

  // 3) output projections + bias + residual (the query modality's tokens); planned before the attention launch,
  // which zeroes their split-K sums.
  GemmBatch outp{};
  outp.M = M;
  outp.n_out = C;
  outp.K = dim;
  outp.rows = N;
  outp.a_m_contig = 0;
  for (int dir = 0; dir < 2; ++dir) {
    const T* wt = dir == 0 ? wa : wp;
    GemmProblem& p = outp.p[dir];
    p.a = att + static_cast<int64_t>(dir) * M * dim;
    p.a_bs = static_cast<int64_t>(N) * dim;
    p.a_rs = dim;
    p.a_ks = 1;
    p.w = wt + o_wo;
    p.bias = wt + o_bo;
    p.res = dir == 0 ? art : pv;
    p.r_bs = static_cast<int64_t>(C) * N;
    p.r_rs = 1;
    p.r_ns = N;
    p.out = pre + static_cast<int64_t>(dir) * M * C;
  }
  plan_splits(outp, 2, sms, wmma ? wmma_tile(outp, 2, sms) : kSimtTile);
  outp.split_mode = kSplitAtomic;

  // 2) attention, both directions.
  AttArgs aa{};
  aa.qkv = qkv;
  aa.att = att;
  aa.splits = proj.splits;
  aa.zero = outp.splits > 1 ? pre : nullptr;  // the memset of the output projections' split-K sums, folded in
  aa.zero_count = 2 * static_cast<int64_t>(M) * C;
  aa.B = B;
  aa.N = N;
  aa.dim = dim;
  aa.heads = heads;
  aa.head_dim = dim / heads;
  aa.scale = 1.f / std::sqrt(static_cast<float>(aa.head_dim));
  aa.qgroups = ceil_div(N, kAttWarps);
  const size_t att_smem = (2 * static_cast<size_t>(kKeyTile) * (aa.head_dim + 1) +
                           static_cast<size_t>(kAttWarps) * aa.head_dim + kAttWarps * kKeyTile) * sizeof(float);
  // (68 * head_dim + 192) * 4 bytes: above the 48 KiB default from head_dim 178 on, so opt in (70 KiB at 256).
  void (*const att_kernel)(AttArgs) = aa.splits > 2 ? attention_kernel<kSplitUnroll> : attention_kernel<1>;
  if (att_smem > kDefaultSmem) {
    CMIR_CUDA_TRY(cudaFuncSetAttribute(att_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(att_smem)));
  }
  const int64_t att_blocks = static_cast<int64_t>(B) * 2 * aa.qgroups;
  if (att_blocks > INT32_MAX) return cudaErrorInvalidValue;
  CMIR_CUDA_TRY(cmir_cuda::launch(att_kernel, dim3(static_cast<unsigned>(att_blocks), heads),
                                  dim3(kAttWarps * 32), att_smem, stream, aa));

  CMIR_CUDA_TRY(launch_gemm<T>(stream, outp, 2, true, wmma));  // A: the fp32 attention output

  // 4) LayerNorm, NCHW out. C slices only when the token tiles leave most SMs idle.
  const int tok_tiles = ceil_div(N, kLnTokens);
  const int64_t ln_tiles = static_cast<int64_t>(B) * tok_tiles * 2;
  int c_slices = 1;
  if (2 * ln_tiles < sms) {  // so ln_tiles fits an int
    c_slices = std::min({kLnMaxCSlices, ceil_div(C, 32), ceil_div(sms, static_cast<int>(ln_tiles))});
  }
  const int c_per_slice = ceil_div(ceil_div(C, c_slices), 32) * 32;
  c_slices = ceil_div(C, c_per_slice);
  if (static_cast<int64_t>(B) * tok_tiles > INT32_MAX) return cudaErrorInvalidValue;
  return cmir_cuda::launch(layernorm_nchw_kernel<T>,
                           dim3(static_cast<unsigned>(B * tok_tiles), 2, static_cast<unsigned>(c_slices)),
                           dim3(kLnThreads), 0, stream, pre, wa + o_g, wa + o_b, wp + o_g, wp + o_b, art_out, pv_out,
                           B, N, C, tok_tiles, c_per_slice, eps);
}

}  // namespace

size_t cmam_workspace_size(CmirDType dtype, int batch, int channels, int height, int width, int dim, int heads) {
  (void)heads;
  if (batch < 1 || channels < 1 || height < 1 || width < 1 || dim < 1) return 0;
  return workspace_layout(dtype, batch, height * width, channels, dim).total;
}

cudaError_t launch_cmam(cudaStream_t stream, CmirDType dtype, const void* art, const void* pv,
                        const void* weights_art, const void* weights_pv, void* art_out, void* pv_out,
                        void* workspace, size_t workspace_bytes, int batch, int channels, int height, int width,
                        int dim, int heads, float eps) {
  if (!cmir_cuda::valid_dtype(dtype)) return cudaErrorInvalidValue;
  if (art == nullptr || pv == nullptr || weights_art == nullptr || weights_pv == nullptr || art_out == nullptr ||
      pv_out == nullptr || workspace == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (cmam_unsupported(batch, channels, height, width, dim, heads) != nullptr) return cudaErrorInvalidValue;
  if (!(eps >= 0.f) || !std::isfinite(eps)) return cudaErrorInvalidValue;
  const int64_t tokens = static_cast<int64_t>(height) * width;
  const int64_t rows = tokens * batch;
  if (workspace_bytes < workspace_layout(dtype, batch, static_cast<int>(tokens), channels, dim).total) {
    return cudaErrorInvalidValue;
  }
  const size_t act_bytes = static_cast<size_t>(rows) * channels * cmir_cuda::dtype_size(dtype);
  // The outputs are written while inputs are still being read (LayerNorm after all GEMMs, but the residual of one
  // direction is the other's key/value source only through the workspace): forbid aliasing to keep it simple.
  for (const void* in : {art, pv}) {
    if (overlaps(in, act_bytes, art_out, act_bytes) || overlaps(in, act_bytes, pv_out, act_bytes)) {
      return cudaErrorInvalidValue;
    }
  }
  if (overlaps(art_out, act_bytes, pv_out, act_bytes)) return cudaErrorInvalidValue;
  char* ws = static_cast<char*>(workspace);
  const int B = batch, C = channels, N = static_cast<int>(tokens);
  switch (dtype) {
    case CmirDType::kFloat32:
      return launch_typed<float>(stream, static_cast<const float*>(art), static_cast<const float*>(pv),
                                 static_cast<const float*>(weights_art), static_cast<const float*>(weights_pv),
                                 static_cast<float*>(art_out), static_cast<float*>(pv_out), ws, B, C, N, dim, heads,
                                 eps);
    case CmirDType::kFloat16:
      return launch_typed<__half>(stream, static_cast<const __half*>(art), static_cast<const __half*>(pv),
                                  static_cast<const __half*>(weights_art), static_cast<const __half*>(weights_pv),
                                  static_cast<__half*>(art_out), static_cast<__half*>(pv_out), ws, B, C, N, dim,
                                  heads, eps);
    case CmirDType::kBFloat16:
      return launch_typed<__nv_bfloat16>(
          stream, static_cast<const __nv_bfloat16*>(art), static_cast<const __nv_bfloat16*>(pv),
          static_cast<const __nv_bfloat16*>(weights_art), static_cast<const __nv_bfloat16*>(weights_pv),
          static_cast<__nv_bfloat16*>(art_out), static_cast<__nv_bfloat16*>(pv_out), ws, B, C, N, dim, heads, eps);
  }
  return cudaErrorInvalidValue;
}

// The 128 x 256 mma.sync GEMM tile for fp16/bf16 (CMAM's projections at large batch), on the GemmBatch interface of
// gemm.cuh: out(m, n) = A(m, .) . W(n, .) + bias[n] [+ res(m, n)], fp32 output [M][n_out] (split-K partials stored,
// kSplitPartials) or a typed row-major output (o_ns = 1, no split). A in T, either the NCHW tokens (m-contiguous:
// CMAM's Q/K/V projections) or row-major (k-contiguous, kAK: the attention output into the output projections);
// W [n_out][K]; both staged by 16-byte cp.async.
//
// Why a second GEMM kernel: the WMMA kernel's 64 x 128 tile gives each warp a 64 x 16 slice, so every warp loads the
// block's four A fragments for one B fragment: ~4 shared-memory wavefronts per m16n8k16 of work, which binds the
// projections at batch 64 (L1/shared pipe, not the tensor cores). Here 8 warps of 64 x 64 (2 x 4) load 4 A and 4 B
// ldmatrix.x4 per 32 MMAs, and the 128 x 256 tile stages 384 rows per k-step for 512 MMAs: ~1.75 wavefronts per
// MMA. 128 fp32 accumulators per thread: one block per SM (__launch_bounds__(256, 1)).
//
// Layout: m-contiguous A staged [k][m] as NCHW delivers it (16-byte chunks of 8 tokens) and read with ldmatrix.trans
// into the row-major A fragment; k-contiguous A staged [m][k], read with ldmatrix; W staged [n][k], read with
// ldmatrix into the col-major B fragment. Row pitches of 136 and 40 elements (272 and 80 bytes) put the 8 rows of
// every ldmatrix phase in 8 distinct 16-byte bank groups. Three stages: the MMAs of k-step s read one stage while the
// copies of steps s+1 and s+2 fly.
#pragma once
#include <climits>
#include <cstdint>
#include <type_traits>

#include "gemm.cuh"
#include "mma_sync.cuh"

namespace cmir_gemm {

constexpr int kMmaBM = 128, kMmaBN = 256, kMmaBK = 32, kMmaThreads = 256, kMmaStages = 3;
constexpr int kMmaWarpsN = 4;  // warps along n (2 along m): 64 x 64 outputs per warp
constexpr int kMmaLdA = kMmaBM + 8, kMmaLdW = kMmaBK + 8;  // A [k][m] and W [n][k] row pitches; A [m][k]: kMmaLdW
static_assert(kMmaThreads / 32 == 2 * kMmaWarpsN && kMmaBM == 2 * 64 && kMmaBN == kMmaWarpsN * 64, "warp grid");

// Elements of one A stage: [kMmaBK][kMmaLdA] (m-contiguous A) or [kMmaBM][kMmaLdW] (kAK).
template <bool kAK>
constexpr size_t mma_a_stage() {
  return kAK ? static_cast<size_t>(kMmaBM) * kMmaLdW : static_cast<size_t>(kMmaBK) * kMmaLdA;
}
// Dynamic shared memory: kMmaStages stages of A and W [kMmaBN][kMmaLdW] (87,552 / 92,160 bytes: opt-in).
template <typename T, bool kAK>
constexpr size_t mma_smem_bytes() {
  return kMmaStages * sizeof(T) * (mma_a_stage<kAK>() + static_cast<size_t>(kMmaBN) * kMmaLdW);
}

// LayerNorm over all n_out columns of each row, fused into the epilogue (gemm_mma_kernel<T, kAK, true>, launched
// cooperatively): per problem gamma, beta [n_out] in T; stats: [problems][n tiles][M] (mean, M2) of each block's
// columns of each row, exchanged through L2 across one grid barrier; the output out_t in T at out(b, r, n) =
// out_t[b*o_bs + n*o_ns + r] (NCHW: tokens contiguous, o_rs = 1), y = (v - mean) / sqrt(var + eps) * gamma + beta.
constexpr int kMmaLnProblems = 2;
struct MmaLn {
  const void* gamma[kMmaLnProblems];
  const void* beta[kMmaLnProblems];
  float2* stats;
  float eps;
};
constexpr int kMmaLnLd = kMmaBM + 8;  // the normalized tile in shared memory, [n][m]: 16-byte rows of 8 tokens

template <typename T>
constexpr size_t mma_ln_smem_bytes() {  // the epilogue's use of the (then idle) stage buffers
  return (kMmaWarpsN + 2) * kMmaBM * sizeof(float) + static_cast<size_t>(kMmaBN) * kMmaLnLd * sizeof(T);
}

// The fused LayerNorm epilogue: acc holds this thread's products (fragment layout of the main loop). 1. v = product +
// bias + residual (zero outside the output); 2. each row's mean over the block's columns, then M2 = sum (v - mean)^2
// (two passes, in registers); 3. (mean, M2) to ln.stats; 4. grid barrier; 5. each row's statistics over all n_out
// from the n tiles' partials (Chan's combination, no cancellation); 6. normalized rows into shared memory [n][m];
// 7. 16-byte stores of 8 tokens of one channel (NCHW runs along tokens).
template <typename T>
__device__ __forceinline__ void mma_ln_epilogue(float (&acc)[4][8][4], const GemmBatch& gb, const MmaLn& ln, int prob,
                                                unsigned char* smem, int m0, int n0, int wm, int wn, int lane,
                                                int tid) {
  const GemmProblem& p = gb.p[prob];
  const int g = lane / 4, t = lane % 4;
  const int cols = min(kMmaBN, gb.n_out - n0);
  __syncthreads();  // every warp has left the main loop: the stage buffers are free
  float* const red = reinterpret_cast<float*>(smem);  // [kMmaWarpsN][kMmaBM]: each warp column's row sums
  float* const row_mean = red + kMmaWarpsN * kMmaBM;  // [kMmaBM]
  float* const row_rstd = row_mean + kMmaBM;          // [kMmaBM]
  auto tile = reinterpret_cast<T(*)[kMmaLnLd]>(row_rstd + kMmaBM);  // [kMmaBN][kMmaLnLd]
  const T* const bias_t = static_cast<const T*>(p.bias);
  const T* const res = static_cast<const T*>(p.res);
  bool n_ok[8];
#pragma unroll
  for (int j = 0; j < 8; ++j) n_ok[j] = n0 + wn * 64 + 8 * j + 2 * t < gb.n_out;  // the pair is whole (n_out % 8)
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm * 64 + 16 * i + g + 8 * h;
      const int b = m / gb.rows, r = m - b * gb.rows;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int n = n0 + wn * 64 + 8 * j + 2 * t;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          float v = 0.f;
          if (m < gb.M && n_ok[j]) {
            v = acc[i][j][2 * h + e] + (bias_t != nullptr ? ldg_f32(bias_t + n + e) : 0.f);
            if (res != nullptr) v += ldg_f32(res + b * p.r_bs + r * p.r_rs + (n + e) * p.r_ns);
          }
          acc[i][j][2 * h + e] = v;
        }
      }
    }
  }
  // Row sums over this block's columns: 16 values per lane, the 4 lanes of a row (shuffles), the kMmaWarpsN warps
  // of a row (shared memory). center: the row means to subtract (second pass), or null (first pass).
  auto row_sums = [&](const float* center) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int lr = wm * 64 + 16 * i + g + 8 * h;
        const float c = center != nullptr ? center[lr] : 0.f;
        float sum = 0.f;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float d = n_ok[j] ? acc[i][j][2 * h + e] - c : 0.f;
            sum += center != nullptr ? d * d : d;
          }
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        sum += __shfl_xor_sync(0xffffffffu, sum, 2);
        if (t == 0) red[wn * kMmaBM + lr] = sum;
      }
    }
    __syncthreads();
    float total = 0.f;
    if (tid < kMmaBM) {
#pragma unroll
      for (int w = 0; w < kMmaWarpsN; ++w) total += red[w * kMmaBM + tid];
    }
    return total;
  };
  const float block_mean = row_sums(nullptr) / static_cast<float>(cols);
  if (tid < kMmaBM) row_mean[tid] = block_mean;
  __syncthreads();  // the means are read, and red rewritten, by the second pass
  const float block_m2 = row_sums(row_mean);
  const int n_tiles = static_cast<int>(gridDim.y);
  float2* const stats = ln.stats + static_cast<int64_t>(prob) * n_tiles * gb.M;
  if (tid < kMmaBM && m0 + tid < gb.M) {
    stats[static_cast<int64_t>(blockIdx.y) * gb.M + m0 + tid] = make_float2(block_mean, block_m2);
  }
  CMIR_GRID_SYNC();
  if (tid < kMmaBM && m0 + tid < gb.M) {
    float mean = 0.f, m2 = 0.f;
    for (int y = 0; y < n_tiles; ++y) {
      const float2 part = __ldcg(stats + static_cast<int64_t>(y) * gb.M + m0 + tid);
      mean += static_cast<float>(min(kMmaBN, gb.n_out - y * kMmaBN)) * part.x;
    }
    mean /= static_cast<float>(gb.n_out);
    for (int y = 0; y < n_tiles; ++y) {
      const float2 part = __ldcg(stats + static_cast<int64_t>(y) * gb.M + m0 + tid);
      const float d = part.x - mean;
      m2 += part.y + static_cast<float>(min(kMmaBN, gb.n_out - y * kMmaBN)) * d * d;
    }
    row_mean[tid] = mean;
    row_rstd[tid] = rsqrtf(m2 / static_cast<float>(gb.n_out) + ln.eps);  // biased variance, as LayerNorm
  }
  __syncthreads();
  const T* const gamma = static_cast<const T*>(ln.gamma[prob]);
  const T* const beta = static_cast<const T*>(ln.beta[prob]);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int nl = wn * 64 + 8 * j + 2 * t;
    if (!n_ok[j]) continue;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float ga = ldg_f32(gamma + n0 + nl + e), be = ldg_f32(beta + n0 + nl + e);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int lr = wm * 64 + 16 * i + g + 8 * h;
          tile[nl + e][lr] = from_f32<T>((acc[i][j][2 * h + e] - row_mean[lr]) * row_rstd[lr] * ga + be);
        }
      }
    }
  }
  __syncthreads();
  constexpr int kRowChunks = kMmaBM / 8;
  T* const out = static_cast<T*>(p.out_t);
  for (int c = tid; c < kMmaBN * kRowChunks; c += kMmaThreads) {
    const int nl = c / kRowChunks, ml = (c % kRowChunks) * 8;
    const int n = n0 + nl, m = m0 + ml;  // M and rows are multiples of 8: the chunk is one image's, all or none
    if (n >= gb.n_out || m >= gb.M) continue;
    const int b = m / gb.rows, r = m - b * gb.rows;
    *reinterpret_cast<uint4*>(out + b * p.o_bs + n * p.o_ns + r) = *reinterpret_cast<const uint4*>(&tile[nl][ml]);
  }
}

template <typename T, bool kAK, bool kLn>
__global__ void __launch_bounds__(kMmaThreads, 1) gemm_mma_kernel(GemmBatch gb, MmaLn ln) {
  constexpr int kChunk = 8;  // 16-bit elements per 16-byte cp.async
  CMIR_DYNAMIC_SHARED(unsigned char, smem);
  T* const a_stages = reinterpret_cast<T*>(smem);  // [kMmaStages][mma_a_stage<kAK>()]
  auto Ws = reinterpret_cast<T(*)[kMmaBN][kMmaLdW]>(smem + kMmaStages * sizeof(T) * mma_a_stage<kAK>());
  const int prob = blockIdx.z / gb.splits;
  const int split = blockIdx.z - prob * gb.splits;
  const GemmProblem& p = gb.p[prob];
  const T* a = static_cast<const T*>(p.a);
  const T* w = static_cast<const T*>(p.w);
  const int m0 = blockIdx.x * kMmaBM, n0 = blockIdx.y * kMmaBN;
  const int k_begin = split * gb.k_per_split;
  const int k_end = min(gb.K, k_begin + gb.k_per_split);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int wm = warp / kMmaWarpsN, wn = warp % kMmaWarpsN;
  const uint4 zero16 = make_uint4(0u, 0u, 0u, 0u);

  // One k-step's copies into `stage`. A: kMmaBK rows of kMmaBM / 8 chunks, each 8 consecutive tokens of one image
  // (rows and m0 are multiples of 8), or (kAK) kMmaBM rows of 4 chunks of 8 channels (K a multiple of 8); either
  // wholly inside or outside [0, M) x [k, k_end). W: kMmaBN rows of 4 chunks. Outside: zeros (plain 16-byte stores;
  // the stage was last read before this step's barrier).
  auto stage_in = [&](int stage, int k0) {
    constexpr int kAChunks = kMmaBK * (kMmaBM / kChunk);
    static_assert(kAChunks % kMmaThreads == 0, "whole chunks per thread");
#pragma unroll
    for (int i = 0; i < kAChunks / kMmaThreads; ++i) {
      const int c = tid + i * kMmaThreads;
      int mm, kk;  // the chunk's first element: 8 tokens along m, or (kAK) 8 channels along k
      if constexpr (kAK) {
        mm = c / (kMmaBK / kChunk);
        kk = (c % (kMmaBK / kChunk)) * kChunk;
      } else {
        kk = c / (kMmaBM / kChunk);
        mm = (c % (kMmaBM / kChunk)) * kChunk;
      }
      const int m = m0 + mm, k = k0 + kk;
      T* dst = a_stages + stage * mma_a_stage<kAK>() + (kAK ? mm * kMmaLdW + kk : kk * kMmaLdA + mm);
      if (m < gb.M && k < k_end) {
        const int b = m / gb.rows, r = m - b * gb.rows;
        __pipeline_memcpy_async(dst, a + b * p.a_bs + r * p.a_rs + static_cast<int64_t>(k) * p.a_ks, 16);
      } else {
        *reinterpret_cast<uint4*>(dst) = zero16;
      }
    }
    stage_w_async<T, kMmaBN, kMmaBK, kMmaThreads>(Ws[stage], w, gb, n0, k0, k_end, tid, from_f32<T>(0.f));
  };

  float acc[4][8][4];  // [16-row tile][8-column tile][fragment element]
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 8; ++j) {
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;
    }
  }
  // Prologue: one commit group per k-step, empty or not, so that "all but the newest kMmaStages-2 groups" is always
  // exactly "up to this k-step".
#pragma unroll
  for (int s = 0; s < kMmaStages - 1; ++s) {
    const int k0 = k_begin + s * kMmaBK;
    if (k0 < k_end) stage_in(s, k0);
    __pipeline_commit();
  }
  // ldmatrix row addresses: lanes 8i..8i+7 give rows 0..7 of matrix i. A (.trans from [k][m]): matrix i covers k
  // 8 (i >> 1) .., m 8 (i & 1) .. -> registers a[0..3] of the m16n8k16 A fragment; kAK (from [m][k]): matrix i
  // covers m 8 (i & 1) .., k 8 (i >> 1) ... W: matrix i covers n 8 (i >> 1) .., k 8 (i & 1) .. -> b[0], b[1] of one
  // 8-column tile, then of the next.
  const int lrow = lane % 8, lmat = lane / 8;
  const int a_k = kAK ? 8 * (lmat >> 1) : lrow + 8 * (lmat >> 1);
  const int a_m = wm * 64 + (kAK ? lrow : 0) + 8 * (lmat & 1);
  const int w_n = wn * 64 + lrow + 8 * (lmat >> 1), w_k = 8 * (lmat & 1);
  int stage = 0;
#pragma unroll 1
  for (int k0 = k_begin; k0 < k_end; k0 += kMmaBK) {
    __pipeline_wait_prior(kMmaStages - 2);  // this thread's copies of this k-step have landed
    __syncthreads();  // ... everyone's; and the stage refilled below was last read in the previous step
    const int k_ahead = k0 + (kMmaStages - 1) * kMmaBK;
    const int ahead = stage == 0 ? kMmaStages - 1 : stage - 1;  // (stage + kMmaStages - 1) % kMmaStages
    if (k_ahead < k_end) stage_in(ahead, k_ahead);
    __pipeline_commit();
#pragma unroll
    for (int kk = 0; kk < kMmaBK; kk += 16) {
      uint32_t af[4][4], bf[8][2];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const T* as = a_stages + stage * mma_a_stage<kAK>();
        if constexpr (kAK) {
          cmir_mma::ldmatrix_x4(af[i], as + (a_m + 16 * i) * kMmaLdW + kk + a_k);
        } else {
          cmir_mma::ldmatrix_x4_trans(af[i], as + (kk + a_k) * kMmaLdA + a_m + 16 * i);
        }
      }
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        uint32_t r[4];
        cmir_mma::ldmatrix_x4(r, &Ws[stage][w_n + 16 * j][kk + w_k]);
        bf[2 * j][0] = r[0];
        bf[2 * j][1] = r[1];
        bf[2 * j + 1][0] = r[2];
        bf[2 * j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int j = 0; j < 8; ++j) cmir_mma::mma_16816<T>(acc[i][j], af[i], bf[j]);
      }
    }
    stage = stage == kMmaStages - 1 ? 0 : stage + 1;
  }
  __pipeline_wait_prior(0);  // only empty groups remain
  if constexpr (kLn) {
    mma_ln_epilogue<T>(acc, gb, ln, prob, smem, m0, n0, wm, wn, lane, tid);
    return;
  } else {
    (void)ln;
  }

  // Epilogue straight from the fragments: lane (g, t) holds rows g and g + 8 of each 16-row tile, columns 2t, 2t+1
  // of each 8-column tile (n_out a multiple of 8: the pair is whole). Bias and residual once, by split 0; then one
  // float2 (4 lanes fill a 32-byte sector) or, typed, one 32-bit pair of T at row-major strides (o_ns = 1).
  const int g = lane / 4, t = lane % 4;
  const bool first = split == 0;
  const T* const bias_t = static_cast<const T*>(p.bias);
  const T* const res = static_cast<const T*>(p.res);
  float bias[8][2];
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const int n = n0 + wn * 64 + 8 * j + 2 * t;
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      bias[j][e] = first && bias_t != nullptr && n < gb.n_out ? ldg_f32(bias_t + n + e) : 0.f;
    }
  }
  float* const out = p.out + (gb.splits > 1 ? static_cast<int64_t>(split) * gb.M * gb.n_out : 0);
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int m = m0 + wm * 64 + 16 * i + g + 8 * h;
      if (m >= gb.M) continue;
      const int b = m / gb.rows, r = m - b * gb.rows;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int n = n0 + wn * 64 + 8 * j + 2 * t;
        if (n >= gb.n_out) continue;
        float v0 = acc[i][j][2 * h] + bias[j][0], v1 = acc[i][j][2 * h + 1] + bias[j][1];
        if (first && res != nullptr) {
          const T* rp = res + b * p.r_bs + r * p.r_rs + n * p.r_ns;
          v0 += ldg_f32(rp);
          v1 += ldg_f32(rp + p.r_ns);
        }
        if (gb.out_mode == kOutTyped) {
          T* const o = static_cast<T*>(p.out_t) + b * p.o_bs + r * p.o_rs + n;
          const uint32_t pair = static_cast<uint32_t>(cmir_cuda::to_bits(from_f32<T>(v0))) |
                                (static_cast<uint32_t>(cmir_cuda::to_bits(from_f32<T>(v1))) << 16);
          *reinterpret_cast<uint32_t*>(o) = pair;
        } else {
          *reinterpret_cast<float2*>(out + static_cast<int64_t>(m) * gb.n_out + n) = make_float2(v0, v1);
        }
      }
    }
  }
}

// Whether a batch can take this kernel: T 16-bit, A in T; n_out a multiple of 8 (whole 8-column tiles: the
// epilogue's pairs); no ReLU, no gathered segment; A either the NCHW tokens (a_m_contig: a_rs = 1; rows, a_bs, a_ks
// multiples of 8) or row-major (a_ks = 1; a_rs, a_bs multiples of 8), 16-byte aligned base, K a multiple of 8: every
// 8-element chunk is one aligned cp.async; W rows 16-byte aligned (base aligned). Output: fp32 (8-byte aligned), or
// typed row-major (o_ns = 1, even o_rs and o_bs, 4-byte aligned: pairs of T as one 32-bit store). In CMAM the packed
// K/V weights start dim * (C + 1) elements in: aligned only when dim is a multiple of 8, as n_out must be anyway.
template <typename T>
bool mma_inputs_fit(const GemmBatch& gb, int problems, bool a_is_float) {
  if (std::is_same<T, float>::value || a_is_float || problems < 1 || problems > kMaxProblems) return false;
  if (gb.relu != 0 || gb.gather != 0 || gb.rows < 1 || gb.K % 8 != 0 || gb.n_out % 8 != 0) return false;
  if (gb.a_m_contig != 0 && gb.rows % 8 != 0) return false;
  for (int i = 0; i < problems; ++i) {
    const GemmProblem& p = gb.p[i];
    const bool a_ok = gb.a_m_contig != 0 ? p.a_rs == 1 && p.a_bs % 8 == 0 && p.a_ks % 8 == 0
                                         : p.a_ks == 1 && p.a_bs % 8 == 0 && p.a_rs % 8 == 0;
    if (!a_ok || reinterpret_cast<uintptr_t>(p.a) % 16 != 0 || reinterpret_cast<uintptr_t>(p.w) % 16 != 0) {
      return false;
    }
  }
  return true;
}

template <typename T>
bool mma_fits(const GemmBatch& gb, int problems, bool a_is_float) {
  if (!mma_inputs_fit<T>(gb, problems, a_is_float)) return false;
  for (int i = 0; i < problems; ++i) {
    const GemmProblem& p = gb.p[i];
    if (gb.out_mode == kOutTyped) {
      if (p.o_ns != 1 || p.o_rs % 2 != 0 || p.o_bs % 2 != 0 || reinterpret_cast<uintptr_t>(p.out_t) % 4 != 0) {
        return false;
      }
    } else if (gb.out_mode != kOutF32 || reinterpret_cast<uintptr_t>(p.out) % 8 != 0) {
      return false;
    }
  }
  return true;
}

// The plan for `sms` SMs, or false where the WMMA kernel is the better choice: this tile pays off when its tiles
// alone give at least one block per 4 SMs (few splits, few partial sums to add) and n_out fills at least half of
// its 256 columns. Splits (at most max_splits; a typed output: 1): the fewest (doubling, >= 4 k-steps each) that
// leave at most ~30% of the SMs idle, never more blocks than SMs (one block per SM: a second round of blocks would
// cost as much as the first).
inline bool plan_mma(GemmBatch& gb, int problems, int sms, int max_splits) {
  sms = std::min(sms, kPlanSms);
  const int64_t tiles = tile_count(gb, problems, kMmaBM, kMmaBN);
  if (2 * gb.n_out < kMmaBN || 4 * tiles < sms) return false;
  const int cap = split_cap(gb, kMmaBK, max_splits);
  int splits = 1;
  while (splits < cap && 10 * tiles * splits < 7 * static_cast<int64_t>(sms) && 2 * tiles * splits <= sms) {
    splits *= 2;
  }
  set_plan(gb, std::min(splits, cap), kMmaBM, kMmaBK);
  return true;
}

// The most splits plan_mma gives on any card (0 when it never takes the batch): its splits grow with the SM count
// over the counts it accepts (up to 4 x tiles), so the largest accepted count bounds them.
inline int mma_splits_bound(GemmBatch gb, int problems) {
  const int sms = static_cast<int>(std::min<int64_t>(kPlanSms, 4 * tile_count(gb, problems, kMmaBM, kMmaBN)));
  return plan_mma(gb, problems, sms, INT32_MAX) ? gb.splits : 0;
}

// Launch a batch planned by plan_mma (mma_fits checked by the caller; checked again here).
template <typename T>
cudaError_t launch_mma(cudaStream_t stream, const GemmBatch& gb, int problems) {
  if constexpr (std::is_same<T, float>::value) {  // no fp32 variant (mma_fits refuses it): not instantiated
    (void)stream;
    (void)gb;
    (void)problems;
    return cudaErrorInvalidValue;
  } else {
    if (!mma_fits<T>(gb, problems, false) || gb.bm != kMmaBM || gb.splits < 1 || gb.M < 1 ||
        (gb.splits > 1 && (gb.out_mode != kOutF32 || gb.split_mode != kSplitPartials))) {
      return cudaErrorInvalidValue;
    }
    const dim3 grid(static_cast<unsigned>(ceil_div(gb.M, kMmaBM)),
                    static_cast<unsigned>(ceil_div(gb.n_out, kMmaBN)), static_cast<unsigned>(problems * gb.splits));
    if (grid.y > 65535 || grid.z > 65535) return cudaErrorInvalidValue;
    if (gb.a_m_contig != 0) {
      return cmir_cuda::launch_opt_in(gemm_mma_kernel<T, false, false>, grid, dim3(kMmaThreads),
                                      mma_smem_bytes<T, false>(), stream, gb, MmaLn{});
    }
    return cmir_cuda::launch_opt_in(gemm_mma_kernel<T, true, false>, grid, dim3(kMmaThreads),
                                    mma_smem_bytes<T, true>(), stream, gb, MmaLn{});
  }
}

// Whether a batch can take the fused LayerNorm (gemm_mma_kernel<T, kAK, true>) on `sms` SMs: the inputs as mma_fits;
// at most kMmaLnProblems problems; the typed NCHW output (o_rs = 1; o_ns, o_bs and rows multiples of 8, 16-byte
// aligned base: 8-token chunks as one store); gamma and beta given, stats 8-byte aligned; one block per tile
// (unsplit), and every block resident at once for the grid barrier: at most one per SM (the kernel's launch bounds),
// which is the plan plan_mma gives an unsplit batch. Plans the batch (splits = 1) when it fits.
template <typename T>
bool plan_mma_ln(GemmBatch& gb, int problems, const MmaLn& ln, int sms) {
  if (!mma_inputs_fit<T>(gb, problems, false) || problems > kMmaLnProblems || gb.out_mode != kOutTyped) return false;
  if (gb.rows % 8 != 0 || reinterpret_cast<uintptr_t>(ln.stats) % 8 != 0 || !(ln.eps >= 0.f)) return false;
  for (int i = 0; i < problems; ++i) {
    const GemmProblem& p = gb.p[i];
    if (p.o_rs != 1 || p.o_ns % 8 != 0 || p.o_bs % 8 != 0 || reinterpret_cast<uintptr_t>(p.out_t) % 16 != 0 ||
        ln.gamma[i] == nullptr || ln.beta[i] == nullptr) {
      return false;
    }
  }
  if (tile_count(gb, problems, kMmaBM, kMmaBN) > std::min(sms, kPlanSms) || !plan_mma(gb, problems, sms, 1)) {
    return false;
  }
  return gb.splits == 1;
}

// Launch a batch planned by plan_mma_ln (cooperative: cudaErrorCooperativeLaunchTooLarge, error cleared, where the
// device cannot keep the grid resident; the caller then falls back to the unfused kernels).
template <typename T>
cudaError_t launch_mma_ln(cudaStream_t stream, const GemmBatch& gb, int problems, const MmaLn& ln) {
  if constexpr (std::is_same<T, float>::value) {
    (void)stream;
    (void)gb;
    (void)problems;
    (void)ln;
    return cudaErrorInvalidValue;
  } else {
    if (gb.bm != kMmaBM || gb.splits != 1 || gb.M < 1 || gb.out_mode != kOutTyped || problems > kMmaLnProblems) {
      return cudaErrorInvalidValue;
    }
    const dim3 grid(static_cast<unsigned>(ceil_div(gb.M, kMmaBM)),
                    static_cast<unsigned>(ceil_div(gb.n_out, kMmaBN)), static_cast<unsigned>(problems));
    static_assert(mma_ln_smem_bytes<T>() <= mma_smem_bytes<T, false>(), "the epilogue fits the stage buffers");
    if (gb.a_m_contig != 0) {
      return cmir_cuda::launch_cooperative(gemm_mma_kernel<T, false, true>, grid, dim3(kMmaThreads),
                                           mma_smem_bytes<T, false>(), stream, gb, ln);
    }
    return cmir_cuda::launch_cooperative(gemm_mma_kernel<T, true, true>, grid, dim3(kMmaThreads),
                                         mma_smem_bytes<T, true>(), stream, gb, ln);
  }
}

}  // namespace cmir_gemm

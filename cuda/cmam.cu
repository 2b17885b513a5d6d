// CMAM (cross-modality attention, both directions) on the GPU. Four launches (three where the LayerNorm is fused),
// each covering both directions, no memset (graph-capturable as one short sequence):
//   1. the six Q/K/V projections (one batched GEMM, tokens read straight from NCHW; split-K when the batch is small,
//      each split storing its partial sums, which kernel 2 adds)
//   2. multi-head attention, one warp per query, keys streamed through shared memory with an online softmax; also
//      zeroes the sums of kernel 3 when it splits K
//   3. the two output projections with bias and residual (batched GEMM, split-K by fp32 atomics)
//   4. LayerNorm over channels, written back to NCHW through shared-memory transposes (coalesced along tokens);
//      at large batch in fp16/bf16, fused into kernel 3 instead (cooperative launch, one grid barrier).
// The GEMMs (gemm.cuh) run on tensor cores in every dtype: fp16/bf16 MMAs, fp32 as 3xTF32; at large batch the fp16/bf16
// projections take the 128 x 256 mma.sync tile (gemm_mma.cuh).
// Intermediates are fp32 in the caller's workspace; inputs/weights/outputs in the op's dtype; accumulation fp32.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cmam.cuh"
#include "dtype.cuh"
#include "gemm.cuh"
#include "gemm_mma.cuh"

using cmir_cuda::overlaps;

namespace {

using cmir_cuda::ceil_div;
using cmir_cuda::from_f32;
using cmir_cuda::ldg_f32;
using cmir_gemm::GemmBatch;
using cmir_gemm::GemmProblem;

// ---------------------------------------------------------------- attention
constexpr int kAttWarps = 4;      // queries per block (one warp each)
constexpr int kKeyTile = 32;      // keys per shared-memory tile (one per lane)
constexpr int kMaxHeadDim = kCmamMaxHeadDim;  // 8 output dims per lane
static_assert(kMaxHeadDim % 32 == 0, "whole output dims per lane");
// Loads in flight per thread where a runtime-count loop sums or scans L2-resident data (the split-K partials here,
// the pre-norm rows in the LayerNorm). A plain loop puts a trip-count branch between its loads and waits for each
// value before the next load issues: one L2 round trip per element. strided_load issues kLoadUnroll loads at once
// (predicated, no branch between them): a whole batch-1 split-K sum (16 partials), or 16 of a row's elements, cost
// one round trip.
constexpr int kLoadUnroll = 16;  // LayerNorm rows
constexpr int kSplitUnroll = 8;  // attention's split-K sums (16 would take 165 registers: 3 blocks per SM)

template <int U, typename P>
__device__ __forceinline__ void strided_load(float (&t)[U], const P* base, int64_t stride, int i, int n) {
#pragma unroll
  for (int u = 0; u < U; ++u) t[u] = i + u < n ? cmir_cuda::to_f32(base[(i + u) * stride]) : 0.f;
}

// sum_{i < n} base[i * stride] (as fp32), added in order of i, U loads at a time.
template <int U, typename P>
__device__ __forceinline__ float strided_sum(const P* base, int64_t stride, int n) {
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
  void* att;         // [2 dir][M][dim] in the op's dtype (rounded as PyTorch's module rounds its SDPA output)
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
// twice, i.e. at small batch where the sums are long and the blocks few; 1 otherwise, for fewer registers). T: the
// op's dtype (the output's).
template <int SU, typename T>
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
  T* out = static_cast<T*>(a.att) + static_cast<int64_t>(dir) * M * a.dim + (row0 + q) * a.dim + col0;
#pragma unroll
  for (int i = 0; i < kDimsPerLane; ++i) {
    const int d = lane + 32 * i;
    if (d < hd) out[d] = from_f32<T>(acc[i] * inv);
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
// TP: the pre-norm rows' type — fp32 (the WMMA output projections' sums), or the op's dtype T (the mma.sync output
// projections round bias + residual + product once to T, where PyTorch's module rounds twice).
// Launch bounds: 8 blocks (64 warps) per SM, i.e. 32 registers — without them the TP template takes 40 (6 blocks).
template <typename T, typename TP>
__global__ void __launch_bounds__(kLnThreads, 8) layernorm_nchw_kernel(const void* __restrict__ pre_v, const T* gamma_a,
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
  const TP* __restrict__ rows = static_cast<const TP*>(pre_v) + (dir * M + static_cast<int64_t>(b) * N + t0) * C;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int t = warp; t < nt; t += kLnWarps) {  // warp-uniform loop: the shuffles see all 32 lanes
    const TP* row = rows + static_cast<int64_t>(t) * C;
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
        tile[lane][t] = (cmir_cuda::to_f32(rows[static_cast<int64_t>(t) * C + c]) - mean_s[t]) * rstd_s[t] * g + be;
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

// Split-K partial sums of the Q/K/V projections held at most (any device: kPlanSms bounds the WMMA plans; the 16-row
// tile splits at least as much as the 64-row one; mma_splits_bound bounds the mma.sync tile's).
int max_proj_splits(int batch, int tokens, int channels, int dim) {
  GemmBatch gb{};
  gb.M = batch * tokens;
  gb.n_out = dim;
  gb.K = channels;
  int splits = cmir_gemm::mma_splits_bound(gb, 6);
  for (const cmir_gemm::GemmTile t : {cmir_gemm::kWmmaTile, cmir_gemm::kWmmaTile4}) {
    cmir_gemm::plan_splits(gb, 6, cmir_gemm::kPlanSms, t, INT32_MAX);
    splits = std::max(splits, gb.splits);
  }
  return splits;
}

struct Workspace {
  size_t qkv, att, pre, total;  // byte offsets
};

// qkv: [6][proj splits][M][dim] (split-K partials, summed by the attention kernel), att: [2][M][dim] in the op's
// dtype, pre: [2][M][C] (output projections + residual: fp32, split-K accumulating atomically after the attention
// kernel zeroed it; or, from the mma.sync tile, in the op's dtype). Sized for fp32 in every dtype.
Workspace workspace_layout(int batch, int tokens, int channels, int dim) {
  const size_t M = static_cast<size_t>(batch) * tokens;
  const size_t splits = static_cast<size_t>(max_proj_splits(batch, tokens, channels, dim));
  Workspace w{};
  w.qkv = 0;
  w.att = align_up(w.qkv + 6 * splits * M * dim * sizeof(float));
  w.pre = align_up(w.att + 2 * M * dim * sizeof(float));
  w.total = align_up(w.pre + 2 * M * channels * sizeof(float));
  return w;
}

template <typename T>
cudaError_t launch_typed(cudaStream_t stream, const T* art, const T* pv, const T* wa, const T* wp, T* art_out,
                         T* pv_out, char* ws, int B, int C, int N, int dim, int heads, float eps) {
  const Workspace layout = workspace_layout(B, N, C, dim);
  float* qkv = reinterpret_cast<float*>(ws + layout.qkv);
  T* att = reinterpret_cast<T*>(ws + layout.att);
  float* pre = reinterpret_cast<float*>(ws + layout.pre);
  T* pre_t = reinterpret_cast<T*>(ws + layout.pre);
  const int M = B * N;
  const int64_t dC = static_cast<int64_t>(dim) * C;
  // Offsets in the packed weight buffer (export/plugin_schema.json).
  const int64_t o_wq = 0, o_bq = dC, o_wk = dC + dim, o_bk = 2 * dC + dim, o_wv = 2 * dC + 2 * dim,
                o_bv = 3 * dC + 2 * dim, o_wo = 3 * dC + 3 * dim, o_bo = 4 * dC + 3 * dim, o_g = o_bo + C,
                o_b = o_bo + 2 * C;
  int sms = 0;
  CMIR_CUDA_TRY(cmir_cuda::sm_count(&sms));

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
      p.out = qkv;  // offset per problem and split once planned; the base decides the alignment mma_fits checks
    }
  }
  // The mma.sync tile where it fits (fp16/bf16, aligned NCHW tokens and workspace) and pays off (large batch), else
  // WMMA.
  const bool mma = cmir_gemm::mma_fits<T>(proj, 6, false) && cmir_gemm::plan_mma(proj, 6, sms, INT32_MAX);
  if (!mma) cmir_gemm::plan_gemm(proj, 6, sms, INT32_MAX);
  proj.split_mode = cmir_gemm::kSplitPartials;
  for (int i = 0; i < 6; ++i) proj.p[i].out = qkv + static_cast<int64_t>(i) * proj.splits * M * dim;
  CMIR_CUDA_TRY(mma ? cmir_gemm::launch_mma<T>(stream, proj, 6) : cmir_gemm::launch_gemm<T>(stream, proj, 6, false));

  // 3) output projections + bias + residual (the query modality's tokens); planned before the attention launch,
  // which zeroes their split-K sums. A: the attention output in T. The mma.sync tile where it fits and pays off,
  // unsplit, writing the pre-norm rows in T; else WMMA into fp32 (split-K by atomics).
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
    p.out_t = dir == 0 ? art_out : pv_out;  // NCHW, for the fused LayerNorm
    p.o_bs = static_cast<int64_t>(C) * N;
    p.o_rs = 1;
    p.o_ns = N;
  }
  outp.out_mode = cmir_gemm::kOutTyped;
  // The LayerNorm fused into the mma.sync output projections where they fit and every block is resident at once
  // (one per SM: batch <= ~66 at 16 tokens x 2048 channels on 132 SMs): the pre-norm rows never leave the
  // registers; the blocks of a row exchange (mean, M2) of their columns across one grid barrier (in the pre area).
  cmir_gemm::MmaLn ln{};
  ln.gamma[0] = wa + o_g;
  ln.gamma[1] = wp + o_g;
  ln.beta[0] = wa + o_b;
  ln.beta[1] = wp + o_b;
  ln.stats = reinterpret_cast<float2*>(ws + layout.pre);
  ln.eps = eps;
  GemmBatch fused = outp;
  const bool try_fused = cmir_gemm::plan_mma_ln<T>(fused, 2, ln, sms);
  // Else (and as the fallback of a cooperative launch the device refuses): the pre-norm rows to the workspace.
  for (int dir = 0; dir < 2; ++dir) {
    GemmProblem& p = outp.p[dir];
    p.out_t = pre_t + static_cast<int64_t>(dir) * M * C;
    p.o_bs = static_cast<int64_t>(N) * C;
    p.o_rs = C;
    p.o_ns = 1;
  }
  const bool mma_out = cmir_gemm::mma_fits<T>(outp, 2, false) && cmir_gemm::plan_mma(outp, 2, sms, 1);
  if (!mma_out) {
    outp.out_mode = cmir_gemm::kOutF32;
    for (int dir = 0; dir < 2; ++dir) outp.p[dir].out = pre + static_cast<int64_t>(dir) * M * C;
    cmir_gemm::plan_gemm(outp, 2, sms, INT32_MAX);
    outp.split_mode = cmir_gemm::kSplitAtomic;
  }

  // 2) attention, both directions.
  AttArgs aa{};
  aa.qkv = qkv;
  aa.att = att;
  aa.splits = proj.splits;
  aa.zero = !mma_out && outp.splits > 1 ? pre : nullptr;  // the memset of the output projections' split-K sums
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
  // (68 * head_dim + 192) * 4 bytes: above the 48 KiB default from head_dim 178 on: opt in (70 KiB at 256).
  void (*const att_kernel)(AttArgs) = aa.splits > 2 ? attention_kernel<kSplitUnroll, T> : attention_kernel<1, T>;
  const int64_t att_blocks = static_cast<int64_t>(B) * 2 * aa.qgroups;
  if (att_blocks > INT32_MAX) return cudaErrorInvalidValue;
  CMIR_CUDA_TRY(cmir_cuda::launch_opt_in(att_kernel, dim3(static_cast<unsigned>(att_blocks), heads),
                                         dim3(kAttWarps * 32), att_smem, stream, aa));

  if (try_fused) {
    const cudaError_t e = cmir_gemm::launch_mma_ln<T>(stream, fused, 2, ln);
    if (e != cudaErrorCooperativeLaunchTooLarge) return e;  // three launches in all (or the launch's error)
  }
  CMIR_CUDA_TRY(mma_out ? cmir_gemm::launch_mma<T>(stream, outp, 2)
                        : cmir_gemm::launch_gemm<T>(stream, outp, 2, false));

  // 4) LayerNorm, NCHW out. C slices while the token tiles give fewer than 2 blocks per SM (each slice recomputes
  // the statistics, an L2 re-read, but transposes only its channels: the chunks of a 2048-channel row, 64 in turn
  // with 2 barriers each, would take longer than the DRAM traffic).
  const int tok_tiles = ceil_div(N, kLnTokens);
  const int64_t ln_tiles = static_cast<int64_t>(B) * tok_tiles * 2;
  int c_slices = 1;
  if (ln_tiles < 2 * sms) {  // so ln_tiles fits an int
    c_slices = std::min({kLnMaxCSlices, ceil_div(C, 32), ceil_div(2 * sms, static_cast<int>(ln_tiles))});
  }
  const int c_per_slice = ceil_div(ceil_div(C, c_slices), 32) * 32;
  c_slices = ceil_div(C, c_per_slice);
  if (static_cast<int64_t>(B) * tok_tiles > INT32_MAX) return cudaErrorInvalidValue;
  auto* const ln_kernel = mma_out ? layernorm_nchw_kernel<T, T> : layernorm_nchw_kernel<T, float>;
  return cmir_cuda::launch(ln_kernel,
                           dim3(static_cast<unsigned>(B * tok_tiles), 2, static_cast<unsigned>(c_slices)),
                           dim3(kLnThreads), 0, stream, pre, wa + o_g, wa + o_b, wp + o_g, wp + o_b, art_out, pv_out,
                           B, N, C, tok_tiles, c_per_slice, eps);
}

}  // namespace

size_t cmam_workspace_size(CmirDType dtype, int batch, int channels, int height, int width, int dim, int heads) {
  (void)dtype;  // the plan (and so the workspace) is the same in every dtype
  (void)heads;
  if (batch < 1 || channels < 1 || height < 1 || width < 1 || dim < 1) return 0;
  return workspace_layout(batch, height * width, channels, dim).total;
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
  if (workspace_bytes < workspace_layout(batch, static_cast<int>(tokens), channels, dim).total) {
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

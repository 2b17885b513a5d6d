// CMAM (cross-modality attention, both directions) on the GPU. Four launches, each covering both directions:
//   1. the six Q/K/V projections (one batched GEMM, tokens read straight from NCHW, split-K when the batch is small)
//   2. multi-head attention, one warp per query, keys streamed through shared memory with an online softmax
//   3. the two output projections with bias and residual (batched GEMM)
//   4. LayerNorm over channels, written back to NCHW.
// Intermediates are fp32 in the caller's workspace; inputs/weights/outputs in the op's dtype; accumulation fp32.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

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

struct GemmBatch {
  GemmProblem p[kMaxProblems];
  int M, n_out, K, rows;          // rows: rows (tokens) per batch item
  int splits, k_per_split;
  int a_m_contig;                 // 1: consecutive m are adjacent in memory (NCHW tokens) -> load A m-fastest
};

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
  const TW* bias = static_cast<const TW*>(p.bias);
  const TW* res = static_cast<const TW*>(p.res);  // residual has the op's dtype (= the weights')
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = m0 + ty + 16 * i;
    if (m >= gb.M) continue;
    const int b = m / gb.rows, r = m - (m / gb.rows) * gb.rows;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int n = n0 + tx + 16 * j;
      if (n >= gb.n_out) continue;
      float v = acc[i][j];
      if (split == 0) {  // bias and residual once, by the first K split
        v += ldg_f32(bias + n);
        if (res != nullptr) v += ldg_f32(res + b * p.r_bs + r * p.r_rs + n * p.r_ns);
      }
      float* o = p.out + static_cast<int64_t>(m) * gb.n_out + n;
      if (gb.splits > 1) {
        atomicAdd(o, v);
      } else {
        *o = v;
      }
    }
  }
}

// ---------------------------------------------------------------- attention
constexpr int kAttWarps = 4;      // queries per block (one warp each)
constexpr int kKeyTile = 32;      // keys per shared-memory tile (one per lane)
constexpr int kMaxHeadDim = 256;  // 8 output dims per lane
constexpr int kDimsPerLane = kMaxHeadDim / 32;

struct AttArgs {
  const float* qkv;  // [2 dir][3 (q,k,v)][M][dim]
  float* att;        // [2 dir][M][dim]
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

// grid: (qgroups, heads, B * 2). Dynamic shared memory: K and V tiles [kKeyTile][hd+1], q [kAttWarps][hd],
// p [kAttWarps][kKeyTile].
__global__ void __launch_bounds__(kAttWarps * 32) attention_kernel(AttArgs a) {
  extern __shared__ float sm[];
  const int hd = a.head_dim, ld = hd + 1;
  float* ks = sm;
  float* vs = ks + kKeyTile * ld;
  float* qs = vs + kKeyTile * ld;
  float* ps = qs + kAttWarps * hd;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int h = blockIdx.y;
  const int b = blockIdx.z / 2, dir = blockIdx.z % 2;
  const int q = blockIdx.x * kAttWarps + warp;
  const bool valid_q = q < a.N;
  const int64_t M = static_cast<int64_t>(a.B) * a.N;
  const float* Q = a.qkv + (static_cast<int64_t>(dir) * 3 + 0) * M * a.dim;
  const float* Kt = a.qkv + (static_cast<int64_t>(dir) * 3 + 1) * M * a.dim;
  const float* V = a.qkv + (static_cast<int64_t>(dir) * 3 + 2) * M * a.dim;
  const int64_t row0 = static_cast<int64_t>(b) * a.N;
  const int col0 = h * hd;

  for (int d = lane; d < hd; d += 32) {
    qs[warp * hd + d] = valid_q ? Q[(row0 + q) * a.dim + col0 + d] * a.scale : 0.f;
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
      ks[j * ld + d] = Kt[off];
      vs[j * ld + d] = V[off];
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

template <typename T>
__global__ void __launch_bounds__(kLnThreads) layernorm_nchw_kernel(const float* __restrict__ pre, const T* gamma_a,
                                                                    const T* beta_a, const T* gamma_p,
                                                                    const T* beta_p, T* out_a, T* out_p, int B, int N,
                                                                    int C, float eps) {
  __shared__ float red[kLnThreads / 32];
  __shared__ float stat;
  const int64_t M = static_cast<int64_t>(B) * N;
  const int dir = blockIdx.y;
  const int64_t m = blockIdx.x;
  const float* row = pre + (dir * M + m) * C;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  auto block_sum = [&](float v) -> float {
    v = warp_sum(v);
    if (lane == 0) red[warp] = v;
    __syncthreads();
    if (warp == 0) {
      float t = lane < kLnThreads / 32 ? red[lane] : 0.f;
      t = warp_sum(t);
      if (lane == 0) stat = t;
    }
    __syncthreads();
    const float r = stat;
    __syncthreads();  // red/stat reused by the next reduction
    return r;
  };
  float s = 0.f;
  for (int c = threadIdx.x; c < C; c += kLnThreads) s += row[c];
  const float mean = block_sum(s) / static_cast<float>(C);
  float v = 0.f;
  for (int c = threadIdx.x; c < C; c += kLnThreads) {
    const float d = row[c] - mean;
    v = fmaf(d, d, v);
  }
  const float rstd = rsqrtf(block_sum(v) / static_cast<float>(C) + eps);  // biased variance, as LayerNorm
  const T* gamma = dir == 0 ? gamma_a : gamma_p;
  const T* beta = dir == 0 ? beta_a : beta_p;
  T* out = dir == 0 ? out_a : out_p;
  const int b = static_cast<int>(m / N), t = static_cast<int>(m % N);
  T* o = out + static_cast<int64_t>(b) * C * N + t;
  for (int c = threadIdx.x; c < C; c += kLnThreads) {
    o[static_cast<int64_t>(c) * N] = from_f32<T>((row[c] - mean) * rstd * ldg_f32(gamma + c) + ldg_f32(beta + c));
  }
}

// ---------------------------------------------------------------- host side
constexpr size_t kAlign = 256;
size_t align_up(size_t v) { return (v + kAlign - 1) / kAlign * kAlign; }

struct Workspace {
  size_t qkv, att, pre, total;  // byte offsets
};

Workspace workspace_layout(int batch, int tokens, int channels, int dim) {
  const size_t M = static_cast<size_t>(batch) * tokens;
  Workspace w{};
  w.qkv = 0;
  w.att = align_up(w.qkv + 6 * M * dim * sizeof(float));
  w.pre = align_up(w.att + 2 * M * dim * sizeof(float));
  w.total = align_up(w.pre + 2 * M * channels * sizeof(float));
  return w;
}

bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bn && pb < pa + an;
}

// Split K over blocks (atomic fp32 accumulation into a zeroed output) when the tiles alone cannot fill the GPU.
void plan_splits(GemmBatch& gb, int problems, int sms) {
  const int64_t tiles = static_cast<int64_t>(ceil_div(gb.M, kBM)) * ceil_div(gb.n_out, kBN) * problems;
  int splits = 1;
  const int max_splits = std::max(1, gb.K / (4 * kBK));  // keep at least 4 k-steps per split
  while (splits < max_splits && tiles * splits < 2 * static_cast<int64_t>(sms)) splits *= 2;
  splits = std::min(splits, max_splits);
  gb.k_per_split = ceil_div(ceil_div(gb.K, splits), kBK) * kBK;
  gb.splits = ceil_div(gb.K, gb.k_per_split);
}

template <typename T>
cudaError_t launch_gemm(cudaStream_t stream, GemmBatch gb, int problems, bool a_is_float) {
  if (gb.splits > 1) {
    for (int i = 0; i < problems; ++i) {
      CMIR_CUDA_TRY(cudaMemsetAsync(gb.p[i].out, 0, static_cast<size_t>(gb.M) * gb.n_out * sizeof(float), stream));
    }
  }
  const dim3 grid(static_cast<unsigned>(ceil_div(gb.M, kBM)), static_cast<unsigned>(ceil_div(gb.n_out, kBN)),
                  static_cast<unsigned>(problems * gb.splits));
  if (a_is_float) {
    gemm_bias_kernel<float, T><<<grid, kGemmThreads, 0, stream>>>(gb);
  } else {
    gemm_bias_kernel<T, T><<<grid, kGemmThreads, 0, stream>>>(gb);
  }
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_typed(cudaStream_t stream, const T* art, const T* pv, const T* wa, const T* wp, T* art_out,
                         T* pv_out, char* ws, int B, int C, int N, int dim, int heads, float eps) {
  const Workspace layout = workspace_layout(B, N, C, dim);
  float* qkv = reinterpret_cast<float*>(ws + layout.qkv);
  float* att = reinterpret_cast<float*>(ws + layout.att);
  float* pre = reinterpret_cast<float*>(ws + layout.pre);
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
      p.out = qkv + static_cast<int64_t>(dir * 3 + j) * M * dim;
    }
  }
  plan_splits(proj, 6, sms);
  CMIR_CUDA_TRY(launch_gemm<T>(stream, proj, 6, false));

  // 2) attention, both directions.
  AttArgs aa{};
  aa.qkv = qkv;
  aa.att = att;
  aa.B = B;
  aa.N = N;
  aa.dim = dim;
  aa.heads = heads;
  aa.head_dim = dim / heads;
  aa.scale = 1.f / std::sqrt(static_cast<float>(aa.head_dim));
  aa.qgroups = ceil_div(N, kAttWarps);
  const size_t att_smem = (2 * static_cast<size_t>(kKeyTile) * (aa.head_dim + 1) +
                           static_cast<size_t>(kAttWarps) * aa.head_dim + kAttWarps * kKeyTile) * sizeof(float);
  if (static_cast<int64_t>(B) * 2 > 65535 || heads > 65535) return cudaErrorInvalidValue;
  attention_kernel<<<dim3(aa.qgroups, heads, B * 2), kAttWarps * 32, att_smem, stream>>>(aa);
  CMIR_CUDA_TRY(cudaGetLastError());

  // 3) output projections + bias + residual (the query modality's tokens).
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
  plan_splits(outp, 2, sms);
  CMIR_CUDA_TRY(launch_gemm<T>(stream, outp, 2, true));  // A: the fp32 attention output

  // 4) LayerNorm, NCHW out.
  layernorm_nchw_kernel<T><<<dim3(static_cast<unsigned>(M), 2), kLnThreads, 0, stream>>>(
      pre, wa + o_g, wa + o_b, wp + o_g, wp + o_b, art_out, pv_out, B, N, C, eps);
  return cudaGetLastError();
}

}  // namespace

size_t cmam_workspace_size(CmirDType dtype, int batch, int channels, int height, int width, int dim, int heads) {
  (void)dtype;
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
  if (batch < 1 || channels < 1 || height < 1 || width < 1 || dim < 1 || heads < 1 || dim % heads != 0) {
    return cudaErrorInvalidValue;
  }
  if (dim / heads > kMaxHeadDim || !(eps >= 0.f) || !std::isfinite(eps)) return cudaErrorInvalidValue;
  const int64_t tokens = static_cast<int64_t>(height) * width;
  const int64_t rows = tokens * batch;
  if (rows > (int64_t{1} << 24) || static_cast<int64_t>(channels) * rows > (int64_t{1} << 40)) {
    return cudaErrorInvalidValue;
  }
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

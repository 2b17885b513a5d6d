// Semantics checks of the emulator itself (driver `selftest NAME`; tests/test_cuda_emu_semantics.py): barriers,
// shared-memory poisoning and bounds, warp intrinsics (incl. WMMA, mma.sync, ldmatrix), launch and shared-memory
// limits. Each returns 0 when the
// emulator behaved as a GPU would (or, for the misuse cases, aborts with its one-line report), 1 otherwise.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <cuda_pipeline.h>
#include <mma.h>

#include "common.cuh"
#include "mma_sync.cuh"

namespace {

// ---------------------------------------------------------------- kernels
__global__ void neighbour_kernel(float* out, int with_barrier) {
  CMIR_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x, n = blockDim.x;
  s[t] = static_cast<float>(t + 1);
  if (with_barrier) __syncthreads();
  out[t] = s[(t + 1) % n];
}

// Grid barrier (cooperative launch): each block publishes its values, waits (with_sync), then reads the next block's
// (cyclically); its own static and dynamic shared memory must survive the wait while other blocks run. out: [2][n]
// per block, what was read and whether the block's shared memory still held its values.
__global__ void grid_kernel(float* data, float* out, int with_sync) {
  __shared__ float st[64];
  CMIR_DYNAMIC_SHARED(float, dy);
  const int t = threadIdx.x, n = blockDim.x, b = blockIdx.x, nb = gridDim.x;
  const float mine = static_cast<float>(1000 * b + t);
  data[b * n + t] = mine;
  st[t] = mine;
  dy[t] = -mine;
  if (with_sync) CMIR_GRID_SYNC();
  out[(2 * b) * n + t] = data[((b + 1) % nb) * n + t];
  out[(2 * b + 1) * n + t] = st[t] == mine && dy[t] == -mine ? 1.f : 0.f;
}

__global__ void grid_plain_kernel(float* out) {
  out[threadIdx.x] = 1.f;
  CMIR_GRID_SYNC();
}

__global__ void grid_exit_kernel(float* out) {
  if (blockIdx.x == 1) return;  // never arrives: on the GPU the other blocks wait forever
  CMIR_GRID_SYNC();
  out[threadIdx.x] = 1.f;
}

// Two rounds through one slot per thread: the second write must wait until every thread read the first round.
__global__ void war_kernel(float* out, int with_barrier) {
  CMIR_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x, n = blockDim.x;
  for (int round = 0; round < 2; ++round) {
    if (round > 0 && with_barrier) __syncthreads();
    s[t] = static_cast<float>(round * n + t);
    __syncthreads();
    out[round * n + t] = s[(t + 1) % n];
  }
}

__global__ void poison_kernel(float* out) {
  CMIR_DYNAMIC_SHARED(float, dyn);
  __shared__ float stat[4];
  out[threadIdx.x] = threadIdx.x < 4 ? stat[threadIdx.x] : dyn[threadIdx.x - 4];
}

__global__ void smem_oob_kernel(float* out, int n) {
  CMIR_DYNAMIC_SHARED(float, s);
  out[0] = s[n];  // one past the requested dynamic shared memory
}

__global__ void global_oob_kernel(const float* in, float* out, int n) { out[0] = in[n]; }

__global__ void empty_kernel(int* counter) { atomicAdd(counter, 1); }

__global__ void divergent_barrier_kernel(float* out) {
  if (threadIdx.x < 16) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1.f;
}

__global__ void exited_barrier_kernel(float* out) {
  if (threadIdx.x == 0) return;
  __syncthreads();
  out[threadIdx.x] = 1.f;
}

__global__ void warp_exit_kernel(float* out) {
  if (threadIdx.x == 0) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.f, 1);
}

// Per thread: xor 16, down 3, up 5, broadcast lane 7, xor 2 within groups of 8, ballot of (lane % 3 == 0).
__global__ void shuffle_kernel(int* out) {
  const int t = threadIdx.x;
  const int v = 1000 + t;
  int* o = out + 6 * t;
  const int warp_lanes = min(32, static_cast<int>(blockDim.x) - (t / 32) * 32);
  const unsigned mask = warp_lanes == 32 ? 0xffffffffu : ((1u << warp_lanes) - 1u);
  o[0] = __shfl_xor_sync(mask, v, 16 % warp_lanes == 0 ? 0 : (warp_lanes > 16 ? 16 : 1));
  o[1] = __shfl_down_sync(mask, v, 3, warp_lanes == 32 ? 32 : 16);
  o[2] = __shfl_up_sync(mask, v, 5);
  o[3] = __shfl_sync(mask, v, 7);
  o[4] = __shfl_xor_sync(mask, v, 2, 8);
  o[5] = static_cast<int>(__ballot_sync(mask, (t % 32) % 3 == 0));
}

// Double-buffered cp.async staging: tile i + 1 is in flight while tile i is read. `lag` is the wait_prior argument:
// 1 is right (everything but the newest group has landed), 2 waits too little.
__global__ void pipeline_kernel(const float* in, float* out, int tiles, int lag) {
  CMIR_DYNAMIC_SHARED(float, s);  // [2][blockDim.x]
  const int t = threadIdx.x, n = blockDim.x;
  __pipeline_memcpy_async(&s[t], &in[t], 4);
  __pipeline_commit();
  for (int i = 0; i < tiles; ++i) {
    if (i + 1 < tiles) __pipeline_memcpy_async(&s[((i + 1) % 2) * n + t], &in[(i + 1) * n + t], 4);
    __pipeline_commit();  // an empty group on the last tile keeps the count uniform
    __pipeline_wait_prior(static_cast<size_t>(lag));
    __syncthreads();
    out[i * n + t] = s[(i % 2) * n + (t + 1) % n];  // a neighbour's copy: needs the barrier too
    __syncthreads();
  }
}

// 16-byte copies with 8 bytes of zero fill: floats 2 and 3 of each group of four become 0.
__global__ void zfill_kernel(const float* in, float* out) {
  CMIR_DYNAMIC_SHARED(float, s);
  const int t = threadIdx.x;
  __pipeline_memcpy_async(&s[4 * t], &in[4 * t], 16, 8);
  __pipeline_commit();
  __pipeline_wait_prior(0);
  for (int j = 0; j < 4; ++j) out[4 * t + j] = s[4 * t + j];
}

__global__ void cp_async_misaligned_kernel(const float* in) {
  CMIR_DYNAMIC_SHARED(float, s);
  __pipeline_memcpy_async(&s[1], in, 16);
}

__global__ void cp_async_global_dst_kernel(const float* in, float* out) { __pipeline_memcpy_async(out, in, 4); }

// Each warp: D = A B + C, then D = A B + D (accumulator aliased), for its own tile. A row-major, B column-major,
// C read row-major, D stored column-major.
template <typename FragT, typename MemT, int M, int N, int K>
__global__ void wmma_kernel(const MemT* a, const MemT* b, const float* c, float* d) {
  using namespace nvcuda;
  const int w = threadIdx.x / 32;
  wmma::fragment<wmma::matrix_a, M, N, K, FragT, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, M, N, K, FragT, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, M, N, K, float> acc;
  wmma::load_matrix_sync(fa, a + w * M * K, K);
  wmma::load_matrix_sync(fb, b + w * K * N, K);
  wmma::load_matrix_sync(acc, c + w * M * N, N, wmma::mem_row_major);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::mma_sync(acc, fa, fb, acc);
  wmma::store_matrix_sync(d + w * M * N, acc, M, wmma::mem_col_major);
}

// mma.sync m16n8k16 and ldmatrix (cuda/mma_sync.cuh): each of 2 warps builds its fragments of A [16][16] and
// B [16][8] (row-major 16-bit bits in global memory) from the PTX ISA's forward formulas — element i of lane
// (group g, t): A row g (+8 for i in 2, 3, 6, 7), column 2t + (i & 1) (+8 for i >= 4); B row 2t + (i & 1) (+8 for i >=
// 2), column g; D row g (+8 for i >= 2), column 2t + (i & 1) — computes D = A B + A B (D aliased as C) and writes D.
// It also loads A through ldmatrix.x4 from shared memory (matrix i = rows 8 (i & 1) .., columns 8 (i >> 1) ..), and
// through ldmatrix.x4.trans from a transposed copy (stored [column][row]: matrix i's stored rows are A's columns
// 8 (i >> 1) .., at A row 8 (i & 1)), and records whether each lane's registers equal the formula-built ones; D =
// A B three times over (formula, ldmatrix, ldmatrix.trans).
template <typename T>
__global__ void mma_sync_kernel(const uint16_t* a, const uint16_t* b, float* d, int* ldm_ok) {
  __shared__ __align__(16) uint16_t sa[2][16 * 16];
  __shared__ __align__(16) uint16_t sat[2][16 * 16];  // A transposed: sat[col * 16 + row]
  const int w = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const uint16_t* aw = a + w * 256;
  const uint16_t* bw = b + w * 128;
  uint32_t fa[4] = {0, 0, 0, 0}, fb[2] = {0, 0};
  for (int i = 0; i < 8; ++i) {
    const int row = g + ((i / 2) % 2 == 1 ? 8 : 0), col = 2 * t + (i & 1) + (i >= 4 ? 8 : 0);
    fa[i / 2] |= static_cast<uint32_t>(aw[row * 16 + col]) << (16 * (i & 1));
  }
  for (int i = 0; i < 4; ++i) {
    const int row = 2 * t + (i & 1) + (i >= 2 ? 8 : 0);
    fb[i / 2] |= static_cast<uint32_t>(bw[row * 8 + g]) << (16 * (i & 1));
  }
  for (int e = lane; e < 256; e += 32) {
    sa[w][e] = aw[e];
    sat[w][(e % 16) * 16 + e / 16] = aw[e];
  }
  __syncwarp();
  uint32_t la[4], lt[4];
  const int mi = lane / 8;
  cmir_mma::ldmatrix_x4(la, &sa[w][(8 * (mi & 1) + lane % 8) * 16 + 8 * (mi >> 1)]);
  cmir_mma::ldmatrix_x4_trans(lt, &sat[w][(8 * (mi >> 1) + lane % 8) * 16 + 8 * (mi & 1)]);
  ldm_ok[threadIdx.x] = la[0] == fa[0] && la[1] == fa[1] && la[2] == fa[2] && la[3] == fa[3];
  ldm_ok[blockDim.x + threadIdx.x] = lt[0] == fa[0] && lt[1] == fa[1] && lt[2] == fa[2] && lt[3] == fa[3];
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  cmir_mma::mma_16816<T>(acc, fa, fb);
  cmir_mma::mma_16816<T>(acc, la, fb);
  cmir_mma::mma_16816<T>(acc, lt, fb);
  for (int i = 0; i < 4; ++i) d[w * 128 + (g + (i >= 2 ? 8 : 0)) * 8 + 2 * t + (i & 1)] = acc[i];
}

__global__ void wmma_misaligned_kernel(const __half* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __half, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::load_matrix_sync(fa, a + 8, 16);  // 16 bytes past a 256-byte aligned buffer
}

// ---------------------------------------------------------------- checks
int fail(const std::string& what) {
  std::printf("FAIL: %s\n", what.c_str());
  return 1;
}

std::vector<float> download(const float* d, size_t n) {
  std::vector<float> h(n);
  cudaMemcpy(h.data(), d, n * 4, cudaMemcpyDeviceToHost);
  return h;
}

int neighbour(bool with_barrier) {
  const int n = 96;
  float* out = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&out), n * 4);
  const cudaError_t e = cmir_cuda::launch(neighbour_kernel, dim3(1), dim3(n), n * 4, nullptr, out, with_barrier ? 1 : 0);
  if (e != cudaSuccess) return fail(cudaGetErrorName(e));
  const auto h = download(out, n);
  cudaFree(out);
  int wrong = 0;
  for (int t = 0; t < n; ++t) wrong += h[static_cast<size_t>(t)] != static_cast<float>((t + 1) % n + 1);
  std::printf("%d of %d threads read a wrong value\n", wrong, n);
  // With the barrier all are right; without it, some thread must see the slot before its neighbour wrote it.
  return with_barrier ? (wrong == 0 ? 0 : 1) : (wrong > 0 ? 0 : 1);
}

int war(bool with_barrier) {
  const int n = 64;
  float* out = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&out), 2 * n * 4);
  const cudaError_t e = cmir_cuda::launch(war_kernel, dim3(1), dim3(n), n * 4, nullptr, out, with_barrier ? 1 : 0);
  if (e != cudaSuccess) return fail(cudaGetErrorName(e));
  const auto h = download(out, 2 * n);
  cudaFree(out);
  int wrong = 0;
  for (int r = 0; r < 2; ++r) {
    for (int t = 0; t < n; ++t) wrong += h[static_cast<size_t>(r * n + t)] != static_cast<float>(r * n + (t + 1) % n);
  }
  std::printf("%d of %d reads wrong\n", wrong, 2 * n);
  return with_barrier ? (wrong == 0 ? 0 : 1) : (wrong > 0 ? 0 : 1);
}

// 4 blocks of 64 threads through a grid barrier; without it some block reads its neighbour's slot before the
// neighbour wrote it (the slots start as NaN). Also: the cooperative launch is refused beyond one block per SM.
int grid(bool with_sync) {
  const int n = 64, nb = 4;
  float* data = nullptr;
  float* out = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&data), nb * n * 4);
  cudaMalloc(reinterpret_cast<void**>(&out), 2 * nb * n * 4);
  cudaMemset(data, 0xff, nb * n * 4);
  const cudaError_t e = cmir_cuda::launch_cooperative(grid_kernel, dim3(nb), dim3(n), n * 4, nullptr, data, out,
                                                      with_sync ? 1 : 0);
  if (e != cudaSuccess) return fail(cudaGetErrorName(e));
  const auto h = download(out, 2 * nb * n);
  int wrong = 0, lost = 0;
  for (int b = 0; b < nb; ++b) {
    for (int t = 0; t < n; ++t) {
      wrong += h[static_cast<size_t>(2 * b * n + t)] != static_cast<float>(1000 * ((b + 1) % nb) + t);
      lost += h[static_cast<size_t>((2 * b + 1) * n + t)] != 1.f;
    }
  }
  std::printf("%d of %d reads wrong, %d shared-memory values lost\n", wrong, nb * n, lost);
  if (lost != 0) return fail("a block's shared memory changed while it waited at the grid barrier");
  int sms = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0);
  const cudaError_t big = cmir_cuda::launch_cooperative(grid_kernel, dim3(sms + 1), dim3(n), n * 4, nullptr, data,
                                                        out, 0);
  const cudaError_t after = cudaGetLastError();
  std::printf("cooperative %d blocks on %d SMs: %s (last error then %s)\n", sms + 1, sms, cudaGetErrorName(big),
              cudaGetErrorName(after));
  cudaFree(data);
  cudaFree(out);
  if (big != cudaErrorCooperativeLaunchTooLarge || after != cudaSuccess) return fail("too large a cooperative grid");
  return with_sync ? (wrong == 0 ? 0 : 1) : (wrong > 0 ? 0 : 1);
}

int poison() {
  float* out = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&out), 36 * 4);
  const cudaError_t e = cmir_cuda::launch(poison_kernel, dim3(2), dim3(36), 32 * 4, nullptr, out);
  if (e != cudaSuccess) return fail(cudaGetErrorName(e));
  const auto h = download(out, 36);
  cudaFree(out);
  for (float v : h) {
    if (!std::isnan(v)) return fail("uninitialised shared memory read as a number");
  }
  std::printf("uninitialised static and dynamic shared memory read as NaN\n");
  return 0;
}

// `got`: what cmir_cuda::launch (which returns cudaGetLastError after the launch) or a runtime call returned. A
// failed runtime call also leaves its error for cudaGetLastError, which then clears it (nothing is sticky).
int pipeline(int lag) {
  const int n = 64, tiles = 5;
  std::vector<float> host(static_cast<size_t>(n) * tiles);
  for (size_t i = 0; i < host.size(); ++i) host[i] = static_cast<float>(i) * 0.5f + 1.f;
  float *in = nullptr, *out = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&in), host.size() * 4);
  cudaMalloc(reinterpret_cast<void**>(&out), host.size() * 4);
  cudaMemcpy(in, host.data(), host.size() * 4, cudaMemcpyHostToDevice);
  const cudaError_t e = cmir_cuda::launch(pipeline_kernel, dim3(2), dim3(n), 2 * n * 4, nullptr, in, out, tiles, lag);
  if (e != cudaSuccess) return fail(cudaGetErrorName(e));
  const auto got = download(out, host.size());
  int wrong = 0;
  for (int i = 0; i < tiles; ++i) {
    for (int t = 0; t < n; ++t) wrong += got[static_cast<size_t>(i * n + t)] != host[static_cast<size_t>(i * n + (t + 1) % n)];
  }
  // zero fill: 16-byte copies of which the last 8 bytes are zeros
  float* zout = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&zout), 4 * 32 * 4);
  if (cmir_cuda::launch(zfill_kernel, dim3(1), dim3(32), 4 * 32 * 4, nullptr, in, zout) != cudaSuccess) {
    return fail("zfill launch");
  }
  const auto z = download(zout, 4 * 32);
  int zbad = 0;
  for (int i = 0; i < 4 * 32; ++i) zbad += z[static_cast<size_t>(i)] != (i % 4 < 2 ? host[static_cast<size_t>(i)] : 0.f);
  cudaFree(in);
  cudaFree(out);
  cudaFree(zout);
  std::printf("%d of %d reads wrong with wait_prior(%d); zero fill: %d wrong\n", wrong, n * tiles, lag, zbad);
  if (zbad != 0) return 1;
  return lag == 1 ? (wrong == 0 ? 0 : 1) : (wrong > 0 ? 0 : 1);
}

template <typename FragT, typename MemT, int M, int N, int K>
int wmma_case(const char* name) {
  const int warps = 3;
  std::vector<MemT> a(static_cast<size_t>(warps) * M * K), b(static_cast<size_t>(warps) * K * N);
  std::vector<float> c(static_cast<size_t>(warps) * M * N);
  unsigned seed = 12345;
  auto rnd = [&seed]() {
    seed = seed * 1664525u + 1013904223u;
    return static_cast<float>((seed >> 8) % 2001) / 1000.f - 1.f;
  };
  for (auto& v : a) v = MemT(rnd());
  for (auto& v : b) v = MemT(rnd());
  for (auto& v : c) v = rnd();
  MemT *da = nullptr, *db = nullptr;
  float *dc = nullptr, *dd = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&da), a.size() * sizeof(MemT));
  cudaMalloc(reinterpret_cast<void**>(&db), b.size() * sizeof(MemT));
  cudaMalloc(reinterpret_cast<void**>(&dc), c.size() * 4);
  cudaMalloc(reinterpret_cast<void**>(&dd), c.size() * 4);
  cudaMemcpy(da, a.data(), a.size() * sizeof(MemT), cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), b.size() * sizeof(MemT), cudaMemcpyHostToDevice);
  cudaMemcpy(dc, c.data(), c.size() * 4, cudaMemcpyHostToDevice);
  const cudaError_t e =
      cmir_cuda::launch(wmma_kernel<FragT, MemT, M, N, K>, dim3(1), dim3(32 * warps), 0, nullptr, da, db, dc, dd);
  if (e != cudaSuccess) return fail(cudaGetErrorName(e));
  const auto got = download(dd, c.size());
  cudaFree(da);
  cudaFree(db);
  cudaFree(dc);
  cudaFree(dd);
  const bool tf32 = std::is_same<FragT, nvcuda::wmma::precision::tf32>::value;
  auto val = [tf32](MemT v) {
    const float f = static_cast<float>(v);
    return static_cast<double>(tf32 ? nvcuda::wmma::__float_to_tf32(f) : f);
  };
  double worst = 0.0;
  for (int w = 0; w < warps; ++w) {
    for (int r = 0; r < M; ++r) {
      for (int n = 0; n < N; ++n) {
        double ab = 0.0;  // float64 reference: A row-major [M][K], B column-major (k + n * K)
        for (int k = 0; k < K; ++k) {
          ab += val(a[static_cast<size_t>(w * M * K + r * K + k)]) * val(b[static_cast<size_t>(w * K * N + n * K + k)]);
        }
        const double want = 2.0 * ab + c[static_cast<size_t>(w * M * N + r * N + n)];
        const double have = got[static_cast<size_t>(w * M * N + n * M + r)];  // stored column-major, ldm = M
        worst = std::max(worst, std::fabs(have - want) / (1.0 + std::fabs(want)));
      }
    }
  }
  std::printf("wmma %s: max relative error %.3g\n", name, worst);
  return worst <= 1e-5 ? 0 : fail(std::string("wmma ") + name);
}

int wmma() {
  using nvcuda::wmma::precision::tf32;
  int bad = 0;
  bad += wmma_case<__half, __half, 16, 16, 16>("fp16 16x16x16");
  bad += wmma_case<__nv_bfloat16, __nv_bfloat16, 16, 16, 16>("bf16 16x16x16");
  bad += wmma_case<__half, __half, 32, 8, 16>("fp16 32x8x16");
  bad += wmma_case<__nv_bfloat16, __nv_bfloat16, 8, 32, 16>("bf16 8x32x16");
  bad += wmma_case<tf32, float, 16, 16, 8>("tf32 16x16x8");
  return bad == 0 ? 0 : 1;
}

template <typename T>
int mma_sync_case(const char* name, bool bf16) {
  const int warps = 2;
  std::vector<uint16_t> a(warps * 256), b(warps * 128);
  std::vector<double> av(a.size()), bv(b.size());
  unsigned seed = 777;
  auto rnd = [&seed]() {
    seed = seed * 1664525u + 1013904223u;
    return static_cast<float>((seed >> 8) % 2001) / 1000.f - 1.f;
  };
  auto fill = [&](std::vector<uint16_t>& bits, std::vector<double>& vals) {
    for (size_t i = 0; i < bits.size(); ++i) {
      const float f = rnd();
      bits[i] = bf16 ? cmir_emu::float_to_bf16_bits(f) : cmir_emu::float_to_half_bits(f);
      vals[i] = bf16 ? cmir_emu::bf16_bits_to_float(bits[i]) : cmir_emu::half_bits_to_float(bits[i]);
    }
  };
  fill(a, av);
  fill(b, bv);
  uint16_t *da = nullptr, *db = nullptr;
  float* dd = nullptr;
  int* dok = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&da), a.size() * 2);
  cudaMalloc(reinterpret_cast<void**>(&db), b.size() * 2);
  cudaMalloc(reinterpret_cast<void**>(&dd), warps * 128 * 4);
  cudaMalloc(reinterpret_cast<void**>(&dok), 2 * warps * 32 * 4);
  cudaMemcpy(da, a.data(), a.size() * 2, cudaMemcpyHostToDevice);
  cudaMemcpy(db, b.data(), b.size() * 2, cudaMemcpyHostToDevice);
  const cudaError_t e = cmir_cuda::launch(mma_sync_kernel<T>, dim3(1), dim3(32 * warps), 0, nullptr, da, db, dd, dok);
  if (e != cudaSuccess) return fail(cudaGetErrorName(e));
  const auto got = download(dd, warps * 128);
  std::vector<int> ok(2 * warps * 32);  // ldmatrix, then ldmatrix.trans
  cudaMemcpy(ok.data(), dok, ok.size() * 4, cudaMemcpyDeviceToHost);
  cudaFree(da);
  cudaFree(db);
  cudaFree(dd);
  cudaFree(dok);
  double worst = 0.0;
  for (int w = 0; w < warps; ++w) {
    for (int r = 0; r < 16; ++r) {
      for (int n = 0; n < 8; ++n) {
        double ab = 0.0;  // float64: A [16][16] x B [16][8], three times
        for (int k = 0; k < 16; ++k) ab += av[w * 256 + r * 16 + k] * bv[w * 128 + k * 8 + n];
        worst = std::max(worst, std::fabs(got[w * 128 + r * 8 + n] - 3.0 * ab) / (1.0 + std::fabs(3.0 * ab)));
      }
    }
  }
  int ldm_bad = 0, trans_bad = 0;
  for (int i = 0; i < warps * 32; ++i) {
    ldm_bad += ok[static_cast<size_t>(i)] == 0;
    trans_bad += ok[static_cast<size_t>(warps * 32 + i)] == 0;
  }
  std::printf("mma.sync %s: max relative error %.3g, ldmatrix lanes differing from the formula: %d, "
              "ldmatrix.trans lanes differing: %d\n", name, worst, ldm_bad, trans_bad);
  return worst <= 1e-5 && ldm_bad == 0 && trans_bad == 0 ? 0 : fail(std::string("mma.sync ") + name);
}

int mma_sync() {
  return mma_sync_case<__half>("fp16", false) + mma_sync_case<__nv_bfloat16>("bf16", true) == 0 ? 0 : 1;
}

int expect(cudaError_t got, cudaError_t want, const std::string& what, bool launch = true) {
  std::printf("%s: %s\n", what.c_str(), cudaGetErrorName(got));
  if (got != want) return fail(what + ": got " + cudaGetErrorName(got) + ", want " + cudaGetErrorName(want));
  if (!launch) {
    const cudaError_t last = cudaGetLastError();
    if (last != want) return fail(what + ": cudaGetLastError gave " + std::string(cudaGetErrorName(last)));
  }
  const cudaError_t after = cudaGetLastError();
  if (after != cudaSuccess) return fail(what + ": a second cudaGetLastError gave " + cudaGetErrorName(after));
  return 0;
}

int limits() {
  int* counter = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&counter), 4);
  cudaMemset(counter, 0, 4);
  int bad = 0;
  using cmir_cuda::launch;
  bad += expect(launch(empty_kernel, dim3(1), dim3(1024), 0, nullptr, counter), cudaSuccess, "1024 threads");
  bad += expect(launch(empty_kernel, dim3(1), dim3(1025), 0, nullptr, counter), cudaErrorInvalidConfiguration,
                "1025 threads");
  bad += expect(launch(empty_kernel, dim3(1), dim3(32, 33), 0, nullptr, counter), cudaErrorInvalidConfiguration,
                "32x33 threads");
  bad += expect(launch(empty_kernel, dim3(1), dim3(1, 1, 65), 0, nullptr, counter), cudaErrorInvalidConfiguration,
                "block z 65");
  bad += expect(launch(empty_kernel, dim3(1, 65536), dim3(1), 0, nullptr, counter), cudaErrorInvalidConfiguration,
                "grid y 65536");
  bad += expect(launch(empty_kernel, dim3(1, 1, 65536), dim3(1), 0, nullptr, counter), cudaErrorInvalidConfiguration,
                "grid z 65536");
  bad += expect(launch(empty_kernel, dim3(0), dim3(1), 0, nullptr, counter), cudaErrorInvalidConfiguration,
                "empty grid");
  bad += expect(launch(empty_kernel, dim3(3, 65535), dim3(1), 0, nullptr, counter), cudaSuccess, "grid 3x65535");
  // Dynamic shared memory: 48 KiB without opt-in; up to 227 KiB after cudaFuncSetAttribute, never beyond.
  bad += expect(launch(empty_kernel, dim3(1), dim3(1), 48 * 1024, nullptr, counter), cudaSuccess, "48 KiB smem");
  bad += expect(launch(empty_kernel, dim3(1), dim3(1), 48 * 1024 + 1, nullptr, counter), cudaErrorInvalidValue,
                "48 KiB + 1 smem without opt-in");
  bad += expect(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024 + 1),
                cudaErrorInvalidValue, "opt-in above 227 KiB", false);
  bad += expect(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 100 * 1024),
                cudaSuccess, "opt-in to 100 KiB", false);
  bad += expect(launch(empty_kernel, dim3(1), dim3(1), 100 * 1024, nullptr, counter), cudaSuccess, "100 KiB smem");
  bad += expect(launch(empty_kernel, dim3(1), dim3(1), 100 * 1024 + 4, nullptr, counter), cudaErrorInvalidValue,
                "100 KiB + 4 smem after a 100 KiB opt-in");
  bad += expect(cudaFuncSetAttribute(empty_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, 227 * 1024),
                cudaSuccess, "opt-in to 227 KiB", false);
  bad += expect(launch(empty_kernel, dim3(1), dim3(1), 227 * 1024, nullptr, counter), cudaSuccess, "227 KiB smem");
  // The opt-in is per kernel: another kernel keeps the default.
  float* out = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&out), 4 * 1024);
  bad += expect(launch(neighbour_kernel, dim3(1), dim3(32), 64 * 1024, nullptr, out, 1), cudaErrorInvalidValue,
                "64 KiB on a kernel without opt-in");
  cudaFree(out);
  int count = 0;
  cudaMemcpy(&count, counter, 4, cudaMemcpyDeviceToHost);
  cudaFree(counter);
  const int want = 1024 + 3 * 65535 + 1 + 1 + 1;
  std::printf("threads run by the successful launches: %d (want %d)\n", count, want);
  if (count != want) bad += fail("failed launches must run nothing, successful ones every thread");
  return bad == 0 ? 0 : 1;
}

int shuffles() {
  int bad = 0;
  for (int n : {64, 48}) {  // two full warps; one full and one partial (16-lane) warp
    int* out = nullptr;
    cudaMalloc(reinterpret_cast<void**>(&out), static_cast<size_t>(n) * 6 * 4);
    const cudaError_t e = cmir_cuda::launch(shuffle_kernel, dim3(1), dim3(n), 0, nullptr, out);
    if (e != cudaSuccess) return fail(cudaGetErrorName(e));
    std::vector<int> h(static_cast<size_t>(n) * 6);
    cudaMemcpy(h.data(), out, h.size() * 4, cudaMemcpyDeviceToHost);
    cudaFree(out);
    for (int t = 0; t < n; ++t) {
      const int base = (t / 32) * 32, lane = t % 32, lanes = std::min(32, n - base);
      const int xm = 16 % lanes == 0 ? 0 : (lanes > 16 ? 16 : 1);
      const int width = lanes == 32 ? 32 : 16;
      const int want[5] = {1000 + base + (lane ^ xm), lane % width + 3 < width ? 1000 + t + 3 : 1000 + t,
                           lane >= 5 ? 1000 + t - 5 : 1000 + t, 1000 + base + 7, 1000 + base + (lane ^ 2)};
      unsigned ballot = 0;
      for (int l = 0; l < lanes; ++l) ballot |= (l % 3 == 0 ? 1u : 0u) << l;
      for (int j = 0; j < 5; ++j) {
        if (h[static_cast<size_t>(t) * 6 + static_cast<size_t>(j)] != want[j]) {
          ++bad;
          std::printf("block of %d, thread %d, op %d: %d, want %d\n", n, t, j, h[static_cast<size_t>(t) * 6 + j], want[j]);
        }
      }
      if (static_cast<unsigned>(h[static_cast<size_t>(t) * 6 + 5]) != ballot) ++bad;
    }
  }
  std::printf("warp intrinsics: %d mismatches\n", bad);
  return bad == 0 ? 0 : 1;
}

int misuse(const std::string& name) {
  float* out = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&out), 64 * 4);
  float* in = nullptr;
  cudaMalloc(reinterpret_cast<void**>(&in), 16 * 4);
  cudaMemset(in, 0, 16 * 4);
  using cmir_cuda::launch;
  cudaError_t e = cudaSuccess;
  if (name == "smem_oob") e = launch(smem_oob_kernel, dim3(1), dim3(1), 16 * 4, nullptr, out, 16);
  if (name == "global_oob") e = launch(global_oob_kernel, dim3(1), dim3(1), 0, nullptr, in, out, 16);
  if (name == "divergent_barrier") e = launch(divergent_barrier_kernel, dim3(1), dim3(64), 0, nullptr, out);
  if (name == "exited_barrier") e = launch(exited_barrier_kernel, dim3(1), dim3(64), 0, nullptr, out);
  if (name == "warp_exit") e = launch(warp_exit_kernel, dim3(1), dim3(32), 0, nullptr, out);
  if (name == "cp_async_misaligned") e = launch(cp_async_misaligned_kernel, dim3(1), dim3(1), 64, nullptr, in);
  if (name == "wmma_misaligned") {
    __half* h = nullptr;
    cudaMalloc(reinterpret_cast<void**>(&h), 512 * 2);
    e = launch(wmma_misaligned_kernel, dim3(1), dim3(32), 0, nullptr, h);
  }
  if (name == "cp_async_global_dst") e = launch(cp_async_global_dst_kernel, dim3(1), dim3(1), 0, nullptr, in, out);
  if (name == "grid_plain") e = launch(grid_plain_kernel, dim3(2), dim3(32), 0, nullptr, out);
  if (name == "grid_exit") e = cmir_cuda::launch_cooperative(grid_exit_kernel, dim3(3), dim3(32), 0, nullptr, out);
  std::printf("%s: the emulator did not stop the kernel (%s)\n", name.c_str(), cudaGetErrorName(e));
  return 1;
}

int device() {
  int v[6] = {};
  cudaDeviceGetAttribute(&v[0], cudaDevAttrMultiProcessorCount, 0);
  cudaDeviceGetAttribute(&v[1], cudaDevAttrMaxSharedMemoryPerBlock, 0);
  cudaDeviceGetAttribute(&v[2], cudaDevAttrMaxSharedMemoryPerBlockOptin, 0);
  cudaDeviceGetAttribute(&v[3], cudaDevAttrMaxThreadsPerBlock, 0);
  cudaDeviceGetAttribute(&v[4], cudaDevAttrComputeCapabilityMajor, 0);
  cudaDeviceGetAttribute(&v[5], cudaDevAttrMaxGridDimY, 0);
  std::printf("sms=%d smem=%d smem_optin=%d threads=%d major=%d grid_y=%d\n", v[0], v[1], v[2], v[3], v[4], v[5]);
  return 0;
}

}  // namespace

int selftest(const std::string& name) {
  if (name == "barrier") return neighbour(true);
  if (name == "missing_barrier") return neighbour(false);
  if (name == "war_barrier") return war(true);
  if (name == "missing_war_barrier") return war(false);
  if (name == "poison") return poison();
  if (name == "limits") return limits();
  if (name == "shuffles") return shuffles();
  if (name == "device") return device();
  if (name == "cp_async") return pipeline(1);
  if (name == "wmma") return wmma();
  if (name == "mma_sync") return mma_sync();
  if (name == "cp_async_missing_wait") return pipeline(2);
  if (name == "grid_barrier") return grid(true);
  if (name == "missing_grid_barrier") return grid(false);
  if (name == "smem_oob" || name == "global_oob" || name == "divergent_barrier" || name == "exited_barrier" ||
      name == "warp_exit" || name == "cp_async_misaligned" || name == "cp_async_global_dst" ||
      name == "wmma_misaligned" || name == "grid_plain" || name == "grid_exit") {
    return misuse(name);
  }
  std::fprintf(stderr, "unknown selftest %s\n", name.c_str());
  return 2;
}

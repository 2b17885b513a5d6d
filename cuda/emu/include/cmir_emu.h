// cmir_emu: runs the CUDA kernels of cuda/ on the CPU with CUDA semantics, for tests on machines without a GPU.
//
// The kernel sources are compiled unchanged by the host compiler with cuda/emu/include first on the include path, so
// <cuda_runtime.h>, <cuda_fp16.h>, <cuda_bf16.h> resolve to the shadow headers here (no CUDA toolkit needed). Each
// thread of a block is a fiber; __syncthreads() is a real barrier (all live threads, same call site), warp intrinsics
// exchange values between the lanes' fibers, and between barriers the threads run one at a time, each to its next
// barrier, in an adversarial order (reverse, shuffled) so that a missing barrier reads stale or poisoned (NaN) shared
// memory instead of accidentally right values. Launch configuration and shared-memory limits are those of an
// H100/H200 (sm_90). Nothing here is linked into the shipped modules. See cuda/README.md, "CPU emulator".
#pragma once
#define CMIR_CUDA_EMU 1

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

#define CMIR_EMU_API __attribute__((visibility("default")))

// ---------------------------------------------------------------- qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// Static shared memory: one instance per process (blocks run one at a time), collected in one section so that each
// block starts with it poisoned (0xff bytes, NaN as float) like the undefined contents of real shared memory.
#define __shared__ static __attribute__((section("cmir_emu_shared"), aligned(16)))

// ---------------------------------------------------------------- runtime types (numeric values as CUDA's)
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorIllegalAddress = 700,
  cudaErrorCooperativeLaunchTooLarge = 720,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorNotSupported = 801,
  cudaErrorUnknown = 999,
};
using cudaError = cudaError_t;

struct CUstream_st;
using cudaStream_t = CUstream_st*;
struct CUevent_st;
using cudaEvent_t = CUevent_st*;

enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};

enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
  cudaFuncAttributePreferredSharedMemoryCarveout = 9,
};

enum cudaDeviceAttr {
  cudaDevAttrMaxThreadsPerBlock = 1,
  cudaDevAttrMaxBlockDimX = 2,
  cudaDevAttrMaxBlockDimY = 3,
  cudaDevAttrMaxBlockDimZ = 4,
  cudaDevAttrMaxGridDimX = 5,
  cudaDevAttrMaxGridDimY = 6,
  cudaDevAttrMaxGridDimZ = 7,
  cudaDevAttrMaxSharedMemoryPerBlock = 8,
  cudaDevAttrWarpSize = 10,
  cudaDevAttrMultiProcessorCount = 16,
  cudaDevAttrComputeCapabilityMajor = 75,
  cudaDevAttrComputeCapabilityMinor = 76,
  cudaDevAttrMaxSharedMemoryPerMultiprocessor = 81,
  cudaDevAttrMaxSharedMemoryPerBlockOptin = 97,
};

struct uint3 {
  unsigned int x, y, z;
};
struct alignas(16) uint4 {  // 16-byte vector: one 128-bit load / store on the GPU
  unsigned int x, y, z, w;
};
inline uint4 make_uint4(unsigned int x, unsigned int y, unsigned int z, unsigned int w) { return uint4{x, y, z, w}; }
struct alignas(8) float2 {  // 8-byte vector: one 64-bit load / store on the GPU
  float x, y;
};
inline float2 make_float2(float x, float y) { return float2{x, y}; }
struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int vx = 1, unsigned int vy = 1, unsigned int vz = 1) : x(vx), y(vy), z(vz) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}  // NOLINT: implicit as in CUDA
};

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  size_t sharedMemPerMultiprocessor;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int major;
  int minor;
  int multiProcessorCount;
};

// ---------------------------------------------------------------- runtime calls (cuda/emu/emu_runtime.cpp)
CMIR_EMU_API cudaError_t cudaGetDeviceCount(int* count);
CMIR_EMU_API cudaError_t cudaGetDevice(int* device);
CMIR_EMU_API cudaError_t cudaSetDevice(int device);
CMIR_EMU_API cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device);
CMIR_EMU_API cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device);
CMIR_EMU_API cudaError_t cudaRuntimeGetVersion(int* version);
CMIR_EMU_API cudaError_t cudaDriverGetVersion(int* version);
CMIR_EMU_API cudaError_t cudaGetLastError();
CMIR_EMU_API cudaError_t cudaPeekAtLastError();
CMIR_EMU_API const char* cudaGetErrorString(cudaError_t err);
CMIR_EMU_API const char* cudaGetErrorName(cudaError_t err);
CMIR_EMU_API cudaError_t cudaMalloc(void** ptr, size_t bytes);
CMIR_EMU_API cudaError_t cudaFree(void* ptr);
CMIR_EMU_API cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
CMIR_EMU_API cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                                         cudaStream_t stream = nullptr);
CMIR_EMU_API cudaError_t cudaMemset(void* ptr, int value, size_t bytes);
CMIR_EMU_API cudaError_t cudaMemsetAsync(void* ptr, int value, size_t bytes, cudaStream_t stream = nullptr);
CMIR_EMU_API cudaError_t cudaStreamCreate(cudaStream_t* stream);
CMIR_EMU_API cudaError_t cudaStreamDestroy(cudaStream_t stream);
CMIR_EMU_API cudaError_t cudaStreamSynchronize(cudaStream_t stream);
CMIR_EMU_API cudaError_t cudaDeviceSynchronize();
CMIR_EMU_API cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value);
template <typename T>
inline cudaError_t cudaFuncSetAttribute(T* entry, cudaFuncAttribute attr, int value) {
  return cudaFuncSetAttribute(reinterpret_cast<const void*>(entry), attr, value);
}

namespace cmir_emu {

// ---------------------------------------------------------------- per-thread built-ins
// The scheduler updates these before it resumes a thread's fiber (one host thread runs everything).
CMIR_EMU_API extern uint3 g_thread_idx;
CMIR_EMU_API extern uint3 g_block_idx;
CMIR_EMU_API extern dim3 g_block_dim;
CMIR_EMU_API extern dim3 g_grid_dim;

// Block-wide barrier; `site` identifies the __syncthreads() call (all threads must wait at the same one).
CMIR_EMU_API void block_barrier(const char* file, int line);
// Grid-wide barrier of a cooperative launch (cooperative_groups' grid.sync()): every thread of every block waits
// at it (the same call site in a block) before any continues; fatal in a plain launch.
CMIR_EMU_API void grid_barrier(const char* file, int line);
// Warp collective over the lanes of `mask`: deposits `value`, waits for every lane of the mask (each must make the
// same kind of call) and returns the 32 deposited values (valid until this lane's next collective).
enum class Collective : int { kSync = 0, kShuffle = 1, kVote = 2 };
CMIR_EMU_API const uint64_t* warp_collective(unsigned mask, uint64_t value, Collective kind);
// Lane of the calling thread in its warp (threads numbered x fastest, 32 per warp).
CMIR_EMU_API int lane_id();
// Reports a kernel-side misuse (one line on stderr) and aborts: on a GPU it would be undefined behaviour or a hang.
[[noreturn]] CMIR_EMU_API void fatal(const char* what);

struct LaunchSpec {
  dim3 grid, block;
  size_t dynamic_smem;
  const void* func;
  char* static_smem_begin;  // this module's cmir_emu_shared section
  char* static_smem_end;
  void* dynamic_smem_out;   // set by the runtime: the block's dynamic shared memory
  bool cooperative;         // cudaLaunchCooperativeKernel: all blocks resident (at most one per SM), grid barriers
};
// Validates the launch as the card would (returns the error cudaGetLastError will report) and runs every block.
CMIR_EMU_API cudaError_t run_kernel(LaunchSpec* spec, void (*body)(void*), void* ctx);
CMIR_EMU_API void* dynamic_smem();
// Kernel launches (run or refused) and cudaMemset / cudaMemsetAsync calls so far in this process, so that a test can
// check what a launcher enqueues (e.g. CMAM: four kernels and no memset at any batch size).
CMIR_EMU_API uint64_t launch_count();
CMIR_EMU_API uint64_t memset_count();
// The shape of launch number i (0-based, counted as launch_count counts): grid x, y, z, threads per block, dynamic
// shared memory bytes; false when there is no such launch. Tests read which kernel variant and plan a launcher chose.
CMIR_EMU_API bool launch_shape(uint64_t i, unsigned long long (&shape)[5]);

// cp.async (cuda/emu/include/cuda_pipeline_primitives.h): the source is read at issue, the bytes land in shared
// memory only when a wait covers their commit group, so a read before the wait sees the old contents (or the NaN
// poison), as it may on the GPU.
CMIR_EMU_API void async_copy(void* dst_shared, const void* src_global, size_t bytes, size_t zfill);
CMIR_EMU_API void async_commit();
CMIR_EMU_API void async_wait_prior(size_t pending);

}  // namespace cmir_emu

#define threadIdx (static_cast<const uint3&>(::cmir_emu::g_thread_idx))
#define blockIdx (static_cast<const uint3&>(::cmir_emu::g_block_idx))
#define blockDim (static_cast<const dim3&>(::cmir_emu::g_block_dim))
#define gridDim (static_cast<const dim3&>(::cmir_emu::g_grid_dim))
#define __syncthreads() ::cmir_emu::block_barrier(__FILE__, __LINE__)
constexpr int warpSize = 32;

// Bounds of this module's static shared memory (hidden: each executable / shared library passes its own).
extern "C" char __start_cmir_emu_shared[] __attribute__((weak, visibility("hidden")));
extern "C" char __stop_cmir_emu_shared[] __attribute__((weak, visibility("hidden")));

namespace cmir_emu {

// The launch: kernel arguments are copied into the parameter types (as CUDA passes them by value), then every
// thread of every block calls the kernel with them.
template <typename... KArgs, typename... Args>
cudaError_t launch_as(bool cooperative, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                      Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  using Params = std::tuple<std::decay_t<KArgs>...>;
  Params params(static_cast<std::decay_t<KArgs>>(std::forward<Args>(args))...);
  struct Ctx {
    void (*k)(KArgs...);
    Params* p;
  } ctx{kernel, &params};
  LaunchSpec spec{grid, block, smem, reinterpret_cast<const void*>(kernel), __start_cmir_emu_shared,
                  __stop_cmir_emu_shared, nullptr, cooperative};
  return run_kernel(
      &spec, [](void* c) { std::apply(static_cast<Ctx*>(c)->k, *static_cast<Ctx*>(c)->p); }, &ctx);
}
template <typename... KArgs, typename... Args>
cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t /*stream*/,
                   Args&&... args) {
  return launch_as(false, kernel, grid, block, smem, std::forward<Args>(args)...);
}
template <typename... KArgs, typename... Args>
cudaError_t launch_cooperative(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                               cudaStream_t /*stream*/, Args&&... args) {
  return launch_as(true, kernel, grid, block, smem, std::forward<Args>(args)...);
}

template <typename T>
inline uint64_t to_slot(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "warp exchange of an unsupported type");
  uint64_t s = 0;
  std::memcpy(&s, &v, sizeof(T));
  return s;
}
template <typename T>
inline T from_slot(uint64_t s) {
  T v;
  std::memcpy(&v, &s, sizeof(T));
  return v;
}
inline void check_lane_in_mask(unsigned mask, const char* what) {
  if (((mask >> lane_id()) & 1u) == 0) fatal(what);
}
inline void check_source(unsigned mask, int src) {
  if (((mask >> src) & 1u) == 0) fatal("warp shuffle reads a lane outside its mask (undefined on the GPU)");
}

}  // namespace cmir_emu

// ---------------------------------------------------------------- warp intrinsics
inline void __syncwarp(unsigned mask = 0xffffffffu) {
  ::cmir_emu::check_lane_in_mask(mask, "__syncwarp by a lane outside its mask");
  ::cmir_emu::warp_collective(mask, 0, ::cmir_emu::Collective::kSync);
}
template <typename T>
inline T __shfl_sync(unsigned mask, T var, int src_lane, int width = warpSize) {
  ::cmir_emu::check_lane_in_mask(mask, "__shfl_sync by a lane outside its mask");
  const uint64_t* v = ::cmir_emu::warp_collective(mask, ::cmir_emu::to_slot(var), ::cmir_emu::Collective::kShuffle);
  const int lane = ::cmir_emu::lane_id();
  const int src = (lane / width) * width + (src_lane % width + width) % width;
  ::cmir_emu::check_source(mask, src);
  return ::cmir_emu::from_slot<T>(v[src]);
}
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T var, int lane_mask, int width = warpSize) {
  ::cmir_emu::check_lane_in_mask(mask, "__shfl_xor_sync by a lane outside its mask");
  const uint64_t* v = ::cmir_emu::warp_collective(mask, ::cmir_emu::to_slot(var), ::cmir_emu::Collective::kShuffle);
  const int lane = ::cmir_emu::lane_id();
  const int src = lane ^ lane_mask;
  if (src >= (lane / width + 1) * width || src >= warpSize) return var;  // a later group: own value (CUDA)
  ::cmir_emu::check_source(mask, src);
  return ::cmir_emu::from_slot<T>(v[src]);
}
template <typename T>
inline T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  ::cmir_emu::check_lane_in_mask(mask, "__shfl_down_sync by a lane outside its mask");
  const uint64_t* v = ::cmir_emu::warp_collective(mask, ::cmir_emu::to_slot(var), ::cmir_emu::Collective::kShuffle);
  const int lane = ::cmir_emu::lane_id();
  if (lane % width + static_cast<int>(delta) >= width) return var;  // no wrap-around: unchanged
  ::cmir_emu::check_source(mask, lane + static_cast<int>(delta));
  return ::cmir_emu::from_slot<T>(v[lane + static_cast<int>(delta)]);
}
template <typename T>
inline T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize) {
  ::cmir_emu::check_lane_in_mask(mask, "__shfl_up_sync by a lane outside its mask");
  const uint64_t* v = ::cmir_emu::warp_collective(mask, ::cmir_emu::to_slot(var), ::cmir_emu::Collective::kShuffle);
  const int lane = ::cmir_emu::lane_id();
  if (lane % width < static_cast<int>(delta)) return var;
  ::cmir_emu::check_source(mask, lane - static_cast<int>(delta));
  return ::cmir_emu::from_slot<T>(v[lane - static_cast<int>(delta)]);
}
inline unsigned __ballot_sync(unsigned mask, int pred) {
  ::cmir_emu::check_lane_in_mask(mask, "__ballot_sync by a lane outside its mask");
  const uint64_t* v = ::cmir_emu::warp_collective(mask, pred != 0 ? 1u : 0u, ::cmir_emu::Collective::kVote);
  unsigned out = 0;
  for (int l = 0; l < warpSize; ++l) {
    if (((mask >> l) & 1u) != 0 && v[l] != 0) out |= 1u << l;
  }
  return out;
}
inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) == __ballot_sync(mask, 1); }

// ---------------------------------------------------------------- atomics (threads never run concurrently)
template <typename T>
inline T atomicAdd(T* address, T val) {
  const T old = *address;
  *address = old + val;
  return old;
}
template <typename T>
inline T atomicMax(T* address, T val) {
  const T old = *address;
  *address = std::max(old, val);
  return old;
}
template <typename T>
inline T atomicMin(T* address, T val) {
  const T old = *address;
  *address = std::min(old, val);
  return old;
}
template <typename T>
inline T atomicExch(T* address, T val) {
  const T old = *address;
  *address = val;
  return old;
}
template <typename T>
inline T atomicCAS(T* address, T compare, T val) {
  const T old = *address;
  if (old == compare) *address = val;
  return old;
}

// ---------------------------------------------------------------- device maths
using std::max;
using std::min;
inline float fmaf(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
// Global memory bypassing L1 (L2 on the GPU): one coherent memory here.
template <typename T>
inline T __ldcg(const T* p) { return *p; }
// Memory fence: blocks run one after another and threads never concurrently, so every write is already visible to
// every later reader; the fence's ordering is the GPU's to check (compute-sanitizer racecheck on a lease).
inline void __threadfence() {}

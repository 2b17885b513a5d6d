// Shared helpers of the CUDA kernels. No torch, no TensorRT: plain CUDA runtime only.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <utility>
#if defined(__CUDACC__) && !defined(CMIR_CUDA_EMU)
#include <cooperative_groups.h>
#endif

// Return the first error of a CUDA call from a function that returns cudaError_t.
#define CMIR_CUDA_TRY(expr)                      \
  do {                                           \
    const cudaError_t cmir_err_ = (expr);        \
    if (cmir_err_ != cudaSuccess) return cmir_err_; \
  } while (0)

// Dynamic shared memory of a kernel: `CMIR_DYNAMIC_SHARED(float, smem);` declares `smem` as the block's dynamic
// shared memory (16-byte aligned). Under nvcc it is `extern __shared__`; under the CPU emulator (cuda/emu) a pointer
// to the block's buffer, sized exactly as the launch requested.
#if defined(CMIR_CUDA_EMU)
#define CMIR_DYNAMIC_SHARED(type, name) type* const name = static_cast<type*>(::cmir_emu::dynamic_smem())
#else
#define CMIR_DYNAMIC_SHARED(type, name) extern __shared__ __align__(16) type name[]
#endif

namespace cmir_cuda {

inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Whether the byte ranges [a, a + an) and [b, b + bn) share memory (launchers refuse outputs aliasing inputs).
inline bool overlaps(const void* a, size_t an, const void* b, size_t bn) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bn && pb < pa + an;
}

// Whether no input range overlaps an output range and no two outputs overlap (null pointers skipped): launchers
// refuse outputs (and workspaces) that alias what the kernel reads or writes elsewhere.
inline bool disjoint(const void* const* ins, const size_t* in_bytes, int n_in, const void* const* outs,
                     const size_t* out_bytes, int n_out) {
  for (int o = 0; o < n_out; ++o) {
    if (outs[o] == nullptr) continue;
    for (int i = 0; i < n_in; ++i) {
      if (ins[i] != nullptr && overlaps(ins[i], in_bytes[i], outs[o], out_bytes[o])) return false;
    }
    for (int j = o + 1; j < n_out; ++j) {
      if (outs[j] != nullptr && overlaps(outs[j], out_bytes[j], outs[o], out_bytes[o])) return false;
    }
  }
  return true;
}

// Every kernel launch goes through here: `<<<...>>>` under nvcc, the CPU emulator under the host compiler
// (cuda/emu, tests only). Arguments convert to the kernel's parameter types as in a direct launch. Returns
// cudaGetLastError() of the launch, so a bad configuration (threads, grid, shared memory) is reported at once.
#if defined(CMIR_CUDA_EMU)
template <typename... KArgs, typename... Args>
inline cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args&&... args) {
  ::cmir_emu::launch(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
  return cudaGetLastError();
}
#elif defined(__CUDACC__)
template <typename... KArgs, typename... Args>
inline cudaError_t launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                          Args&&... args) {
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
  return cudaGetLastError();
}
#endif

#if defined(CMIR_CUDA_EMU) || defined(__CUDACC__)
// Dynamic shared memory a kernel may use without opting in.
constexpr size_t kDefaultSmemBytes = 48 * 1024;

// A launch whose dynamic shared memory may exceed the default: the kernel's opt-in first (a function attribute, not a
// stream operation, so also fine during graph capture), then `launch`.
template <typename... KArgs, typename... Args>
inline cudaError_t launch_opt_in(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                                 Args&&... args) {
  if (smem > kDefaultSmemBytes) {
    CMIR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  return launch(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
}

// A cooperative launch (every block resident at once, so the kernel may wait at CMIR_GRID_SYNC): the shared-memory
// opt-in, then cudaLaunchCooperativeKernel (capturable in a CUDA graph). Fails with
// cudaErrorCooperativeLaunchTooLarge, last error cleared, when the grid exceeds what the device keeps resident at once:
// the caller falls back to a plan without the grid barrier.
template <typename... KArgs, typename... Args>
inline cudaError_t launch_cooperative(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
                                      cudaStream_t stream, Args&&... args) {
  if (smem > kDefaultSmemBytes) {
    CMIR_CUDA_TRY(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
#if defined(CMIR_CUDA_EMU)
  const cudaError_t e = ::cmir_emu::launch_cooperative(kernel, grid, block, smem, stream, std::forward<Args>(args)...);
#else
  std::tuple<std::decay_t<KArgs>...> params(static_cast<std::decay_t<KArgs>>(std::forward<Args>(args))...);
  const cudaError_t e = std::apply(
      [&](auto&... p) {
        void* ptrs[] = {static_cast<void*>(&p)...};
        return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), grid, block, ptrs, smem, stream);
      },
      params);
#endif
  const cudaError_t last = cudaGetLastError();
  return e != cudaSuccess ? e : last;
}
#endif

// Grid-wide barrier of a kernel launched by launch_cooperative (cooperative_groups' grid.sync(): its memory
// operations before the barrier are visible to every block after it).
#if defined(CMIR_CUDA_EMU)
#define CMIR_GRID_SYNC() ::cmir_emu::grid_barrier(__FILE__, __LINE__)
#elif defined(__CUDACC__)
#define CMIR_GRID_SYNC() ::cooperative_groups::this_grid().sync()
#endif

}  // namespace cmir_cuda

// Element type of a kernel's tensors (all tensors of one op share it; accumulation is always fp32).
enum class CmirDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

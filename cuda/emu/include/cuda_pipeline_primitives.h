// Shadow of CUDA's <cuda_pipeline_primitives.h> for the CPU emulator (cuda/emu): cp.async as the primitives API.
// __pipeline_memcpy_async(dst in shared memory, src in global memory, 4/8/16 bytes, aligned to its size; the last
// `zfill` bytes written as zeros), __pipeline_commit() closes a group, __pipeline_wait_prior(N) waits until at most
// the N most recent groups are pending. See cmir_emu::async_copy for how the emulation exposes a missing wait.
#pragma once
#include <cstddef>

#include "cmir_emu.h"

inline void __pipeline_memcpy_async(void* dst_shared, const void* src_global, size_t size_and_align,
                                    size_t zfill = 0) {
  ::cmir_emu::async_copy(dst_shared, src_global, size_and_align, zfill);
}
inline void __pipeline_commit() { ::cmir_emu::async_commit(); }
inline void __pipeline_wait_prior(size_t prior) { ::cmir_emu::async_wait_prior(prior); }

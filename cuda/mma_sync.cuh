// Warp-level tensor-core instructions with a documented register layout, for kernels that build their fragments
// themselves (the involution's banded weight operand): mma.sync m16n8k16 (fp16 or bf16 operands, fp32 accumulators)
// and ldmatrix .x4 (four 8x8 matrices of 16-bit elements from shared memory). WMMA (cuda/gemm.cuh) hides its
// fragment layout, which is fine for plain GEMM tiles but not for an operand assembled per lane.
//
// Layouts (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type"; lane l = 4 * group + t):
//   a[0]: A(group, 2t..2t+1)  a[1]: A(group+8, 2t..2t+1)  a[2]: A(group, 2t+8..2t+9)  a[3]: A(group+8, 2t+8..2t+9)
//   b[0]: B(2t..2t+1, group)  b[1]: B(2t+8..2t+9, group)
//   d[0], d[1]: D(group, 2t), D(group, 2t+1)   d[2], d[3]: D(group+8, 2t), D(group+8, 2t+1)
// each 32-bit register holding the lower column (A) / row (B) index in its low half. ldmatrix: lanes 8i..8i+7 give
// the (16-byte aligned) row addresses of matrix i; lane l receives row l/4, elements 2(l%4) and 2(l%4)+1 in r[i];
// with .trans (ldmatrix_x4_trans) the matrix transposed: rows 2(l%4) and 2(l%4)+1 of column l/4 (an operand stored
// k-major, e.g. NCHW tokens staged [k][m], read as the row-major A fragment).
// Under the CPU emulator (cuda/emu) both run as warp collectives that follow these layouts exactly.
#pragma once
#include <cstdint>

#include "dtype.cuh"
#if defined(CMIR_CUDA_EMU)
#include "cmir_emu_mma_sync.h"
#endif

namespace cmir_mma {

// d += A * B for one 16x8 output tile, fp32 accumulation; T = __half or __nv_bfloat16 (sm_80+).
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]);

#if defined(CMIR_CUDA_EMU)
template <>
inline void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ::cmir_emu::mma_m16n8k16<false>(d, a, b, d);
}
template <>
inline void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  ::cmir_emu::mma_m16n8k16<true>(d, a, b, d);
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ::cmir_emu::ldmatrix_x4(r, row); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ::cmir_emu::ldmatrix_x4_trans(r, row); }
#else
template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4],
                                                         const uint32_t (&b)[2]) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");  // reads shared memory other threads wrote: not to be moved across their barrier
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
  const auto addr = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}
#endif

}  // namespace cmir_mma

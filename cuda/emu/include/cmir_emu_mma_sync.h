// The CPU emulator's (cuda/emu) warp-level PTX matrix instructions behind cuda/mma_sync.cuh: mma.sync m16n8k16 with
// fp16/bf16 operands and fp32 accumulators, and ldmatrix .x4 (b16, plain and .trans).
//
// Unlike WMMA's opaque fragments, these register layouts are part of PTX, so the emulation follows them exactly
// (PTX ISA, "Matrix Fragments for mma.m16n8k16 with floating point type" and "ldmatrix"): a kernel that lays out its
// fragments wrongly computes wrong numbers here too. Both are warp collectives (every lane of the warp takes part);
// each lane deposits a pointer to its operands, reads the lanes it needs, and writes its result only after every lane
// has read (the result may alias an operand). mma multiplies in fp32 (fp16/bf16 products are exact) and accumulates
// in k order, as the WMMA emulation does; the tensor cores' own summation order differs only in rounding.
#pragma once
#include <cstdint>
#include <cstring>

#include "cmir_emu.h"
#include "cmir_emu_half.h"

namespace cmir_emu {

// The fp32 value of element `e` (0: low half, 1: high half) of a packed pair of 16-bit values.
template <bool kBf16>
inline float unpack_b16(uint32_t word, int e) {
  const auto bits = static_cast<uint16_t>(e == 0 ? (word & 0xffffu) : (word >> 16));
  return kBf16 ? bf16_bits_to_float(bits) : half_bits_to_float(bits);
}

// D = A(16x16, row) * B(16x8, col) + C for the warp. Lane l = 4 * group + t holds
//   a[0]: A(group, 2t..2t+1)  a[1]: A(group+8, 2t..2t+1)  a[2]: A(group, 2t+8..)  a[3]: A(group+8, 2t+8..)
//   b[0]: B(2t..2t+1, group)  b[1]: B(2t+8..2t+9, group)
//   d[0..1]: D(group, 2t..2t+1)  d[2..3]: D(group+8, 2t..2t+1)
// (each 32-bit register: the lower column / row index in its low half).
template <bool kBf16>
inline void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4]) {
  struct Operands {
    const uint32_t* a;
    const uint32_t* b;
  } mine{a, b};
  const uint64_t* all = warp_collective(0xffffffffu, reinterpret_cast<uint64_t>(&mine), Collective::kSync);
  const Operands* ops[32];
  for (int l = 0; l < 32; ++l) ops[l] = reinterpret_cast<const Operands*>(all[l]);
  auto at = [&](int m, int k) {
    const int reg = (m >= 8 ? 1 : 0) + (k >= 8 ? 2 : 0);
    return unpack_b16<kBf16>(ops[(m % 8) * 4 + (k % 8) / 2]->a[reg], k & 1);
  };
  auto bt = [&](int k, int n) { return unpack_b16<kBf16>(ops[n * 4 + (k % 8) / 2]->b[k >= 8 ? 1 : 0], k & 1); };
  const int lane = lane_id();
  const int group = lane / 4, t = lane % 4;
  float out[4];
  for (int e = 0; e < 4; ++e) {
    const int m = group + (e >= 2 ? 8 : 0), n = 2 * t + (e & 1);
    float acc = c[e];
    for (int k = 0; k < 16; ++k) acc = std::fma(at(m, k), bt(k, n), acc);
    out[e] = acc;
  }
  warp_collective(0xffffffffu, 0, Collective::kSync);  // every lane has read the operands
  for (int e = 0; e < 4; ++e) d[e] = out[e];
}

// Four 8x8 matrices of 16-bit elements from shared memory: lanes 8i..8i+7 give the addresses of matrix i's rows 0..7
// (16 contiguous, 16-byte aligned bytes each). Plain: lane l receives row l/4, elements 2(l%4) and 2(l%4)+1 of matrix
// i in r[i] (the first in the low half). .trans: each matrix delivered transposed — lane l receives elements (row
// 2(l%4), column l/4) and (row 2(l%4)+1, column l/4).
template <bool kTrans>
inline void ldmatrix_x4_impl(uint32_t (&r)[4], const void* row) {
  if (reinterpret_cast<uintptr_t>(row) % 16 != 0) {
    fatal("ldmatrix: a row address is not 16-byte aligned (undefined on the GPU)");
  }
  const uint64_t* all = warp_collective(0xffffffffu, reinterpret_cast<uint64_t>(row), Collective::kSync);
  const int lane = lane_id();
  auto at = [&](int i, int rr, int byte) { return reinterpret_cast<const unsigned char*>(all[8 * i + rr]) + byte; };
  uint32_t out[4];
  for (int i = 0; i < 4; ++i) {
    if (kTrans) {
      uint16_t lo = 0, hi = 0;
      std::memcpy(&lo, at(i, 2 * (lane % 4), 2 * (lane / 4)), 2);
      std::memcpy(&hi, at(i, 2 * (lane % 4) + 1, 2 * (lane / 4)), 2);
      out[i] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
    } else {
      std::memcpy(&out[i], at(i, lane / 4, 4 * (lane % 4)), 4);
    }
  }
  warp_collective(0xffffffffu, 0, Collective::kSync);
  for (int i = 0; i < 4; ++i) r[i] = out[i];
}
inline void ldmatrix_x4(uint32_t (&r)[4], const void* row) { ldmatrix_x4_impl<false>(r, row); }
inline void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) { ldmatrix_x4_impl<true>(r, row); }

}  // namespace cmir_emu

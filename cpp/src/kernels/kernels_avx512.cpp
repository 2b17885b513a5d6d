// AVX-512 build of the fast kernels (this file is compiled with -mavx512f -mavx512bw -mavx512dq -mavx512vl -mfma, and
// -mavx512bf16 for the bf16 generation of the fused involution: that flag only enables the bf16 intrinsics, which
// appear in the *_bf16 functions alone, and the dispatcher calls those only on CPUs with avx512_bf16; the fp32
// kernels hold no bf16 type the compiler could lower to those instructions - tests/test_cpu_kernels_bf16.py checks the
// object code).
// In NHWC one group of 16 involution channels is exactly one zmm register.
// GCC 12's AVX-512 headers use _mm512_undefined_ps() in ways its own -Wuninitialized flags (GCC PR105593, fixed in
// 12.3/13); silence that for the header only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#pragma GCC diagnostic pop
#include <math.h>
#include <omp.h>

#include "kernels_internal.hpp"

namespace cmir::cpu::detail::avx512 {

using V = __m512;
constexpr int kLanes = 16;
constexpr int kInvBlock = 8;  // 8 accumulators + broadcasts + loads stay well inside the 32 zmm registers
constexpr int kInvPairBlock = 4;  // two pixels at once: 2x4 accumulators + 4 shared loads + broadcasts
constexpr int kGemmMR = 4;    // 4x6 tile: 24 accumulators, 6 weight vectors, 1 activation vector (31 of 32 zmm)
constexpr int kGemmNR = 6;
constexpr int kNnNV = 2;     // fused involution GEMMs: 16 accumulators per tile of 8 pixels

inline __mmask16 lanes_mask(int n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline V vzero() { return _mm512_setzero_ps(); }
inline V vset1(float a) { return _mm512_set1_ps(a); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V vload_n(const float* p, int n) { return _mm512_maskz_loadu_ps(lanes_mask(n), p); }
inline V vload_n_fill(const float* p, int n, float fill) {
  return _mm512_mask_loadu_ps(_mm512_set1_ps(fill), lanes_mask(n), p);
}
inline void vstore_n(float* p, V v, int n) { _mm512_mask_storeu_ps(p, lanes_mask(n), v); }
inline V vkeep_n(V v, int n) { return _mm512_maskz_mov_ps(lanes_mask(n), v); }
inline V vfmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline V vmul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
inline float vhsum(V v) { return _mm512_reduce_add_ps(v); }
inline float vhmax(V v) { return _mm512_reduce_max_ps(v); }

#define CMIR_KERNELS_BF16  // this file is also built with -mavx512bf16; those kernels run only where CPUID says so
#include "kernels_impl.hpp"  // the kernels themselves, compiled here for this ISA

}  // namespace cmir::cpu::detail::avx512

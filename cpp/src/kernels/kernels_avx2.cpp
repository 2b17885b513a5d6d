// AVX2 + FMA build of the fast kernels (this file is compiled with -mavx2 -mfma), for CPUs without AVX-512 and
// selectable on any CPU for testing (Isa::kAvx2 or CMIR_CPU_ISA=avx2). A group of 16 channels is two ymm registers.
#include <immintrin.h>
#include <math.h>
#include <omp.h>

#include "kernels_internal.hpp"

namespace cmir::cpu::detail::avx2 {

using V = __m256;
constexpr int kLanes = 8;
constexpr int kInvBlock = 6;  // 6 accumulators of the 16 ymm registers, the rest for broadcasts and loads
constexpr int kInvPairBlock = 2;  // two pixels at once: 2x2 accumulators + 2 shared loads + broadcasts
constexpr int kGemmMR = 4;    // 4x2 tile: 8 accumulators, 2 weight vectors, 1 activation vector
constexpr int kGemmNR = 2;
constexpr int kNnNV = 1;     // fused involution GEMMs: 8 accumulators per tile of 8 pixels

inline __m256i lanes_mask(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline V vzero() { return _mm256_setzero_ps(); }
inline V vset1(float a) { return _mm256_set1_ps(a); }
inline V vload(const float* p) { return _mm256_loadu_ps(p); }
inline void vstore(float* p, V v) { _mm256_storeu_ps(p, v); }
inline V vload_n(const float* p, int n) { return _mm256_maskload_ps(p, lanes_mask(n)); }
inline V vload_n_fill(const float* p, int n, float fill) {
  const __m256i m = lanes_mask(n);
  return _mm256_blendv_ps(_mm256_set1_ps(fill), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
}
inline void vstore_n(float* p, V v, int n) { _mm256_maskstore_ps(p, lanes_mask(n), v); }
inline V vkeep_n(V v, int n) { return _mm256_and_ps(v, _mm256_castsi256_ps(lanes_mask(n))); }
inline V vfmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
inline V vmul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V vadd(V a, V b) { return _mm256_add_ps(a, b); }
inline V vsub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }
// Fixed reduction trees (halves, then pairs), so a sum does not depend on anything but its inputs.
inline float vhsum(V v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
inline float vhmax(V v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

#include "kernels_impl.hpp"  // the kernels themselves, compiled here for this ISA

}  // namespace cmir::cpu::detail::avx2

// Shadow of CUDA's <mma.h> for the CPU emulator (cuda/emu): WMMA fragments (nvcuda::wmma) for tensor-core kernels.
//
// Fragments are opaque on the GPU, so any consistent distribution of the matrix over the 32 lanes is a faithful
// emulation: here element e of lane l is the fragment matrix's entry e * 32 + l in row-major order. The *_sync calls
// are warp collectives (every lane of the warp must make the same call, as on the GPU), and the memory rules the GPU
// enforces are checked: a 256-bit aligned pointer, ldm a multiple of 16 bytes. mma_sync multiplies in fp32 (products
// of fp16/bf16/tf32 values are exact in fp32) and accumulates in fp32 in k order, then rounds to the accumulator
// type; tf32 operands are rounded to tf32 (10-bit mantissa) first.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>

#include "cmir_emu.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };
namespace precision {
struct tf32 {};
}  // namespace precision

namespace detail {

template <typename Use, int M, int N, int K>
struct dims;
template <int M, int N, int K>
struct dims<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct dims<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct dims<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename T>
struct storage {
  using type = T;
};
template <>
struct storage<precision::tf32> {
  using type = float;
};

// tf32 operands: m16n16k8; fp16/bf16 operands: m16n16k16, m32n8k16, m8n32k16; accumulators: any of these.
template <typename Use, int M, int N, int K, typename T>
constexpr bool supported_shape() {
  const bool k16 = (M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16);
  const bool k8 = M == 16 && N == 16 && K == 8;
  if (std::is_same<Use, accumulator>::value) return (k16 || k8) && (std::is_same<T, float>::value ||
                                                                    std::is_same<T, __half>::value);
  if (std::is_same<T, precision::tf32>::value) return k8;
  return k16 && (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value);
}

inline float round_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t u;
  std::memcpy(&u, &v, 4);
  u = (u + 0xfffu + ((u >> 13) & 1u)) & ~0x1fffu;  // nearest even on the 13 dropped mantissa bits
  std::memcpy(&v, &u, 4);
  return v;
}

inline void check_memory(const void* p, unsigned ldm, size_t elem, const char* what) {
  if (reinterpret_cast<uintptr_t>(p) % 32 != 0) {
    ::cmir_emu::fatal((std::string(what) + ": pointer not 256-bit aligned (undefined on the GPU)").c_str());
  }
  if ((static_cast<size_t>(ldm) * elem) % 16 != 0) {
    ::cmir_emu::fatal((std::string(what) + ": ldm is not a multiple of 16 bytes (undefined on the GPU)").c_str());
  }
}

// All 32 lanes of the warp take part (the lanes of a partial last warp that exist).
inline const uint64_t* warp_all(uint64_t v) {
  return ::cmir_emu::warp_collective(0xffffffffu, v, ::cmir_emu::Collective::kSync);
}

}  // namespace detail

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert(detail::supported_shape<Use, M, N, K, T>(), "WMMA shape not supported for this element type");

 public:
  static constexpr int kRows = detail::dims<Use, M, N, K>::rows;
  static constexpr int kCols = detail::dims<Use, M, N, K>::cols;
  static constexpr int num_elements = kRows * kCols / 32;
  using element_type = typename detail::storage<T>::type;
  element_type x[num_elements];
};

template <typename Use, int M, int N, int K, typename T, typename L>
inline void fill_fragment(fragment<Use, M, N, K, T, L>& f, typename fragment<Use, M, N, K, T, L>::element_type v) {
  for (int e = 0; e < fragment<Use, M, N, K, T, L>::num_elements; ++e) f.x[e] = v;
}

// Matrix A / B from memory in the fragment's layout.
template <typename Use, int M, int N, int K, typename T, typename L, typename P>
inline void load_matrix_sync(fragment<Use, M, N, K, T, L>& f, const P* p, unsigned ldm) {
  static_assert(std::is_same<L, row_major>::value || std::is_same<L, col_major>::value,
                "matrix_a / matrix_b fragments need a row_major or col_major layout");
  using F = fragment<Use, M, N, K, T, L>;
  detail::check_memory(p, ldm, sizeof(P), "wmma::load_matrix_sync");
  detail::warp_all(0);
  const int lane = ::cmir_emu::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int idx = e * 32 + lane, r = idx / F::kCols, c = idx % F::kCols;
    const size_t off = std::is_same<L, row_major>::value ? static_cast<size_t>(r) * ldm + c
                                                         : static_cast<size_t>(c) * ldm + r;
    f.x[e] = static_cast<typename F::element_type>(p[off]);
  }
  detail::warp_all(0);
}

// Accumulator from memory in the layout given at run time.
template <int M, int N, int K, typename T, typename P>
inline void load_matrix_sync(fragment<accumulator, M, N, K, T, void>& f, const P* p, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, M, N, K, T, void>;
  detail::check_memory(p, ldm, sizeof(P), "wmma::load_matrix_sync");
  detail::warp_all(0);
  const int lane = ::cmir_emu::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int idx = e * 32 + lane, r = idx / F::kCols, c = idx % F::kCols;
    f.x[e] = p[layout == mem_row_major ? static_cast<size_t>(r) * ldm + c : static_cast<size_t>(c) * ldm + r];
  }
  detail::warp_all(0);
}

template <int M, int N, int K, typename T, typename P>
inline void store_matrix_sync(P* p, const fragment<accumulator, M, N, K, T, void>& f, unsigned ldm, layout_t layout) {
  using F = fragment<accumulator, M, N, K, T, void>;
  detail::check_memory(p, ldm, sizeof(P), "wmma::store_matrix_sync");
  detail::warp_all(0);
  const int lane = ::cmir_emu::lane_id();
  for (int e = 0; e < F::num_elements; ++e) {
    const int idx = e * 32 + lane, r = idx / F::kCols, c = idx % F::kCols;
    p[layout == mem_row_major ? static_cast<size_t>(r) * ldm + c : static_cast<size_t>(c) * ldm + r] = f.x[e];
  }
  detail::warp_all(0);
}

// D = A * B + C for the whole warp. Each lane computes its own elements of D from every lane's fragments, which it
// reaches through the pointers the lanes deposit; D is written only after every lane has read A, B and C (D may be C).
template <int M, int N, int K, typename TA, typename LA, typename TB, typename LB, typename TC, typename TD>
inline void mma_sync(fragment<accumulator, M, N, K, TD, void>& d, const fragment<matrix_a, M, N, K, TA, LA>& a,
                     const fragment<matrix_b, M, N, K, TB, LB>& b, const fragment<accumulator, M, N, K, TC, void>& c) {
  using FA = fragment<matrix_a, M, N, K, TA, LA>;
  using FB = fragment<matrix_b, M, N, K, TB, LB>;
  using FD = fragment<accumulator, M, N, K, TD, void>;
  struct Operands {
    const FA* a;
    const FB* b;
    const fragment<accumulator, M, N, K, TC, void>* c;
  } mine{&a, &b, &c};
  const uint64_t* all = detail::warp_all(reinterpret_cast<uint64_t>(&mine));
  const Operands* ops[32];
  for (int l = 0; l < 32; ++l) ops[l] = reinterpret_cast<const Operands*>(all[l]);
  constexpr bool tf32 = std::is_same<TA, precision::tf32>::value;
  auto at = [&](int r, int k) {  // A(r, k): entry r * K + k of A's row-major numbering
    const int idx = r * K + k;
    const float v = static_cast<float>(ops[idx % 32]->a->x[idx / 32]);
    return tf32 ? detail::round_tf32(v) : v;
  };
  auto bt = [&](int k, int n) {
    const int idx = k * N + n;
    const float v = static_cast<float>(ops[idx % 32]->b->x[idx / 32]);
    return tf32 ? detail::round_tf32(v) : v;
  };
  const int lane = ::cmir_emu::lane_id();
  typename FD::element_type out[FD::num_elements];
  for (int e = 0; e < FD::num_elements; ++e) {
    const int idx = e * 32 + lane, r = idx / N, n = idx % N;
    float acc = static_cast<float>(c.x[e]);
    for (int k = 0; k < K; ++k) acc = std::fma(at(r, k), bt(k, n), acc);
    out[e] = static_cast<typename FD::element_type>(acc);
  }
  detail::warp_all(0);  // every lane has read the operands
  for (int e = 0; e < FD::num_elements; ++e) d.x[e] = out[e];
}

inline float __float_to_tf32(float v) { return detail::round_tf32(v); }

}  // namespace wmma
}  // namespace nvcuda

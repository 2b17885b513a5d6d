// NOT an ordinary header (no include guard, on purpose): the body of the fast CPU kernels, written once against a
// small vector abstraction and compiled once per instruction set. Include it only from kernels_avx512.cpp and
// kernels_avx2.cpp, inside namespace cmir::cpu::detail::<isa>, after they define:
//   V (vector of kLanes floats), kLanes, kInvBlock (involution accumulators), kInvPairBlock (vectors per block when
//   two pixels are aggregated together), kGemmMR/kGemmNR (GEMM tile),
//   kNnNV (vectors per row in the fused involution's per-tile GEMM),
//   vzero, vset1, vload, vstore, vload_n, vstore_n (first n lanes, rest zero / untouched), vload_n_fill (rest = fill),
//   vkeep_n (zero lanes >= n), vfmadd, vmul, vadd, vsub, vmax (x86 semantics: 2nd operand on NaN), vhsum, vhmax.
// Everything here lives in that per-ISA namespace, so the two compilations never share an inline symbol (no ODR
// mix-up between AVX-512 and AVX2 code). Only plain C headers are used for the same reason.
//
// Determinism: work is split statically, and each output element is computed by the same instruction sequence
// whatever the split (accumulation order depends only on the ISA), so results do not depend on the thread count.

// ---------------------------------------------------------------- threading
// f(lo, hi) over a static split of [0, total); threads already resolved (>= 1).
template <class F>
inline void parallel_ranges(long total, int threads, const F& f) {
  if (total <= 0) return;
  const long nt = threads < total ? threads : total;
  if (nt <= 1) {
    f(0L, total);
    return;
  }
#pragma omp parallel num_threads(static_cast<int>(nt))
  {
    const long t = omp_get_thread_num();
    const long n = omp_get_num_threads();
    const long lo = total * t / n;
    const long hi = total * (t + 1) / n;
    if (lo < hi) f(lo, hi);
  }
}

// f(t, n) on each thread t of a team of n (a single call f(0, 1) for one thread). Phases inside f are separated
// with `#pragma omp barrier` (valid, and a no-op, when there is no enclosing parallel region).
template <class F>
inline void parallel_team(int threads, const F& f) {
  if (threads <= 1) {
    // Inside someone else's parallel region (e.g. the engine's side-by-side backbones) a barrier in f would bind to
    // that outer team and deadlock: give f a team of its own.
    if (omp_in_parallel()) {
#pragma omp parallel num_threads(1)
      f(0, 1);
    } else {
      f(0, 1);
    }
    return;
  }
#pragma omp parallel num_threads(threads)
  f(omp_get_thread_num(), omp_get_num_threads());
}

// Thread t's share [lo, hi) of a static split of [0, total) into n parts.
inline void split_range(long total, int t, int n, long& lo, long& hi) {
  lo = total * t / n;
  hi = total * (t + 1) / n;
}

// Threads worth waking for `work` multiply-adds (parallel_grain(), default 2^18, about the cost of a fork/join), so
// small layers (stage 4, SA at 4x4) skip the fork/join. Values never depend on the thread count: still deterministic.
inline int useful_threads(int threads, double work) {
  const double grain = parallel_grain();
  if (grain <= 0.0) return threads;
  const double cap = work / grain;
  return cap >= threads ? threads : (cap < 1.0 ? 1 : static_cast<int>(cap));
}

inline int imin(int a, int b) { return a < b ? a : b; }
inline int imax(int a, int b) { return a > b ? a : b; }

// ---------------------------------------------------------------- involution
struct InvShape {
  int width, channels, ksize, kk, vpg;  // vpg: vectors per group (group_channels / kLanes)
};
struct InvPixel {
  const float* ximg;  // this batch item's input [H, W, C]
  const float* kpix;  // this output pixel's kernels [G, K, K]
  float* ypix;        // this output pixel's channels
  int hi0, wi0, kh0, kh1, kw0, kw1;  // top-left input position and the taps inside the image
};

// One output pixel, NB consecutive vectors of channels starting at vector v0; every vector lies in one group
// (group_channels % kLanes == 0). VPG: vectors per group when known at compile time (1: AVX-512 with 16-channel
// groups, 2: AVX2), 0: read from sh.vpg. Taps outside the image are skipped (zero padding).
inline void store_epilogue(V r, float* ypix, int c, const Epilogue& epi) {
  if (epi.scale) r = vmul(r, vload(epi.scale + c));
  if (epi.shift) r = vadd(r, vload(epi.shift + c));
  if (epi.relu) r = vmax(vzero(), r);  // operand order keeps NaN (max returns the 2nd on NaN)
  vstore(ypix + c, r);
}

template <int NB, int VPG>
inline void involution_block(const InvPixel& px, const InvShape& sh, int v0, const Epilogue& epi) {
  V acc[NB];
  const float* kg[NB];
  for (int j = 0; j < NB; ++j) {
    acc[j] = vzero();
    const int g = VPG == 1 ? v0 + j : VPG == 2 ? (v0 + j) >> 1 : (v0 + j) / sh.vpg;
    kg[j] = px.kpix + static_cast<long>(g) * sh.kk;
  }
  const int c0 = v0 * kLanes;
  for (int kh = px.kh0; kh < px.kh1; ++kh) {
    const float* xrow = px.ximg + static_cast<long>(px.hi0 + kh) * sh.width * sh.channels + c0;
    for (int kw = px.kw0; kw < px.kw1; ++kw) {
      const float* xp = xrow + static_cast<long>(px.wi0 + kw) * sh.channels;
      const int tap = kh * sh.ksize + kw;
      for (int j = 0; j < NB; ++j) acc[j] = vfmadd(vset1(kg[j][tap]), vload(xp + j * kLanes), acc[j]);
    }
  }
  for (int j = 0; j < NB; ++j) store_epilogue(acc[j], px.ypix, c0 + j * kLanes, epi);
}

template <int NB, int VPG>
inline void involution_tail(int nb, const InvPixel& px, const InvShape& sh, int v0, const Epilogue& epi) {
  if constexpr (NB > 0) {
    if (nb == NB) {
      involution_block<NB, VPG>(px, sh, v0, epi);
    } else {
      involution_tail<NB - 1, VPG>(nb, px, sh, v0, epi);
    }
  }
}

template <int VPG>
inline void involution_pixel(const InvPixel& px, const InvShape& sh, const Epilogue& epi) {
  const int nvec = sh.channels / kLanes;
  int v = 0;
  for (; v + kInvBlock <= nvec; v += kInvBlock) involution_block<kInvBlock, VPG>(px, sh, v, epi);
  if (v < nvec) involution_tail<kInvBlock - 1, VPG>(nvec - v, px, sh, v, epi);
}

// Two horizontally adjacent output pixels a and b (b.wi0 = a.wi0 + d, d = stride, same input rows): the input vectors
// of one row are loaded once for both (position u serves tap u of a and tap u - d of b; each pixel keeps its own taps
// inside the image), halving the loads per multiply-add. Each output still sums its taps in the same order
// with the same instructions as involution_block, so results are bit-identical to aggregating the pixels one by one.
template <int NB, int VPG>
inline void involution_pair_block(const InvPixel& a, const InvPixel& b, const InvShape& sh, int v0, int d,
                                  const Epilogue& epi) {
  V acc0[NB], acc1[NB];
  const float* kg0[NB];
  const float* kg1[NB];
  for (int j = 0; j < NB; ++j) {
    acc0[j] = vzero();
    acc1[j] = vzero();
    const int g = VPG == 1 ? v0 + j : VPG == 2 ? (v0 + j) >> 1 : (v0 + j) / sh.vpg;
    kg0[j] = a.kpix + static_cast<long>(g) * sh.kk;
    kg1[j] = b.kpix + static_cast<long>(g) * sh.kk;
  }
  const int c0 = v0 * kLanes, k = sh.ksize;
  // positions u (relative to a.wi0) that some tap of a or b reads; all inside the image
  const int u0 = imin(a.kw0, b.kw0 + d), u1 = imax(a.kw1, b.kw1 + d);
  for (int kh = a.kh0; kh < a.kh1; ++kh) {
    const float* xrow = a.ximg + (static_cast<long>(a.hi0 + kh) * sh.width + a.wi0) * sh.channels + c0;
    const int tap0 = kh * k;
    for (int u = u0; u < u1; ++u) {
      V x[NB];
      for (int j = 0; j < NB; ++j) x[j] = vload(xrow + static_cast<long>(u) * sh.channels + j * kLanes);
      if (u >= a.kw0 && u < a.kw1) {
        for (int j = 0; j < NB; ++j) acc0[j] = vfmadd(vset1(kg0[j][tap0 + u]), x[j], acc0[j]);
      }
      if (u - d >= b.kw0 && u - d < b.kw1) {
        for (int j = 0; j < NB; ++j) acc1[j] = vfmadd(vset1(kg1[j][tap0 + u - d]), x[j], acc1[j]);
      }
    }
  }
  for (int j = 0; j < NB; ++j) {
    store_epilogue(acc0[j], a.ypix, c0 + j * kLanes, epi);
    store_epilogue(acc1[j], b.ypix, c0 + j * kLanes, epi);
  }
}

template <int NB, int VPG>
inline void involution_pair_tail(int nb, const InvPixel& a, const InvPixel& b, const InvShape& sh, int v0, int d,
                                 const Epilogue& epi) {
  if constexpr (NB > 0) {
    if (nb == NB) {
      involution_pair_block<NB, VPG>(a, b, sh, v0, d, epi);
    } else {
      involution_pair_tail<NB - 1, VPG>(nb, a, b, sh, v0, d, epi);
    }
  }
}

template <int VPG>
inline void involution_pixel_pair(const InvPixel& a, const InvPixel& b, const InvShape& sh, int d,
                                  const Epilogue& epi) {
  const int nvec = sh.channels / kLanes;
  int v = 0;
  for (; v + kInvPairBlock <= nvec; v += kInvPairBlock) involution_pair_block<kInvPairBlock, VPG>(a, b, sh, v, d, epi);
  if (v < nvec) involution_pair_tail<kInvPairBlock - 1, VPG>(nvec - v, a, b, sh, v, d, epi);
}

// Whether pixel b (the next output pixel after a) can be aggregated together with a: same image and input rows, b one
// stride to the right (so the positions they read overlap).
inline bool can_pair(const InvPixel& a, const InvPixel& b, int stride) {
  return b.ximg == a.ximg && b.hi0 == a.hi0 && b.wi0 == a.wi0 + stride && stride < a.kw1 - a.kw0;
}

// Group size not a multiple of the vector width: one channel at a time, same tap order.
inline void involution_pixel_scalar(const InvPixel& px, const InvShape& sh, int group_channels, const Epilogue& epi) {
  for (int c = 0; c < sh.channels; ++c) {
    const float* kc = px.kpix + static_cast<long>(c / group_channels) * sh.kk;
    float acc = 0.0f;
    for (int kh = px.kh0; kh < px.kh1; ++kh) {
      for (int kw = px.kw0; kw < px.kw1; ++kw) {
        acc += kc[kh * sh.ksize + kw] *
               px.ximg[(static_cast<long>(px.hi0 + kh) * sh.width + (px.wi0 + kw)) * sh.channels + c];
      }
    }
    if (epi.scale) acc *= epi.scale[c];
    if (epi.shift) acc += epi.shift[c];
    if (epi.relu && !(acc > 0.0f)) acc = acc != acc ? acc : 0.0f;  // ReLU that keeps NaN, as the vector path
    px.ypix[c] = acc;
  }
}

// Aggregates output pixels [0, n) given by make(i) -> InvPixel, in pairs where can_pair allows (vector path only).
template <class Make>
inline void aggregate_pixels(long n, const Make& make, const InvShape& sh, bool vec, int group_channels, int stride,
                             const Epilogue& epi) {
  for (long i = 0; i < n; ++i) {
    const InvPixel px = make(i);
    if (!vec) {
      involution_pixel_scalar(px, sh, group_channels, epi);
      continue;
    }
    if (i + 1 < n) {
      const InvPixel nx = make(i + 1);
      if (can_pair(px, nx, stride)) {
        if (sh.vpg == 1) {
          involution_pixel_pair<1>(px, nx, sh, stride, epi);
        } else if (sh.vpg == 2) {
          involution_pixel_pair<2>(px, nx, sh, stride, epi);
        } else {
          involution_pixel_pair<0>(px, nx, sh, stride, epi);
        }
        ++i;
        continue;
      }
    }
    if (sh.vpg == 1) {
      involution_pixel<1>(px, sh, epi);
    } else if (sh.vpg == 2) {
      involution_pixel<2>(px, sh, epi);
    } else {
      involution_pixel<0>(px, sh, epi);
    }
  }
}

void involution(const float* x, const float* kernel, float* y, int batch, int height, int width, int channels,
                int kernel_size, int stride, int group_channels, const Epilogue& epi, int threads) {
  const int ho_n = (height + stride - 1) / stride;
  const int wo_n = (width + stride - 1) / stride;
  const int pad = (kernel_size - 1) / 2;
  const int groups = channels / group_channels;
  const InvShape sh{width, channels, kernel_size, kernel_size * kernel_size, group_channels / kLanes};
  const bool vec = group_channels % kLanes == 0;
  const long plane = static_cast<long>(ho_n) * wo_n;
  const long pixels = batch * plane;
  const int nt = useful_threads(threads, static_cast<double>(pixels) * channels * sh.kk);
  parallel_ranges(pixels, nt, [&](long lo, long hi) {
    auto make = [&](long i) {
      const long pix = lo + i;
      const int n = static_cast<int>(pix / plane);
      const int ho = static_cast<int>((pix % plane) / wo_n), wo = static_cast<int>(pix % wo_n);
      InvPixel px;
      px.hi0 = ho * stride - pad;
      px.wi0 = wo * stride - pad;
      px.kh0 = imax(0, -px.hi0);
      px.kh1 = imin(kernel_size, height - px.hi0);
      px.kw0 = imax(0, -px.wi0);
      px.kw1 = imin(kernel_size, width - px.wi0);
      px.ximg = x + static_cast<long>(n) * height * width * channels;
      px.kpix = kernel + pix * groups * sh.kk;
      px.ypix = y + pix * channels;
      return px;
    };
    aggregate_pixels(hi - lo, make, sh, vec, group_channels, stride, epi);
  });
}

// ---------------------------------------------------------------- fused involution (generation + aggregation)
// out[i*ldo + j] = act(bias[j] + sum_k a[i*lda + k] * bt[k*n + j]) for rows i < MR and all n columns: the weights
// are [k, n] (transposed), so each FMA is a broadcast activation times a contiguous vector of outputs. Lane j sums over
// k in order, so a value does not depend on MR or on the column blocking.
template <int MR>
inline void gemm_nn_rows(const float* a, long lda, const float* bt, const float* bias, float* out, long ldo, int n,
                         int kdim, bool relu) {
  int j = 0;
  for (; j + kNnNV * kLanes <= n; j += kNnNV * kLanes) {
    V acc[MR][kNnNV];
    for (int v = 0; v < kNnNV; ++v) {
      const V b0 = vload(bias + j + v * kLanes);
      for (int i = 0; i < MR; ++i) acc[i][v] = b0;
    }
    for (int k = 0; k < kdim; ++k) {
      V b[kNnNV];
      for (int v = 0; v < kNnNV; ++v) b[v] = vload(bt + static_cast<long>(k) * n + j + v * kLanes);
      for (int i = 0; i < MR; ++i) {
        const V av = vset1(a[i * lda + k]);
        for (int v = 0; v < kNnNV; ++v) acc[i][v] = vfmadd(av, b[v], acc[i][v]);
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < kNnNV; ++v) {
        vstore(out + i * ldo + j + v * kLanes, relu ? vmax(vzero(), acc[i][v]) : acc[i][v]);
      }
  }
  for (; j < n; j += kLanes) {  // remaining columns, one (possibly partial) vector at a time
    const int w = imin(kLanes, n - j);
    V acc[MR];
    const V b0 = vload_n(bias + j, w);
    for (int i = 0; i < MR; ++i) acc[i] = b0;
    for (int k = 0; k < kdim; ++k) {
      const V b = vload_n(bt + static_cast<long>(k) * n + j, w);
      for (int i = 0; i < MR; ++i) acc[i] = vfmadd(vset1(a[i * lda + k]), b, acc[i]);
    }
    for (int i = 0; i < MR; ++i) vstore_n(out + i * ldo + j, relu ? vmax(vzero(), acc[i]) : acc[i], w);
  }
}

template <int MR>
inline void gemm_nn_any(int mr, const float* a, long lda, const float* bt, const float* bias, float* out, long ldo,
                        int n, int kdim, bool relu) {
  if constexpr (MR > 1) {
    if (mr < MR) return gemm_nn_any<MR - 1>(mr, a, lda, bt, bias, out, ldo, n, kdim, relu);
  }
  gemm_nn_rows<MR>(a, lda, bt, bias, out, ldo, n, kdim, relu);
}

// The fused involution's tile loop; `generate(tp, gin, hid, kern, extra)` fills the tile's kernels [tp, G*K*K] from
// its generation input gin [tp, C] (hid: [tile, hidden] scratch; extra: what the thread's scratch holds past the fp32
// layout, for generators that need more). per_thread: floats of scratch per thread.
template <class Generate>
void involution_fused_tiles(const float* x, int hidden, float* y, float* scratch, std::size_t per_thread, int batch,
                            int height, int width, int channels, int kernel_size, int stride, int group_channels,
                            const Epilogue& epi, int threads, const Generate& generate) {
  const int ho_n = (height + stride - 1) / stride;
  const int wo_n = (width + stride - 1) / stride;
  const int pad = (kernel_size - 1) / 2;
  const int groups = channels / group_channels;
  const int gkk = groups * kernel_size * kernel_size;
  const InvShape sh{width, channels, kernel_size, kernel_size * kernel_size, group_channels / kLanes};
  const bool vec = group_channels % kLanes == 0;
  const long plane = static_cast<long>(ho_n) * wo_n;
  const long pixels = batch * plane;
  const long tiles = (pixels + kFusedTile - 1) / kFusedTile;
  // per-thread scratch: pooled [tile, C] | hidden [tile, hidden] | kernels [tile, G*K*K] | extra (see kernels.cpp)
  const std::size_t pooled_off = 0;
  const std::size_t hidden_off = pooled_off + (static_cast<std::size_t>(kFusedTile) * channels + 15) / 16 * 16;
  const std::size_t kern_off = hidden_off + (static_cast<std::size_t>(kFusedTile) * hidden + 15) / 16 * 16;
  const std::size_t extra_off = kern_off + (static_cast<std::size_t>(kFusedTile) * gkk + 15) / 16 * 16;
  const double work = static_cast<double>(pixels) * (static_cast<double>(channels) * (hidden + sh.kk) +
                                                      static_cast<double>(hidden) * gkk);
  const long nt = useful_threads(threads < tiles ? threads : static_cast<int>(tiles), work);
  parallel_team(static_cast<int>(nt), [&](int t, int n_threads) {
    float* mine = scratch + static_cast<std::size_t>(t) * per_thread;
    float* pooled = mine + pooled_off;
    float* hid = mine + hidden_off;
    float* kern = mine + kern_off;
    float* extra = mine + extra_off;
    long tlo, thi;
    split_range(tiles, t, n_threads, tlo, thi);
    for (long tile = tlo; tile < thi; ++tile) {
      const long p0 = tile * kFusedTile;
      const int tp = static_cast<int>(pixels - p0 < kFusedTile ? pixels - p0 : kFusedTile);
      // 1) generation input of the tile's pixels: x itself at stride 1 (consecutive NHWC pixels), else avg-pooled
      const float* gin = x + p0 * channels;
      if (stride > 1) {
        for (int i = 0; i < tp; ++i) {
          const long pix = p0 + i;
          const long nb = pix / plane;
          const int ho = static_cast<int>((pix % plane) / wo_n), wo = static_cast<int>(pix % wo_n);
          const int h0 = ho * stride, h1 = imin(h0 + stride, height);
          const int w0 = wo * stride, w1 = imin(w0 + stride, width);
          const float inv = 1.0f / static_cast<float>((h1 - h0) * (w1 - w0));
          float* prow = pooled + static_cast<long>(i) * channels;
          for (int c = 0; c < channels; c += kLanes) {
            const int w = imin(kLanes, channels - c);
            V acc = vzero();
            for (int hh = h0; hh < h1; ++hh) {
              for (int ww = w0; ww < w1; ++ww) {
                acc = vadd(acc, vload_n(x + ((nb * height + hh) * width + ww) * channels + c, w));
              }
            }
            vstore_n(prow + c, vmul(acc, vset1(inv)), w);
          }
        }
        gin = pooled;
      }
      // 2) + 3) the tile's kernels (per-tile GEMMs, kept in cache)
      generate(tp, gin, hid, kern, extra);
      // 4) aggregation of the tile's pixels with their fresh kernels
      auto make = [&](long i) {
        const long pix = p0 + i;
        const int nb = static_cast<int>(pix / plane);
        const int ho = static_cast<int>((pix % plane) / wo_n), wo = static_cast<int>(pix % wo_n);
        InvPixel px;
        px.hi0 = ho * stride - pad;
        px.wi0 = wo * stride - pad;
        px.kh0 = imax(0, -px.hi0);
        px.kh1 = imin(kernel_size, height - px.hi0);
        px.kw0 = imax(0, -px.wi0);
        px.kw1 = imin(kernel_size, width - px.wi0);
        px.ximg = x + static_cast<long>(nb) * height * width * channels;
        px.kpix = kern + i * gkk;
        px.ypix = y + pix * channels;
        return px;
      };
      aggregate_pixels(tp, make, sh, vec, group_channels, stride, epi);
    }
  });
}

void involution_fused(const float* x, const InvolutionGeneration& gen, float* y, float* scratch, int batch,
                      int height, int width, int channels, int kernel_size, int stride, int group_channels,
                      const Epilogue& epi, int threads) {
  const int hidden = gen.hidden;
  const int gkk = channels / group_channels * kernel_size * kernel_size;
  const std::size_t per_thread =
      involution_fused_thread_floats(channels, hidden, channels / group_channels, kernel_size);
  involution_fused_tiles(x, hidden, y, scratch, per_thread, batch, height, width, channels, kernel_size, stride,
                         group_channels, epi, threads,
                         [&](int tp, const float* gin, float* hid, float* kern, float*) {
                           // 2) hidden = relu(gin . reduce + b), 3) kernels = hidden . span + b
                           gemm_nn_any<kFusedTile>(tp, gin, channels, gen.reduce_wt, gen.reduce_b, hid, hidden,
                                                   hidden, channels, true);
                           gemm_nn_any<kFusedTile>(tp, hid, hidden, gen.span_wt, gen.span_b, kern, gkk, gkk, hidden,
                                                   false);
                         });
}

#ifdef CMIR_KERNELS_BF16
// ---------------------------------------------------------------- bf16 generation (avx512_bf16)
// Rows of fp32 -> bf16 (round to nearest even, vcvtne2ps2bf16), each row padded with zeros to kp (even) elements.
inline void rows_to_bf16(const float* a, long lda, int rows, int k, int kp, std::uint16_t* out) {
  for (int i = 0; i < rows; ++i) {
    const float* src = a + i * lda;
    std::uint16_t* dst = out + static_cast<long>(i) * kp;
    for (int c = 0; c < kp; c += 32) {
      const int n_lo = imax(0, imin(16, k - c)), n_hi = imax(0, imin(16, k - c - 16));
      const __m512 lo = _mm512_maskz_loadu_ps(lanes_mask(n_lo), src + c);
      const __m512 hi = _mm512_maskz_loadu_ps(lanes_mask(n_hi), src + c + 16);
      const __m512bh packed = _mm512_cvtne2ps_pbh(hi, lo);  // lanes 0-15 from lo, 16-31 from hi
      const int n = imin(32, kp - c);
      const __mmask32 m = n >= 32 ? static_cast<__mmask32>(0xFFFFFFFFu) : static_cast<__mmask32>((1u << n) - 1u);
      _mm512_mask_storeu_epi16(dst + c, m, reinterpret_cast<const __m512i&>(packed));
    }
  }
}

// out[i*ldo + j] = act(bias[j] + sum_k a[i*kp + k] * w[k][j]) with bf16 a (rows padded to kp, even) and w packed in
// pairs of k (bf16_pack_pairs: element (q, j, r) = w[2q + r][j]): one vdpbf16ps adds two products per output lane,
// summed in fp32. The same lane order for every MR, so a value does not depend on the tile size.
template <int MR>
inline void gemm_bf16_rows(const std::uint16_t* a, int kp, const std::uint16_t* bt, const float* bias, float* out,
                           long ldo, int n, bool relu) {
  const int pairs = kp / 2;
  auto pair_of = [&](int i, int q) {
    std::uint32_t v;
    __builtin_memcpy(&v, a + static_cast<long>(i) * kp + 2 * q, sizeof(v));
    return _mm512_set1_epi32(static_cast<int>(v));
  };
  int j = 0;
  for (; j + kNnNV * 16 <= n; j += kNnNV * 16) {
    __m512 acc[MR][kNnNV];
    for (int v = 0; v < kNnNV; ++v) {
      const __m512 b0 = _mm512_loadu_ps(bias + j + v * 16);
      for (int i = 0; i < MR; ++i) acc[i][v] = b0;
    }
    for (int q = 0; q < pairs; ++q) {
      __m512i b[kNnNV];
      for (int v = 0; v < kNnNV; ++v) b[v] = _mm512_loadu_si512(bt + (static_cast<long>(q) * n + j + v * 16) * 2);
      for (int i = 0; i < MR; ++i) {
        const __m512i av = pair_of(i, q);
        for (int v = 0; v < kNnNV; ++v)
          acc[i][v] = _mm512_dpbf16_ps(acc[i][v], reinterpret_cast<const __m512bh&>(av),
                                       reinterpret_cast<const __m512bh&>(b[v]));
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int v = 0; v < kNnNV; ++v)
        _mm512_storeu_ps(out + i * ldo + j + v * 16, relu ? _mm512_max_ps(_mm512_setzero_ps(), acc[i][v]) : acc[i][v]);
  }
  for (; j < n; j += 16) {  // remaining columns, one (possibly partial) vector at a time
    const int w = imin(16, n - j);
    const __mmask16 m = lanes_mask(w);
    __m512 acc[MR];
    const __m512 b0 = _mm512_maskz_loadu_ps(m, bias + j);
    for (int i = 0; i < MR; ++i) acc[i] = b0;
    for (int q = 0; q < pairs; ++q) {
      const __m512i b = _mm512_maskz_loadu_epi32(m, bt + (static_cast<long>(q) * n + j) * 2);
      for (int i = 0; i < MR; ++i) {
        const __m512i av = pair_of(i, q);
        acc[i] = _mm512_dpbf16_ps(acc[i], reinterpret_cast<const __m512bh&>(av), reinterpret_cast<const __m512bh&>(b));
      }
    }
    for (int i = 0; i < MR; ++i)
      _mm512_mask_storeu_ps(out + i * ldo + j, m, relu ? _mm512_max_ps(_mm512_setzero_ps(), acc[i]) : acc[i]);
  }
}

template <int MR>
inline void gemm_bf16_any(int mr, const std::uint16_t* a, int kp, const std::uint16_t* bt, const float* bias,
                          float* out, long ldo, int n, bool relu) {
  if constexpr (MR > 1) {
    if (mr < MR) return gemm_bf16_any<MR - 1>(mr, a, kp, bt, bias, out, ldo, n, relu);
  }
  gemm_bf16_rows<MR>(a, kp, bt, bias, out, ldo, n, relu);
}

void involution_fused_bf16(const float* x, const InvolutionGenerationBf16& gen, float* y, float* scratch, int batch,
                           int height, int width, int channels, int kernel_size, int stride, int group_channels,
                           const Epilogue& epi, int threads) {
  const int hidden = gen.hidden;
  const int gkk = channels / group_channels * kernel_size * kernel_size;
  const int cp = (channels + 1) / 2 * 2, hp = (hidden + 1) / 2 * 2;
  const std::size_t per_thread =
      involution_fused_bf16_thread_floats(channels, hidden, channels / group_channels, kernel_size);
  involution_fused_tiles(x, hidden, y, scratch, per_thread, batch, height, width, channels, kernel_size, stride,
                         group_channels, epi, threads,
                         [&](int tp, const float* gin, float* hid, float* kern, float* extra) {
                           // extra: the tile's generation input in bf16 [tile, cp] | hidden in bf16 [tile, hp]
                           auto* gin16 = reinterpret_cast<std::uint16_t*>(extra);
                           auto* hid16 = gin16 + static_cast<std::size_t>(kFusedTile) * cp;
                           rows_to_bf16(gin, channels, tp, channels, cp, gin16);
                           gemm_bf16_any<kFusedTile>(tp, gin16, cp, gen.reduce_w, gen.reduce_b, hid, hidden, hidden,
                                                     true);
                           rows_to_bf16(hid, hidden, tp, hidden, hp, hid16);
                           gemm_bf16_any<kFusedTile>(tp, hid16, hp, gen.span_w, gen.span_b, kern, gkk, gkk, false);
                         });
}
#endif  // CMIR_KERNELS_BF16

// ---------------------------------------------------------------- GEMM (torch.nn.Linear form)
// out[i*ldo + j] = bias[j] + sum_k a[i*lda + k] * w[j*ldw + k] for an MR x NR tile. Each element is one vector
// accumulator over k followed by a horizontal sum, so its value does not depend on the tile it falls in.
// pf (may be null): NR rows (stride ldw) to prefetch alongside, the next weight block, so that the weights stream
// from memory ahead of use (they are read once; the activations stay in cache).
template <int MR, int NR>
inline void gemm_tile(const float* a, long lda, const float* w, long ldw, const float* bias, float* out, long ldo,
                      int kdim, const float* pf) {
  V acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = vzero();
  int k = 0;
  for (; k + kLanes <= kdim; k += kLanes) {
    if (pf && k % 16 == 0) {  // one prefetch per 64-byte line
      for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(pf + j * ldw + k), _MM_HINT_T1);
    }
    V b[NR];
    for (int j = 0; j < NR; ++j) b[j] = vload(w + j * ldw + k);
    for (int i = 0; i < MR; ++i) {
      const V av = vload(a + i * lda + k);
      for (int j = 0; j < NR; ++j) acc[i][j] = vfmadd(av, b[j], acc[i][j]);
    }
  }
  if (k < kdim) {
    const int n = kdim - k;
    V b[NR];
    for (int j = 0; j < NR; ++j) b[j] = vload_n(w + j * ldw + k, n);
    for (int i = 0; i < MR; ++i) {
      const V av = vload_n(a + i * lda + k, n);
      for (int j = 0; j < NR; ++j) acc[i][j] = vfmadd(av, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * ldo + j] = vhsum(acc[i][j]) + (bias ? bias[j] : 0.0f);
}

template <int MR, int NR>
inline void gemm_tile_any(int mr, int nr, const float* a, long lda, const float* w, long ldw, const float* bias,
                          float* out, long ldo, int kdim, const float* pf) {
  if constexpr (MR > 1) {
    if (mr < MR) return gemm_tile_any<MR - 1, NR>(mr, nr, a, lda, w, ldw, bias, out, ldo, kdim, pf);
  }
  if constexpr (NR > 1) {
    if (nr < NR) return gemm_tile_any<MR, NR - 1>(mr, nr, a, lda, w, ldw, bias, out, ldo, kdim, pf);
  }
  gemm_tile<MR, NR>(a, lda, w, ldw, bias, out, ldo, kdim, pf);
}

// out[m, n] = a[m, k] . w[n, k]^T + bias[n] (row-major, dense).
struct GemmJob {
  const float* a;
  const float* w;
  const float* bias;
  float* out;
  int m, n, k;
};

// Thread t of n runs its static share of the weight-row blocks of all jobs together (one split, one barrier for
// several GEMMs). Splitting the weight rows means each thread streams its share of the weights once and keeps the
// small activation matrix in cache. f(job, jb, blocks, j0, nr) handles weight rows [j0, j0 + nr) of one job.
template <class Job, class F>
inline void for_weight_blocks(const Job* jobs, int njobs, int t, int nthreads, const F& f) {
  long total = 0;
  for (int q = 0; q < njobs; ++q) total += (jobs[q].n + kGemmNR - 1) / kGemmNR;
  long lo, hi;
  split_range(total, t, nthreads, lo, hi);
  long base = 0;
  for (int q = 0; q < njobs && lo < hi; ++q) {
    const Job& g = jobs[q];
    const long blocks = (g.n + kGemmNR - 1) / kGemmNR;
    const long b0 = lo > base ? lo - base : 0;
    const long b1 = hi - base < blocks ? hi - base : blocks;
    for (long jb = b0; jb < b1; ++jb) {
      const int j0 = static_cast<int>(jb * kGemmNR);
      f(g, jb, blocks, j0, imin(kGemmNR, g.n - j0));
    }
    base += blocks;
  }
}

inline void gemm_jobs(const GemmJob* jobs, int njobs, int t, int nthreads) {
  for_weight_blocks(jobs, njobs, t, nthreads, [](const GemmJob& g, long jb, long blocks, int j0, int nr) {
    const float* wblk = g.w + static_cast<long>(j0) * g.k;
    const float* next =
        jb + 1 < blocks && j0 + 2 * kGemmNR <= g.n ? wblk + static_cast<long>(kGemmNR) * g.k : nullptr;
    for (int i0 = 0; i0 < g.m; i0 += kGemmMR) {
      const int mr = imin(kGemmMR, g.m - i0);
      gemm_tile_any<kGemmMR, kGemmNR>(mr, nr, g.a + static_cast<long>(i0) * g.k, g.k, wblk, g.k,
                                      g.bias ? g.bias + j0 : nullptr, g.out + static_cast<long>(i0) * g.n + j0, g.n,
                                      g.k, i0 == 0 ? next : nullptr);
    }
  });
}

inline float vdot(const float* a, const float* b, int n) {
  V acc = vzero();
  int k = 0;
  for (; k + kLanes <= n; k += kLanes) acc = vfmadd(vload(a + k), vload(b + k), acc);
  if (k < n) acc = vfmadd(vload_n(a + k, n - k), vload_n(b + k, n - k), acc);
  return vhsum(acc);
}

// y[0:n] += s * x[0:n]
inline void vaxpy(float s, const float* x, float* y, int n) {
  const V sv = vset1(s);
  int k = 0;
  for (; k + kLanes <= n; k += kLanes) vstore(y + k, vfmadd(sv, vload(x + k), vload(y + k)));
  if (k < n) vstore_n(y + k, vfmadd(sv, vload_n(x + k, n - k), vload_n(y + k, n - k)), n - k);
}

// ---------------------------------------------------------------- CMAM
// Pointers into one direction's packed weights (export/plugin_schema.json).
struct CmamWeights {
  const float *wq, *bq, *wk, *bk, *wv, *bv, *wo, *bo, *gamma, *beta;
};

inline CmamWeights unpack_cmam(const float* w, int channels, int dim) {
  const long dc = static_cast<long>(dim) * channels;
  CmamWeights r;
  r.wq = w;
  r.bq = r.wq + dc;
  r.wk = r.bq + dim;
  r.bk = r.wk + dc;
  r.wv = r.bk + dim;
  r.bv = r.wv + dc;
  r.wo = r.bv + dim;
  r.bo = r.wo + dc;
  r.gamma = r.bo + channels;
  r.beta = r.gamma + channels;
  return r;
}

// softmax(q k^T * scale) v for query row `idx` = (b, h, i) of one direction; p: `tokens` floats of scratch.
inline void attention_row(const float* q, const float* k, const float* v, float* o, float* p, long idx, int tokens,
                          int dim, int heads, float scale) {
  const int hd = dim / heads;
  const int b = static_cast<int>(idx / (static_cast<long>(heads) * tokens));
  const int h = static_cast<int>((idx / tokens) % heads);
  const int i = static_cast<int>(idx % tokens);
  const long row0 = static_cast<long>(b) * tokens;
  const float* qi = q + (row0 + i) * dim + h * hd;
  float mx = -INFINITY;
  for (int j = 0; j < tokens; ++j) {
    p[j] = vdot(qi, k + (row0 + j) * dim + h * hd, hd) * scale;
    mx = p[j] > mx ? p[j] : mx;
  }
  float sum = 0.0f;
  for (int j = 0; j < tokens; ++j) {
    p[j] = expf(p[j] - mx);
    sum += p[j];
  }
  const float inv = 1.0f / sum;
  float* oi = o + (row0 + i) * dim + h * hd;
  for (int d = 0; d < hd; ++d) oi[d] = 0.0f;
  for (int j = 0; j < tokens; ++j) vaxpy(p[j] * inv, v + (row0 + j) * dim + h * hd, oi, hd);
}

// out = LN(x + y) * gamma + beta over the C channels of one row, biased variance (torch.nn.LayerNorm).
inline void residual_layernorm_row(const float* xr, const float* yr, const float* gamma, const float* beta,
                                   float* orow, int channels, float eps) {
  V s = vzero();
  int c = 0;
  for (; c + kLanes <= channels; c += kLanes) s = vadd(s, vadd(vload(xr + c), vload(yr + c)));
  if (c < channels) s = vadd(s, vadd(vload_n(xr + c, channels - c), vload_n(yr + c, channels - c)));
  const float mean = vhsum(s) / static_cast<float>(channels);
  const V mv = vset1(mean);
  V ss = vzero();
  for (c = 0; c + kLanes <= channels; c += kLanes) {
    const V d = vsub(vadd(vload(xr + c), vload(yr + c)), mv);
    ss = vfmadd(d, d, ss);
  }
  if (c < channels) {
    const int n = channels - c;
    const V d = vkeep_n(vsub(vadd(vload_n(xr + c, n), vload_n(yr + c, n)), mv), n);
    ss = vfmadd(d, d, ss);
  }
  const float rstd = 1.0f / sqrtf(vhsum(ss) / static_cast<float>(channels) + eps);
  const V rv = vset1(rstd);
  for (c = 0; c + kLanes <= channels; c += kLanes) {
    const V d = vmul(vsub(vadd(vload(xr + c), vload(yr + c)), mv), rv);
    vstore(orow + c, vfmadd(d, vload(gamma + c), vload(beta + c)));
  }
  if (c < channels) {
    const int n = channels - c;
    const V d = vmul(vsub(vadd(vload_n(xr + c, n), vload_n(yr + c, n)), mv), rv);
    vstore_n(orow + c, vfmadd(d, vload_n(gamma + c, n), vload_n(beta + c, n)), n);
  }
}

// Both directions in one parallel region, phases separated by barriers: Q/K/V projections (6 GEMMs), attention,
// output projections (2 GEMMs), residual + LayerNorm. Scratch holds one direction's Q/K/V/O per direction half.
// `proj` runs the projections: proj.prepare(t, n) before the Q/K/V GEMMs, proj.qkv(jobs, t, n) and
// proj.out(jobs, t, n) (an fp32 GemmJob list each; the bf16 projector swaps in its own operands), with
// proj.between(t, n) after the attention (it may convert O before the output projections; it ends with a barrier).
template <class Proj>
void cmam_phases(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,
                 float* pv_out, float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps,
                 int threads, Proj& proj) {
  const CmamScratch lay = cmam_scratch_layout(batch, tokens, channels, dim, heads);
  const CmamWeights wa = unpack_cmam(weights_art, channels, dim);
  const CmamWeights wp = unpack_cmam(weights_pv, channels, dim);
  const int m = batch * tokens;
  // Direction 0: art queries pv (weights_art); direction 1: pv queries art (weights_pv). Each direction's Q/K/V/O
  // use half of the scratch blocks q/k/v/o (each block holds 2 * m * dim floats, see cmam_scratch_layout).
  const long md = static_cast<long>(m) * dim;
  float* q[2] = {scratch + lay.q, scratch + lay.q + md};
  float* k[2] = {scratch + lay.k, scratch + lay.k + md};
  float* v[2] = {scratch + lay.v, scratch + lay.v + md};
  float* o[2] = {scratch + lay.o, scratch + lay.o + md};
  float* y[2] = {scratch + lay.y_art, scratch + lay.y_pv};
  const GemmJob qkv[6] = {
      {art, wa.wq, wa.bq, q[0], m, dim, channels}, {pv, wa.wk, wa.bk, k[0], m, dim, channels},
      {pv, wa.wv, wa.bv, v[0], m, dim, channels},  {pv, wp.wq, wp.bq, q[1], m, dim, channels},
      {art, wp.wk, wp.bk, k[1], m, dim, channels}, {art, wp.wv, wp.bv, v[1], m, dim, channels},
  };
  const GemmJob out_proj[2] = {{o[0], wa.wo, wa.bo, y[0], m, channels, dim},
                               {o[1], wp.wo, wp.bo, y[1], m, channels, dim}};
  const float scale = 1.0f / sqrtf(static_cast<float>(dim / heads));
  const long rows_per_dir = static_cast<long>(batch) * heads * tokens;
  parallel_team(threads, [&](int t, int n) {
    proj.prepare(t, n);
    proj.qkv(qkv, t, n);
#pragma omp barrier
    long lo, hi;
    split_range(2 * rows_per_dir, t, n, lo, hi);
    for (long r = lo; r < hi; ++r) {
      const int dir = r < rows_per_dir ? 0 : 1;
      const long idx = r - dir * rows_per_dir;
      attention_row(q[dir], k[dir], v[dir], o[dir], scratch + lay.probs + r * tokens, idx, tokens, dim, heads, scale);
    }
#pragma omp barrier
    proj.between(t, n);
    proj.out(out_proj, t, n);
#pragma omp barrier
    // Outputs are written only now, after every read of art/pv: art_out may be art, pv_out may be pv.
    split_range(2L * m, t, n, lo, hi);
    for (long r = lo; r < hi; ++r) {
      if (r < m) {
        residual_layernorm_row(art + r * channels, y[0] + r * channels, wa.gamma, wa.beta, art_out + r * channels,
                               channels, eps);
      } else {
        const long rr = r - m;
        residual_layernorm_row(pv + rr * channels, y[1] + rr * channels, wp.gamma, wp.beta, pv_out + rr * channels,
                               channels, eps);
      }
    }
  });
}

struct Fp32Projector {
  void prepare(int, int) {}
  void qkv(const GemmJob* jobs, int t, int n) { gemm_jobs(jobs, 6, t, n); }
  void between(int, int) {}
  void out(const GemmJob* jobs, int t, int n) { gemm_jobs(jobs, 2, t, n); }
};

void cmam(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,
          float* pv_out, float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps,
          int threads) {
  Fp32Projector proj;
  cmam_phases(art, pv, weights_art, weights_pv, art_out, pv_out, scratch, batch, tokens, channels, dim, heads, eps,
              threads, proj);
}

#ifdef CMIR_KERNELS_BF16
// bf16 GEMM in the Linear form: out[i, j] = bias[j] + sum_k a[i, k] w[j, k], a and w bf16 rows zero-padded to kp (a
// multiple of 32), one vdpbf16ps per 32 k, fp32 accumulation, horizontal sum at the end (as gemm_tile).
template <int MR, int NR>
inline void gemm_tile_bf16(const std::uint16_t* a, long lda, const std::uint16_t* w, long ldw, const float* bias,
                           float* out, long ldo, int kp, const std::uint16_t* pf) {
  __m512 acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
  for (int k = 0; k < kp; k += 32) {
    if (pf) {  // one 64-byte line per row and step: the next weight block streams in ahead of use
      for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(pf + j * ldw + k), _MM_HINT_T1);
    }
    __m512i b[NR];
    for (int j = 0; j < NR; ++j) b[j] = _mm512_loadu_si512(w + j * ldw + k);
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_loadu_si512(a + i * lda + k);
      for (int j = 0; j < NR; ++j)
        acc[i][j] = _mm512_dpbf16_ps(acc[i][j], reinterpret_cast<const __m512bh&>(av),
                                     reinterpret_cast<const __m512bh&>(b[j]));
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) out[i * ldo + j] = _mm512_reduce_add_ps(acc[i][j]) + (bias ? bias[j] : 0.0f);
}

template <int MR, int NR>
inline void gemm_tile_bf16_any(int mr, int nr, const std::uint16_t* a, long lda, const std::uint16_t* w, long ldw,
                               const float* bias, float* out, long ldo, int kp, const std::uint16_t* pf) {
  if constexpr (MR > 1) {
    if (mr < MR) return gemm_tile_bf16_any<MR - 1, NR>(mr, nr, a, lda, w, ldw, bias, out, ldo, kp, pf);
  }
  if constexpr (NR > 1) {
    if (nr < NR) return gemm_tile_bf16_any<MR, NR - 1>(mr, nr, a, lda, w, ldw, bias, out, ldo, kp, pf);
  }
  gemm_tile_bf16<MR, NR>(a, lda, w, ldw, bias, out, ldo, kp, pf);
}

// A GemmJob's bf16 operands: a [m, kp], w [n, kp] (kp = k rounded up to 32, zero-padded).
struct GemmJobBf16 {
  const std::uint16_t* a;
  const std::uint16_t* w;
  const float* bias;
  float* out;
  int m, n, kp;
};

// The same static split of weight-row blocks as gemm_jobs.
inline void gemm_jobs_bf16(const GemmJobBf16* jobs, int njobs, int t, int nthreads) {
  for_weight_blocks(jobs, njobs, t, nthreads, [](const GemmJobBf16& g, long jb, long blocks, int j0, int nr) {
    const std::uint16_t* wblk = g.w + static_cast<long>(j0) * g.kp;
    const std::uint16_t* next =
        jb + 1 < blocks && j0 + 2 * kGemmNR <= g.n ? wblk + static_cast<long>(kGemmNR) * g.kp : nullptr;
    for (int i0 = 0; i0 < g.m; i0 += kGemmMR) {
      const int mr = imin(kGemmMR, g.m - i0);
      gemm_tile_bf16_any<kGemmMR, kGemmNR>(mr, nr, g.a + static_cast<long>(i0) * g.kp, g.kp, wblk, g.kp,
                                           g.bias ? g.bias + j0 : nullptr, g.out + static_cast<long>(i0) * g.n + j0,
                                           g.n, g.kp, i0 == 0 ? next : nullptr);
    }
  });
}

// CMAM with the eight projections in bf16 (weights packed by cmam_pack_bf16; activations rounded once per phase);
// attention, softmax and LayerNorm stay fp32.
struct Bf16Projector {
  const std::uint16_t* packed[2];  // per direction: wq, wk, wv [dim, cp] then wo [C, dp]
  std::uint16_t *art16, *pv16, *o16;
  const float* art;
  const float* pv;
  const float* o;  // fp32 O of both directions, [2 * m, dim] (contiguous, see cmam_scratch_layout)
  int m, channels, dim, cp, dp;
  void prepare(int t, int n) {
    long lo, hi;
    split_range(2L * m, t, n, lo, hi);
    for (long r = lo; r < hi; ++r) {
      const float* src = r < m ? art + r * channels : pv + (r - m) * channels;
      std::uint16_t* dst = r < m ? art16 + r * cp : pv16 + (r - m) * cp;
      rows_to_bf16(src, channels, 1, channels, cp, dst);
    }
#pragma omp barrier
  }
  void qkv(const GemmJob* jobs, int t, int n) {
    const long dc = static_cast<long>(dim) * cp;
    GemmJobBf16 j[6];
    const std::uint16_t* src[6] = {art16, pv16, pv16, pv16, art16, art16};
    for (int q = 0; q < 6; ++q) {
      const std::uint16_t* w = packed[q / 3] + (q % 3) * dc;
      j[q] = {src[q], w, jobs[q].bias, jobs[q].out, m, dim, cp};
    }
    gemm_jobs_bf16(j, 6, t, n);
  }
  void between(int t, int n) {
    long lo, hi;
    split_range(2L * m, t, n, lo, hi);
    if (lo < hi) rows_to_bf16(o + lo * dim, dim, static_cast<int>(hi - lo), dim, dp, o16 + lo * dp);
#pragma omp barrier
  }
  void out(const GemmJob* jobs, int t, int n) {
    const long wo_off = 3L * dim * cp;
    GemmJobBf16 j[2];
    for (int q = 0; q < 2; ++q)
      j[q] = {o16 + static_cast<long>(q) * m * dp, packed[q] + wo_off, jobs[q].bias, jobs[q].out, m, channels, dp};
    gemm_jobs_bf16(j, 2, t, n);
  }
};

void cmam_bf16(const float* art, const float* pv, const float* weights_art, const float* weights_pv,
               const std::uint16_t* packed_art, const std::uint16_t* packed_pv, float* art_out, float* pv_out,
               float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps, int threads) {
  const CmamScratch lay = cmam_scratch_layout(batch, tokens, channels, dim, heads);
  const int m = batch * tokens;
  const int cp = (channels + 31) / 32 * 32, dp = (dim + 31) / 32 * 32;
  // past the fp32 layout: art and pv rows in bf16 [m, cp] each, then O of both directions in bf16 [2m, dp]
  auto* art16 = reinterpret_cast<std::uint16_t*>(scratch + lay.total);
  std::uint16_t* pv16 = art16 + static_cast<std::size_t>(m) * cp;
  std::uint16_t* o16 = pv16 + static_cast<std::size_t>(m) * cp;
  Bf16Projector proj{{packed_art, packed_pv}, art16, pv16, o16, art, pv, scratch + lay.o, m, channels, dim, cp, dp};
  cmam_phases(art, pv, weights_art, weights_pv, art_out, pv_out, scratch, batch, tokens, channels, dim, heads, eps,
              threads, proj);
}
#endif  // CMIR_KERNELS_BF16

// ---------------------------------------------------------------- spatial attention
inline void channel_stats(const float* m, int channels, V& sum, V& mx) {
  int c = 0;
  for (; c + kLanes <= channels; c += kLanes) {
    const V v = vload(m + c);
    sum = vadd(sum, v);
    mx = vmax(mx, v);
  }
  if (c < channels) {
    const int n = channels - c;
    sum = vadd(sum, vload_n(m + c, n));
    mx = vmax(mx, vload_n_fill(m + c, n, -INFINITY));
  }
}

inline void scale_row(const float* in, float* out, float s, int channels) {
  const V sv = vset1(s);
  int c = 0;
  for (; c + kLanes <= channels; c += kLanes) vstore(out + c, vmul(vload(in + c), sv));
  if (c < channels) vstore_n(out + c, vmul(vload_n(in + c, channels - c), sv), channels - c);
}

// One parallel region, one barrier: per-pixel [mean, max] statistics -> barrier -> per pixel: KxK conv of the
// statistics + sigmoid -> att, and the two products (a pixel's products need only its own att, computed by the same
// thread, so no second barrier).
void spatial_attention(const float* a, const float* p, const float* weight, float bias, int kernel_size, float* att,
                       float* a_out, float* p_out, float* scratch, int batch, int height, int width, int channels,
                       int threads) {
  const long hw = static_cast<long>(height) * width;
  const long pixels = batch * hw;
  const float inv_n = 1.0f / static_cast<float>(p ? 2L * channels : channels);
  const int pad = (kernel_size - 1) / 2;
  const int kk = kernel_size * kernel_size;
  const double work = static_cast<double>(pixels) * (p ? 4.0 : 2.0) * channels;
  parallel_team(useful_threads(threads, work), [&](int t, int n) {
    long lo, hi;
    split_range(pixels, t, n, lo, hi);
    for (long pix = lo; pix < hi; ++pix) {
      V sum = vzero();
      V mx = vset1(-INFINITY);
      channel_stats(a + pix * channels, channels, sum, mx);
      if (p) channel_stats(p + pix * channels, channels, sum, mx);
      scratch[2 * pix] = vhsum(sum) * inv_n;
      scratch[2 * pix + 1] = vhmax(mx);
    }
#pragma omp barrier
    for (long pix = lo; pix < hi; ++pix) {
      const long nb = pix / hw;
      const int h = static_cast<int>((pix % hw) / width);
      const int w = static_cast<int>(pix % width);
      const float* st = scratch + 2 * nb * hw;
      float mean_acc = 0.0f, max_acc = 0.0f;
      const int kh0 = imax(0, pad - h), kh1 = imin(kernel_size, height + pad - h);
      const int kw0 = imax(0, pad - w), kw1 = imin(kernel_size, width + pad - w);
      for (int kh = kh0; kh < kh1; ++kh) {
        const float* srow = st + 2 * (static_cast<long>(h + kh - pad) * width + (w - pad));
        for (int kw = kw0; kw < kw1; ++kw) {
          mean_acc += weight[kh * kernel_size + kw] * srow[2 * kw];
          max_acc += weight[kk + kh * kernel_size + kw] * srow[2 * kw + 1];
        }
      }
      const float z = mean_acc + max_acc + bias;
      const float s = 1.0f / (1.0f + expf(-z));
      att[pix] = s;
      scale_row(a + pix * channels, a_out + pix * channels, s, channels);
      if (p) scale_row(p + pix * channels, p_out + pix * channels, s, channels);
    }
  });
}

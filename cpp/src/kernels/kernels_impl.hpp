// NOT an ordinary header (no include guard, on purpose): the body of the fast CPU kernels, written once against a
// small vector abstraction and compiled once per instruction set. Include it only from kernels_avx512.cpp and
// kernels_avx2.cpp, inside namespace cmir::cpu::detail::<isa>, after they define:
//   V (vector of kLanes floats), kLanes, kInvBlock (involution accumulators), kGemmMR/kGemmNR (GEMM tile),
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
  for (int j = 0; j < NB; ++j) {
    V r = acc[j];
    const int c = c0 + j * kLanes;
    if (epi.scale) r = vmul(r, vload(epi.scale + c));
    if (epi.shift) r = vadd(r, vload(epi.shift + c));
    if (epi.relu) r = vmax(vzero(), r);  // operand order keeps NaN (max returns the 2nd on NaN)
    vstore(px.ypix + c, r);
  }
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
    // (n, ho, wo) of pixel lo, then stepped incrementally (no divisions per pixel)
    int n = static_cast<int>(lo / plane);
    int ho = static_cast<int>((lo % plane) / wo_n);
    int wo = static_cast<int>(lo % wo_n);
    for (long pix = lo; pix < hi; ++pix) {
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
      if (!vec) {
        involution_pixel_scalar(px, sh, group_channels, epi);
      } else if (sh.vpg == 1) {
        involution_pixel<1>(px, sh, epi);
      } else if (sh.vpg == 2) {
        involution_pixel<2>(px, sh, epi);
      } else {
        involution_pixel<0>(px, sh, epi);
      }
      if (++wo == wo_n) {
        wo = 0;
        if (++ho == ho_n) {
          ho = 0;
          ++n;
        }
      }
    }
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

void involution_fused(const float* x, const InvolutionGeneration& gen, float* y, float* scratch, int batch,
                      int height, int width, int channels, int kernel_size, int stride, int group_channels,
                      const Epilogue& epi, int threads) {
  const int ho_n = (height + stride - 1) / stride;
  const int wo_n = (width + stride - 1) / stride;
  const int pad = (kernel_size - 1) / 2;
  const int groups = channels / group_channels;
  const int gkk = groups * kernel_size * kernel_size;
  const int hidden = gen.hidden;
  const InvShape sh{width, channels, kernel_size, kernel_size * kernel_size, group_channels / kLanes};
  const bool vec = group_channels % kLanes == 0;
  const long plane = static_cast<long>(ho_n) * wo_n;
  const long pixels = batch * plane;
  const long tiles = (pixels + kFusedTile - 1) / kFusedTile;
  const std::size_t per_thread = involution_fused_thread_floats(channels, hidden, groups, kernel_size);
  // per-thread scratch: pooled [tile, C] | hidden [tile, hidden] | kernels [tile, G*K*K] (see kernels.cpp)
  const std::size_t pooled_off = 0;
  const std::size_t hidden_off = pooled_off + (static_cast<std::size_t>(kFusedTile) * channels + 15) / 16 * 16;
  const std::size_t kern_off = hidden_off + (static_cast<std::size_t>(kFusedTile) * hidden + 15) / 16 * 16;
  const double work = static_cast<double>(pixels) * (static_cast<double>(channels) * (hidden + sh.kk) +
                                                      static_cast<double>(hidden) * gkk);
  const long nt = useful_threads(threads < tiles ? threads : static_cast<int>(tiles), work);
  parallel_team(static_cast<int>(nt), [&](int t, int n_threads) {
    float* mine = scratch + static_cast<std::size_t>(t) * per_thread;
    float* pooled = mine + pooled_off;
    float* hid = mine + hidden_off;
    float* kern = mine + kern_off;
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
      // 2) hidden = relu(gin . reduce + b), 3) kernels = hidden . span + b   (per-tile GEMMs, kept in cache)
      gemm_nn_any<kFusedTile>(tp, gin, channels, gen.reduce_wt, gen.reduce_b, hid, hidden, hidden, channels, true);
      gemm_nn_any<kFusedTile>(tp, hid, hidden, gen.span_wt, gen.span_b, kern, gkk, gkk, hidden, false);
      // 4) aggregation of the tile's pixels with their fresh kernels
      for (int i = 0; i < tp; ++i) {
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
        px.kpix = kern + static_cast<long>(i) * gkk;
        px.ypix = y + pix * channels;
        if (!vec) {
          involution_pixel_scalar(px, sh, group_channels, epi);
        } else if (sh.vpg == 1) {
          involution_pixel<1>(px, sh, epi);
        } else if (sh.vpg == 2) {
          involution_pixel<2>(px, sh, epi);
        } else {
          involution_pixel<0>(px, sh, epi);
        }
      }
    }
  });
}

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
// small activation matrix in cache.
inline void gemm_jobs(const GemmJob* jobs, int njobs, int t, int nthreads) {
  long total = 0;
  for (int q = 0; q < njobs; ++q) total += (jobs[q].n + kGemmNR - 1) / kGemmNR;
  long lo, hi;
  split_range(total, t, nthreads, lo, hi);
  long base = 0;
  for (int q = 0; q < njobs && lo < hi; ++q) {
    const GemmJob& g = jobs[q];
    const long blocks = (g.n + kGemmNR - 1) / kGemmNR;
    const long b0 = lo > base ? lo - base : 0;
    const long b1 = hi - base < blocks ? hi - base : blocks;
    for (long jb = b0; jb < b1; ++jb) {
      const int j0 = static_cast<int>(jb * kGemmNR);
      const int nr = imin(kGemmNR, g.n - j0);
      const float* wblk = g.w + static_cast<long>(j0) * g.k;
      const float* next = jb + 1 < blocks && j0 + 2 * kGemmNR <= g.n ? wblk + static_cast<long>(kGemmNR) * g.k
                                                                      : nullptr;
      for (int i0 = 0; i0 < g.m; i0 += kGemmMR) {
        const int mr = imin(kGemmMR, g.m - i0);
        gemm_tile_any<kGemmMR, kGemmNR>(mr, nr, g.a + static_cast<long>(i0) * g.k, g.k, wblk, g.k,
                                        g.bias ? g.bias + j0 : nullptr, g.out + static_cast<long>(i0) * g.n + j0, g.n,
                                        g.k, i0 == 0 ? next : nullptr);
      }
    }
    base += blocks;
  }
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

// Both directions in one parallel region, four phases separated by barriers: Q/K/V projections (6 GEMMs), attention,
// output projections (2 GEMMs), residual + LayerNorm. Scratch holds one direction's Q/K/V/O per direction half.
void cmam(const float* art, const float* pv, const float* weights_art, const float* weights_pv, float* art_out,
          float* pv_out, float* scratch, int batch, int tokens, int channels, int dim, int heads, float eps,
          int threads) {
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
    gemm_jobs(qkv, 6, t, n);
#pragma omp barrier
    long lo, hi;
    split_range(2 * rows_per_dir, t, n, lo, hi);
    for (long r = lo; r < hi; ++r) {
      const int dir = r < rows_per_dir ? 0 : 1;
      const long idx = r - dir * rows_per_dir;
      attention_row(q[dir], k[dir], v[dir], o[dir], scratch + lay.probs + r * tokens, idx, tokens, dim, heads, scale);
    }
#pragma omp barrier
    gemm_jobs(out_proj, 2, t, n);
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

// Involution forward on the GPU: aggregation (plain, with a BN/ReLU epilogue) and fused generation + aggregation.
// Design (see cuda/README.md): one block = one (image, group, channel chunk, output tile); each thread computes two
// output pixels one above the other, whose K*K weights live in registers for the whole group (loaded once, reused by
// every channel of the group); the channels' input tiles plus their (K-1)/2 halo are staged in shared memory once
// (fp16/bf16 as packed pairs of channels) and read from there, double-buffered: the next channels' loads are in
// flight while the current ones are computed. All arithmetic fp32.
#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "dtype.cuh"
#include "involution.cuh"
#include "mma_sync.cuh"

namespace {

using cmir_cuda::ceil_div;
using cmir_cuda::from_bits;
using cmir_cuda::from_f32;
using cmir_cuda::ldg_f32;
using cmir_cuda::to_bits;
using cmir_cuda::to_f32;

constexpr int kMaxThreads = 256;
constexpr int kRows = 2;         // output rows per thread: at stride 1, K+1 staged rows feed 2 x K*K FMAs
constexpr int kPrefetch = 16;    // staged words per thread and step held in registers (the prefetch path)
constexpr int kMaxCps = 4;       // words per slice and step: 4 x 2 x 49 (fp32) or 4 x 4 x 49 (fp16/bf16) FMAs
constexpr int kMinBlocks = 1;    // 2 x 49 weights in registers: the compiler may use up to 255 (no spills)
constexpr int kMaxTileW = 32;
constexpr int kMaxTileH = 64;
constexpr size_t kSmemLimit = 48 * 1024;  // default dynamic shared memory without opt-in

struct InvGeom {
  int B, C, H, W, Ho, Wo, K, stride, gc, G;
  int tile_h, tile_w, tiles_w, tiles;  // output tile and the number of tiles per image
  int in_h, in_w;                      // haloed input tile
  int slices;                          // words (channels or channel pairs) processed side by side in one block
  int cchunks, chunk_words;            // chunks per group (split over blocks) and shared-memory words per chunk
  int cps;                             // words per slice and pipeline step (a step stages slices * cps words)
  int pitch, plane;                    // shared-memory row pitch and plane stride (32-bit words), bank-padded
  int prefetch;                        // 1: a step's loads fit kPrefetch registers per thread
  const float* scale;                  // epilogue (nullable)
  const float* shift;
  int relu;
};

template <typename T, typename Geom>
__device__ __forceinline__ T epilogue(float acc, const Geom& g, int c) {
  if (g.scale != nullptr) acc *= __ldg(g.scale + c);
  if (g.shift != nullptr) acc += __ldg(g.shift + c);
  if (g.relu) acc = fmaxf(acc, 0.f);
  return from_f32<T>(acc);
}

// Stage one channel's haloed input tile (zero outside the image) into shared memory as fp32 (the fused kernel).
template <typename T>
__device__ __forceinline__ void load_tile(float* xs, const T* __restrict__ xc, const InvGeom& g, int ih0, int iw0,
                                          int first, int step) {
  const int n = g.in_h * g.in_w;
  for (int i = first; i < n; i += step) {
    const int r = i / g.in_w;
    const int q = i - r * g.in_w;
    const int ih = ih0 + r, iw = iw0 + q;
    xs[i] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? ldg_f32(xc + static_cast<size_t>(ih) * g.W + iw) : 0.f;
  }
}

// The 32-bit shared-memory word of the plain kernel's staged input: one fp32 channel, or two neighbouring channels of
// fp16/bf16 packed in their own format (channel c in the low half, c + 1 in the high half). One shared load then
// feeds both channels (half the shared-memory wavefronts per FMA), the values stay exact and are widened to fp32
// where they are used. `load` reads the word of channel p (and p + cstride when `hi`, else a zero high half).
template <typename T>
struct Stage {  // fp16 / bf16: two channels per word, in their own 16-bit format
  using W = uint32_t;
  static constexpr int kCh = 2;
  static __device__ __forceinline__ W load(const T* p, size_t cstride, bool hi) {
    const uint32_t lo = to_bits(__ldg(p));
    return hi ? lo | (static_cast<uint32_t>(to_bits(__ldg(p + cstride))) << 16) : lo;
  }
  static __device__ __forceinline__ void widen(W w, float (&v)[kCh]) {
    v[0] = to_f32(from_bits<T>(static_cast<unsigned short>(w & 0xffffu)));
    v[1] = to_f32(from_bits<T>(static_cast<unsigned short>(w >> 16)));
  }
};
template <>
struct Stage<float> {
  using W = float;
  static constexpr int kCh = 1;
  static __device__ __forceinline__ W load(const float* p, size_t, bool) { return __ldg(p); }
  static __device__ __forceinline__ void widen(W w, float (&v)[kCh]) { v[0] = w; }
};

// Direct staging of one step (its `slots` words, each the haloed input window of the tile, zero outside the image)
// into a shared-memory buffer laid out [slot][in_h][pitch] with plane stride `plane`. Word `slot` holds channels
// slot * kCh (+ 1) of `xs`; `nch` channels remain from xs on (a missing high channel of an odd count stages zero).
// The pitch and plane are padded so that the 32 lanes of a warp reading one tap hit 32 different banks (stride 1).
template <typename T>
__device__ __forceinline__ void stage_direct(typename Stage<T>::W* buf, const T* __restrict__ xs, const InvGeom& g,
                                             int slots, int nch, int ih0, int iw0) {
  using S = Stage<T>;
  const int in_px = g.in_h * g.in_w;
  const size_t in_hw = static_cast<size_t>(g.H) * g.W;
  for (int i = threadIdx.x; i < slots * in_px; i += blockDim.x) {
    const int slot = i / in_px;
    const int rem = i - slot * in_px;
    const int r = rem / g.in_w;
    const int q = rem - r * g.in_w;
    const int iw = iw0 + q, ih = ih0 + r;
    const bool inside = ih >= 0 && ih < g.H && iw >= 0 && iw < g.W;
    buf[slot * g.plane + r * g.pitch + q] =
        inside ? S::load(xs + slot * S::kCh * in_hw + static_cast<size_t>(ih) * g.W + iw, in_hw,
                         slot * S::kCh + 1 < nch)
               : typename S::W(0);
  }
}

// Register staging (the prefetch path): thread t owns column q = t % in_w of the step's rows fr = t / in_w + k * R
// (k < kPrefetch, R = threads / in_w; the rows of all slots one after another, slot = fr / in_h), so its positions
// follow from additions, without per-element divisions or stored offsets (registers are the occupancy limit).
struct StageWalk {
  int q, slot0, r0, R;
  bool on;  // this thread stages (t < R * in_w) and its column lies inside the image
  bool col; // the column lies inside the image (else it stages zeros)
};

__device__ __forceinline__ void walk_next(int& slot, int& r, int R, int in_h) {
  r += R;
  while (r >= in_h) {
    r -= in_h;
    ++slot;
  }
}

template <typename T>
__device__ __forceinline__ void stage_load(typename Stage<T>::W (&pre)[kPrefetch], const T* __restrict__ xs,
                                           const InvGeom& g, const StageWalk& w, int slots, int nch, int ih0,
                                           int iw0) {
  using S = Stage<T>;
  const size_t in_hw = static_cast<size_t>(g.H) * g.W;
  int slot = w.slot0, r = w.r0;
#pragma unroll
  for (int k = 0; k < kPrefetch; ++k) {
    const int ih = ih0 + r;
    pre[k] = (w.col && slot < slots && ih >= 0 && ih < g.H)
                 ? S::load(xs + slot * S::kCh * in_hw + static_cast<size_t>(ih) * g.W + iw0 + w.q, in_hw,
                           slot * S::kCh + 1 < nch)
                 : typename S::W(0);
    walk_next(slot, r, w.R, g.in_h);
  }
}

template <typename W>
__device__ __forceinline__ void stage_store(W* buf, const W (&pre)[kPrefetch], const InvGeom& g, const StageWalk& w,
                                            int slots) {
  if (!w.on) return;
  int slot = w.slot0, r = w.r0;
#pragma unroll
  for (int k = 0; k < kPrefetch; ++k) {
    if (slot < slots) buf[slot * g.plane + r * g.pitch + w.q] = pre[k];
    walk_next(slot, r, w.R, g.in_h);
  }
}

// KS > 0: kernel size known at compile time, the K*K weights of the thread's two pixels in registers. KS == 0: any
// odd K, weights re-read from global memory (L1-resident) for each channel.
//
// Each thread computes the pixels (oh, ow) and (oh + 1, ow) of its tile. At stride 1 they share K - 1 of their K
// input rows: the thread walks the K + 1 rows of the window once, and each staged word it loads feeds both pixels
// (and, for fp16/bf16, both channels of the pair): (K + 1) * K shared loads per 2 x K*K x kCh FMAs. Other strides
// read each pixel's rows on their own.
//
// Pipeline (one __syncthreads per step of slices * cps words, two shared-memory buffers): while step s is computed
// from buffer s % 2, the global loads of step s + 1 are already in flight — in registers (kPrefetch per thread) when
// they fit, else written straight into buffer (s + 1) % 2. Buffer (s + 1) % 2 was last read in step s - 1, which
// every thread finished before the barrier of step s.
template <typename T, int KS>
__global__ void __launch_bounds__(kMaxThreads, kMinBlocks)
    involution_fwd(const T* __restrict__ x, const T* __restrict__ wk, T* __restrict__ y, InvGeom g) {
  using S = Stage<T>;
  using W = typename S::W;
  constexpr int kCh = S::kCh;
  CMIR_DYNAMIC_SHARED(float, smem_raw);
  W* const smem = reinterpret_cast<W*>(smem_raw);
  const int K = KS > 0 ? KS : g.K;
  const int KK = K * K;
  int bid = blockIdx.x;
  const int tile = bid % g.tiles;
  bid /= g.tiles;
  const int chunk = bid % g.cchunks;
  bid /= g.cchunks;
  const int grp = bid % g.G;
  const int n = bid / g.G;

  const int tid = threadIdx.x;
  const int tpx = g.tile_w * (g.tile_h / kRows);  // threads per slice (the tile height is a multiple of kRows)
  const int pix = tid % tpx;
  const int slice = tid / tpx;
  const int ty = (pix / g.tile_w) * kRows, tx = pix % g.tile_w;
  const int oh0 = (tile / g.tiles_w) * g.tile_h, ow0 = (tile % g.tiles_w) * g.tile_w;
  const int oh = oh0 + ty, ow = ow0 + tx;
  const bool active = oh < g.Ho && ow < g.Wo;     // the thread's first pixel
  const bool active1 = active && oh + 1 < g.Ho;   // and the one below it
  const int pad = (K - 1) / 2;
  const int ih0 = oh0 * g.stride - pad, iw0 = ow0 * g.stride - pad;
  const size_t out_hw = static_cast<size_t>(g.Ho) * g.Wo;
  const size_t in_hw = static_cast<size_t>(g.H) * g.W;
  const int slots = g.slices * g.cps;  // words per step
  const int buf_elems = slots * g.plane;
  const int steps = g.chunk_words / slots;  // the launcher makes slots divide chunk_words
  const int ch0 = chunk * g.chunk_words * kCh;  // the chunk's first channel within the group
  const int chunk_ch = min(g.gc - ch0, g.chunk_words * kCh);  // channels of the chunk (an odd count: last word half)
  const int c_begin = grp * g.gc + ch0;
  const T* xblock = x + (static_cast<size_t>(n) * g.C + c_begin) * in_hw;

  StageWalk walk{};
  walk.R = static_cast<int>(blockDim.x) / g.in_w;  // >= 1 on the prefetch path (plan_steps)
  walk.q = tid % g.in_w;
  const int fr0 = tid / g.in_w;
  walk.slot0 = fr0 / g.in_h;
  walk.r0 = fr0 - walk.slot0 * g.in_h;
  walk.on = tid < walk.R * g.in_w;
  walk.col = walk.on && iw0 + walk.q >= 0 && iw0 + walk.q < g.W;
  if (!walk.on) walk.slot0 = slots;  // stages nothing

  // Step 0's loads first, then the weights': both in flight together.
  W pre[kPrefetch];
  if (g.prefetch) {
    stage_load(pre, xblock, g, walk, slots, chunk_ch, ih0, iw0);
  } else {
    stage_direct(smem, xblock, g, slots, chunk_ch, ih0, iw0);
  }
  const T* wbase0 = wk + (static_cast<size_t>(n) * g.G + grp) * KK * out_hw +
                    (active ? static_cast<size_t>(oh) * g.Wo + ow : 0);
  const T* wbase1 = wbase0 + (active1 ? g.Wo : 0);
  float wr0[KS > 0 ? KS * KS : 1];
  float wr1[KS > 0 ? KS * KS : 1];
  if constexpr (KS > 0) {
#pragma unroll
    for (int k = 0; k < KS * KS; ++k) {
      wr0[k] = active ? ldg_f32(wbase0 + k * out_hw) : 0.f;
      wr1[k] = active1 ? ldg_f32(wbase1 + k * out_hw) : 0.f;
    }
  }

  // Every thread runs the same number of steps, so the barrier is uniform.
  for (int st = 0; st < steps; ++st) {
    W* buf = smem + (st & 1) * buf_elems;
    if (g.prefetch) stage_store(buf, pre, g, walk, slots);
    __syncthreads();  // buffer st % 2 complete; buffer (st + 1) % 2 no longer read (step st - 1 done everywhere)
    if (st + 1 < steps) {
      const T* xnext = xblock + static_cast<size_t>(st + 1) * slots * kCh * in_hw;
      const int nnext = chunk_ch - (st + 1) * slots * kCh;
      if (g.prefetch) {
        stage_load(pre, xnext, g, walk, slots, nnext, ih0, iw0);
      } else {
        stage_direct(smem + ((st + 1) & 1) * buf_elems, xnext, g, slots, nnext, ih0, iw0);
      }
    }
    if (!active) continue;
    for (int j = 0; j < g.cps; ++j) {
      const int slot = j * g.slices + slice;  // lanes of one warp read neighbouring planes: distinct banks
      const W* xp = buf + slot * g.plane + ty * g.stride * g.pitch + tx * g.stride;
      float acc0[kCh], acc1[kCh];
#pragma unroll
      for (int h = 0; h < kCh; ++h) acc0[h] = acc1[h] = 0.f;
      float v[kCh];
      if constexpr (KS > 0) {
        if (g.stride == 1) {
          // window row r: tap row r of the first pixel (r < K) and tap row r - 1 of the second (r >= 1)
#pragma unroll
          for (int r = 0; r <= KS; ++r) {
#pragma unroll
            for (int kw = 0; kw < KS; ++kw) {
              S::widen(xp[r * g.pitch + kw], v);
#pragma unroll
              for (int h = 0; h < kCh; ++h) {
                if (r < KS) acc0[h] = fmaf(wr0[r * KS + kw], v[h], acc0[h]);
                if (r >= 1) acc1[h] = fmaf(wr1[(r - 1) * KS + kw], v[h], acc1[h]);
              }
            }
          }
        } else {
          const W* xp1 = xp + g.stride * g.pitch;  // the second pixel's window starts `stride` rows lower
#pragma unroll
          for (int kh = 0; kh < KS; ++kh) {
#pragma unroll
            for (int kw = 0; kw < KS; ++kw) {
              S::widen(xp[kh * g.pitch + kw], v);
#pragma unroll
              for (int h = 0; h < kCh; ++h) acc0[h] = fmaf(wr0[kh * KS + kw], v[h], acc0[h]);
              S::widen(xp1[kh * g.pitch + kw], v);
#pragma unroll
              for (int h = 0; h < kCh; ++h) acc1[h] = fmaf(wr1[kh * KS + kw], v[h], acc1[h]);
            }
          }
        }
      } else {
        const W* xp1 = xp + g.stride * g.pitch;
        for (int kh = 0; kh < K; ++kh) {
          for (int kw = 0; kw < K; ++kw) {
            const size_t t = static_cast<size_t>(kh * K + kw) * out_hw;
            const float a = ldg_f32(wbase0 + t);
            S::widen(xp[kh * g.pitch + kw], v);
#pragma unroll
            for (int h = 0; h < kCh; ++h) acc0[h] = fmaf(a, v[h], acc0[h]);
            if (active1) {
              const float b = ldg_f32(wbase1 + t);
              S::widen(xp1[kh * g.pitch + kw], v);
#pragma unroll
              for (int h = 0; h < kCh; ++h) acc1[h] = fmaf(b, v[h], acc1[h]);
            }
          }
        }
      }
      const int cl = (st * slots + slot) * kCh;  // the word's first channel within the chunk
      T* yp = y + (static_cast<size_t>(n) * g.C + c_begin + cl) * out_hw + static_cast<size_t>(oh) * g.Wo + ow;
#pragma unroll
      for (int h = 0; h < kCh; ++h) {
        if (cl + h >= chunk_ch) break;  // the missing high channel of an odd count
        const int c = c_begin + cl + h;
        yp[h * out_hw] = epilogue<T>(acc0[h], g, c);
        if (active1) yp[h * out_hw + g.Wo] = epilogue<T>(acc1[h], g, c);
      }
    }
  }
}

// ---------------------------------------------------------------- tensor-core aggregation (fp16/bf16, stride 1)
// One block = (image, group, tile of up to kMmaSegs x 8 columns and kMmaRows rows); warp s owns the tile's 8-column
// segment s in every row. For one output row and one tap row r, a segment's 8 outputs x 16 channels are one
// m16n8k16 MMA:  Y[ch, n] += X[ch, k] * Band[k, n]  over k = 16 input columns starting `pad` left of the segment, with
// Band[k, n] = weight(pixel n, tap (r, k - n)), zero outside 0..K-1 (at K = 7, 7 of each column's 16 entries).
// A (channels x columns of one input row) comes from the staged tile by ldmatrix and feeds the MMAs of every output
// row whose window contains that input row (up to K of them). B is each lane's own pixel: lane (group, t) holds
// Band rows 2t, 2t+1 (b[0]) and 2t+8, 2t+9 (b[1]) of column `group`, i.e. taps 2t - group (+1) or (+8, +9), of which
// at most one pair is inside 0..K-1. The weights are staged per pixel as [j][tap row] words, word j holding taps
// 2j - s and 2j + 1 - s (s = the column's parity), so a lane's pair is always one aligned word and two 16-byte
// loads give it all K tap rows. fp32 accumulation. Non-finite inputs: a band zero times inf is NaN, so an inf input
// reaches the outputs of its row segment's neighbours too (the CUDA-core kernel multiplies only window taps).
constexpr int kMmaRows = 14;     // output rows per tile (each warp computes all of them for its segment)
constexpr int kMmaSegs = 4;      // 8-column segments per tile (tile width <= 32), one warp each
constexpr int kMmaTapSlots = 8;  // tap-row slots per (pixel, j) word group: two 16-byte loads
constexpr int kXBatch = 64;       // staged input elements per thread loaded before they are stored
constexpr size_t kMmaSmemMax = 112 * 1024;  // two blocks per SM (227 KiB, 1 KiB reserved each)

struct MmaGeom {
  InvGeom base;  // the op's sizes and epilogue (its CUDA-core tile fields unused)
  int segs, tile_h, tiles_w, tiles;
  int in_h;     // staged input rows: tile_h + K - 1
  int x_pitch;  // halves per staged input row: segs * 8 + 8 (segment s reads columns 8s .. 8s + 15)
  int x_plane;  // halves per staged channel: in_h * x_pitch rounded up to an odd number of 16-byte units, so the
                // 8 channels one ldmatrix matrix reads lie in 8 different bank quads
  int w_words;  // 32-bit words per pixel of the staged weights: J * kMmaTapSlots + 4 (an odd number of 16-byte units:
                // 8 neighbouring pixels' 16-byte loads and stores hit 8 different bank quads)
  int w_half;      // slot of the first odd-column pixel's weights: (tile pixels / 2) rounded up to odd
  int w_pairs;     // even width and a 4-byte aligned kernel tensor: a pixel pair's tap as one 32-bit load
  int pair_store;  // even width and a 4-byte aligned y: two neighbouring outputs as one 32-bit store
};

template <typename T, int KS>
__global__ void __launch_bounds__(kMmaSegs * 32, 2)
    involution_mma_fwd(const T* __restrict__ x, const T* __restrict__ wk, T* __restrict__ y, MmaGeom m) {
  const InvGeom& g = m.base;
  constexpr int kJ = (KS + 2) / 2;  // words per tap row: KS taps shifted by the column parity
  constexpr int kPad = (KS - 1) / 2;
  constexpr int kKK = KS * KS;
  CMIR_DYNAMIC_SHARED(float, smem_raw);
  uint16_t* const xs = reinterpret_cast<uint16_t*>(smem_raw);  // [gc][in_h][x_pitch], plane x_plane
  uint32_t* const ws = reinterpret_cast<uint32_t*>(xs + static_cast<size_t>(g.gc) * m.x_plane);  // [pixel][w_words]
  int bid = blockIdx.x;
  const int tile = bid % m.tiles;
  bid /= m.tiles;
  const int grp = bid % g.G;
  const int n = bid / g.G;
  const int tw = m.segs * 8;
  const int oh0 = (tile / m.tiles_w) * m.tile_h, ow0 = (tile % m.tiles_w) * tw;
  const int ih0 = oh0 - kPad, iw0 = ow0 - kPad;
  const size_t in_hw = static_cast<size_t>(g.H) * g.W, out_hw = static_cast<size_t>(g.Ho) * g.Wo;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int nwarps = static_cast<int>(blockDim.x) >> 5;  // = segs

  // 1) Staging, in rounds that each put one batch of input loads and one pass of weight loads in flight together
  //    before either is stored (a 14-row tile of 16 channels in two round trips).
  //    Input: the group's haloed rows, zero outside the image, as one flat walk over (channel, row, column): lanes
  //    along the columns (coalesced), positions advanced by additions, kXBatch loads per thread per round.
  //    Weights: word (j, r) of a pixel = taps (r, 2j - s) [low half] and (r, 2j + 1 - s) [high half], zero for taps
  //    outside 0..K-1, rows r >= K and pixels outside the map. Each thread owns two neighbouring pixels (an even and
  //    an odd column; a round covers 8 tile rows): every tap plane is one coalesced 32-bit load (two 16-bit ones
  //    where the pair is not 4-byte aligned in the kernel tensor), the words are paired by parity in registers and
  //    written 4 tap rows (16 bytes) per store. Pixel p's words live at slot p / 2 (even) or w_half + p / 2 (odd;
  //    w_half odd), so the 16-byte stores of 8 lanes and the band loads of 8 lanes both hit 8 different bank quads.
  const T* xg = x + (static_cast<size_t>(n) * g.C + static_cast<size_t>(grp) * g.gc) * in_hw;
  const T* wg = wk + (static_cast<size_t>(n) * g.G + grp) * kKK * out_hw;
  {
    const int nthreads = static_cast<int>(blockDim.x);
    const int total = g.gc * m.in_h * m.x_pitch;
    const int dcol = nthreads % m.x_pitch, drow = nthreads / m.x_pitch;
    struct Walk {  // (channel, row, column) of the thread's next input element
      int ch, ir, col;
    };
    auto advance = [&](Walk& p) {
      p.col += dcol;
      p.ir += drow;
      if (p.col >= m.x_pitch) {
        p.col -= m.x_pitch;
        ++p.ir;
      }
      while (p.ir >= m.in_h) {
        p.ir -= m.in_h;
        ++p.ch;
      }
    };
    Walk pos{0, tid / m.x_pitch, tid % m.x_pitch};
    while (pos.ir >= m.in_h) {
      pos.ir -= m.in_h;
      ++pos.ch;
    }
    const int px = 2 * (tid % (tw / 2));
    const int ow_w = ow0 + px;
    for (int e0 = tid, py = tid / (tw / 2); e0 < total || py < m.tile_h; e0 += kXBatch * nthreads, py += 8) {
      // loads: this round's input batch ...
      uint16_t xv[kXBatch];
      const Walk first = pos;
      if (e0 < total) {
#pragma unroll
        for (int u = 0; u < kXBatch; ++u) {
          const int ih = ih0 + pos.ir, iw = iw0 + pos.col;
          xv[u] = (e0 + u * nthreads < total && ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
                      ? to_bits(__ldg(xg + pos.ch * in_hw + static_cast<size_t>(ih) * g.W + iw))
                      : static_cast<uint16_t>(0);
          advance(pos);
        }
      }
      // ... and weight pass
      const int oh = oh0 + py;
      const bool wdo = py < m.tile_h;
      const bool in0 = wdo && oh < g.Ho && ow_w < g.Wo, in1 = in0 && ow_w + 1 < g.Wo;
      const T* wp = wg + (in0 ? static_cast<size_t>(oh) * g.Wo + ow_w : 0);
      uint32_t v[KS][KS + 2];  // v[r][kw + 1] = tap (r, kw) of the even (low half) and odd (high half) pixel
#pragma unroll
      for (int r = 0; r < KS; ++r) {
        v[r][0] = v[r][KS + 1] = 0;  // kw = -1 and kw = K
#pragma unroll
        for (int kw = 0; kw < KS; ++kw) {
          const T* q = wp + static_cast<size_t>(r * KS + kw) * out_hw;
          uint32_t pair = 0;
          if (in0) {
            pair = m.w_pairs ? __ldg(reinterpret_cast<const uint32_t*>(q))
                             : to_bits(__ldg(q)) | (in1 ? static_cast<uint32_t>(to_bits(__ldg(q + 1))) << 16 : 0u);
          }
          v[r][kw + 1] = pair;
        }
      }
      // stores: the input batch (the same walk again: cheaper than kXBatch stored offsets) ...
      if (e0 < total) {
        Walk st = first;
#pragma unroll
        for (int u = 0; u < kXBatch; ++u) {
          if (e0 + u * nthreads < total) xs[st.ch * m.x_plane + st.ir * m.x_pitch + st.col] = xv[u];
          advance(st);
        }
      }
      // ... and the weight words
      if (wdo) {
        const int slot = (py * tw + px) / 2;
        uint32_t* dst_even = ws + static_cast<size_t>(slot) * m.w_words;
        uint32_t* dst_odd = ws + static_cast<size_t>(m.w_half + slot) * m.w_words;
#pragma unroll
        for (int q4 = 0; q4 < kMmaTapSlots / 4; ++q4) {
          uint32_t we[kJ][4], wo[kJ][4];
#pragma unroll
          for (int u = 0; u < 4; ++u) {
            const int r = q4 * 4 + u;
#pragma unroll
            for (int j = 0; j < kJ; ++j) {  // even column: taps 2j, 2j + 1; odd: 2j - 1, 2j; rows r >= K: zero
              we[j][u] = r < KS ? (v[r][2 * j + 1] & 0xffffu) | (v[r][2 * j + 2] << 16) : 0u;
              wo[j][u] = r < KS ? (v[r][2 * j] >> 16) | (v[r][2 * j + 1] & 0xffff0000u) : 0u;
            }
          }
#pragma unroll
          for (int j = 0; j < kJ; ++j) {
            *reinterpret_cast<uint4*>(dst_even + j * kMmaTapSlots + q4 * 4) =
                make_uint4(we[j][0], we[j][1], we[j][2], we[j][3]);
            *reinterpret_cast<uint4*>(dst_odd + j * kMmaTapSlots + q4 * 4) =
                make_uint4(wo[j][0], wo[j][1], wo[j][2], wo[j][3]);
          }
        }
      }
    }
  }
  __syncthreads();

  // 3) The lane's band word slot: pixel (output row o, column `grp_l` of the segment), word group jj.
  const int seg = warp;
  const int grp_l = lane >> 2, t = lane & 3;
  const int j1 = (2 * t - grp_l + (grp_l & 1)) / 2;  // exact: the numerator is even
  const bool second = j1 < 0;  // the lane's in-window taps are Band rows 2t+8, 2t+9 (b[1]), not 2t, 2t+1 (b[0])
  const int jj = second ? j1 + 4 : j1;
  const bool has = jj < kJ;  // else both pairs lie outside the window (K = 3, 5)
  const int rows_here = min(m.tile_h, g.Ho - oh0);
  const uint32_t* wlane =
      ws + static_cast<size_t>(seg * 4 + (grp_l >> 1) + (grp_l & 1) * m.w_half) * m.w_words + jj * kMmaTapSlots;

  // 4) Per 16 channels: every input row of the window once (ldmatrix), one MMA per (output row, tap row).
  //    ldmatrix row address of this lane: matrix i = lane / 8 holds channels 8 (i & 1) .. + 7 and columns
  //    8 (i >> 1) .. + 7 of the segment's 16 (a[0..3] = A rows 0-7 / 8-15 x columns 0-7 / 8-15).
  const int mi = lane >> 3;
  for (int mt = 0; mt < g.gc / 16; ++mt) {
    const uint16_t* arow = xs + static_cast<size_t>(mt * 16 + (lane & 7) + 8 * (mi & 1)) * m.x_plane + seg * 8 +
                           8 * (mi >> 1);
    float acc[kMmaRows][4];
    uint32_t bw[kMmaRows][kMmaTapSlots];  // row o's words, loaded when its first input row comes (few live at once)
#pragma unroll
    for (int o = 0; o < kMmaRows; ++o) acc[o][0] = acc[o][1] = acc[o][2] = acc[o][3] = 0.f;
#pragma unroll
    for (int ir = 0; ir < kMmaRows + KS - 1; ++ir) {
      if (ir >= rows_here + KS - 1) break;  // warp-uniform
      if (ir < kMmaRows) {
        uint4 lo = make_uint4(0, 0, 0, 0), hi = lo;
        if (ir < rows_here && has) {
          lo = *reinterpret_cast<const uint4*>(wlane + static_cast<size_t>(ir) * (tw / 2) * m.w_words);
          hi = *reinterpret_cast<const uint4*>(wlane + static_cast<size_t>(ir) * (tw / 2) * m.w_words + 4);
        }
        const uint32_t words[kMmaTapSlots] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
        for (int r = 0; r < kMmaTapSlots; ++r) bw[ir][r] = words[r];
      }
      uint32_t a[4];
      cmir_mma::ldmatrix_x4(a, arow + ir * m.x_pitch);
#pragma unroll
      for (int o = 0; o < kMmaRows; ++o) {
        const int r = ir - o;
        if (r < 0 || r >= KS || o >= rows_here) continue;
        const uint32_t b[2] = {second ? 0u : bw[o][r], second ? bw[o][r] : 0u};
        cmir_mma::mma_16816<T>(acc[o], a, b);
      }
    }
    // 5) Epilogue, then the tile through shared memory so that y is written in whole rows: acc[o][e] = channel
    //    grp_l (+8 for e >= 2), column 2t + (e & 1) of the segment; the 16 channels' input planes are free once every
    //    warp is past its last ldmatrix of this channel tile (the barrier), and other tiles' planes are untouched.
    __syncthreads();
#pragma unroll
    for (int o = 0; o < kMmaRows; ++o) {
      if (o >= rows_here) break;
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int cl = mt * 16 + grp_l + 8 * hh;
        const int c = grp * g.gc + cl;
        const T v0 = epilogue<T>(acc[o][2 * hh], g, c), v1 = epilogue<T>(acc[o][2 * hh + 1], g, c);
        // plane cl, row o, columns 8 seg + 2t (+1): one 32-bit store, 32 lanes on 32 banks (x_plane / 2 = 4 x odd)
        *reinterpret_cast<uint32_t*>(xs + static_cast<size_t>(cl) * m.x_plane + o * tw + seg * 8 + 2 * t) =
            static_cast<uint32_t>(to_bits(v0)) | (static_cast<uint32_t>(to_bits(v1)) << 16);
      }
    }
    __syncthreads();
    // Rows (channel, output row) of the tile, one warp each: lanes along the columns, two per 32-bit pair when the
    // rows are 4-byte aligned in y (even width). The next channel tile's epilogue writes other planes, after its own
    // barrier.
    const int cols = min(tw, g.Wo - ow0);
    for (int rr = warp; rr < 16 * rows_here; rr += nwarps) {
      const int cl = mt * 16 + rr / rows_here, o = rr % rows_here;
      const uint16_t* src = xs + static_cast<size_t>(cl) * m.x_plane + o * tw;
      T* dst =
          y + (static_cast<size_t>(n) * g.C + grp * g.gc + cl) * out_hw + static_cast<size_t>(oh0 + o) * g.Wo + ow0;
      if (m.pair_store) {
        if (2 * lane < cols) {
          *reinterpret_cast<uint32_t*>(dst + 2 * lane) = *reinterpret_cast<const uint32_t*>(src + 2 * lane);
        }
      } else if (lane < cols) {
        dst[lane] = from_bits<T>(src[lane]);
      }
    }
  }
}

// ---------------------------------------------------------------- fused generation + aggregation
constexpr int kFusedMaxPx = 64;   // pixels (= threads) per block of the fused kernel
constexpr int kHiddenBlock = 8;   // hidden units accumulated in registers at a time

struct FusedArgs {
  const float* w1;
  const float* b1;
  const float* w2;
  const float* b2;
  int hidden;
  int gchunks, groups_per_block;
};

template <typename T>
__device__ __forceinline__ float pooled(const T* __restrict__ xc, const InvGeom& g, int oh, int ow) {
  if (g.stride == 1) return ldg_f32(xc + static_cast<size_t>(oh) * g.W + ow);
  const int h0 = oh * g.stride, w0 = ow * g.stride;
  const int h1 = min(h0 + g.stride, g.H), w1 = min(w0 + g.stride, g.W);
  float s = 0.f;
  for (int h = h0; h < h1; ++h) {
    for (int w = w0; w < w1; ++w) s += ldg_f32(xc + static_cast<size_t>(h) * g.W + w);
  }
  return s / static_cast<float>((h1 - h0) * (w1 - w0));  // ceil mode: mean of the valid pixels
}

template <typename T, int KS>
__global__ void __launch_bounds__(kFusedMaxPx) involution_fused_fwd(const T* __restrict__ x, T* __restrict__ y,
                                                                   InvGeom g, FusedArgs f) {
  CMIR_DYNAMIC_SHARED(float, smem);
  constexpr int KK = KS * KS;
  int bid = blockIdx.x;
  const int tile = bid % g.tiles;
  bid /= g.tiles;
  const int gchunk = bid % f.gchunks;
  const int n = bid / f.gchunks;

  const int tile_px = g.tile_h * g.tile_w;
  const int pix = threadIdx.x;
  const int ty = pix / g.tile_w, tx = pix - (pix / g.tile_w) * g.tile_w;
  const int oh0 = (tile / g.tiles_w) * g.tile_h, ow0 = (tile % g.tiles_w) * g.tile_w;
  const int oh = oh0 + ty, ow = ow0 + tx;
  const bool active = pix < tile_px && oh < g.Ho && ow < g.Wo;
  const int pad = (KS - 1) / 2;
  const int ih0 = oh0 * g.stride - pad, iw0 = ow0 * g.stride - pad;
  const size_t out_hw = static_cast<size_t>(g.Ho) * g.Wo;
  const size_t in_hw = static_cast<size_t>(g.H) * g.W;
  const T* xn = x + static_cast<size_t>(n) * g.C * in_hw;

  float* hid = smem;                              // [hidden][kFusedMaxPx]
  float* xs = smem + static_cast<size_t>(f.hidden) * kFusedMaxPx;  // [in_h][in_w]

  // 1) hidden = relu(w1 . pool(x) + b1) for this pixel, kHiddenBlock units at a time (w1 reads are warp-uniform).
  for (int j0 = 0; j0 < f.hidden; j0 += kHiddenBlock) {
    float acc[kHiddenBlock];
#pragma unroll
    for (int jj = 0; jj < kHiddenBlock; ++jj) acc[jj] = (j0 + jj < f.hidden) ? __ldg(f.b1 + j0 + jj) : 0.f;
    if (active) {
      for (int c = 0; c < g.C; ++c) {
        const float v = pooled(xn + c * in_hw, g, oh, ow);
#pragma unroll
        for (int jj = 0; jj < kHiddenBlock; ++jj) {
          if (j0 + jj < f.hidden) acc[jj] = fmaf(__ldg(f.w1 + static_cast<size_t>(j0 + jj) * g.C + c), v, acc[jj]);
        }
      }
    }
#pragma unroll
    for (int jj = 0; jj < kHiddenBlock; ++jj) {
      if (j0 + jj < f.hidden) hid[(j0 + jj) * kFusedMaxPx + pix] = fmaxf(acc[jj], 0.f);
    }
  }
  // hid is per-thread (column pix), so no barrier is needed before reading it back.

  for (int gi = 0; gi < f.groups_per_block; ++gi) {
    const int grp = gchunk * f.groups_per_block + gi;
    // 2) the pixel's K*K weights of this group, in registers.
    float wreg[KK];
#pragma unroll
    for (int k = 0; k < KK; ++k) {
      const int row = grp * KK + k;
      float a = __ldg(f.b2 + row);
      if (active) {
        const float* w2r = f.w2 + static_cast<size_t>(row) * f.hidden;
        for (int j = 0; j < f.hidden; ++j) a = fmaf(__ldg(w2r + j), hid[j * kFusedMaxPx + pix], a);
      }
      wreg[k] = a;
    }
    // 3) aggregation over the group's channels, input tile staged in shared memory.
    for (int cl = 0; cl < g.gc; ++cl) {
      const int c = grp * g.gc + cl;
      __syncthreads();
      load_tile(xs, xn + c * in_hw, g, ih0, iw0, pix, blockDim.x);
      __syncthreads();
      if (active) {
        const float* xp = xs + ty * g.stride * g.in_w + tx * g.stride;
        float acc = 0.f;
#pragma unroll
        for (int kh = 0; kh < KS; ++kh) {
#pragma unroll
          for (int kw = 0; kw < KS; ++kw) acc = fmaf(wreg[kh * KS + kw], xp[kh * g.in_w + kw], acc);
        }
        y[(static_cast<size_t>(n) * g.C + c) * out_hw + static_cast<size_t>(oh) * g.Wo + ow] =
            epilogue<T>(acc, g, c);
      }
    }
  }
}

// ---------------------------------------------------------------- host side
cudaError_t check_common(CmirDType dtype, const void* x, const void* y, int batch, int channels, int height,
                         int width, int kernel_size, int stride, int group_channels) {
  if (!cmir_cuda::valid_dtype(dtype) || x == nullptr || y == nullptr) return cudaErrorInvalidValue;
  if (batch < 1 || channels < 1 || height < 1 || width < 1 || group_channels < 1) return cudaErrorInvalidValue;
  if (channels % group_channels != 0) return cudaErrorInvalidValue;
  if (kernel_size < 1 || kernel_size > 15 || kernel_size % 2 == 0) return cudaErrorInvalidValue;
  if (stride < 1 || stride > 4) return cudaErrorInvalidValue;
  // Element offsets are size_t; the per-image plane and the grid must fit 32-bit ints.
  if (static_cast<int64_t>(height) * width > (int64_t{1} << 30)) return cudaErrorInvalidValue;
  return cudaSuccess;
}

// Output tile of at most max_px pixels (one per thread) that covers Ho x Wo with little waste (the fused kernel).
void plan_tile(InvGeom& g, int max_px) {
  const int tw_max = std::min(kMaxTileW, max_px);
  const int ntw = ceil_div(g.Wo, tw_max);
  g.tile_w = ceil_div(g.Wo, ntw);
  const int th_max = std::max(1, std::min(kMaxTileH, max_px / g.tile_w));
  const int nth = ceil_div(g.Ho, th_max);
  g.tile_h = ceil_div(g.Ho, nth);
  g.tiles_w = ntw;
  g.tiles = ntw * nth;
  g.in_h = (g.tile_h - 1) * g.stride + g.K;
  g.in_w = (g.tile_w - 1) * g.stride + g.K;
}

// Output tile of the plain kernel: kRows rows per thread, at most max_threads threads (tile_w * tile_h / kRows), tile
// width <= 32, near-equal tiles (28x28 -> 2 tiles of 28x14, 196 threads), a tile height that is a multiple of
// kRows, and two unpadded buffers of one staged word within the 48 KiB default (lower tiles for large K and stride).
void plan_tile_rows(InvGeom& g, int max_threads) {
  const int ntw = ceil_div(g.Wo, kMaxTileW);
  g.tile_w = ceil_div(g.Wo, ntw);
  g.tiles_w = ntw;
  g.in_w = (g.tile_w - 1) * g.stride + g.K;
  const int row_groups = ceil_div(g.Ho, kRows);
  int rg_max = std::max(1, std::min(kMaxTileH / kRows, max_threads / g.tile_w));
  for (;;) {
    const int rg = ceil_div(row_groups, ceil_div(row_groups, rg_max));
    g.tile_h = rg * kRows;
    g.tiles = ntw * ceil_div(g.Ho, g.tile_h);
    g.in_h = (g.tile_h - 1) * g.stride + g.K;
    if (rg == 1 || 2 * static_cast<size_t>(g.in_h) * g.in_w * sizeof(float) <= kSmemLimit) return;
    rg_max = rg - 1;
  }
}

InvGeom make_geom(int batch, int channels, int height, int width, int kernel_size, int stride, int group_channels,
                  const float* scale, const float* shift, int relu) {
  InvGeom g{};
  g.B = batch;
  g.C = channels;
  g.H = height;
  g.W = width;
  g.K = kernel_size;
  g.stride = stride;
  g.gc = group_channels;
  g.G = channels / group_channels;
  g.Ho = ceil_div(height, stride);
  g.Wo = ceil_div(width, stride);
  g.scale = scale;
  g.shift = shift;
  g.relu = relu != 0 ? 1 : 0;
  return g;
}

// Shared-memory layout of one staged word plane: 2 * row pitch = tile_w (mod 32; tile_w + 1 when odd) and plane
// stride = stride * threads per slice (mod 32), so the lanes of a warp reading one tap (consecutive pixels of row
// pairs, neighbouring slices) hit distinct banks at stride 1 (stride 2 keeps its inherent 2-way conflict). Unpadded
// when the padding would not fit.
void plan_smem_layout(InvGeom& g, bool padded) {
  const int tpx = g.tile_w * (g.tile_h / kRows);
  const int even_w = g.tile_w + (g.tile_w & 1);
  g.pitch = padded ? g.in_w + ((even_w / 2 - g.in_w) % 16 + 16) % 16 : g.in_w;
  const int rows = g.in_h * g.pitch;
  g.plane = padded ? rows + ((g.stride * tpx - rows) % 32 + 32) % 32 : rows;
}

// Pipeline plan of launch_typed, in shared-memory words of kch channels (1 fp32, 2 fp16/bf16): words side by side
// (slices), chunks per block (cchunks), words per step (cps), register prefetch or direct staging. Every choice keeps
// shared memory within the 48 KiB default.
void plan_steps(InvGeom& g, int sms, int kch) {
  const int tpx = g.tile_w * (g.tile_h / kRows);
  plan_smem_layout(g, true);
  if (2 * static_cast<size_t>(g.plane) * sizeof(float) > kSmemLimit) plan_smem_layout(g, false);
  const size_t plane_bytes = static_cast<size_t>(g.plane) * sizeof(float);
  const int gw = ceil_div(g.gc, kch);  // words per group (an odd group_channels: the last word holds one channel)
  // Words side by side: the largest divisor of gw that fits the thread and shared-memory budget (small maps, e.g.
  // 7x7 at the last stage, would otherwise leave most of the block idle).
  g.slices = 1;
  for (int s = gw; s >= 1; --s) {
    if (gw % s == 0 && s * tpx <= kMaxThreads && 2 * s * plane_bytes <= kSmemLimit) {
      g.slices = s;
      break;
    }
  }
  // Split a group's words over blocks only when there are too few blocks to fill the GPU (batch 1): each split
  // re-reads the pixels' K*K weights, so use the fewest splits that give about two blocks per SM.
  const int64_t base = static_cast<int64_t>(g.B) * g.G * g.tiles;
  const int per_group_iters = gw / g.slices;
  g.cchunks = 1;
  for (int d = 1; d <= per_group_iters; ++d) {
    if (per_group_iters % d != 0) continue;
    g.cchunks = d;
    if (base * d >= 2 * static_cast<int64_t>(sms)) break;
  }
  g.chunk_words = gw / g.cchunks;
  // Words per step: the most (up to kMaxCps, dividing the chunk) whose loads fit the prefetch registers; when even
  // one does not fit (tiny maps with a large halo), stage directly into the other buffer instead.
  const int per_slice = g.chunk_words / g.slices;
  const int threads = tpx * g.slices;
  const int rows_per_pass = threads / g.in_w;  // R of StageWalk: staging threads per column
  auto fits = [&](int c, bool need_regs) {
    const int slots = g.slices * c;
    if (per_slice % c != 0 || 2 * static_cast<size_t>(slots) * plane_bytes > kSmemLimit) return false;
    return !need_regs || (rows_per_pass >= 1 && slots * g.in_h <= kPrefetch * rows_per_pass);
  };
  g.cps = 1;
  g.prefetch = 0;
  for (const bool regs : {true, false}) {
    for (int c = std::min(kMaxCps, per_slice); c >= 1; --c) {
      if (fits(c, regs)) {
        g.cps = c;
        g.prefetch = regs ? 1 : 0;
        return;
      }
    }
  }
}

// Plan of the tensor-core kernel; false where it does not apply (stride > 1, K other than 3/5/7, group_channels not
// a multiple of 16, or even one-row tiles above kMmaSmemMax). Tiles: <= 32 columns (near-equal, rounded up to
// 8-column segments) x <= kMmaRows rows (near-equal: 28 rows -> 2 tiles of 14).
bool plan_mma(const InvGeom& g, MmaGeom& m, size_t& smem) {
  if (g.stride != 1 || g.gc % 16 != 0 || (g.K != 3 && g.K != 5 && g.K != 7)) return false;
  m = MmaGeom{};
  m.base = g;
  m.tiles_w = ceil_div(g.Wo, kMmaSegs * 8);
  m.segs = ceil_div(ceil_div(g.Wo, m.tiles_w), 8);
  m.x_pitch = m.segs * 8 + 8;
  m.w_words = (g.K + 2) / 2 * kMmaTapSlots + 4;
  // The tallest near-equal tiles of <= kMmaRows rows whose staging fits kMmaSmemMax (two blocks per SM).
  for (int cap = kMmaRows; cap >= 1; --cap) {
    const int nth = ceil_div(g.Ho, cap);
    m.tile_h = ceil_div(g.Ho, nth);
    m.tiles = m.tiles_w * nth;
    m.in_h = m.tile_h + g.K - 1;
    m.x_plane = (m.in_h * m.x_pitch / 8 | 1) * 8;  // an odd number of 16-byte units
    m.w_half = m.tile_h * m.segs * 4 | 1;
    smem = static_cast<size_t>(g.gc) * m.x_plane * sizeof(uint16_t) +
           static_cast<size_t>(m.w_half + m.tile_h * m.segs * 4) * m.w_words * sizeof(uint32_t);
    if (smem <= kMmaSmemMax) return true;
  }
  return false;
}

template <typename T>
cudaError_t launch_mma(cudaStream_t stream, const void* x, const void* kernel, void* y, int batch, const MmaGeom& m,
                       size_t smem) {
  const int64_t blocks = static_cast<int64_t>(batch) * m.base.G * m.tiles;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  MmaGeom mg = m;
  mg.pair_store = m.base.Wo % 2 == 0 && reinterpret_cast<uintptr_t>(y) % 4 == 0 ? 1 : 0;
  mg.w_pairs = m.base.Wo % 2 == 0 && reinterpret_cast<uintptr_t>(kernel) % 4 == 0 ? 1 : 0;
  const dim3 grid(static_cast<unsigned>(blocks));
  const dim3 block(static_cast<unsigned>(m.segs * 32));
  const T* xt = static_cast<const T*>(x);
  const T* kt = static_cast<const T*>(kernel);
  T* yt = static_cast<T*>(y);
  auto run = [&](auto kernel_fn) {
    return cmir_cuda::launch_opt_in(kernel_fn, grid, block, smem, stream, xt, kt, yt, mg);
  };
  switch (m.base.K) {
    case 3: return run(involution_mma_fwd<T, 3>);
    case 5: return run(involution_mma_fwd<T, 5>);
    case 7: return run(involution_mma_fwd<T, 7>);
    default: return cudaErrorInvalidValue;
  }
}

template <typename T>
cudaError_t launch_typed(cudaStream_t stream, const void* x, const void* kernel, void* y, InvGeom g) {
  int sms = 0;
  CMIR_CUDA_TRY(cmir_cuda::sm_count(&sms));
  if constexpr (!std::is_same<T, float>::value) {
    // fp16 / bf16: the tensor-core kernel where it applies and the grid gives >= 2 blocks per SM (its staging
    // latency is hidden only by other resident blocks; small grids, e.g. batch 1, keep the CUDA-core kernel, which
    // splits a group's channels over blocks and prefetches the next step during the current one).
    MmaGeom m;
    size_t smem = 0;
    if (plan_mma(g, m, smem) && static_cast<int64_t>(g.B) * g.G * m.tiles >= 2 * static_cast<int64_t>(sms)) {
      return launch_mma<T>(stream, x, kernel, y, g.B, m, smem);
    }
  }
  plan_tile_rows(g, kMaxThreads);
  // Two unpadded buffers of one word always fit 48 KiB (at most 2,641 words: K=15, stride 4, a 32x2 tile).
  if (2 * static_cast<size_t>(g.in_h) * g.in_w * sizeof(float) > kSmemLimit) return cudaErrorInvalidValue;
  plan_steps(g, sms, Stage<T>::kCh);
  const int tpx = g.tile_w * (g.tile_h / kRows);
  const int64_t base = static_cast<int64_t>(g.B) * g.G * g.tiles;
  const int64_t blocks = base * g.cchunks;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  const dim3 grid(static_cast<unsigned>(blocks));
  const dim3 block(static_cast<unsigned>(tpx * g.slices));
  const size_t smem = 2 * static_cast<size_t>(g.slices) * g.cps * g.plane * sizeof(float);  // 32-bit words
  const T* xt = static_cast<const T*>(x);
  const T* kt = static_cast<const T*>(kernel);
  T* yt = static_cast<T*>(y);
  using cmir_cuda::launch;
  switch (g.K) {
    case 3: return launch(involution_fwd<T, 3>, grid, block, smem, stream, xt, kt, yt, g);
    case 5: return launch(involution_fwd<T, 5>, grid, block, smem, stream, xt, kt, yt, g);
    case 7: return launch(involution_fwd<T, 7>, grid, block, smem, stream, xt, kt, yt, g);
    default: return launch(involution_fwd<T, 0>, grid, block, smem, stream, xt, kt, yt, g);
  }
}

template <typename T>
cudaError_t launch_fused_typed(cudaStream_t stream, const void* x, void* y, InvGeom g, FusedArgs f) {
  plan_tile(g, kFusedMaxPx);
  const size_t smem = (static_cast<size_t>(f.hidden) * kFusedMaxPx + static_cast<size_t>(g.in_h) * g.in_w) *
                      sizeof(float);
  constexpr size_t kFusedSmemMax = 96 * 1024;
  if (smem > kFusedSmemMax) return cudaErrorInvalidValue;
  int sms = 0;
  CMIR_CUDA_TRY(cmir_cuda::sm_count(&sms));
  // Groups split over blocks when the batch is small (each split recomputes the hidden layer of its pixels).
  const int64_t base = static_cast<int64_t>(g.B) * g.tiles;
  f.gchunks = 1;
  for (int d = 1; d <= g.G; ++d) {
    if (g.G % d != 0) continue;
    f.gchunks = d;
    if (base * d >= 2 * static_cast<int64_t>(sms)) break;
  }
  f.groups_per_block = g.G / f.gchunks;
  const int64_t blocks = base * f.gchunks;
  if (blocks > INT32_MAX) return cudaErrorInvalidValue;
  g.slices = 1;
  g.cchunks = 1;
  g.chunk_words = g.gc;
  const dim3 grid(static_cast<unsigned>(blocks));
  const dim3 block(kFusedMaxPx);
  const T* xt = static_cast<const T*>(x);
  T* yt = static_cast<T*>(y);
  auto run = [&](auto kernel_fn) {
    return cmir_cuda::launch_opt_in(kernel_fn, grid, block, smem, stream, xt, yt, g, f);
  };
  switch (g.K) {
    case 1: return run(involution_fused_fwd<T, 1>);
    case 3: return run(involution_fused_fwd<T, 3>);
    case 5: return run(involution_fused_fwd<T, 5>);
    case 7: return run(involution_fused_fwd<T, 7>);
    default: return cudaErrorNotSupported;
  }
}

}  // namespace

cudaError_t launch_involution_epilogue(cudaStream_t stream, CmirDType dtype, const void* x, const void* kernel,
                                       void* y, int batch, int channels, int height, int width, int kernel_size,
                                       int stride, int group_channels, const float* scale, const float* shift,
                                       int relu) {
  CMIR_CUDA_TRY(check_common(dtype, x, y, batch, channels, height, width, kernel_size, stride, group_channels));
  if (kernel == nullptr) return cudaErrorInvalidValue;
  const InvGeom g = make_geom(batch, channels, height, width, kernel_size, stride, group_channels, scale, shift, relu);
  switch (dtype) {
    case CmirDType::kFloat32: return launch_typed<float>(stream, x, kernel, y, g);
    case CmirDType::kFloat16: return launch_typed<__half>(stream, x, kernel, y, g);
    case CmirDType::kBFloat16: return launch_typed<__nv_bfloat16>(stream, x, kernel, y, g);
  }
  return cudaErrorInvalidValue;
}

cudaError_t launch_involution(cudaStream_t stream, CmirDType dtype, const void* x, const void* kernel, void* y,
                              int batch, int channels, int height, int width, int kernel_size, int stride,
                              int group_channels) {
  return launch_involution_epilogue(stream, dtype, x, kernel, y, batch, channels, height, width, kernel_size, stride,
                                    group_channels, nullptr, nullptr, 0);
}

cudaError_t launch_involution_fused(cudaStream_t stream, CmirDType dtype, const void* x, const float* w1,
                                    const float* b1, const float* w2, const float* b2, void* y, int batch,
                                    int channels, int height, int width, int kernel_size, int stride,
                                    int group_channels, int hidden, const float* scale, const float* shift,
                                    int relu) {
  CMIR_CUDA_TRY(check_common(dtype, x, y, batch, channels, height, width, kernel_size, stride, group_channels));
  if (w1 == nullptr || b1 == nullptr || w2 == nullptr || b2 == nullptr || hidden < 1) return cudaErrorInvalidValue;
  const InvGeom g = make_geom(batch, channels, height, width, kernel_size, stride, group_channels, scale, shift, relu);
  FusedArgs f{w1, b1, w2, b2, hidden, 1, 1};
  switch (dtype) {
    case CmirDType::kFloat32: return launch_fused_typed<float>(stream, x, y, g, f);
    case CmirDType::kFloat16: return launch_fused_typed<__half>(stream, x, y, g, f);
    case CmirDType::kBFloat16: return launch_fused_typed<__nv_bfloat16>(stream, x, y, g, f);
  }
  return cudaErrorInvalidValue;
}

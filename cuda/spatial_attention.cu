// Spatial attention of two maps (CMIR's sa3 / sa4 on the art and pv features) in two launches instead of PyTorch's
// nine kernels (concatenation, mean, max, concatenation, conv, its bias add, sigmoid, two multiplies).
#include "spatial_attention.cuh"

#include <cstdint>

#include "dtype.cuh"

using cmir_cuda::ceil_div;
using cmir_cuda::from_f32;
using cmir_cuda::ldg_f32;

namespace {

constexpr int kThreads = 256;
constexpr int kSlice = kSpatialAttentionSliceChannels;

struct SaArgs {
  const void* a;
  const void* p;
  const float* w;
  const float* bias;
  void* ya;
  void* yp;
  void* att;
  float* part;  // [B][slices][2][HW]: a slice's channel sum and max per pixel
  int ca, cp, hw, height, width, k, slices;
};

// Channel c of image b at pixel q: a's channels first, then p's.
template <typename T>
__device__ __forceinline__ const T* channel(const SaArgs& s, int b, int c) {
  return c < s.ca ? static_cast<const T*>(s.a) + (static_cast<int64_t>(b) * s.ca + c) * s.hw
                  : static_cast<const T*>(s.p) + (static_cast<int64_t>(b) * s.cp + (c - s.ca)) * s.hw;
}

// Launch 1, block (slice, b): sum and max over the slice's channels for every pixel. Threads take (pixel, sub)
// pairs: consecutive threads read consecutive pixels of one channel; `subs` threads split a pixel's channels.
template <typename T>
__global__ void __launch_bounds__(kThreads) sa_stats_kernel(SaArgs s) {
  CMIR_DYNAMIC_SHARED(float, smem);  // [2][subs][hw]
  const int b = blockIdx.y, slice = blockIdx.x, tid = threadIdx.x;
  const int subs = s.hw >= kThreads ? 1 : kThreads / s.hw;
  const int c0 = slice * kSlice, c1 = min(s.ca + s.cp, c0 + kSlice);
  for (int e = tid; e < subs * s.hw; e += kThreads) {
    const int q = e % s.hw, sub = e / s.hw;
    float sum = 0.f, mx = -INFINITY;
#pragma unroll 4
    for (int c = c0 + sub; c < c1; c += subs) {
      const float v = ldg_f32(channel<T>(s, b, c) + q);
      sum += v;
      mx = fmaxf(mx, v);
    }
    smem[e] = sum;
    smem[subs * s.hw + e] = mx;
  }
  __syncthreads();
  float* out = s.part + (static_cast<int64_t>(b) * s.slices + slice) * 2 * s.hw;
  for (int q = tid; q < s.hw; q += kThreads) {
    float sum = 0.f, mx = -INFINITY;
    for (int sub = 0; sub < subs; ++sub) {  // in sub order: the same sum every run
      sum += smem[sub * s.hw + q];
      mx = fmaxf(mx, smem[subs * s.hw + sub * s.hw + q]);
    }
    out[q] = sum;
    out[s.hw + q] = mx;
  }
}

// Launch 2, block (slice, b): the image's statistics (the slices' partials summed in slice order: every block gets
// the same bits), the k x k conv + sigmoid into shared memory, then ya / yp = x * att for the slice's channels.
template <typename T>
__global__ void __launch_bounds__(kThreads) sa_apply_kernel(SaArgs s) {
  // mean [hw], max [hw], att [hw], then the (pixel, sub) partials of the slice sums: [2][subs][hw]
  CMIR_DYNAMIC_SHARED(float, smem);
  const int b = blockIdx.y, slice = blockIdx.x, tid = threadIdx.x;
  const int channels = s.ca + s.cp;
  const float* part = s.part + static_cast<int64_t>(b) * s.slices * 2 * s.hw;
  // The slices' partials: (pixel, sub) pairs as in launch 1, a thread adding every subs-th slice, then the subs in
  // order — the same sequence of additions in every block.
  const int subs = s.hw >= kThreads ? 1 : kThreads / s.hw;
  float* sub_part = smem + 3 * s.hw;
  for (int e = tid; e < subs * s.hw; e += kThreads) {
    const int q = e % s.hw, sub = e / s.hw;
    float sum = 0.f, mx = -INFINITY;
#pragma unroll 8
    for (int j = sub; j < s.slices; j += subs) {
      sum += part[j * 2 * s.hw + q];
      mx = fmaxf(mx, part[j * 2 * s.hw + s.hw + q]);
    }
    sub_part[e] = sum;
    sub_part[subs * s.hw + e] = mx;
  }
  __syncthreads();
  for (int q = tid; q < s.hw; q += kThreads) {
    float sum = 0.f, mx = -INFINITY;
    for (int sub = 0; sub < subs; ++sub) {
      sum += sub_part[sub * s.hw + q];
      mx = fmaxf(mx, sub_part[subs * s.hw + sub * s.hw + q]);
    }
    smem[q] = sum / static_cast<float>(channels);
    smem[s.hw + q] = mx;
  }
  __syncthreads();
  const int r = (s.k - 1) / 2;
  for (int q = tid; q < s.hw; q += kThreads) {
    const int qy = q / s.width, qx = q - qy * s.width;
    float v = __ldg(s.bias);
    for (int c = 0; c < 2; ++c) {
      for (int ky = 0; ky < s.k; ++ky) {
        const int iy = qy + ky - r;
        if (iy < 0 || iy >= s.height) continue;
        for (int kx = 0; kx < s.k; ++kx) {
          const int ix = qx + kx - r;
          if (ix < 0 || ix >= s.width) continue;
          v = fmaf(__ldg(s.w + (c * s.k + ky) * s.k + kx), smem[c * s.hw + iy * s.width + ix], v);
        }
      }
    }
    const float a = 1.f / (1.f + expf(-v));
    smem[2 * s.hw + q] = a;
    if (slice == 0) static_cast<T*>(s.att)[static_cast<int64_t>(b) * s.hw + q] = from_f32<T>(a);
  }
  __syncthreads();
  const int c0 = slice * kSlice, c1 = min(channels, c0 + kSlice);
#pragma unroll 4
  for (int e = tid; e < (c1 - c0) * s.hw; e += kThreads) {
    const int c = c0 + e / s.hw, q = e % s.hw;
    T* y = c < s.ca ? static_cast<T*>(s.ya) + (static_cast<int64_t>(b) * s.ca + c) * s.hw
                    : static_cast<T*>(s.yp) + (static_cast<int64_t>(b) * s.cp + (c - s.ca)) * s.hw;
    y[q] = from_f32<T>(ldg_f32(channel<T>(s, b, c) + q) * smem[2 * s.hw + q]);
  }
}

template <typename T>
cudaError_t launch_typed(cudaStream_t stream, const SaArgs& s, int batch) {
  const dim3 grid(static_cast<unsigned>(s.slices), static_cast<unsigned>(batch));
  const int subs = s.hw >= kThreads ? 1 : kThreads / s.hw;
  CMIR_CUDA_TRY(cmir_cuda::launch(sa_stats_kernel<T>, grid, dim3(kThreads),
                                  sizeof(float) * 2 * static_cast<size_t>(subs) * s.hw, stream, s));
  return cmir_cuda::launch(sa_apply_kernel<T>, grid, dim3(kThreads),
                           sizeof(float) * (3 + 2 * static_cast<size_t>(subs)) * s.hw, stream, s);
}

int slices(int ca, int cp) { return ceil_div(ca + cp, kSlice); }

}  // namespace

size_t spatial_attention_workspace_size(int batch, int ca, int cp, int height, int width) {
  if (spatial_attention_unsupported(batch, ca, cp, height, width, 1) != nullptr) return 0;
  return sizeof(float) * static_cast<size_t>(batch) * slices(ca, cp) * 2 * height * width;
}

cudaError_t launch_spatial_attention(cudaStream_t stream, CmirDType dtype, const void* a, const void* p,
                                     const float* w, const float* bias, void* ya, void* yp, void* att,
                                     float* workspace, size_t workspace_bytes, int batch, int ca, int cp, int height,
                                     int width, int k) {
  if (!cmir_cuda::valid_dtype(dtype)) return cudaErrorInvalidValue;
  if (spatial_attention_unsupported(batch, ca, cp, height, width, k) != nullptr) return cudaErrorInvalidValue;
  if (a == nullptr || w == nullptr || bias == nullptr || ya == nullptr || att == nullptr || workspace == nullptr ||
      (cp > 0 && (p == nullptr || yp == nullptr))) {
    return cudaErrorInvalidValue;
  }
  if (workspace_bytes < spatial_attention_workspace_size(batch, ca, cp, height, width)) return cudaErrorInvalidValue;
  const size_t es = cmir_cuda::dtype_size(dtype);
  const size_t hw = static_cast<size_t>(height) * width;
  const size_t a_bytes = static_cast<size_t>(batch) * ca * hw * es, p_bytes = static_cast<size_t>(batch) * cp * hw * es;
  // Blocks read a, p, w, bias and the workspace while others write the outputs (and launch 1 the workspace).
  const void* outs[] = {ya, cp > 0 ? yp : nullptr, att, workspace};
  const size_t out_sizes[] = {a_bytes, p_bytes, static_cast<size_t>(batch) * hw * es, workspace_bytes};
  const void* ins[] = {a, cp > 0 ? p : nullptr, w, bias};
  const size_t in_sizes[] = {a_bytes, p_bytes, sizeof(float) * 2 * k * k, sizeof(float)};
  if (!cmir_cuda::disjoint(ins, in_sizes, 4, outs, out_sizes, 4)) return cudaErrorInvalidValue;
  const SaArgs s{a, cp > 0 ? p : nullptr, w, bias, ya, cp > 0 ? yp : nullptr, att, workspace, ca, cp,
                 static_cast<int>(hw), height, width, k, slices(ca, cp)};
  switch (dtype) {
    case CmirDType::kFloat32:
      return launch_typed<float>(stream, s, batch);
    case CmirDType::kFloat16:
      return launch_typed<__half>(stream, s, batch);
    case CmirDType::kBFloat16:
      return launch_typed<__nv_bfloat16>(stream, s, batch);
  }
  return cudaErrorInvalidValue;
}

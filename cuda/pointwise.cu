// Pointwise (1x1) convolution + bias [+ residual] [+ ReLU]: one launch of the shared batched GEMM (gemm.cuh) with
// its typed NCHW output, so the epilogue that cuDNN runs as separate kernels (bias add, residual add, ReLU) happens
// at the store.
#include "pointwise.cuh"

#include <cstdint>

#include "dtype.cuh"
#include "gemm.cuh"

static_assert(kPointwiseWorkspaceZeroBytes == cmir_gemm::kSplitCounterBytes, "the documented zeroed prefix");

namespace {

// The GEMM of one call (pointers unset): its rows are the pixels of each image (m = b * HW + p) and its K the input
// channels; A(m, k) = x[b, k, p] is read in place from NCHW (consecutive m adjacent: tokens fastest), the output
// written back as NCHW.
cmir_gemm::GemmBatch pointwise_gemm(int batch, int cin, int cout, int hw, int relu) {
  cmir_gemm::GemmBatch gb{};
  gb.M = batch * hw;
  gb.n_out = cout;
  gb.K = cin;
  gb.rows = hw;
  gb.a_m_contig = 1;
  gb.out_mode = cmir_gemm::kOutTyped;
  gb.relu = relu;
  cmir_gemm::GemmProblem& p = gb.p[0];
  p.a_bs = static_cast<int64_t>(cin) * hw;
  p.a_rs = 1;
  p.a_ks = hw;
  cmir_gemm::nchw_output(p, cout, hw);
  return gb;
}

// The shortcut as the GEMM's gathered segment: K columns Cin .. Cin + channels - 1, a 1x1 kernel at `stride`
// (p.g_src is set at launch).
void add_shortcut(cmir_gemm::GemmBatch& gb, int cin, int width, const PointwiseShortcut& s) {
  gb.gather = 1;
  gb.k_seg = cin;
  gb.K = cin + s.channels;
  gb.g_c = s.channels;
  gb.g_h = s.height;
  gb.g_w = s.width;
  gb.g_kh = gb.g_kw = 1;
  gb.g_stride = s.stride;
  gb.g_pad = 0;
  gb.g_ow = width;
}

template <typename T>
cudaError_t launch_typed(cudaStream_t stream, const void* x, const void* w, const void* bias, const void* residual,
                         void* y, void* ws, size_t ws_bytes, int batch, int cin, int cout, int width, int hw,
                         int relu, const PointwiseShortcut* shortcut, int sms) {
  cmir_gemm::GemmBatch gb = pointwise_gemm(batch, cin, cout, hw, relu);
  if (shortcut == nullptr) {
    return cmir_gemm::launch_typed_conv<T, false>(stream, gb, x, nullptr, w, bias, residual, y, ws, ws_bytes, sms);
  }
  add_shortcut(gb, cin, width, *shortcut);
  return cmir_gemm::launch_typed_conv<T, true>(stream, gb, x, shortcut->x, w, bias, residual, y, ws, ws_bytes, sms);
}

}  // namespace

size_t pointwise_conv_workspace_size(int batch, int cin, int cout, int height, int width) {
  if (pointwise_conv_unsupported(batch, cin, cout, height, width) != nullptr) return 0;
  return cmir_gemm::typed_split_workspace_bound(pointwise_gemm(batch, cin, cout, height * width, 0), 1,
                                                cmir_gemm::kMaxTypedSplits);
}

cudaError_t launch_pointwise_conv(cudaStream_t stream, CmirDType dtype, const void* x, const void* w,
                                  const void* bias, const void* residual, void* y, void* workspace,
                                  size_t workspace_bytes, int batch, int cin, int cout, int height, int width,
                                  int relu, const PointwiseShortcut* shortcut) {
  if (!cmir_cuda::valid_dtype(dtype)) return cudaErrorInvalidValue;
  if (x == nullptr || w == nullptr || bias == nullptr || y == nullptr) return cudaErrorInvalidValue;
  if (relu != 0 && relu != 1) return cudaErrorInvalidValue;
  if (pointwise_conv_unsupported(batch, cin, cout, height, width) != nullptr) return cudaErrorInvalidValue;
  if (shortcut != nullptr &&
      (shortcut->x == nullptr || pointwise_shortcut_unsupported(cin, height, width, *shortcut) != nullptr)) {
    return cudaErrorInvalidValue;
  }
  const size_t es = cmir_cuda::dtype_size(dtype);
  const size_t hw = static_cast<size_t>(height) * width;
  const size_t k_total = static_cast<size_t>(cin) + (shortcut != nullptr ? shortcut->channels : 0);
  const size_t x_bytes = static_cast<size_t>(batch) * cin * hw * es;
  const size_t y_bytes = static_cast<size_t>(batch) * cout * hw * es;
  const size_t s_bytes = shortcut == nullptr ? 0
                                             : static_cast<size_t>(batch) * shortcut->channels * shortcut->height *
                                                   shortcut->width * es;
  // Blocks read x, w, the residual and the shortcut while others store y (and the workspace, written by every
  // block): no input may share memory with either.
  const void* ins[] = {x, w, bias, residual, shortcut == nullptr ? nullptr : shortcut->x};
  const size_t sizes[] = {x_bytes, static_cast<size_t>(cout) * k_total * es, static_cast<size_t>(cout) * es,
                          y_bytes, s_bytes};
  const void* outs[] = {y, workspace};
  const size_t out_sizes[] = {y_bytes, workspace_bytes};
  if (!cmir_cuda::disjoint(ins, sizes, 5, outs, out_sizes, 2)) return cudaErrorInvalidValue;
  int sms = 0;
  CMIR_CUDA_TRY(cmir_cuda::sm_count(&sms));
  const int n = static_cast<int>(hw);
  switch (dtype) {
    case CmirDType::kFloat32:
      return launch_typed<float>(stream, x, w, bias, residual, y, workspace, workspace_bytes, batch, cin, cout,
                                 width, n, relu, shortcut, sms);
    case CmirDType::kFloat16:
      return launch_typed<__half>(stream, x, w, bias, residual, y, workspace, workspace_bytes, batch, cin, cout,
                                  width, n, relu, shortcut, sms);
    case CmirDType::kBFloat16:
      return launch_typed<__nv_bfloat16>(stream, x, w, bias, residual, y, workspace, workspace_bytes, batch, cin,
                                         cout, width, n, relu, shortcut, sms);
  }
  return cudaErrorInvalidValue;
}

// Convolution + bias [+ residual] [+ ReLU] as one launch of the shared GEMM (gemm.cuh): the input is the GEMM's
// gathered A segment (k_seg = 0: every column an implicit-GEMM tap), the output the typed NCHW epilogue. For the
// small convolutions cuDNN runs as three kernels at batch 1 (convolution, its bias add, the ReLU).
#include "conv2d.cuh"

#include <cstdint>

#include "dtype.cuh"
#include "gemm.cuh"

namespace {

// The GEMM of one call (pointers unset): rows m = b * Ho*Wo + output pixel, K = Cin * kh * kw (c, ky, kx).
cmir_gemm::GemmBatch conv_gemm(int batch, int cin, int cout, int height, int width, int kh, int kw, int stride,
                               int pad, int relu) {
  const int ho = conv2d_output_size(height, kh, stride, pad), wo = conv2d_output_size(width, kw, stride, pad);
  cmir_gemm::GemmBatch gb{};
  gb.M = batch * ho * wo;
  gb.n_out = cout;
  gb.K = cin * kh * kw;
  gb.rows = ho * wo;
  gb.a_m_contig = 1;
  gb.out_mode = cmir_gemm::kOutTyped;
  gb.relu = relu;
  gb.gather = 1;
  gb.k_seg = 0;
  gb.g_c = cin;
  gb.g_h = height;
  gb.g_w = width;
  gb.g_kh = kh;
  gb.g_kw = kw;
  gb.g_stride = stride;
  gb.g_pad = pad;
  gb.g_ow = wo;
  cmir_gemm::nchw_output(gb.p[0], cout, static_cast<int64_t>(ho) * wo);
  return gb;
}

}  // namespace

size_t conv2d_workspace_size(int batch, int cin, int cout, int height, int width, int kh, int kw, int stride,
                             int pad) {
  if (conv2d_unsupported(batch, cin, cout, height, width, kh, kw, stride, pad) != nullptr) return 0;
  return cmir_gemm::typed_split_workspace_bound(conv_gemm(batch, cin, cout, height, width, kh, kw, stride, pad, 0),
                                                1, cmir_gemm::kMaxTypedSplits);
}

cudaError_t launch_conv2d(cudaStream_t stream, CmirDType dtype, const void* x, const void* w, const void* bias,
                          const void* residual, void* y, void* workspace, size_t workspace_bytes, int batch, int cin,
                          int cout, int height, int width, int kh, int kw, int stride, int pad, int relu) {
  if (!cmir_cuda::valid_dtype(dtype)) return cudaErrorInvalidValue;
  if (x == nullptr || w == nullptr || bias == nullptr || y == nullptr) return cudaErrorInvalidValue;
  if (relu != 0 && relu != 1) return cudaErrorInvalidValue;
  if (conv2d_unsupported(batch, cin, cout, height, width, kh, kw, stride, pad) != nullptr) {
    return cudaErrorInvalidValue;
  }
  const size_t es = cmir_cuda::dtype_size(dtype);
  const size_t out_hw = static_cast<size_t>(conv2d_output_size(height, kh, stride, pad)) *
                        conv2d_output_size(width, kw, stride, pad);
  const size_t y_bytes = static_cast<size_t>(batch) * cout * out_hw * es;
  // Blocks read x, w, bias and the residual while others store y and the workspace: nothing may overlap them.
  const void* ins[] = {x, w, bias, residual};
  const size_t sizes[] = {static_cast<size_t>(batch) * cin * height * width * es,
                          static_cast<size_t>(cout) * cin * kh * kw * es, static_cast<size_t>(cout) * es, y_bytes};
  const void* outs[] = {y, workspace};
  const size_t out_sizes[] = {y_bytes, workspace_bytes};
  if (!cmir_cuda::disjoint(ins, sizes, 4, outs, out_sizes, 2)) return cudaErrorInvalidValue;
  int sms = 0;
  CMIR_CUDA_TRY(cmir_cuda::sm_count(&sms));
  const cmir_gemm::GemmBatch gb = conv_gemm(batch, cin, cout, height, width, kh, kw, stride, pad, relu);
  switch (dtype) {
    case CmirDType::kFloat32:
      return cmir_gemm::launch_typed_conv<float, true>(stream, gb, nullptr, x, w, bias, residual, y, workspace,
                                                       workspace_bytes, sms);
    case CmirDType::kFloat16:
      return cmir_gemm::launch_typed_conv<__half, true>(stream, gb, nullptr, x, w, bias, residual, y, workspace,
                                                        workspace_bytes, sms);
    case CmirDType::kBFloat16:
      return cmir_gemm::launch_typed_conv<__nv_bfloat16, true>(stream, gb, nullptr, x, w, bias, residual, y, workspace,
                                                               workspace_bytes, sms);
  }
  return cudaErrorInvalidValue;
}

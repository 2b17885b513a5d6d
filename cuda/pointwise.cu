// Pointwise (1x1) convolution + bias [+ residual] [+ ReLU]: one launch of the shared batched GEMM (gemm.cuh) with
// its typed NCHW output, so the epilogue that cuDNN runs as separate kernels (bias add, residual add, ReLU) happens
// at the store.
#include "pointwise.cuh"

#include <cstdint>

#include "dtype.cuh"
#include "gemm.cuh"

using cmir_cuda::overlaps;

namespace {

template <typename T>
cudaError_t launch_typed(cudaStream_t stream, const void* x, const void* w, const void* bias, const void* residual,
                         void* y, int batch, int cin, int cout, int hw, int relu, int sms) {
  // The GEMM's rows are the pixels of each image (m = b * HW + p) and its K the input channels: A(m, k) =
  // x[b, k, p] is read in place from NCHW (consecutive m adjacent: tokens fastest), the output written back as NCHW.
  cmir_gemm::GemmBatch gb{};
  gb.M = batch * hw;
  gb.n_out = cout;
  gb.K = cin;
  gb.rows = hw;
  gb.a_m_contig = 1;
  gb.out_mode = cmir_gemm::kOutTyped;
  gb.relu = relu;
  cmir_gemm::GemmProblem& p = gb.p[0];
  p.a = x;
  p.a_bs = static_cast<int64_t>(cin) * hw;
  p.a_rs = 1;
  p.a_ks = hw;
  p.w = w;
  p.bias = bias;
  p.res = residual;
  p.r_bs = p.o_bs = static_cast<int64_t>(cout) * hw;
  p.r_rs = p.o_rs = 1;
  p.r_ns = p.o_ns = hw;
  p.out_t = y;
  // max_splits 1: the typed output is written once, by the block that holds the whole K sum (no partials, no memset).
  return cmir_gemm::plan_and_launch_gemm<T>(stream, gb, 1, false, sms, 1);
}

}  // namespace

cudaError_t launch_pointwise_conv(cudaStream_t stream, CmirDType dtype, const void* x, const void* w,
                                  const void* bias, const void* residual, void* y, int batch, int cin, int cout,
                                  int height, int width, int relu) {
  if (!cmir_cuda::valid_dtype(dtype)) return cudaErrorInvalidValue;
  if (x == nullptr || w == nullptr || bias == nullptr || y == nullptr) return cudaErrorInvalidValue;
  if (relu != 0 && relu != 1) return cudaErrorInvalidValue;
  if (pointwise_conv_unsupported(batch, cin, cout, height, width) != nullptr) return cudaErrorInvalidValue;
  const size_t es = cmir_cuda::dtype_size(dtype);
  const size_t hw = static_cast<size_t>(height) * width;
  const size_t x_bytes = static_cast<size_t>(batch) * cin * hw * es;
  const size_t y_bytes = static_cast<size_t>(batch) * cout * hw * es;
  // Blocks read x, w and the residual while others store y: no input may share memory with the output.
  if (overlaps(x, x_bytes, y, y_bytes) || overlaps(w, static_cast<size_t>(cout) * cin * es, y, y_bytes) ||
      overlaps(bias, static_cast<size_t>(cout) * es, y, y_bytes) ||
      (residual != nullptr && overlaps(residual, y_bytes, y, y_bytes))) {
    return cudaErrorInvalidValue;
  }
  int sms = 0;
  CMIR_CUDA_TRY(cmir_cuda::sm_count(&sms));
  const int n = static_cast<int>(hw);
  switch (dtype) {
    case CmirDType::kFloat32:
      return launch_typed<float>(stream, x, w, bias, residual, y, batch, cin, cout, n, relu, sms);
    case CmirDType::kFloat16:
      return launch_typed<__half>(stream, x, w, bias, residual, y, batch, cin, cout, n, relu, sms);
    case CmirDType::kBFloat16:
      return launch_typed<__nv_bfloat16>(stream, x, w, bias, residual, y, batch, cin, cout, n, relu, sms);
  }
  return cudaErrorInvalidValue;
}

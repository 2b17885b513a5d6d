// Python wrappers of the involution launchers (argument order and meaning as in cuda/involution.cuh).
#include "involution.cuh"

#include "bindings.hpp"

namespace py = pybind11;

namespace cmir_bindings {

void register_involution(py::module_& m) {
  m.def(
      "involution",
      [](int dtype, std::uintptr_t x, std::uintptr_t kernel, std::uintptr_t y, int batch, int channels, int height,
         int width, int kernel_size, int stride, int group_channels, std::uintptr_t stream, std::uintptr_t scale,
         std::uintptr_t shift, bool relu) {
        cudaError_t err;
        {
          py::gil_scoped_release nogil;
          err = launch_involution_epilogue(as_stream(stream), static_cast<CmirDType>(dtype), as_ptr<const void>(x),
                                           as_ptr<const void>(kernel), as_ptr<void>(y), batch, channels, height,
                                           width, kernel_size, stride, group_channels, as_ptr<const float>(scale),
                                           as_ptr<const float>(shift), relu ? 1 : 0);
        }
        check_launch(err, "launch_involution");
      },
      py::arg("dtype"), py::arg("x"), py::arg("kernel"), py::arg("y"), py::arg("batch"), py::arg("channels"),
      py::arg("height"), py::arg("width"), py::arg("kernel_size"), py::arg("stride"), py::arg("group_channels"),
      py::arg("stream") = 0, py::arg("scale") = 0, py::arg("shift") = 0, py::arg("relu") = false,
      "Involution aggregation on device pointers (ints): x [B,C,H,W], kernel [B,G,K,K,Ho,Wo] -> y [B,C,Ho,Wo]; "
      "optional fp32 per-channel scale/shift and ReLU epilogue. Asynchronous on `stream`.");
  m.def(
      "involution_fused",
      [](int dtype, std::uintptr_t x, std::uintptr_t w1, std::uintptr_t b1, std::uintptr_t w2, std::uintptr_t b2,
         std::uintptr_t y, int batch, int channels, int height, int width, int kernel_size, int stride,
         int group_channels, int hidden, std::uintptr_t stream, std::uintptr_t scale, std::uintptr_t shift,
         bool relu) {
        cudaError_t err;
        {
          py::gil_scoped_release nogil;
          err = launch_involution_fused(as_stream(stream), static_cast<CmirDType>(dtype), as_ptr<const void>(x),
                                        as_ptr<const float>(w1), as_ptr<const float>(b1), as_ptr<const float>(w2),
                                        as_ptr<const float>(b2), as_ptr<void>(y), batch, channels, height, width,
                                        kernel_size, stride, group_channels, hidden, as_ptr<const float>(scale),
                                        as_ptr<const float>(shift), relu ? 1 : 0);
        }
        check_launch(err, "launch_involution_fused");
      },
      py::arg("dtype"), py::arg("x"), py::arg("w1"), py::arg("b1"), py::arg("w2"), py::arg("b2"), py::arg("y"),
      py::arg("batch"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("kernel_size"),
      py::arg("stride"), py::arg("group_channels"), py::arg("hidden"), py::arg("stream") = 0, py::arg("scale") = 0,
      py::arg("shift") = 0, py::arg("relu") = false,
      "Kernel generation (pool, 1x1 conv + folded BN, ReLU, 1x1 conv; fp32 weights) and aggregation in one pass.");
}

}  // namespace cmir_bindings

// Python wrapper of the pointwise-convolution launcher (argument order and meaning as in cuda/pointwise.cuh).
#include "pointwise.cuh"

#include "bindings.hpp"

namespace py = pybind11;

namespace cmir_bindings {

void register_pointwise(py::module_& m) {
  m.def(
      "pointwise_conv_unsupported",
      [](int batch, int cin, int cout, int height, int width) -> py::object {
        const char* why = pointwise_conv_unsupported(batch, cin, cout, height, width);
        return why == nullptr ? py::object(py::none()) : py::object(py::str(why));
      },
      py::arg("batch"), py::arg("cin"), py::arg("cout"), py::arg("height"), py::arg("width"),
      "None when launch_pointwise_conv supports these sizes, else the reason (one line).");
  m.attr("POINTWISE_WORKSPACE_ZERO_BYTES") = kPointwiseWorkspaceZeroBytes;
  m.def("pointwise_conv_workspace_size", &pointwise_conv_workspace_size, py::arg("batch"), py::arg("cin"),
        py::arg("cout"), py::arg("height"), py::arg("width"),
        "Bytes of split-K workspace launch_pointwise_conv can use for these sizes on any card (0: never splits).");
  m.def(
      "pointwise_conv",
      [](int dtype, std::uintptr_t x, std::uintptr_t w, std::uintptr_t bias, std::uintptr_t residual,
         std::uintptr_t y, int batch, int cin, int cout, int height, int width, bool relu, std::uintptr_t workspace,
         size_t workspace_bytes, std::uintptr_t shortcut, int shortcut_channels, int shortcut_height,
         int shortcut_width, int shortcut_stride, std::uintptr_t stream) {
        const PointwiseShortcut sc{as_ptr<const void>(shortcut), shortcut_channels, shortcut_height, shortcut_width,
                                   shortcut_stride};
        cudaError_t err;
        {
          py::gil_scoped_release nogil;
          err = launch_pointwise_conv(as_stream(stream), static_cast<CmirDType>(dtype), as_ptr<const void>(x),
                                      as_ptr<const void>(w), as_ptr<const void>(bias), as_ptr<const void>(residual),
                                      as_ptr<void>(y), as_ptr<void>(workspace), workspace_bytes, batch, cin, cout,
                                      height, width, relu ? 1 : 0, shortcut != 0 ? &sc : nullptr);
        }
        check_launch(err, "launch_pointwise_conv");
      },
      py::arg("dtype"), py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("residual"), py::arg("y"),
      py::arg("batch"), py::arg("cin"), py::arg("cout"), py::arg("height"), py::arg("width"), py::arg("relu") = false,
      py::arg("workspace") = 0, py::arg("workspace_bytes") = 0, py::arg("shortcut") = 0,
      py::arg("shortcut_channels") = 0, py::arg("shortcut_height") = 0, py::arg("shortcut_width") = 0,
      py::arg("shortcut_stride") = 1, py::arg("stream") = 0,
      "1x1 convolution + bias [+ residual] [+ ReLU] on device pointers (ints; residual 0 = none; workspace 0 = K "
      "never split, else pointwise_conv_workspace_size bytes whose first POINTWISE_WORKSPACE_ZERO_BYTES are zero; "
      "shortcut 0 = none, else a [B, shortcut_channels, shortcut_height, shortcut_width] projection shortcut read at "
      "shortcut_stride, w then [cout, cin + shortcut_channels]). Asynchronous on `stream`.");
  m.def(
      "pointwise_shortcut_unsupported",
      [](int cin, int height, int width, int channels, int s_height, int s_width, int stride) -> py::object {
        const PointwiseShortcut s{nullptr, channels, s_height, s_width, stride};
        const char* why = pointwise_shortcut_unsupported(cin, height, width, s);
        return why == nullptr ? py::object(py::none()) : py::object(py::str(why));
      },
      py::arg("cin"), py::arg("height"), py::arg("width"), py::arg("channels"), py::arg("shortcut_height"),
      py::arg("shortcut_width"), py::arg("stride"),
      "None when a projection shortcut of these sizes can join the pointwise convolution, else the reason.");
}

}  // namespace cmir_bindings

// Python wrapper of the implicit-GEMM convolution launcher (argument order and meaning as in cuda/conv2d.cuh).
#include "conv2d.cuh"

#include "bindings.hpp"

namespace py = pybind11;

namespace cmir_bindings {

void register_conv2d(py::module_& m) {
  m.def(
      "conv2d_unsupported",
      [](int batch, int cin, int cout, int height, int width, int kh, int kw, int stride, int pad) -> py::object {
        const char* why = conv2d_unsupported(batch, cin, cout, height, width, kh, kw, stride, pad);
        return why == nullptr ? py::object(py::none()) : py::object(py::str(why));
      },
      py::arg("batch"), py::arg("cin"), py::arg("cout"), py::arg("height"), py::arg("width"), py::arg("kh"),
      py::arg("kw"), py::arg("stride"), py::arg("pad"),
      "None when launch_conv2d supports these sizes, else the reason (one line).");
  m.def("conv2d_workspace_size", &conv2d_workspace_size, py::arg("batch"), py::arg("cin"), py::arg("cout"),
        py::arg("height"), py::arg("width"), py::arg("kh"), py::arg("kw"), py::arg("stride"), py::arg("pad"),
        "Bytes of split-K workspace launch_conv2d can use for these sizes on any card (0: never splits).");
  m.def(
      "conv2d",
      [](int dtype, std::uintptr_t x, std::uintptr_t w, std::uintptr_t bias, std::uintptr_t residual,
         std::uintptr_t y, int batch, int cin, int cout, int height, int width, int kh, int kw, int stride, int pad,
         bool relu, std::uintptr_t workspace, size_t workspace_bytes, std::uintptr_t stream) {
        cudaError_t err;
        {
          py::gil_scoped_release nogil;
          err = launch_conv2d(as_stream(stream), static_cast<CmirDType>(dtype), as_ptr<const void>(x),
                              as_ptr<const void>(w), as_ptr<const void>(bias), as_ptr<const void>(residual),
                              as_ptr<void>(y), as_ptr<void>(workspace), workspace_bytes, batch, cin, cout, height,
                              width, kh, kw, stride, pad, relu ? 1 : 0);
        }
        check_launch(err, "launch_conv2d");
      },
      py::arg("dtype"), py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("residual"), py::arg("y"),
      py::arg("batch"), py::arg("cin"), py::arg("cout"), py::arg("height"), py::arg("width"), py::arg("kh"),
      py::arg("kw"), py::arg("stride") = 1, py::arg("pad") = 0, py::arg("relu") = false, py::arg("workspace") = 0,
      py::arg("workspace_bytes") = 0, py::arg("stream") = 0,
      "Convolution (implicit GEMM) + bias [+ residual] [+ ReLU] on device pointers (ints; residual 0 = none; "
      "workspace as for pointwise_conv). Asynchronous on `stream`.");
}

}  // namespace cmir_bindings

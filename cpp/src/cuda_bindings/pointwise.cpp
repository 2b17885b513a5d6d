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
  m.def(
      "pointwise_conv",
      [](int dtype, std::uintptr_t x, std::uintptr_t w, std::uintptr_t bias, std::uintptr_t residual,
         std::uintptr_t y, int batch, int cin, int cout, int height, int width, bool relu, std::uintptr_t stream) {
        cudaError_t err;
        {
          py::gil_scoped_release nogil;
          err = launch_pointwise_conv(as_stream(stream), static_cast<CmirDType>(dtype), as_ptr<const void>(x),
                                      as_ptr<const void>(w), as_ptr<const void>(bias), as_ptr<const void>(residual),
                                      as_ptr<void>(y), batch, cin, cout, height, width, relu ? 1 : 0);
        }
        check_launch(err, "launch_pointwise_conv");
      },
      py::arg("dtype"), py::arg("x"), py::arg("w"), py::arg("bias"), py::arg("residual"), py::arg("y"),
      py::arg("batch"), py::arg("cin"), py::arg("cout"), py::arg("height"), py::arg("width"), py::arg("relu") = false,
      py::arg("stream") = 0,
      "1x1 convolution + bias [+ residual] [+ ReLU] on device pointers (ints; residual 0 = none). Asynchronous on "
      "`stream`.");
}

}  // namespace cmir_bindings

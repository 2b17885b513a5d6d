// Python wrapper of the spatial-attention launcher (argument order and meaning as in cuda/spatial_attention.cuh).
#include "spatial_attention.cuh"

#include "bindings.hpp"

namespace py = pybind11;

namespace cmir_bindings {

void register_spatial_attention(py::module_& m) {
  m.def(
      "spatial_attention_unsupported",
      [](int batch, int ca, int cp, int height, int width, int k) -> py::object {
        const char* why = spatial_attention_unsupported(batch, ca, cp, height, width, k);
        return why == nullptr ? py::object(py::none()) : py::object(py::str(why));
      },
      py::arg("batch"), py::arg("ca"), py::arg("cp"), py::arg("height"), py::arg("width"), py::arg("k"),
      "None when launch_spatial_attention supports these sizes, else the reason (one line).");
  m.def("spatial_attention_workspace_size", &spatial_attention_workspace_size, py::arg("batch"), py::arg("ca"),
        py::arg("cp"), py::arg("height"), py::arg("width"), "Bytes of fp32 workspace launch_spatial_attention needs.");
  m.def(
      "spatial_attention",
      [](int dtype, std::uintptr_t a, std::uintptr_t p, std::uintptr_t w, std::uintptr_t bias, std::uintptr_t ya,
         std::uintptr_t yp, std::uintptr_t att, std::uintptr_t workspace, size_t workspace_bytes, int batch, int ca,
         int cp, int height, int width, int k, std::uintptr_t stream) {
        cudaError_t err;
        {
          py::gil_scoped_release nogil;
          err = launch_spatial_attention(as_stream(stream), static_cast<CmirDType>(dtype), as_ptr<const void>(a),
                                         as_ptr<const void>(p), as_ptr<const float>(w), as_ptr<const float>(bias),
                                         as_ptr<void>(ya), as_ptr<void>(yp), as_ptr<void>(att),
                                         as_ptr<float>(workspace), workspace_bytes, batch, ca, cp, height, width, k);
        }
        check_launch(err, "launch_spatial_attention");
      },
      py::arg("dtype"), py::arg("a"), py::arg("p"), py::arg("w"), py::arg("bias"), py::arg("ya"), py::arg("yp"),
      py::arg("att"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("batch"), py::arg("ca"), py::arg("cp"),
      py::arg("height"), py::arg("width"), py::arg("k"), py::arg("stream") = 0,
      "Spatial attention of [a; p] on device pointers (ints; p/yp 0 when cp = 0). Asynchronous on `stream`.");
}

}  // namespace cmir_bindings

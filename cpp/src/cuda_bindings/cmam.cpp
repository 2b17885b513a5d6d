// Python wrappers of the CMAM launcher (argument order and meaning as in cuda/cmam.cuh).
#include "cmam.cuh"

#include "bindings.hpp"

namespace py = pybind11;

namespace cmir_bindings {

void register_cmam(py::module_& m) {
  m.def(
      "cmam_workspace_size",
      [](int dtype, int batch, int channels, int height, int width, int dim, int heads) {
        return cmam_workspace_size(static_cast<CmirDType>(dtype), batch, channels, height, width, dim, heads);
      },
      py::arg("dtype"), py::arg("batch"), py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("dim"),
      py::arg("heads"), "Bytes of device workspace launch_cmam needs for these sizes.");
  m.def(
      "cmam_packed_weights_size",
      [](int channels, int dim) { return cmam_packed_weights_size(channels, dim); }, py::arg("channels"),
      py::arg("dim"), "Elements of one packed CMAM weight buffer: 4*dim*C + 3*dim + 3*C.");
  m.def(
      "cmam",
      [](int dtype, std::uintptr_t art, std::uintptr_t pv, std::uintptr_t weights_art, std::uintptr_t weights_pv,
         std::uintptr_t art_out, std::uintptr_t pv_out, std::uintptr_t workspace, std::size_t workspace_bytes,
         int batch, int channels, int height, int width, int dim, int heads, float eps, std::uintptr_t stream) {
        cudaError_t err;
        {
          py::gil_scoped_release nogil;
          err = launch_cmam(as_stream(stream), static_cast<CmirDType>(dtype), as_ptr<const void>(art),
                            as_ptr<const void>(pv), as_ptr<const void>(weights_art), as_ptr<const void>(weights_pv),
                            as_ptr<void>(art_out), as_ptr<void>(pv_out), as_ptr<void>(workspace), workspace_bytes,
                            batch, channels, height, width, dim, heads, eps);
        }
        check_launch(err, "launch_cmam");
      },
      py::arg("dtype"), py::arg("art"), py::arg("pv"), py::arg("weights_art"), py::arg("weights_pv"),
      py::arg("art_out"), py::arg("pv_out"), py::arg("workspace"), py::arg("workspace_bytes"), py::arg("batch"),
      py::arg("channels"), py::arg("height"), py::arg("width"), py::arg("dim"), py::arg("heads"), py::arg("eps"),
      py::arg("stream") = 0, "Fused CMAM (both directions) on device pointers (ints). Asynchronous on `stream`.");
}

}  // namespace cmir_bindings

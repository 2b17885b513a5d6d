// Python access to the native engine (cmir_trt._C.NativeEngine). predict releases the GIL while it runs, so several
// Python threads can predict at once (the engine hands each call its own execution context).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "cmir/engine.hpp"

namespace py = pybind11;

namespace cmir {
namespace {

// A C-contiguous float32 array of exactly `shape` (batch first), or a ValueError/TypeError naming the problem.
const float* checked(const py::object& obj, const char* name, const std::vector<py::ssize_t>& shape) {
  if (!py::isinstance<py::array>(obj)) throw py::type_error(std::string(name) + " must be a numpy array");
  py::array a = py::reinterpret_borrow<py::array>(obj);
  if (!a.dtype().is(py::dtype::of<float>()))
    throw py::type_error(std::string(name) + " must be float32, got " + std::string(py::str(a.dtype())));
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be C-contiguous");
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (std::size_t i = 0; ok && i < shape.size(); ++i) ok = a.shape(static_cast<py::ssize_t>(i)) == shape[i];
  if (!ok) {
    std::string got = "[", want = "[";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) got += (i ? ", " : "") + std::to_string(a.shape(i));
    for (std::size_t i = 0; i < shape.size(); ++i) want += (i ? ", " : "") + std::to_string(shape[i]);
    throw py::value_error(std::string(name) + " has shape " + got + "], expected " + want + "]");
  }
  return static_cast<const float*>(a.data());
}

class PyEngine {
 public:
  PyEngine(const std::string& path, int threads, const std::string& precision) {
    Precision p;
    if (precision == "fp32") {
      p = Precision::kFp32;
    } else if (precision == "bf16") {
      p = Precision::kBf16;
    } else {
      throw py::value_error("the native engine runs precision 'fp32' or 'bf16', got '" + precision + "'");
    }
    py::gil_scoped_release release;  // loading validates (checksums) the whole file
    engine_ = Engine::load(path, threads, p);
  }

  py::tuple predict(const py::object& art, const py::object& pv, const py::object& clinical, bool profile) {
    const InputSpec& sp = engine_->spec();
    if (!py::isinstance<py::array>(art)) throw py::type_error("art must be a numpy array");
    py::array a = py::reinterpret_borrow<py::array>(art);
    if (a.ndim() != 4) throw py::value_error("art must have 4 dimensions [B, C, S, S], got " +
                                             std::to_string(a.ndim()));
    const py::ssize_t B = a.shape(0);
    if (B < 1) throw py::value_error("batch size must be at least 1");
    const std::vector<py::ssize_t> img = {B, sp.in_channels, sp.image_size, sp.image_size};
    const float* art_p = checked(art, "art", img);
    const float* pv_p = nullptr;
    const float* clin_p = nullptr;
    if (sp.two_phase) {
      pv_p = checked(pv, "pv", img);
    }
    if (sp.num_clinical > 0) {
      clin_p = checked(clinical, "clinical", {B, sp.num_clinical});
    }
    py::array_t<float> logit({B, static_cast<py::ssize_t>(sp.num_classes)});
    py::array_t<float> prob({B, static_cast<py::ssize_t>(sp.num_classes)});
    py::array_t<float> heat({B, static_cast<py::ssize_t>(1), static_cast<py::ssize_t>(sp.image_size),
                             static_cast<py::ssize_t>(sp.image_size)});
    float* lp = logit.mutable_data();
    float* pp = prob.mutable_data();
    float* hp = heat.mutable_data();
    std::vector<OpTiming> timings;
    {
      py::gil_scoped_release release;
      engine_->predict(art_p, pv_p, clin_p, static_cast<int>(B), lp, pp, hp, profile ? &timings : nullptr);
    }
    py::list prof;
    for (const auto& t : timings) prof.append(py::make_tuple(t.name, t.seconds));
    return py::make_tuple(prob, logit, heat, prof);
  }

  py::dict spec() const {
    const InputSpec& sp = engine_->spec();
    py::dict d;
    d["image_size"] = sp.image_size;
    d["in_channels"] = sp.in_channels;
    d["num_clinical"] = sp.num_clinical;
    d["num_classes"] = sp.num_classes;
    d["two_phase"] = sp.two_phase;
    return d;
  }
  std::string metadata_json() const { return engine_->metadata_json(); }
  int threads() const { return engine_->threads(); }
  std::string precision() const { return precision_name(engine_->precision()); }
  std::size_t num_bf16_tensors() const { return engine_->num_bf16_tensors(); }
  std::size_t num_ops() const { return engine_->num_ops(); }

 private:
  std::unique_ptr<Engine> engine_;
};

}  // namespace

void register_engine_bindings(py::module_& m) {
  py::register_exception<PlanError>(m, "PlanError", PyExc_ValueError);
  py::class_<PyEngine>(m, "NativeEngine", "A loaded CMIR plan executed by the native CPU engine")
      .def(py::init<const std::string&, int, const std::string&>(), py::arg("path"), py::arg("threads") = 0,
           py::arg("precision") = "fp32")
      .def("predict", &PyEngine::predict, py::arg("art"), py::arg("pv") = py::none(),
           py::arg("clinical") = py::none(), py::arg("profile") = false,
           "(probability, logit, heatmap, profile) from NCHW float32 arrays; releases the GIL")
      .def_property_readonly("spec", &PyEngine::spec)
      .def_property_readonly("metadata_json", &PyEngine::metadata_json)
      .def_property_readonly("threads", &PyEngine::threads)
      .def_property_readonly("precision", &PyEngine::precision)
      .def_property_readonly("num_bf16_tensors", &PyEngine::num_bf16_tensors)
      .def_property_readonly("num_ops", &PyEngine::num_ops);
  m.def("bf16_supported", []() {
    std::string why;
    const bool ok = bf16_supported(&why);
    return py::make_tuple(ok, why);
  }, "(True, '') when the native engine can run bf16 on this CPU, else (False, reason)");
  m.def("onednn_cpu_isa", &onednn_cpu_isa, "oneDNN's effective CPU instruction set, e.g. 'avx512_core_bf16'");
  m.def("validate_plan_bytes", [](py::bytes data) {
    std::string s = data;
    Plan p = parse_plan(reinterpret_cast<const unsigned char*>(s.data()), s.size());
    return p.ops.size();
  }, "Parse and validate a plan held in memory (raises PlanError); returns the op count");
}

}  // namespace cmir

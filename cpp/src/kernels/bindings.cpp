// Python access to the CPU kernels (cmir_trt._C.kernels), for the tests and the per-op benchmarks.
// Arrays must already be float32, C-contiguous and of the documented shape: nothing is converted silently, so a test
// (or a caller) that passes the wrong thing gets an error that names it. The GIL is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <string>
#include <vector>

#include "cmir/cpu_kernels.hpp"

namespace py = pybind11;

namespace cmir {
namespace {

using cpu::Isa;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

// A float32, C-contiguous array of ndim dimensions; returns its data pointer.
const float* checked(const py::array& a, const char* name, py::ssize_t ndim) {
  if (!a.dtype().is(py::dtype::of<float>())) {
    throw py::type_error(std::string(name) + " must be a float32 array, got dtype " +
                         std::string(py::str(a.dtype())));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + " must be C-contiguous (use numpy.ascontiguousarray)");
  }
  if (a.ndim() != ndim) {
    throw py::value_error(std::string(name) + " must have " + std::to_string(ndim) + " dimensions, got shape " +
                          shape_str(a));
  }
  return static_cast<const float*>(a.data());
}

void expect_shape(const py::array& a, const char* name, const std::vector<py::ssize_t>& want) {
  bool ok = a.ndim() == static_cast<py::ssize_t>(want.size());
  for (std::size_t i = 0; ok && i < want.size(); ++i) ok = a.shape(static_cast<py::ssize_t>(i)) == want[i];
  if (!ok) {
    std::string w = "(";
    for (std::size_t i = 0; i < want.size(); ++i) w += (i ? ", " : "") + std::to_string(want[i]);
    throw py::value_error(std::string(name) + " must have shape " + w + "), got " + shape_str(a));
  }
}

int as_int(py::ssize_t v, const char* name) {
  if (v <= 0 || v > (1LL << 30)) throw py::value_error(std::string(name) + " is out of range");
  return static_cast<int>(v);
}

Isa parse_isa(const std::string& s) {
  if (s == "auto") return Isa::kAuto;
  if (s == "avx512") return Isa::kAvx512;
  if (s == "avx2") return Isa::kAvx2;
  if (s == "scalar") return Isa::kScalar;
  throw py::value_error("isa must be one of 'auto', 'avx512', 'avx2', 'scalar', got '" + s + "'");
}

py::array_t<float> empty(const std::vector<py::ssize_t>& shape) { return py::array_t<float>(shape); }

float* data(py::array_t<float>& a) { return a.mutable_data(); }

// ---------------------------------------------------------------- involution
py::array_t<float> involution(const py::array& x, const py::array& kernel, int kernel_size, int stride,
                              int group_channels, int threads, const std::string& isa, const py::object& scale,
                              const py::object& shift, bool relu, bool reference) {
  const float* xp = checked(x, "x", 4);
  const int b = as_int(x.shape(0), "batch"), h = as_int(x.shape(1), "height"), w = as_int(x.shape(2), "width"),
            c = as_int(x.shape(3), "channels");
  if (kernel_size < 1 || kernel_size % 2 == 0) throw py::value_error("kernel_size must be odd and positive");
  if (stride < 1) throw py::value_error("stride must be >= 1");
  if (group_channels < 1 || c % group_channels != 0) {
    throw py::value_error("channels (" + std::to_string(c) + ") must be a multiple of group_channels (" +
                          std::to_string(group_channels) + ")");
  }
  const int g = c / group_channels;
  const int ho = (h + stride - 1) / stride, wo = (w + stride - 1) / stride;
  const float* kp = checked(kernel, "kernel", kernel.ndim() == 6 ? 6 : 4);
  if (kernel.ndim() == 6) {
    expect_shape(kernel, "kernel", {b, ho, wo, g, kernel_size, kernel_size});
  } else {
    expect_shape(kernel, "kernel", {b, ho, wo, static_cast<py::ssize_t>(g) * kernel_size * kernel_size});
  }
  cpu::Epilogue epi;
  py::array scale_arr, shift_arr;
  if (!scale.is_none()) {
    scale_arr = scale.cast<py::array>();
    epi.scale = checked(scale_arr, "scale", 1);
    expect_shape(scale_arr, "scale", {c});
  }
  if (!shift.is_none()) {
    shift_arr = shift.cast<py::array>();
    epi.shift = checked(shift_arr, "shift", 1);
    expect_shape(shift_arr, "shift", {c});
  }
  epi.relu = relu;
  const Isa which = parse_isa(isa);
  auto y = empty({b, ho, wo, c});
  float* yp = data(y);
  {
    py::gil_scoped_release release;
    if (reference) {
      cpu::involution_nhwc_epilogue_ref(xp, kp, yp, b, h, w, c, kernel_size, stride, group_channels, epi);
    } else {
      cpu::involution_nhwc_epilogue(xp, kp, yp, b, h, w, c, kernel_size, stride, group_channels, epi, threads,
                                    which);
    }
  }
  return y;
}

// ---------------------------------------------------------------- fused involution
py::array_t<float> involution_fused(const py::array& x, const py::array& reduce_wt, const py::array& reduce_b,
                                    const py::array& span_wt, const py::array& span_b, int kernel_size, int stride,
                                    int group_channels, int threads, const std::string& isa, const py::object& scale,
                                    const py::object& shift, bool relu, bool reference,
                                    const std::string& precision = "fp32") {
  if (precision != "fp32" && precision != "bf16") throw py::value_error("precision must be 'fp32' or 'bf16'");
  const bool bf16 = precision == "bf16" && !reference;
  const float* xp = checked(x, "x", 4);
  const int b = as_int(x.shape(0), "batch"), h = as_int(x.shape(1), "height"), w = as_int(x.shape(2), "width"),
            c = as_int(x.shape(3), "channels");
  if (kernel_size < 1 || kernel_size % 2 == 0) throw py::value_error("kernel_size must be odd and positive");
  if (stride < 1) throw py::value_error("stride must be >= 1");
  if (group_channels < 1 || c % group_channels != 0) {
    throw py::value_error("channels (" + std::to_string(c) + ") must be a multiple of group_channels (" +
                          std::to_string(group_channels) + ")");
  }
  cpu::InvolutionGeneration gen;
  gen.reduce_wt = checked(reduce_wt, "reduce_wt", 2);
  const int hidden = as_int(reduce_wt.shape(1), "hidden");
  gen.hidden = hidden;
  const py::ssize_t gkk = static_cast<py::ssize_t>(c / group_channels) * kernel_size * kernel_size;
  expect_shape(reduce_wt, "reduce_wt", {c, hidden});
  gen.reduce_b = checked(reduce_b, "reduce_b", 1);
  expect_shape(reduce_b, "reduce_b", {hidden});
  gen.span_wt = checked(span_wt, "span_wt", 2);
  expect_shape(span_wt, "span_wt", {hidden, gkk});
  gen.span_b = checked(span_b, "span_b", 1);
  expect_shape(span_b, "span_b", {gkk});
  cpu::Epilogue epi;
  py::array scale_arr, shift_arr;
  if (!scale.is_none()) {
    scale_arr = scale.cast<py::array>();
    epi.scale = checked(scale_arr, "scale", 1);
    expect_shape(scale_arr, "scale", {c});
  }
  if (!shift.is_none()) {
    shift_arr = shift.cast<py::array>();
    epi.shift = checked(shift_arr, "shift", 1);
    expect_shape(shift_arr, "shift", {c});
  }
  epi.relu = relu;
  const Isa which = parse_isa(isa);
  const int ho = (h + stride - 1) / stride, wo = (w + stride - 1) / stride;
  auto y = empty({b, ho, wo, c});
  float* yp = data(y);
  const std::size_t nscratch =
      reference ? 0
      : bf16    ? cpu::involution_fused_bf16_scratch_floats(c, hidden, c / group_channels, kernel_size, threads)
                : cpu::involution_fused_scratch_floats(c, hidden, c / group_channels, kernel_size, threads);
  std::vector<float> scratch(nscratch);
  std::vector<std::uint16_t> reduce16, span16;
  cpu::InvolutionGenerationBf16 gen16;
  if (bf16) {
    if (!cpu::bf16_kernels_supported()) throw py::value_error("bf16 needs a CPU with avx512_bf16");
    reduce16.resize(cpu::bf16_pack_pairs_size(c, hidden));
    span16.resize(cpu::bf16_pack_pairs_size(hidden, static_cast<int>(gkk)));
    cpu::bf16_pack_pairs(gen.reduce_wt, c, hidden, reduce16.data());
    cpu::bf16_pack_pairs(gen.span_wt, hidden, static_cast<int>(gkk), span16.data());
    gen16 = {reduce16.data(), gen.reduce_b, span16.data(), gen.span_b, hidden};
  }
  {
    py::gil_scoped_release release;
    if (bf16) {
      cpu::involution_fused_nhwc_bf16(xp, gen16, yp, scratch.data(), scratch.size(), b, h, w, c, kernel_size, stride,
                                      group_channels, epi, threads);
    } else if (reference) {
      cpu::involution_fused_nhwc_ref(xp, gen, yp, b, h, w, c, kernel_size, stride, group_channels, epi);
    } else {
      cpu::involution_fused_nhwc(xp, gen, yp, scratch.data(), scratch.size(), b, h, w, c, kernel_size, stride,
                                 group_channels, epi, threads, which);
    }
  }
  return y;
}

// ---------------------------------------------------------------- CMAM
py::tuple cmam(const py::array& art, const py::array& pv, const py::array& weights_art, const py::array& weights_pv,
               int dim, int heads, float eps, int threads, const std::string& isa, bool in_place, bool reference,
               const std::string& precision = "fp32") {
  if (precision != "fp32" && precision != "bf16") throw py::value_error("precision must be 'fp32' or 'bf16'");
  const bool bf16 = precision == "bf16" && !reference;
  if (bf16 && !cpu::bf16_kernels_supported()) throw py::value_error("bf16 needs a CPU with avx512_bf16");
  const float* ap = checked(art, "art", 3);
  const float* pp = checked(pv, "pv", 3);
  const int b = as_int(art.shape(0), "batch"), n = as_int(art.shape(1), "tokens"), c = as_int(art.shape(2), "channels");
  expect_shape(pv, "pv", {b, n, c});
  if (dim < 1 || heads < 1 || dim % heads != 0) throw py::value_error("dim must be a positive multiple of heads");
  const auto wlen = static_cast<py::ssize_t>(cpu::cmam_weight_floats(c, dim));
  const float* wa = checked(weights_art, "weights_art", 1);
  const float* wp = checked(weights_pv, "weights_pv", 1);
  expect_shape(weights_art, "weights_art", {wlen});
  expect_shape(weights_pv, "weights_pv", {wlen});
  const Isa which = parse_isa(isa);
  auto ya = empty({b, n, c});
  auto yp = empty({b, n, c});
  float* yap = data(ya);
  float* ypp = data(yp);
  std::vector<float> scratch(reference ? 0
                             : bf16    ? cpu::cmam_bf16_scratch_floats(b, n, c, dim, heads)
                                       : cpu::cmam_scratch_floats(b, n, c, dim, heads));
  std::vector<std::uint16_t> pa, pq;
  if (bf16) {
    pa.resize(cpu::cmam_bf16_weight_elems(c, dim));
    pq.resize(pa.size());
    cpu::cmam_pack_bf16(wa, c, dim, pa.data());
    cpu::cmam_pack_bf16(wp, c, dim, pq.data());
  }
  {
    py::gil_scoped_release release;
    if (in_place) {  // outputs start as copies of the inputs and are passed as both (tests the aliasing contract)
      std::memcpy(yap, ap, sizeof(float) * static_cast<std::size_t>(b) * n * c);
      std::memcpy(ypp, pp, sizeof(float) * static_cast<std::size_t>(b) * n * c);
      ap = yap;
      pp = ypp;
    }
    if (bf16) {
      cpu::cmam_bf16(ap, pp, wa, wp, pa.data(), pq.data(), yap, ypp, scratch.data(), b, n, c, dim, heads, eps,
                     threads);
    } else if (reference) {
      cpu::cmam_ref(ap, pp, wa, wp, yap, ypp, b, n, c, dim, heads, eps);
    } else {
      cpu::cmam(ap, pp, wa, wp, yap, ypp, scratch.data(), b, n, c, dim, heads, eps, threads, which);
    }
  }
  return py::make_tuple(ya, yp);
}

// ---------------------------------------------------------------- spatial attention
py::tuple spatial_attention(const py::array& a, const py::object& p, const py::array& weight, float bias, int threads,
                            const std::string& isa, bool in_place, bool reference) {
  const float* ap = checked(a, "a", 4);
  const int b = as_int(a.shape(0), "batch"), h = as_int(a.shape(1), "height"), w = as_int(a.shape(2), "width"),
            c = as_int(a.shape(3), "channels");
  const float* pp = nullptr;
  py::array p_arr;
  if (!p.is_none()) {
    p_arr = p.cast<py::array>();
    pp = checked(p_arr, "p", 4);
    expect_shape(p_arr, "p", {b, h, w, c});
  }
  const float* wp = checked(weight, "weight", 4);
  const py::ssize_t k = weight.shape(3);
  if (k < 1 || k % 2 == 0 || k > 63) throw py::value_error("weight must be [1, 2, K, K] with odd K <= 63");
  expect_shape(weight, "weight", {1, 2, k, k});
  const Isa which = parse_isa(isa);
  auto att = empty({b, h, w});
  auto ya = empty({b, h, w, c});
  py::array_t<float> yp;
  float* ypp = nullptr;
  if (pp) {
    yp = empty({b, h, w, c});
    ypp = data(yp);
  }
  float* attp = data(att);
  float* yap = data(ya);
  std::vector<float> scratch(reference ? 0 : cpu::spatial_attention_scratch_floats(b, h, w));
  {
    py::gil_scoped_release release;
    if (in_place) {
      const std::size_t count = sizeof(float) * static_cast<std::size_t>(b) * h * w * c;
      std::memcpy(yap, ap, count);
      ap = yap;
      if (pp) {
        std::memcpy(ypp, pp, count);
        pp = ypp;
      }
    }
    if (reference) {
      cpu::spatial_attention_nhwc_ref(ap, pp, wp, bias, static_cast<int>(k), attp, yap, ypp, b, h, w, c);
    } else {
      cpu::spatial_attention_nhwc(ap, pp, wp, bias, static_cast<int>(k), attp, yap, ypp, scratch.data(), b, h, w, c,
                                  threads, which);
    }
  }
  return py::make_tuple(att, ya, pp ? py::object(yp) : py::object(py::none()));
}

}  // namespace

void register_kernel_bindings(py::module_& m) {
  py::module_ k = m.def_submodule("kernels", "cmir_trt's own CPU kernels (NHWC float32) and their scalar references");
  k.def("isa_supported", [](const std::string& isa) { return cpu::isa_supported(parse_isa(isa)); }, py::arg("isa"),
        "Whether this CPU can run the kernels built for `isa` ('auto', 'avx512', 'avx2', 'scalar').");
  k.def(
      "resolve_isa",
      [](const std::string& isa) { return std::string(cpu::isa_name(cpu::resolve_isa(parse_isa(isa)))); },
        py::arg("isa") = "auto",
        "The instruction set `isa` runs on ('auto' -> the best supported, capped by the CMIR_CPU_ISA env var).");
  k.def("set_parallel_grain", &cpu::set_parallel_grain, py::arg("multiply_adds"),
        "Smallest work (multiply-adds) worth one more thread (default 2**18; 0: always all threads). Speed only; "
        "returns the previous value.");
  k.def("cmam_scratch_floats", &cpu::cmam_scratch_floats, py::arg("batch"), py::arg("tokens"), py::arg("channels"),
        py::arg("dim"), py::arg("heads"));
  k.def("cmam_weight_floats", &cpu::cmam_weight_floats, py::arg("channels"), py::arg("dim"));

  k.def(
      "involution",
      [](const py::array& x, const py::array& kernel, int kernel_size, int stride, int group_channels, int threads,
         const std::string& isa, const py::object& scale, const py::object& shift, bool relu) {
        return involution(x, kernel, kernel_size, stride, group_channels, threads, isa, scale, shift, relu, false);
      },
      py::arg("x"), py::arg("kernel"), py::arg("kernel_size"), py::arg("stride") = 1, py::arg("group_channels") = 16,
      py::arg("threads") = 1, py::arg("isa") = "auto", py::arg("scale") = py::none(), py::arg("shift") = py::none(),
      py::arg("relu") = false,
      "Involution aggregation, NHWC: x [B,H,W,C], kernel [B,Ho,Wo,G*K*K] or [B,Ho,Wo,G,K,K] -> y [B,Ho,Wo,C]; "
      "optional epilogue y = relu?(y * scale[C] + shift[C]).");
  k.def(
      "involution_ref",
      [](const py::array& x, const py::array& kernel, int kernel_size, int stride, int group_channels,
         const py::object& scale, const py::object& shift, bool relu) {
        return involution(x, kernel, kernel_size, stride, group_channels, 1, "auto", scale, shift, relu, true);
      },
      py::arg("x"), py::arg("kernel"), py::arg("kernel_size"), py::arg("stride") = 1, py::arg("group_channels") = 16,
      py::arg("scale") = py::none(), py::arg("shift") = py::none(), py::arg("relu") = false,
      "Scalar float64-accumulating reference of involution().");

  k.def(
      "involution_fused",
      [](const py::array& x, const py::array& reduce_wt, const py::array& reduce_b, const py::array& span_wt,
         const py::array& span_b, int kernel_size, int stride, int group_channels, int threads, const std::string& isa,
         const py::object& scale, const py::object& shift, bool relu, const std::string& precision) {
        return involution_fused(x, reduce_wt, reduce_b, span_wt, span_b, kernel_size, stride, group_channels, threads,
                                isa, scale, shift, relu, false, precision);
      },
      py::arg("x"), py::arg("reduce_wt"), py::arg("reduce_b"), py::arg("span_wt"), py::arg("span_b"),
      py::arg("kernel_size"), py::arg("stride") = 1, py::arg("group_channels") = 16, py::arg("threads") = 1,
      py::arg("isa") = "auto", py::arg("scale") = py::none(), py::arg("shift") = py::none(), py::arg("relu") = false,
      py::arg("precision") = "fp32",
      "Fused involution (generation + aggregation), NHWC: x [B,H,W,C]; reduce_wt [C,hidden] (BN folded, "
      "transposed), reduce_b [hidden], span_wt [hidden,G*K*K] (transposed), span_b [G*K*K] -> y [B,Ho,Wo,C]. "
      "precision='bf16': the generation in bf16 (avx512_bf16 CPUs; isa is then ignored).");
  k.def("bf16_kernels_supported", &cpu::bf16_kernels_supported, "Whether this CPU has avx512_bf16");
  k.def(
      "bf16_round",
      [](const py::array& a) {
        const float* p = checked(a, "a", 1);
        py::array_t<std::uint16_t> out(a.size());
        auto* o = out.mutable_data();
        for (py::ssize_t i = 0; i < a.size(); ++i) o[i] = cpu::bf16_round(p[i]);
        return out;
      },
      py::arg("a"), "fp32 -> bf16 bits (round to nearest even), flattened");
  k.def(
      "involution_fused_ref",
      [](const py::array& x, const py::array& reduce_wt, const py::array& reduce_b, const py::array& span_wt,
         const py::array& span_b, int kernel_size, int stride, int group_channels, const py::object& scale,
         const py::object& shift, bool relu) {
        return involution_fused(x, reduce_wt, reduce_b, span_wt, span_b, kernel_size, stride, group_channels, 1,
                                "auto", scale, shift, relu, true);
      },
      py::arg("x"), py::arg("reduce_wt"), py::arg("reduce_b"), py::arg("span_wt"), py::arg("span_b"),
      py::arg("kernel_size"), py::arg("stride") = 1, py::arg("group_channels") = 16, py::arg("scale") = py::none(),
      py::arg("shift") = py::none(), py::arg("relu") = false,
      "Scalar float64 reference of involution_fused() (kernels generated in float64, rounded once).");

  k.def(
      "cmam",
      [](const py::array& art, const py::array& pv, const py::array& wa, const py::array& wp, int dim, int heads,
         float eps, int threads, const std::string& isa, bool in_place, const std::string& precision) {
        return cmam(art, pv, wa, wp, dim, heads, eps, threads, isa, in_place, false, precision);
      },
      py::arg("art"), py::arg("pv"), py::arg("weights_art"), py::arg("weights_pv"), py::arg("dim"), py::arg("heads"),
      py::arg("eps") = 1e-5f, py::arg("threads") = 1, py::arg("isa") = "auto", py::arg("in_place") = false,
      py::arg("precision") = "fp32",
      "CMAM, both directions: art/pv tokens [B,N,C], packed weights (export/plugin_schema.json) -> (art', pv'). "
      "precision='bf16': the eight projections in bf16 (avx512_bf16 CPUs; isa is then ignored).");
  k.def(
      "cmam_ref",
      [](const py::array& art, const py::array& pv, const py::array& wa, const py::array& wp, int dim, int heads,
         float eps, bool in_place) { return cmam(art, pv, wa, wp, dim, heads, eps, 1, "auto", in_place, true); },
      py::arg("art"), py::arg("pv"), py::arg("weights_art"), py::arg("weights_pv"), py::arg("dim"), py::arg("heads"),
      py::arg("eps") = 1e-5f, py::arg("in_place") = false, "Scalar float64-accumulating reference of cmam().");

  k.def(
      "spatial_attention",
      [](const py::array& a, const py::object& p, const py::array& weight, float bias, int threads,
         const std::string& isa, bool in_place) {
        return spatial_attention(a, p, weight, bias, threads, isa, in_place, false);
      },
      py::arg("a"), py::arg("p"), py::arg("weight"), py::arg("bias"), py::arg("threads") = 1, py::arg("isa") = "auto",
      py::arg("in_place") = false,
      "SA over two phases, NHWC: a, p [B,H,W,C] (p may be None), weight [1,2,K,K] -> (att [B,H,W], a*att, p*att).");
  k.def(
      "spatial_attention_ref",
      [](const py::array& a, const py::object& p, const py::array& weight, float bias, bool in_place) {
        return spatial_attention(a, p, weight, bias, 1, "auto", in_place, true);
      },
      py::arg("a"), py::arg("p"), py::arg("weight"), py::arg("bias"), py::arg("in_place") = false,
      "Scalar float64-accumulating reference of spatial_attention().");
}

}  // namespace cmir

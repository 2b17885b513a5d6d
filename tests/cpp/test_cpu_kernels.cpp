// C++-side checks of cmir/cpu_kernels.hpp that the Python tests (tests/test_cpu_kernels.py, through the bindings)
// cannot reach: the entry points as the engine calls them (plain involution_nhwc, the SA overload without scratch,
// caller-owned scratch of exactly the advertised size), argument errors, and every ISA against the scalar reference.
// Plain main(), exit status 0 = pass; built by CMake as cmir_test_cpu_kernels (see cpp/targets.cmake).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cmir/cpu_kernels.hpp"

namespace {

int g_failures = 0;

void check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "FAIL: %s\n", what.c_str());
    ++g_failures;
  }
}

std::vector<float> random_vector(std::size_t n, unsigned seed, float scale = 1.0f) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = dist(gen);
  return v;
}

// max |a - b| / (1 + |b|)
double max_rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  double m = 0.0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    m = std::fmax(m, std::fabs(static_cast<double>(a[i]) - b[i]) / (1.0 + std::fabs(static_cast<double>(b[i]))));
  }
  return m;
}

template <class F>
bool throws_invalid(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

std::vector<cmir::cpu::Isa> isas() {
  std::vector<cmir::cpu::Isa> out{cmir::cpu::Isa::kScalar};
  for (auto isa : {cmir::cpu::Isa::kAvx2, cmir::cpu::Isa::kAvx512}) {
    if (cmir::cpu::isa_supported(isa)) out.push_back(isa);
  }
  return out;
}

void test_involution() {
  const int b = 2, h = 13, w = 15, c = 48, k = 7, s = 2, gc = 16;
  const int ho = (h + s - 1) / s, wo = (w + s - 1) / s, g = c / gc;
  const auto x = random_vector(static_cast<std::size_t>(b) * h * w * c, 1);
  const auto kern = random_vector(static_cast<std::size_t>(b) * ho * wo * g * k * k, 2);
  std::vector<float> ref(static_cast<std::size_t>(b) * ho * wo * c), y(ref.size());
  cmir::cpu::involution_nhwc_ref(x.data(), kern.data(), ref.data(), b, h, w, c, k, s, gc);
  for (auto isa : isas()) {
    for (int threads : {1, 2, 0}) {
      cmir::cpu::involution_nhwc(x.data(), kern.data(), y.data(), b, h, w, c, k, s, gc, threads, isa);
      check(max_rel_err(y, ref) < 1e-5, std::string("involution ") + cmir::cpu::isa_name(isa));
    }
  }
  check(throws_invalid([&] {
          cmir::cpu::involution_nhwc(x.data(), kern.data(), y.data(), b, h, w, c, k, s, 20, 1);
        }),
        "involution: channels not a multiple of group_channels");
  check(throws_invalid([&] {
          cmir::cpu::involution_nhwc(x.data(), kern.data(), y.data(), b, h, w, c, 4, s, gc, 1);
        }),
        "involution: even kernel");
  check(throws_invalid([&] {
          cmir::cpu::involution_nhwc(nullptr, kern.data(), y.data(), b, h, w, c, k, s, gc, 1);
        }),
        "involution: null input");
}

void test_fused_involution_scratch() {
  const int b = 1, h = 9, w = 9, c = 32, k = 3, s = 1, gc = 16, hidden = 8, g = c / gc;
  const auto x = random_vector(static_cast<std::size_t>(b) * h * w * c, 3);
  const auto rw = random_vector(static_cast<std::size_t>(c) * hidden, 4, 0.2f);
  const auto rb = random_vector(hidden, 5);
  const auto sw = random_vector(static_cast<std::size_t>(hidden) * g * k * k, 6, 0.3f);
  const auto sb = random_vector(static_cast<std::size_t>(g) * k * k, 7);
  cmir::cpu::InvolutionGeneration gen;
  gen.reduce_wt = rw.data();
  gen.reduce_b = rb.data();
  gen.span_wt = sw.data();
  gen.span_b = sb.data();
  gen.hidden = hidden;
  std::vector<float> ref(static_cast<std::size_t>(b) * h * w * c), y(ref.size());
  cmir::cpu::involution_fused_nhwc_ref(x.data(), gen, ref.data(), b, h, w, c, k, s, gc, {});
  const std::size_t need = cmir::cpu::involution_fused_scratch_floats(c, hidden, g, k, 2);
  std::vector<float> scratch(need);
  for (auto isa : isas()) {
    cmir::cpu::involution_fused_nhwc(x.data(), gen, y.data(), scratch.data(), scratch.size(), b, h, w, c, k, s, gc, {},
                                     2, isa);
    check(max_rel_err(y, ref) < 1e-5, std::string("fused involution ") + cmir::cpu::isa_name(isa));
  }
  check(throws_invalid([&] {
          cmir::cpu::involution_fused_nhwc(x.data(), gen, y.data(), scratch.data(), need - 1, b, h, w, c, k, s, gc,
                                           {}, 2, cmir::cpu::Isa::kAuto);
        }),
        "fused involution: scratch one float short");
}

void test_cmam() {
  const int b = 2, n = 16, c = 40, dim = 24, heads = 3;
  const auto art = random_vector(static_cast<std::size_t>(b) * n * c, 8);
  const auto pv = random_vector(art.size(), 9);
  const auto wa = random_vector(cmir::cpu::cmam_weight_floats(c, dim), 10, 0.15f);
  const auto wp = random_vector(wa.size(), 11, 0.15f);
  std::vector<float> ra(art.size()), rp(art.size()), ya(art.size()), yp(art.size());
  cmir::cpu::cmam_ref(art.data(), pv.data(), wa.data(), wp.data(), ra.data(), rp.data(), b, n, c, dim, heads, 1e-5f);
  std::vector<float> scratch(cmir::cpu::cmam_scratch_floats(b, n, c, dim, heads));
  for (auto isa : isas()) {
    cmir::cpu::cmam(art.data(), pv.data(), wa.data(), wp.data(), ya.data(), yp.data(), scratch.data(), b, n, c, dim,
                    heads, 1e-5f, 2, isa);
    check(max_rel_err(ya, ra) < 1e-5 && max_rel_err(yp, rp) < 1e-5, std::string("cmam ") + cmir::cpu::isa_name(isa));
  }
  check(throws_invalid([&] {
          cmir::cpu::cmam(art.data(), pv.data(), wa.data(), wp.data(), ya.data(), yp.data(), scratch.data(), b, n, c,
                          dim, 5, 1e-5f, 1);
        }),
        "cmam: dim not a multiple of heads");
}

void test_spatial_attention_overloads() {
  const int b = 1, h = 8, w = 8, c = 64, k = 7;
  const auto a = random_vector(static_cast<std::size_t>(b) * h * w * c, 12);
  const auto p = random_vector(a.size(), 13);
  const auto wt = random_vector(2 * k * k, 14, 0.3f);
  std::vector<float> att_ref(static_cast<std::size_t>(b) * h * w), a_ref(a.size()), p_ref(a.size());
  cmir::cpu::spatial_attention_nhwc_ref(a.data(), p.data(), wt.data(), 0.25f, k, att_ref.data(), a_ref.data(),
                                        p_ref.data(), b, h, w, c);
  std::vector<float> att(att_ref.size()), ao(a.size()), po(a.size());
  // the overload without scratch (per-thread buffer), twice: the second call reuses the buffer
  for (int rep = 0; rep < 2; ++rep) {
    cmir::cpu::spatial_attention_nhwc(a.data(), p.data(), wt.data(), 0.25f, k, att.data(), ao.data(), po.data(), b, h,
                                      w, c, 2);
    check(max_rel_err(att, att_ref) < 1e-5 && max_rel_err(ao, a_ref) < 1e-5 && max_rel_err(po, p_ref) < 1e-5,
          "spatial attention (no-scratch overload)");
  }
  // single phase, in place
  std::vector<float> inplace = a;
  std::vector<float> att1(att.size()), ref1(a.size());
  cmir::cpu::spatial_attention_nhwc_ref(a.data(), nullptr, wt.data(), 0.25f, k, att_ref.data(), ref1.data(), nullptr, b,
                                        h, w, c);
  std::vector<float> scratch(cmir::cpu::spatial_attention_scratch_floats(b, h, w));
  cmir::cpu::spatial_attention_nhwc(inplace.data(), nullptr, wt.data(), 0.25f, k, att1.data(), inplace.data(), nullptr,
                                    scratch.data(), b, h, w, c, 2);
  check(max_rel_err(inplace, ref1) < 1e-5, "spatial attention single phase in place");
  check(throws_invalid([&] {
          cmir::cpu::spatial_attention_nhwc(a.data(), p.data(), wt.data(), 0.0f, k, att.data(), ao.data(), nullptr,
                                            scratch.data(), b, h, w, c, 1);
        }),
        "spatial attention: p without p_out");
}

}  // namespace

int main() {
  try {
    std::printf("cpu kernels: best ISA %s\n", cmir::cpu::isa_name(cmir::cpu::resolve_isa(cmir::cpu::Isa::kAuto)));
    test_involution();
    test_fused_involution_scratch();
    test_cmam();
    test_spatial_attention_overloads();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
    return 1;
  }
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all cpu kernel checks passed\n");
  return 0;
}

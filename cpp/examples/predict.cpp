// Scanner-side embedding without Python: load a plan through the C API and predict from raw float arrays.
//
//   cmir_predict MODEL.plan [ART.f32 PV.f32 CLINICAL.f32] [--threads N]
//
// Inputs are raw little-endian float32 files in NCHW order (art/pv [1, C, S, S], clinical [1, F]); without them a
// deterministic synthetic input is used. Prints the input spec, probability, logit and the heatmap's range.
// Research use only, not for diagnostic use.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include "cmir.h"

namespace {

bool read_floats(const char* path, std::vector<float>& out, std::size_t expected) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) {
    std::fprintf(stderr, "cannot open %s\n", path);
    return false;
  }
  const std::streamoff n = f.tellg();
  if (n != static_cast<std::streamoff>(expected * sizeof(float))) {
    std::fprintf(stderr, "%s: %lld bytes, expected %zu floats (%zu bytes)\n", path, static_cast<long long>(n),
                 expected, expected * sizeof(float));
    return false;
  }
  out.resize(expected);
  f.seekg(0);
  return static_cast<bool>(f.read(reinterpret_cast<char*>(out.data()), n));
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<const char*> pos;
  int threads = 0;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
      threads = std::atoi(argv[++i]);
    } else {
      pos.push_back(argv[i]);
    }
  }
  if (pos.size() != 1 && pos.size() != 4) {
    std::fprintf(stderr, "usage: %s MODEL.plan [ART.f32 PV.f32 CLINICAL.f32] [--threads N]\n", argv[0]);
    return 2;
  }
  cmir_engine* engine = nullptr;
  if (cmir_engine_create(pos[0], threads, &engine) != CMIR_OK) {
    std::fprintf(stderr, "error: %s\n", cmir_last_error());
    return 1;
  }
  cmir_input_spec spec;
  cmir_engine_input_spec(engine, &spec);
  std::printf("plan %s: S=%d channels=%d clinical=%d classes=%d two_phase=%d\n", pos[0], spec.image_size,
              spec.in_channels, spec.num_clinical, spec.num_classes, spec.two_phase);
  const std::size_t image = static_cast<std::size_t>(spec.in_channels) * spec.image_size * spec.image_size;
  std::vector<float> art(image), pv(image), clinical(static_cast<std::size_t>(spec.num_clinical));
  bool ok = true;
  if (pos.size() == 4) {
    ok = read_floats(pos[1], art, image) && read_floats(pos[2], pv, image) &&
         read_floats(pos[3], clinical, clinical.size());
  } else {
    // Deterministic synthetic input (an integer hash, so every platform gets the same numbers).
    std::uint32_t s = 12345u;
    auto next = [&s] {
      s = s * 1664525u + 1013904223u;
      return static_cast<float>(s >> 8) / 16777216.0f * 2.0f - 1.0f;
    };
    for (auto& v : art) v = next();
    for (auto& v : pv) v = next();
    for (auto& v : clinical) v = next();
  }
  int rc = 1;
  if (ok) {
    std::vector<float> logit(static_cast<std::size_t>(spec.num_classes)), prob(logit.size());
    std::vector<float> heat(static_cast<std::size_t>(spec.image_size) * spec.image_size);
    if (cmir_engine_predict(engine, art.data(), pv.data(), clinical.empty() ? nullptr : clinical.data(), 1,
                            logit.data(), prob.data(), heat.data()) != CMIR_OK) {
      std::fprintf(stderr, "error: %s\n", cmir_last_error());
    } else {
      float lo = heat[0], hi = heat[0];
      for (float v : heat) {
        lo = v < lo ? v : lo;
        hi = v > hi ? v : hi;
      }
      for (int k = 0; k < spec.num_classes; ++k)
        std::printf("class %d: probability %.6f logit %+.6f\n", k, prob[static_cast<std::size_t>(k)],
                    logit[static_cast<std::size_t>(k)]);
      std::printf("heatmap [1, 1, %d, %d] in [%.4f, %.4f]\n", spec.image_size, spec.image_size, lo, hi);
      std::printf("research use only, not for diagnostic use\n");
      rc = 0;
    }
  }
  cmir_engine_destroy(engine);
  return rc;
}

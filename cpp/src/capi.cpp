// The C API (cpp/include/cmir.h): C++ exceptions never cross it; they become a status code and a thread-local message.
#include "cmir.h"

#include <exception>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>

#include "cmir/engine.hpp"

struct cmir_engine {
  std::unique_ptr<cmir::Engine> engine;
};

namespace {

thread_local std::string g_last_error;

template <typename F>
int guarded(F&& f) {
  try {
    f();
    g_last_error.clear();
    return CMIR_OK;
  } catch (const cmir::PlanError& e) {
    g_last_error = e.what();
    return CMIR_ERROR_PLAN;
  } catch (const std::invalid_argument& e) {
    g_last_error = e.what();
    return CMIR_ERROR_INVALID_ARGUMENT;
  } catch (const std::bad_alloc&) {
    g_last_error = "out of memory";
    return CMIR_ERROR_RUNTIME;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return CMIR_ERROR_RUNTIME;
  } catch (...) {
    g_last_error = "unknown error";
    return CMIR_ERROR_RUNTIME;
  }
}

}  // namespace

extern "C" {

int cmir_engine_create(const char* plan_path, int threads, cmir_engine** out) {
  return guarded([&] {
    if (out == nullptr) throw std::invalid_argument("out is NULL");
    *out = nullptr;
    if (plan_path == nullptr) throw std::invalid_argument("plan_path is NULL");
    auto h = std::make_unique<cmir_engine>();
    h->engine = cmir::Engine::load(plan_path, threads);
    *out = h.release();
  });
}

int cmir_engine_create_precision(const char* plan_path, int threads, const char* precision, cmir_engine** out) {
  return guarded([&] {
    if (out == nullptr) throw std::invalid_argument("out is NULL");
    *out = nullptr;
    if (plan_path == nullptr) throw std::invalid_argument("plan_path is NULL");
    if (precision == nullptr) throw std::invalid_argument("precision is NULL");
    const std::string p(precision);
    if (p != "fp32" && p != "bf16") throw std::invalid_argument("precision must be \"fp32\" or \"bf16\", got \"" + p + "\"");
    auto h = std::make_unique<cmir_engine>();
    h->engine = cmir::Engine::load(plan_path, threads, p == "bf16" ? cmir::Precision::kBf16 : cmir::Precision::kFp32);
    *out = h.release();
  });
}

void cmir_engine_destroy(cmir_engine* engine) { delete engine; }

int cmir_engine_input_spec(const cmir_engine* engine, cmir_input_spec* spec) {
  return guarded([&] {
    if (engine == nullptr || spec == nullptr) throw std::invalid_argument("engine or spec is NULL");
    const cmir::InputSpec& s = engine->engine->spec();
    spec->image_size = s.image_size;
    spec->in_channels = s.in_channels;
    spec->num_clinical = s.num_clinical;
    spec->num_classes = s.num_classes;
    spec->two_phase = s.two_phase ? 1 : 0;
  });
}

const char* cmir_engine_metadata_json(const cmir_engine* engine) {
  return engine == nullptr ? nullptr : engine->engine->metadata_json().c_str();
}

int cmir_engine_predict(cmir_engine* engine, const float* art, const float* pv, const float* clinical, int batch,
                        float* logit, float* probability, float* heatmap) {
  return guarded([&] {
    if (engine == nullptr) throw std::invalid_argument("engine is NULL");
    engine->engine->predict(art, pv, clinical, batch, logit, probability, heatmap);
  });
}

const char* cmir_last_error(void) { return g_last_error.c_str(); }

int cmir_api_version(void) { return CMIR_API_VERSION; }

}  // extern "C"

// A stand-in for libnvinfer used only by the harness's --check-autoregister mode: a shared library with
// libnvinfer's SONAME that exports getInferLibMajorVersion() and getPluginRegistry(), the latter returning a registry
// that records registerCreator() calls. It lets the harness prove that CMIR_TRT_PLUGINS_AUTOREGISTER=1 registers both
// creators (namespace "cmir") with an already loaded TensorRT, and nothing when the major version differs.
// The reported major version is FAKE_NVINFER_MAJOR (set per build of this file).
#include <NvInferRuntime.h>

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace {

class RecordingRegistry final : public nvinfer1::IPluginRegistry {
 public:
  ~RecordingRegistry() noexcept override = default;
  bool registerCreator(nvinfer1::IPluginCreatorInterface& creator, const char* ns) noexcept override {
    creators_.push_back(&creator);
    namespaces_.emplace_back(ns != nullptr ? ns : "");
    return true;
  }
  nvinfer1::IPluginCreatorInterface* const* getAllCreators(int32_t* const n) const noexcept override {
    *n = static_cast<int32_t>(creators_.size());
    return creators_.data();
  }
  nvinfer1::IPluginCreatorInterface* getCreator(const char*, const char*, const char*) noexcept override {
    return nullptr;
  }
  bool deregisterCreator(nvinfer1::IPluginCreatorInterface const&) noexcept override { return false; }
  void setErrorRecorder(nvinfer1::IErrorRecorder* const) noexcept override {}
  nvinfer1::IErrorRecorder* getErrorRecorder() const noexcept override { return nullptr; }
  bool isParentSearchEnabled() const override { return false; }
  void setParentSearchEnabled(bool const) override {}
  PluginLibraryHandle loadLibrary(const char*) noexcept override { return nullptr; }
  void deregisterLibrary(PluginLibraryHandle) noexcept override {}
  nvinfer1::IPluginResource* acquirePluginResource(const char*, nvinfer1::IPluginResource*) noexcept override {
    return nullptr;
  }
  int32_t releasePluginResource(const char*) noexcept override { return 0; }
  nvinfer1::IPluginCreatorInterface* const* getAllCreatorsRecursive(int32_t* const n) noexcept override {
    return getAllCreators(n);
  }
#if NV_TENSORRT_MAJOR < 11
  // TensorRT 10 still has the deprecated IPluginCreator (V2) overloads; implementing them is not a use.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  bool registerCreator(nvinfer1::IPluginCreator&, const char*) noexcept override { return false; }
  nvinfer1::IPluginCreator* const* getPluginCreatorList(int32_t* const n) const noexcept override {
    *n = 0;
    return nullptr;
  }
  nvinfer1::IPluginCreator* getPluginCreator(const char*, const char*, const char*) noexcept override {
    return nullptr;
  }
  bool deregisterCreator(nvinfer1::IPluginCreator const&) noexcept override { return false; }
#pragma GCC diagnostic pop
#endif
  const std::vector<std::string>& namespaces() const { return namespaces_; }

 private:
  std::vector<nvinfer1::IPluginCreatorInterface*> creators_;
  std::vector<std::string> namespaces_;
};

RecordingRegistry& registry() {
  static RecordingRegistry r;
  return r;
}

}  // namespace

extern "C" {
__attribute__((visibility("default"))) int32_t getInferLibMajorVersion() noexcept { return FAKE_NVINFER_MAJOR; }
__attribute__((visibility("default"))) nvinfer1::IPluginRegistry* getPluginRegistry() noexcept {
  return &registry();
}
// For the harness: how many creators were registered, and whether all under namespace "cmir".
__attribute__((visibility("default"))) int32_t fake_nvinfer_registered(int32_t* all_cmir) noexcept {
  bool ok = true;
  for (const std::string& ns : registry().namespaces()) ok = ok && ns == "cmir";
  *all_cmir = ok ? 1 : 0;
  int32_t n = 0;
  registry().getAllCreators(&n);
  return n;
}
}

// Entry points of libcmir_trt_plugins.so, the only exported symbols (exports.map): TensorRT's plugin registry
// (IPluginRegistry::loadLibrary, trt.get_plugin_registry().load_library, trtexec --dynamicPlugins) calls
// getCreators() and setLoggerFinder(). No libnvinfer symbol is referenced, so the library loads anywhere.
//
// Triton's TensorRT backend (--backend-config=tensorrt,plugins=...) only dlopen()s plugin libraries and never calls
// getCreators(). For that case, CMIR_TRT_PLUGINS_AUTOREGISTER=1 makes the library register its creators on load
// with the registry of the libnvinfer already loaded in the process (found with RTLD_NOLOAD, never loaded by us),
// and only when that libnvinfer has the major version these plugins were compiled against (the registry's vtable
// differs between majors). It stays opt-in because loadLibrary() registers the same creators itself.
#include <dlfcn.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "cmam/cmam_plugin.h"
#include "involution/involution_plugin.h"

#define CMIR_XSTR(x) #x
#define CMIR_STR(x) CMIR_XSTR(x)

extern "C" {

__attribute__((visibility("default"))) nvinfer1::IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
  static nvinfer1::IPluginCreatorInterface* const creators[] = {cmir_plugins::involution_creator(),
                                                                cmir_plugins::cmam_creator()};
  nbCreators = static_cast<int32_t>(sizeof(creators) / sizeof(creators[0]));
  return creators;
}

__attribute__((visibility("default"))) void setLoggerFinder(nvinfer1::ILoggerFinder* finder) {
  cmir_plugins::set_logger_finder(finder);
}

}  // extern "C"

namespace {

void autoregister_message(const char* text) { std::fprintf(stderr, "cmir_trt plugins: %s\n", text); }

__attribute__((constructor)) void cmir_trt_plugins_autoregister() {
  const char* flag = std::getenv("CMIR_TRT_PLUGINS_AUTOREGISTER");
  if (flag == nullptr || std::strcmp(flag, "1") != 0) return;
  const char* sonames[] = {"libnvinfer.so." CMIR_STR(NV_TENSORRT_MAJOR), "libnvinfer.so"};
  void* handle = nullptr;
  for (const char* soname : sonames) {
    handle = dlopen(soname, RTLD_NOW | RTLD_NOLOAD);
    if (handle != nullptr) break;
  }
  if (handle == nullptr) {
    autoregister_message("CMIR_TRT_PLUGINS_AUTOREGISTER=1 but no libnvinfer of this major version is loaded in the "
                         "process yet (LD_PRELOAD runs too early); load the library after TensorRT, e.g. through "
                         "Triton's --backend-config=tensorrt,plugins=...");
    return;
  }
  using MajorFn = int32_t (*)();
  using RegistryFn = nvinfer1::IPluginRegistry* (*)();
  auto major = reinterpret_cast<MajorFn>(dlsym(handle, "getInferLibMajorVersion"));
  auto registry_fn = reinterpret_cast<RegistryFn>(dlsym(handle, "getPluginRegistry"));
  if (major == nullptr || registry_fn == nullptr || major() != NV_TENSORRT_MAJOR) {
    autoregister_message("the loaded libnvinfer is not the TensorRT major version these plugins were built for; "
                         "not registering");
    dlclose(handle);
    return;
  }
  nvinfer1::IPluginRegistry* registry = registry_fn();
  int32_t n = 0;
  nvinfer1::IPluginCreatorInterface* const* creators = getCreators(n);
  for (int32_t i = 0; registry != nullptr && i < n; ++i) {
    if (!registry->registerCreator(*creators[i], cmir_plugins::schema::kNamespace)) {
      autoregister_message("registering a creator failed (already registered?)");
    }
  }
  dlclose(handle);  // drops only the reference RTLD_NOLOAD took
}

}  // namespace

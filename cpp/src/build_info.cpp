#include "cmir/build_info.hpp"

#include <sstream>

#include "cmir_build_config.h"

namespace cmir {

BuildInfo build_info() {
  BuildInfo info;
  info.version = CMIR_VERSION;
  info.cxx_compiler = CMIR_CXX_COMPILER;
  info.build_type = CMIR_BUILD_TYPE;
  info.cuda = CMIR_HAS_CUDA != 0;
  info.tensorrt_plugins = CMIR_TENSORRT_PLUGINS != 0;
  if (info.cuda) {
    info.cuda_compiler = CMIR_CUDA_COMPILER;
    std::stringstream ss(CMIR_CUDA_ARCHS);
    std::string arch;
    while (std::getline(ss, arch, ',')) {
      if (!arch.empty()) info.cuda_archs.push_back(arch);
    }
  }
  return info;
}

}  // namespace cmir

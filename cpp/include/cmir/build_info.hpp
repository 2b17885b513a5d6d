#pragma once
#include <string>
#include <vector>

namespace cmir {

// What this binary was built with; reported by cmir_trt.build_info() and `cmir-trt info`.
struct BuildInfo {
  std::string version;
  std::string cxx_compiler;
  std::string cuda_compiler;  // empty when built without CUDA
  std::string build_type;
  std::vector<std::string> cuda_archs;  // e.g. {"sm_80", "sm_90"}; empty without CUDA
  bool cuda = false;
  bool tensorrt_plugins = false;
};

BuildInfo build_info();

}  // namespace cmir

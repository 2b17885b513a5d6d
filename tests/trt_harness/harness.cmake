# Tier-2 plugin harness, built beside libcmir_trt_plugins.so (included from cuda/plugins/plugins.cmake when the
# TensorRT headers were found). It dlopens the library given on its command line, so it does not link it; cudart
# (static) is only for the enqueue checks on a GPU machine. The pytest wrapper tests/test_trt_harness.py runs it.
add_executable(cmir_trt_plugin_harness "${CMAKE_CURRENT_LIST_DIR}/harness.cpp" "${_cmir_schema_h}")
target_include_directories(cmir_trt_plugin_harness PRIVATE "${CMAKE_BINARY_DIR}/generated")
target_include_directories(cmir_trt_plugin_harness SYSTEM PRIVATE "${TensorRT_INCLUDE_DIR}")
target_link_libraries(cmir_trt_plugin_harness PRIVATE CUDA::cudart_static ${CMAKE_DL_LIBS})
add_dependencies(cmir_trt_plugin_harness cmir_trt_plugins)
cmir_warnings(cmir_trt_plugin_harness)

# Stand-ins for libnvinfer (same SONAME, so the plugins' RTLD_NOLOAD lookup finds them) for the auto-registration
# check: one reporting the headers' major version (creators must be registered), one reporting another (none).
string(REGEX MATCH "^[0-9]+" _cmir_trt_major "${CMIR_TENSORRT_VERSION}")
math(EXPR _cmir_trt_other_major "${_cmir_trt_major} + 1")
foreach(_kind match mismatch)
  set(_tgt cmir_trt_fake_nvinfer_${_kind})
  add_library(${_tgt} SHARED "${CMAKE_CURRENT_LIST_DIR}/fake_nvinfer.cpp")
  target_include_directories(${_tgt} SYSTEM PRIVATE "${TensorRT_INCLUDE_DIR}")
  target_link_libraries(${_tgt} PRIVATE CUDA::cudart_static)
  if(_kind STREQUAL "match")
    target_compile_definitions(${_tgt} PRIVATE FAKE_NVINFER_MAJOR=${_cmir_trt_major})
  else()
    target_compile_definitions(${_tgt} PRIVATE FAKE_NVINFER_MAJOR=${_cmir_trt_other_major})
  endif()
  set_target_properties(${_tgt} PROPERTIES CXX_VISIBILITY_PRESET hidden NO_SONAME ON
    LIBRARY_OUTPUT_DIRECTORY "${CMAKE_BINARY_DIR}/trt_harness_fakes")
  target_link_options(${_tgt} PRIVATE "-Wl,-soname,libnvinfer.so.${_cmir_trt_major}")
  cmir_warnings(${_tgt})
  add_dependencies(cmir_trt_plugin_harness ${_tgt})
endforeach()

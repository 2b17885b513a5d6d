# TensorRT plugin library libcmir_trt_plugins.so (IPluginV3: CMIRInvolution, CMIRCrossModalAttention).
# Included by the root CMakeLists.txt after cuda/sources.cmake and before the cmir_cuda target is defined (linking
# a target by name is resolved at generate time). Needs TensorRT's headers only: the library references no
# libnvinfer symbol and is loaded by TensorRT's plugin registry through its exported getCreators().
#
#   CMIR_TENSORRT=AUTO|ON|OFF   AUTO builds the plugins when NvInfer.h is found, ON requires them
#   TensorRT_INCLUDE_DIR        the folder holding NvInfer.h (a hint; found automatically otherwise)
#   TensorRT_ROOT               a TensorRT install (or source) root with include/ (also read from the environment)
# Search order: TensorRT_INCLUDE_DIR, TensorRT_ROOT/include, .deps/tensorrt-11/include, .deps/tensorrt-10/include,
# then the system paths.
set(CMIR_TENSORRT "AUTO" CACHE STRING "Build the TensorRT plugin library: AUTO (when NvInfer.h is found), ON, OFF")
set_property(CACHE CMIR_TENSORRT PROPERTY STRINGS AUTO ON OFF)
set(TensorRT_ROOT "$ENV{TensorRT_ROOT}" CACHE PATH "TensorRT root (with include/NvInfer.h)")

# The Triton config template and the standalone engine builder ship with the package whether or not the plugins
# are built (cmir_trt.export.triton looks for them there first, then in the source tree).
install(FILES "${CMAKE_SOURCE_DIR}/export/triton/config.pbtxt.in" DESTINATION cmir_trt/export/triton)
install(FILES "${CMAKE_SOURCE_DIR}/export/build_engine.py" DESTINATION cmir_trt/export)

set(CMIR_TENSORRT_PLUGINS OFF)
set(CMIR_TENSORRT_VERSION "")
set(_cmir_trt_skip "")

if(NOT CMIR_TENSORRT MATCHES "^(AUTO|ON|OFF)$")
  message(FATAL_ERROR "cmir_trt: CMIR_TENSORRT must be AUTO, ON or OFF, got '${CMIR_TENSORRT}'")
endif()

if(CMIR_TENSORRT STREQUAL "OFF")
  set(_cmir_trt_skip "CMIR_TENSORRT=OFF")
else()
  find_path(TensorRT_INCLUDE_DIR NvInfer.h
    HINTS "${TensorRT_ROOT}/include" "${TensorRT_ROOT}"
          "${CMAKE_SOURCE_DIR}/.deps/tensorrt-11/include" "${CMAKE_SOURCE_DIR}/.deps/tensorrt-10/include"
    DOC "Folder holding TensorRT's NvInfer.h")
  # Launchers the plugins call; both must be part of the cmir_cuda library.
  set(_cmir_trt_launchers "")
  foreach(_src involution.cu cmam.cu)
    set(_found ${CMIR_CUDA_SOURCES})
    list(FILTER _found INCLUDE REGEX "/${_src}$")
    if(NOT _found)
      list(APPEND _cmir_trt_launchers "cuda/${_src}")
    endif()
  endforeach()
  if(TensorRT_INCLUDE_DIR AND NOT EXISTS "${TensorRT_INCLUDE_DIR}/NvInfer.h")
    set(_cmir_trt_skip "TensorRT_INCLUDE_DIR=${TensorRT_INCLUDE_DIR} has no NvInfer.h")
  elseif(NOT TensorRT_INCLUDE_DIR)
    set(_cmir_trt_skip "no NvInfer.h found (set TensorRT_INCLUDE_DIR or TensorRT_ROOT, or extract TensorRT's include/ into .deps/tensorrt-11/include)")
  elseif(NOT CMIR_HAS_CUDA)
    set(_cmir_trt_skip "the build has no CUDA (the plugins call the CUDA kernels)")
  elseif(_cmir_trt_launchers)
    set(_cmir_trt_skip "the CUDA launchers are not in cuda/sources.cmake yet: ${_cmir_trt_launchers}")
  endif()
endif()

if(_cmir_trt_skip)
  if(CMIR_TENSORRT STREQUAL "ON")
    message(FATAL_ERROR "cmir_trt: CMIR_TENSORRT=ON but the TensorRT plugins cannot be built: ${_cmir_trt_skip}")
  endif()
  message(STATUS "cmir_trt: TensorRT plugins skipped: ${_cmir_trt_skip}")
else()
  file(STRINGS "${TensorRT_INCLUDE_DIR}/NvInferVersion.h" _trt_ver_lines
       REGEX "^#define (TRT_MAJOR_ENTERPRISE|TRT_MINOR_ENTERPRISE|TRT_PATCH_ENTERPRISE|NV_TENSORRT_MAJOR|NV_TENSORRT_MINOR|NV_TENSORRT_PATCH) +[0-9]+")
  set(_trt_ver "")
  foreach(_part MAJOR MINOR PATCH)
    string(REGEX MATCH "(TRT_${_part}_ENTERPRISE|NV_TENSORRT_${_part}) +([0-9]+)" _m "${_trt_ver_lines}")
    list(APPEND _trt_ver "${CMAKE_MATCH_2}")
  endforeach()
  string(REPLACE ";" "." CMIR_TENSORRT_VERSION "${_trt_ver}")
  set(CMIR_TENSORRT_PLUGINS ON)
  message(STATUS "cmir_trt: TensorRT plugins ON (headers ${CMIR_TENSORRT_VERSION} in ${TensorRT_INCLUDE_DIR})")

  # The plugins' names, versions and fields come from the one schema, through a generated header.
  set(_cmir_schema_json "${CMAKE_SOURCE_DIR}/export/plugin_schema.json")
  set(_cmir_schema_h "${CMAKE_BINARY_DIR}/generated/cmir_plugin_schema.h")
  add_custom_command(
    OUTPUT "${_cmir_schema_h}"
    COMMAND "${Python_EXECUTABLE}" "${CMAKE_CURRENT_LIST_DIR}/gen_plugin_schema.py" "${_cmir_schema_json}"
            "${_cmir_schema_h}"
    DEPENDS "${CMAKE_CURRENT_LIST_DIR}/gen_plugin_schema.py" "${_cmir_schema_json}"
    COMMENT "Generating cmir_plugin_schema.h from export/plugin_schema.json"
    VERBATIM)

  add_library(cmir_trt_plugins SHARED
    "${CMAKE_CURRENT_LIST_DIR}/plugin_entry.cpp"
    "${CMAKE_CURRENT_LIST_DIR}/common/plugin_common.cpp"
    "${CMAKE_CURRENT_LIST_DIR}/involution/involution_plugin.cpp"
    "${CMAKE_CURRENT_LIST_DIR}/cmam/cmam_plugin.cpp"
    "${_cmir_schema_h}")
  target_include_directories(cmir_trt_plugins PRIVATE
    "${CMAKE_CURRENT_LIST_DIR}" "${CMAKE_CURRENT_LIST_DIR}/common" "${CMAKE_CURRENT_LIST_DIR}/involution"
    "${CMAKE_CURRENT_LIST_DIR}/cmam" "${CMAKE_BINARY_DIR}/generated")
  # SYSTEM: TensorRT's own headers are not held to our -Werror.
  target_include_directories(cmir_trt_plugins SYSTEM PRIVATE "${TensorRT_INCLUDE_DIR}")
  target_link_libraries(cmir_trt_plugins PRIVATE cmir_cuda ${CMAKE_DL_LIBS})
  set_target_properties(cmir_trt_plugins PROPERTIES
    CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON
    LINK_DEPENDS "${CMAKE_CURRENT_LIST_DIR}/exports.map")
  # Export only getCreators/setLoggerFinder; -z defs proves at link time that no TensorRT symbol is needed.
  target_link_options(cmir_trt_plugins PRIVATE
    "-Wl,--version-script=${CMAKE_CURRENT_LIST_DIR}/exports.map" "-Wl,-z,defs")
  cmir_warnings(cmir_trt_plugins)
  install(TARGETS cmir_trt_plugins LIBRARY DESTINATION cmir_trt)

  # Tier-2 harness (tests/trt_harness): dlopens the library and exercises every plugin method; enqueue on a GPU.
  include("${CMAKE_SOURCE_DIR}/tests/trt_harness/harness.cmake" OPTIONAL)
endif()

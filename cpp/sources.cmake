# Sources of the C++ engine (linked into the cmir_core static library and the _C module).
# CMIR_CPP_MODULE_SOURCES: pybind11 binding files compiled into _C only.
set(CMIR_CPP_MODULE_SOURCES "")
list(APPEND CMIR_CPP_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/src/build_info.cpp
  ${CMAKE_CURRENT_LIST_DIR}/src/plan.cpp
)
include(${CMAKE_CURRENT_LIST_DIR}/kernels.cmake)

# ---------------------------------------------------------------- native engine (oneDNN), optional
# AUTO: build it when oneDNN (PyPI: onednn-cpu-gomp + onednn-devel-cpu-gomp, in the active Python environment, or a
# system install) and OpenMP are found; ON: required; OFF: _C carries build_info, the plan validator and the kernels.
set(CMIR_NATIVE "AUTO" CACHE STRING "Build the native CPU engine (needs oneDNN): AUTO, ON, OFF")
set_property(CACHE CMIR_NATIVE PROPERTY STRINGS AUTO ON OFF)
set(CMIR_HAS_NATIVE OFF)
if(NOT CMIR_NATIVE STREQUAL "OFF")
  execute_process(COMMAND ${Python_EXECUTABLE} -c "import sys; print(sys.prefix)"
                  OUTPUT_VARIABLE _cmir_py_prefix OUTPUT_STRIP_TRAILING_WHITESPACE)
  find_package(dnnl 3.0 CONFIG QUIET HINTS "${_cmir_py_prefix}/lib/cmake/dnnl" "${_cmir_py_prefix}")
  find_package(OpenMP QUIET COMPONENTS CXX)
  # The engine calls the own CPU kernels; it is enabled only once cpp/kernels.cmake lists their sources.
  set(_cmir_have_kernels OFF)
  if(CMIR_CPP_SOURCES MATCHES "kernels/kernels\\.cpp")
    set(_cmir_have_kernels ON)
  endif()
  if(dnnl_FOUND AND OpenMP_CXX_FOUND AND _cmir_have_kernels)
    set(CMIR_HAS_NATIVE ON)
    list(APPEND CMIR_CPP_SOURCES ${CMAKE_CURRENT_LIST_DIR}/src/engine.cpp)
    list(APPEND CMIR_CPP_MODULE_SOURCES ${CMAKE_CURRENT_LIST_DIR}/src/engine_bindings.cpp)
    list(APPEND CMIR_CPP_LIBS DNNL::dnnl OpenMP::OpenMP_CXX)
    # libdnnl sits in the Python environment's lib/ (not on the loader path): record it in the RPATH of everything
    # that links it, in the build tree and once installed.
    get_target_property(_cmir_dnnl_lib DNNL::dnnl IMPORTED_LOCATION_RELEASE)
    if(NOT _cmir_dnnl_lib)
      get_target_property(_cmir_dnnl_lib DNNL::dnnl LOCATION)
    endif()
    get_filename_component(_cmir_dnnl_dir "${_cmir_dnnl_lib}" DIRECTORY)
    list(APPEND CMAKE_BUILD_RPATH "${_cmir_dnnl_dir}")
    # Absolute: this environment; relative: a wheel installed in site-packages/cmir_trt of another environment that
    # has onednn-cpu-gomp (its libdnnl sits in <prefix>/lib).
    list(APPEND CMAKE_INSTALL_RPATH "${_cmir_dnnl_dir}" "$ORIGIN/../../..")
    message(STATUS "cmir_trt: native engine ON (oneDNN ${dnnl_VERSION} from ${_cmir_dnnl_dir})")
  elseif(CMIR_NATIVE STREQUAL "ON")
    message(FATAL_ERROR "cmir_trt: CMIR_NATIVE=ON but oneDNN (pip install onednn-cpu-gomp onednn-devel-cpu-gomp), "
                        "OpenMP or the CPU kernels are missing (dnnl ${dnnl_FOUND}, OpenMP ${OpenMP_CXX_FOUND}, "
                        "kernels ${_cmir_have_kernels})")
  else()
    message(STATUS "cmir_trt: native engine OFF (dnnl ${dnnl_FOUND}, OpenMP ${OpenMP_CXX_FOUND}, "
                   "kernels ${_cmir_have_kernels})")
  endif()
endif()
if(CMIR_HAS_NATIVE)
  add_compile_definitions(CMIR_HAS_NATIVE=1)
else()
  add_compile_definitions(CMIR_HAS_NATIVE=0)
endif()

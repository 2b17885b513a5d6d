# Sources of the C++ engine (linked into the cmir_core static library and the _C module).
# CMIR_CPP_MODULE_SOURCES: pybind11 binding files compiled into _C only.
set(CMIR_CPP_MODULE_SOURCES "")
list(APPEND CMIR_CPP_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/src/build_info.cpp
)
include(${CMAKE_CURRENT_LIST_DIR}/kernels.cmake)

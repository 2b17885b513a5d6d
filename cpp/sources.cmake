# Sources of the C++ engine (linked into the cmir_core static library and the _C module).
# CMIR_CPP_MODULE_SOURCES: pybind11 binding files compiled into _C only.
list(APPEND CMIR_CPP_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/src/build_info.cpp
)
set(CMIR_CPP_MODULE_SOURCES "")

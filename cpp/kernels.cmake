# The CPU kernels of cmir_trt (involution, CMAM, spatial attention): sources for cmir_core, bindings for _C.
list(APPEND CMIR_CPP_MODULE_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/src/kernels/bindings.cpp
)

# CUDA kernels: one <op>.cu + <op>.cuh each, with a plain launch_<op>(...) -> cudaError_t (no torch, no TensorRT).
list(APPEND CMIR_CUDA_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/device.cu
  ${CMAKE_CURRENT_LIST_DIR}/involution.cu
  ${CMAKE_CURRENT_LIST_DIR}/cmam.cu
  ${CMAKE_CURRENT_LIST_DIR}/pointwise.cu
  ${CMAKE_CURRENT_LIST_DIR}/conv2d.cu
  ${CMAKE_CURRENT_LIST_DIR}/spatial_attention.cu
)
# pybind11 wrappers of the launchers, compiled into the _cuda module.
list(APPEND CMIR_CUDA_BINDING_SOURCES
  ${CMAKE_CURRENT_LIST_DIR}/../cpp/src/cuda_bindings/involution.cpp
  ${CMAKE_CURRENT_LIST_DIR}/../cpp/src/cuda_bindings/cmam.cpp
  ${CMAKE_CURRENT_LIST_DIR}/../cpp/src/cuda_bindings/pointwise.cpp
  ${CMAKE_CURRENT_LIST_DIR}/../cpp/src/cuda_bindings/conv2d.cpp
  ${CMAKE_CURRENT_LIST_DIR}/../cpp/src/cuda_bindings/spatial_attention.cpp
)

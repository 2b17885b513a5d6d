# The CPU kernels of cmir_trt (involution, CMAM, spatial attention): sources for cmir_core, bindings for _C.
# The vector code is compiled twice, once per instruction set, in its own translation unit with its own flags; the
# dispatcher (kernels.cpp, baseline flags) checks CPUID before calling either, so the library runs on any x86-64.
find_package(OpenMP REQUIRED COMPONENTS CXX)
set(_cmir_kernels_dir ${CMAKE_CURRENT_LIST_DIR}/src/kernels)
list(APPEND CMIR_CPP_SOURCES
  ${_cmir_kernels_dir}/kernels.cpp
  ${_cmir_kernels_dir}/reference.cpp
  ${_cmir_kernels_dir}/kernels_avx512.cpp
  ${_cmir_kernels_dir}/kernels_avx2.cpp
)
set_source_files_properties(${_cmir_kernels_dir}/kernels_avx512.cpp PROPERTIES
  COMPILE_OPTIONS "-mavx512f;-mavx512bw;-mavx512dq;-mavx512vl;-mfma;-mavx512bf16"
  OBJECT_DEPENDS ${_cmir_kernels_dir}/kernels_impl.hpp)
set_source_files_properties(${_cmir_kernels_dir}/kernels_avx2.cpp PROPERTIES
  COMPILE_OPTIONS "-mavx2;-mfma"
  OBJECT_DEPENDS ${_cmir_kernels_dir}/kernels_impl.hpp)
# GNU OpenMP, the same runtime as oneDNN's gomp build, so the process has one thread pool.
list(APPEND CMIR_CPP_LIBS OpenMP::OpenMP_CXX)
list(APPEND CMIR_CPP_MODULE_SOURCES
  ${_cmir_kernels_dir}/bindings.cpp
)

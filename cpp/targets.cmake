# Extra targets of the C++ engine: the C API shared library and its example program (only with the native engine).
# Both are installed next to the Python package (cmir_trt/libcmir.so, cmir_trt/bin/cmir_predict) so an installed
# wheel carries a scanner-side runtime that needs no Python.
if(CMIR_HAS_NATIVE)
  add_library(cmir SHARED ${CMAKE_CURRENT_LIST_DIR}/src/capi.cpp)
  target_link_libraries(cmir PRIVATE cmir_core)
  target_include_directories(cmir PUBLIC ${CMAKE_CURRENT_LIST_DIR}/include)
  # Only the C API is exported; the C++ internals (and oneDNN's symbols) stay hidden.
  set_target_properties(cmir PROPERTIES CXX_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
  target_link_options(cmir PRIVATE -Wl,--exclude-libs,ALL)
  cmir_warnings(cmir)
  add_executable(cmir_predict ${CMAKE_CURRENT_LIST_DIR}/examples/predict.cpp)
  target_link_libraries(cmir_predict PRIVATE cmir)
  cmir_warnings(cmir_predict)
  # The example finds libcmir next to itself (../libcmir.so once installed into cmir_trt/bin).
  set_target_properties(cmir_predict PROPERTIES INSTALL_RPATH "$ORIGIN/..;$ORIGIN/../../../..;${CMAKE_INSTALL_RPATH}")
  install(TARGETS cmir LIBRARY DESTINATION cmir_trt)
  install(TARGETS cmir_predict RUNTIME DESTINATION cmir_trt/bin)
endif()

# C++ checks of the CPU kernels (cmir_core always exists); tests/test_cpu_kernels.py runs the binary from build/*/.
add_executable(cmir_test_cpu_kernels ${CMAKE_CURRENT_LIST_DIR}/../tests/cpp/test_cpu_kernels.cpp)
target_link_libraries(cmir_test_cpu_kernels PRIVATE cmir_core)
cmir_warnings(cmir_test_cpu_kernels)

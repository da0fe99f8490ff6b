# Installs the core as a CMake package. Under scikit-build-core it goes inside the Python package
# (fastnorm/{include,lib,lib/cmake/Fastnorm}), found through the `cmake.root` entry point; a plain
# `cmake --install` uses the usual GNU directories.
include(CMakePackageConfigHelpers)
set(_fn_targets fastnorm_core)
if(FASTNORM_WITH_CUDA)
  list(APPEND _fn_targets fastnorm_core_cuda)
endif()
install(TARGETS ${_fn_targets} EXPORT FastnormTargets
  ARCHIVE DESTINATION ${FASTNORM_PKG_PREFIX}${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${FASTNORM_PKG_PREFIX}${CMAKE_INSTALL_LIBDIR}
  INCLUDES DESTINATION ${FASTNORM_PKG_PREFIX}${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/csrc/include/fastnorm
  DESTINATION ${FASTNORM_PKG_PREFIX}${CMAKE_INSTALL_INCLUDEDIR})
set(_fn_cmake_dir ${FASTNORM_PKG_PREFIX}${CMAKE_INSTALL_LIBDIR}/cmake/Fastnorm)
install(EXPORT FastnormTargets NAMESPACE fastnorm:: DESTINATION ${_fn_cmake_dir})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/FastnormConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/FastnormConfig.cmake INSTALL_DESTINATION ${_fn_cmake_dir})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/FastnormConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/FastnormConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/FastnormConfigVersion.cmake DESTINATION ${_fn_cmake_dir})

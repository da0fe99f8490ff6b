// fastnorm version, kept in step with pyproject.toml by CMake (configure_file would add a build step
// for three integers; a test checks that the two agree).
#pragma once
// The version of these headers and of the core built from them (also in the CMake package: Fastnorm_VERSION).
#define FASTNORM_VERSION_MAJOR 0
#define FASTNORM_VERSION_MINOR 1
#define FASTNORM_VERSION_PATCH 0
#define FASTNORM_VERSION_STRING "0.1.0"

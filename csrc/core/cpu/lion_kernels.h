// Internal: the CPU Lion kernel, compiled once per ISA (lion_kernels.cpp is built for the baseline x86-64
// and for AVX2+FMA, where std::fma is a vector instruction) and chosen at run time by lion.cpp.
// Arguments are already validated.
#pragma once
#include "fastnorm/lion.h"

namespace fastnorm {
namespace lion {
namespace baseline { Status step(const LionStepParams& p); }
namespace avx2 { Status step(const LionStepParams& p); }
}  // namespace lion
}  // namespace fastnorm

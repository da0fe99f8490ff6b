// Internal: the CPU EvoNorm kernels, compiled once per ISA (baseline x86-64 and AVX2, see isa.h) and
// chosen at run time by norm_evonorm.cpp. Arguments are already validated.
#pragma once
#include "fastnorm/norm_evonorm.h"

namespace fastnorm {
namespace norm {
#define FASTNORM_DECLARE_EVONORM_KERNELS(isa)            \
  namespace isa {                                        \
  Status evonorm_b0_fwd(const EvoNormB0Params& p);       \
  Status evonorm_b0_bwd(const EvoNormB0BwdParams& p);    \
  Status evonorm_s0_fwd(const EvoNormS0Params& p);       \
  Status evonorm_s0_bwd(const EvoNormS0BwdParams& p);    \
  }
FASTNORM_DECLARE_EVONORM_KERNELS(baseline)
FASTNORM_DECLARE_EVONORM_KERNELS(avx2)
#undef FASTNORM_DECLARE_EVONORM_KERNELS
}  // namespace norm
}  // namespace fastnorm

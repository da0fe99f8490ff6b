// Internal: the CPU norm kernels, compiled once per ISA (norm_kernels.cpp is built for the baseline
// x86-64 and for AVX2) and chosen at run time by norm.cpp. Arguments are already validated.
#pragma once
#include "fastnorm/norm.h"

namespace fastnorm {
namespace norm {
#define FASTNORM_DECLARE_NORM_KERNELS(isa)                 \
  namespace isa {                                          \
  Status layer_norm_fwd(const LayerNormParams& p);         \
  Status layer_norm_bwd(const LayerNormBwdParams& p);      \
  Status rms_norm_fwd(const RMSNormParams& p);             \
  Status rms_norm_bwd(const RMSNormBwdParams& p);          \
  }
FASTNORM_DECLARE_NORM_KERNELS(baseline)
FASTNORM_DECLARE_NORM_KERNELS(avx2)
#undef FASTNORM_DECLARE_NORM_KERNELS
}  // namespace norm
}  // namespace fastnorm

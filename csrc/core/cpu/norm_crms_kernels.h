// Internal: the CPU CRMSNorm kernels, built once per ISA (baseline, avx2) and chosen at run
// time by norm_crms.cpp. Arguments are already validated.
#pragma once
#include "fastnorm/norm_crms.h"

namespace fastnorm {
namespace norm {
#define FASTNORM_DECLARE_CRMS_KERNELS(isa)                   \
  namespace isa {                                            \
  Status crms_norm_fwd(const CRMSNormParams& p);             \
  Status crms_norm_bwd(const CRMSNormBwdParams& p);          \
  }
FASTNORM_DECLARE_CRMS_KERNELS(baseline)
FASTNORM_DECLARE_CRMS_KERNELS(avx2)
#undef FASTNORM_DECLARE_CRMS_KERNELS
}  // namespace norm
}  // namespace fastnorm

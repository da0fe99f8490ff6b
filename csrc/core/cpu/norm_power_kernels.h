// Internal: the PowerNorm CPU kernels, compiled once per ISA (norm_power_kernels.cpp is built for the baseline
// x86-64 and for AVX2) and chosen at run time by norm_power.cpp. Arguments are already validated.
#pragma once
#include <cstdint>

#include "fastnorm/norm_power.h"

namespace fastnorm {
namespace norm {
namespace power_kernels {
// Row blocks of the per-channel sums: a function of (M, C) only, so results never depend on threads.
// At least 32 rows per block, at most 128 blocks.
inline int64_t num_blocks(int64_t M, int64_t /*C*/) {
  if (M <= 0) return 0;
  const int64_t rows = (M + 127) / 128 > 32 ? (M + 127) / 128 : 32;
  return (M + rows - 1) / rows;
}
inline int64_t rows_per_block(int64_t M, int64_t nblk) { return nblk == 0 ? 0 : (M + nblk - 1) / nblk; }
}  // namespace power_kernels

#define FASTNORM_DECLARE_POWER_KERNELS(isa)      \
  namespace isa {                                \
  void power_fwd(const PowerNormParams& p);      \
  void power_bwd(const PowerNormBwdParams& p);   \
  void power_eval(const PowerNormEvalParams& p); \
  }
FASTNORM_DECLARE_POWER_KERNELS(baseline)
FASTNORM_DECLARE_POWER_KERNELS(avx2)
#undef FASTNORM_DECLARE_POWER_KERNELS
}  // namespace norm
}  // namespace fastnorm

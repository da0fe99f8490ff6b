// Internal: the CPU alpha-BN kernels, built once per ISA (baseline, avx2) and chosen at run time by
// norm_alpha_bn.cpp. Arguments are already validated.
#pragma once
#include "fastnorm/norm_alpha_bn.h"

namespace fastnorm {
namespace norm {
// Rows of C channels per partial-sum chunk in the channels_last layout (see norm_alpha_bn_kernels.cpp);
// a function of the shape only, so results do not depend on the thread count.
inline int64_t abn_rows_per_chunk(int64_t channels) {
  const int64_t r = channels > 0 ? 4096 / channels : 64;
  return r < 1 ? 1 : (r > 64 ? 64 : r);
}
// Partial-sum slots per channel: one per (sample) plane in NCHW, one per chunk of rows in NHWC.
inline int64_t abn_slots(int64_t batch, int64_t channels, int64_t spatial, bool channels_last) {
  if (!channels_last) return batch;
  const int64_t rows = batch * spatial, r = abn_rows_per_chunk(channels);
  return (rows + r - 1) / r;
}
#define FASTNORM_DECLARE_ABN_KERNELS(isa)                                        \
  namespace isa {                                                                \
  Status alpha_batch_norm_fwd(const AlphaBatchNormParams& p, void* workspace);   \
  Status alpha_batch_norm_bwd(const AlphaBatchNormBwdParams& p);                 \
  }
FASTNORM_DECLARE_ABN_KERNELS(baseline)
FASTNORM_DECLARE_ABN_KERNELS(avx2)
#undef FASTNORM_DECLARE_ABN_KERNELS
}  // namespace norm
}  // namespace fastnorm

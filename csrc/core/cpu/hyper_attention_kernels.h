// Internal: the CPU HyperAttention kernels, compiled once per ISA (hyper_attention_kernels.cpp is built for
// the baseline x86-64 and for AVX2+FMA) and chosen at run time by hyper_attention.cpp. Arguments are
// already validated there.
#pragma once
#include "fastnorm/hyper_attention.h"

namespace fastnorm {
namespace hyper_attention {
#define FASTNORM_HA_DECLS                                                                                  \
  Status lsh_hash(const HyperAttnHashParams& p);                                                          \
  Status plan(const HyperAttnProblem& p, const HyperAttnPlanInputs& in, const HyperAttnPlan& pl, void* ws); \
  Status forward(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnOutput& o, void* ws);  \
  Status backward(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnGrads& g, void* ws);  \
  Status merge(const HyperAttnMergeParams& p);                                                            \
  size_t plan_ws_bytes(const HyperAttnProblem& p);                                                        \
  size_t forward_ws_bytes(const HyperAttnProblem& p);                                                     \
  size_t backward_ws_bytes(const HyperAttnProblem& p);
namespace baseline { FASTNORM_HA_DECLS }
namespace avx2 { FASTNORM_HA_DECLS }
#undef FASTNORM_HA_DECLS
}  // namespace hyper_attention
}  // namespace fastnorm

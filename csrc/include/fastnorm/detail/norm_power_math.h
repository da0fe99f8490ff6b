// PowerNorm math shared by the CPU and CUDA kernels (specs/norm.md §3.6). Everything here is per token or
// per channel; the kernels only arrange loops and sums around it.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastnorm/common.h"
#include "fastnorm/norm_power.h"

namespace fastnorm {
namespace norm {
namespace power_math {

// Index into the (B, T) pad mask of token row r of x ((T, B, C) or, batch_first, (B, T, C)).
FASTNORM_HD_INLINE int64_t mask_index(int64_t r, int64_t T, int64_t B, bool batch_first) {
  if (batch_first) return r;                  // r = b*T + t is already the mask's row-major index
  const int64_t t = r / B, b = r - t * B;
  return b * T + t;
}

// GroupScaling's per-token, per-group factor from the group's sum of squares over K channels.
template <typename A> FASTNORM_HD_INLINE A group_rstd(A sum_sq, int64_t K, double group_eps) {
  return A(1) / sqrt(sum_sq / static_cast<A>(K) + static_cast<A>(group_eps));
}

// Batch statistics while t <= W (both modes, Q3 concerns only the cumulative update's bound).
FASTNORM_HD_INLINE bool use_batch_stats(int64_t t, int64_t W) { return t <= W; }

// The forward's divisor for channel c.
template <typename A> FASTNORM_HD_INLINE A denom(A q, A phi, int64_t t, int64_t W, double eps) {
  return use_batch_stats(t, W) ? sqrt(q + static_cast<A>(eps)) : sqrt(phi + static_cast<A>(eps));
}

// running_phi after this step (phi is the value before it), Q2/Q3.
template <typename A>
FASTNORM_HD_INLINE A phi_update(A phi, A q, int64_t t, int64_t W, double alpha_fwd, PowerQuirks quirks) {
  const A tf = static_cast<A>(t), a = static_cast<A>(alpha_fwd);
  if (quirks == PowerQuirks::Official) {
    if (t < W) phi = phi * (tf - A(1)) / tf + q / tf;
    return a * phi + (A(1) - a) * q;
  }
  if (t <= W) return phi * (tf - A(1)) / tf + q / tf;
  return a * phi + (A(1) - a) * q;
}

// The backward's divisor (Q1): sqrt(q + eps) in the official code, the forward's denom in the paper.
template <typename A> FASTNORM_HD_INLINE A bwd_divisor(A q, A denom, double eps, PowerQuirks quirks) {
  return quirks == PowerQuirks::Official ? sqrt(q + static_cast<A>(eps)) : denom;
}

// gh = g - (1 - alpha_bkw) * nu * z, with g = dy * weight.
template <typename A> FASTNORM_HD_INLINE A approx_grad(A dy, A w, A nu, A z, A one_minus_ab) {
  return dy * w - one_minus_ab * nu * z;
}

// nu after this step from the channel sums over P: S_gz = sum_P dy*z, S_zz = sum_P z^2, n = |P|.
// mean_P(gh*z) = (w*S_gz - (1 - alpha_bkw)*nu*S_zz) / n.
template <typename A> FASTNORM_HD_INLINE A nu_update(A nu, A w, A s_gz, A s_zz, A n, A one_minus_ab) {
  return nu + (w * s_gz - one_minus_ab * nu * s_zz) / n;
}

}  // namespace power_math
}  // namespace norm
}  // namespace fastnorm

// Per-element and per-row formulas of the norm family, written once and compiled for both the CPU
// kernels (g++) and the CUDA kernels (nvcc), so the CPU tests exercise the very math the GPU runs.
#pragma once
#include <cmath>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/norm.h"

namespace fastnorm {
namespace norm {
namespace detail {

using fastnorm::detail::round_to;

// rstd from a variance (LN) or mean square (RMS); eps inside the root (torch, HF, Apex convention).
// Per-row scalars are finished in double: the divisions by N, the sqrt and the reciprocal then cost one
// rounding (to A) instead of four, and an error in rstd would scale a whole row.
// rstd = (var + eps)^(-1/2).
template <typename A> FASTNORM_HD_INLINE A rstd_from(double var, double eps) {
  return static_cast<A>(1.0 / std::sqrt(var + eps));
}
// RMSNorm: var = sum(x^2) / n.
FASTNORM_HD_INLINE double mean_square(double sum_sq, int64_t n) { return sum_sq / static_cast<double>(n); }

// LayerNorm variance from the sum of squared deviations about the mean (the two-pass formula).
FASTNORM_HD_INLINE double variance(double sum_d2, int64_t n) { return sum_d2 / static_cast<double>(n); }

// Running moments (count, mean, M2) and Chan et al.'s merge of two partial moments, for rows split
// into chunks (CUDA: across threads; CPU: never needed since a row is reduced by one thread).
template <typename A> struct Moments {
  A n, mean, m2;
};
template <typename A> FASTNORM_HD_INLINE Moments<A> merge(Moments<A> a, Moments<A> b) {
  const A n = a.n + b.n;
  if (n == A(0)) return a;
  const A delta = b.mean - a.mean;
  const A wb = b.n / n;
  return Moments<A>{n, a.mean + delta * wb, a.m2 + b.m2 + delta * delta * a.n * wb};
}

// LayerNorm forward of one element.
template <typename A> FASTNORM_HD_INLINE A ln_y(A x, A mean, A rstd, A gamma, A beta) {
  return (x - mean) * rstd * gamma + beta;
}
// LayerNorm input gradient of one element: rstd * (g - mean(g) - xhat * mean(g * xhat)).
template <typename A> FASTNORM_HD_INLINE A ln_dx(A g, A xhat, A rstd, A mean_g, A mean_gx) {
  return rstd * (g - mean_g - xhat * mean_gx);
}
// RMSNorm input gradient of one element: rstd * (g - xhat * mean(g * xhat)).
template <typename A> FASTNORM_HD_INLINE A rms_dx(A g, A xhat, A rstd, A mean_gx) {
  return rstd * (g - xhat * mean_gx);
}

// RMSNorm rounding rules (specs/norm.md §3.2). x_dt: input dtype, y_dt: output dtype.
// Forward rstd as saved: `none` rounds it to the input dtype first.
template <typename A> FASTNORM_HD_INLINE A rms_saved_rstd(A r, Casting c, DType x_dt) {
  return c == Casting::None ? A(round_to(x_dt, r)) : r;
}
// gamma_eff = float(weight) + offset in fp32; `none` rounds it to X.
template <typename A> FASTNORM_HD_INLINE A rms_gamma(A w, A offset, Casting c, DType x_dt) {
  const A g = w + offset;
  return c == Casting::None ? A(round_to(x_dt, g)) : g;
}
// The normalised value as the forward multiplies it by gamma: llama/none round x*r to X.
template <typename A> FASTNORM_HD_INLINE A rms_xhat_fwd(A x, A r, Casting c, DType x_dt) {
  const A xh = x * r;
  return c == Casting::Gemma ? xh : A(round_to(x_dt, xh));
}
// The product before the output rounding: `none` rounds it to X (its output dtype anyway).
template <typename A> FASTNORM_HD_INLINE A rms_y(A xhat_fwd, A gamma, A beta) { return xhat_fwd * gamma + beta; }

// Backward: g = dy * gamma_eff with the rounding points of the forward's autograd graph.
template <typename A> FASTNORM_HD_INLINE A rms_g(A dy, A gamma, Casting c, DType x_dt, DType y_dt) {
  const A g = dy * gamma;
  switch (c) {
    case Casting::Llama: return A(round_to(x_dt, A(round_to(y_dt, g))));
    case Casting::None: return A(round_to(x_dt, g));
    default: return g;
  }
}
// The xhat the backward uses for dx: fp32 x*r for gemma/llama, the rounded x*r_X for none.
template <typename A> FASTNORM_HD_INLINE A rms_xhat_bwd(A x, A r, Casting c, DType x_dt) {
  return c == Casting::None ? A(round_to(x_dt, x * r)) : x * r;
}
// The xhat multiplying dy in dweight: the value the forward multiplied gamma by.
template <typename A> FASTNORM_HD_INLINE A rms_xhat_dw(A x, A r, Casting c, DType x_dt) {
  return rms_xhat_fwd(x, r, c, x_dt);
}

}  // namespace detail
}  // namespace norm
}  // namespace fastnorm

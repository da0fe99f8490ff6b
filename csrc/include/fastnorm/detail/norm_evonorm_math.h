// Per-element formulas of EvoNorm B0/S0 (specs/norm.md §3.9), compiled for the CPU kernels (g++) and the
// CUDA kernels (nvcc) alike, so the CPU tests exercise the math the GPU runs.
#pragma once
#include <cmath>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/norm_evonorm.h"

namespace fastnorm {
namespace norm {
namespace detail {

// sqrt(m2 / n + eps): a standard deviation from the sum of squared deviations of n values. Finished in
// double so the division, the eps add and the root cost one rounding to the accumulation type.
FASTNORM_HD_INLINE double evo_std(double m2, int64_t n, double eps) {
  return std::sqrt(m2 / static_cast<double>(n) + eps);
}

// sqrt(var + eps) of a variance already rounded to the accumulation type A. B0 forms both L_c and S_bc this
// way, so that equal variances give bitwise-equal L and R (the max-tie cases stay ties).
template <typename A> FASTNORM_HD_INLINE A evo_root(A var, double eps) {
  return static_cast<A>(std::sqrt(static_cast<double>(var) + eps));
}

// Running variance after one training step. timm multiplies the batch variance by n/(n-1) (Bessel),
// TensorFlow does not; decay = 1 - momentum in TF's terms.
FASTNORM_HD_INLINE double evo_running_var(double running, double var, double momentum, int64_t n,
                                          EvoSemantics s) {
  const double k = s == EvoSemantics::Timm ? static_cast<double>(n) / static_cast<double>(n - 1) : 1.0;
  return running * (1.0 - momentum) + var * momentum * k;
}

// D = max(L, R) with NaN propagating from either side (as torch.maximum does).
// Written as selects, not an early return, so the CPU loops if-convert and vectorise.
template <typename A> FASTNORM_HD_INLINE A evo_max(A l, A r) {
  const A m = r > l ? r : l;
  return (l != l || r != r) ? l + r : m;
}

// Share of dD that goes to R = v*x + S: 1 where R wins, 0 where L wins; at a tie timm (torch's max
// backward) splits it in half and TF (tf.maximum's gradient) gives it all to the first argument, L.
template <typename A> FASTNORM_HD_INLINE A evo_p(A l, A r, EvoSemantics s) {
  if (r > l) return A(1);
  if (r < l) return A(0);
  return s == EvoSemantics::Timm ? A(0.5) : A(0);
}

// B0 output of one element: x / D * weight + bias (timm's order of operations).
template <typename A> FASTNORM_HD_INLINE A b0_y(A x, A d, A w, A b) { return x / d * w + b; }

// B0 input gradient of one element. u = dy*weight, e = -u*x/D^2, p = evo_p(L, R);
//   dx = u/D + p*e*v + (x - m_bc)*coef_s + (x - mu_c)*coef_l
// with coef_s = sum_(b,c) p*e / (HW * S_bc) and coef_l = [training] sum_c (1-p)*e / (n * L_c).
template <typename A>
FASTNORM_HD_INLINE A b0_dx(A u, A x, A d, A p, A v, A m_bc, A coef_s, A mu_c, A coef_l) {
  const A e = -u * x / (d * d);
  return u / d + p * e * v + (x - m_bc) * coef_s + (x - mu_c) * coef_l;
}

// The logistic function 1 / (1 + exp(-z)); saturates to 0 and 1 without NaN.
template <typename A> FASTNORM_HD_INLINE A evo_sigmoid(A z) { return A(1) / (A(1) + std::exp(-z)); }

// S0 output of one element: (x * sigmoid(v*x)) / S * weight + bias (timm's order).
template <typename A> FASTNORM_HD_INLINE A s0_y(A x, A sig, A s, A w, A b) { return x * sig / s * w + b; }

// S0 input gradient of one element, r = 1/S, sig = sigmoid(v*x), u = dy*weight:
//   dx = u*r*(sig + v*x*sig*(1-sig)) + (x - m_g)*coef,  coef = -r^3 * sum_g u*x*sig / n_g
template <typename A> FASTNORM_HD_INLINE A s0_dx(A u, A x, A sig, A v, A r, A m_g, A coef) {
  return u * r * (sig + v * x * sig * (A(1) - sig)) + (x - m_g) * coef;
}

}  // namespace detail
}  // namespace norm
}  // namespace fastnorm

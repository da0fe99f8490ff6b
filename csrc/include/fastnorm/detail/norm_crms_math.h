// CRMSNorm per-row and per-element formulas (specs/norm.md §3.5), shared by the CPU and CUDA kernels.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace norm {
namespace detail {

// rstd of a compressed row of n = d - 1 elements from s = sum(x) and ss = sum(x^2), finished in double
// (one rounding to A): Q = ss + s^2 is the full vector's sum of squares, its last coordinate being -s.
template <typename A> FASTNORM_HD_INLINE A crms_rstd(double s, double ss, int64_t n, double eps) {
  const double d = static_cast<double>(n + 1);
  return static_cast<A>(1.0 / std::sqrt((ss + s * s) / d + eps));
}

// The coefficient c = rstd^3 * G / d of the backward, G = sum_j g_j x_j (finished in double).
template <typename A> FASTNORM_HD_INLINE A crms_coef(double G, A rstd, int64_t n) {
  const double r = static_cast<double>(rstd);
  return static_cast<A>(r * r * r * G / static_cast<double>(n + 1));
}

// dx_j = rstd * g_j - c * (x_j + s).
template <typename A> FASTNORM_HD_INLINE A crms_dx(A g, A x, A rstd, A c, A s) { return rstd * g - c * (x + s); }

}  // namespace detail
}  // namespace norm
}  // namespace fastnorm

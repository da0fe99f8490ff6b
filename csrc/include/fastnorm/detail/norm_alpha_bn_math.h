// alpha-BN per-channel formulas (specs/norm.md §3.8), shared by the CPU and CUDA kernels. Per-channel
// scalars are finished in double and rounded once to the accumulation type A.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace norm {
namespace detail {

// Batch variance from the sum of squared deviations about mu_b over n elements (n-1 when unbiased).
FASTNORM_HD_INLINE double abn_batch_var(double sum_d2, int64_t n, bool unbiased) {
  return sum_d2 / static_cast<double>(unbiased ? n - 1 : n);
}
// Mixed statistic a*source + (1-a)*batch; a == 1 ignores the batch statistic entirely (eval BN even when
// the batch one is NaN, e.g. an empty batch), a == 0 the source one.
FASTNORM_HD_INLINE double abn_mix(double a, double source, double batch) {
  if (a == 1.0) return source;
  if (a == 0.0) return batch;
  return a * source + (1.0 - a) * batch;
}
FASTNORM_HD_INLINE double abn_rstd(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

// dx = k_dy*dy + k0 + k_x*(x - mu_b): per-channel coefficients of the exact backward, from
// sdy = sum dy, sdyxh = sum dy*xhat, gamma, rstd, n elements.
struct AbnBwdCoef {
  double k_dy, k0, k_x;
};
FASTNORM_HD_INLINE AbnBwdCoef abn_bwd_coef(double a, bool unbiased, double gamma, double rstd, double sdy,
                                          double sdyxh, int64_t n) {
  AbnBwdCoef c;
  c.k_dy = rstd * gamma;
  if (a == 1.0) {  // eval BN: the statistics are constants
    c.k0 = 0.0;
    c.k_x = 0.0;
    return c;
  }
  const double b = 1.0 - a;
  c.k0 = -b * rstd * gamma * sdy / static_cast<double>(n);
  c.k_x = -b * rstd * rstd * gamma * sdyxh / static_cast<double>(unbiased ? n - 1 : n);
  return c;
}

}  // namespace detail
}  // namespace norm
}  // namespace fastnorm

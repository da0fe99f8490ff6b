// Unified Normalization state rules (specs/norm.md §3.7), written once for the CPU state step and the
// one-block CUDA state kernel. Everything here is per channel or per scalar and computed in double.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/norm_unified.h"

namespace fastnorm {
namespace norm {
namespace detail {

// Element i of a small state tensor of dtype t, as double (state tensors may be any float dtype).
FASTNORM_HD_INLINE double load_state(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float64: return static_cast<const double*>(p)[i];
    case DType::BFloat16: return fastnorm::detail::bf16_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::Float16: return fastnorm::detail::f16_to_float(static_cast<const uint16_t*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}
FASTNORM_HD_INLINE void store_state(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::Float64: static_cast<double*>(p)[i] = v; break;
    case DType::BFloat16: static_cast<uint16_t*>(p)[i] = fastnorm::detail::float_to_bf16(static_cast<float>(v)); break;
    case DType::Float16: static_cast<uint16_t*>(p)[i] = fastnorm::detail::float_to_f16(static_cast<float>(v)); break;
    default: static_cast<float*>(p)[i] = static_cast<float>(v); break;
  }
}

// The window slot written at iteration t (t mod L).
FASTNORM_HD_INLINE int64_t un_slot(int64_t t, int64_t L) { return t % L; }

// Step 4 / backward mean_gz: the batch value is used while the window is not full (t <= L), during
// warmup (t < W) or on a skipped step; otherwise the window statistic.
FASTNORM_HD_INLINE bool un_use_batch(int64_t t, int64_t L, int64_t W, bool skip) { return t <= L || t < W || skip; }

// Step 5: rho = sqrt(var + eps)/sqrt(running_var_old + eps), 1 until max(S, W) or on a skipped step,
// else clamped to [1/5, 5] (NaN passes through, as torch.clamp).
FASTNORM_HD_INLINE double un_rho(double var, double rv_old, double eps, int64_t t, int64_t S, int64_t W, bool skip) {
  const int64_t start = S > W ? S : W;
  if (t <= start || skip) return 1.0;
  const double r = std::sqrt(var + eps) / std::sqrt(rv_old + eps);
  const double lo = 1.0 / 5.0, hi = 5.0;
  return r < lo ? lo : (r > hi ? hi : r);
}

// momentum weights the old value (the official convention, opposite of torch's BatchNorm).
FASTNORM_HD_INLINE double un_ema(double old_v, double v, double m) { return m * old_v + (1.0 - m) * v; }

// Step 3's test for one channel: arithmetic minus geometric window mean beyond v * L.
FASTNORM_HD_INLINE bool un_outlier(double am, double gm, double v, int64_t L) {
  return am - gm > v * static_cast<double>(L);
}

// Window mean and geometric mean (exp of the mean log) of channel c of a [L, C] state buffer.
FASTNORM_HD_INLINE double un_window_mean(const void* buf, DType t, int64_t L, int64_t C, int64_t c) {
  double s = 0;
  for (int64_t i = 0; i < L; ++i) s += load_state(buf, t, i * C + c);
  return s / static_cast<double>(L);
}
FASTNORM_HD_INLINE double un_window_gmean(const void* buf, DType t, int64_t L, int64_t C, int64_t c) {
  double s = 0;
  for (int64_t i = 0; i < L; ++i) s += std::log(load_state(buf, t, i * C + c));
  return std::exp(s / static_cast<double>(L));
}

// Backward per-channel coefficients: dx = dy * k1 - x * k2 with k1 = gamma*rho*istd, k2 = c*istd^2 where
// istd = 1/sqrt(var + eps) and c the subtracted statistic (mean_gz on a skipped step, the new ema_gz else).
FASTNORM_HD_INLINE double un_inv_std(double var, double eps) { return 1.0 / std::sqrt(var + eps); }

}  // namespace detail
}  // namespace norm
}  // namespace fastnorm

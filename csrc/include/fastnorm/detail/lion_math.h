// Per-element math of the Lion step (specs/lion.md §3.1, §3.2, §3.5, §3.6), written once for the CPU kernel
// (g++) and the CUDA kernel (nvcc), so both round identically. Every rounding is pinned: products, FMAs and
// divisions go through mul_rn / fma_rn / div_rn, which nvcc cannot contract and which the host compiles
// with -ffp-contract=off.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/rounding.h"
#include "fastnorm/lion.h"

namespace fastnorm {
namespace lion {
namespace detail {

using fastnorm::detail::f32_bits;
using fastnorm::detail::f32_from_bits;

// ---- pinned roundings (detail/rounding.h) ---------------------------------------------------------
using fastnorm::detail::div_rn;
using fastnorm::detail::fma_rn;
using fastnorm::detail::mul_rn;

// ---- sign --------------------------------------------------------------------------------------------
// sign(+-0) = 0 (torch.sign); +-Inf gives +-1; NaN gives NaN under Propagate, 0 under Torch.
template <typename T> FASTNORM_HD_INLINE T lion_sign(T c, bool propagate_nan) {
  const T s = static_cast<T>(c > T(0)) - static_cast<T>(c < T(0));
  return (propagate_nan && c != c) ? c : s;
}

// ---- Philox4x32-10 -----------------------------------------------------------------------------------
FASTNORM_HD_INLINE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t p = static_cast<uint64_t>(a) * b;
  hi = static_cast<uint32_t>(p >> 32);
  lo = static_cast<uint32_t>(p);
}

struct Philox4 { uint32_t v[4]; };

FASTNORM_HD_INLINE Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint32_t k0, uint32_t k1) {
  for (int r = 0; r < 10; ++r) {
    if (r > 0) { k0 += 0x9E3779B9u; k1 += 0xBB67AE85u; }
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(0xD2511F53u, c0, hi0, lo0);
    mulhilo32(0xCD9E8D57u, c2, hi1, lo1);
    c0 = hi1 ^ c1 ^ k0;
    c1 = lo1;
    c2 = hi0 ^ c3 ^ k1;
    c3 = lo0;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// The 8 random 16-bit values of elements 8j..8j+7 of tensor `slot` (element e takes word (e & 7) >> 1,
// low half when e is even). Independent of how the work is split into threads or launches.
FASTNORM_HD_INLINE Philox4 sr_bits(uint64_t j, uint32_t slot, int64_t sr_step, uint64_t seed) {
  return philox4x32_10(static_cast<uint32_t>(j), static_cast<uint32_t>(j >> 32), slot,
                       static_cast<uint32_t>(static_cast<uint64_t>(sr_step)), static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}
FASTNORM_HD_INLINE uint32_t sr_r16(const Philox4& r, int64_t e) {
  const uint32_t w = r.v[(e & 7) >> 1];
  return (e & 1) ? (w >> 16) : (w & 0xFFFFu);
}

// ---- bf16 roundings ----------------------------------------------------------------------------------
FASTNORM_HD_INLINE uint16_t bf16_round_nearest(float x) { return fastnorm::detail::float_to_bf16(x); }

// Stochastic rounding: add 16 uniform bits below the bf16 mantissa and truncate. Unbiased, exact on
// representable values; NaN and +-Inf round to nearest.
FASTNORM_HD_INLINE uint16_t bf16_round_stochastic(float x, uint32_t r16) {
  const uint32_t v = f32_bits(x);
  if ((v & 0x7f800000u) == 0x7f800000u) return fastnorm::detail::float_to_bf16(x);
  return static_cast<uint16_t>((v + r16) >> 16);
}

// ---- scalars -----------------------------------------------------------------------------------------
// Opmath scalars of one call, finished in double and rounded once to T (§3.1). delta follows the peers'
// evaluation orders: k=0 wd; k=1 lr*(wd/ref); k=2 ((lr*lr)/ref)*wd.
template <typename T> struct Scalars {
  T a1, b1, a2, b2, lr, dmul;
};
template <typename T>
FASTNORM_HD_INLINE Scalars<T> make_scalars(double lr, double beta1, double beta2, double wd, int32_t k, double ref) {
  double delta = wd;
  if (k == 1) delta = lr * (wd / ref);
  else if (k == 2) delta = ((lr * lr) / ref) * wd;
  return Scalars<T>{static_cast<T>(beta1), static_cast<T>(1.0 - beta1), static_cast<T>(beta2),
                    static_cast<T>(1.0 - beta2), static_cast<T>(lr), static_cast<T>(1.0 - delta)};
}

// Opmath of a param dtype.
template <typename P> struct OpmathOf { using type = float; };
template <> struct OpmathOf<double> { using type = double; };

// ---- the element update ------------------------------------------------------------------------------
// Momentum interpolation c (steps 1-2): shared by the update and the cautious counting pass, so both see
// the same c. `gdiv` is grad_scale (1 without one), negated under maximize: g / -s == -(g / s) exactly.
template <typename T> FASTNORM_HD_INLINE T scaled_grad(T g, T gdiv) { return div_rn(g, gdiv); }
template <typename T> FASTNORM_HD_INLINE T interp(T a, T b, T m, T g) { return fma_rn(b, g, mul_rn(a, m)); }

// Cautious mask (timm): s*g > 0; NaN and zero count 0.
template <typename T> FASTNORM_HD_INLINE bool cautious_keep(T s, T gg) { return mul_rn(s, gg) > T(0); }

// Result of one element, in opmath: the new weight before its final rounding, and the new momentum.
template <typename T> struct Update {
  T x2, m_new;
};

// Steps 1-5 for one element. x: the weight (master or param) as T; gg: the scaled grad; mm: the momentum.
// `q` is the cautious scale 1/max(frac, min_frac) (ignored unless cautious).
template <typename T>
FASTNORM_HD_INLINE Update<T> lion_update_element(T x, T gg, T mm, const Scalars<T>& s, bool cautious, T q,
                                                 bool propagate_nan) {
  const T c = interp(s.a1, s.b1, mm, gg);
  const T sg = lion_sign(c, propagate_nan);
  T u = sg;
  if (cautious) u = cautious_keep(sg, gg) ? mul_rn(sg, q) : (sg != sg ? sg : T(0));
  const T x1 = mul_rn(x, s.dmul);
  const T x2 = fma_rn(-s.lr, u, x1);
  return Update<T>{x2, interp(s.a2, s.b2, mm, gg)};
}

// The cautious scale of one tensor from its exact mask count (§3.5): frac in double, rounded to float32.
FASTNORM_HD_INLINE float cautious_scale(uint64_t count, int64_t numel, double min_frac) {
  const float frac = static_cast<float>(static_cast<double>(count) / static_cast<double>(numel));
  const float lo = static_cast<float>(min_frac);
  return div_rn(1.0f, frac > lo ? frac : lo);
}

}  // namespace detail
}  // namespace lion
}  // namespace fastnorm

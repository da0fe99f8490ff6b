// Per-element math of the SaRA kernels (specs/sara.md §3.1-§3.4), written once for the CPU kernels (g++) and
// the CUDA kernels (nvcc): magnitude keys, flat-index decoding, strided addressing, the rounding store of the
// write-through and the AdamW element update. The host build uses -ffp-contract=off and nvcc -fmad=false, so
// both round exactly where this file says.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/rounding.h"
#include "fastnorm/sara.h"

namespace fastnorm {
namespace sara {
namespace detail {

using fastnorm::detail::Conv;

// ---- magnitude keys (§3.1) -------------------------------------------------------------------------------
// The key is |x|'s bit pattern in x's format; it orders non-NaN magnitudes, and NaN keys exceed key(+inf).
template <typename T> struct KeyTraits;
template <> struct KeyTraits<float> {
  static constexpr uint64_t kInf = 0x7F800000u;
  static constexpr int kBits = 32;
  static FASTNORM_HD_INLINE uint64_t key(float x) { return fastnorm::detail::f32_bits(x) & 0x7FFFFFFFu; }
};
template <> struct KeyTraits<double> {
  static constexpr uint64_t kInf = 0x7FF0000000000000ull;
  static constexpr int kBits = 64;
  static FASTNORM_HD_INLINE uint64_t key(double x) {
#if defined(__CUDA_ARCH__)
    return static_cast<uint64_t>(__double_as_longlong(x)) & 0x7FFFFFFFFFFFFFFFull;
#else
    uint64_t u; std::memcpy(&u, &x, 8); return u & 0x7FFFFFFFFFFFFFFFull;
#endif
  }
};
template <> struct KeyTraits<bf16_t> {
  static constexpr uint64_t kInf = 0x7F80u;
  static constexpr int kBits = 16;
  static FASTNORM_HD_INLINE uint64_t key(bf16_t x) { return x.bits & 0x7FFFu; }
};
template <> struct KeyTraits<f16_t> {
  static constexpr uint64_t kInf = 0x7C00u;
  static constexpr int kBits = 16;
  static FASTNORM_HD_INLINE uint64_t key(f16_t x) { return x.bits & 0x7FFFu; }
};

FASTNORM_HD_INLINE int key_bits(DType t) {
  return t == DType::Float64 ? 64 : (t == DType::Float32 ? 32 : 16);
}

// Selection predicate of sara_select: key < key_lt (0), key == key_eq (1, quota-limited), or neither (2).
// NaN never matches, whatever the thresholds.
template <typename T>
FASTNORM_HD_INLINE int select_class(T x, uint64_t key_lt, uint64_t key_eq, bool has_eq) {
  const uint64_t k = KeyTraits<T>::key(x);
  if (k > KeyTraits<T>::kInf) return 2;
  if (k < key_lt) return 0;
  return (has_eq && k == key_eq) ? 1 : 2;
}

// ---- indices ---------------------------------------------------------------------------------------------
FASTNORM_HD_INLINE int64_t load_index(const void* p, DType t, int64_t j) {
  return t == DType::Int64 ? static_cast<const int64_t*>(p)[j] : static_cast<int64_t>(static_cast<const int32_t*>(p)[j]);
}

// First position j in [lo, hi) of the sorted index vector with idx[j] >= target (hi if none): the entries of a
// row's column window are [lower_bound(r*cols + c0), lower_bound(r*cols + c1)).
template <typename I>
FASTNORM_HD_INLINE int64_t lower_bound_index(const I* idx, int64_t lo, int64_t hi, int64_t target) {
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    if (static_cast<int64_t>(idx[mid]) < target) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// Element offset of logical row-major flat index `flat` under a strided layout (ndim 0 = contiguous).
FASTNORM_HD_INLINE int64_t strided_offset(int64_t flat, const SaraLayout& L) {
  if (L.ndim == 0) return flat;
  int64_t off = 0;
  for (int d = L.ndim - 1; d >= 0; --d) {
    const int64_t s = L.sizes[d];
    const int64_t c = s > 0 ? flat % s : 0;
    flat = s > 0 ? flat / s : 0;
    off += c * L.strides[d];
  }
  return off;
}

// Conv weight column j of [C/G * kh * kw] -> (c, p, q).
struct ConvCol { int64_t c, p, q; };
FASTNORM_HD_INLINE ConvCol decode_conv_col(int64_t col, int64_t kh, int64_t kw) {
  ConvCol r;
  r.q = col % kw;
  const int64_t t = col / kw;
  r.p = t % kh;
  r.c = t / kh;
  return r;
}

// ---- pinned roundings (detail/rounding.h) ---------------------------------------------------------------
using fastnorm::detail::add_rn;
using fastnorm::detail::div_rn;
using fastnorm::detail::fma_rn;
using fastnorm::detail::mul_rn;
using fastnorm::detail::sqrt_rn;

// Write-through value RN_w(src + alpha*delta): alpha*delta rounded to the opmath type A, the sum rounded to A,
// then one round-to-nearest-even into W. Bitwise (src.float() + alpha*delta).to(w.dtype) in torch, except that
// alpha == 0 returns src itself: the exact restore (unmerge) keeps -0 and ignores NaN/Inf deltas, where
// -0 + 0*delta would give +0 and 0*NaN would poison the weight.
template <typename W, typename A>
FASTNORM_HD_INLINE W merged_value(W src, A alpha, A delta) {
  if (alpha == A(0)) return src;
  const A s = static_cast<A>(Conv<W>::load(src));
  return Conv<W>::store(static_cast<decltype(Conv<W>::load(W{}))>(add_rn(s, mul_rn(alpha, delta))));
}

// ---- AdamW element update (§3.4) -------------------------------------------------------------------------
// Scalars finished in double on the host and rounded once to A, as torch passes Python floats to its kernels.
template <typename A> struct AdamWScalars {
  A decay;        // 1 - lr*wd            (decoupled decay on delta)
  A lr_wd;        // lr*wd                (decay_absolute)
  A one_m_beta1;  // lerp weight
  A beta2, one_m_beta2;
  A bc2_sqrt, eps;
  A neg_step;     // -(lr / bc1)
  A alpha;
};

template <typename A>
FASTNORM_HD_INLINE AdamWScalars<A> adamw_scalars(double lr, double beta1, double beta2, double eps, double wd,
                                                double bc1, double bc2, double alpha) {
  AdamWScalars<A> s;
  s.decay = static_cast<A>(1.0 - lr * wd);
  s.lr_wd = static_cast<A>(lr * wd);
  s.one_m_beta1 = static_cast<A>(1.0 - beta1);
  s.beta2 = static_cast<A>(beta2);
  s.one_m_beta2 = static_cast<A>(1.0 - beta2);
  s.bc2_sqrt = static_cast<A>(pow(bc2, 0.5));  // Python's bias_correction2 ** 0.5
  s.eps = static_cast<A>(eps);
  s.neg_step = static_cast<A>(-(lr / bc1));
  s.alpha = static_cast<A>(alpha);
  return s;
}

// torch's vectorised lerp (ATen/native/cpu/LerpKernel.cpp, which torch's CPU AdamW runs): one FMA,
// fma(w, end - self, self) for |w| < 0.5, else fma(w - 1, end - self, end).
template <typename A> FASTNORM_HD_INLINE A lerp_torch(A self, A end, A w) {
  const A diff = add_rn(end, -self);
  return (w < A(0.5) && w > A(-0.5)) ? fma_rn(w, diff, self) : fma_rn(add_rn(w, A(-1)), diff, end);
}

template <typename A> struct AdamWElem { A d, m, v; };

// One element: decay, moments, step. `base_v` is the base weight widened to A (used by decay_absolute).
template <typename A>
FASTNORM_HD_INLINE AdamWElem<A> adamw_element(A d, A m, A v, A g, A base_v, const AdamWScalars<A>& s,
                                              bool decay_absolute) {
  if (decay_absolute) d = add_rn(d, -mul_rn(add_rn(base_v, d), s.lr_wd));
  else d = mul_rn(d, s.decay);
  m = lerp_torch(m, g, s.one_m_beta1);
  v = add_rn(mul_rn(v, s.beta2), mul_rn(mul_rn(s.one_m_beta2, g), g));
  const A denom = add_rn(div_rn(sqrt_rn(v), s.bc2_sqrt), s.eps);
  d = add_rn(d, div_rn(mul_rn(s.neg_step, m), denom));
  return AdamWElem<A>{d, m, v};
}

}  // namespace detail
}  // namespace sara
}  // namespace fastnorm

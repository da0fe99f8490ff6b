// Poincaré-ball math shared by the CPU and CUDA kernels (specs/poincare.md §3.1-§3.4, §3.6, §4). Everything
// here is FASTNORM_HD, so the host tests check the very formulas the GPU runs.
//
// Structure. A row op sees a few vectors of D elements (its inputs and, in backward, the upstream grad): the
// "basis" rows r_0..r_{K-1}. Every quantity the ops need is a linear combination of basis rows with per-row
// scalar coefficients (Möbius addition, gyration, radial maps and all their VJPs are), so an op is
//   1. one pass over the rows computing their Gram matrix (all pairwise dot products, fp32/fp64 lanes),
//   2. scalar algebra on coefficient vectors (Vec) and the Gram matrix,
//   3. one pass writing each output as sum_i coef_i * r_i.
// Where a combination z can cancel (z = (-x) (+) y for nearby points: dist, logmap; the output norm used by the
// projection), z is materialised element by element in an extra pass and its dot products are measured
// directly (slot K of the basis, "zgram"), never formed from the Gram entries, and written through z_d.
// Row accessors: In has `A operator[](int64_t d)`, Out has `bool ok()` and `set(int64_t d, A v)`. The CPU uses
// contiguous compute-type buffers (CIn/COut), the CUDA kernels strided storage-type views (SIn/SOut).
#pragma once
#include <math.h>
#include <stdint.h>

#include "fastnorm/common.h"
#include "fastnorm/detail/dtype.h"

namespace fastnorm {
namespace poincare {
namespace detail {

using ::fastnorm::detail::load_as;
using ::fastnorm::detail::store_from;

// ---------------------------------------------------------------- constants (§4)
// Projection eps per storage dtype: radius (1-eps)/sqrt(c). bf16 needs 1e-2 so that rounding the output
// (2^-8 relative) cannot leave the ball.
FASTNORM_HD_INLINE double default_eps(DType t) {
  switch (t) {
    case DType::Float64: return 1e-5;
    case DType::BFloat16: return 1e-2;
    default: return 4e-3;
  }
}
template <class A> struct Num;
template <> struct Num<float> {
  static FASTNORM_HD_INLINE float s_small() { return 1e-3f; }
};
template <> struct Num<double> {
  static FASTNORM_HD_INLINE double s_small() { return 1e-6; }
};
constexpr double kNu = 1e-15;          // norm floor: x_hat = x / max(|x|, nu)
constexpr double kDenFloor = 1e-15;    // floors of the Möbius/gyration denominators and of 1 - c|x|^2
constexpr double kTanhMax = 15.0;      // tanh argument clamp
constexpr double kArtanhMax = 1.0 - 1e-7;  // artanh argument clamp 1 - delta
constexpr double kQFloor = 1e-10;      // midpoint: sign-preserving floor of |Q|

// ---------------------------------------------------------------- scalar functions (float and double)
FASTNORM_HD_INLINE float m_sqrt(float v) { return sqrtf(v); }
FASTNORM_HD_INLINE double m_sqrt(double v) { return sqrt(v); }
FASTNORM_HD_INLINE float m_tanh(float v) { return tanhf(v); }
FASTNORM_HD_INLINE double m_tanh(double v) { return tanh(v); }
FASTNORM_HD_INLINE float m_atanh(float v) { return atanhf(v); }
FASTNORM_HD_INLINE double m_atanh(double v) { return atanh(v); }
// min/max that propagate NaN from the first argument (NaN rows stay NaN, §5).
template <class A> FASTNORM_HD_INLINE A m_min(A a, A b) { return b < a ? b : a; }
template <class A> FASTNORM_HD_INLINE A m_max(A a, A b) { return b > a ? b : a; }

// ---------------------------------------------------------------- row accessors
template <class A> struct CIn {
  const A* p;
  FASTNORM_HD_INLINE A operator[](int64_t d) const { return p[d]; }
};
template <class A> struct COut {
  A* p;
  FASTNORM_HD_INLINE bool ok() const { return p != nullptr; }
  FASTNORM_HD_INLINE void set(int64_t d, A v) const { p[d] = v; }
};
template <class T, class A> struct SIn {
  const T* p; int64_t s;
  FASTNORM_HD_INLINE A operator[](int64_t d) const { return load_as<T, A>(p[d * s]); }
};
template <class T, class A> struct SOut {
  T* p; int64_t s;
  FASTNORM_HD_INLINE bool ok() const { return p != nullptr; }
  FASTNORM_HD_INLINE void set(int64_t d, A v) const { p[d * s] = store_from<T, A>(v); }
};

// ---------------------------------------------------------------- coefficient vectors over the basis
// N = K + 1 slots: K basis rows and slot K for the materialised z (zero when unused).
template <class A, int N> struct Vec {
  A a[N];
};
template <class A, int N> FASTNORM_HD_INLINE Vec<A, N> vzero() {
  Vec<A, N> v;
  for (int i = 0; i < N; ++i) v.a[i] = A(0);
  return v;
}
template <class A, int N> FASTNORM_HD_INLINE Vec<A, N> unit(int i, A s = A(1)) {
  Vec<A, N> v = vzero<A, N>();
  v.a[i] = s;
  return v;
}
template <class A, int N> FASTNORM_HD_INLINE Vec<A, N> operator+(const Vec<A, N>& u, const Vec<A, N>& v) {
  Vec<A, N> w;
  for (int i = 0; i < N; ++i) w.a[i] = u.a[i] + v.a[i];
  return w;
}
template <class A, int N> FASTNORM_HD_INLINE Vec<A, N> operator*(A s, const Vec<A, N>& u) {
  Vec<A, N> w;
  for (int i = 0; i < N; ++i) w.a[i] = s * u.a[i];
  return w;
}
// Gram matrix of the N slots (symmetric, full storage).
template <class A, int N> struct Gram {
  A g[N][N];
  FASTNORM_HD_INLINE A dot(const Vec<A, N>& u, const Vec<A, N>& v) const {
    A s = A(0);
    for (int i = 0; i < N; ++i) {
      if (u.a[i] == A(0)) continue;  // exact zeros only: skips unused slots (z, absent rows)
      A t = A(0);
      for (int j = 0; j < N; ++j) t += g[i][j] * v.a[j];
      s += u.a[i] * t;
    }
    return s;
  }
};

// Warp mode (L = 0, CUDA only): the 32 lanes of a warp share one vector, lane l handles d = l, l+32, ...; the
// sums are completed by an xor butterfly, which gives every lane the bitwise same value (same pairs, addition
// commutes), so all lanes then run the same scalar algebra and write disjoint elements.
template <class A> FASTNORM_HD_INLINE A lane_sum(A v) {
#if defined(__CUDA_ARCH__)
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
#endif
  return v;
}
FASTNORM_HD_INLINE int lane_id() {
#if defined(__CUDA_ARCH__)
  return int(threadIdx.x & 31u);
#else
  return 0;
#endif
}

// Pass 1: Gram of the K basis rows, L interleaved lanes per dot product (L = 8 on the CPU, so each dot is one
// vector register of partial sums; L = 1 on CUDA). Lanes are summed in a fixed order: deterministic.
template <class A, int K, int N, int L, class R>
FASTNORM_HD_INLINE void gram(const R* r, int64_t D, Gram<A, N>& G) {
  constexpr int P = K * (K + 1) / 2;
  if constexpr (L == 0) {
    A acc[P];
    for (int q = 0; q < P; ++q) acc[q] = A(0);
    for (int64_t d = lane_id(); d < D; d += 32) {
      A v[K];
      for (int i = 0; i < K; ++i) v[i] = r[i][d];
      int q = 0;
      for (int i = 0; i < K; ++i)
        for (int j = i; j < K; ++j) acc[q++] += v[i] * v[j];
    }
    int q = 0;
    for (int i = 0; i < K; ++i)
      for (int j = i; j < K; ++j, ++q) G.g[i][j] = G.g[j][i] = lane_sum(acc[q]);
    for (int i = K; i < N; ++i)
      for (int j = 0; j < N; ++j) G.g[i][j] = G.g[j][i] = A(0);
    return;
  }
  constexpr int LL = L > 0 ? L : 1;
  A acc[P][LL];
  for (int q = 0; q < P; ++q)
    for (int l = 0; l < L; ++l) acc[q][l] = A(0);
  int64_t d = 0;
  for (; d + L <= D; d += L) {
    for (int l = 0; l < L; ++l) {
      A v[K];
      for (int i = 0; i < K; ++i) v[i] = r[i][d + l];
      int q = 0;
      for (int i = 0; i < K; ++i)
        for (int j = i; j < K; ++j) acc[q++][l] += v[i] * v[j];
    }
  }
  for (; d < D; ++d) {
    A v[K];
    for (int i = 0; i < K; ++i) v[i] = r[i][d];
    int q = 0;
    for (int i = 0; i < K; ++i)
      for (int j = i; j < K; ++j) acc[q++][0] += v[i] * v[j];
  }
  int q = 0;
  for (int i = 0; i < K; ++i)
    for (int j = i; j < K; ++j, ++q) {
      A s = A(0);
      for (int l = 0; l < L; ++l) s += acc[q][l];
      G.g[i][j] = s;
      G.g[j][i] = s;
    }
  for (int i = K; i < N; ++i)
    for (int j = 0; j < N; ++j) G.g[i][j] = G.g[j][i] = A(0);
}

// Pass 2 (where needed): materialise z = sum_i zc_i r_i element by element and measure <z, r_i> and <z, z>
// directly; stored in slot K of G. zc must have zero in slot K.
template <class A, int K, int N, int L, class R>
FASTNORM_HD_INLINE void zgram(const R* r, const Vec<A, N>& zc, int64_t D, Gram<A, N>& G) {
  if constexpr (L == 0) {
    A acc[K + 1];
    for (int q = 0; q <= K; ++q) acc[q] = A(0);
    for (int64_t d = lane_id(); d < D; d += 32) {
      A v[K];
      A z = A(0);
      for (int i = 0; i < K; ++i) {
        v[i] = r[i][d];
        z += zc.a[i] * v[i];
      }
      for (int i = 0; i < K; ++i) acc[i] += z * v[i];
      acc[K] += z * z;
    }
    for (int i = 0; i <= K; ++i) G.g[K][i] = G.g[i][K] = lane_sum(acc[i]);
    return;
  }
  constexpr int LL = L > 0 ? L : 1;
  A acc[K + 1][LL];
  for (int q = 0; q <= K; ++q)
    for (int l = 0; l < L; ++l) acc[q][l] = A(0);
  int64_t d = 0;
  for (; d + L <= D; d += L) {
    for (int l = 0; l < L; ++l) {
      A v[K];
      A z = A(0);
      for (int i = 0; i < K; ++i) {
        v[i] = r[i][d + l];
        z += zc.a[i] * v[i];
      }
      for (int i = 0; i < K; ++i) acc[i][l] += z * v[i];
      acc[K][l] += z * z;
    }
  }
  for (; d < D; ++d) {
    A v[K];
    A z = A(0);
    for (int i = 0; i < K; ++i) {
      v[i] = r[i][d];
      z += zc.a[i] * v[i];
    }
    for (int i = 0; i < K; ++i) acc[i][0] += z * v[i];
    acc[K][0] += z * z;
  }
  for (int i = 0; i <= K; ++i) {
    A s = A(0);
    for (int l = 0; l < L; ++l) s += acc[i][l];
    G.g[K][i] = s;
    G.g[i][K] = s;
  }
}

// Pass 3: out_d = sum_i co_i r_i[d] + co_K * z_d with z_d = sum_i zc_i r_i[d] (z formed first: no cancellation).
// In warp mode (Warp = true) lane l writes d = l, l+32, ...
template <class A, int K, int N, bool Warp = false, class R, class W>
FASTNORM_HD_INLINE void emit(const R* r, const Vec<A, N>& co, const Vec<A, N>& zc, int64_t D, const W& out) {
  if (!out.ok()) return;
  const bool use_z = N > K && co.a[N - 1] != A(0);
  for (int64_t d = Warp ? lane_id() : 0; d < D; d += Warp ? 32 : 1) {
    A v[K];
    for (int i = 0; i < K; ++i) v[i] = r[i][d];
    A s = A(0);
    for (int i = 0; i < K; ++i) s += co.a[i] * v[i];
    if (use_z) {
      A z = A(0);
      for (int i = 0; i < K; ++i) z += zc.a[i] * v[i];
      s += co.a[N - 1] * z;
    }
    out.set(d, s);
  }
}

// ---------------------------------------------------------------- curvature
template <class A> struct Curv {
  A c, sc;  // c and sqrt(c)
};
template <class A> FASTNORM_HD_INLINE Curv<A> make_curv(A c) { return Curv<A>{c, m_sqrt(c)}; }

// ---------------------------------------------------------------- radial maps (§3.1)
// out = f(n) * x_hat is written fn * x with fn = f(n)/n; its VJP is dx = fn * g + k1 * <g, x> * x with
// k1 = (f'(n) - f(n)/n) / n^2. Below s = sqrt(c) n < s_small both come from the series (finite at n = 0).
template <class A> struct Radial {
  A fn, k1;
};

// Projection onto the radius M = (1-eps)/sqrt(c): only n > M changes (strict).
template <class A> FASTNORM_HD_INLINE Radial<A> proj_radial(A n2, const Curv<A>& cv, A eps) {
  const A M = (A(1) - eps) / cv.sc;
  const A n = m_sqrt(n2);
  if (n > M) {
    const A fn = M / n;
    return Radial<A>{fn, -fn / n2};
  }
  return Radial<A>{A(1), A(0)};
}

// exp_0 (+ projection when proj): f = min(tanh(s~), 1-eps)/sqrt(c), s~ = min(s, 15).
template <class A> FASTNORM_HD_INLINE Radial<A> expmap0_radial(A n2, const Curv<A>& cv, A eps, bool proj) {
  const A n = m_sqrt(n2);
  const A s = cv.sc * n;
  if (s < Num<A>::s_small()) {
    const A s2 = s * s;
    return Radial<A>{A(1) - s2 / A(3) + A(2) * s2 * s2 / A(15), cv.c * (A(-2) / A(3) + A(8) * s2 / A(15))};
  }
  const A st = m_min(s, A(kTanhMax));
  A t = m_tanh(st);
  bool clipped = !(s < A(kTanhMax));
  if (proj && t > A(1) - eps) {
    t = A(1) - eps;
    clipped = true;
  }
  const A fn = t / s;  // f / n = tanh / (sqrt(c) n)
  const A fp = clipped ? A(0) : (A(1) - t * t);
  return Radial<A>{fn, (fp - fn) / n2};
}

// log_0: f = artanh(min(s, 1-delta))/sqrt(c), f' = 1/(1 - c n^2) unclamped.
template <class A> FASTNORM_HD_INLINE Radial<A> logmap0_radial(A n2, const Curv<A>& cv) {
  const A n = m_sqrt(n2);
  const A s = cv.sc * n;
  if (s < Num<A>::s_small()) {
    const A s2 = s * s;
    return Radial<A>{A(1) + s2 / A(3) + s2 * s2 / A(5), cv.c * (A(2) / A(3) + A(4) * s2 / A(5))};
  }
  const bool clipped = !(s < A(kArtanhMax));
  const A fn = m_atanh(m_min(s, A(kArtanhMax))) / s;
  const A fp = clipped ? A(0) : A(1) / (A(1) - s * s);
  return Radial<A>{fn, (fp - fn) / n2};
}

// r (x) x: a = artanh(min(s, 1-delta)), t = tanh(clamp(r a, +-15)), f = t/sqrt(c); also the factor
// dr_coef with dL/dr = <g, x> * dr_coef (= (1 - t^2) a/s, 0 where a clamp is active).
template <class A> struct ScalarMulRadial {
  Radial<A> rad;
  A dr_coef;
  A t;
};
template <class A> FASTNORM_HD_INLINE ScalarMulRadial<A> scalar_mul_radial(A r, A n2, const Curv<A>& cv) {
  const A n = m_sqrt(n2);
  const A s = cv.sc * n;
  ScalarMulRadial<A> o;
  if (s < Num<A>::s_small()) {
    const A s2 = s * s;
    const A rr = r - r * r * r;
    o.rad = Radial<A>{r + rr * s2 / A(3), cv.c * A(2) * rr / A(3)};
    const A t = r * s;
    o.t = t;
    o.dr_coef = (A(1) - t * t) * (A(1) + s2 / A(3));
    return o;
  }
  const bool sclip = !(s < A(kArtanhMax));
  const A a = m_atanh(m_min(s, A(kArtanhMax)));
  const A ra = r * a;
  const bool tclip = !(ra < A(kTanhMax) && ra > A(-kTanhMax));
  const A t = m_tanh(m_max(m_min(ra, A(kTanhMax)), A(-kTanhMax)));
  const A fn = t / s;
  const A fp = (sclip || tclip) ? A(0) : (A(1) - t * t) * r / (A(1) - s * s);
  o.rad = Radial<A>{fn, (fp - fn) / n2};
  o.t = t;
  o.dr_coef = tclip ? A(0) : (A(1) - t * t) * a / s;
  return o;
}

// Conformal factor lambda_x = 2/max(1 - c n^2, 1e-15) and dlambda/dx = kx * x (kx = lambda^2 c, 0 when clamped).
template <class A> struct Lambda {
  A lam, kx;
};
template <class A> FASTNORM_HD_INLINE Lambda<A> conformal(A n2, const Curv<A>& cv) {
  const A den = A(1) - cv.c * n2;
  if (den > A(kDenFloor)) {
    const A lam = A(2) / den;
    return Lambda<A>{lam, lam * lam * cv.c};
  }
  return Lambda<A>{A(2) / A(kDenFloor), A(0)};
}

// exp_x's radial part h = f(n_v) v_hat, f = tanh(min(sqrt(c) lambda n_v/2, 15))/sqrt(c); also
// dlam_coef with dL/dlambda = <dh, v> * dlam_coef (= sech^2(a)/2, 0 when clamped).
template <class A> struct ExpmapRadial {
  Radial<A> rad;
  A dlam_coef;
};
template <class A> FASTNORM_HD_INLINE ExpmapRadial<A> expmap_radial(A nv2, A lam, const Curv<A>& cv) {
  const A nv = m_sqrt(nv2);
  const A half = lam / A(2);
  const A a = cv.sc * half * nv;
  ExpmapRadial<A> o;
  if (a < Num<A>::s_small()) {
    const A a2 = a * a;
    o.rad = Radial<A>{half * (A(1) - a2 / A(3) + A(2) * a2 * a2 / A(15)),
                      half * (cv.c * half * half) * (A(-2) / A(3) + A(8) * a2 / A(15))};
    o.dlam_coef = (A(1) - a2) / A(2);
    return o;
  }
  const bool clipped = !(a < A(kTanhMax));
  const A t = m_tanh(m_min(a, A(kTanhMax)));
  const A fn = t / (cv.sc * nv);
  const A sech2 = clipped ? A(0) : A(1) - t * t;
  o.rad = Radial<A>{fn, (half * sech2 - fn) / nv2};
  o.dlam_coef = sech2 / A(2);
  return o;
}

// ---------------------------------------------------------------- Möbius addition (§3.2) in the basis
// z = (A x + B y)/D for coefficient vectors X, Y. Dots come from G (xx, yy, xy).
template <class A, int N> struct Mobius {
  A Ac, Bc, Dc, xx, yy, xy;
  Vec<A, N> z;  // (A X + B Y)/D as a combination of the basis rows
};
template <class A, int N>
FASTNORM_HD_INLINE Mobius<A, N> mobius(const Vec<A, N>& X, const Vec<A, N>& Y, const Gram<A, N>& G,
                                       const Curv<A>& cv) {
  Mobius<A, N> m;
  m.xx = G.dot(X, X);
  m.yy = G.dot(Y, Y);
  m.xy = G.dot(X, Y);
  const A c = cv.c;
  m.Bc = A(1) - c * m.xx;
  // A = 1 + 2c<x,y> + c|y|^2 written as B + c|x + y|^2: A == B exactly when y = -x (so (-x) (+) x is exactly
  // 0, as dist(x, x) and logmap(x, x) must be).
  m.Ac = m.Bc + c * m_max(m.xx + A(2) * m.xy + m.yy, A(0));
  m.Dc = m_max(A(1) + A(2) * c * m.xy + c * c * m.xx * m.yy, A(kDenFloor));
  m.z = (m.Ac / m.Dc) * X + (m.Bc / m.Dc) * Y;
  return m;
}
// VJP of z = X (+) Y for upstream Gv: returns (dX, dY). Gz = <Gv, z> is passed in (measured in slot K when
// z is materialised). Formulas of §3.2.
template <class A, int N> struct Pair {
  Vec<A, N> a, b;
};
template <class A, int N>
FASTNORM_HD_INLINE Pair<A, N> mobius_vjp(const Mobius<A, N>& m, const Vec<A, N>& X, const Vec<A, N>& Y,
                                         const Vec<A, N>& Gv, A Gx, A Gy, A Gz, const Curv<A>& cv) {
  const A c = cv.c;
  const A k = A(2) * c / m.Dc;
  Pair<A, N> o;
  o.a = (m.Ac / m.Dc) * Gv + (k * (Gx - Gz)) * Y + (-k * (Gy + c * m.yy * Gz)) * X;
  o.b = (m.Bc / m.Dc) * Gv + (k * (Gx - Gz)) * X + (k * (Gx - c * m.xx * Gz)) * Y;
  return o;
}

// ---------------------------------------------------------------- gyration (§3.3) in the basis
template <class A, int N> struct Gyr {
  A a, b, d, uu, vv, uv, uw, vw;
  Vec<A, N> out;  // w + 2(a u + b v)/d
};
template <class A, int N>
FASTNORM_HD_INLINE Gyr<A, N> gyration(const Vec<A, N>& U, const Vec<A, N>& V, const Vec<A, N>& W,
                                      const Gram<A, N>& G, const Curv<A>& cv) {
  Gyr<A, N> y;
  const A c = cv.c, c2 = cv.c * cv.c;
  y.uu = G.dot(U, U); y.vv = G.dot(V, V); y.uv = G.dot(U, V); y.uw = G.dot(U, W); y.vw = G.dot(V, W);
  y.a = -c2 * y.uw * y.vv + c * y.vw + A(2) * c2 * y.uv * y.vw;
  y.b = -c2 * y.vw * y.uu - c * y.uw;
  y.d = m_max(A(1) + A(2) * c * y.uv + c2 * y.uu * y.vv, A(kDenFloor));
  y.out = W + (A(2) * y.a / y.d) * U + (A(2) * y.b / y.d) * V;
  return y;
}
template <class A, int N> struct Triple {
  Vec<A, N> u, v, w;
};
// VJP of gyr[u, v] w for upstream Gv (p = <Gv, u>, q = <Gv, v>).
template <class A, int N>
FASTNORM_HD_INLINE Triple<A, N> gyration_vjp(const Gyr<A, N>& y, const Vec<A, N>& U, const Vec<A, N>& V,
                                             const Vec<A, N>& W, const Vec<A, N>& Gv, const Gram<A, N>& G,
                                             const Curv<A>& cv) {
  const A c = cv.c, c2 = cv.c * cv.c;
  const A p = G.dot(Gv, U), q = G.dot(Gv, V);
  const A S = y.a * p + y.b * q;
  const A k = A(2) / y.d, k2 = A(2) * S / (y.d * y.d);
  Triple<A, N> o;
  o.w = Gv + (k * (-p * c2 * y.vv - q * c)) * U + (k * (p * (c + A(2) * c2 * y.uv) - q * c2 * y.uu)) * V;
  o.u = (k * y.a) * Gv + (k * (-p * c2 * y.vv - q * c)) * W + (k * p * A(2) * c2 * y.vw) * V +
        (-k * q * A(2) * c2 * y.vw) * U + (-k2 * A(2) * c) * V + (-k2 * A(2) * c2 * y.vv) * U;
  o.v = (k * y.b) * Gv + (k * (-p * A(2) * c2 * y.uw)) * V + (k * (p * c + p * A(2) * c2 * y.uv - q * c2 * y.uu)) * W +
        (k * p * A(2) * c2 * y.vw) * U + (-k2 * A(2) * c) * U + (-k2 * A(2) * c2 * y.uu) * V;
  return o;
}

// Projection VJP for a vector P (pre-projection) with |P|^2 = n2: dP = fn*g + k1*<g, P>*P.
template <class A, int N>
FASTNORM_HD_INLINE Vec<A, N> radial_vjp(const Radial<A>& rd, const Vec<A, N>& Gv, A gP, const Vec<A, N>& P) {
  return rd.fn * Gv + (rd.k1 * gP) * P;
}


// ---------------------------------------------------------------- row ops (forward and backward per vector)
// Each op struct gives Kf (vector inputs), Kb (rows of the backward: inputs, then the upstream grad when the
// output is a vector), ScalarOut, fwd() and bwd(). bwd() writes the grads whose Out is ok() and returns the
// row's curvature bracket  sum_p <dp, p> - alpha <g, out>  (§3.6; the caller multiplies the sum by 1/(2c)).
template <class A> struct Ctx {
  Curv<A> cv;
  A eps;
  bool proj;
  int64_t D;
};
template <class A> FASTNORM_HD_INLINE Radial<A> maybe_proj(A n2, const Ctx<A>& k) {
  return k.proj ? proj_radial(n2, k.cv, k.eps) : Radial<A>{A(1), A(0)};
}

struct ProjectOp {
  static constexpr int Kf = 1, Kb = 2;
  static constexpr bool ScalarOut = false;
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W& out, A*) {
    Gram<A, 2> G; gram<A, 1, 2, L>(in, k.D, G);
    const Radial<A> rd = proj_radial(G.g[0][0], k.cv, k.eps);
    emit<A, 1, 2, L == 0>(in, unit<A, 2>(0, rd.fn), vzero<A, 2>(), k.D, out);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A, const W* gout, A*) {
    Gram<A, 3> G; gram<A, 2, 3, L>(rows, k.D, G);
    const Vec<A, 3> X = unit<A, 3>(0), Gv = unit<A, 3>(1);
    const Radial<A> rd = proj_radial(G.g[0][0], k.cv, k.eps);
    const Vec<A, 3> dX = radial_vjp(rd, Gv, G.g[0][1], X);
    emit<A, 2, 3, L == 0>(rows, dX, vzero<A, 3>(), k.D, gout[0]);
    return G.dot(dX, X) - rd.fn * G.g[0][1];
  }
};

// exp_0 (+ projection) and log_0: radial maps of one input.
template <bool Log> struct Radial0Op {
  static constexpr int Kf = 1, Kb = 2;
  static constexpr bool ScalarOut = false;
  template <class A> static FASTNORM_HD_INLINE Radial<A> rad(A n2, const Ctx<A>& k) {
    return Log ? logmap0_radial(n2, k.cv) : expmap0_radial(n2, k.cv, k.eps, k.proj);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W& out, A*) {
    Gram<A, 2> G; gram<A, 1, 2, L>(in, k.D, G);
    emit<A, 1, 2, L == 0>(in, unit<A, 2>(0, rad(G.g[0][0], k).fn), vzero<A, 2>(), k.D, out);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A, const W* gout, A*) {
    Gram<A, 3> G; gram<A, 2, 3, L>(rows, k.D, G);
    const Vec<A, 3> X = unit<A, 3>(0), Gv = unit<A, 3>(1);
    const Radial<A> rd = rad(G.g[0][0], k);
    const Vec<A, 3> dX = radial_vjp(rd, Gv, G.g[0][1], X);
    emit<A, 2, 3, L == 0>(rows, dX, vzero<A, 3>(), k.D, gout[0]);
    return G.dot(dX, X) - rd.fn * G.g[0][1];
  }
};
using Expmap0Op = Radial0Op<false>;
using Logmap0Op = Radial0Op<true>;

struct ScalarMulOp {
  static constexpr int Kf = 1, Kb = 2;
  static constexpr bool ScalarOut = false;
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A r, const W& out, A*) {
    Gram<A, 2> G; gram<A, 1, 2, L>(in, k.D, G);
    const ScalarMulRadial<A> sm = scalar_mul_radial(r, G.g[0][0], k.cv);
    const Radial<A> pr = maybe_proj(sm.rad.fn * sm.rad.fn * G.g[0][0], k);
    emit<A, 1, 2, L == 0>(in, unit<A, 2>(0, pr.fn * sm.rad.fn), vzero<A, 2>(), k.D, out);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A r, A, const W* gout, A* gr) {
    Gram<A, 3> G; gram<A, 2, 3, L>(rows, k.D, G);
    const Vec<A, 3> X = unit<A, 3>(0), Gv = unit<A, 3>(1);
    const ScalarMulRadial<A> sm = scalar_mul_radial(r, G.g[0][0], k.cv);
    const Vec<A, 3> Y = sm.rad.fn * X;
    const Radial<A> pr = maybe_proj(G.dot(Y, Y), k);
    const Vec<A, 3> dY = radial_vjp(pr, Gv, G.dot(Gv, Y), Y);
    const A dYx = G.dot(dY, X);
    const Vec<A, 3> dX = radial_vjp(sm.rad, dY, dYx, X);
    emit<A, 2, 3, L == 0>(rows, dX, vzero<A, 3>(), k.D, gout[0]);
    *gr = dYx * sm.dr_coef;
    return G.dot(dX, X) - pr.fn * G.dot(Gv, Y);
  }
};

struct MobiusAddOp {
  static constexpr int Kf = 2, Kb = 3;
  static constexpr bool ScalarOut = false;
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W& out, A*) {
    Gram<A, 3> G; gram<A, 2, 3, L>(in, k.D, G);
    const Mobius<A, 3> m = mobius(unit<A, 3>(0), unit<A, 3>(1), G, k.cv);
    zgram<A, 2, 3, L>(in, m.z, k.D, G);
    const Radial<A> pr = maybe_proj(G.g[2][2], k);
    emit<A, 2, 3, L == 0>(in, unit<A, 3>(2, pr.fn), m.z, k.D, out);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A, const W* gout, A*) {
    Gram<A, 4> G; gram<A, 3, 4, L>(rows, k.D, G);
    const Vec<A, 4> X = unit<A, 4>(0), Y = unit<A, 4>(1), Gv = unit<A, 4>(2), Z = unit<A, 4>(3);
    const Mobius<A, 4> m = mobius(X, Y, G, k.cv);
    zgram<A, 3, 4, L>(rows, m.z, k.D, G);
    const Radial<A> pr = maybe_proj(G.g[3][3], k);
    const Vec<A, 4> dZ = radial_vjp(pr, Gv, G.g[2][3], Z);
    const Pair<A, 4> d = mobius_vjp(m, X, Y, dZ, G.dot(dZ, X), G.dot(dZ, Y), G.dot(dZ, Z), k.cv);
    emit<A, 3, 4, L == 0>(rows, d.a, m.z, k.D, gout[0]);
    emit<A, 3, 4, L == 0>(rows, d.b, m.z, k.D, gout[1]);
    return G.dot(d.a, X) + G.dot(d.b, Y) - pr.fn * G.g[2][3];
  }
};

// dist(x, y) = 2 artanh(sqrt(c)|(-x) (+) y|)/sqrt(c); one scalar per vector.
struct DistOp {
  static constexpr int Kf = 2, Kb = 2;
  static constexpr bool ScalarOut = true;
  template <class A> struct S {
    Gram<A, 3> G;
    Mobius<A, 3> m;
    A nz, s, d;
  };
  template <class A, int L, class R>
  static FASTNORM_HD_INLINE void setup(const Ctx<A>& k, const R* in, S<A>& st) {
    gram<A, 2, 3, L>(in, k.D, st.G);
    st.m = mobius(unit<A, 3>(0, A(-1)), unit<A, 3>(1), st.G, k.cv);
    zgram<A, 2, 3, L>(in, st.m.z, k.D, st.G);
    st.nz = m_sqrt(st.G.g[2][2]);
    st.s = k.cv.sc * st.nz;
    st.d = A(2) * m_atanh(m_min(st.s, A(kArtanhMax))) / k.cv.sc;
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W&, A* out) {
    S<A> st; setup<A, L>(k, in, st);
    *out = st.d;
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A g, const W* gout, A*) {
    S<A> st; setup<A, L>(k, rows, st);
    const Vec<A, 3> X = unit<A, 3>(0, A(-1)), Y = unit<A, 3>(1), Z = unit<A, 3>(2);
    // dd/dz = 2/(1 - c|z|^2) z_hat; 0 at z = 0 (x = y, by convention) and where the artanh clamp is active.
    const A beta = (st.nz >= A(kNu) && st.s < A(kArtanhMax)) ? g * A(2) / ((A(1) - st.s * st.s) * st.nz) : A(0);
    const Vec<A, 3> dZ = unit<A, 3>(2, beta);
    const Pair<A, 3> d = mobius_vjp(st.m, X, Y, dZ, G_dot(st.G, dZ, X), G_dot(st.G, dZ, Y), G_dot(st.G, dZ, Z), k.cv);
    const Vec<A, 3> dx = A(-1) * d.a;
    emit<A, 2, 3, L == 0>(rows, dx, st.m.z, k.D, gout[0]);
    emit<A, 2, 3, L == 0>(rows, d.b, st.m.z, k.D, gout[1]);
    return st.G.dot(dx, unit<A, 3>(0)) + st.G.dot(d.b, Y) - g * st.d;
  }
  template <class A, int N>
  static FASTNORM_HD_INLINE A G_dot(const Gram<A, N>& G, const Vec<A, N>& u, const Vec<A, N>& v) { return G.dot(u, v); }
};

struct ExpmapOp {
  static constexpr int Kf = 2, Kb = 3;
  static constexpr bool ScalarOut = false;
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W& out, A*) {
    Gram<A, 3> G; gram<A, 2, 3, L>(in, k.D, G);
    const Lambda<A> lam = conformal(G.g[0][0], k.cv);
    const ExpmapRadial<A> er = expmap_radial(G.g[1][1], lam.lam, k.cv);
    const Mobius<A, 3> m = mobius(unit<A, 3>(0), unit<A, 3>(1, er.rad.fn), G, k.cv);
    zgram<A, 2, 3, L>(in, m.z, k.D, G);
    const Radial<A> pr = maybe_proj(G.g[2][2], k);
    emit<A, 2, 3, L == 0>(in, unit<A, 3>(2, pr.fn), m.z, k.D, out);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A, const W* gout, A*) {
    Gram<A, 4> G; gram<A, 3, 4, L>(rows, k.D, G);
    const Vec<A, 4> X = unit<A, 4>(0), V = unit<A, 4>(1), Gv = unit<A, 4>(2), Z = unit<A, 4>(3);
    const Lambda<A> lam = conformal(G.g[0][0], k.cv);
    const ExpmapRadial<A> er = expmap_radial(G.g[1][1], lam.lam, k.cv);
    const Vec<A, 4> H = er.rad.fn * V;
    const Mobius<A, 4> m = mobius(X, H, G, k.cv);
    zgram<A, 3, 4, L>(rows, m.z, k.D, G);
    const Radial<A> pr = maybe_proj(G.g[3][3], k);
    const Vec<A, 4> dZ = radial_vjp(pr, Gv, G.g[2][3], Z);
    const Pair<A, 4> d = mobius_vjp(m, X, H, dZ, G.dot(dZ, X), G.dot(dZ, H), G.dot(dZ, Z), k.cv);
    const A dhv = G.dot(d.b, V);
    const Vec<A, 4> dv = radial_vjp(er.rad, d.b, dhv, V);
    const Vec<A, 4> dx = d.a + (dhv * er.dlam_coef * lam.kx) * X;
    emit<A, 3, 4, L == 0>(rows, dx, m.z, k.D, gout[0]);
    emit<A, 3, 4, L == 0>(rows, dv, m.z, k.D, gout[1]);
    return G.dot(dx, X) + G.dot(dv, V) - pr.fn * G.g[2][3];
  }
};

struct LogmapOp {
  static constexpr int Kf = 2, Kb = 3;
  static constexpr bool ScalarOut = false;
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W& out, A*) {
    Gram<A, 3> G; gram<A, 2, 3, L>(in, k.D, G);
    const Mobius<A, 3> m = mobius(unit<A, 3>(0, A(-1)), unit<A, 3>(1), G, k.cv);
    zgram<A, 2, 3, L>(in, m.z, k.D, G);
    const Radial<A> lr = logmap0_radial(G.g[2][2], k.cv);
    const A mf = m_max(A(1) - k.cv.c * G.g[0][0], A(kDenFloor));
    emit<A, 2, 3, L == 0>(in, unit<A, 3>(2, mf * lr.fn), m.z, k.D, out);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A, const W* gout, A*) {
    Gram<A, 4> G; gram<A, 3, 4, L>(rows, k.D, G);
    const Vec<A, 4> X = unit<A, 4>(0, A(-1)), Y = unit<A, 4>(1), Gv = unit<A, 4>(2), Z = unit<A, 4>(3);
    const Mobius<A, 4> m = mobius(X, Y, G, k.cv);
    zgram<A, 3, 4, L>(rows, m.z, k.D, G);
    const Radial<A> lr = logmap0_radial(G.g[3][3], k.cv);
    const A om = A(1) - k.cv.c * G.g[0][0];
    const A mf = m_max(om, A(kDenFloor));
    const A gz = G.g[2][3];
    const Vec<A, 4> dZ = mf * radial_vjp(lr, Gv, gz, Z);
    const A dm = om > A(kDenFloor) ? lr.fn * gz : A(0);
    const Pair<A, 4> d = mobius_vjp(m, X, Y, dZ, G.dot(dZ, X), G.dot(dZ, Y), G.dot(dZ, Z), k.cv);
    const Vec<A, 4> dx = A(-1) * d.a + (A(-2) * k.cv.c * dm) * unit<A, 4>(0);
    emit<A, 3, 4, L == 0>(rows, dx, m.z, k.D, gout[0]);
    emit<A, 3, 4, L == 0>(rows, d.b, m.z, k.D, gout[1]);
    return G.dot(dx, unit<A, 4>(0)) + G.dot(d.b, Y) - mf * lr.fn * gz;
  }
};

struct ConformalOp {
  static constexpr int Kf = 1, Kb = 1;
  static constexpr bool ScalarOut = true;
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W&, A* out) {
    Gram<A, 2> G; gram<A, 1, 2, L>(in, k.D, G);
    *out = conformal(G.g[0][0], k.cv).lam;
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A g, const W* gout, A*) {
    Gram<A, 2> G; gram<A, 1, 2, L>(rows, k.D, G);
    const Lambda<A> lam = conformal(G.g[0][0], k.cv);
    emit<A, 1, 2, L == 0>(rows, unit<A, 2>(0, g * lam.kx), vzero<A, 2>(), k.D, gout[0]);
    return g * lam.kx * G.g[0][0];  // alpha = 0: lambda is scale-free
  }
};

struct GyrationOp {
  static constexpr int Kf = 3, Kb = 4;
  static constexpr bool ScalarOut = false;
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W& out, A*) {
    Gram<A, 4> G; gram<A, 3, 4, L>(in, k.D, G);
    const Gyr<A, 4> y = gyration(unit<A, 4>(0), unit<A, 4>(1), unit<A, 4>(2), G, k.cv);
    emit<A, 3, 4, L == 0>(in, y.out, vzero<A, 4>(), k.D, out);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A, const W* gout, A*) {
    Gram<A, 5> G; gram<A, 4, 5, L>(rows, k.D, G);
    const Vec<A, 5> U = unit<A, 5>(0), V = unit<A, 5>(1), W_ = unit<A, 5>(2), Gv = unit<A, 5>(3);
    const Gyr<A, 5> y = gyration(U, V, W_, G, k.cv);
    const Triple<A, 5> d = gyration_vjp(y, U, V, W_, Gv, G, k.cv);
    emit<A, 4, 5, L == 0>(rows, d.u, vzero<A, 5>(), k.D, gout[0]);
    emit<A, 4, 5, L == 0>(rows, d.v, vzero<A, 5>(), k.D, gout[1]);
    emit<A, 4, 5, L == 0>(rows, d.w, vzero<A, 5>(), k.D, gout[2]);
    return G.dot(d.u, U) + G.dot(d.v, V) + G.dot(d.w, W_) - G.dot(Gv, y.out);
  }
};

// transp(x, y, v) = gyr[y, -x] v * rho, rho = lambda_x/lambda_y = max(1-c|y|^2, fl)/max(1-c|x|^2, fl).
struct TranspOp {
  static constexpr int Kf = 3, Kb = 4;
  static constexpr bool ScalarOut = false;
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W& out, A*) {
    Gram<A, 4> G; gram<A, 3, 4, L>(in, k.D, G);
    const Gyr<A, 4> y = gyration(unit<A, 4>(1), unit<A, 4>(0, A(-1)), unit<A, 4>(2), G, k.cv);
    const A rho = m_max(A(1) - k.cv.c * G.g[1][1], A(kDenFloor)) / m_max(A(1) - k.cv.c * G.g[0][0], A(kDenFloor));
    emit<A, 3, 4, L == 0>(in, rho * y.out, vzero<A, 4>(), k.D, out);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A, const W* gout, A*) {
    Gram<A, 5> G; gram<A, 4, 5, L>(rows, k.D, G);
    const Vec<A, 5> X = unit<A, 5>(0), Y = unit<A, 5>(1), V = unit<A, 5>(2), Gv = unit<A, 5>(3);
    const Gyr<A, 5> y = gyration(Y, A(-1) * X, V, G, k.cv);
    const A lx = A(1) - k.cv.c * G.g[0][0], ly = A(1) - k.cv.c * G.g[1][1];
    const A dx_ = m_max(lx, A(kDenFloor)), dy_ = m_max(ly, A(kDenFloor));
    const A rho = dy_ / dx_, lamx = A(2) / dx_;
    const Triple<A, 5> d = gyration_vjp(y, Y, A(-1) * X, V, rho * Gv, G, k.cv);
    const A gG = G.dot(Gv, y.out);
    const Vec<A, 5> dx = A(-1) * d.v + (lx > A(kDenFloor) ? gG * rho * k.cv.c * lamx : A(0)) * X;
    const Vec<A, 5> dy = d.u + (ly > A(kDenFloor) ? -gG * k.cv.c * lamx : A(0)) * Y;
    emit<A, 4, 5, L == 0>(rows, dx, vzero<A, 5>(), k.D, gout[0]);
    emit<A, 4, 5, L == 0>(rows, dy, vzero<A, 5>(), k.D, gout[1]);
    emit<A, 4, 5, L == 0>(rows, d.w, vzero<A, 5>(), k.D, gout[2]);
    return G.dot(dx, X) + G.dot(dy, Y) + G.dot(d.w, V) - rho * gG;
  }
};

// residual(a, b) = log_0(proj(proj(exp_0(a)) (+) proj(exp_0(b)))) on tangent vectors (§3.9).
struct ResidualOp {
  static constexpr int Kf = 2, Kb = 3;
  static constexpr bool ScalarOut = false;
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE void fwd(const Ctx<A>& k, const R* in, A, const W& out, A*) {
    Gram<A, 3> G; gram<A, 2, 3, L>(in, k.D, G);
    const Radial<A> ra = expmap0_radial(G.g[0][0], k.cv, k.eps, true);
    const Radial<A> rb = expmap0_radial(G.g[1][1], k.cv, k.eps, true);
    const Mobius<A, 3> m = mobius(unit<A, 3>(0, ra.fn), unit<A, 3>(1, rb.fn), G, k.cv);
    zgram<A, 2, 3, L>(in, m.z, k.D, G);
    const Radial<A> pz = proj_radial(G.g[2][2], k.cv, k.eps);
    const Radial<A> lr = logmap0_radial(pz.fn * pz.fn * G.g[2][2], k.cv);
    emit<A, 2, 3, L == 0>(in, unit<A, 3>(2, lr.fn * pz.fn), m.z, k.D, out);
  }
  template <class A, int L, class R, class W>
  static FASTNORM_HD_INLINE A bwd(const Ctx<A>& k, const R* rows, A, A, const W* gout, A*) {
    Gram<A, 4> G; gram<A, 3, 4, L>(rows, k.D, G);
    const Vec<A, 4> Ea = unit<A, 4>(0), Eb = unit<A, 4>(1), Gv = unit<A, 4>(2), Z = unit<A, 4>(3);
    const Radial<A> ra = expmap0_radial(G.g[0][0], k.cv, k.eps, true);
    const Radial<A> rb = expmap0_radial(G.g[1][1], k.cv, k.eps, true);
    const Vec<A, 4> X = ra.fn * Ea, Y = rb.fn * Eb;
    const Mobius<A, 4> m = mobius(X, Y, G, k.cv);
    zgram<A, 3, 4, L>(rows, m.z, k.D, G);
    const Radial<A> pz = proj_radial(G.g[3][3], k.cv, k.eps);
    const Radial<A> lr = logmap0_radial(pz.fn * pz.fn * G.g[3][3], k.cv);
    const A gz = G.g[2][3];
    const Vec<A, 4> dZp = radial_vjp(lr, Gv, pz.fn * gz, pz.fn * Z);
    const Vec<A, 4> dZ = radial_vjp(pz, dZp, G.dot(dZp, Z), Z);
    const Pair<A, 4> d = mobius_vjp(m, X, Y, dZ, G.dot(dZ, X), G.dot(dZ, Y), G.dot(dZ, Z), k.cv);
    const Vec<A, 4> da = radial_vjp(ra, d.a, G.dot(d.a, Ea), Ea);
    const Vec<A, 4> db = radial_vjp(rb, d.b, G.dot(d.b, Eb), Eb);
    emit<A, 3, 4, L == 0>(rows, da, m.z, k.D, gout[0]);
    emit<A, 3, 4, L == 0>(rows, db, m.z, k.D, gout[1]);
    return G.dot(da, Ea) + G.dot(db, Eb) - lr.fn * pz.fn * gz;
  }
};

// ---------------------------------------------------------------- weighted gyromidpoint (§3.4)
// Per point: lambda_i and dlambda/dx = kx x. Per output: V = sum w lambda x, Q = sum w (lambda - 1);
// t = V/Qc (Qc: sign-preserving |Q| >= 1e-10), sigma = sqrt(max(1 - c|t|^2, 0)), m = t/(1 + sigma), project.
// m = kappa * V. Backward: dV = ag * g + aV * V and dQ (scalars), then per point
//   dx_i = w_i [lambda_i dV + (<dV, x_i> + dQ) kx_i x_i],  dw_i = lambda_i <dV, x_i> + dQ (lambda_i - 1).
template <class A> struct MidFinal {
  A kappa;         // m = kappa * V
  A ag, aV, dQ;    // backward coefficients (set by midpoint_bwd_coefs)
};
template <class A> struct MidState {
  A Qc, sigma, mm2;
  bool qclamp, sclamp;
  Radial<A> pr;
};
template <class A>
FASTNORM_HD_INLINE MidState<A> midpoint_state(A VV, A Q, const Curv<A>& cv, A eps, bool proj) {
  MidState<A> s;
  s.qclamp = !(Q >= A(kQFloor) || Q <= A(-kQFloor));
  s.Qc = Q >= A(0) ? m_max(Q, A(kQFloor)) : m_min(Q, A(-kQFloor));
  const A tt = VV / (s.Qc * s.Qc);
  const A arg = A(1) - cv.c * tt;
  s.sclamp = !(arg > A(0));
  s.sigma = m_sqrt(m_max(arg, A(0)));
  s.mm2 = tt / ((A(1) + s.sigma) * (A(1) + s.sigma));
  s.pr = proj ? proj_radial(s.mm2, cv, eps) : Radial<A>{A(1), A(0)};
  return s;
}
template <class A> FASTNORM_HD_INLINE A midpoint_kappa(const MidState<A>& s) {
  return s.pr.fn / (s.Qc * (A(1) + s.sigma));
}
// gV = <g, V>, VV = |V|^2.
template <class A>
FASTNORM_HD_INLINE MidFinal<A> midpoint_bwd_coefs(const MidState<A>& s, A gV, A VV, const Curv<A>& cv) {
  MidFinal<A> f;
  const A mu = A(1) / (s.Qc * (A(1) + s.sigma));  // m_pre = mu V
  f.kappa = s.pr.fn * mu;
  // dm = pr.fn g + pr.k1 <g, m_pre> m_pre  =  bg g + bV V
  const A bg = s.pr.fn, bV = s.pr.k1 * mu * mu * gV;
  // <dm, t> with t = V/Qc
  const A dmt = (bg * gV + bV * VV) / s.Qc;
  const A op = A(1) + s.sigma;
  // dt = dm/(1+sigma) + c <dm, t> t/(sigma (1+sigma)^2); the second term vanishes where sigma is clamped at 0.
  const A tcoef = (s.sclamp || !(s.sigma > A(0))) ? A(0) : cv.c * dmt / (s.sigma * op * op * s.Qc);
  const A tg = bg / op, tV = bV / op + tcoef;  // dt = tg g + tV V
  f.ag = tg / s.Qc;
  f.aV = tV / s.Qc;
  const A dtt = (tg * gV + tV * VV) / s.Qc;  // <dt, t>
  f.dQ = s.qclamp ? A(0) : -dtt / s.Qc;
  return f;
}

}  // namespace detail
}  // namespace poincare
}  // namespace fastnorm

// FASTNORM_HD math of the Poincaré layers (specs/poincare.md §3.5, §3.7, §3.8): the HNN++ FC epilogue
// (forward and VJP, overflow-free scaled-sinh form, conformal factor fixed), the exp0 prologue factors
// of a tangent input, and the midpoint-BN row maps. Shared by the CPU kernels, the CUDA kernels and the
// C++ tests, so g++ tests the formulas the GPU runs. All functions work on one row (one FC input row or
// one conv output pixel) whose m features sit at stride `st` in a compute-type buffer.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastnorm/common.h"
#include "fastnorm/detail/poincare_math.h"

namespace fastnorm {
namespace poincare {
namespace layers {

#if defined(__CUDA_ARCH__)
#define FN_PL_SQRT(x) sqrt(x)
#else
#define FN_PL_SQRT(x) std::sqrt(x)
#endif

// Constants of §4 for an I/O dtype (computation runs in A = float, or double for float64).
template <class A>
struct Consts {
  A c = 1, sqrt_c = 1;
  A eps = A(4e-3);          // projection ε: radius (1-ε)/√c
  A one_m_delta = A(1) - A(1e-7);  // artanh argument clamp
  A s_small = A(1e-3);      // series threshold on s = √c·n
  static constexpr double kNu = 1e-15;    // norm floor ν and denominator floor
  static constexpr double kTanhClamp = 15.0;
};

FASTNORM_HD_INLINE double default_eps(DType t) {
  switch (t) {
    case DType::Float64: return 1e-5;
    case DType::BFloat16: return 1e-2;
    default: return 4e-3;
  }
}
FASTNORM_HD_INLINE double default_s_small(DType t) { return t == DType::Float64 ? 1e-6 : 1e-3; }

template <class A>
FASTNORM_HD_INLINE Consts<A> make_consts(A c, DType io) {
  Consts<A> k;
  k.c = c;
  k.sqrt_c = FN_PL_SQRT(c);
  k.eps = A(default_eps(io));
  k.s_small = A(default_s_small(io));
  return k;
}

// ---- radial maps (§3.1): poincare_math.h's exp0/log0 radial factors (fn = f/n, k1 = (f' − f/n)/n²) ----
template <class A>
FASTNORM_HD_INLINE detail::Radial<A> exp0_factors(A n, const Consts<A>& k) {
  return detail::expmap0_radial(n * n, detail::Curv<A>{k.c, k.sqrt_c}, k.eps, true);
}
template <class A>
FASTNORM_HD_INLINE detail::Radial<A> log0_factors(A n, const Consts<A>& k) {
  return detail::logmap0_radial(n * n, detail::Curv<A>{k.c, k.sqrt_c});
}

// ---- FC epilogue (§3.5) --------------------------------------------------------------------------------
// Per output feature k: zeta = max(‖z_k‖, ν), ch/sh = cosh/sinh(2√c r_k).
template <class A>
struct FcCol { A zeta, ch, sh; };

template <class A>
FASTNORM_HD_INLINE FcCol<A> fc_col(A znorm, A r, const Consts<A>& k) {
  FcCol<A> o;
  o.zeta = znorm > A(Consts<A>::kNu) ? znorm : A(Consts<A>::kNu);
  o.ch = cosh(A(2) * k.sqrt_c * r);
  o.sh = sinh(A(2) * k.sqrt_c * r);
  return o;
}

template <class A>
FASTNORM_HD_INLINE A conformal(A xsq, const Consts<A>& k) {
  const A den = A(1) - k.c * xsq;
  return A(2) / (den > A(Consts<A>::kNu) ? den : A(Consts<A>::kNu));
}
// dλ/d(‖x‖²) factor: ∂x += ∂λ·λ²·c·x unless the denominator clamp is active.
template <class A>
FASTNORM_HD_INLINE A conformal_grad_scale(A xsq, A lam, const Consts<A>& k) {
  return (A(1) - k.c * xsq) > A(Consts<A>::kNu) ? lam * lam * k.c : A(0);
}

template <class A>
FASTNORM_HD_INLINE A fc_t(A a, A lam, const FcCol<A>& col, const Consts<A>& k) {
  return lam * k.sqrt_c * a * col.ch / col.zeta - (lam - A(1)) * col.sh;
}

// The row's output scale: out_k = u_k·kappa (u the max-rescaled sinh), plus what the VJP needs.
template <class A>
struct FcRowScale {
  A e, qt;        // e = exp(-Mx), q̃ = sqrt(e² + Σu²)
  A kappa0;       // y_pre = kappa0·u
  A ny;           // ‖y_pre‖
  A pi;           // projection factor min(1, M/ny)
  A ell;          // log0 factor at ‖π·y_pre‖ (1 without tangent output)
  detail::Radial<A> lf;  // log0 radial factors (fn = ell, k1)
};

template <class A>
FASTNORM_HD_INLINE FcRowScale<A> fc_row_scale(A Mx, A sumu2, bool project, bool tangent_output,
                                               const Consts<A>& k) {
  FcRowScale<A> r;
  r.e = exp(-Mx);
  r.qt = FN_PL_SQRT(r.e * r.e + sumu2);
  r.kappa0 = A(1) / (k.sqrt_c * (r.e + r.qt));
  r.ny = FN_PL_SQRT(sumu2) * r.kappa0;
  const A M = (A(1) - k.eps) / k.sqrt_c;
  r.pi = (project && r.ny > M) ? M / r.ny : A(1);
  r.ell = A(1);
  r.lf.fn = A(1);
  r.lf.k1 = A(0);
  if (tangent_output) {
    r.lf = log0_factors(r.pi * r.ny, k);
    r.ell = r.lf.fn;
  }
  return r;
}

// Forward of one row in place: buf[k·st] holds a_k on entry and out_k on exit.
template <class A>
FASTNORM_HD_INLINE void fc_row_forward(A* buf, int64_t st, int64_t m, A xsq, const FcCol<A>* cols,
                                       bool project, bool tangent_output, const Consts<A>& k) {
  const A lam = conformal(xsq, k);
  A Mx = A(0);
  for (int64_t j = 0; j < m; ++j) {
    const A t = fc_t(buf[j * st], lam, cols[j], k);
    const A s = A(2) * cols[j].zeta * asinh(t);
    buf[j * st] = s;
    const A as = s < A(0) ? -s : s;
    Mx = as > Mx ? as : Mx;
    if (s != s) Mx = s;  // NaN reaches the whole row
  }
  A sumu2 = A(0);
  for (int64_t j = 0; j < m; ++j) {
    const A s = buf[j * st];
    const A u = (exp(s - Mx) - exp(-s - Mx)) / A(2);
    buf[j * st] = u;
    sumu2 += u * u;
  }
  const FcRowScale<A> r = fc_row_scale(Mx, sumu2, project, tangent_output, k);
  const A scale = r.kappa0 * r.pi * r.ell;
  for (int64_t j = 0; j < m; ++j) buf[j * st] *= scale;
}

// What one row's VJP returns besides ∂a (written in place of a).
template <class A>
struct FcRowGrad {
  A dlam;    // ∂λ
  A sum_da_a;  // Σ_k ∂a_k·a_k
  A g_out;   // ⟨g, out⟩
};

// VJP of one row. buf[k·st] holds a_k on entry and ∂a_k on exit; sbuf is a scratch row of the same layout.
// g is the upstream grad (type G, stride gst). dzeta/dr (may be null) accumulate Σ ∂ζ_k and Σ ∂r_k.
template <class A, class LoadG>
FASTNORM_HD_INLINE FcRowGrad<A> fc_row_backward(A* buf, A* sbuf, int64_t st, int64_t m, A xsq, LoadG g,
                                                const FcCol<A>* cols, bool project, bool tangent_output,
                                                A* dzeta, A* dr, const Consts<A>& k) {
  const A lam = conformal(xsq, k);
  A Mx = A(0);
  for (int64_t j = 0; j < m; ++j) {
    const A t = fc_t(buf[j * st], lam, cols[j], k);
    const A s = A(2) * cols[j].zeta * asinh(t);
    sbuf[j * st] = s;
    const A as = s < A(0) ? -s : s;
    Mx = as > Mx ? as : Mx;
    if (s != s) Mx = s;
  }
  A sumu2 = A(0), gu = A(0);
  for (int64_t j = 0; j < m; ++j) {
    const A s = sbuf[j * st];
    const A u = (exp(s - Mx) - exp(-s - Mx)) / A(2);
    sbuf[j * st] = u;
    sumu2 += u * u;
    gu += g(j) * u;
  }
  const FcRowScale<A> r = fc_row_scale(Mx, sumu2, project, tangent_output, k);
  // Radial VJPs of log0 and the projection: ∂y_pre = Ag·g + By·y_pre (y_pre = kappa0·u).
  const A gy = gu * r.kappa0;  // ⟨g, y_pre⟩
  A Ag = A(1), By = A(0);
  if (tangent_output) {
    // g_yp = ell·g + e2·⟨g, y_p⟩·y_p with y_p = π·y_pre
    Ag = r.lf.fn;
    By = r.lf.k1 * r.pi * gy * r.pi;
  }
  if (r.pi != A(1)) {
    // g_pre = π·g_yp − π·⟨g_yp, y⟩·y/‖y‖²
    const A gyp_y = Ag * gy + By * r.ny * r.ny;
    const A c2 = r.pi * gyp_y / (r.ny * r.ny);
    Ag *= r.pi;
    By = By * r.pi - c2;
  }
  FcRowGrad<A> out;
  out.g_out = r.pi * r.ell * gy;
  // ⟨∂y, ŷ⟩ with ŷ = √c·y_pre
  const A dy_yh = k.sqrt_c * (Ag * gy + By * r.ny * r.ny);
  const A inv1 = A(1) / (k.sqrt_c * (r.e + r.qt));
  const A inv2 = dy_yh / r.qt;
  A dlam = A(0), sda = A(0);
  for (int64_t j = 0; j < m; ++j) {
    const A a = buf[j * st];
    const A u = sbuf[j * st];
    const A v = FN_PL_SQRT(u * u + r.e * r.e);  // max-rescaled cosh(s)
    const A yk = r.kappa0 * u;
    const A dyk = Ag * g(j) + By * yk;
    const A ds = dyk * v * inv1 - inv2 * yk * v;
    const FcCol<A>& cl = cols[j];
    const A t = fc_t(a, lam, cl, k);
    const A isq = A(1) / FN_PL_SQRT(A(1) + t * t);
    const A da = ds * A(2) * lam * k.sqrt_c * cl.ch * isq;
    const A dt = ds * A(2) * cl.zeta * isq;
    dlam += dt * (k.sqrt_c * a * cl.ch / cl.zeta - cl.sh);
    if (dzeta) dzeta[j] += ds * A(2) * asinh(t) - dt * lam * k.sqrt_c * a * cl.ch / (cl.zeta * cl.zeta);
    if (dr) dr[j] += dt * A(2) * k.sqrt_c * (lam * k.sqrt_c * a * cl.sh / cl.zeta - (lam - A(1)) * cl.ch);
    sda += da * a;
    buf[j * st] = da;
  }
  out.dlam = dlam;
  out.sum_da_a = sda;
  return out;
}


// ---- midpoint batch norm rows (§3.8) ---------------------------------------------------------------------
// One BN row works in poincare_math.h's coefficient space over the basis rows u (the tangent input), m (the
// mean point), μ (= proj(exp0(β))), and in the backward g (the upstream grad) and ∂V (the midpoint's ∂V):
// every intermediate (x, z, ⊗, gyration, ⊕, projection, log0) is a combination of them, so a row costs
// one Gram pass over C plus scalar algebra, and one pass writing its output.
enum BNSlot { kBU = 0, kBM = 1, kBMu = 2, kBG = 3, kBDV = 4 };

template <class A, int N>
struct BNRow {
  detail::Radial<A> re;     // exp0 (+proj) at u: x = re.fn·u
  detail::Vec<A, N> X, Mneg, Mu;
  detail::Lambda<A> lam;    // λ_x
  detail::Mobius<A, N> mz;  // z = (−m) ⊕ x
  A zz, d;                  // ‖z‖², d(m, x)
  detail::ScalarMulRadial<A> sm;
  detail::Vec<A, N> v;      // sc ⊗ z
  detail::Gyr<A, N> gy;     // gyr[μ, −m] v
  detail::Mobius<A, N> my;  // y0 = μ ⊕ w
  A y0y0;
  detail::Radial<A> rp, rl;  // projection at y0, log0 at y
  detail::Vec<A, N> y, out;
};

template <class A, int N>
FASTNORM_HD_INLINE A bn_dist(A zz, const detail::Curv<A>& cv) {
  const A s = cv.sc * detail::m_sqrt(zz);
  return A(2) * detail::m_atanh(detail::m_min(s, A(detail::kArtanhMax))) / cv.sc;
}

// The statistics-free part: x, λ_x, z and d (what the training passes 1 and 2 need).
template <class A, int N>
FASTNORM_HD_INLINE void bn_row_point(BNRow<A, N>& r, const detail::Gram<A, N>& G, const detail::Curv<A>& cv, A eps) {
  using detail::unit;
  r.re = detail::expmap0_radial(G.g[kBU][kBU], cv, eps, true);
  r.X = unit<A, N>(kBU, r.re.fn);
  r.Mneg = unit<A, N>(kBM, A(-1));
  r.Mu = unit<A, N>(kBMu);
  r.lam = detail::conformal(r.re.fn * r.re.fn * G.g[kBU][kBU], cv);
  r.mz = detail::mobius(r.Mneg, r.X, G, cv);
  r.zz = detail::m_max(G.dot(r.mz.z, r.mz.z), A(0));
  r.d = bn_dist<A, N>(r.zz, cv);
}

// The rest of the forward: out = log0(proj(μ ⊕ gyr[μ, −m](sc ⊗ z))).
template <class A, int N>
FASTNORM_HD_INLINE void bn_row_out(BNRow<A, N>& r, const detail::Gram<A, N>& G, A sc, const detail::Curv<A>& cv,
                                   A eps) {
  r.sm = detail::scalar_mul_radial(sc, r.zz, cv);
  r.v = r.sm.rad.fn * r.mz.z;
  r.gy = detail::gyration(r.Mu, r.Mneg, r.v, G, cv);
  r.my = detail::mobius(r.Mu, r.gy.out, G, cv);
  r.y0y0 = detail::m_max(G.dot(r.my.z, r.my.z), A(0));
  r.rp = detail::proj_radial(r.y0y0, cv, eps);
  r.y = r.rp.fn * r.my.z;
  r.rl = detail::logmap0_radial(r.rp.fn * r.rp.fn * r.y0y0, cv);
  r.out = r.rl.fn * r.y;
}

// VJP of one row for upstream g (slot kBG). dX/dM/dMu: direct grads (coefficients) of x, m, μ; dXd/dMd: the
// grads through d (for a unit ∂d, training only); dsc: ∂sc of this row; g_out = ⟨g, out⟩.
template <class A, int N>
struct BNRowGrad {
  detail::Vec<A, N> dX, dM, dMu, dXd, dMd;
  A dsc, g_out;
};

template <class A, int N>
FASTNORM_HD_INLINE BNRowGrad<A, N> bn_row_backward(const BNRow<A, N>& r, const detail::Gram<A, N>& G,
                                                   bool with_dist, const detail::Curv<A>& cv) {
  using detail::unit;
  BNRowGrad<A, N> o;
  const detail::Vec<A, N> gv = unit<A, N>(kBG);
  o.g_out = G.dot(gv, r.out);
  const detail::Vec<A, N> dy = detail::radial_vjp(r.rl, gv, G.dot(gv, r.y), r.y);
  const detail::Vec<A, N> dy0 = detail::radial_vjp(r.rp, dy, G.dot(dy, r.my.z), r.my.z);
  const detail::Vec<A, N>& w = r.gy.out;
  const auto pr = detail::mobius_vjp(r.my, r.Mu, w, dy0, G.dot(dy0, r.Mu), G.dot(dy0, w), G.dot(dy0, r.my.z), cv);
  const auto tr = detail::gyration_vjp(r.gy, r.Mu, r.Mneg, r.v, pr.b, G, cv);
  o.dMu = pr.a + tr.u;
  const detail::Vec<A, N>& z = r.mz.z;
  const A dvz = G.dot(tr.w, z);
  o.dsc = dvz * r.sm.dr_coef;
  const detail::Vec<A, N> dz = detail::radial_vjp(r.sm.rad, tr.w, dvz, z);
  const auto pz = detail::mobius_vjp(r.mz, r.Mneg, r.X, dz, G.dot(dz, r.Mneg), G.dot(dz, r.X), G.dot(dz, z), cv);
  o.dM = A(-1) * (tr.v + pz.a);
  o.dX = pz.b;
  o.dXd = detail::vzero<A, N>();
  o.dMd = detail::vzero<A, N>();
  if (with_dist) {
    const A nz = detail::m_sqrt(r.zz);
    const A s = cv.sc * nz;
    if (nz >= A(detail::kNu) && s < A(detail::kArtanhMax)) {
      // ∂d/∂z = 2/(1 − c‖z‖²)·ẑ
      const detail::Vec<A, N> dzd = (A(2) / ((A(1) - s * s) * nz)) * z;
      const auto pd = detail::mobius_vjp(r.mz, r.Mneg, r.X, dzd, G.dot(dzd, r.Mneg), G.dot(dzd, r.X),
                                         G.dot(dzd, z), cv);
      o.dMd = A(-1) * pd.a;
      o.dXd = pd.b;
    }
  }
  return o;
}

#undef FN_PL_SQRT

}  // namespace layers
}  // namespace poincare
}  // namespace fastnorm

// CPU kernels of EvoNorm B0 / S0 (specs/norm.md §3.9), NCHW and channels_last.
//
// Built twice (FASTNORM_ISA = baseline | avx2); norm_evonorm.cpp validates and picks the build.
// Plan. NCHW: a (b, c) plane (and an S0 group of planes) is contiguous, so statistics are computed per
// plane / group by one thread with a two-pass mean and M2 while the plane sits in cache. channels_last:
// one thread per sample walks its H*W rows of C and keeps per-channel accumulators (vectorised over c).
// The element pass (y or dx) then runs over planes (NCHW) or rows (NHWC). Per-channel quantities that
// span the batch (B0's batch variance, dweight/dbias/dv) are combined from per-(b, c) partials in a fixed
// order over b, so results do not depend on the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "fastnorm/detail/norm_evonorm_math.h"
#include "norm_evonorm_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

namespace fastnorm {
namespace norm {
namespace FASTNORM_ISA {
namespace {

using fastnorm::detail::bf16_to_float;
using fastnorm::detail::f16_to_float;
using fastnorm::detail::float_to_bf16;
using fastnorm::detail::float_to_f16;
using fastnorm::detail::load_as;
using fastnorm::detail::store_from;
using namespace fastnorm::norm::detail;

// sigmoid for the CPU loops. float: exp through a branch-free Cody-Waite reduction and a degree-7 Taylor
// polynomial (truncation error < 6e-9 relative on |r| <= ln2/2, below float's half-ulp), so `omp simd`
// vectorises it where a libm call would stay scalar; results are within a few ulp of std::exp's.
// double keeps std::exp (the float64 path is the golden reference, not the fast one).
inline float exp_simd(float x) {
  x = std::min(std::max(x, -87.0f), 88.0f);           // 2^n stays a normal float
  const float t = x * 1.44269504088896341f + 12582912.0f;  // + 1.5 * 2^23 rounds to an integer n
  const float n = t - 12582912.0f;
  const float r = (x - n * 0.693145751953125f) - n * 1.42860682030941723e-6f;  // ln2 split: exact n * hi
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &t, 4);
  const int32_t scale_bits = (bits - 0x4B400000 + 127) << 23;  // the integer n from t's mantissa, biased
  float scale;
  std::memcpy(&scale, &scale_bits, 4);
  return p * scale;
}
inline float cpu_sigmoid(float z) { return 1.0f / (1.0f + exp_simd(-z)); }
inline double cpu_sigmoid(double z) { return evo_sigmoid(z); }

// A [n] parameter vector of any float dtype as A values (zeros when absent).
template <typename A>
std::vector<A> load_vec(const void* src, DType t, int64_t n) {
  std::vector<A> out(static_cast<size_t>(n), A(0));
  if (src == nullptr) return out;
  for (int64_t i = 0; i < n; ++i) {
    switch (t) {
      case DType::Float32: out[i] = static_cast<A>(static_cast<const float*>(src)[i]); break;
      case DType::Float64: out[i] = static_cast<A>(static_cast<const double*>(src)[i]); break;
      case DType::BFloat16: out[i] = static_cast<A>(bf16_to_float(static_cast<const uint16_t*>(src)[i])); break;
      case DType::Float16: out[i] = static_cast<A>(f16_to_float(static_cast<const uint16_t*>(src)[i])); break;
      default: break;
    }
  }
  return out;
}

// Writes one value in dtype t, rounding to nearest even.
inline void store_one(void* dst, DType t, int64_t i, double v) {
  switch (t) {
    case DType::Float32: static_cast<float*>(dst)[i] = static_cast<float>(v); break;
    case DType::Float64: static_cast<double*>(dst)[i] = v; break;
    case DType::BFloat16: static_cast<uint16_t*>(dst)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::Float16: static_cast<uint16_t*>(dst)[i] = float_to_f16(static_cast<float>(v)); break;
    default: break;
  }
}

// Per-(b, c) mean and sum of squared deviations over H*W (two-pass).
template <typename T, typename A>
void plane_moments(const T* x, int64_t B, int64_t C, int64_t HW, bool cl, A* mean, A* m2) {
  if (!cl) {
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < B * C; ++bc) {
      const T* xp = x + bc * HW;
      A s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < HW; ++i) s += load_as<T, A>(xp[i]);
      const A m = s / static_cast<A>(HW);
      A s2 = 0;
#pragma omp simd reduction(+ : s2)
      for (int64_t i = 0; i < HW; ++i) {
        const A d = load_as<T, A>(xp[i]) - m;
        s2 += d * d;
      }
      mean[bc] = m;
      m2[bc] = s2;
    }
    return;
  }
#pragma omp parallel
  {
    std::vector<A> acc(static_cast<size_t>(C));
    A* a = acc.data();
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      const T* xb = x + b * HW * C;
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t i = 0; i < HW; ++i) {
        const T* row = xb + i * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) a[c] += load_as<T, A>(row[c]);
      }
      A* mb = mean + b * C;
      for (int64_t c = 0; c < C; ++c) mb[c] = a[c] / static_cast<A>(HW);
      std::fill(acc.begin(), acc.end(), A(0));
      for (int64_t i = 0; i < HW; ++i) {
        const T* row = xb + i * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const A d = load_as<T, A>(row[c]) - mb[c];
          a[c] += d * d;
        }
      }
      for (int64_t c = 0; c < C; ++c) m2[b * C + c] = a[c];
    }
  }
}

// ---- B0 --------------------------------------------------------------------------------------------
template <typename T, typename A>
Status b0_fwd(const EvoNormB0Params& p) {
  const int64_t B = p.batch, C = p.channels, HW = p.spatial, BC = B * C;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const auto w = load_vec<A>(p.weight, p.w_dtype, C), bias = load_vec<A>(p.bias, p.w_dtype, C),
             v = load_vec<A>(p.v, p.w_dtype, C);
  const auto rv = load_vec<double>(p.running_var, p.rv_dtype, C);
  A* lvar = static_cast<A*>(p.left_var);
  A* istd = static_cast<A*>(p.inst_std);
  std::vector<A> pmean(static_cast<size_t>(BC)), pm2(static_cast<size_t>(BC));
  plane_moments<T, A>(x, B, C, HW, p.channels_last, pmean.data(), pm2.data());
  for (int64_t i = 0; i < BC; ++i) istd[i] = evo_root(static_cast<A>(pm2[i] / static_cast<A>(HW)), p.eps);
  std::vector<A> L(static_cast<size_t>(C));
  const int64_t n = B * HW;
  for (int64_t c = 0; c < C; ++c) {
    if (p.training) {
      // Equal-count merge of the plane moments (Chan et al.): M2 = sum M2_b + HW * sum (m_b - mu)^2.
      double mu = 0;
      for (int64_t b = 0; b < B; ++b) mu += pmean[b * C + c];
      mu /= static_cast<double>(B);
      double m2 = 0, dev = 0;
      for (int64_t b = 0; b < B; ++b) {
        const double d = pmean[b * C + c] - mu;
        m2 += pm2[b * C + c];
        dev += d * d;
      }
      const double var = (m2 + static_cast<double>(HW) * dev) / static_cast<double>(n);
      lvar[c] = static_cast<A>(var);
      if (p.new_running_var != nullptr)
        store_one(p.new_running_var, p.rv_dtype, c, evo_running_var(rv[c], var, p.momentum, n, p.semantics));
    } else {
      lvar[c] = static_cast<A>(rv[c]);
    }
    L[c] = evo_root(lvar[c], p.eps);
  }
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < BC; ++bc) {
      const int64_t c = bc % C;
      const A lc = L[c], s = istd[bc], vc = v[c], wc = w[c], bc_ = bias[c];
      const T* xp = x + bc * HW;
      T* yp = y + bc * HW;
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) {
        const A xv = load_as<T, A>(xp[i]);
        yp[i] = store_from<T, A>(b0_y(xv, evo_max(lc, vc * xv + s), wc, bc_));
      }
    }
  } else {
    const A *Lp = L.data(), *vp = v.data(), *wp = w.data(), *bp = bias.data();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < B * HW; ++r) {
      const A* sp = istd + (r / HW) * C;
      const T* xp = x + r * C;
      T* yp = y + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const A xv = load_as<T, A>(xp[c]);
        yp[c] = store_from<T, A>(b0_y(xv, evo_max(Lp[c], vp[c] * xv + sp[c]), wp[c], bp[c]));
      }
    }
  }
  return Status::OK();
}

// The six per-element terms summed per (b, c) by the B0 backward.
template <typename A> struct B0Terms {
  A x, pe, qe, pex, dyxd, dy;
};
template <typename A>
inline B0Terms<A> b0_terms(A xv, A g, A lc, A s, A vc, A wc, EvoSemantics sem) {
  const A r = vc * xv + s;
  const A d = evo_max(lc, r);
  const A pp = evo_p(lc, r, sem);
  const A e = -(g * wc) * xv / (d * d);
  return {xv, pp * e, (A(1) - pp) * e, pp * e * xv, g * xv / d, g};
}

template <typename T, typename A>
Status b0_bwd(const EvoNormB0BwdParams& p) {
  const int64_t B = p.batch, C = p.channels, HW = p.spatial, BC = B * C;
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const auto w = load_vec<A>(p.weight, p.w_dtype, C), v = load_vec<A>(p.v, p.w_dtype, C);
  const A* lvar = static_cast<const A*>(p.left_var);
  const A* istd = static_cast<const A*>(p.inst_std);
  const EvoSemantics sem = p.semantics;
  A* ws = static_cast<A*>(p.workspace);
  A *sx = ws, *spe = ws + BC, *sqe = ws + 2 * BC, *spex = ws + 3 * BC, *sdyxd = ws + 4 * BC, *sdy = ws + 5 * BC;
  std::vector<A> L(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) L[c] = evo_root(lvar[c], p.eps);

  // Pass 1: per-(b, c) sums.
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < BC; ++bc) {
      const int64_t c = bc % C;
      const A lc = L[c], s = istd[bc], vc = v[c], wc = w[c];
      const T* xp = x + bc * HW;
      const T* gp = dy + bc * HW;
      A a0 = 0, a1 = 0, a2 = 0, a3 = 0, a4 = 0, a5 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3, a4, a5)
      for (int64_t i = 0; i < HW; ++i) {
        const B0Terms<A> t = b0_terms(load_as<T, A>(xp[i]), load_as<T, A>(gp[i]), lc, s, vc, wc, sem);
        a0 += t.x; a1 += t.pe; a2 += t.qe; a3 += t.pex; a4 += t.dyxd; a5 += t.dy;
      }
      sx[bc] = a0; spe[bc] = a1; sqe[bc] = a2; spex[bc] = a3; sdyxd[bc] = a4; sdy[bc] = a5;
    }
  } else {
#pragma omp parallel
    {
      std::vector<A> acc(static_cast<size_t>(6 * C));
      A *a0 = acc.data(), *a1 = a0 + C, *a2 = a1 + C, *a3 = a2 + C, *a4 = a3 + C, *a5 = a4 + C;
      const A *Lp = L.data(), *vp = v.data(), *wp = w.data();
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        std::fill(acc.begin(), acc.end(), A(0));
        const A* sp = istd + b * C;
        for (int64_t i = 0; i < HW; ++i) {
          const T* xp = x + (b * HW + i) * C;
          const T* gp = dy + (b * HW + i) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const B0Terms<A> t = b0_terms(load_as<T, A>(xp[c]), load_as<T, A>(gp[c]), Lp[c], sp[c], vp[c], wp[c], sem);
            a0[c] += t.x; a1[c] += t.pe; a2[c] += t.qe; a3[c] += t.pex; a4[c] += t.dyxd; a5[c] += t.dy;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const int64_t k = b * C + c;
          sx[k] = a0[c]; spe[k] = a1[c]; sqe[k] = a2[c]; spex[k] = a3[c]; sdyxd[k] = a4[c]; sdy[k] = a5[c];
        }
      }
    }
  }

  // Per-channel combination in a fixed order over b.
  const int64_t n = B * HW;
  std::vector<A> mu(static_cast<size_t>(C), A(0)), coef_l(static_cast<size_t>(C), A(0));
  for (int64_t c = 0; c < C; ++c) {
    A q = 0, m = 0, dv = 0, dw = 0, db = 0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t k = b * C + c;
      q += sqe[k]; m += sx[k]; dv += spex[k]; dw += sdyxd[k]; db += sdy[k];
    }
    if (p.training) {
      mu[c] = m / static_cast<A>(n);
      coef_l[c] = q / (static_cast<A>(n) * L[c]);
    }
    if (p.dweight != nullptr) store_one(p.dweight, p.w_dtype, c, dw);
    if (p.dbias != nullptr) store_one(p.dbias, p.w_dtype, c, db);
    if (p.dv != nullptr) store_one(p.dv, p.w_dtype, c, dv);
  }
  // Per-(b, c) coefficients of the S_bc term, reusing the x and p*e partials' storage.
  for (int64_t k = 0; k < BC; ++k) {
    sx[k] = sx[k] / static_cast<A>(HW);                       // m_bc
    spe[k] = spe[k] / (static_cast<A>(HW) * istd[k]);         // coef_s
  }

  // Pass 2: dx.
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < BC; ++bc) {
      const int64_t c = bc % C;
      const A lc = L[c], s = istd[bc], vc = v[c], wc = w[c], mbc = sx[bc], cs = spe[bc], muc = mu[c], cl = coef_l[c];
      const T* xp = x + bc * HW;
      const T* gp = dy + bc * HW;
      T* dp = dx + bc * HW;
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) {
        const A xv = load_as<T, A>(xp[i]);
        const A r = vc * xv + s;
        dp[i] = store_from<T, A>(
            b0_dx(load_as<T, A>(gp[i]) * wc, xv, evo_max(lc, r), evo_p(lc, r, sem), vc, mbc, cs, muc, cl));
      }
    }
  } else {
    const A *Lp = L.data(), *vp = v.data(), *wp = w.data(), *mup = mu.data(), *clp = coef_l.data();
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < B * HW; ++r) {
      const int64_t b = r / HW;
      const A *sp = istd + b * C, *mp = sx + b * C, *csp = spe + b * C;
      const T* xp = x + r * C;
      const T* gp = dy + r * C;
      T* dp = dx + r * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const A xv = load_as<T, A>(xp[c]);
        const A rr = vp[c] * xv + sp[c];
        dp[c] = store_from<T, A>(b0_dx(load_as<T, A>(gp[c]) * wp[c], xv, evo_max(Lp[c], rr), evo_p(Lp[c], rr, sem),
                                       vp[c], mp[c], csp[c], mup[c], clp[c]));
      }
    }
  }
  return Status::OK();
}

// ---- S0 --------------------------------------------------------------------------------------------
template <typename T, typename A>
Status s0_fwd(const EvoNormS0Params& p) {
  const int64_t B = p.batch, C = p.channels, HW = p.spatial, G = p.groups, Cg = C / G;
  const int64_t ng = Cg * HW;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const auto w = load_vec<A>(p.weight, p.w_dtype, C), bias = load_vec<A>(p.bias, p.w_dtype, C),
             v = load_vec<A>(p.v, p.w_dtype, C);
  A* gmean = static_cast<A*>(p.group_mean);
  A* grstd = static_cast<A*>(p.group_rstd);
  std::vector<A> gstd(static_cast<size_t>(B * G));
  if (!p.channels_last) {
    // A group of Cg planes is one contiguous block.
#pragma omp parallel for schedule(static)
    for (int64_t bg = 0; bg < B * G; ++bg) {
      const T* xp = x + bg * ng;
      A s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t i = 0; i < ng; ++i) s += load_as<T, A>(xp[i]);
      const A m = s / static_cast<A>(ng);
      A s2 = 0;
#pragma omp simd reduction(+ : s2)
      for (int64_t i = 0; i < ng; ++i) {
        const A d = load_as<T, A>(xp[i]) - m;
        s2 += d * d;
      }
      const double sd = evo_std(s2, ng, p.eps);
      gmean[bg] = m;
      gstd[bg] = static_cast<A>(sd);
      grstd[bg] = static_cast<A>(1.0 / sd);
    }
  } else {
#pragma omp parallel
    {
      std::vector<A> acc(static_cast<size_t>(C)), mc(static_cast<size_t>(C));
      A* a = acc.data();
      A* m = mc.data();
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        const T* xb = x + b * HW * C;
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t i = 0; i < HW; ++i) {
          const T* row = xb + i * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) a[c] += load_as<T, A>(row[c]);
        }
        for (int64_t g = 0; g < G; ++g) {
          A s = 0;
          for (int64_t j = 0; j < Cg; ++j) s += a[g * Cg + j];
          const A mg = s / static_cast<A>(ng);
          gmean[b * G + g] = mg;
          for (int64_t j = 0; j < Cg; ++j) m[g * Cg + j] = mg;
        }
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t i = 0; i < HW; ++i) {
          const T* row = xb + i * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const A d = load_as<T, A>(row[c]) - m[c];
            a[c] += d * d;
          }
        }
        for (int64_t g = 0; g < G; ++g) {
          A s2 = 0;
          for (int64_t j = 0; j < Cg; ++j) s2 += a[g * Cg + j];
          const double sd = evo_std(s2, ng, p.eps);
          gstd[b * G + g] = static_cast<A>(sd);
          grstd[b * G + g] = static_cast<A>(1.0 / sd);
        }
      }
    }
  }
  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < B * C; ++bc) {
      const int64_t b = bc / C, c = bc % C;
      const A s = gstd[b * G + c / Cg], vc = v[c], wc = w[c], bc_ = bias[c];
      const T* xp = x + bc * HW;
      T* yp = y + bc * HW;
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) {
        const A xv = load_as<T, A>(xp[i]);
        yp[i] = store_from<T, A>(s0_y(xv, cpu_sigmoid(vc * xv), s, wc, bc_));
      }
    }
  } else {
#pragma omp parallel
    {
      std::vector<A> sv(static_cast<size_t>(C));
      A* sc = sv.data();
      const A *vp = v.data(), *wp = w.data(), *bp = bias.data();
      int64_t cur_b = -1;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < B * HW; ++r) {
        const int64_t b = r / HW;
        if (b != cur_b) {  // expand the group std to channels once per sample
          for (int64_t c = 0; c < C; ++c) sc[c] = gstd[b * G + c / Cg];
          cur_b = b;
        }
        const T* xp = x + r * C;
        T* yp = y + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const A xv = load_as<T, A>(xp[c]);
          yp[c] = store_from<T, A>(s0_y(xv, cpu_sigmoid(vp[c] * xv), sc[c], wp[c], bp[c]));
        }
      }
    }
  }
  return Status::OK();
}

template <typename A> struct S0Terms {
  A uh, uxs, dyh, dy;
};
template <typename A> inline S0Terms<A> s0_terms(A xv, A g, A vc, A wc) {
  const A sig = cpu_sigmoid(vc * xv);
  const A h = xv * sig;
  const A u = g * wc;
  return {u * h, u * xv * xv * sig * (A(1) - sig), g * h, g};
}

template <typename T, typename A>
Status s0_bwd(const EvoNormS0BwdParams& p) {
  const int64_t B = p.batch, C = p.channels, HW = p.spatial, G = p.groups, Cg = C / G, BC = B * C;
  const int64_t ng = Cg * HW;
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const auto w = load_vec<A>(p.weight, p.w_dtype, C), v = load_vec<A>(p.v, p.w_dtype, C);
  const A* gmean = static_cast<const A*>(p.group_mean);
  const A* grstd = static_cast<const A*>(p.group_rstd);
  A* ws = static_cast<A*>(p.workspace);
  A *suh = ws, *suxs = ws + BC, *sdyh = ws + 2 * BC, *sdy = ws + 3 * BC;

  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < BC; ++bc) {
      const int64_t c = bc % C;
      const A vc = v[c], wc = w[c];
      const T* xp = x + bc * HW;
      const T* gp = dy + bc * HW;
      A a0 = 0, a1 = 0, a2 = 0, a3 = 0;
#pragma omp simd reduction(+ : a0, a1, a2, a3)
      for (int64_t i = 0; i < HW; ++i) {
        const S0Terms<A> t = s0_terms(load_as<T, A>(xp[i]), load_as<T, A>(gp[i]), vc, wc);
        a0 += t.uh; a1 += t.uxs; a2 += t.dyh; a3 += t.dy;
      }
      suh[bc] = a0; suxs[bc] = a1; sdyh[bc] = a2; sdy[bc] = a3;
    }
  } else {
#pragma omp parallel
    {
      std::vector<A> acc(static_cast<size_t>(4 * C));
      A *a0 = acc.data(), *a1 = a0 + C, *a2 = a1 + C, *a3 = a2 + C;
      const A *vp = v.data(), *wp = w.data();
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t i = 0; i < HW; ++i) {
          const T* xp = x + (b * HW + i) * C;
          const T* gp = dy + (b * HW + i) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const S0Terms<A> t = s0_terms(load_as<T, A>(xp[c]), load_as<T, A>(gp[c]), vp[c], wp[c]);
            a0[c] += t.uh; a1[c] += t.uxs; a2[c] += t.dyh; a3[c] += t.dy;
          }
        }
        for (int64_t c = 0; c < C; ++c) {
          const int64_t k = b * C + c;
          suh[k] = a0[c]; suxs[k] = a1[c]; sdyh[k] = a2[c]; sdy[k] = a3[c];
        }
      }
    }
  }

  // Weight gradients: r_bg scales each sample's partial; fixed order over b.
  for (int64_t c = 0; c < C; ++c) {
    A dv = 0, dw = 0, db = 0;
    for (int64_t b = 0; b < B; ++b) {
      const A r = grstd[b * G + c / Cg];
      const int64_t k = b * C + c;
      dv += r * suxs[k]; dw += r * sdyh[k]; db += sdy[k];
    }
    if (p.dweight != nullptr) store_one(p.dweight, p.w_dtype, c, dw);
    if (p.dbias != nullptr) store_one(p.dbias, p.w_dtype, c, db);
    if (p.dv != nullptr) store_one(p.dv, p.w_dtype, c, dv);
  }
  // The group-statistic coefficient -r^3 * sum_g u*h / n_g, expanded per (b, c) into suxs' storage.
  for (int64_t bg = 0; bg < B * G; ++bg) {
    const int64_t b = bg / G, g = bg % G;
    A t = 0;
    for (int64_t j = 0; j < Cg; ++j) t += suh[b * C + g * Cg + j];
    const A r = grstd[bg];
    const A coef = -r * r * r * t / static_cast<A>(ng);
    for (int64_t j = 0; j < Cg; ++j) suxs[b * C + g * Cg + j] = coef;
  }

  if (!p.channels_last) {
#pragma omp parallel for schedule(static)
    for (int64_t bc = 0; bc < BC; ++bc) {
      const int64_t b = bc / C, c = bc % C, bg = b * G + c / Cg;
      const A vc = v[c], wc = w[c], r = grstd[bg], mg = gmean[bg], coef = suxs[bc];
      const T* xp = x + bc * HW;
      const T* gp = dy + bc * HW;
      T* dp = dx + bc * HW;
#pragma omp simd
      for (int64_t i = 0; i < HW; ++i) {
        const A xv = load_as<T, A>(xp[i]);
        dp[i] = store_from<T, A>(s0_dx(load_as<T, A>(gp[i]) * wc, xv, cpu_sigmoid(vc * xv), vc, r, mg, coef));
      }
    }
  } else {
#pragma omp parallel
    {
      std::vector<A> rv(static_cast<size_t>(C)), mv(static_cast<size_t>(C));
      A *rc = rv.data(), *mc = mv.data();
      const A *vp = v.data(), *wp = w.data();
      int64_t cur_b = -1;
#pragma omp for schedule(static)
      for (int64_t r = 0; r < B * HW; ++r) {
        const int64_t b = r / HW;
        if (b != cur_b) {
          for (int64_t c = 0; c < C; ++c) {
            rc[c] = grstd[b * G + c / Cg];
            mc[c] = gmean[b * G + c / Cg];
          }
          cur_b = b;
        }
        const A* cp = suxs + b * C;
        const T* xp = x + r * C;
        const T* gp = dy + r * C;
        T* dp = dx + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const A xv = load_as<T, A>(xp[c]);
          dp[c] = store_from<T, A>(s0_dx(load_as<T, A>(gp[c]) * wp[c], xv, cpu_sigmoid(vp[c] * xv), vp[c], rc[c],
                                         mc[c], cp[c]));
        }
      }
    }
  }
  return Status::OK();
}

template <template <typename, typename> class K, typename P>
Status by_dtype(const P& p) {
  switch (p.x_dtype) {
    case DType::Float32: return K<float, float>::run(p);
    case DType::Float64: return K<double, double>::run(p);
    case DType::BFloat16: return K<bf16_t, float>::run(p);
    case DType::Float16: return K<f16_t, float>::run(p);
    default: return unsupported("evonorm: unsupported x dtype");
  }
}
template <typename T, typename A> struct B0Fwd { static Status run(const EvoNormB0Params& p) { return b0_fwd<T, A>(p); } };
template <typename T, typename A> struct B0Bwd { static Status run(const EvoNormB0BwdParams& p) { return b0_bwd<T, A>(p); } };
template <typename T, typename A> struct S0Fwd { static Status run(const EvoNormS0Params& p) { return s0_fwd<T, A>(p); } };
template <typename T, typename A> struct S0Bwd { static Status run(const EvoNormS0BwdParams& p) { return s0_bwd<T, A>(p); } };

}  // namespace

Status evonorm_b0_fwd(const EvoNormB0Params& p) { return by_dtype<B0Fwd>(p); }
Status evonorm_b0_bwd(const EvoNormB0BwdParams& p) { return by_dtype<B0Bwd>(p); }
Status evonorm_s0_fwd(const EvoNormS0Params& p) { return by_dtype<S0Fwd>(p); }
Status evonorm_s0_bwd(const EvoNormS0BwdParams& p) { return by_dtype<S0Bwd>(p); }

}  // namespace FASTNORM_ISA
}  // namespace norm
}  // namespace fastnorm

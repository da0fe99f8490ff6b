// CPU kernels of the midpoint batch norm (specs/poincare.md §3.8) and its running-statistics update.
// Forward: pass 1 (Σλ_i x_i, Σ(λ_i − 1) → m), pass 2 (Σ d_i² → σ²), pass 3 (out). Backward: pass Q1
// (recompute each row, VJP chain, accumulate ∂μ, ∂m, ∂sc, K = Σ (2d_i/N)·∂d_i/∂m, V, Q), a serial finaliser
// (∂σ², ∂γ, midpoint VJP → ∂V, ∂Q, ∂β), pass Q2 (recompute the row, add the ∂σ² and midpoint terms, exp0
// VJP, write ∂u). Rows are processed in fixed blocks with per-block partials reduced in order
// (deterministic whatever the thread count); no row-sized temporaries.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/poincare_layers_math.h"
#include "fastnorm/poincare_layers.h"
#include "poincare_layers_cpu.h"

namespace fastnorm {
namespace poincare {
namespace layers_cpu {
namespace {

using detail::Curv;
using detail::Gram;
using detail::Vec;
namespace L = layers;

constexpr int64_t kBlock = 64;  // rows per partial block

template <class T, class A>
inline A ldv(const void* p, int64_t i) {
  return ::fastnorm::detail::load_as<T, A>(static_cast<const T*>(p)[i]);
}
template <class T, class A>
inline void stv(void* p, int64_t i, A v) {
  static_cast<T*>(p)[i] = ::fastnorm::detail::store_from<T, A>(v);
}

template <class A>
A load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float32: return A(static_cast<const float*>(p)[i]);
    case DType::Float64: return A(static_cast<const double*>(p)[i]);
    case DType::Float16: return A(::fastnorm::detail::f16_to_float(static_cast<const f16_t*>(p)[i].bits));
    case DType::BFloat16: return A(::fastnorm::detail::bf16_to_float(static_cast<const bf16_t*>(p)[i].bits));
    default: return A(NAN);
  }
}
template <class A>
void store_any(void* p, DType t, int64_t i, A v) {
  switch (t) {
    case DType::Float32: static_cast<float*>(p)[i] = float(v); break;
    case DType::Float64: static_cast<double*>(p)[i] = double(v); break;
    case DType::Float16: static_cast<f16_t*>(p)[i].bits = ::fastnorm::detail::float_to_f16(float(v)); break;
    case DType::BFloat16: static_cast<bf16_t*>(p)[i].bits = ::fastnorm::detail::float_to_bf16(float(v)); break;
    default: break;
  }
}

// A basis row: a strided storage-type row of x or g, or a compute-type C-vector (m, μ, ∂V).
template <class T, class A>
struct BRow {
  const T* pt = nullptr;
  const A* pa = nullptr;
  int64_t s = 1;
  A operator[](int64_t d) const { return pa ? pa[d] : ::fastnorm::detail::load_as<T, A>(pt[d * s]); }
};

// acc[d] += Σ_i co_i·r_i[d]
template <class A, int K, class R>
inline void accumulate(const R* r, const Vec<A, K>& co, int64_t D, A* acc) {
  for (int64_t d = 0; d < D; ++d) {
    A s = A(0);
    for (int i = 0; i < K; ++i)
      if (co.a[i] != A(0)) s += co.a[i] * r[i][d];
    acc[d] += s;
  }
}

template <class A>
A dotv(const A* a, const A* b, int64_t n) {
  A s = A(0);
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

template <class T, class A>
struct BN {
  const MidpointBNParams& p;
  const int64_t outer, C, inner, N;
  const int threads;
  Curv<A> cv;
  A eps_proj;

  explicit BN(const MidpointBNParams& pp)
      : p(pp), outer(pp.layout.outer), C(pp.layout.D), inner(pp.layout.inner), N(pp.layout.outer * pp.layout.inner),
        threads(threads_of(pp.num_threads)) {
    cv = detail::make_curv(A(read_curvature(pp.c)));
    eps_proj = A(detail::default_eps(pp.x_dtype));
  }

  int64_t nblocks() const { return (N + kBlock - 1) / kBlock; }

  size_t workspace() const {
    // mu, m, dV, beta, rm (C each) + per-block partials of width 4C + 3
    return size_t(5 * C + nblocks() * (4 * C + 3) + 16) * sizeof(A) + 256;
  }

  BRow<T, A> xrow(int64_t r) const {
    BRow<T, A> b;
    b.pt = static_cast<const T*>(p.x) + (r / inner) * C * inner + (r % inner);
    b.s = inner;
    return b;
  }
  BRow<T, A> grow(int64_t r) const {
    BRow<T, A> b;
    b.pt = static_cast<const T*>(p.grad) + (r / inner) * C * inner + (r % inner);
    b.s = inner;
    return b;
  }
  BRow<T, A> crow(const A* v) const {
    BRow<T, A> b;
    b.pa = v;
    return b;
  }

  // μ = proj(exp0(β)); returns the exp0 radial factors at β (for ∂β).
  detail::Radial<A> make_mu(A* beta, A* mu) const {
    for (int64_t d = 0; d < C; ++d) beta[d] = load_any<A>(p.bias, p.w_dtype, d);
    const detail::Radial<A> rb = detail::expmap0_radial(dotv(beta, beta, C), cv, eps_proj, true);
    for (int64_t d = 0; d < C; ++d) mu[d] = rb.fn * beta[d];
    return rb;
  }

  // midpoint from V, Q (§3.4): t = V/Q, m = proj(t/(1 + σ_t)); returns t in V.
  void midpoint_finalize(A* V, A Q, A* m) const {
    const A Qc = (Q < A(0) ? -1 : 1) * detail::m_max(Q < A(0) ? -Q : Q, A(detail::kQFloor));
    for (int64_t d = 0; d < C; ++d) V[d] /= Qc;
    const A tt = dotv(V, V, C);
    const A sg = std::sqrt(detail::m_max(A(1) - cv.c * tt, A(0)));
    for (int64_t d = 0; d < C; ++d) m[d] = V[d] / (A(1) + sg);
    const detail::Radial<A> rp = detail::proj_radial(dotv(m, m, C), cv, eps_proj);
    for (int64_t d = 0; d < C; ++d) m[d] *= rp.fn;
  }

  // Pass 1 over the rows: Σλ_i x_i, Σ(λ_i − 1) (training).
  void pass_vq(A* part, A* V, A& Q) const {
    const int64_t nb = nblocks();
    const int64_t w = C + 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (N * C > 16384)
    for (int64_t b = 0; b < nb; ++b) {
      A* pv = part + b * w;
      std::fill(pv, pv + w, A(0));
      for (int64_t r = b * kBlock; r < std::min(N, (b + 1) * kBlock); ++r) {
        const BRow<T, A> x = xrow(r);
        A q = A(0);
        for (int64_t d = 0; d < C; ++d) q += x[d] * x[d];
        const detail::Radial<A> re = detail::expmap0_radial(q, cv, eps_proj, true);
        const detail::Lambda<A> lam = detail::conformal(re.fn * re.fn * q, cv);
        for (int64_t d = 0; d < C; ++d) pv[d] += lam.lam * re.fn * x[d];
        pv[C] += lam.lam - A(1);
      }
    }
    std::fill(V, V + C, A(0));
    Q = A(0);
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t d = 0; d < C; ++d) V[d] += part[b * w + d];
      Q += part[b * w + C];
    }
  }

  Status forward() {
    if (p.workspace_bytes < workspace()) return invalid_argument("poincare bn_fwd: workspace too small");
    A* ws = reinterpret_cast<A*>((reinterpret_cast<uintptr_t>(p.workspace) + 63) & ~uintptr_t(63));
    A* mu = ws;
    A* m = mu + C;
    A* V = m + C;
    A* beta = V + C;
    A* rmv = beta + C;
    A* part = rmv + C;
    make_mu(beta, mu);
    const A gamma = load_any<A>(p.weight, p.w_dtype, 0);
    A sigma2;
    if (p.use_batch_stats) {
      A Q;
      pass_vq(part, V, Q);
      midpoint_finalize(V, Q, m);
      // pass 2: Σ d_i²
      const int64_t nb = nblocks();
#pragma omp parallel for schedule(static) num_threads(threads) if (N * C > 16384)
      for (int64_t b = 0; b < nb; ++b) {
        A s = A(0);
        for (int64_t r = b * kBlock; r < std::min(N, (b + 1) * kBlock); ++r) {
          const BRow<T, A> rows[3] = {xrow(r), crow(m), crow(mu)};
          Gram<A, 3> G;
          detail::gram<A, 3, 3, 8>(rows, C, G);
          L::BNRow<A, 3> row;
          L::bn_row_point(row, G, cv, eps_proj);
          s += row.d * row.d;
        }
        part[b] = s;
      }
      A s = A(0);
      for (int64_t b = 0; b < nb; ++b) s += part[b];
      sigma2 = N > 0 ? s / A(N) : A(0);
      for (int64_t d = 0; d < C; ++d) store_any<A>(p.mean, stats_dtype(), d, m[d]);
    } else {
      for (int64_t d = 0; d < C; ++d) rmv[d] = load_any<A>(p.running_mean, p.running_dtype, d);
      const detail::Radial<A> rp = detail::proj_radial(dotv(rmv, rmv, C), cv, eps_proj);
      for (int64_t d = 0; d < C; ++d) m[d] = rp.fn * rmv[d];
      sigma2 = load_any<A>(p.running_var, p.running_dtype, 0);
      for (int64_t d = 0; d < C; ++d) store_any<A>(p.mean, stats_dtype(), d, rmv[d]);
    }
    store_any<A>(p.var, stats_dtype(), 0, sigma2);
    const A sc = std::sqrt(gamma / (sigma2 + A(p.eps)));
#pragma omp parallel for schedule(static) num_threads(threads) if (N * C > 16384)
    for (int64_t r = 0; r < N; ++r) {
      const BRow<T, A> rows[3] = {xrow(r), crow(m), crow(mu)};
      Gram<A, 3> G;
      detail::gram<A, 3, 3, 8>(rows, C, G);
      L::BNRow<A, 3> row;
      L::bn_row_point(row, G, cv, eps_proj);
      L::bn_row_out(row, G, sc, cv, eps_proj);
      T* o = static_cast<T*>(p.out) + (r / inner) * C * inner + (r % inner);
      detail::emit<A, 3, 3>(rows, row.out, detail::vzero<A, 3>(), C, detail::SOut<T, A>{o, inner});
    }
    return Status::OK();
  }

  DType stats_dtype() const { return std::is_same<A, double>::value ? DType::Float64 : DType::Float32; }

  Status backward() {
    if (p.workspace_bytes < workspace()) return invalid_argument("poincare bn_bwd: workspace too small");
    A* ws = reinterpret_cast<A*>((reinterpret_cast<uintptr_t>(p.workspace) + 63) & ~uintptr_t(63));
    A* mu = ws;
    A* m = mu + C;
    A* dV = m + C;
    A* beta = dV + C;
    A* rmv = beta + C;
    A* part = rmv + C;
    const bool train = p.use_batch_stats;
    const detail::Radial<A> rb = make_mu(beta, mu);
    const A gamma = load_any<A>(p.weight, p.w_dtype, 0);
    for (int64_t d = 0; d < C; ++d) rmv[d] = load_any<A>(p.mean, stats_dtype(), d);
    const detail::Radial<A> rpm = detail::proj_radial(dotv(rmv, rmv, C), cv, eps_proj);
    for (int64_t d = 0; d < C; ++d) m[d] = rpm.fn * rmv[d];
    const A sigma2 = load_any<A>(p.var, stats_dtype(), 0);
    const A sc = std::sqrt(gamma / (sigma2 + A(p.eps)));
    const A twoN = N > 0 ? A(2) / A(N) : A(0);

    // ---- Q1: ∂μ, ∂m (direct), K, V, Q, ∂sc, Σ⟨g, out⟩
    const int64_t nb = nblocks();
    const int64_t w = 4 * C + 3;
#pragma omp parallel for schedule(static) num_threads(threads) if (N * C > 16384)
    for (int64_t b = 0; b < nb; ++b) {
      A* pv = part + b * w;
      std::fill(pv, pv + w, A(0));
      A* dmu = pv;
      A* dm = pv + C;
      A* kk = pv + 2 * C;
      A* vv = pv + 3 * C;
      for (int64_t r = b * kBlock; r < std::min(N, (b + 1) * kBlock); ++r) {
        const BRow<T, A> rows[4] = {xrow(r), crow(m), crow(mu), grow(r)};
        Gram<A, 4> G;
        detail::gram<A, 4, 4, 8>(rows, C, G);
        L::BNRow<A, 4> row;
        L::bn_row_point(row, G, cv, eps_proj);
        L::bn_row_out(row, G, sc, cv, eps_proj);
        const L::BNRowGrad<A, 4> gr = L::bn_row_backward(row, G, train, cv);
        accumulate<A, 4>(rows, gr.dMu, C, dmu);
        accumulate<A, 4>(rows, gr.dM, C, dm);
        if (train) {
          accumulate<A, 4>(rows, (twoN * row.d) * gr.dMd, C, kk);
          accumulate<A, 4>(rows, row.lam.lam * row.X, C, vv);
          pv[4 * C] += row.lam.lam - A(1);
        }
        pv[4 * C + 1] += gr.dsc;
        pv[4 * C + 2] += gr.g_out;
      }
    }
    std::vector<A> acc(size_t(w), A(0));
    for (int64_t b = 0; b < nb; ++b)
      for (int64_t i = 0; i < w; ++i) acc[size_t(i)] += part[b * w + i];
    const A* dmu = acc.data();
    A* dm = acc.data() + C;
    const A* kk = acc.data() + 2 * C;
    A* V = acc.data() + 3 * C;
    const A Q = acc[size_t(4 * C)], dsc = acc[size_t(4 * C + 1)], gout = acc[size_t(4 * C + 2)];

    // ---- finaliser
    const A dgamma = gamma != A(0) ? dsc * sc / (A(2) * gamma) : dsc / (A(2) * sc * (sigma2 + A(p.eps)));
    A dsig2 = A(0), dQ = A(0);
    std::fill(dV, dV + C, A(0));
    A extra_c = A(0);  // ⟨∂p, p⟩ of the running mean (eval) — running stats are not differentiable otherwise
    if (train) {
      dsig2 = -dsc * sc / (A(2) * (sigma2 + A(p.eps)));
      for (int64_t d = 0; d < C; ++d) dm[d] += dsig2 * kk[d];
      // midpoint VJP: m = proj(m_pre), m_pre = t/(1 + σ_t), t = V/Q
      const A Qc = (Q < A(0) ? -1 : 1) * detail::m_max(Q < A(0) ? -Q : Q, A(detail::kQFloor));
      std::vector<A> t(static_cast<size_t>(C)), mpre(static_cast<size_t>(C)), dmp(static_cast<size_t>(C));
      for (int64_t d = 0; d < C; ++d) t[size_t(d)] = V[d] / Qc;
      const A tt = dotv(t.data(), t.data(), C);
      const A sg = std::sqrt(detail::m_max(A(1) - cv.c * tt, A(0)));
      for (int64_t d = 0; d < C; ++d) mpre[size_t(d)] = t[size_t(d)] / (A(1) + sg);
      const detail::Radial<A> rp = detail::proj_radial(dotv(mpre.data(), mpre.data(), C), cv, eps_proj);
      const A gm = dotv(dm, mpre.data(), C);
      for (int64_t d = 0; d < C; ++d) dmp[size_t(d)] = rp.fn * dm[d] + rp.k1 * gm * mpre[size_t(d)];
      const A dmt = dotv(dmp.data(), t.data(), C);
      const A k2 = cv.c * dmt / (detail::m_max(sg, A(detail::kNu)) * (A(1) + sg) * (A(1) + sg));
      A dtt = A(0);
      for (int64_t d = 0; d < C; ++d) {
        const A dt = dmp[size_t(d)] / (A(1) + sg) + k2 * t[size_t(d)];
        dV[d] = dt / Qc;
        dtt += dt * t[size_t(d)];
      }
      dQ = -dtt / Qc;
    } else {
      // proj VJP at the running mean, for the ∂c identity
      const A gr = dotv(dm, rmv, C);
      for (int64_t d = 0; d < C; ++d) extra_c += (rpm.fn * dm[d] + rpm.k1 * gr * rmv[d]) * rmv[d];
    }
    // ∂β = exp0-VJP(∂μ) at β
    const A gb = dotv(dmu, beta, C);
    A dbeta_beta = A(0);
    for (int64_t d = 0; d < C; ++d) {
      const A db = rb.fn * dmu[d] + rb.k1 * gb * beta[d];
      dbeta_beta += db * beta[d];
      if (p.grad_bias) store_any<A>(p.grad_bias, p.w_dtype, d, db);
    }
    if (p.grad_weight) store_any<A>(p.grad_weight, p.w_dtype, 0, dgamma);

    // ---- Q2: ∂u_i and Σ⟨∂u_i, u_i⟩
    A dot_uu = A(0);
    if (p.grad_x || p.grad_c) {
#pragma omp parallel for schedule(static) num_threads(threads) if (N * C > 16384)
      for (int64_t b = 0; b < nb; ++b) {
        A s = A(0);
        for (int64_t r = b * kBlock; r < std::min(N, (b + 1) * kBlock); ++r) {
          const BRow<T, A> rows[5] = {xrow(r), crow(m), crow(mu), grow(r), crow(dV)};
          Gram<A, 5> G;
          detail::gram<A, 5, 5, 8>(rows, C, G);
          L::BNRow<A, 5> row;
          L::bn_row_point(row, G, cv, eps_proj);
          L::bn_row_out(row, G, sc, cv, eps_proj);
          const L::BNRowGrad<A, 5> gr = L::bn_row_backward(row, G, train, cv);
          Vec<A, 5> dX = gr.dX;
          if (train) {
            const Vec<A, 5> DV = detail::unit<A, 5>(L::kBDV);
            dX = dX + (dsig2 * twoN * row.d) * gr.dXd + row.lam.lam * DV +
                 ((G.dot(DV, row.X) + dQ) * row.lam.kx) * row.X;
          }
          const Vec<A, 5> U = detail::unit<A, 5>(L::kBU);
          const Vec<A, 5> du = detail::radial_vjp(row.re, dX, G.dot(dX, U), U);
          s += G.dot(du, U);
          if (p.grad_x) {
            T* o = static_cast<T*>(p.grad_x) + (r / inner) * C * inner + (r % inner);
            detail::emit<A, 5, 5>(rows, du, detail::vzero<A, 5>(), C, detail::SOut<T, A>{o, inner});
          }
        }
        part[b] = s;
      }
      for (int64_t b = 0; b < nb; ++b) dot_uu += part[b];
    }
    if (p.grad_c) {
      A dc = (dot_uu + dbeta_beta + extra_c - gout) / (A(2) * cv.c);
      if (train) dc += gamma * dgamma * sigma2 / (cv.c * (sigma2 + A(p.eps)));
      write_scalar(p.grad_c, p.c.dtype, double(dc));
    }
    return Status::OK();
  }
};

template <class F>
Status dispatch_x(DType d, F&& f) {
  switch (d) {
    case DType::Float32: return f(float{}, float{});
    case DType::Float64: return f(double{}, double{});
    case DType::Float16: return f(f16_t{}, float{});
    case DType::BFloat16: return f(bf16_t{}, float{});
    default: return unsupported(std::string("dtype ") + dtype_name(d));
  }
}

Status check_bn(const MidpointBNParams& p, bool bwd) {
  if (p.layout.outer < 0 || p.layout.D < 0 || p.layout.inner < 0) return invalid_argument("negative size");
  if (!is_float(p.x_dtype) || !is_float(p.w_dtype) || !is_float(p.c.dtype)) return unsupported("non-float dtype");
  if (!p.c.ptr || !p.weight || !p.bias) return invalid_argument("c, weight and bias are required");
  const int64_t n = p.layout.outer * p.layout.D * p.layout.inner;
  if (n > 0 && !p.x) return invalid_argument("x is null");
  if (!p.mean || !p.var) return invalid_argument("mean/var are null");
  if (!bwd && n > 0 && !p.out) return invalid_argument("out is null");
  if (!bwd && !p.use_batch_stats && (!p.running_mean || !p.running_var))
    return invalid_argument("running stats are required without batch statistics");
  if (bwd && n > 0 && !p.grad) return invalid_argument("grad is null");
  if (!(p.eps > 0)) return invalid_argument("eps must be > 0");
  return Status::OK();
}

}  // namespace
}  // namespace layers_cpu

using namespace layers_cpu;

size_t bn_workspace_bytes(const MidpointBNParams& p) {
  size_t r = 0;
  dispatch_x(p.x_dtype, [&](auto t, auto a) {
    r = BN<decltype(t), decltype(a)>(p).workspace();
    return Status::OK();
  });
  return r;
}

Status bn_fwd(const MidpointBNParams& p) {
  Status s = check_bn(p, false);
  if (!s.ok()) return s;
  return dispatch_x(p.x_dtype, [&](auto t, auto a) { return BN<decltype(t), decltype(a)>(p).forward(); });
}

Status bn_bwd(const MidpointBNParams& p) {
  Status s = check_bn(p, true);
  if (!s.ok()) return s;
  return dispatch_x(p.x_dtype, [&](auto t, auto a) { return BN<decltype(t), decltype(a)>(p).backward(); });
}

Status bn_running_update(const BNUpdateParams& p) {
  if (p.channels < 0 || p.count < 2) return invalid_argument("channels >= 0 and count >= 2 required");
  if (!p.running_mean || !p.running_var || !p.mean || !p.var || !p.c.ptr) return invalid_argument("null pointer");
  if (!(p.momentum >= 0 && p.momentum <= 1)) return invalid_argument("momentum must be in [0, 1]");
  using A = double;
  const int64_t C = p.channels;
  const Curv<A> cv = detail::make_curv(A(read_curvature(p.c)));
  const A eps = A(detail::default_eps(p.running_dtype));
  std::vector<A> rm(static_cast<size_t>(C)), m(static_cast<size_t>(C));
  for (int64_t d = 0; d < C; ++d) {
    rm[size_t(d)] = load_any<A>(p.running_mean, p.running_dtype, d);
    m[size_t(d)] = load_any<A>(p.mean, p.stats_dtype, d);
  }
  // rm ← proj(rm_p ⊕ (k ⊗ ((−rm_p) ⊕ m))), rm_p = proj(rm): the geodesic step exp_rm(k·log_rm(m)).
  const A k = A(p.momentum);
  const BRow<double, A> rows[2] = {BRow<double, A>{nullptr, rm.data(), 1}, BRow<double, A>{nullptr, m.data(), 1}};
  Gram<A, 2> G;
  detail::gram<A, 2, 2, 1>(rows, C, G);
  const detail::Radial<A> rp = detail::proj_radial(G.g[0][0], cv, eps);
  const Vec<A, 2> RM = detail::unit<A, 2>(0, rp.fn);
  const Vec<A, 2> M = detail::unit<A, 2>(1);
  const auto z = detail::mobius(A(-1) * RM, M, G, cv);
  const A zz = detail::m_max(G.dot(z.z, z.z), A(0));
  const auto sm = detail::scalar_mul_radial(k, zz, cv);
  const Vec<A, 2> v = sm.rad.fn * z.z;
  const auto y = detail::mobius(RM, v, G, cv);
  const A yy = detail::m_max(G.dot(y.z, y.z), A(0));
  const detail::Radial<A> rq = detail::proj_radial(yy, cv, eps);
  const Vec<A, 2> out = rq.fn * y.z;
  for (int64_t d = 0; d < C; ++d)
    store_any<A>(p.running_mean, p.running_dtype, d, out.a[0] * rm[size_t(d)] + out.a[1] * m[size_t(d)]);
  const A rv = load_any<A>(p.running_var, p.running_dtype, 0);
  const A var = load_any<A>(p.var, p.stats_dtype, 0);
  const A nn = A(p.count);
  store_any<A>(p.running_var, p.running_dtype, 0, (A(1) - k) * rv + k * var * nn / (nn - A(1)));
  return Status::OK();
}

}  // namespace poincare
}  // namespace fastnorm

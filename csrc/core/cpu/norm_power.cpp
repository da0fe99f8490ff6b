// CPU kernels of PowerNorm (specs/norm.md §3.6): argument validation (shared with the CUDA entry points),
// the training forward, the approximate backward and eval. See norm_power.h for the layout and the math.
//
// Plan. Forward: one parallel pass over fixed row blocks computes GroupScaling's factors (saved), and each
// block's partial sums of xt^2 over non-pad tokens; after warmup the divisor is known beforehand (phi), so
// the same pass also writes y. During warmup the divisor needs the batch sums, so a second pass over x
// writes y. Backward: dx depends on the channel sums only through the old nu, so one pass per row computes
// dx (GroupScaling's backward needs the group's sum of dxt*xt, formed over the row buffer first) and adds
// the four per-channel statistics into its block's partials. Partials are summed in block order. Row sums
// use `omp simd reduction`, whose order is fixed at compile time, so results do not depend on the threads.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/norm_power_math.h"
#include "fastnorm/norm_power.h"

namespace fastnorm {
namespace norm {
namespace {

namespace pm = power_math;
using fastnorm::detail::load_as;
using fastnorm::detail::store_from;

bool is_float(DType t) {
  return t == DType::Float32 || t == DType::Float16 || t == DType::BFloat16 || t == DType::Float64;
}

// Row blocks of the per-channel sums: a function of (M, C) only, so results never depend on threads.
int64_t num_blocks(int64_t M, int64_t C) {
  if (M <= 0) return 0;
  // Small C: fewer, longer blocks (partials cost C per block); at least 32 rows per block.
  const int64_t rows = std::max<int64_t>(32, (M + 127) / 128);
  (void)C;
  return (M + rows - 1) / rows;
}
int64_t rows_per_block(int64_t M, int64_t nblk) { return nblk == 0 ? 0 : (M + nblk - 1) / nblk; }

size_t acc_size(DType x) { return x == DType::Float64 ? sizeof(double) : sizeof(float); }

Status shape_checks(const char* op, int64_t T, int64_t B, int64_t C, int64_t G, DType xd, const void* x,
                    int64_t x_stride, int64_t M) {
  const std::string o(op);
  if (T < 0 || B < 0 || C < 0) return invalid_argument(o + ": sizes must be >= 0");
  if (G < 1) return invalid_argument(o + ": group_num must be >= 1, got " + std::to_string(G));
  if (C % G != 0)
    return invalid_argument(o + ": group_num " + std::to_string(G) + " does not divide C = " + std::to_string(C));
  if (!is_float(xd)) return unsupported(o + ": x dtype " + dtype_name(xd) + " is not a float type");
  if (M > 0 && C > 0 && x == nullptr) return invalid_argument(o + ": x is null");
  if (M > 1 && x_stride < C) return invalid_argument(o + ": x row stride is smaller than C");
  return Status::OK();
}

Status eps_check(const char* op, const char* name, double v) {
  if (!(v > 0) || !std::isfinite(v)) return invalid_argument(std::string(op) + ": " + name + " must be a finite value > 0");
  return Status::OK();
}


// ---- forward --------------------------------------------------------------------------------------------
template <typename X, typename A>
void fwd_impl(const PowerNormParams& p) {
  const int64_t T = p.T, B = p.B, C = p.C, G = p.group_num, K = C / G, M = T * B;
  const A* w = static_cast<const A*>(p.weight);
  const A* bi = static_cast<const A*>(p.bias);
  const A* phi = static_cast<const A*>(p.running_phi);
  A* grs = static_cast<A*>(p.group_rstd);
  A* x2 = static_cast<A*>(p.x2);
  A* den = static_cast<A*>(p.denom);
  A* nphi = static_cast<A*>(p.new_running_phi);
  const X* x = static_cast<const X*>(p.x);
  X* y = static_cast<X*>(p.y);
  const uint8_t* mask = p.pad_mask;
  const int64_t t = p.iteration, W = p.warmup_iters;
  const bool batch = pm::use_batch_stats(t, W);

  int64_t nv = M;
  if (mask != nullptr)
    for (int64_t i = 0; i < M; ++i) nv -= mask[i] != 0;

  if (!batch)
    for (int64_t c = 0; c < C; ++c) den[c] = pm::denom<A>(A(0), phi[c], t, W, p.eps);

  const int64_t nblk = num_blocks(M, C), rpb = rows_per_block(M, nblk);
  A* part = static_cast<A*>(p.workspace);
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    std::vector<A> xa(static_cast<size_t>(C));
    A* acc = part + blk * C;
    std::fill(acc, acc + C, A(0));
    const int64_t r1 = std::min(M, (blk + 1) * rpb);
    for (int64_t r = blk * rpb; r < r1; ++r) {
      const X* xr = x + r * p.x_stride;
      const bool valid = mask == nullptr || mask[pm::mask_index(r, T, B, p.batch_first)] == 0;
      for (int64_t k = 0; k < G; ++k) {
        A s = 0;
#pragma omp simd reduction(+ : s)
        for (int64_t c = k * K; c < (k + 1) * K; ++c) {
          const A v = load_as<X, A>(xr[c]);
          xa[c] = v;
          s += v * v;
        }
        const A rho = pm::group_rstd<A>(s, K, p.group_eps);
        grs[r * G + k] = rho;
        for (int64_t c = k * K; c < (k + 1) * K; ++c) xa[c] *= rho;
      }
      if (valid)
        for (int64_t c = 0; c < C; ++c) acc[c] += xa[c] * xa[c];
      if (!batch) {
        X* yr = y + r * C;
        for (int64_t c = 0; c < C; ++c) yr[c] = store_from<X, A>(w[c] * (xa[c] / den[c]) + bi[c]);
      }
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    A s = 0;
    for (int64_t b = 0; b < nblk; ++b) s += part[b * C + c];
    const A q = s / static_cast<A>(nv);  // NaN when every token is a pad (as the official code)
    x2[c] = q;
    if (batch) den[c] = pm::denom<A>(q, phi[c], t, W, p.eps);
    nphi[c] = pm::phi_update<A>(phi[c], q, t, W, p.alpha_fwd, p.quirks);
  }
  if (batch) {
#pragma omp parallel for schedule(static)
    for (int64_t r = 0; r < M; ++r) {
      const X* xr = x + r * p.x_stride;
      X* yr = y + r * C;
      for (int64_t k = 0; k < G; ++k) {
        const A rho = grs[r * G + k];
        for (int64_t c = k * K; c < (k + 1) * K; ++c)
          yr[c] = store_from<X, A>(w[c] * ((load_as<X, A>(xr[c]) * rho) / den[c]) + bi[c]);
      }
    }
  }
}

// ---- backward -------------------------------------------------------------------------------------------
template <typename X, typename A>
void bwd_impl(const PowerNormBwdParams& p) {
  const int64_t T = p.T, B = p.B, C = p.C, G = p.group_num, K = C / G, M = T * B;
  const A* w = static_cast<const A*>(p.weight);
  const A* nu = static_cast<const A*>(p.ema_gz);
  const A* grs = static_cast<const A*>(p.group_rstd);
  const A* q = static_cast<const A*>(p.x2);
  const A* den = static_cast<const A*>(p.denom);
  const X* x = static_cast<const X*>(p.x);
  const X* dy = static_cast<const X*>(p.dy);
  X* dx = static_cast<X*>(p.dx);
  const uint8_t* mask = p.pad_mask;
  const bool official = p.quirks == PowerQuirks::Official;
  const A omab = A(1) - static_cast<A>(p.alpha_bkw);

  std::vector<A> div(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) div[c] = pm::bwd_divisor<A>(q[c], den[c], p.eps, p.quirks);

  int64_t nv = M;
  if (mask != nullptr)
    for (int64_t i = 0; i < M; ++i) nv -= mask[i] != 0;

  const int64_t nblk = num_blocks(M, C), rpb = rows_per_block(M, nblk);
  A* part = static_cast<A*>(p.workspace);
#pragma omp parallel for schedule(static)
  for (int64_t blk = 0; blk < nblk; ++blk) {
    std::vector<A> xt(static_cast<size_t>(C)), dxt(static_cast<size_t>(C));
    A* s_dyz = part + (4 * blk + 0) * C;
    A* s_dy = part + (4 * blk + 1) * C;
    A* s_gz = part + (4 * blk + 2) * C;
    A* s_zz = part + (4 * blk + 3) * C;
    std::fill(s_dyz, s_dyz + 4 * C, A(0));
    const int64_t r1 = std::min(M, (blk + 1) * rpb);
    for (int64_t r = blk * rpb; r < r1; ++r) {
      const X* xr = x + r * p.x_stride;
      const X* dyr = dy + r * p.dy_stride;
      const bool valid = mask == nullptr || mask[pm::mask_index(r, T, B, p.batch_first)] == 0;
      const bool in_p = official || valid;  // Q4: nu's mean runs over all tokens (official) or V (paper)
      for (int64_t k = 0; k < G; ++k) {
        const A rho = grs[r * G + k];
        A dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t c = k * K; c < (k + 1) * K; ++c) {
          const A xv = load_as<X, A>(xr[c]) * rho;
          const A z = xv / den[c];
          const A d = load_as<X, A>(dyr[c]);
          const A g = pm::approx_grad<A>(d, w[c], nu[c], z, omab) / div[c];
          xt[c] = xv;
          dxt[c] = g;
          dot += g * xv;
          s_dyz[c] += d * z;
          s_dy[c] += d;
          if (in_p) {
            s_gz[c] += d * z;
            s_zz[c] += z * z;
          }
        }
        const A m = dot / static_cast<A>(K);
        if (dx != nullptr) {
          X* dxr = dx + r * C;
          for (int64_t c = k * K; c < (k + 1) * K; ++c) dxr[c] = store_from<X, A>(rho * (dxt[c] - xt[c] * m));
        }
      }
    }
  }
  A* dw = static_cast<A*>(p.dweight);
  A* db = static_cast<A*>(p.dbias);
  A* nnu = static_cast<A*>(p.new_ema_gz);
  const A np = static_cast<A>(official ? M : nv);
  for (int64_t c = 0; c < C; ++c) {
    A a = 0, b = 0, gz = 0, zz = 0;
    for (int64_t k = 0; k < nblk; ++k) {
      a += part[(4 * k + 0) * C + c];
      b += part[(4 * k + 1) * C + c];
      gz += part[(4 * k + 2) * C + c];
      zz += part[(4 * k + 3) * C + c];
    }
    if (dw != nullptr) dw[c] = a;
    if (db != nullptr) db[c] = b;
    nnu[c] = pm::nu_update<A>(nu[c], w[c], gz, zz, np, omab);
  }
}

// ---- eval -----------------------------------------------------------------------------------------------
template <typename X, typename A>
void eval_impl(const PowerNormEvalParams& p) {
  const int64_t M = p.rows, C = p.C, G = p.group_num, K = C / G;
  const A* w = static_cast<const A*>(p.weight);
  const A* bi = static_cast<const A*>(p.bias);
  const A* phi = static_cast<const A*>(p.running_phi);
  const X* x = static_cast<const X*>(p.x);
  X* y = static_cast<X*>(p.y);
  std::vector<A> den(static_cast<size_t>(C));
  for (int64_t c = 0; c < C; ++c) den[c] = sqrt(phi[c] + static_cast<A>(p.eps));
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < M; ++r) {
    const X* xr = x + r * p.x_stride;
    X* yr = y + r * C;
    for (int64_t k = 0; k < G; ++k) {
      A s = 0;
#pragma omp simd reduction(+ : s)
      for (int64_t c = k * K; c < (k + 1) * K; ++c) {
        const A v = load_as<X, A>(xr[c]);
        s += v * v;
      }
      const A rho = pm::group_rstd<A>(s, K, p.group_eps);
      for (int64_t c = k * K; c < (k + 1) * K; ++c)
        yr[c] = store_from<X, A>(w[c] * ((load_as<X, A>(xr[c]) * rho) / den[c]) + bi[c]);
    }
  }
}

template <template <typename, typename> class F, typename P>
void dispatch(DType xd, const P& p) {
  switch (xd) {
    case DType::Float32: F<float, float>::run(p); break;
    case DType::Float16: F<f16_t, float>::run(p); break;
    case DType::BFloat16: F<bf16_t, float>::run(p); break;
    case DType::Float64: F<double, double>::run(p); break;
    default: break;
  }
}
template <typename X, typename A> struct Fwd { static void run(const PowerNormParams& p) { fwd_impl<X, A>(p); } };
template <typename X, typename A> struct Bwd { static void run(const PowerNormBwdParams& p) { bwd_impl<X, A>(p); } };
template <typename X, typename A> struct Eval { static void run(const PowerNormEvalParams& p) { eval_impl<X, A>(p); } };

}  // namespace

namespace detail_power {

Status check_fwd(const PowerNormParams& p) {
  const char* op = "power_norm";
  const std::string o(op);
  const int64_t M = p.T * p.B;
  Status s = shape_checks(op, p.T, p.B, p.C, p.group_num, p.x_dtype, p.x, p.x_stride, M);
  if (!s.ok()) return s;
  if (!(s = eps_check(op, "eps", p.eps)).ok()) return s;
  if (!(s = eps_check(op, "group_eps", p.group_eps)).ok()) return s;
  if (!(p.alpha_fwd >= 0 && p.alpha_fwd <= 1)) return invalid_argument(o + ": alpha_fwd must be in [0, 1]");
  if (p.iteration < 1) return invalid_argument(o + ": iteration must be >= 1, got " + std::to_string(p.iteration));
  if (p.warmup_iters < 0) return invalid_argument(o + ": warmup_iters must be >= 0");
  if (p.quirks != PowerQuirks::Official && p.quirks != PowerQuirks::Paper)
    return invalid_argument(o + ": quirks must be 0 (official) or 1 (paper)");
  if (p.C > 0 && (!p.weight || !p.bias || !p.running_phi || !p.x2 || !p.denom || !p.new_running_phi))
    return invalid_argument(o + ": a per-channel pointer is null");
  if (M > 0 && (!p.group_rstd || (p.C > 0 && (!p.y || !p.workspace))))
    return invalid_argument(o + ": y, group_rstd or workspace is null");
  return Status::OK();
}

Status check_bwd(const PowerNormBwdParams& p) {
  const char* op = "power_norm_backward";
  const std::string o(op);
  const int64_t M = p.T * p.B;
  Status s = shape_checks(op, p.T, p.B, p.C, p.group_num, p.x_dtype, p.x, p.x_stride, M);
  if (!s.ok()) return s;
  if (!(s = eps_check(op, "eps", p.eps)).ok()) return s;
  if (!(p.alpha_bkw >= 0 && p.alpha_bkw <= 1)) return invalid_argument(o + ": alpha_bkw must be in [0, 1]");
  if (p.quirks != PowerQuirks::Official && p.quirks != PowerQuirks::Paper)
    return invalid_argument(o + ": quirks must be 0 (official) or 1 (paper)");
  if (M > 1 && p.dy_stride < p.C) return invalid_argument(o + ": dy row stride is smaller than C");
  if (p.C > 0 && (!p.weight || !p.ema_gz || !p.x2 || !p.denom || !p.new_ema_gz))
    return invalid_argument(o + ": a per-channel pointer is null");
  if (M > 0 && p.C > 0 && (!p.dy || !p.group_rstd || !p.workspace))
    return invalid_argument(o + ": dy, group_rstd or workspace is null");
  return Status::OK();
}

Status check_eval(const PowerNormEvalParams& p) {
  const char* op = "power_norm_eval";
  const std::string o(op);
  if (p.rows < 0) return invalid_argument(o + ": rows must be >= 0");
  Status s = shape_checks(op, p.rows, 1, p.C, p.group_num, p.x_dtype, p.x, p.x_stride, p.rows);
  if (!s.ok()) return s;
  if (!(s = eps_check(op, "eps", p.eps)).ok()) return s;
  if (!(s = eps_check(op, "group_eps", p.group_eps)).ok()) return s;
  if (p.C > 0 && (!p.weight || !p.bias || !p.running_phi)) return invalid_argument(o + ": a per-channel pointer is null");
  if (p.rows > 0 && p.C > 0 && !p.y) return invalid_argument(o + ": y is null");
  return Status::OK();
}

}  // namespace detail_power

size_t power_norm_fwd_workspace_bytes(const PowerNormParams& p) {
  const int64_t M = p.T * p.B;
  return static_cast<size_t>(num_blocks(M, p.C) * std::max<int64_t>(p.C, 0)) * acc_size(p.x_dtype);
}
size_t power_norm_bwd_workspace_bytes(const PowerNormBwdParams& p) {
  const int64_t M = p.T * p.B;
  return static_cast<size_t>(4 * num_blocks(M, p.C) * std::max<int64_t>(p.C, 0)) * acc_size(p.x_dtype);
}

Status power_norm_fwd(const PowerNormParams& p) {
  Status s = detail_power::check_fwd(p);
  if (!s.ok()) return s;
  dispatch<Fwd>(p.x_dtype, p);
  return Status::OK();
}

Status power_norm_bwd(const PowerNormBwdParams& p) {
  Status s = detail_power::check_bwd(p);
  if (!s.ok()) return s;
  dispatch<Bwd>(p.x_dtype, p);
  return Status::OK();
}

Status power_norm_eval(const PowerNormEvalParams& p) {
  Status s = detail_power::check_eval(p);
  if (!s.ok()) return s;
  dispatch<Eval>(p.x_dtype, p);
  return Status::OK();
}

}  // namespace norm
}  // namespace fastnorm

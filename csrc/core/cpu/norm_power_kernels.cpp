// PowerNorm CPU kernels, compiled once per ISA (FASTNORM_ISA = baseline | avx2, see core/CMakeLists.txt);
// norm_power.cpp validates arguments and picks the build at run time. Plan and math: norm_power.cpp's header
// comment and norm_power.h.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/norm_power_math.h"
#include "norm_power_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

namespace fastnorm {
namespace norm {
namespace FASTNORM_ISA {
namespace {

namespace pm = power_math;
using fastnorm::detail::load_as;
using fastnorm::detail::store_from;
using power_kernels::num_blocks;
using power_kernels::rows_per_block;

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
        // The P-membership test is hoisted out of the channel loop (two copies of the loop), so the loop
        // has no conditional stores and vectorises.
        auto group_pass = [&](auto with_p) -> A {
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
            if constexpr (decltype(with_p)::value) {
              s_gz[c] += d * z;
              s_zz[c] += z * z;
            }
          }
          return dot;
        };
        const A dot = in_p ? group_pass(std::true_type{}) : group_pass(std::false_type{});
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

void power_fwd(const PowerNormParams& p) { dispatch<Fwd>(p.x_dtype, p); }
void power_bwd(const PowerNormBwdParams& p) { dispatch<Bwd>(p.x_dtype, p); }
void power_eval(const PowerNormEvalParams& p) { dispatch<Eval>(p.x_dtype, p); }

}  // namespace FASTNORM_ISA
}  // namespace norm
}  // namespace fastnorm

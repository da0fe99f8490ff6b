// CPU kernels of test-time alpha-BN (specs/norm.md §3.8), built twice (FASTNORM_ISA = baseline | avx2).
//
// Statistics are reduced per channel in two levels with a fixed order: per slot (NCHW: one sample's plane
// of S contiguous elements; NHWC: a chunk of abn_rows_per_chunk rows of C channels) in fp32 (fp64 for
// fp64 x), then over the slots in slot order in double. The forward forms per-slot two-pass moments
// (mean, sum of squared deviations) from cache and merges them with Chan's formula, so x is read twice in
// all (statistics, y). The backward forms per-slot sums of dy, dy*(x - mu), (x - mu) (mu the saved mean),
// then writes dx = k_dy*dy + k0 + k_x*(x - mu_b) with per-channel coefficients from norm_alpha_bn_math.h.
// OpenMP runs over slots (statistics) and planes/rows (elementwise passes).
#include <omp.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/norm_alpha_bn_math.h"
#include "fastnorm/norm.h"
#include "norm_alpha_bn_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

namespace fastnorm {
namespace norm {
namespace FASTNORM_ISA {
namespace {

#include "norm_rows.h"

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A [C] vector widened to double (or `fill` when absent).
std::vector<double> channel_vector(const void* src, DType t, int64_t c, double fill) {
  std::vector<double> v(static_cast<size_t>(c), fill);
  if (src != nullptr) {
    const double* w = load_row<double>(src, t, c, v.data());
    if (w != v.data()) std::copy(w, w + c, v.begin());
  }
  return v;
}

// Per-channel batch mean and M2 (sum of squared deviations) of x; NaN for an empty batch.
template <typename A>
void batch_moments(const AlphaBatchNormParams& p, double* ws, std::vector<double>& mu_b, std::vector<double>& m2_b) {
  const int64_t N = p.batch, C = p.channels, S = p.spatial;
  const int64_t slots = abn_slots(N, C, S, p.channels_last);
  mu_b.assign(static_cast<size_t>(C), kNaN);
  m2_b.assign(static_cast<size_t>(C), kNaN);
  if (N * S == 0 || C == 0) return;
  double* wmean = ws;                 // [slots][C]
  double* wm2 = ws + slots * C;       // [slots][C]
  double* wcnt = ws + 2 * slots * C;  // [slots] (NHWC chunk sizes)
  const int64_t esz = static_cast<int64_t>(dtype_size(p.x_dtype));
  if (!p.channels_last) {
#pragma omp parallel if (N * C * S > kParallelMin)
    {
      std::vector<A> buf(S);
#pragma omp for schedule(static)
      for (int64_t q = 0; q < N * C; ++q) {
        const A* x = load_row<A>(static_cast<const char*>(p.x) + q * S * esz, p.x_dtype, S, buf.data());
        const double mean = blocked_sum<A>(S, [&](int64_t i) { return x[i]; }) / static_cast<double>(S);
        const A ma = static_cast<A>(mean);
        const double m2 = blocked_sum<A>(S, [&](int64_t i) { return (x[i] - ma) * (x[i] - ma); });
        // Deviations were taken about ma (mean rounded to A): correct M2 to the exact slot mean.
        const double dm = mean - static_cast<double>(ma);
        const int64_t b = q / C, c = q % C;
        wmean[b * C + c] = mean;
        wm2[b * C + c] = m2 - static_cast<double>(S) * dm * dm;
      }
    }
    for (int64_t b = 0; b < N; ++b) wcnt[b] = static_cast<double>(S);
  } else {
    const int64_t M = N * S, R = abn_rows_per_chunk(C);
#pragma omp parallel if (M * C > kParallelMin)
    {
      std::vector<A> buf(R * C), acc(C), ma(C);
#pragma omp for schedule(static)
      for (int64_t k = 0; k < slots; ++k) {
        const int64_t r0 = k * R, r1 = std::min(M, r0 + R), cnt = r1 - r0;
        // Widen the chunk once (a no-op view for A-typed x), then two passes over it from cache.
        const A* rows[64];
        for (int64_t r = r0; r < r1; ++r)
          rows[r - r0] = load_row<A>(static_cast<const char*>(p.x) + r * C * esz, p.x_dtype, C,
                                     buf.data() + (r - r0) * C);
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t j = 0; j < cnt; ++j) {
          const A* x = rows[j];
          A* a = acc.data();
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) a[c] += x[c];
        }
        for (int64_t c = 0; c < C; ++c) {
          const double mean = static_cast<double>(acc[c]) / static_cast<double>(cnt);
          wmean[k * C + c] = mean;
          ma[c] = static_cast<A>(mean);
        }
        std::fill(acc.begin(), acc.end(), A(0));
        for (int64_t j = 0; j < cnt; ++j) {
          const A* x = rows[j];
          A* a = acc.data();
          const A* m = ma.data();
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) a[c] += (x[c] - m[c]) * (x[c] - m[c]);
        }
        for (int64_t c = 0; c < C; ++c) {
          const double dm = wmean[k * C + c] - static_cast<double>(ma[c]);
          wm2[k * C + c] = static_cast<double>(acc[c]) - static_cast<double>(cnt) * dm * dm;
        }
        wcnt[k] = static_cast<double>(cnt);
      }
    }
  }
  // Chan's merge of the slots in slot order.
  for (int64_t c = 0; c < C; ++c) {
    double n = 0, mean = 0, m2 = 0;
    for (int64_t k = 0; k < slots; ++k) {
      const double nk = wcnt[k], mk = wmean[k * C + c], m2k = wm2[k * C + c];
      const double nn = n + nk, delta = mk - mean, wk = nk / nn;
      mean += delta * wk;
      m2 += m2k + delta * delta * n * wk;
      n = nn;
    }
    mu_b[c] = mean;
    m2_b[c] = m2;
  }
}

template <typename A>
void abn_fwd(const AlphaBatchNormParams& p, void* workspace) {
  const int64_t N = p.batch, C = p.channels, S = p.spatial, n = N * S;
  const double a = p.alpha_source;
  const std::vector<double> rm = channel_vector(p.running_mean, p.running_dtype, C, 0.0);
  const std::vector<double> rv = channel_vector(p.running_var, p.running_dtype, C, 1.0);
  std::vector<double> mu_b, m2_b;
  if (a != 1.0) batch_moments<A>(p, static_cast<double*>(workspace), mu_b, m2_b);
  const std::vector<double> gamma = channel_vector(p.weight, p.w_dtype, C, 1.0);
  const std::vector<double> beta = channel_vector(p.bias, p.w_dtype, C, 0.0);
  std::vector<A> mu(C), rs(C), g(C), bt(C);
  for (int64_t c = 0; c < C; ++c) {
    const double var_b = a != 1.0 ? detail::abn_batch_var(m2_b[c], n, p.unbiased_batch_var) : 0.0;
    const double m = detail::abn_mix(a, rm[c], a != 1.0 ? mu_b[c] : 0.0);
    const double v = detail::abn_mix(a, rv[c], var_b);
    mu[c] = static_cast<A>(m);
    rs[c] = static_cast<A>(detail::abn_rstd(v, p.eps));
    g[c] = static_cast<A>(gamma[c]);
    bt[c] = static_cast<A>(beta[c]);
    if (p.mean) static_cast<A*>(p.mean)[c] = mu[c];
    if (p.rstd) static_cast<A*>(p.rstd)[c] = rs[c];
  }
  if (n * C == 0) return;
  const int64_t esz = static_cast<int64_t>(dtype_size(p.x_dtype)), ysz = static_cast<int64_t>(dtype_size(p.y_dtype));
  if (!p.channels_last) {
#pragma omp parallel if (N * C * S > kParallelMin)
    {
      std::vector<A> buf(S), tmp(S);
#pragma omp for schedule(static)
      for (int64_t q = 0; q < N * C; ++q) {
        const int64_t c = q % C;
        const A* x = load_row<A>(static_cast<const char*>(p.x) + q * S * esz, p.x_dtype, S, buf.data());
        const A m = mu[c], r = rs[c], gg = g[c], bb = bt[c];
        emit_row<A>(static_cast<char*>(p.y) + q * S * ysz, p.y_dtype, S, tmp.data(),
                    [&](int64_t i) { return (x[i] - m) * r * gg + bb; });
      }
    }
  } else {
#pragma omp parallel if (N * C * S > kParallelMin)
    {
      std::vector<A> buf(C), tmp(C);
      const A* m = mu.data();
      const A* r = rs.data();
      const A* gg = g.data();
      const A* bb = bt.data();
#pragma omp for schedule(static)
      for (int64_t row = 0; row < n; ++row) {
        const A* x = load_row<A>(static_cast<const char*>(p.x) + row * C * esz, p.x_dtype, C, buf.data());
        emit_row<A>(static_cast<char*>(p.y) + row * C * ysz, p.y_dtype, C, tmp.data(),
                    [&](int64_t c) { return (x[c] - m[c]) * r[c] * gg[c] + bb[c]; });
      }
    }
  }
}

template <typename A>
void abn_bwd(const AlphaBatchNormBwdParams& p) {
  const int64_t N = p.batch, C = p.channels, S = p.spatial, n = N * S;
  const double a = p.alpha_source;
  const bool need_batch = a != 1.0;
  const bool need_sums = need_batch || p.dweight != nullptr || p.dbias != nullptr;
  const A* mu = static_cast<const A*>(p.mean);
  const A* rs = static_cast<const A*>(p.rstd);
  const std::vector<double> gamma = channel_vector(p.weight, p.w_dtype, C, 1.0);
  std::vector<double> sdy(C, 0.0), sdyxc(C, 0.0), sxc(C, 0.0);
  const int64_t esz = static_cast<int64_t>(dtype_size(p.x_dtype)), dsz = static_cast<int64_t>(dtype_size(p.dy_dtype));
  if (need_sums && n * C > 0) {
    const int64_t slots = abn_slots(N, C, S, p.channels_last);
    double* ws = static_cast<double*>(p.workspace);  // [3][slots][C]
    if (!p.channels_last) {
#pragma omp parallel if (N * C * S > kParallelMin)
      {
        std::vector<A> xb(S), db(S);
#pragma omp for schedule(static)
        for (int64_t q = 0; q < N * C; ++q) {
          const int64_t b = q / C, c = q % C;
          const A* x = load_row<A>(static_cast<const char*>(p.x) + q * S * esz, p.x_dtype, S, xb.data());
          const A* dy = load_row<A>(static_cast<const char*>(p.dy) + q * S * dsz, p.dy_dtype, S, db.data());
          const A m = mu[c];
          double s[3];
          blocked_sums<3, A>(S, [&](int64_t i, A (&t)[3]) {
            const A xc = x[i] - m;
            t[0] = dy[i];
            t[1] = dy[i] * xc;
            t[2] = xc;
          }, s);
          for (int k = 0; k < 3; ++k) ws[(k * slots + b) * C + c] = s[k];
        }
      }
    } else {
      const int64_t R = abn_rows_per_chunk(C);
#pragma omp parallel if (N * C * S > kParallelMin)
      {
        std::vector<A> xb(C), db(C), a0(C), a1(C), a2(C);
#pragma omp for schedule(static)
        for (int64_t k = 0; k < slots; ++k) {
          const int64_t r0 = k * R, r1 = std::min(n, r0 + R);
          std::fill(a0.begin(), a0.end(), A(0));
          std::fill(a1.begin(), a1.end(), A(0));
          std::fill(a2.begin(), a2.end(), A(0));
          for (int64_t r = r0; r < r1; ++r) {
            const A* x = load_row<A>(static_cast<const char*>(p.x) + r * C * esz, p.x_dtype, C, xb.data());
            const A* dy = load_row<A>(static_cast<const char*>(p.dy) + r * C * dsz, p.dy_dtype, C, db.data());
            A* s0 = a0.data();
            A* s1 = a1.data();
            A* s2 = a2.data();
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const A xc = x[c] - mu[c];
              s0[c] += dy[c];
              s1[c] += dy[c] * xc;
              s2[c] += xc;
            }
          }
          for (int64_t c = 0; c < C; ++c) {
            ws[(0 * slots + k) * C + c] = a0[c];
            ws[(1 * slots + k) * C + c] = a1[c];
            ws[(2 * slots + k) * C + c] = a2[c];
          }
        }
      }
    }
    for (int64_t k = 0; k < slots; ++k)  // slot order: deterministic
      for (int64_t c = 0; c < C; ++c) {
        sdy[c] += ws[(0 * slots + k) * C + c];
        sdyxc[c] += ws[(1 * slots + k) * C + c];
        sxc[c] += ws[(2 * slots + k) * C + c];
      }
  }
  std::vector<double> dw(C), dbv(C);
  std::vector<A> kdy(C), k0(C), kx(C), mub(C);
  for (int64_t c = 0; c < C; ++c) {
    const double r = static_cast<double>(rs[c]);
    const double sdyxh = n > 0 ? r * sdyxc[c] : 0.0;  // an empty sum is 0, even where rstd is NaN
    dw[c] = sdyxh;
    dbv[c] = sdy[c];
    const detail::AbnBwdCoef k = detail::abn_bwd_coef(a, p.unbiased_batch_var, gamma[c], r, sdy[c], sdyxh, n);
    kdy[c] = static_cast<A>(k.k_dy);
    k0[c] = static_cast<A>(k.k0);
    kx[c] = static_cast<A>(k.k_x);
    mub[c] = need_batch ? static_cast<A>(static_cast<double>(mu[c]) + sxc[c] / static_cast<double>(n)) : A(0);
  }
  if (p.dweight) store_row<double>(p.dweight, p.w_dtype, C, dw.data());
  if (p.dbias) store_row<double>(p.dbias, p.w_dtype, C, dbv.data());
  if (p.dx == nullptr || n * C == 0) return;
  const int64_t xsz = static_cast<int64_t>(dtype_size(p.dx_dtype));
  if (!p.channels_last) {
#pragma omp parallel if (N * C * S > kParallelMin)
    {
      std::vector<A> xb(S), db(S), tmp(S);
#pragma omp for schedule(static)
      for (int64_t q = 0; q < N * C; ++q) {
        const int64_t c = q % C;
        const A* dy = load_row<A>(static_cast<const char*>(p.dy) + q * S * dsz, p.dy_dtype, S, db.data());
        char* out = static_cast<char*>(p.dx) + q * S * xsz;
        const A a_dy = kdy[c], a_0 = k0[c], a_x = kx[c], m = mub[c];
        if (!need_batch) {
          emit_row<A>(out, p.dx_dtype, S, tmp.data(), [&](int64_t i) { return a_dy * dy[i]; });
          continue;
        }
        const A* x = load_row<A>(static_cast<const char*>(p.x) + q * S * esz, p.x_dtype, S, xb.data());
        emit_row<A>(out, p.dx_dtype, S, tmp.data(), [&](int64_t i) { return a_dy * dy[i] + a_0 + a_x * (x[i] - m); });
      }
    }
  } else {
#pragma omp parallel if (N * C * S > kParallelMin)
    {
      std::vector<A> xb(C), db(C), tmp(C);
      const A* a_dy = kdy.data();
      const A* a_0 = k0.data();
      const A* a_x = kx.data();
      const A* m = mub.data();
#pragma omp for schedule(static)
      for (int64_t r = 0; r < n; ++r) {
        const A* dy = load_row<A>(static_cast<const char*>(p.dy) + r * C * dsz, p.dy_dtype, C, db.data());
        char* out = static_cast<char*>(p.dx) + r * C * xsz;
        if (!need_batch) {
          emit_row<A>(out, p.dx_dtype, C, tmp.data(), [&](int64_t c) { return a_dy[c] * dy[c]; });
          continue;
        }
        const A* x = load_row<A>(static_cast<const char*>(p.x) + r * C * esz, p.x_dtype, C, xb.data());
        emit_row<A>(out, p.dx_dtype, C, tmp.data(),
                    [&](int64_t c) { return a_dy[c] * dy[c] + a_0[c] + a_x[c] * (x[c] - m[c]); });
      }
    }
  }
}

}  // namespace

// Accumulation type: double for float64 inputs, float otherwise.
Status alpha_batch_norm_fwd(const AlphaBatchNormParams& p, void* workspace) {
  if (p.x_dtype == DType::Float64) abn_fwd<double>(p, workspace); else abn_fwd<float>(p, workspace);
  return Status::OK();
}
Status alpha_batch_norm_bwd(const AlphaBatchNormBwdParams& p) {
  if (p.x_dtype == DType::Float64) abn_bwd<double>(p); else abn_bwd<float>(p);
  return Status::OK();
}

}  // namespace FASTNORM_ISA
}  // namespace norm
}  // namespace fastnorm

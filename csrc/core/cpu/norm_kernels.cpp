// CPU kernels of LayerNorm / RMSNorm and their add & norm forms (specs/norm.md §3.1-3.3).
//
// Built twice (FASTNORM_ISA = baseline | avx2); norm.cpp validates arguments and picks the build.
// Plan: OpenMP over rows (forward) or over fixed row blocks (backward). Each row is read from memory
// once: 16-bit rows are widened into a per-thread fp32 buffer that then stays in L1/L2 for the second
// pass; fp32/fp64 rows are used in place. Reductions (blocked_sum) use `omp simd reduction`, whose order is fixed at
// compile time, so results do not depend on the thread count.
#include <omp.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastnorm/detail/norm_math.h"
#include "norm_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

namespace fastnorm {
namespace norm {
namespace FASTNORM_ISA {
namespace {

// Row I/O, blocked sums, affine vectors, the block partition and the partial reduction (shared with the
// per-op kernel files).
#include "norm_rows.h"

// Writes a row of the input gradient: dx(i), plus d(residual_out) when the add & norm output was used
// (added after the norm backward, before the one rounding to dx's dtype; specs/norm.md §3.3).
template <typename A, typename P, typename F>
void emit_dx(const P& p, int64_t r, char* dxrow, A* rbuf, A* tmp, F dx) {
  const int64_t n = p.cols;
  if (p.dresidual_out == nullptr) {
    emit_row<A>(dxrow, p.dx_dtype, n, tmp, dx);
    return;
  }
  const A* dr = load_row<A>(at(p.dresidual_out, r, p.dresidual_out_stride, p.dresidual_out_dtype),
                            p.dresidual_out_dtype, n, rbuf);
  emit_row<A>(dxrow, p.dx_dtype, n, tmp, [&](int64_t i) { return dx(i) + dr[i]; });
}

// Add & norm prologue: s = x + residual in A, rounded to the residual_out dtype, stored, and returned
// (the norm is applied to the stored s). Plain mode returns x.
template <typename A, typename P>
const A* input_row(const P& p, int64_t r, A* buf, A* tmp) {
  const A* xv = load_row<A>(at(p.x, r, p.x_stride, p.x_dtype), p.x_dtype, p.cols, buf);
  if (p.residual_out == nullptr) return xv;
  const int64_t n = p.cols;
  if (p.residual != nullptr) {
    const A* rv = load_row<A>(at(p.residual, r, p.residual_stride, p.residual_dtype), p.residual_dtype, n, tmp);
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) buf[i] = xv[i] + rv[i];
  } else if (xv != buf) {
    std::copy(xv, xv + n, buf);
  }
  if (p.residual_out_dtype == DType::BFloat16 || p.residual_out_dtype == DType::Float16) {
    const DType rt = p.residual_out_dtype;
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(round_to(rt, static_cast<float>(buf[i])));
  }
  store_row<A>(at(p.residual_out, r, n, p.residual_out_dtype), p.residual_out_dtype, n, buf);
  return buf;
}


// ---- LayerNorm ---------------------------------------------------------------------------------------
template <typename A>
void ln_fwd(const LayerNormParams& p) {
  const int64_t m = p.rows, n = p.cols;
  const std::vector<A> gamma = affine_vector<A>(p.weight, p.w_dtype, n, A(1));
  const std::vector<A> beta = affine_vector<A>(p.bias, p.w_dtype, n, A(0));
  A* mean_out = static_cast<A*>(p.mean);
  A* rstd_out = static_cast<A*>(p.rstd);
#pragma omp parallel if (m * n > kParallelMin)
  {
    std::vector<A> buf(n), tmp(n);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; ++r) {
      const A* x = input_row<A>(p, r, buf.data(), tmp.data());
      // Two passes over the cached row: the mean, then the variance about it. (No "corrected two-pass"
      // term: when |x| >> |mean| the roundings of x - mean are correlated and the correction adds error.)
      const A mean = static_cast<A>(blocked_sum<A>(n, [&](int64_t i) { return x[i]; }) / static_cast<double>(n));
      const double s2 = blocked_sum<A>(n, [&](int64_t i) { return (x[i] - mean) * (x[i] - mean); });
      const A rstd = detail::rstd_from<A>(detail::variance(s2, n), p.eps);
      if (mean_out) mean_out[r] = mean;
      if (rstd_out) rstd_out[r] = rstd;
      char* yrow = at(p.y, r, n, p.y_dtype);
      const A* g = gamma.data();
      const A* b = beta.data();
      emit_row<A>(yrow, p.y_dtype, n, tmp.data(), [&](int64_t i) { return detail::ln_y(x[i], mean, rstd, g[i], b[i]); });
    }
  }
}

// One pass over a cached row of the LayerNorm backward: the row sums of g = dy*gamma and g*xhat (blocked,
// as blocked_sum2) fused with the weight-gradient partials pw += dy*xhat, pb += dy.
template <typename A, bool kW, bool kB>
void ln_bwd_row_pass_impl(const A* x, const A* dy, const A* g, A mean, A rstd, int64_t n, A* pw, A* pb,
                          double& sg, double& sgx) {
  double tg = 0, tgx = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    A s1[kLanes] = {}, s2[kLanes] = {};
    const auto term = [&](int64_t i, int64_t lane) {
      const A xh = (x[i] - mean) * rstd;
      const A gi = dy[i] * g[i];
      s1[lane] += gi;
      s2[lane] += gi * xh;
      if constexpr (kW) pw[i] += dy[i] * xh;
      if constexpr (kB) pb[i] += dy[i];
    };
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) term(i + j, j);
    }
    for (; i < e; ++i) term(i, (i - b) % kLanes);
    for (int64_t j = 0; j < kLanes; ++j) {  // lanes meet in double
      tg += static_cast<double>(s1[j]);
      tgx += static_cast<double>(s2[j]);
    }
  }
  sg = tg;
  sgx = tgx;
}

template <typename A>
void ln_bwd_row_pass(const A* x, const A* dy, const A* g, A mean, A rstd, int64_t n, A* pw, A* pb, double& sg,
                     double& sgx) {
  if (pw && pb) ln_bwd_row_pass_impl<A, true, true>(x, dy, g, mean, rstd, n, pw, pb, sg, sgx);
  else if (pw) ln_bwd_row_pass_impl<A, true, false>(x, dy, g, mean, rstd, n, pw, pb, sg, sgx);
  else if (pb) ln_bwd_row_pass_impl<A, false, true>(x, dy, g, mean, rstd, n, pw, pb, sg, sgx);
  else ln_bwd_row_pass_impl<A, false, false>(x, dy, g, mean, rstd, n, pw, pb, sg, sgx);
}

template <typename A>
void ln_bwd(const LayerNormBwdParams& p) {
  if (zero_grads_if_no_rows<A>(p)) return;
  const int64_t m = p.rows, n = p.cols;
  const std::vector<A> gamma = affine_vector<A>(p.weight, p.w_dtype, n, A(1));
  const A* mean_in = static_cast<const A*>(p.mean);
  const A* rstd_in = static_cast<const A*>(p.rstd);
  const bool need_w = p.dweight != nullptr, need_b = p.dbias != nullptr;
  const int64_t nb = bwd_num_blocks(m, n);
  A* part_w = static_cast<A*>(p.workspace);
  A* part_b = part_w + (need_w ? nb * n : 0);
  const double dn = static_cast<double>(n);
#pragma omp parallel if (m * n > kParallelMin)
  {
    std::vector<A> xbuf(n), dybuf(n), rbuf(n), tmp(n);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      A* pw = need_w ? part_w + blk * n : nullptr;
      A* pb = need_b ? part_b + blk * n : nullptr;
      if (pw) std::fill(pw, pw + n, A(0));
      if (pb) std::fill(pb, pb + n, A(0));
      for (int64_t r = block_begin(blk, nb, m); r < block_begin(blk + 1, nb, m); ++r) {
        const A* x = load_row<A>(at(p.x, r, p.x_stride, p.x_dtype), p.x_dtype, n, xbuf.data());
        const A* dy = load_row<A>(at(p.dy, r, p.dy_stride, p.dy_dtype), p.dy_dtype, n, dybuf.data());
        const A mean = mean_in[r], rstd = rstd_in[r];
        const A* g = gamma.data();
        double sg, sgx;
        ln_bwd_row_pass<A>(x, dy, g, mean, rstd, n, pw, pb, sg, sgx);
        if (p.dx == nullptr) continue;
        const A mg = static_cast<A>(sg / dn), mgx = static_cast<A>(sgx / dn);
        char* dxrow = at(p.dx, r, n, p.dx_dtype);
        const auto dx = [&](int64_t i) { return detail::ln_dx(dy[i] * g[i], (x[i] - mean) * rstd, rstd, mg, mgx); };
        emit_dx<A>(p, r, dxrow, rbuf.data(), tmp.data(), dx);
      }
    }
  }
  reduce_partials<A>(part_w, p.dweight, part_b, p.dbias, nb, n, p.w_dtype);
}

// ---- RMSNorm -----------------------------------------------------------------------------------------
template <typename A>
void rms_fwd(const RMSNormParams& p) {
  const int64_t m = p.rows, n = p.cols;
  const Casting c = p.casting;
  // In add & norm the normalised tensor is the stored sum, so its dtype is the one rounded to.
  const DType xd = p.residual_out != nullptr ? p.residual_out_dtype : p.x_dtype;
  std::vector<A> gamma = affine_vector<A>(p.weight, p.w_dtype, n, A(1));
  if (p.weight != nullptr)
    for (auto& g : gamma) g = detail::rms_gamma<A>(g, static_cast<A>(p.offset), c, xd);
  const std::vector<A> beta = affine_vector<A>(p.bias, p.w_dtype, n, A(0));
  A* rstd_out = static_cast<A*>(p.rstd);
#pragma omp parallel if (m * n > kParallelMin)
  {
    std::vector<A> buf(n), tmp(n);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; ++r) {
      const A* x = input_row<A>(p, r, buf.data(), tmp.data());
      const double ss = blocked_sum<A>(n, [&](int64_t i) { return x[i] * x[i]; });
      const A rstd = detail::rms_saved_rstd<A>(detail::rstd_from<A>(detail::mean_square(ss, n), p.eps), c, xd);
      if (rstd_out) rstd_out[r] = rstd;
      char* yrow = at(p.y, r, n, p.y_dtype);
      const A* g = gamma.data();
      const A* b = beta.data();
      if (c == Casting::Gemma || xd == DType::Float32 || xd == DType::Float64) {
        emit_row<A>(yrow, p.y_dtype, n, tmp.data(), [&](int64_t i) { return detail::rms_y(x[i] * rstd, g[i], b[i]); });
      } else {
        emit_row<A>(yrow, p.y_dtype, n, tmp.data(),
                    [&](int64_t i) { return detail::rms_y(detail::rms_xhat_fwd(x[i], rstd, c, xd), g[i], b[i]); });
      }
    }
  }
}

template <typename A>
void rms_bwd(const RMSNormBwdParams& p) {
  if (zero_grads_if_no_rows<A>(p)) return;
  const int64_t m = p.rows, n = p.cols;
  const Casting c = p.casting;
  const DType xd = p.x_dtype, yd = p.y_dtype;
  // Rounding only matters where x is 16-bit; the plain loops are the fp32 rule.
  const bool exact = c == Casting::Gemma || xd == DType::Float32 || xd == DType::Float64;
  std::vector<A> gamma = affine_vector<A>(p.weight, p.w_dtype, n, A(1));
  if (p.weight != nullptr)
    for (auto& g : gamma) g = detail::rms_gamma<A>(g, static_cast<A>(p.offset), c, xd);
  const A* rstd_in = static_cast<const A*>(p.rstd);
  const bool need_w = p.dweight != nullptr, need_b = p.dbias != nullptr;
  const int64_t nb = bwd_num_blocks(m, n);
  A* part_w = static_cast<A*>(p.workspace);
  A* part_b = part_w + (need_w ? nb * n : 0);
  const double dn = static_cast<double>(n);
#pragma omp parallel if (m * n > kParallelMin)
  {
    std::vector<A> xbuf(n), dybuf(n), rbuf(n), tmp(n), gbuf(n), xhbuf(n);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      A* pw = need_w ? part_w + blk * n : nullptr;
      A* pb = need_b ? part_b + blk * n : nullptr;
      if (pw) std::fill(pw, pw + n, A(0));
      if (pb) std::fill(pb, pb + n, A(0));
      for (int64_t r = block_begin(blk, nb, m); r < block_begin(blk + 1, nb, m); ++r) {
        const A* x = load_row<A>(at(p.x, r, p.x_stride, xd), xd, n, xbuf.data());
        const A* dy = load_row<A>(at(p.dy, r, p.dy_stride, p.dy_dtype), p.dy_dtype, n, dybuf.data());
        const A rstd = rstd_in[r];
        const A* g = gamma.data();
        double sgx;
        if (exact) {
          // The LayerNorm pass with mean 0 (x - 0 == x exactly): sum(g*xhat) and both partials in one pass.
          double sg_unused;
          ln_bwd_row_pass<A>(x, dy, g, A(0), rstd, n, pw, pb, sg_unused, sgx);
        } else {
          // 16-bit llama/none: the rounded g and xhat are formed once and kept for dx.
          A* gr = gbuf.data();
          A* xh = xhbuf.data();
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) {
            gr[i] = detail::rms_g<A>(dy[i], g[i], c, xd, yd);
            xh[i] = detail::rms_xhat_bwd<A>(x[i], rstd, c, xd);
          }
          sgx = blocked_sum<A>(n, [&](int64_t i) { return gr[i] * xh[i]; });
          if (pw) {
#pragma omp simd
            for (int64_t i = 0; i < n; ++i) pw[i] += dy[i] * detail::rms_xhat_dw<A>(x[i], rstd, c, xd);
          }
        }
        if (pb && !exact) {
#pragma omp simd
          for (int64_t i = 0; i < n; ++i) pb[i] += dy[i];
        }
        if (p.dx == nullptr) continue;
        const A mgx = static_cast<A>(sgx / dn);
        char* dxrow = at(p.dx, r, n, p.dx_dtype);
        if (exact) {
          const auto dx = [&](int64_t i) { return detail::rms_dx(dy[i] * g[i], x[i] * rstd, rstd, mgx); };
          emit_dx<A>(p, r, dxrow, rbuf.data(), tmp.data(), dx);
        } else {
          const A* gr = gbuf.data();
          const A* xh = xhbuf.data();
          const auto dx = [&](int64_t i) { return detail::rms_dx(gr[i], xh[i], rstd, mgx); };
          emit_dx<A>(p, r, dxrow, rbuf.data(), tmp.data(), dx);
        }
      }
    }
  }
  reduce_partials<A>(part_w, p.dweight, part_b, p.dbias, nb, n, p.w_dtype);
}

}  // namespace

// Accumulation type: double for float64 inputs, float otherwise.
Status layer_norm_fwd(const LayerNormParams& p) {
  if (p.x_dtype == DType::Float64) ln_fwd<double>(p); else ln_fwd<float>(p);
  return Status::OK();
}
Status layer_norm_bwd(const LayerNormBwdParams& p) {
  if (p.x_dtype == DType::Float64) ln_bwd<double>(p); else ln_bwd<float>(p);
  return Status::OK();
}
Status rms_norm_fwd(const RMSNormParams& p) {
  if (p.x_dtype == DType::Float64) rms_fwd<double>(p); else rms_fwd<float>(p);
  return Status::OK();
}
Status rms_norm_bwd(const RMSNormBwdParams& p) {
  if (p.x_dtype == DType::Float64) rms_bwd<double>(p); else rms_bwd<float>(p);
  return Status::OK();
}

}  // namespace FASTNORM_ISA
}  // namespace norm
}  // namespace fastnorm

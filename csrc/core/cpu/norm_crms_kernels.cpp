// CPU kernels of CRMSNorm (specs/norm.md §3.5), built twice (FASTNORM_ISA = baseline | avx2).
//
// The plan of the RMSNorm kernels (norm_kernels.cpp, same row machinery from norm_rows.h): OpenMP over
// rows (forward) or over the fixed row blocks of bwd_num_blocks (backward). One read of each row: 16-bit
// rows are widened into a per-thread buffer that stays in L1/L2 for the second pass. The forward's one
// extra sum (s = sum(x), next to sum(x^2)) is fused into the same pass, so the kernel does the work of an
// RMSNorm of the same width.
#include <omp.h>
#if defined(__F16C__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <type_traits>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/norm_crms_math.h"
#include "fastnorm/norm.h"
#include "norm_crms_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

namespace fastnorm {
namespace norm {
namespace FASTNORM_ISA {
namespace {

#include "norm_rows.h"

// s = sum(x), ss = sum(x^2) in one pass, blocked as blocked_sum (lanes meet in double). Two plain lane
// arrays rather than blocked_sums' generic term array: the compiler keeps both in vector registers.
template <typename A>
void sum_and_sumsq(const A* x, int64_t n, double& s, double& ss) {
  double ts = 0, tss = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    A a1[kLanes] = {}, a2[kLanes] = {};
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) {
        const A v = x[i + j];
        a1[j] += v;
        a2[j] += v * v;
      }
    }
    for (; i < e; ++i) {
      a1[(i - b) % kLanes] += x[i];
      a2[(i - b) % kLanes] += x[i] * x[i];
    }
    for (int64_t j = 0; j < kLanes; ++j) {
      ts += static_cast<double>(a1[j]);
      tss += static_cast<double>(a2[j]);
    }
  }
  s = ts;
  ss = tss;
}

template <typename A>
void crms_fwd(const CRMSNormParams& p) {
  const int64_t m = p.rows, n = p.cols;
  const bool affine = p.weight != nullptr || p.bias != nullptr;
  const std::vector<A> gamma = affine ? affine_vector<A>(p.weight, p.w_dtype, n, A(1)) : std::vector<A>();
  const std::vector<A> beta = affine ? affine_vector<A>(p.bias, p.w_dtype, n, A(0)) : std::vector<A>();
  A* rstd_out = static_cast<A*>(p.rstd);
#pragma omp parallel if (m * n > kParallelMin)
  {
    std::vector<A> buf(n), tmp(n);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < m; ++r) {
      const A* x = load_row<A>(at(p.x, r, p.x_stride, p.x_dtype), p.x_dtype, n, buf.data());
      double s, ss;
      sum_and_sumsq<A>(x, n, s, ss);
      const A rstd = detail::crms_rstd<A>(s, ss, n, p.eps);
      if (rstd_out) rstd_out[r] = rstd;
      char* yrow = at(p.y, r, n, p.y_dtype);
      if (affine) {
        const A* g = gamma.data();
        const A* b = beta.data();
        emit_row<A>(yrow, p.y_dtype, n, tmp.data(), [&](int64_t i) { return x[i] * rstd * g[i] + b[i]; });
      } else {
        emit_row<A>(yrow, p.y_dtype, n, tmp.data(), [&](int64_t i) { return x[i] * rstd; });
      }
    }
  }
}

// One pass over a cached row of the backward: s = sum(x), G = sum(g*x) with g = dy*gamma, fused with the
// weight-gradient partials pw += dy*x*rstd, pb += dy.
template <typename A, bool kW, bool kB>
void crms_bwd_row_pass(const A* x, const A* dy, const A* g, A rstd, int64_t n, A* pw, A* pb, double (&s)[2]) {
  blocked_sums<2, A>(n, [&](int64_t i, A (&t)[2]) {
    t[0] = x[i];
    t[1] = dy[i] * g[i] * x[i];
    if constexpr (kW) pw[i] += dy[i] * (x[i] * rstd);
    if constexpr (kB) pb[i] += dy[i];
  }, s);
}

template <typename A>
void crms_bwd(const CRMSNormBwdParams& p) {
  if (zero_grads_if_no_rows<A>(p)) return;
  const int64_t m = p.rows, n = p.cols;
  const std::vector<A> gamma = affine_vector<A>(p.weight, p.w_dtype, n, A(1));
  const A* rstd_in = static_cast<const A*>(p.rstd);
  const bool need_w = p.dweight != nullptr, need_b = p.dbias != nullptr;
  const int64_t nb = bwd_num_blocks(m, n);
  A* part_w = static_cast<A*>(p.workspace);
  A* part_b = part_w + (need_w ? nb * n : 0);
#pragma omp parallel if (m * n > kParallelMin)
  {
    std::vector<A> xbuf(n), dybuf(n), tmp(n);
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nb; ++blk) {
      A* pw = need_w ? part_w + blk * n : nullptr;
      A* pb = need_b ? part_b + blk * n : nullptr;
      if (pw) std::fill(pw, pw + n, A(0));
      if (pb) std::fill(pb, pb + n, A(0));
      for (int64_t r = block_begin(blk, nb, m); r < block_begin(blk + 1, nb, m); ++r) {
        const A* x = load_row<A>(at(p.x, r, p.x_stride, p.x_dtype), p.x_dtype, n, xbuf.data());
        const A* dy = load_row<A>(at(p.dy, r, p.dy_stride, p.dy_dtype), p.dy_dtype, n, dybuf.data());
        const A rstd = rstd_in[r];
        const A* g = gamma.data();
        double s[2];
        if (pw && pb) crms_bwd_row_pass<A, true, true>(x, dy, g, rstd, n, pw, pb, s);
        else if (pw) crms_bwd_row_pass<A, true, false>(x, dy, g, rstd, n, pw, pb, s);
        else if (pb) crms_bwd_row_pass<A, false, true>(x, dy, g, rstd, n, pw, pb, s);
        else crms_bwd_row_pass<A, false, false>(x, dy, g, rstd, n, pw, pb, s);
        if (p.dx == nullptr) continue;
        const A c = detail::crms_coef<A>(s[1], rstd, n);
        const A sum = static_cast<A>(s[0]);
        emit_row<A>(at(p.dx, r, n, p.dx_dtype), p.dx_dtype, n, tmp.data(),
                    [&](int64_t i) { return detail::crms_dx<A>(dy[i] * g[i], x[i], rstd, c, sum); });
      }
    }
  }
  reduce_partials<A>(part_w, p.dweight, part_b, p.dbias, nb, n, p.w_dtype);
}

}  // namespace

// Accumulation type: double for float64 inputs, float otherwise.
Status crms_norm_fwd(const CRMSNormParams& p) {
  if (p.x_dtype == DType::Float64) crms_fwd<double>(p); else crms_fwd<float>(p);
  return Status::OK();
}
Status crms_norm_bwd(const CRMSNormBwdParams& p) {
  if (p.x_dtype == DType::Float64) crms_bwd<double>(p); else crms_bwd<float>(p);
  return Status::OK();
}

}  // namespace FASTNORM_ISA
}  // namespace norm
}  // namespace fastnorm

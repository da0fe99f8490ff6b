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

using fastnorm::detail::bf16_to_float;
using fastnorm::detail::f16_to_float;
using fastnorm::detail::float_to_bf16;
using fastnorm::detail::float_to_f16;
using fastnorm::detail::round_to;

// ---- row I/O ---------------------------------------------------------------------------------------
// Returns the row as A values: the row itself when its dtype is A, else `buf` after widening.
template <typename A>
const A* load_row(const void* src, DType t, int64_t n, A* buf) {
  switch (t) {
    case DType::Float32: {
      const float* p = static_cast<const float*>(src);
      if constexpr (std::is_same_v<A, float>) return p;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(p[i]);
      return buf;
    }
    case DType::Float64: {
      const double* p = static_cast<const double*>(src);
      if constexpr (std::is_same_v<A, double>) return p;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(p[i]);
      return buf;
    }
    case DType::BFloat16: {
      const uint16_t* p = static_cast<const uint16_t*>(src);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) buf[i] = static_cast<A>(bf16_to_float(p[i]));
      return buf;
    }
    case DType::Float16: {
      const uint16_t* p = static_cast<const uint16_t*>(src);
      int64_t i = 0;
#if defined(__F16C__)
      // The AVX2 build has F16C: 8 conversions per instruction (exact, like the scalar path).
      if constexpr (std::is_same_v<A, float>) {
        for (; i + 8 <= n; i += 8)
          _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i))));
      }
#endif
      for (; i < n; ++i) buf[i] = static_cast<A>(f16_to_float(p[i]));
      return buf;
    }
    default: return buf;  // unreachable: dtypes are validated
  }
}

// Writes n A values to dst in dtype t, rounding to nearest even.
template <typename A>
void store_row(void* dst, DType t, int64_t n, const A* v) {
  switch (t) {
    case DType::Float32: {
      float* p = static_cast<float*>(dst);
      if (static_cast<const void*>(p) == static_cast<const void*>(v)) return;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(v[i]);
      return;
    }
    case DType::Float64: {
      double* p = static_cast<double*>(dst);
      if (static_cast<const void*>(p) == static_cast<const void*>(v)) return;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<double>(v[i]);
      return;
    }
    case DType::BFloat16: {
      uint16_t* p = static_cast<uint16_t*>(dst);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_bf16(static_cast<float>(v[i]));
      return;
    }
    case DType::Float16: {
      uint16_t* p = static_cast<uint16_t*>(dst);
      int64_t i = 0;
#if defined(__F16C__)
      if constexpr (std::is_same_v<A, float>) {
        for (; i + 8 <= n; i += 8)
          _mm_storeu_si128(reinterpret_cast<__m128i*>(p + i),
                           _mm256_cvtps_ph(_mm256_loadu_ps(v + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
      }
#endif
      for (; i < n; ++i) p[i] = float_to_f16(static_cast<float>(v[i]));
      return;
    }
    default: return;
  }
}

// Where the kernel may compute a row straight into the output: when the output dtype is A itself.
template <typename A>
A* direct_out(void* row, DType t, A* tmp) {
  if constexpr (std::is_same_v<A, float>) { if (t == DType::Float32) return static_cast<A*>(row); }
  if constexpr (std::is_same_v<A, double>) { if (t == DType::Float64) return static_cast<A*>(row); }
  return tmp;
}

// Writes f(i), i < n, to a row of dtype t: straight into float/double rows; for bf16 in the same loop
// (the narrowing is a few integer ops that vectorise); otherwise through tmp and store_row.
template <typename A, typename F>
void emit_row(void* dst, DType t, int64_t n, A* tmp, F f) {
  if constexpr (std::is_same_v<A, float>) {
    if (t == DType::BFloat16) {
      uint16_t* p = static_cast<uint16_t*>(dst);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) p[i] = float_to_bf16(f(i));
      return;
    }
  }
  A* y = direct_out<A>(dst, t, tmp);
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] = f(i);
  store_row<A>(dst, t, n, y);
}

inline const char* at(const void* base, int64_t row, int64_t stride, DType t) {
  return static_cast<const char*>(base) + row * stride * static_cast<int64_t>(dtype_size(t));
}
inline char* at(void* base, int64_t row, int64_t stride, DType t) {
  return static_cast<char*>(base) + row * stride * static_cast<int64_t>(dtype_size(t));
}

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

// Blocked summation: each block of kBlock terms is reduced in A over kLanes lanes (16 terms per lane, so
// little rounding), and the lane sums are added in double. As fast as a plain float reduction and, for
// N = 1024, ~30x more accurate (a plain fp32 sum of 1024 terms drifts by ~1e-7 relative).
constexpr int64_t kBlock = 512;

// kLanes independent partial sums: a single vector accumulator would make every reduction wait on the
// add latency (4 cycles per 8 floats); 32 lanes are four AVX2 (or eight SSE) registers in flight.
constexpr int64_t kLanes = 32;

// sum_i f(i) for i < n; f returns A.
template <typename A, typename F>
double blocked_sum(int64_t n, F f) {
  double total = 0;
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t e = std::min(n, b + kBlock);
    A acc[kLanes] = {};
    int64_t i = b;
    for (; i + kLanes <= e; i += kLanes) {
#pragma omp simd
      for (int64_t j = 0; j < kLanes; ++j) acc[j] += f(i + j);
    }
    for (; i < e; ++i) acc[(i - b) % kLanes] += f(i);
    for (int64_t j = 0; j < kLanes; ++j) total += static_cast<double>(acc[j]);  // lanes meet in double
  }
  return total;
}

// gamma (or 1) and beta (or 0) widened once per call.
template <typename A>
std::vector<A> affine_vector(const void* p, DType t, int64_t n, A fill) {
  std::vector<A> out(static_cast<size_t>(n), fill);
  if (p != nullptr) {
    const A* v = load_row<A>(p, t, n, out.data());
    if (v != out.data()) std::copy(v, v + n, out.begin());
  }
  return out;
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

// Below this many elements a fork/join costs more than it saves: run on the calling thread.
constexpr int64_t kParallelMin = 1 << 15;

// Block b of nb covers rows [b*M/nb, (b+1)*M/nb): a partition that depends on (M, N) only.
inline int64_t block_begin(int64_t b, int64_t nb, int64_t m) { return b * m / nb; }

// Second pass of the weight gradients: partial[b][j] summed in block order, rounded once to t. Both
// outputs (dweight, dbias; either may be null) are reduced in one parallel region: one fork/join.
template <typename A>
void reduce_partials(const A* part_w, void* dweight, const A* part_b, void* dbias, int64_t nb, int64_t n, DType t) {
  if (dweight == nullptr && dbias == nullptr) return;
  constexpr int64_t kChunk = 1024;
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  const A* parts[2] = {part_w, part_b};
  void* outs[2] = {dweight, dbias};
#pragma omp parallel if (nb * n > kParallelMin)
  {
    std::vector<A> acc(kChunk);
#pragma omp for schedule(static)
    for (int64_t task = 0; task < 2 * chunks; ++task) {
      const int which = static_cast<int>(task / chunks);
      if (outs[which] == nullptr) continue;
      const int64_t j0 = (task % chunks) * kChunk, len = std::min(kChunk, n - j0);
      std::fill(acc.begin(), acc.begin() + len, A(0));
      for (int64_t b = 0; b < nb; ++b) {
        const A* row = parts[which] + b * n + j0;
#pragma omp simd
        for (int64_t j = 0; j < len; ++j) acc[j] += row[j];
      }
      store_row<A>(static_cast<char*>(outs[which]) + j0 * static_cast<int64_t>(dtype_size(t)), t, len, acc.data());
    }
  }
}

// With no rows the weight gradients are zero (and no workspace is needed).
template <typename A, typename P>
bool zero_grads_if_no_rows(const P& p) {
  if (p.rows != 0) return false;
  const std::vector<A> zeros(static_cast<size_t>(p.cols), A(0));
  if (p.dweight != nullptr) store_row<A>(p.dweight, p.w_dtype, p.cols, zeros.data());
  if (p.dbias != nullptr) store_row<A>(p.dbias, p.w_dtype, p.cols, zeros.data());
  return true;
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

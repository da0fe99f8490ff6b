// CPU Unified Normalization (specs/norm.md §3.7) and channel_affine: validation, the column-sum passes
// (OpenMP over a fixed number of row blocks, so results do not depend on the thread count), the state step
// in double (detail/norm_unified_math.h) and the elementwise passes.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/norm_unified_math.h"
#include "fastnorm/norm_unified.h"

namespace fastnorm {
namespace norm {
namespace {

using fastnorm::detail::load_as;
using fastnorm::detail::store_from;
using detail::load_state;
using detail::store_state;

DType stats_of(DType x) { return x == DType::Float64 ? DType::Float64 : DType::Float32; }

template <typename P>
Status check_common(const P& p, const char* op) {
  const std::string o(op);
  if (p.rows < 0 || p.cols < 0) return invalid_argument(o + ": rows and cols must be >= 0");
  if (!is_float(p.x_dtype)) return unsupported(o + ": x dtype " + dtype_name(p.x_dtype) + " is not a float type");
  if (!is_float(p.w_dtype) || (p.w_dtype == DType::Float64 && p.x_dtype != DType::Float64))
    return unsupported(o + ": weight dtype " + dtype_name(p.w_dtype) + " is not supported with x dtype " +
                       dtype_name(p.x_dtype));
  if (!is_float(p.state_dtype) || (p.state_dtype == DType::Float64 && p.x_dtype != DType::Float64))
    return unsupported(o + ": state dtype " + dtype_name(p.state_dtype) + " is not supported with x dtype " +
                       dtype_name(p.x_dtype));
  if (p.window < 1) return invalid_argument(o + ": window must be >= 1");
  if (p.iteration < 1) return invalid_argument(o + ": iteration must be >= 1");
  if (!(p.eps > 0) || !std::isfinite(p.eps)) return invalid_argument(o + ": eps must be a finite value > 0");
  if (!(p.momentum >= 0 && p.momentum <= 1)) return invalid_argument(o + ": momentum must be in [0, 1]");
  if (p.rows > 0 && p.cols > 0 && p.x == nullptr) return invalid_argument(o + ": x is null");
  if (p.rows > 1 && p.x_stride < p.cols) return invalid_argument(o + ": x row stride is smaller than cols");
  if (p.cols > 0 && p.weight == nullptr) return invalid_argument(o + ": weight is null");
  if (p.workspace == nullptr) return invalid_argument(o + ": workspace is null");
  return Status::OK();
}

// Row block b covers rows [b*M/nb, (b+1)*M/nb).
inline int64_t block_begin(int64_t b, int64_t nb, int64_t m) { return b * m / nb; }

template <typename X> using Acc = typename std::conditional<std::is_same<X, double>::value, double, float>::type;

// ---- forward ----------------------------------------------------------------------------------------
template <typename X>
void fwd_sums(const UnifiedNormParams& p, int64_t nb, double* partial, int64_t* counts) {
  using A = Acc<X>;
  const int64_t m = p.rows, n = p.cols;
  const X* x = static_cast<const X*>(p.x);
#pragma omp parallel for schedule(static) if (m * n > (1 << 15))
  for (int64_t b = 0; b < nb; ++b) {
    std::vector<A> acc(static_cast<size_t>(n), A(0));
    A* a = acc.data();
    int64_t cnt = 0;
    for (int64_t r = block_begin(b, nb, m); r < block_begin(b + 1, nb, m); ++r) {
      if (p.pad_mask != nullptr && p.pad_mask[r]) continue;
      ++cnt;
      const X* xr = x + r * p.x_stride;
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        const A v = load_as<X, A>(xr[c]);
        a[c] += v * v;
      }
    }
    for (int64_t c = 0; c < n; ++c) partial[b * n + c] = static_cast<double>(a[c]);
    counts[b] = cnt;
  }
}

// The state step of the forward (steps 1-5 and the running_var update). Writes the per-channel
// coefficients istd (1/sqrt(var + eps)), gamma and beta as A into `coef` ([3, C]).
template <typename A>
void fwd_state(const UnifiedNormParams& p, int64_t nb, const double* partial, const int64_t* counts, A* coef) {
  const int64_t n = p.cols, L = p.window, t = p.iteration;
  const DType sd = p.state_dtype, st = stats_of(p.x_dtype);
  int64_t nv = 0;
  for (int64_t b = 0; b < nb; ++b) nv += counts[b];
  std::vector<double> q(static_cast<size_t>(n));
  for (int64_t c = 0; c < n; ++c) {
    double s = 0;
    for (int64_t b = 0; b < nb; ++b) s += partial[b * n + c];
    q[c] = s / static_cast<double>(nv);
  }
  const int64_t slot = detail::un_slot(t, L);
  // New buffer: the old one with q in this step's slot.
  for (int64_t i = 0; i < L * n; ++i) store_state(p.new_buffer_x2, sd, i, load_state(p.buffer_x2, sd, i));
  for (int64_t c = 0; c < n; ++c) store_state(p.new_buffer_x2, sd, slot * n + c, q[c]);
  bool skip = L <= 1;
  int64_t counter = p.skip_counter[0];
  if (p.outlier_filtration && t >= p.warmup_iters) {
    // v: unbiased variance of sqrt of every entry of the buffer before insertion (one global scalar).
    const int64_t k = L * n;
    double mean = 0;
    for (int64_t i = 0; i < k; ++i) mean += std::sqrt(load_state(p.buffer_x2, sd, i));
    mean /= static_cast<double>(k);
    double m2 = 0;
    for (int64_t i = 0; i < k; ++i) {
      const double d = std::sqrt(load_state(p.buffer_x2, sd, i)) - mean;
      m2 += d * d;
    }
    const double v = m2 / static_cast<double>(k - 1);
    bool outlier = false;
    for (int64_t c = 0; c < n; ++c) {
      const double am = detail::un_window_mean(p.new_buffer_x2, sd, L, n, c);
      const double gm = detail::un_window_gmean(p.new_buffer_x2, sd, L, n, c);
      outlier = outlier || detail::un_outlier(am, gm, v, L);
    }
    if (outlier) {
      for (int64_t c = 0; c < n; ++c) store_state(p.new_buffer_x2, sd, slot * n + c, load_state(p.running_var, sd, c));
      skip = true;
      ++counter;
    }
  }
  const bool batch = detail::un_use_batch(t, L, p.warmup_iters, skip);
  for (int64_t c = 0; c < n; ++c) {
    const double var = batch ? q[c] : detail::un_window_gmean(p.new_buffer_x2, sd, L, n, c);
    const double rv = load_state(p.running_var, sd, c);
    const double rho = detail::un_rho(var, rv, p.eps, t, p.compensation_start, p.warmup_iters, skip);
    store_state(p.var, st, c, var);
    store_state(p.rho, st, c, rho);
    store_state(p.new_running_var, sd, c, detail::un_ema(rv, var, p.momentum));
    coef[c] = static_cast<A>(detail::un_inv_std(var, p.eps));
    coef[n + c] = static_cast<A>(load_state(p.weight, p.w_dtype, c));
    coef[2 * n + c] = p.bias ? static_cast<A>(load_state(p.bias, p.w_dtype, c)) : A(0);
  }
  p.skip[0] = skip ? 1 : 0;
  p.new_skip_counter[0] = counter;
}

template <typename X>
void fwd_apply(const UnifiedNormParams& p, const Acc<X>* coef) {
  using A = Acc<X>;
  const int64_t m = p.rows, n = p.cols;
  const X* x = static_cast<const X*>(p.x);
  X* y = static_cast<X*>(p.y);
  const A *istd = coef, *g = coef + n, *be = coef + 2 * n;
#pragma omp parallel for schedule(static) if (m * n > (1 << 15))
  for (int64_t r = 0; r < m; ++r) {
    const X* xr = x + r * p.x_stride;
    X* yr = y + r * n;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c) yr[c] = store_from<X, A>(load_as<X, A>(xr[c]) * istd[c] * g[c] + be[c]);
  }
}

template <typename X>
void fwd_typed(const UnifiedNormParams& p) {
  using A = Acc<X>;
  const int64_t nb = unified_norm_num_blocks(p.rows), n = p.cols;
  double* partial = static_cast<double*>(p.workspace);
  int64_t* counts = reinterpret_cast<int64_t*>(partial + nb * n);
  A* coef = reinterpret_cast<A*>(counts + nb);
  fwd_sums<X>(p, nb, partial, counts);
  fwd_state<A>(p, nb, partial, counts, coef);
  fwd_apply<X>(p, coef);
}

// ---- backward ---------------------------------------------------------------------------------------
template <typename X>
void bwd_sums(const UnifiedNormBwdParams& p, int64_t nb, double* partial) {
  using A = Acc<X>;
  const int64_t m = p.rows, n = p.cols;
  const X* x = static_cast<const X*>(p.x);
  const X* dy = static_cast<const X*>(p.dy);
#pragma omp parallel for schedule(static) if (m * n > (1 << 15))
  for (int64_t b = 0; b < nb; ++b) {
    std::vector<A> acc(static_cast<size_t>(2 * n), A(0));
    A *s1 = acc.data(), *s2 = acc.data() + n;
    for (int64_t r = block_begin(b, nb, m); r < block_begin(b + 1, nb, m); ++r) {
      const X* xr = x + r * p.x_stride;
      const X* gr = dy + r * p.dy_stride;
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) {
        const A g = load_as<X, A>(gr[c]);
        s1[c] += g * load_as<X, A>(xr[c]);
        s2[c] += g;
      }
    }
    for (int64_t c = 0; c < n; ++c) {
      partial[(2 * b) * n + c] = static_cast<double>(s1[c]);
      partial[(2 * b + 1) * n + c] = static_cast<double>(s2[c]);
    }
  }
}

// Backward state step; writes dweight, dbias, the new ema_gz/buffer_gz and the coefficients
// [k_g = gamma*rho, k_z = c*istd, istd] as A into `coef` ([3, C]); dx = (dy*k_g - x*k_z)*istd.
template <typename A>
void bwd_state(const UnifiedNormBwdParams& p, int64_t nb, const double* partial, A* coef) {
  const int64_t m = p.rows, n = p.cols, L = p.window, t = p.iteration;
  const DType sd = p.state_dtype, st = stats_of(p.x_dtype);
  const bool skip = p.skip[0] != 0;
  const int64_t slot = detail::un_slot(t, L);
  std::vector<double> gz(static_cast<size_t>(n));
  for (int64_t i = 0; i < L * n; ++i) store_state(p.new_buffer_gz, sd, i, load_state(p.buffer_gz, sd, i));
  for (int64_t c = 0; c < n; ++c) {
    double s1 = 0, s2 = 0;
    for (int64_t b = 0; b < nb; ++b) {
      s1 += partial[(2 * b) * n + c];
      s2 += partial[(2 * b + 1) * n + c];
    }
    const double var = load_state(p.var, st, c), rho = load_state(p.rho, st, c);
    const double istd = detail::un_inv_std(var, p.eps);
    const double w = load_state(p.weight, p.w_dtype, c);
    gz[c] = w * rho * istd * s1 / static_cast<double>(m);
    // No rows: the sum over an empty set is 0 even though var (0/0) is NaN.
    if (p.dweight) store_state(p.dweight, p.w_dtype, c, m == 0 ? 0.0 : rho * istd * s1);
    if (p.dbias) store_state(p.dbias, p.w_dtype, c, s2);
    const double ema_old = load_state(p.ema_gz, sd, c);
    store_state(p.new_buffer_gz, sd, slot * n + c, skip ? ema_old : gz[c]);
  }
  const bool batch = detail::un_use_batch(t, L, p.warmup_iters, skip);
  for (int64_t c = 0; c < n; ++c) {
    const double mean_gz = batch ? gz[c] : detail::un_window_mean(p.new_buffer_gz, sd, L, n, c);
    const double ema_new = detail::un_ema(load_state(p.ema_gz, sd, c), mean_gz, p.momentum);
    store_state(p.new_ema_gz, sd, c, ema_new);
    const double var = load_state(p.var, st, c), rho = load_state(p.rho, st, c);
    const double istd = detail::un_inv_std(var, p.eps);
    const double cc = skip ? mean_gz : ema_new;
    coef[c] = static_cast<A>(load_state(p.weight, p.w_dtype, c) * rho);
    coef[n + c] = static_cast<A>(cc * istd);
    coef[2 * n + c] = static_cast<A>(istd);
  }
}

template <typename X>
void bwd_apply(const UnifiedNormBwdParams& p, const Acc<X>* coef) {
  using A = Acc<X>;
  const int64_t m = p.rows, n = p.cols;
  const X* x = static_cast<const X*>(p.x);
  const X* dy = static_cast<const X*>(p.dy);
  X* dx = static_cast<X*>(p.dx);
  const A *kg = coef, *kz = coef + n, *istd = coef + 2 * n;
#pragma omp parallel for schedule(static) if (m * n > (1 << 15))
  for (int64_t r = 0; r < m; ++r) {
    const X* xr = x + r * p.x_stride;
    const X* gr = dy + r * p.dy_stride;
    X* o = dx + r * n;
#pragma omp simd
    for (int64_t c = 0; c < n; ++c)
      o[c] = store_from<X, A>((load_as<X, A>(gr[c]) * kg[c] - load_as<X, A>(xr[c]) * kz[c]) * istd[c]);
  }
}

template <typename X>
void bwd_typed(const UnifiedNormBwdParams& p) {
  using A = Acc<X>;
  const int64_t nb = unified_norm_num_blocks(p.rows), n = p.cols;
  double* partial = static_cast<double*>(p.workspace);
  A* coef = reinterpret_cast<A*>(partial + 2 * nb * n);
  bwd_sums<X>(p, nb, partial);
  bwd_state<A>(p, nb, partial, coef);
  if (p.dx != nullptr) bwd_apply<X>(p, coef);
}

template <typename X>
void affine_typed(const ChannelAffineParams& p) {
  using A = Acc<X>;
  const int64_t o = p.outer, n = p.channels, in = p.inner;
  std::vector<A> s(static_cast<size_t>(n)), h(static_cast<size_t>(n));
  for (int64_t c = 0; c < n; ++c) {
    s[c] = static_cast<A>(load_state(p.scale, p.s_dtype, c));
    h[c] = static_cast<A>(load_state(p.shift, p.s_dtype, c));
  }
  const X* x = static_cast<const X*>(p.x);
  X* y = static_cast<X*>(p.y);
  const A *sp = s.data(), *hp = h.data();
  if (in == 1) {
#pragma omp parallel for schedule(static) if (o * n > (1 << 15))
    for (int64_t r = 0; r < o; ++r) {
#pragma omp simd
      for (int64_t c = 0; c < n; ++c) y[r * n + c] = store_from<X, A>(load_as<X, A>(x[r * n + c]) * sp[c] + hp[c]);
    }
  } else {
#pragma omp parallel for schedule(static) if (o * n * in > (1 << 15))
    for (int64_t pl = 0; pl < o * n; ++pl) {
      const int64_t c = pl % n;
      const A a = sp[c], b = hp[c];
      const X* xp = x + pl * in;
      X* yp = y + pl * in;
#pragma omp simd
      for (int64_t i = 0; i < in; ++i) yp[i] = store_from<X, A>(load_as<X, A>(xp[i]) * a + b);
    }
  }
}

template <template <typename> class F, typename P>
void dispatch_x(DType t, const P& p) {
  switch (t) {
    case DType::Float64: F<double>::run(p); break;
    case DType::BFloat16: F<bf16_t>::run(p); break;
    case DType::Float16: F<f16_t>::run(p); break;
    default: F<float>::run(p); break;
  }
}
template <typename X> struct FwdRun { static void run(const UnifiedNormParams& p) { fwd_typed<X>(p); } };
template <typename X> struct BwdRun { static void run(const UnifiedNormBwdParams& p) { bwd_typed<X>(p); } };
template <typename X> struct AffRun { static void run(const ChannelAffineParams& p) { affine_typed<X>(p); } };

}  // namespace

int64_t unified_norm_num_blocks(int64_t rows) {
  // ~128 rows per block, at most 32 blocks: enough for the CPU's threads, few partial rows to add.
  return std::min<int64_t>(32, std::max<int64_t>(1, (rows + 127) / 128));
}

size_t unified_norm_fwd_workspace_bytes(const UnifiedNormParams& p) {
  const int64_t nb = unified_norm_num_blocks(p.rows);
  return static_cast<size_t>(nb * p.cols + nb + 3 * p.cols) * 8;
}
size_t unified_norm_bwd_workspace_bytes(const UnifiedNormBwdParams& p) {
  const int64_t nb = unified_norm_num_blocks(p.rows);
  return static_cast<size_t>(2 * nb * p.cols + 3 * p.cols) * 8;
}

Status validate(const UnifiedNormParams& p) {
  const char* op = "unified_norm";
  Status s = check_common(p, op);
  if (!s.ok()) return s;
  const std::string o(op);
  if (p.compensation_start < 0) return invalid_argument(o + ": compensation_start must be >= 0");
  if (p.cols > 0 && (p.running_var == nullptr || p.buffer_x2 == nullptr || p.var == nullptr || p.rho == nullptr ||
                     p.new_running_var == nullptr || p.new_buffer_x2 == nullptr))
    return invalid_argument(o + ": a state or statistics pointer is null");
  if (p.skip_counter == nullptr || p.skip == nullptr || p.new_skip_counter == nullptr)
    return invalid_argument(o + ": skip or skip_counter is null");
  if (p.rows > 0 && p.cols > 0 && p.y == nullptr) return invalid_argument(o + ": y is null");
  return Status::OK();
}

Status validate(const UnifiedNormBwdParams& p) {
  const char* op = "unified_norm_backward";
  Status s = check_common(p, op);
  if (!s.ok()) return s;
  const std::string o(op);
  if (p.x_dtype != p.dy_dtype) return unsupported(o + ": dy dtype must equal x dtype");
  if (p.rows > 0 && p.cols > 0 && p.dy == nullptr) return invalid_argument(o + ": dy is null");
  if (p.rows > 1 && p.dy_stride < p.cols) return invalid_argument(o + ": dy row stride is smaller than cols");
  if (p.cols > 0 && (p.var == nullptr || p.rho == nullptr || p.ema_gz == nullptr || p.buffer_gz == nullptr ||
                     p.new_ema_gz == nullptr || p.new_buffer_gz == nullptr))
    return invalid_argument(o + ": a state or statistics pointer is null");
  if (p.skip == nullptr) return invalid_argument(o + ": skip is null");
  return Status::OK();
}

Status validate(const ChannelAffineParams& p) {
  const std::string o("channel_affine");
  if (p.outer < 0 || p.channels < 0 || p.inner < 0) return invalid_argument(o + ": sizes must be >= 0");
  if (!is_float(p.x_dtype)) return unsupported(o + ": x dtype " + dtype_name(p.x_dtype) + " is not a float type");
  if (!is_float(p.s_dtype) || (p.s_dtype == DType::Float64 && p.x_dtype != DType::Float64))
    return unsupported(o + ": scale dtype " + dtype_name(p.s_dtype) + " is not supported with x dtype " +
                       dtype_name(p.x_dtype));
  if (p.outer * p.channels * p.inner > 0 && (p.x == nullptr || p.y == nullptr))
    return invalid_argument(o + ": x or y is null");
  if (p.channels > 0 && (p.scale == nullptr || p.shift == nullptr)) return invalid_argument(o + ": scale or shift is null");
  return Status::OK();
}

Status unified_norm_fwd(const UnifiedNormParams& p) {
  Status s = validate(p);
  if (!s.ok()) return s;
  dispatch_x<FwdRun>(p.x_dtype, p);
  return Status::OK();
}

Status unified_norm_bwd(const UnifiedNormBwdParams& p) {
  Status s = validate(p);
  if (!s.ok()) return s;
  dispatch_x<BwdRun>(p.x_dtype, p);
  return Status::OK();
}

Status channel_affine(const ChannelAffineParams& p) {
  Status s = validate(p);
  if (!s.ok()) return s;
  dispatch_x<AffRun>(p.x_dtype, p);
  return Status::OK();
}

}  // namespace norm
}  // namespace fastnorm

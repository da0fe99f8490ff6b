// CPU kernels of the Poincaré FC and conv layers (specs/poincare.md §3.5, §3.7): prologue (row norms, exp0
// factors), blocked GEMM (poincare_layers_kernels.cpp, AVX2 dual build), FC epilogue in the GEMM's output
// tile (detail/poincare_layers_math.h). The backward recomputes the pre-activations chunk by chunk (the
// chunk's scratch ≤ 25 % of the output bytes), turns them into ∂a in place and consumes them at once in the
// dgrad/wgrad GEMMs; nothing output-sized is kept between forward and backward.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/poincare_layers_math.h"
#include "fastnorm/poincare_layers.h"
#include "isa.h"
#include "poincare_layers_cpu.h"
#include "poincare_layers_kernels.h"

namespace fastnorm {
namespace poincare {

double beta_concat_ratio(int64_t n_in, int64_t n_out) {
  // B(a, ½) = Γ(a)Γ(½)/Γ(a + ½): the Γ(½) cancels in the ratio.
  const double a = 0.5 * double(n_out), b = 0.5 * double(n_in);
  return std::exp((std::lgamma(a) - std::lgamma(a + 0.5)) - (std::lgamma(b) - std::lgamma(b + 0.5)));
}

namespace layers_cpu {

using layers::Consts;
using layers::FcCol;

int threads_of(int requested) { return requested > 0 ? requested : std::max(1, omp_get_max_threads()); }

double read_curvature(const Curvature& c) {
  switch (c.dtype) {
    case DType::Float32: return double(*static_cast<const float*>(c.ptr));
    case DType::Float64: return *static_cast<const double*>(c.ptr);
    case DType::Float16: return double(::fastnorm::detail::f16_to_float(static_cast<const f16_t*>(c.ptr)->bits));
    case DType::BFloat16: return double(::fastnorm::detail::bf16_to_float(static_cast<const bf16_t*>(c.ptr)->bits));
    default: return std::nan("");
  }
}

void write_scalar(void* p, DType t, double v) {
  switch (t) {
    case DType::Float32: *static_cast<float*>(p) = float(v); break;
    case DType::Float64: *static_cast<double*>(p) = v; break;
    case DType::Float16: static_cast<f16_t*>(p)->bits = ::fastnorm::detail::float_to_f16(float(v)); break;
    case DType::BFloat16: static_cast<bf16_t*>(p)->bits = ::fastnorm::detail::float_to_bf16(float(v)); break;
    default: break;
  }
}

void gemm(const GemmArgs& a) {
#if defined(FASTNORM_HAVE_AVX2)
  if (cpu::use_avx2()) return avx2::gemm(a);
#endif
  baseline::gemm(a);
}

namespace {

// Bump allocator over the caller's workspace (64-byte aligned slices); size() run on a null base counts.
struct Arena {
  char* base;
  size_t used = 0;
  explicit Arena(void* b) : base(static_cast<char*>(b)) {}
  template <class T>
  T* take(int64_t n) {
    used = (used + 63) & ~size_t(63);
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += size_t(std::max<int64_t>(n, 0)) * sizeof(T);
    return p;
  }
};

template <class T, class A>
inline A ld(const void* p, int64_t i) {
  return ::fastnorm::detail::load_as<T, A>(static_cast<const T*>(p)[i]);
}
template <class T, class A>
inline void st(void* p, int64_t i, A v) {
  static_cast<T*>(p)[i] = ::fastnorm::detail::store_from<T, A>(v);
}

// Calls f.template operator()<T>() with T the storage type of d.
template <class F>
Status dispatch(DType d, F&& f) {
  switch (d) {
    case DType::Float32: return f(float{});
    case DType::Float64: return f(double{});
    case DType::Float16: return f(f16_t{});
    case DType::BFloat16: return f(bf16_t{});
    default: return unsupported(std::string("dtype ") + dtype_name(d));
  }
}

constexpr int64_t kRowBlock = 8;  // fixed row blocks for the column partials (∂ζ, ∂r, ∂c): deterministic

// Parameters in compute type: Z [m, n] (converted if needed), per-column FC constants, ‖z_k‖.
template <class A>
struct FcWeights {
  const A* Z = nullptr;  // [m, n]
  FcCol<A>* cols = nullptr;
  A* znorm = nullptr;
  A* rb = nullptr;  // bias values (0 without bias)
};

template <class A, class TW>
FcWeights<A> prepare_weights(Arena& ar, const void* weight, const void* bias, int64_t m, int64_t n,
                             const Consts<A>& k, int threads, bool reserve_only = false) {
  FcWeights<A> w;
  constexpr bool same = std::is_same<A, TW>::value;
  A* Zc = same ? nullptr : ar.take<A>(m * n);
  w.cols = ar.take<FcCol<A>>(m);
  w.znorm = ar.take<A>(m);
  w.rb = ar.take<A>(m);
  if (!ar.base || reserve_only) return w;
  w.Z = same ? static_cast<const A*>(weight) : Zc;
#pragma omp parallel for schedule(static) num_threads(threads) if (m * n > 65536)
  for (int64_t o = 0; o < m; ++o) {
    A s = A(0);
    for (int64_t j = 0; j < n; ++j) {
      const A v = ld<TW, A>(weight, o * n + j);
      if (!same) Zc[o * n + j] = v;
      s += v * v;
    }
    w.znorm[o] = std::sqrt(s);
    w.rb[o] = bias ? ld<TW, A>(bias, o) : A(0);
    w.cols[o] = layers::fc_col(w.znorm[o], w.rb[o], k);
  }
  return w;
}

// ∂W = ∂Z_acc + diag(Σ∂ζ/ζ)·Z (0 where ζ is clamped), stored in W's dtype.
template <class A, class TW>
void finish_weight_grad(void* grad_weight, const A* dZ, int64_t ldr, int64_t ldc, const FcWeights<A>& w,
                        const A* dzeta, int64_t m, int64_t n, int threads) {
#pragma omp parallel for schedule(static) num_threads(threads) if (m * n > 65536)
  for (int64_t o = 0; o < m; ++o) {
    const A f = w.znorm[o] >= A(Consts<A>::kNu) ? dzeta[o] / w.cols[o].zeta : A(0);
    for (int64_t j = 0; j < n; ++j) st<TW, A>(grad_weight, o * n + j, dZ[o * ldr + j * ldc] + f * w.Z[o * n + j]);
  }
}

// ---- poincare_linear ------------------------------------------------------------------------------------
template <class T, class TW, class A>
struct Linear {
  const LinearParams& p;
  const int64_t R, n, m;
  const int threads;
  Consts<A> k;
  bool bwd;

  Linear(const LinearParams& pp, bool backward)
      : p(pp), R(pp.rows), n(pp.in_features), m(pp.out_features), threads(threads_of(pp.num_threads)),
        bwd(backward) {
    const double c = pp.c.ptr ? read_curvature(pp.c) : 1.0;
    k = layers::make_consts<A>(A(c), pp.x_dtype);
  }

  static constexpr bool kSameX = std::is_same<T, A>::value;

  int64_t chunk() const {
    if (p.chunk_rows > 0) return std::min<int64_t>(std::max<int64_t>(R, 1), p.chunk_rows);
    // per chunk row: a and s tiles (m each) + x/dx conversions (n each, half dtypes only) in compute type
    const int64_t per_row = int64_t(sizeof(A)) * (2 * m + (kSameX ? 0 : 2 * n)) + 64;
    const int64_t budget = R * m * int64_t(sizeof(T)) / 4;
    int64_t rc = budget / std::max<int64_t>(per_row, 1);
    rc = std::max<int64_t>(rc, std::min<int64_t>(R, 64));
    return std::max<int64_t>(1, std::min<int64_t>(rc, R));
  }

  struct Ws {
    FcWeights<A> w;
    A* Zt;       // [n, m]
    A* xa;       // chunk x in compute type (half dtypes)
    A* tile;     // [rc, m] (forward: the output itself when T == A)
    A* sbuf;     // [rc, m]
    A* dxa;      // [rc, n] (half dtypes)
    A* rowv;     // per-row: xsq, phi, nu, rho, (3 more)
    A* part;     // [nblk, 2m + 1]
    A* dZ;       // [m, n]
    A* dzeta;    // [m]
    A* dr;       // [m]
  };

  Ws layout(Arena& ar) const {
    Ws s{};
    const int64_t rc = chunk();
    const int64_t nblk = (rc + kRowBlock - 1) / kRowBlock;
    s.w = prepare_weights<A, TW>(ar, nullptr, nullptr, m, n, k, threads, true);
    s.Zt = ar.take<A>(n * m);
    s.xa = kSameX ? nullptr : ar.take<A>(rc * n);
    s.tile = (kSameX && !bwd) ? nullptr : ar.take<A>(rc * m);
    s.sbuf = bwd ? ar.take<A>(rc * m) : nullptr;
    s.dxa = (bwd && !kSameX && p.grad_x) ? ar.take<A>(rc * n) : nullptr;
    s.rowv = ar.take<A>(rc * 6);
    if (bwd) {
      s.part = ar.take<A>(nblk * (2 * m + 1));
      s.dZ = ar.take<A>(m * n);
      s.dzeta = ar.take<A>(m);
      s.dr = ar.take<A>(m);
    }
    return s;
  }

  size_t workspace() const {
    Arena ar(nullptr);
    layout(ar);
    return ar.used + 64;
  }

  // x rows r0..r0+rc in compute type, their ‖·‖² and exp0 factors: rowv = [xsq | phi | nu | d2 | fp].
  const A* prologue(const Ws& s, int64_t r0, int64_t rc) const {
    const A* X;
    if (kSameX) {
      X = static_cast<const A*>(p.x) + r0 * n;
    } else {
      A* xa = s.xa;
#pragma omp parallel for schedule(static) num_threads(threads) if (rc * n > 32768)
      for (int64_t i = 0; i < rc; ++i)
        for (int64_t j = 0; j < n; ++j) xa[i * n + j] = ld<T, A>(p.x, (r0 + i) * n + j);
      X = xa;
    }
    A* xsq = s.rowv;
    A* phi = s.rowv + rc;
    A* nu = s.rowv + 2 * rc;
    A* d2 = s.rowv + 3 * rc;
    A* fp = s.rowv + 4 * rc;
#pragma omp parallel for schedule(static) num_threads(threads) if (rc * n > 32768)
    for (int64_t i = 0; i < rc; ++i) {
      A q = A(0);
      for (int64_t j = 0; j < n; ++j) q += X[i * n + j] * X[i * n + j];
      if (p.tangent_input) {
        const A nn = std::sqrt(q);
        const auto ef = layers::exp0_factors(nn, k);
        phi[i] = ef.fn; fp[i] = ef.fn + ef.k1 * q; d2[i] = ef.k1; nu[i] = nn;
        xsq[i] = (ef.fn * nn) * (ef.fn * nn);
      } else {
        phi[i] = A(1); fp[i] = A(1); d2[i] = A(0); nu[i] = std::sqrt(q);
        xsq[i] = q;
      }
    }
    return X;
  }

  void run_gemm(const A* X, const Ws& s, A* C, int64_t rc) const {
    GemmArgs g;
    g.M = rc; g.N = m; g.K = n;
    g.A = X; g.ars = n; g.acs = 1;
    g.B = s.Zt; g.ldb = m;
    g.C = C; g.ldc = m;
    g.f64 = std::is_same<A, double>::value;
    g.threads = threads;
    gemm(g);
  }

  void pack_zt(const Ws& s) const {
    for (int64_t o = 0; o < m; ++o)
      for (int64_t j = 0; j < n; ++j) s.Zt[j * m + o] = s.w.Z[o * n + j];
  }

  Status forward() {
    Arena ar(p.workspace);
    Ws s = layout(ar);
    if (ar.used > p.workspace_bytes) return invalid_argument("poincare linear_fwd: workspace too small");
    Arena ar2(p.workspace);
    s.w = prepare_weights<A, TW>(ar2, p.weight, p.bias, m, n, k, threads);
    pack_zt(s);
    const int64_t rc = chunk();
    for (int64_t r0 = 0; r0 < R; r0 += rc) {
      const int64_t nr = std::min(rc, R - r0);
      const A* X = prologue(s, r0, nr);
      A* tile = kSameX ? static_cast<A*>(p.out) + r0 * m : s.tile;
      run_gemm(X, s, tile, nr);
      const A* phi = s.rowv + nr;
      const A* xsq = s.rowv;
#pragma omp parallel for schedule(static) num_threads(threads) if (nr * m > 16384)
      for (int64_t i = 0; i < nr; ++i) {
        A* row = tile + i * m;
        if (p.tangent_input)
          for (int64_t j = 0; j < m; ++j) row[j] *= phi[i];
        layers::fc_row_forward(row, 1, m, xsq[i], s.w.cols, p.project, p.tangent_output, k);
        if (!kSameX)
          for (int64_t j = 0; j < m; ++j) st<T, A>(p.out, (r0 + i) * m + j, row[j]);
      }
    }
    return Status::OK();
  }

  Status backward() {
    Arena ar(p.workspace);
    Ws s = layout(ar);
    if (ar.used > p.workspace_bytes) return invalid_argument("poincare linear_bwd: workspace too small");
    Arena ar2(p.workspace);
    s.w = prepare_weights<A, TW>(ar2, p.weight, p.bias, m, n, k, threads);
    pack_zt(s);
    const bool need_w = p.grad_weight != nullptr, need_c = p.grad_c != nullptr;
    const bool need_r = p.bias != nullptr && (p.grad_bias != nullptr || need_c);
    std::fill(s.dZ, s.dZ + m * n, A(0));
    std::fill(s.dzeta, s.dzeta + m, A(0));
    std::fill(s.dr, s.dr + m, A(0));
    A dc_acc = A(0);
    const int64_t rc = chunk();
    for (int64_t r0 = 0; r0 < R; r0 += rc) {
      const int64_t nr = std::min(rc, R - r0);
      const A* X = prologue(s, r0, nr);
      A* tile = s.tile;
      run_gemm(X, s, tile, nr);
      const A* xsq = s.rowv;
      const A* phi = s.rowv + nr;
      const A* nu = s.rowv + 2 * nr;
      const A* d2 = s.rowv + 3 * nr;
      A* rho = s.rowv + 5 * nr;
      const int64_t nblk = (nr + kRowBlock - 1) / kRowBlock;
      const int64_t pw = 2 * m + 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (nr * m > 16384)
      for (int64_t b = 0; b < nblk; ++b) {
        A* part = s.part + b * pw;
        std::fill(part, part + pw, A(0));
        for (int64_t i = b * kRowBlock; i < std::min(nr, (b + 1) * kRowBlock); ++i) {
          A* row = tile + i * m;
          if (p.tangent_input)
            for (int64_t j = 0; j < m; ++j) row[j] *= phi[i];
          const int64_t gbase = (r0 + i) * m;
          const void* gp = p.grad;
          auto g = [gp, gbase](int64_t j) { return ld<T, A>(gp, gbase + j); };
          const auto rg = layers::fc_row_backward(row, s.sbuf + i * m, 1, m, xsq[i], g, s.w.cols, p.project,
                                                  p.tangent_output, need_w ? part : nullptr,
                                                  need_r ? part + m : nullptr, k);
          const A lam = layers::conformal(xsq[i], k);
          const A l2c = layers::conformal_grad_scale(xsq[i], lam, k);
          A dot;  // ⟨∂input, input⟩
          if (p.tangent_input) {
            // ∂u = φ·(∂a·Z) + ρ·u: the GEMMs take φ·∂a
            const A P = rg.sum_da_a / phi[i] + rg.dlam * l2c * phi[i] * nu[i] * nu[i];
            rho[i] = rg.dlam * l2c * phi[i] * phi[i] + d2[i] * P;
            for (int64_t j = 0; j < m; ++j) row[j] *= phi[i];
            dot = rg.sum_da_a + rho[i] * nu[i] * nu[i];
          } else {
            rho[i] = rg.dlam * l2c;
            dot = rg.sum_da_a + rho[i] * xsq[i];
          }
          part[2 * m] += dot - rg.g_out;
        }
      }
      // fixed-order reduction of the block partials
      for (int64_t b = 0; b < nblk; ++b) {
        const A* part = s.part + b * pw;
        if (need_w)
          for (int64_t j = 0; j < m; ++j) s.dzeta[j] += part[j];
        if (need_r)
          for (int64_t j = 0; j < m; ++j) s.dr[j] += part[m + j];
        dc_acc += part[2 * m];
      }
      if (p.grad_x) {
        A* dX = kSameX ? static_cast<A*>(p.grad_x) + r0 * n : s.dxa;
        GemmArgs g;
        g.M = nr; g.N = n; g.K = m;
        g.A = tile; g.ars = m; g.acs = 1;
        g.B = s.w.Z; g.ldb = n;
        g.C = dX; g.ldc = n;
        g.f64 = std::is_same<A, double>::value;
        g.threads = threads;
        gemm(g);
#pragma omp parallel for schedule(static) num_threads(threads) if (nr * n > 32768)
        for (int64_t i = 0; i < nr; ++i)
          for (int64_t j = 0; j < n; ++j) {
            const A v = dX[i * n + j] + rho[i] * X[i * n + j];
            if (kSameX) dX[i * n + j] = v; else st<T, A>(p.grad_x, (r0 + i) * n + j, v);
          }
      }
      if (need_w) {
        GemmArgs g;
        g.M = m; g.N = n; g.K = nr;
        g.A = tile; g.ars = 1; g.acs = m;
        g.B = X; g.ldb = n;
        g.C = s.dZ; g.ldc = n;
        g.accumulate = true;
        g.f64 = std::is_same<A, double>::value;
        g.threads = threads;
        gemm(g);
      }
    }
    if (need_w) finish_weight_grad<A, TW>(p.grad_weight, s.dZ, n, 1, s.w, s.dzeta, m, n, threads);
    if (p.grad_bias)
      for (int64_t j = 0; j < m; ++j) st<TW, A>(p.grad_bias, j, s.dr[j]);
    if (need_c) {
      A tot = dc_acc;
      if (p.bias)
        for (int64_t j = 0; j < m; ++j) tot += s.dr[j] * s.w.rb[j];
      write_scalar(p.grad_c, p.c.dtype, double(tot / (A(2) * k.c)));
    }
    return Status::OK();
  }
};

// ---- poincare_conv2d -------------------------------------------------------------------------------------
template <class T, class TW, class A>
struct Conv {
  const Conv2dParams& p;
  const int64_t B, Ci, H, W, Co, kh, kw, Ho, Wo, P, n, npix;
  const int threads;
  const A beta;
  Consts<A> k;
  bool bwd;

  Conv(const Conv2dParams& pp, bool backward)
      : p(pp), B(pp.batch), Ci(pp.in_channels), H(pp.height), W(pp.width), Co(pp.out_channels),
        kh(pp.kernel_h), kw(pp.kernel_w),
        Ho(conv_out_size(pp.height, pp.kernel_h, pp.stride_h, pp.pad_h, pp.dil_h)),
        Wo(conv_out_size(pp.width, pp.kernel_w, pp.stride_w, pp.pad_w, pp.dil_w)), P(Ho * Wo),
        n(pp.in_channels * pp.kernel_h * pp.kernel_w), npix(pp.batch * Ho * Wo),
        threads(threads_of(pp.num_threads)),
        beta(A(beta_concat_ratio(pp.in_channels, pp.in_channels * pp.kernel_h * pp.kernel_w))), bwd(backward) {
    const double c = pp.c.ptr ? read_curvature(pp.c) : 1.0;
    k = layers::make_consts<A>(A(c), pp.x_dtype);
  }

  static constexpr bool kSameX = std::is_same<T, A>::value;

  int64_t chunk() const {
    if (p.chunk_pixels > 0) return std::min<int64_t>(std::max<int64_t>(npix, 1), p.chunk_pixels);
    const int64_t per_pix = int64_t(sizeof(A)) * (n + 2 * Co + 8) + 3 * int64_t(sizeof(int64_t));
    const int64_t budget = npix * Co * int64_t(sizeof(T)) / 4;
    int64_t pt = budget / std::max<int64_t>(per_pix, 1);
    pt = std::max<int64_t>(pt, std::min<int64_t>(npix, 32));
    return std::max<int64_t>(1, std::min(pt, npix));
  }

  struct Ws {
    FcWeights<A> w;
    A* col;      // [n, pt]
    A* tile;     // [Co, pt]
    A* sbuf;     // [Co, pt] (backward; then g̃ᵀ [pt, Co])
    A* pixv;     // per pixel: xsq, phi, nu, d2, rho
    int64_t* pix;  // per pixel: b, oh, ow
    A* part;     // [nblk, 2Co + 1]
    A* dWt;      // [n, Co]
    A* dzeta;
    A* dr;
    A* dxa;      // [B, Ci, H, W] accumulation (half dtypes only)
  };

  Ws layout(Arena& ar) const {
    Ws s{};
    const int64_t pt = chunk();
    const int64_t nblk = (pt + kRowBlock - 1) / kRowBlock;
    s.w = prepare_weights<A, TW>(ar, nullptr, nullptr, Co, n, k, threads, true);
    s.col = ar.take<A>(n * pt);
    s.tile = ar.take<A>(Co * pt);
    s.sbuf = bwd ? ar.take<A>(Co * pt) : nullptr;
    s.pixv = ar.take<A>(5 * pt);
    s.pix = ar.take<int64_t>(3 * pt);
    if (bwd) {
      s.part = ar.take<A>(nblk * (2 * Co + 1));
      s.dWt = ar.take<A>(n * Co);
      s.dzeta = ar.take<A>(Co);
      s.dr = ar.take<A>(Co);
      s.dxa = (!kSameX && p.grad_x) ? ar.take<A>(B * Ci * H * W) : nullptr;
    }
    return s;
  }

  size_t workspace() const {
    Arena ar(nullptr);
    layout(ar);
    return ar.used + 64;
  }

  // Patch tile of pixels g0..g0+np (column j = pixel g0 + j), raw x values (no β), zero padding.
  void im2col(const Ws& s, int64_t g0, int64_t np) const {
    int64_t* pb = s.pix;
    int64_t* poh = s.pix + np;
    int64_t* pow_ = s.pix + 2 * np;
    for (int64_t j = 0; j < np; ++j) {
      const int64_t g = g0 + j;
      pb[j] = g / P;
      const int64_t r = g % P;
      poh[j] = r / Wo;
      pow_[j] = r % Wo;
    }
#pragma omp parallel for schedule(static) num_threads(threads) if (n * np > 65536)
    for (int64_t ch = 0; ch < Ci; ++ch)
      for (int64_t i = 0; i < kh; ++i)
        for (int64_t jj = 0; jj < kw; ++jj) {
          A* row = s.col + ((ch * kh + i) * kw + jj) * np;
          for (int64_t j = 0; j < np; ++j) {
            const int64_t ih = poh[j] * p.stride_h - p.pad_h + i * p.dil_h;
            const int64_t iw = pow_[j] * p.stride_w - p.pad_w + jj * p.dil_w;
            row[j] = (ih >= 0 && ih < H && iw >= 0 && iw < W)
                         ? ld<T, A>(p.x, ((pb[j] * Ci + ch) * H + ih) * W + iw)
                         : A(0);
          }
        }
  }

  // col2im accumulation of the tile into dx (compute type, [B, Ci, H, W]); threads own channels.
  void col2im(const Ws& s, A* dx, int64_t np) const {
    const int64_t* pb = s.pix;
    const int64_t* poh = s.pix + np;
    const int64_t* pow_ = s.pix + 2 * np;
#pragma omp parallel for schedule(static) num_threads(threads) if (n * np > 65536)
    for (int64_t ch = 0; ch < Ci; ++ch)
      for (int64_t i = 0; i < kh; ++i)
        for (int64_t jj = 0; jj < kw; ++jj) {
          const A* row = s.col + ((ch * kh + i) * kw + jj) * np;
          for (int64_t j = 0; j < np; ++j) {
            const int64_t ih = poh[j] * p.stride_h - p.pad_h + i * p.dil_h;
            const int64_t iw = pow_[j] * p.stride_w - p.pad_w + jj * p.dil_w;
            if (ih >= 0 && ih < H && iw >= 0 && iw < W) dx[((pb[j] * Ci + ch) * H + ih) * W + iw] += row[j];
          }
        }
  }

  // Window norms and exp0 factors: pixv = [xsq | phi | nu | d2 | rho]; nu = β·‖window‖.
  void prologue(const Ws& s, int64_t np) const {
    A* xsq = s.pixv;
    A* phi = s.pixv + np;
    A* nu = s.pixv + 2 * np;
    A* d2 = s.pixv + 3 * np;
    std::fill(nu, nu + np, A(0));
    for (int64_t r = 0; r < n; ++r) {
      const A* row = s.col + r * np;
#pragma omp simd
      for (int64_t j = 0; j < np; ++j) nu[j] += row[j] * row[j];
    }
    for (int64_t j = 0; j < np; ++j) {
      const A nn = beta * std::sqrt(nu[j]);
      const auto ef = layers::exp0_factors(nn, k);
      nu[j] = nn;
      phi[j] = ef.fn;
      d2[j] = ef.k1;
      xsq[j] = (ef.fn * nn) * (ef.fn * nn);
    }
  }

  // tile[o, j] = β·φ_j·Σ_r W[o, r]·col[r, j]
  void pre_activation(const Ws& s, int64_t np) const {
    GemmArgs g;
    g.M = Co; g.N = np; g.K = n;
    g.A = s.w.Z; g.ars = n; g.acs = 1;
    g.B = s.col; g.ldb = np;
    g.C = s.tile; g.ldc = np;
    g.f64 = std::is_same<A, double>::value;
    g.threads = threads;
    gemm(g);
    const A* phi = s.pixv + np;
    for (int64_t o = 0; o < Co; ++o) {
      A* row = s.tile + o * np;
#pragma omp simd
      for (int64_t j = 0; j < np; ++j) row[j] *= beta * phi[j];
    }
  }

  Status forward() {
    Arena ar(p.workspace);
    Ws s = layout(ar);
    if (ar.used > p.workspace_bytes) return invalid_argument("poincare conv2d_fwd: workspace too small");
    Arena ar2(p.workspace);
    s.w = prepare_weights<A, TW>(ar2, p.weight, p.bias, Co, n, k, threads);
    const int64_t pt = chunk();
    for (int64_t g0 = 0; g0 < npix; g0 += pt) {
      const int64_t np = std::min(pt, npix - g0);
      im2col(s, g0, np);
      prologue(s, np);
      pre_activation(s, np);
      const A* xsq = s.pixv;
      const int64_t* pb = s.pix;
#pragma omp parallel for schedule(static) num_threads(threads) if (np * Co > 16384)
      for (int64_t j = 0; j < np; ++j) {
        layers::fc_row_forward(s.tile + j, np, Co, xsq[j], s.w.cols, true, true, k);
        const int64_t base = pb[j] * Co * P + (g0 + j) % P;
        for (int64_t o = 0; o < Co; ++o) st<T, A>(p.out, base + o * P, s.tile[o * np + j]);
      }
    }
    return Status::OK();
  }

  Status backward() {
    Arena ar(p.workspace);
    Ws s = layout(ar);
    if (ar.used > p.workspace_bytes) return invalid_argument("poincare conv2d_bwd: workspace too small");
    Arena ar2(p.workspace);
    s.w = prepare_weights<A, TW>(ar2, p.weight, p.bias, Co, n, k, threads);
    const bool need_w = p.grad_weight != nullptr, need_c = p.grad_c != nullptr;
    const bool need_r = p.bias != nullptr && (p.grad_bias != nullptr || need_c);
    A* dx = nullptr;
    if (p.grad_x) {
      dx = kSameX ? static_cast<A*>(p.grad_x) : s.dxa;
      std::fill(dx, dx + B * Ci * H * W, A(0));
    }
    std::fill(s.dWt, s.dWt + n * Co, A(0));
    std::fill(s.dzeta, s.dzeta + Co, A(0));
    std::fill(s.dr, s.dr + Co, A(0));
    A dc_acc = A(0);
    const int64_t pt = chunk();
    for (int64_t g0 = 0; g0 < npix; g0 += pt) {
      const int64_t np = std::min(pt, npix - g0);
      im2col(s, g0, np);
      prologue(s, np);
      pre_activation(s, np);
      const A* xsq = s.pixv;
      const A* phi = s.pixv + np;
      const A* nu = s.pixv + 2 * np;
      const A* d2 = s.pixv + 3 * np;
      A* rho = s.pixv + 4 * np;
      const int64_t* pb = s.pix;
      const int64_t nblk = (np + kRowBlock - 1) / kRowBlock;
      const int64_t pw = 2 * Co + 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (np * Co > 16384)
      for (int64_t b = 0; b < nblk; ++b) {
        A* part = s.part + b * pw;
        std::fill(part, part + pw, A(0));
        for (int64_t j = b * kRowBlock; j < std::min(np, (b + 1) * kRowBlock); ++j) {
          const int64_t gbase = pb[j] * Co * P + (g0 + j) % P;
          const void* gp = p.grad;
          const int64_t Pp = P;
          auto g = [gp, gbase, Pp](int64_t o) { return ld<T, A>(gp, gbase + o * Pp); };
          const auto rg = layers::fc_row_backward(s.tile + j, s.sbuf + j, np, Co, xsq[j], g, s.w.cols, true,
                                                  true, need_w ? part : nullptr, need_r ? part + Co : nullptr, k);
          const A lam = layers::conformal(xsq[j], k);
          const A l2c = layers::conformal_grad_scale(xsq[j], lam, k);
          const A Pj = rg.sum_da_a / phi[j] + rg.dlam * l2c * phi[j] * nu[j] * nu[j];
          rho[j] = rg.dlam * l2c * phi[j] * phi[j] + d2[j] * Pj;
          part[2 * Co] += rg.sum_da_a + rho[j] * nu[j] * nu[j] - rg.g_out;
        }
      }
      for (int64_t b = 0; b < nblk; ++b) {
        const A* part = s.part + b * pw;
        if (need_w)
          for (int64_t o = 0; o < Co; ++o) s.dzeta[o] += part[o];
        if (need_r)
          for (int64_t o = 0; o < Co; ++o) s.dr[o] += part[Co + o];
        dc_acc += part[2 * Co];
      }
      // g̃ = β·φ·∂a (the grad of the unscaled window GEMM)
      for (int64_t o = 0; o < Co; ++o) {
        A* row = s.tile + o * np;
#pragma omp simd
        for (int64_t j = 0; j < np; ++j) row[j] *= beta * phi[j];
      }
      if (need_w) {
        // ∂Wᵀ[r, o] += Σ_j col[r, j]·g̃ᵀ[j, o]
        A* gt = s.sbuf;
        for (int64_t o = 0; o < Co; ++o)
          for (int64_t j = 0; j < np; ++j) gt[j * Co + o] = s.tile[o * np + j];
        GemmArgs g;
        g.M = n; g.N = Co; g.K = np;
        g.A = s.col; g.ars = np; g.acs = 1;
        g.B = gt; g.ldb = Co;
        g.C = s.dWt; g.ldc = Co;
        g.accumulate = true;
        g.f64 = std::is_same<A, double>::value;
        g.threads = threads;
        gemm(g);
      }
      if (dx) {
        // β·∂u = Wᵀ·g̃ + β²·ρ·col, then col2im
        for (int64_t r = 0; r < n; ++r) {
          A* row = s.col + r * np;
#pragma omp simd
          for (int64_t j = 0; j < np; ++j) row[j] *= beta * beta * rho[j];
        }
        GemmArgs g;
        g.M = n; g.N = np; g.K = Co;
        g.A = s.w.Z; g.ars = 1; g.acs = n;
        g.B = s.tile; g.ldb = np;
        g.C = s.col; g.ldc = np;
        g.accumulate = true;
        g.f64 = std::is_same<A, double>::value;
        g.threads = threads;
        gemm(g);
        col2im(s, dx, np);
      }
    }
    if (p.grad_x && !kSameX) {
      const int64_t tot = B * Ci * H * W;
#pragma omp parallel for schedule(static) num_threads(threads) if (tot > 65536)
      for (int64_t i = 0; i < tot; ++i) st<T, A>(p.grad_x, i, dx[i]);
    }
    if (need_w) finish_weight_grad<A, TW>(p.grad_weight, s.dWt, 1, Co, s.w, s.dzeta, Co, n, threads);
    if (p.grad_bias)
      for (int64_t o = 0; o < Co; ++o) st<TW, A>(p.grad_bias, o, s.dr[o]);
    if (need_c) {
      A tot = dc_acc;
      if (p.bias)
        for (int64_t o = 0; o < Co; ++o) tot += s.dr[o] * s.w.rb[o];
      write_scalar(p.grad_c, p.c.dtype, double(tot / (A(2) * k.c)));
    }
    return Status::OK();
  }
};

template <template <class, class, class> class Op, class P, class F>
Status with_op(const P& p, bool backward, F&& f) {
  return dispatch(p.x_dtype, [&](auto tx) -> Status {
    using T = decltype(tx);
    using A = typename std::conditional<std::is_same<T, double>::value, double, float>::type;
    if (p.w_dtype == DType::Float64) {
      if (!std::is_same<T, double>::value) return unsupported("float64 parameters need float64 x");
      Op<T, double, A> op(p, backward);
      return f(op);
    }
    if (p.w_dtype == DType::Float32) {
      Op<T, float, A> op(p, backward);
      return f(op);
    }
    if (p.w_dtype != p.x_dtype) return unsupported("parameters must have x's dtype or float32");
    Op<T, T, A> op(p, backward);
    return f(op);
  });
}

Status check_linear(const LinearParams& p, bool bwd) {
  if (p.rows < 0 || p.in_features < 0 || p.out_features < 0) return invalid_argument("negative size");
  if (!is_float(p.x_dtype) || !is_float(p.w_dtype) || !is_float(p.c.dtype)) return unsupported("non-float dtype");
  if (!p.c.ptr) return invalid_argument("c is null");
  if (p.rows * p.in_features > 0 && !p.x) return invalid_argument("x is null");
  if (p.out_features * p.in_features > 0 && !p.weight) return invalid_argument("weight is null");
  if (!bwd && p.rows * p.out_features > 0 && !p.out) return invalid_argument("out is null");
  if (bwd && p.rows * p.out_features > 0 && !p.grad) return invalid_argument("grad is null");
  return Status::OK();
}

Status check_conv(const Conv2dParams& p, bool bwd) {
  if (p.batch < 0 || p.in_channels < 0 || p.height < 0 || p.width < 0 || p.out_channels < 0 || p.kernel_h < 1 ||
      p.kernel_w < 1)
    return invalid_argument("negative size");
  if (p.stride_h < 1 || p.stride_w < 1 || p.dil_h < 1 || p.dil_w < 1 || p.pad_h < 0 || p.pad_w < 0)
    return invalid_argument("stride/dilation must be >= 1 and padding >= 0");
  if (conv_out_size(p.height, p.kernel_h, p.stride_h, p.pad_h, p.dil_h) < 1 ||
      conv_out_size(p.width, p.kernel_w, p.stride_w, p.pad_w, p.dil_w) < 1)
    return invalid_argument("kernel larger than the padded input");
  if (!is_float(p.x_dtype) || !is_float(p.w_dtype) || !is_float(p.c.dtype)) return unsupported("non-float dtype");
  if (!p.c.ptr) return invalid_argument("c is null");
  if (p.batch * p.in_channels * p.height * p.width > 0 && !p.x) return invalid_argument("x is null");
  if (p.out_channels * p.in_channels > 0 && !p.weight) return invalid_argument("weight is null");
  if (!bwd && p.batch * p.out_channels > 0 && !p.out) return invalid_argument("out is null");
  if (bwd && p.batch * p.out_channels > 0 && !p.grad) return invalid_argument("grad is null");
  return Status::OK();
}

}  // namespace
}  // namespace layers_cpu

using namespace layers_cpu;

// A backward call is recognised by any grad pointer (an empty upstream grad may have a null data pointer).
template <class P>
bool is_backward(const P& p) {
  return p.grad || p.grad_x || p.grad_weight || p.grad_bias || p.grad_c;
}

size_t linear_workspace_bytes(const LinearParams& p) {
  if (!check_linear(p, is_backward(p)).ok()) return 0;
  size_t r = 0;
  with_op<Linear>(p, is_backward(p), [&](auto& op) { r = op.workspace(); return Status::OK(); });
  return r;
}

Status linear_fwd(const LinearParams& p) {
  Status s = check_linear(p, false);
  if (!s.ok()) return s;
  return with_op<Linear>(p, false, [&](auto& op) { return op.forward(); });
}

Status linear_bwd(const LinearParams& p) {
  Status s = check_linear(p, true);
  if (!s.ok()) return s;
  return with_op<Linear>(p, true, [&](auto& op) { return op.backward(); });
}

size_t conv2d_workspace_bytes(const Conv2dParams& p) {
  if (!check_conv(p, is_backward(p)).ok()) return 0;
  size_t r = 0;
  with_op<Conv>(p, is_backward(p), [&](auto& op) { r = op.workspace(); return Status::OK(); });
  return r;
}

Status conv2d_fwd(const Conv2dParams& p) {
  Status s = check_conv(p, false);
  if (!s.ok()) return s;
  return with_op<Conv>(p, false, [&](auto& op) { return op.forward(); });
}

Status conv2d_bwd(const Conv2dParams& p) {
  Status s = check_conv(p, true);
  if (!s.ok()) return s;
  return with_op<Conv>(p, true, [&](auto& op) { return op.backward(); });
}

}  // namespace poincare
}  // namespace fastnorm

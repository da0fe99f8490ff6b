// SaRA CPU kernels (specs/sara.md §3.3, §3.5): the masked weight gradient of Linear (sddmm) and Conv2d, and the
// sparse x dense product of the rank sketch.
//
// Built twice (FASTNORM_ISA = baseline | avx2) with -ffp-contract=off; sara.cpp validates and picks the build.
// Every dot product runs in 16 independent lanes (lane l takes elements l, l+16, ...) reduced by a fixed tree,
// so the vector width only changes speed: both builds, and every thread count, give the same bits.
//
// Linear plan: [0, k) is split into equal contiguous per-thread ranges and N is consumed in chunks of nc rows
// (sara_kernels.h). Per chunk, each thread packs X^T into its own [cols x nc] fp32 panel (no barriers between
// threads); indices are sorted, so its entries come row by row: it packs dY[:, r] once per row into an nc-vector
// and adds dot(dY[:, r], X^T[c_j, :]) to out_j for each entry of the row. Both operands of every dot
// are contiguous, and the panel (cols * nc * 4 bytes) stays in L2 while all k entries stream over it. The dense
// dW is never formed: FLOPs are 2*N*k instead of 2*N*rows*cols.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "fastnorm/detail/sara_math.h"
#include "sara_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

namespace fastnorm {
namespace sara {
namespace FASTNORM_ISA {
namespace {

using fastnorm::detail::Conv;
using namespace fastnorm::sara::detail;

template <typename T> using Acc = decltype(Conv<T>::load(T{}));  // float, double for double

// 16-lane dot of two contiguous vectors of length L (a multiple of 16), fixed reduction tree.
template <typename A> inline A dot16(const A* __restrict x, const A* __restrict y, int64_t L) {
  A acc[16];
  for (int l = 0; l < 16; ++l) acc[l] = A(0);
  for (int64_t i = 0; i < L; i += 16) {
#pragma omp simd
    for (int l = 0; l < 16; ++l) acc[l] += x[i + l] * y[i + l];
  }
  for (int s = 8; s >= 1; s /= 2)
    for (int l = 0; l < s; ++l) acc[l] += acc[l + s];
  return acc[0];
}

// Four dots sharing x; lane order and reduction tree of dot16, so each result equals dot16(x, y_q, L) bitwise.
template <typename A>
inline void dot16x4(const A* __restrict x, const A* __restrict y0, const A* __restrict y1, const A* __restrict y2,
                    const A* __restrict y3, int64_t L, A* res) {
  A a0[16], a1[16], a2[16], a3[16];
  for (int l = 0; l < 16; ++l) a0[l] = a1[l] = a2[l] = a3[l] = A(0);
  for (int64_t i = 0; i < L; i += 16) {
#pragma omp simd
    for (int l = 0; l < 16; ++l) {
      const A xv = x[i + l];
      a0[l] += xv * y0[i + l];
      a1[l] += xv * y1[i + l];
      a2[l] += xv * y2[i + l];
      a3[l] += xv * y3[i + l];
    }
  }
  for (int s = 8; s >= 1; s /= 2)
    for (int l = 0; l < s; ++l) {
      a0[l] += a0[l + s];
      a1[l] += a1[l + s];
      a2[l] += a2[l + s];
      a3[l] += a3[l + s];
    }
  res[0] = a0[0];
  res[1] = a1[0];
  res[2] = a2[0];
  res[3] = a3[0];
}

template <typename T, typename I>
void sddmm_panel(const SaraSddmmParams& p, const SddmmPlan& plan) {
  using A = Acc<T>;
  const T* X = static_cast<const T*>(p.input);
  const T* G = static_cast<const T*>(p.grad_out);
  const I* idx = static_cast<const I*>(p.indices);
  A* out = static_cast<A*>(p.out);
  const int64_t nc = plan.nc, k = p.k, cols = p.cols;
#pragma omp parallel num_threads(plan.threads)
  {
    const int t = omp_get_thread_num(), T_ = omp_get_num_threads();
    const int64_t jb = k * t / T_, je = k * (t + 1) / T_;
    A* panel = static_cast<A*>(p.workspace) + static_cast<size_t>(t) * (plan.panel_elems + nc);
    A* dy = panel + plan.panel_elems;
    // Only the columns this thread's entries touch are packed (at low density most columns are never read;
    // the values of a packed column do not depend on which others are packed, so results are unchanged).
    std::vector<int64_t> need;
    {
      std::vector<char> used(static_cast<size_t>(cols), 0);
      for (int64_t j = jb; j < je; ++j) used[static_cast<size_t>(static_cast<int64_t>(idx[j]) % cols)] = 1;
      for (int64_t c = 0; c < cols; ++c)
        if (used[static_cast<size_t>(c)]) need.push_back(c);
    }
    const int64_t n_need = static_cast<int64_t>(need.size());
    for (int64_t j = jb; j < je; ++j) out[j] = A(0);
    for (int64_t n0 = 0; jb < je && n0 < p.n; n0 += nc) {
      const int64_t nv = std::min(nc, p.n - n0), L = (nv + 15) / 16 * 16;
      // Pack X^T[c, 0:nv] (blocks of 16 columns share the cache lines of each row of X), zero tail to L.
      for (int64_t qb = 0; qb < n_need; qb += 16) {
        const int64_t qe = std::min(n_need, qb + 16);
        for (int64_t i = 0; i < nv; ++i) {
          const T* xr = X + (n0 + i) * p.in_s0;
          for (int64_t q = qb; q < qe; ++q) {
            const int64_t c = need[static_cast<size_t>(q)];
            panel[c * nc + i] = static_cast<A>(Conv<T>::load(xr[c * p.in_s1]));
          }
        }
        for (int64_t q = qb; q < qe; ++q)
          for (int64_t i = nv; i < L; ++i) panel[need[static_cast<size_t>(q)] * nc + i] = A(0);
      }
      // Walk the thread's entries row by row (one division per row, not per entry); within a row, four
      // entries share each load of dY (dot16x4 gives each entry exactly dot16's bits).
      int64_t j = jb;
      while (j < je) {
        const int64_t r = static_cast<int64_t>(idx[j]) / cols, row0 = r * cols;
        int64_t e = j + 1;
        while (e < je && static_cast<int64_t>(idx[e]) < row0 + cols) ++e;
        const T* g = G + n0 * p.go_s0 + r * p.go_s1;
        for (int64_t i = 0; i < nv; ++i) dy[i] = static_cast<A>(Conv<T>::load(g[i * p.go_s0]));
        for (int64_t i = nv; i < L; ++i) dy[i] = A(0);
        for (; j + 4 <= e; j += 4) {
          A s4[4];
          dot16x4(dy, panel + (static_cast<int64_t>(idx[j]) - row0) * nc, panel + (static_cast<int64_t>(idx[j + 1]) - row0) * nc,
                  panel + (static_cast<int64_t>(idx[j + 2]) - row0) * nc, panel + (static_cast<int64_t>(idx[j + 3]) - row0) * nc,
                  L, s4);
          for (int q = 0; q < 4; ++q) out[j + q] += s4[q];
        }
        for (; j < e; ++j) out[j] += dot16(dy, panel + (static_cast<int64_t>(idx[j]) - row0) * nc, L);
      }
    }
  }
}

// Panel-free path (no workspace): N in blocks of 8 rows; each entry adds its 8-term sum. The 8 rows of X and dY
// a block touches stay in cache while the thread's entries gather from them.
template <typename T, typename I>
void sddmm_direct(const SaraSddmmParams& p, int threads) {
  using A = Acc<T>;
  const T* X = static_cast<const T*>(p.input);
  const T* G = static_cast<const T*>(p.grad_out);
  const I* idx = static_cast<const I*>(p.indices);
  A* out = static_cast<A*>(p.out);
  const int64_t k = p.k, cols = p.cols;
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num(), T_ = omp_get_num_threads();
    const int64_t jb = k * t / T_, je = k * (t + 1) / T_;
    for (int64_t j = jb; j < je; ++j) out[j] = A(0);
    for (int64_t n0 = 0; n0 < p.n; n0 += 8) {
      const int64_t nv = std::min<int64_t>(8, p.n - n0);
      for (int64_t j = jb; j < je; ++j) {
        const int64_t f = static_cast<int64_t>(idx[j]);
        const int64_t r = f / cols, c = f - r * cols;
        const T* g = G + n0 * p.go_s0 + r * p.go_s1;
        const T* x = X + n0 * p.in_s0 + c * p.in_s1;
        A s = A(0);
        for (int64_t i = 0; i < nv; ++i)
          s += static_cast<A>(Conv<T>::load(g[i * p.go_s0])) * static_cast<A>(Conv<T>::load(x[i * p.in_s0]));
        out[j] += s;
      }
    }
  }
}

template <typename T, typename I> void sddmm_impl(const SaraSddmmParams& p) {
  const SddmmPlan plan = sddmm_plan(p);
  if (p.n == 0) {
    using A = Acc<T>;
    A* out = static_cast<A*>(p.out);
    for (int64_t j = 0; j < p.k; ++j) out[j] = A(0);
  } else if (plan.nc > 0) {
    sddmm_panel<T, I>(p, plan);
  } else {
    sddmm_direct<T, I>(p, plan.threads);
  }
}

// ---- Conv2d: direct per-entry loops ------------------------------------------------------------------------
// Entry j = (o, c, p, q) sums gout[b, o, y, x] * in[b, g*C/G + c, y*sh + p*dh - ph, x*sw + q*dw - pw] over the
// (b, y, x) whose input position is inside the image (padding contributes zeros, so it is skipped). The valid
// y and x ranges are computed once per entry; the inner loop over x is contiguous in NCHW for stride 1. No
// scratch; consecutive entries share the gout plane of their output channel.
inline int64_t ceil_div(int64_t a, int64_t b) { return a >= 0 ? (a + b - 1) / b : -((-a) / b); }

// Output positions y in [lo, hi) with 0 <= y*s + off < size.
inline void valid_range(int64_t off, int64_t s, int64_t size, int64_t out_size, int64_t& lo, int64_t& hi) {
  lo = std::max<int64_t>(0, ceil_div(-off, s));
  hi = std::min<int64_t>(out_size, ceil_div(size - off, s));
  if (hi < lo) hi = lo;
}

template <typename T, typename I> void conv_impl(const SaraConv2dSddmmParams& p) {
  using A = Acc<T>;
  const T* X = static_cast<const T*>(p.input);
  const T* G = static_cast<const T*>(p.grad_out);
  const I* idx = static_cast<const I*>(p.indices);
  A* out = static_cast<A*>(p.out);
  const int64_t cg = p.in_channels / p.groups, og = p.out_channels / p.groups;
  const int64_t cols = cg * p.kh * p.kw;
  const int64_t k = p.k;
  const int64_t per_entry = std::max<int64_t>(1, p.batch * p.out_height * p.out_width);
  const int nt = static_cast<int>(std::min<int64_t>(sara_threads(p.num_threads), std::max<int64_t>(1, k * per_entry / 16384)));
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t j = 0; j < k; ++j) {
    const int64_t f = static_cast<int64_t>(idx[j]);
    const int64_t o = f / cols;
    const ConvCol cc = decode_conv_col(f - o * cols, p.kh, p.kw);
    const int64_t ci = (o / og) * cg + cc.c;
    const int64_t offy = cc.p * p.dil_h - p.pad_h, offx = cc.q * p.dil_w - p.pad_w;
    int64_t y0, y1, x0, x1;
    valid_range(offy, p.stride_h, p.height, p.out_height, y0, y1);
    valid_range(offx, p.stride_w, p.width, p.out_width, x0, x1);
    A acc[16];
    for (int l = 0; l < 16; ++l) acc[l] = A(0);
    const int64_t gx = p.go_s[3], ix = p.in_s[3] * p.stride_w;
    for (int64_t b = 0; b < p.batch; ++b) {
      const T* gp = G + b * p.go_s[0] + o * p.go_s[1];
      const T* xp = X + b * p.in_s[0] + ci * p.in_s[1];
      for (int64_t y = y0; y < y1; ++y) {
        const T* gr = gp + y * p.go_s[2] + x0 * gx;
        const T* xr = xp + (y * p.stride_h + offy) * p.in_s[2] + (x0 * p.stride_w + offx) * p.in_s[3];
        const int64_t len = x1 - x0;
        int64_t x = 0;
        if (gx == 1 && ix == 1) {  // NCHW, stride 1: both rows contiguous
          for (; x + 16 <= len; x += 16) {
#pragma omp simd
            for (int l = 0; l < 16; ++l)
              acc[l] += static_cast<A>(Conv<T>::load(gr[x + l])) * static_cast<A>(Conv<T>::load(xr[x + l]));
          }
        }
        for (; x + 16 <= len; x += 16) {
#pragma omp simd
          for (int l = 0; l < 16; ++l)
            acc[l] += static_cast<A>(Conv<T>::load(gr[(x + l) * gx])) * static_cast<A>(Conv<T>::load(xr[(x + l) * ix]));
        }
        for (int l = 0; x + l < len; ++l)
          acc[l] += static_cast<A>(Conv<T>::load(gr[(x + l) * gx])) * static_cast<A>(Conv<T>::load(xr[(x + l) * ix]));
      }
    }
    for (int s = 8; s >= 1; s /= 2)
      for (int l = 0; l < s; ++l) acc[l] += acc[l + s];
    out[j] = acc[0];
  }
}

// ---- spmm --------------------------------------------------------------------------------------------------
// S * D: rows in parallel, each row's entries in flat order. S^T * D: a stable counting sort of the entries by
// column, then columns in parallel, each column's entries in flat order. Both are deterministic for any thread
// count; the CPU needs no atomics.
template <typename A, typename I> void spmm_impl(const SaraSpmmParams& p) {
  const I* idx = static_cast<const I*>(p.indices);
  const A* val = static_cast<const A*>(p.values);
  const A* D = static_cast<const A*>(p.dense);
  A* out = static_cast<A*>(p.out);
  const int64_t l = p.l, cols = p.cols, k = p.k;
  const int nt = sara_threads(p.num_threads);
  const int64_t out_rows = p.transpose ? p.cols : p.rows;
  std::vector<int64_t> start(static_cast<size_t>(out_rows) + 1, 0), perm;
  if (!p.transpose) {
    int64_t j = 0;
    for (int64_t r = 0; r <= p.rows; ++r) {
      while (j < k && static_cast<int64_t>(idx[j]) < r * cols) ++j;
      start[r] = j;
    }
  } else {
    for (int64_t j = 0; j < k; ++j) ++start[static_cast<int64_t>(idx[j]) % cols + 1];
    for (int64_t c = 0; c < cols; ++c) start[c + 1] += start[c];
    perm.resize(static_cast<size_t>(k));
    std::vector<int64_t> fill(start.begin(), start.end() - 1);
    for (int64_t j = 0; j < k; ++j) perm[fill[static_cast<int64_t>(idx[j]) % cols]++] = j;
  }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 16)
  for (int64_t r = 0; r < out_rows; ++r) {
    A* o = out + r * l;
    for (int64_t e = 0; e < l; ++e) o[e] = A(0);
    for (int64_t q = start[r]; q < start[r + 1]; ++q) {
      const int64_t j = p.transpose ? perm[q] : q;
      const int64_t f = static_cast<int64_t>(idx[j]);
      const int64_t src = p.transpose ? f / cols : f % cols;
      const A s = val[j];
      const A* d = D + src * l;
#pragma omp simd
      for (int64_t e = 0; e < l; ++e) o[e] += s * d[e];
    }
  }
}

template <typename F> void with_index(DType t, F&& f) {
  if (t == DType::Int64) f(int64_t{});
  else f(int32_t{});
}

}  // namespace

Status sddmm(const SaraSddmmParams& p) {
  with_index(p.index_dtype, [&](auto it) {
    using I = decltype(it);
    switch (p.dtype) {
      case DType::Float32: sddmm_impl<float, I>(p); break;
      case DType::Float64: sddmm_impl<double, I>(p); break;
      case DType::BFloat16: sddmm_impl<bf16_t, I>(p); break;
      case DType::Float16: sddmm_impl<f16_t, I>(p); break;
      default: break;
    }
  });
  return Status::OK();
}

Status conv2d_sddmm(const SaraConv2dSddmmParams& p) {
  with_index(p.index_dtype, [&](auto it) {
    using I = decltype(it);
    switch (p.dtype) {
      case DType::Float32: conv_impl<float, I>(p); break;
      case DType::Float64: conv_impl<double, I>(p); break;
      case DType::BFloat16: conv_impl<bf16_t, I>(p); break;
      case DType::Float16: conv_impl<f16_t, I>(p); break;
      default: break;
    }
  });
  return Status::OK();
}

Status spmm(const SaraSpmmParams& p) {
  with_index(p.index_dtype, [&](auto it) {
    using I = decltype(it);
    if (p.dtype == DType::Float64) spmm_impl<double, I>(p);
    else spmm_impl<float, I>(p);
  });
  return Status::OK();
}

}  // namespace FASTNORM_ISA
}  // namespace sara
}  // namespace fastnorm

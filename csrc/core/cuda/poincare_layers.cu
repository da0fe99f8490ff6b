// CUDA kernels of the Poincaré layers (specs/poincare.md §3.5, §3.7, §3.8), the same algorithm as the CPU
// files: row/pixel chunks whose scratch stays ≤ 25 % of the output bytes, a tiled GEMM for the dense stages
// (shared-memory 16×16 tiles, one fixed k order per element), the FC epilogue of detail/poincare_layers_math.h
// per row (one thread per row or per fixed block of rows, whose partials are reduced in block order: no float
// atomics, bitwise reproducible), the midpoint batch norm as per-block partial passes with one-thread
// finalisers. c is read by the kernels from device memory (no host sync) or passed by value when on the host.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/poincare_layers_math.h"
#include "fastnorm/poincare_layers_cuda.h"

namespace fastnorm {
namespace poincare {
namespace cuda {
namespace {

namespace L = layers;
using detail::Curv;
using detail::Gram;
using detail::Vec;

constexpr int kThreads = 256;
constexpr int64_t kRowBlock = 8;   // FC/conv rows per partial block (as the CPU)
constexpr int64_t kBNBlock = 64;   // BN rows per partial block (as the CPU)

inline unsigned grid_for(int64_t n, int threads = kThreads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 1 << 30)));
}

Status launch_status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return Status(StatusCode::CudaError, std::string(what) + ": " + cudaGetErrorString(e));
  return Status::OK();
}

// Curvature as a kernel argument: a host value, or a device pointer read by each thread.
struct CurvArg {
  const void* p = nullptr;
  DType t = DType::Float32;
  double host = 1.0;
  bool on_host = true;
};

CurvArg make_curv_arg(const Curvature& c) {
  CurvArg a;
  a.p = c.ptr;
  a.t = c.dtype;
  a.on_host = c.on_host;
  if (c.on_host) {
    switch (c.dtype) {
      case DType::Float32: a.host = *static_cast<const float*>(c.ptr); break;
      case DType::Float64: a.host = *static_cast<const double*>(c.ptr); break;
      case DType::Float16: a.host = ::fastnorm::detail::f16_to_float(static_cast<const f16_t*>(c.ptr)->bits); break;
      case DType::BFloat16: a.host = ::fastnorm::detail::bf16_to_float(static_cast<const bf16_t*>(c.ptr)->bits); break;
      default: a.host = 0.0 / 0.0;
    }
  }
  return a;
}

template <class A>
__device__ inline A load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float32: return A(static_cast<const float*>(p)[i]);
    case DType::Float64: return A(static_cast<const double*>(p)[i]);
    case DType::Float16: return A(::fastnorm::detail::f16_to_float(static_cast<const f16_t*>(p)[i].bits));
    case DType::BFloat16: return A(::fastnorm::detail::bf16_to_float(static_cast<const bf16_t*>(p)[i].bits));
    default: return A(0) / A(0);
  }
}
template <class A>
__device__ inline void store_any(void* p, DType t, int64_t i, A v) {
  switch (t) {
    case DType::Float32: static_cast<float*>(p)[i] = float(v); break;
    case DType::Float64: static_cast<double*>(p)[i] = double(v); break;
    case DType::Float16: static_cast<f16_t*>(p)[i].bits = ::fastnorm::detail::float_to_f16(float(v)); break;
    case DType::BFloat16: static_cast<bf16_t*>(p)[i].bits = ::fastnorm::detail::float_to_bf16(float(v)); break;
    default: break;
  }
}
template <class A>
__device__ inline A read_c(const CurvArg& c) {
  return c.on_host ? A(c.host) : load_any<A>(c.p, c.t, 0);
}
template <class T, class A>
__device__ inline A ld(const void* p, int64_t i) {
  return ::fastnorm::detail::load_as<T, A>(static_cast<const T*>(p)[i]);
}
template <class T, class A>
__device__ inline void st(void* p, int64_t i, A v) {
  static_cast<T*>(p)[i] = ::fastnorm::detail::store_from<T, A>(v);
}

// Bump allocator over the workspace (256-byte aligned slices); a null base only counts.
struct Arena {
  char* base;
  size_t used = 0;
  explicit Arena(void* b) : base(static_cast<char*>(b)) {}
  template <class T>
  T* take(int64_t n) {
    used = (used + 255) & ~size_t(255);
    T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
    used += size_t(std::max<int64_t>(n, 0)) * sizeof(T);
    return p;
  }
};

// ---- tiled GEMM: C[i, j] (+)= Σ_k A[i·ars + k·acs]·B[k·ldb + j] ------------------------------------------
template <class A>
__global__ void k_gemm(int64_t M, int64_t N, int64_t K, const A* __restrict__ Am, int64_t ars, int64_t acs,
                       const A* __restrict__ B, int64_t ldb, A* __restrict__ C, int64_t ldc, bool accumulate) {
  __shared__ A sa[16][17];
  __shared__ A sb[16][17];
  const int64_t i = int64_t(blockIdx.y) * 16 + threadIdx.y;
  const int64_t j = int64_t(blockIdx.x) * 16 + threadIdx.x;
  A acc = A(0);
  for (int64_t k0 = 0; k0 < K; k0 += 16) {
    const int64_t ka = k0 + threadIdx.x, kb = k0 + threadIdx.y;
    sa[threadIdx.y][threadIdx.x] = (i < M && ka < K) ? Am[i * ars + ka * acs] : A(0);
    sb[threadIdx.y][threadIdx.x] = (kb < K && j < N) ? B[kb * ldb + j] : A(0);
    __syncthreads();
#pragma unroll
    for (int k = 0; k < 16; ++k) acc += sa[threadIdx.y][k] * sb[k][threadIdx.x];
    __syncthreads();
  }
  if (i < M && j < N) C[i * ldc + j] = accumulate ? C[i * ldc + j] + acc : acc;
}

template <class A>
void gemm(cudaStream_t s, int64_t M, int64_t N, int64_t K, const A* Am, int64_t ars, int64_t acs, const A* B,
          int64_t ldb, A* C, int64_t ldc, bool accumulate) {
  if (M <= 0 || N <= 0) return;
  dim3 block(16, 16), grid(unsigned((N + 15) / 16), unsigned((M + 15) / 16));
  k_gemm<A><<<grid, block, 0, s>>>(M, N, K, Am, ars, acs, B, ldb, C, ldc, accumulate);
}

template <class A>
__global__ void k_fill(A* p, int64_t n, A v) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    p[i] = v;
}

// ---- parameters: Z in compute type, ‖z_k‖, per-column FC constants ---------------------------------------
template <class A, class TW>
__global__ void k_prep_weights(const void* W, const void* bias, int64_t m, int64_t n, A* Zc, L::FcCol<A>* cols,
                               A* znorm, A* rb, CurvArg cv, DType io) {
  const int64_t o = blockIdx.x;
  if (o >= m) return;
  __shared__ A red[kThreads];
  A s = A(0);
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    const A v = ld<TW, A>(W, o * n + j);
    if (Zc) Zc[o * n + j] = v;
    s += v * v;
  }
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = blockDim.x / 2; w > 0; w >>= 1) {  // fixed tree: deterministic
    if (int(threadIdx.x) < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    const L::Consts<A> k = L::make_consts<A>(read_c<A>(cv), io);
    znorm[o] = sqrt(red[0]);
    rb[o] = bias ? ld<TW, A>(bias, o) : A(0);
    cols[o] = L::fc_col(znorm[o], rb[o], k);
  }
}

template <class A>
__global__ void k_transpose(const A* Z, A* Zt, int64_t rows, int64_t cols) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < rows * cols;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / cols, c = i % cols;
    Zt[c * rows + r] = Z[i];
  }
}

// ---- FC ---------------------------------------------------------------------------------------------------
// Per row: optional conversion of x into compute type, ‖x‖², exp0 factors: rowv = [xsq | phi | nu | d2 | rho].
template <class T, class A>
__global__ void k_fc_prologue(const void* x, int64_t r0, int64_t rc, int64_t n, A* Xc, A* rowv, bool tangent_input,
                              CurvArg cv, DType io) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rc) return;
  const L::Consts<A> k = L::make_consts<A>(read_c<A>(cv), io);
  A q = A(0);
  for (int64_t j = 0; j < n; ++j) {
    const A v = ld<T, A>(x, (r0 + i) * n + j);
    if (Xc) Xc[i * n + j] = v;
    q += v * v;
  }
  A* xsq = rowv;
  A* phi = rowv + rc;
  A* nu = rowv + 2 * rc;
  A* d2 = rowv + 3 * rc;
  if (tangent_input) {
    const A nn = sqrt(q);
    const auto ef = L::exp0_factors(nn, k);
    phi[i] = ef.fn; d2[i] = ef.k1; nu[i] = nn;
    xsq[i] = (ef.fn * nn) * (ef.fn * nn);
  } else {
    phi[i] = A(1); d2[i] = A(0); nu[i] = sqrt(q);
    xsq[i] = q;
  }
}

template <class T, class A>
__global__ void k_fc_forward_rows(A* tile, int64_t r0, int64_t rc, int64_t m, const A* rowv, const L::FcCol<A>* cols,
                                  void* out, bool tangent_input, bool tangent_output, bool project, CurvArg cv,
                                  DType io) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rc) return;
  const L::Consts<A> k = L::make_consts<A>(read_c<A>(cv), io);
  A* row = tile + i * m;
  if (tangent_input)
    for (int64_t j = 0; j < m; ++j) row[j] *= rowv[rc + i];
  L::fc_row_forward(row, 1, m, rowv[i], cols, project, tangent_output, k);
  for (int64_t j = 0; j < m; ++j) st<T, A>(out, (r0 + i) * m + j, row[j]);
}

template <class T, class A>
struct GLoad {
  const void* p;
  int64_t base, stride;
  __device__ A operator()(int64_t j) const { return ld<T, A>(p, base + j * stride); }
};

// One thread per fixed block of rows: VJP of each row, per-block partials [∂ζ (m) | ∂r (m) | ⟨∂in, in⟩ − ⟨g, out⟩].
template <class T, class A>
__global__ void k_fc_backward_rows(A* tile, A* sbuf, int64_t r0, int64_t rc, int64_t m, A* rowv,
                                   const L::FcCol<A>* cols, const void* grad, A* part, bool need_w, bool need_r,
                                   bool tangent_input, bool tangent_output, bool project, CurvArg cv, DType io) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nblk = (rc + kRowBlock - 1) / kRowBlock;
  if (b >= nblk) return;
  const L::Consts<A> k = L::make_consts<A>(read_c<A>(cv), io);
  const int64_t pw = 2 * m + 1;
  A* pv = part + b * pw;
  for (int64_t j = 0; j < pw; ++j) pv[j] = A(0);
  const A* xsq = rowv;
  const A* phi = rowv + rc;
  const A* nu = rowv + 2 * rc;
  const A* d2 = rowv + 3 * rc;
  A* rho = rowv + 4 * rc;
  for (int64_t i = b * kRowBlock; i < min(rc, (b + 1) * kRowBlock); ++i) {
    A* row = tile + i * m;
    if (tangent_input)
      for (int64_t j = 0; j < m; ++j) row[j] *= phi[i];
    const GLoad<T, A> g{grad, (r0 + i) * m, 1};
    const auto rg = L::fc_row_backward(row, sbuf + i * m, 1, m, xsq[i], g, cols, project, tangent_output,
                                       need_w ? pv : nullptr, need_r ? pv + m : nullptr, k);
    const A lam = L::conformal(xsq[i], k);
    const A l2c = L::conformal_grad_scale(xsq[i], lam, k);
    A dot;
    if (tangent_input) {
      const A P = rg.sum_da_a / phi[i] + rg.dlam * l2c * phi[i] * nu[i] * nu[i];
      rho[i] = rg.dlam * l2c * phi[i] * phi[i] + d2[i] * P;
      for (int64_t j = 0; j < m; ++j) row[j] *= phi[i];
      dot = rg.sum_da_a + rho[i] * nu[i] * nu[i];
    } else {
      rho[i] = rg.dlam * l2c;
      dot = rg.sum_da_a + rho[i] * xsq[i];
    }
    pv[2 * m] += dot - rg.g_out;
  }
}

// acc[col] += Σ_b part[b·width + col], blocks in order.
template <class A>
__global__ void k_reduce_partials(const A* part, int64_t nblk, int64_t width, A* acc) {
  const int64_t col = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= width) return;
  A s = acc[col];
  for (int64_t b = 0; b < nblk; ++b) s += part[b * width + col];
  acc[col] = s;
}

template <class T, class A>
__global__ void k_fc_dx_store(const A* dX, const A* rho, const A* X, int64_t rc, int64_t n, int64_t r0,
                              void* grad_x) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < rc * n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e / n;
    st<T, A>(grad_x, r0 * n + e, dX[e] + rho[i] * X[e]);
  }
}

// ∂W = ∂Z + diag(Σ∂ζ/ζ)·Z; ∂bias; ∂c = (Σ(⟨∂in, in⟩ − ⟨g, out⟩) + Σ ∂r·r)/(2c).
template <class A, class TW>
__global__ void k_fc_finish(const A* dZ, int64_t ldr, int64_t ldc, const A* Z, const A* znorm,
                            const L::FcCol<A>* cols, const A* acc, const A* rb, int64_t m, int64_t n, void* grad_weight,
                            void* grad_bias, void* grad_c, DType c_dtype, bool has_bias, CurvArg cv) {
  const int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const A* dzeta = acc;
  const A* dr = acc + m;
  if (grad_weight && e < m * n) {
    const int64_t o = e / n, j = e % n;
    const A f = znorm[o] >= A(L::Consts<A>::kNu) ? dzeta[o] / cols[o].zeta : A(0);
    st<TW, A>(grad_weight, e, dZ[o * ldr + j * ldc] + f * Z[e]);
  }
  if (grad_bias && e < m) st<TW, A>(grad_bias, e, dr[e]);
  if (grad_c && e == 0) {
    A tot = acc[2 * m];
    if (has_bias)
      for (int64_t j = 0; j < m; ++j) tot += dr[j] * rb[j];
    store_any<A>(grad_c, c_dtype, 0, tot / (A(2) * read_c<A>(cv)));
  }
}

template <class T, class TW, class A>
struct LinearCuda {
  const LinearParams& p;
  const int64_t R, n, m;
  const bool bwd;
  LinearCuda(const LinearParams& pp, bool backward)
      : p(pp), R(pp.rows), n(pp.in_features), m(pp.out_features), bwd(backward) {}

  int64_t chunk() const {
    if (p.chunk_rows > 0) return std::min<int64_t>(std::max<int64_t>(R, 1), p.chunk_rows);
    const int64_t per_row = int64_t(sizeof(A)) * (2 * m + 2 * n) + 64;
    int64_t rc = R * m * int64_t(sizeof(T)) / 4 / std::max<int64_t>(per_row, 1);
    rc = std::max<int64_t>(rc, std::min<int64_t>(R, 1024));
    return std::max<int64_t>(1, std::min(rc, R));
  }

  struct Ws {
    A *Zc, *znorm, *rb, *Zt, *Xc, *tile, *sbuf, *dX, *rowv, *part, *dZ, *acc;
    L::FcCol<A>* cols;
  };
  Ws layout(Arena& ar) const {
    Ws s{};
    const int64_t rc = chunk();
    s.Zc = ar.take<A>(m * n);
    s.cols = ar.take<L::FcCol<A>>(m);
    s.znorm = ar.take<A>(m);
    s.rb = ar.take<A>(m);
    s.Zt = ar.take<A>(n * m);
    s.Xc = ar.take<A>(rc * n);
    s.tile = ar.take<A>(rc * m);
    s.rowv = ar.take<A>(5 * rc);
    if (bwd) {
      s.sbuf = ar.take<A>(rc * m);
      s.dX = ar.take<A>(rc * n);
      s.part = ar.take<A>(((rc + kRowBlock - 1) / kRowBlock) * (2 * m + 1));
      s.dZ = ar.take<A>(m * n);
      s.acc = ar.take<A>(2 * m + 1);
    }
    return s;
  }
  size_t workspace() const {
    Arena ar(nullptr);
    layout(ar);
    return ar.used + 256;
  }

  Status run(cudaStream_t st_) {
    Arena ar(p.workspace);
    Ws s = layout(ar);
    if (ar.used > p.workspace_bytes) return invalid_argument("poincare cuda linear: workspace too small");
    const CurvArg cv = make_curv_arg(p.c);
    const DType io = p.x_dtype;
    if (m > 0)
      k_prep_weights<A, TW><<<unsigned(m), kThreads, 0, st_>>>(p.weight, p.bias, m, n, s.Zc, s.cols, s.znorm, s.rb,
                                                               cv, io);
    k_transpose<A><<<grid_for(m * n), kThreads, 0, st_>>>(s.Zc, s.Zt, m, n);
    const bool need_w = p.grad_weight != nullptr, need_c = p.grad_c != nullptr;
    const bool need_r = p.bias != nullptr && (p.grad_bias != nullptr || need_c);
    if (bwd) {
      k_fill<A><<<grid_for(m * n), kThreads, 0, st_>>>(s.dZ, m * n, A(0));
      k_fill<A><<<1, kThreads, 0, st_>>>(s.acc, 2 * m + 1, A(0));
    }
    const int64_t rc = chunk();
    for (int64_t r0 = 0; r0 < R; r0 += rc) {
      const int64_t nr = std::min(rc, R - r0);
      k_fc_prologue<T, A><<<grid_for(nr), kThreads, 0, st_>>>(p.x, r0, nr, n, s.Xc, s.rowv, p.tangent_input, cv, io);
      gemm<A>(st_, nr, m, n, s.Xc, n, 1, s.Zt, m, s.tile, m, false);
      if (!bwd) {
        k_fc_forward_rows<T, A><<<grid_for(nr), kThreads, 0, st_>>>(s.tile, r0, nr, m, s.rowv, s.cols, p.out,
                                                                     p.tangent_input, p.tangent_output, p.project, cv,
                                                                     io);
        continue;
      }
      const int64_t nblk = (nr + kRowBlock - 1) / kRowBlock;
      k_fc_backward_rows<T, A><<<grid_for(nblk, 64), 64, 0, st_>>>(s.tile, s.sbuf, r0, nr, m, s.rowv, s.cols, p.grad,
                                                                    s.part, need_w, need_r, p.tangent_input,
                                                                    p.tangent_output, p.project, cv, io);
      k_reduce_partials<A><<<grid_for(2 * m + 1), kThreads, 0, st_>>>(s.part, nblk, 2 * m + 1, s.acc);
      if (p.grad_x) {
        gemm<A>(st_, nr, n, m, s.tile, m, 1, s.Zc, n, s.dX, n, false);
        k_fc_dx_store<T, A><<<grid_for(nr * n), kThreads, 0, st_>>>(s.dX, s.rowv + 4 * nr, s.Xc, nr, n, r0, p.grad_x);
      }
      if (need_w) gemm<A>(st_, m, n, nr, s.tile, 1, m, s.Xc, n, s.dZ, n, true);
    }
    if (bwd)
      k_fc_finish<A, TW><<<grid_for(std::max<int64_t>(m * n, 1)), kThreads, 0, st_>>>(
          s.dZ, n, 1, s.Zc, s.znorm, s.cols, s.acc, s.rb, m, n, p.grad_weight, p.grad_bias, p.grad_c, p.c.dtype,
          p.bias != nullptr, cv);
    return launch_status("poincare_linear");
  }
};

// ---- conv2d -----------------------------------------------------------------------------------------------
struct ConvGeom {
  int64_t B, Ci, H, W, Co, kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo, P, n;
};

template <class T, class A>
__global__ void k_im2col(const void* x, ConvGeom g, int64_t g0, int64_t np, A* col) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < g.n * np; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e / np, j = e % np;
    const int64_t ch = r / (g.kh * g.kw), ii = (r / g.kw) % g.kh, jj = r % g.kw;
    const int64_t gp = g0 + j, b = gp / g.P, pr = gp % g.P, oh = pr / g.Wo, ow = pr % g.Wo;
    const int64_t ih = oh * g.sh - g.ph + ii * g.dh, iw = ow * g.sw - g.pw + jj * g.dw;
    col[e] = (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W) ? ld<T, A>(x, ((b * g.Ci + ch) * g.H + ih) * g.W + iw) : A(0);
  }
}

// Per pixel: β·‖window‖, exp0 factors; pixv = [xsq | phi | nu | d2 | rho].
template <class A>
__global__ void k_conv_prologue(const A* col, int64_t n, int64_t np, A beta, A* pixv, CurvArg cv, DType io) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= np) return;
  const L::Consts<A> k = L::make_consts<A>(read_c<A>(cv), io);
  A q = A(0);
  for (int64_t r = 0; r < n; ++r) q += col[r * np + j] * col[r * np + j];
  const A nn = beta * sqrt(q);
  const auto ef = L::exp0_factors(nn, k);
  pixv[j] = (ef.fn * nn) * (ef.fn * nn);
  pixv[np + j] = ef.fn;
  pixv[2 * np + j] = nn;
  pixv[3 * np + j] = ef.k1;
}

// tile[o, j] *= s·phi[j]
template <class A>
__global__ void k_scale_cols(A* tile, int64_t rows, int64_t np, const A* phi, A s) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < rows * np; e += int64_t(gridDim.x) * blockDim.x)
    tile[e] *= s * phi[e % np];
}

template <class T, class A>
__global__ void k_conv_forward_pixels(A* tile, int64_t np, int64_t g0, ConvGeom g, const A* pixv,
                                      const L::FcCol<A>* cols, void* out, CurvArg cv, DType io) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= np) return;
  const L::Consts<A> k = L::make_consts<A>(read_c<A>(cv), io);
  L::fc_row_forward(tile + j, np, g.Co, pixv[j], cols, true, true, k);
  const int64_t gp = g0 + j, base = (gp / g.P) * g.Co * g.P + gp % g.P;
  for (int64_t o = 0; o < g.Co; ++o) st<T, A>(out, base + o * g.P, tile[o * np + j]);
}

template <class T, class A>
__global__ void k_conv_backward_pixels(A* tile, A* sbuf, int64_t np, int64_t g0, ConvGeom g, A* pixv,
                                       const L::FcCol<A>* cols, const void* grad, A* part, bool need_w, bool need_r,
                                       CurvArg cv, DType io) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nblk = (np + kRowBlock - 1) / kRowBlock;
  if (b >= nblk) return;
  const L::Consts<A> k = L::make_consts<A>(read_c<A>(cv), io);
  const int64_t Co = g.Co, pw = 2 * Co + 1;
  A* pv = part + b * pw;
  for (int64_t j = 0; j < pw; ++j) pv[j] = A(0);
  const A* xsq = pixv;
  const A* phi = pixv + np;
  const A* nu = pixv + 2 * np;
  const A* d2 = pixv + 3 * np;
  A* rho = pixv + 4 * np;
  for (int64_t j = b * kRowBlock; j < min(np, (b + 1) * kRowBlock); ++j) {
    const int64_t gp = g0 + j;
    const GLoad<T, A> gl{grad, (gp / g.P) * Co * g.P + gp % g.P, g.P};
    const auto rg = L::fc_row_backward(tile + j, sbuf + j, np, Co, xsq[j], gl, cols, true, true,
                                       need_w ? pv : nullptr, need_r ? pv + Co : nullptr, k);
    const A lam = L::conformal(xsq[j], k);
    const A l2c = L::conformal_grad_scale(xsq[j], lam, k);
    const A Pj = rg.sum_da_a / phi[j] + rg.dlam * l2c * phi[j] * nu[j] * nu[j];
    rho[j] = rg.dlam * l2c * phi[j] * phi[j] + d2[j] * Pj;
    pv[2 * Co] += rg.sum_da_a + rho[j] * nu[j] * nu[j] - rg.g_out;
  }
}

// col[r, j] *= β²·ρ_j
template <class A>
__global__ void k_scale_rho(A* col, int64_t n, int64_t np, const A* rho, A b2) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n * np; e += int64_t(gridDim.x) * blockDim.x)
    col[e] *= b2 * rho[e % np];
}

// col2im as a gather: each input element of the tile's images sums the window entries that read it (no races).
template <class A>
__global__ void k_col2im(const A* col, ConvGeom g, int64_t g0, int64_t np, A* dx) {
  const int64_t b0 = g0 / g.P, b1 = (g0 + np - 1) / g.P;
  const int64_t per = g.Ci * g.H * g.W, tot = (b1 - b0 + 1) * per;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < tot; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = b0 + e / per, rem = e % per;
    const int64_t ch = rem / (g.H * g.W), ih = (rem / g.W) % g.H, iw = rem % g.W;
    A s = A(0);
    for (int64_t ii = 0; ii < g.kh; ++ii) {
      const int64_t th = ih + g.ph - ii * g.dh;
      if (th < 0 || th % g.sh) continue;
      const int64_t oh = th / g.sh;
      if (oh >= g.Ho) continue;
      for (int64_t jj = 0; jj < g.kw; ++jj) {
        const int64_t tw = iw + g.pw - jj * g.dw;
        if (tw < 0 || tw % g.sw) continue;
        const int64_t ow = tw / g.sw;
        if (ow >= g.Wo) continue;
        const int64_t gp = b * g.P + oh * g.Wo + ow;
        if (gp < g0 || gp >= g0 + np) continue;
        s += col[((ch * g.kh + ii) * g.kw + jj) * np + (gp - g0)];
      }
    }
    dx[b * per + rem] += s;
  }
}

template <class T, class A>
__global__ void k_store(const A* src, void* dst, int64_t n) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x)
    st<T, A>(dst, e, src[e]);
}

template <class T, class TW, class A>
struct ConvCuda {
  const Conv2dParams& p;
  ConvGeom g;
  int64_t npix;
  const bool bwd;
  A beta;
  ConvCuda(const Conv2dParams& pp, bool backward) : p(pp), bwd(backward) {
    g.B = pp.batch; g.Ci = pp.in_channels; g.H = pp.height; g.W = pp.width; g.Co = pp.out_channels;
    g.kh = pp.kernel_h; g.kw = pp.kernel_w; g.sh = pp.stride_h; g.sw = pp.stride_w; g.ph = pp.pad_h;
    g.pw = pp.pad_w; g.dh = pp.dil_h; g.dw = pp.dil_w;
    g.Ho = conv_out_size(g.H, g.kh, g.sh, g.ph, g.dh);
    g.Wo = conv_out_size(g.W, g.kw, g.sw, g.pw, g.dw);
    g.P = g.Ho * g.Wo;
    g.n = g.Ci * g.kh * g.kw;
    npix = g.B * g.P;
    beta = A(beta_concat_ratio(g.Ci, g.n));
  }
  static constexpr bool kSameX = std::is_same<T, A>::value;

  int64_t chunk() const {
    if (p.chunk_pixels > 0) return std::min<int64_t>(std::max<int64_t>(npix, 1), p.chunk_pixels);
    const int64_t per_pix = int64_t(sizeof(A)) * (g.n + 2 * g.Co + 8);
    int64_t pt = npix * g.Co * int64_t(sizeof(T)) / 4 / std::max<int64_t>(per_pix, 1);
    pt = std::max<int64_t>(pt, std::min<int64_t>(npix, 1024));
    return std::max<int64_t>(1, std::min(pt, npix));
  }
  struct Ws {
    A *Zc, *znorm, *rb, *col, *tile, *sbuf, *pixv, *part, *dWt, *acc, *dx;
    L::FcCol<A>* cols;
  };
  Ws layout(Arena& ar) const {
    Ws s{};
    const int64_t pt = chunk();
    s.Zc = ar.take<A>(g.Co * g.n);
    s.cols = ar.take<L::FcCol<A>>(g.Co);
    s.znorm = ar.take<A>(g.Co);
    s.rb = ar.take<A>(g.Co);
    s.col = ar.take<A>(g.n * pt);
    s.tile = ar.take<A>(g.Co * pt);
    s.pixv = ar.take<A>(5 * pt);
    if (bwd) {
      s.sbuf = ar.take<A>(g.Co * pt);
      s.part = ar.take<A>(((pt + kRowBlock - 1) / kRowBlock) * (2 * g.Co + 1));
      s.dWt = ar.take<A>(g.n * g.Co);
      s.acc = ar.take<A>(2 * g.Co + 1);
      s.dx = (!kSameX && p.grad_x) ? ar.take<A>(g.B * g.Ci * g.H * g.W) : nullptr;
    }
    return s;
  }
  size_t workspace() const {
    Arena ar(nullptr);
    layout(ar);
    return ar.used + 256;
  }

  Status run(cudaStream_t s_) {
    Arena ar(p.workspace);
    Ws s = layout(ar);
    if (ar.used > p.workspace_bytes) return invalid_argument("poincare cuda conv2d: workspace too small");
    const CurvArg cv = make_curv_arg(p.c);
    const DType io = p.x_dtype;
    const int64_t Co = g.Co, n = g.n;
    if (Co > 0)
      k_prep_weights<A, TW><<<unsigned(Co), kThreads, 0, s_>>>(p.weight, p.bias, Co, n, s.Zc, s.cols, s.znorm, s.rb,
                                                               cv, io);
    const bool need_w = p.grad_weight != nullptr, need_c = p.grad_c != nullptr;
    const bool need_r = p.bias != nullptr && (p.grad_bias != nullptr || need_c);
    A* dx = nullptr;
    if (bwd) {
      k_fill<A><<<grid_for(n * Co), kThreads, 0, s_>>>(s.dWt, n * Co, A(0));
      k_fill<A><<<1, kThreads, 0, s_>>>(s.acc, 2 * Co + 1, A(0));
      if (p.grad_x) {
        dx = kSameX ? static_cast<A*>(p.grad_x) : s.dx;
        k_fill<A><<<grid_for(g.B * g.Ci * g.H * g.W), kThreads, 0, s_>>>(dx, g.B * g.Ci * g.H * g.W, A(0));
      }
    }
    const int64_t pt = chunk();
    for (int64_t g0 = 0; g0 < npix; g0 += pt) {
      const int64_t np = std::min(pt, npix - g0);
      k_im2col<T, A><<<grid_for(n * np), kThreads, 0, s_>>>(p.x, g, g0, np, s.col);
      k_conv_prologue<A><<<grid_for(np), kThreads, 0, s_>>>(s.col, n, np, beta, s.pixv, cv, io);
      gemm<A>(s_, Co, np, n, s.Zc, n, 1, s.col, np, s.tile, np, false);
      k_scale_cols<A><<<grid_for(Co * np), kThreads, 0, s_>>>(s.tile, Co, np, s.pixv + np, beta);
      if (!bwd) {
        k_conv_forward_pixels<T, A><<<grid_for(np), kThreads, 0, s_>>>(s.tile, np, g0, g, s.pixv, s.cols, p.out, cv,
                                                                        io);
        continue;
      }
      const int64_t nblk = (np + kRowBlock - 1) / kRowBlock;
      k_conv_backward_pixels<T, A><<<grid_for(nblk, 64), 64, 0, s_>>>(s.tile, s.sbuf, np, g0, g, s.pixv, s.cols,
                                                                       p.grad, s.part, need_w, need_r, cv, io);
      k_reduce_partials<A><<<grid_for(2 * Co + 1), kThreads, 0, s_>>>(s.part, nblk, 2 * Co + 1, s.acc);
      k_scale_cols<A><<<grid_for(Co * np), kThreads, 0, s_>>>(s.tile, Co, np, s.pixv + np, beta);
      if (need_w) {
        k_transpose<A><<<grid_for(Co * np), kThreads, 0, s_>>>(s.tile, s.sbuf, Co, np);
        gemm<A>(s_, n, Co, np, s.col, np, 1, s.sbuf, Co, s.dWt, Co, true);
      }
      if (dx) {
        k_scale_rho<A><<<grid_for(n * np), kThreads, 0, s_>>>(s.col, n, np, s.pixv + 4 * np, beta * beta);
        gemm<A>(s_, n, np, Co, s.Zc, 1, n, s.tile, np, s.col, np, true);
        const int64_t imgs = (g0 + np - 1) / g.P - g0 / g.P + 1;
        k_col2im<A><<<grid_for(imgs * g.Ci * g.H * g.W), kThreads, 0, s_>>>(s.col, g, g0, np, dx);
      }
    }
    if (bwd) {
      if (dx && !kSameX)
        k_store<T, A><<<grid_for(g.B * g.Ci * g.H * g.W), kThreads, 0, s_>>>(dx, p.grad_x, g.B * g.Ci * g.H * g.W);
      k_fc_finish<A, TW><<<grid_for(std::max<int64_t>(Co * n, 1)), kThreads, 0, s_>>>(
          s.dWt, 1, Co, s.Zc, s.znorm, s.cols, s.acc, s.rb, Co, n, p.grad_weight, p.grad_bias, p.grad_c, p.c.dtype,
          p.bias != nullptr, cv);
    }
    return launch_status("poincare_conv2d");
  }
};

// ---- midpoint batch norm ------------------------------------------------------------------------------------
template <class T, class A>
struct DRow {
  const T* pt;
  const A* pa;
  int64_t s;
  __device__ A operator[](int64_t d) const { return pa ? pa[d] : ::fastnorm::detail::load_as<T, A>(pt[d * s]); }
};

struct BNGeom {
  int64_t C, inner, N;
};

template <class T, class A>
__device__ inline DRow<T, A> vrow(const void* base, const BNGeom& g, int64_t r) {
  return DRow<T, A>{static_cast<const T*>(base) + (r / g.inner) * g.C * g.inner + (r % g.inner), nullptr, g.inner};
}
template <class T, class A>
__device__ inline DRow<T, A> crow(const A* v) {
  return DRow<T, A>{nullptr, v, 1};
}

template <class A, int K, class R>
__device__ inline void accumulate(const R* r, const Vec<A, K>& co, int64_t D, A* acc) {
  for (int64_t d = 0; d < D; ++d) {
    A s = A(0);
    for (int i = 0; i < K; ++i)
      if (co.a[i] != A(0)) s += co.a[i] * r[i][d];
    acc[d] += s;
  }
}

template <class A>
__device__ inline A dotv(const A* a, const A* b, int64_t n) {
  A s = A(0);
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

// State shared by the BN kernels (in the workspace): scalars then C-vectors.
template <class A>
struct BNState {
  A c, sc, sigma2, gamma, dsig2, dQ, dgamma, twoN, eps_proj;
};
// The C-vectors of the state (workspace slices), passed to the kernels by value.
template <class A>
struct BNVecs {
  A* mu;
  A* m;
  A* dV;
  A* beta;
  A* rmv;
};

template <class A>
__device__ inline Curv<A> curv_of(A c) {
  return Curv<A>{c, sqrt(c)};
}

// One thread: μ = proj(exp0(β)), γ, c, m (eval: proj(running mean), σ² = running var).
template <class A>
__global__ void k_bn_setup(MidpointBNParams p, CurvArg cv, BNState<A>* S, BNVecs<A> V) {
  if (threadIdx.x || blockIdx.x) return;
  const int64_t C = p.layout.D;
  S->c = read_c<A>(cv);
  S->eps_proj = A(detail::default_eps(p.x_dtype));
  const Curv<A> k = curv_of(S->c);
  for (int64_t d = 0; d < C; ++d) V.beta[d] = load_any<A>(p.bias, p.w_dtype, d);
  const detail::Radial<A> rb = detail::expmap0_radial(dotv(V.beta, V.beta, C), k, S->eps_proj, true);
  for (int64_t d = 0; d < C; ++d) V.mu[d] = rb.fn * V.beta[d];
  S->gamma = load_any<A>(p.weight, p.w_dtype, 0);
}

template <class T, class A>
__global__ void k_bn_vq(MidpointBNParams p, BNGeom g, BNState<A>* S, BNVecs<A> V, A* part) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nb = (g.N + kBNBlock - 1) / kBNBlock;
  if (b >= nb) return;
  const Curv<A> k = curv_of(S->c);
  A* pv = part + b * (g.C + 1);
  for (int64_t d = 0; d <= g.C; ++d) pv[d] = A(0);
  for (int64_t r = b * kBNBlock; r < min(g.N, (b + 1) * kBNBlock); ++r) {
    const DRow<T, A> x = vrow<T, A>(p.x, g, r);
    A q = A(0);
    for (int64_t d = 0; d < g.C; ++d) q += x[d] * x[d];
    const detail::Radial<A> re = detail::expmap0_radial(q, k, S->eps_proj, true);
    const detail::Lambda<A> lam = detail::conformal(re.fn * re.fn * q, k);
    for (int64_t d = 0; d < g.C; ++d) pv[d] += lam.lam * re.fn * x[d];
    pv[g.C] += lam.lam - A(1);
  }
}

// One thread: V, Q → m (training), or m = proj(running mean) (eval).
template <class A>
__global__ void k_bn_mean(MidpointBNParams p, BNGeom g, BNState<A>* S, BNVecs<A> V, const A* part, int64_t nb, bool train) {
  if (threadIdx.x || blockIdx.x) return;
  const Curv<A> k = curv_of(S->c);
  const int64_t C = g.C;
  if (train) {
    A* Vs = V.dV;  // scratch
    A Q = A(0);
    for (int64_t d = 0; d < C; ++d) Vs[d] = A(0);
    for (int64_t b = 0; b < nb; ++b) {
      for (int64_t d = 0; d < C; ++d) Vs[d] += part[b * (C + 1) + d];
      Q += part[b * (C + 1) + C];
    }
    const A Qc = (Q < A(0) ? A(-1) : A(1)) * detail::m_max(Q < A(0) ? -Q : Q, A(detail::kQFloor));
    for (int64_t d = 0; d < C; ++d) Vs[d] /= Qc;
    const A sg = sqrt(detail::m_max(A(1) - S->c * dotv(Vs, Vs, C), A(0)));
    for (int64_t d = 0; d < C; ++d) V.m[d] = Vs[d] / (A(1) + sg);
    const detail::Radial<A> rp = detail::proj_radial(dotv(V.m, V.m, C), k, S->eps_proj);
    for (int64_t d = 0; d < C; ++d) V.m[d] *= rp.fn;
  } else {
    for (int64_t d = 0; d < C; ++d) V.rmv[d] = load_any<A>(p.running_mean, p.running_dtype, d);
    const detail::Radial<A> rp = detail::proj_radial(dotv(V.rmv, V.rmv, C), k, S->eps_proj);
    for (int64_t d = 0; d < C; ++d) V.m[d] = rp.fn * V.rmv[d];
    S->sigma2 = load_any<A>(p.running_var, p.running_dtype, 0);
  }
}

template <class T, class A>
__global__ void k_bn_d2(MidpointBNParams p, BNGeom g, BNState<A>* S, BNVecs<A> V, A* part) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nb = (g.N + kBNBlock - 1) / kBNBlock;
  if (b >= nb) return;
  const Curv<A> k = curv_of(S->c);
  A s = A(0);
  for (int64_t r = b * kBNBlock; r < min(g.N, (b + 1) * kBNBlock); ++r) {
    const DRow<T, A> rows[3] = {vrow<T, A>(p.x, g, r), crow<T, A>(V.m), crow<T, A>(V.mu)};
    Gram<A, 3> G;
    detail::gram<A, 3, 3, 1>(rows, g.C, G);
    L::BNRow<A, 3> row;
    L::bn_row_point(row, G, k, S->eps_proj);
    s += row.d * row.d;
  }
  part[b] = s;
}

// One thread: σ² (training), the stats outputs, sc.
template <class A>
__global__ void k_bn_stats(MidpointBNParams p, BNGeom g, BNState<A>* S, BNVecs<A> V, const A* part, int64_t nb, bool train,
                           DType sd) {
  if (threadIdx.x || blockIdx.x) return;
  if (train) {
    A s = A(0);
    for (int64_t b = 0; b < nb; ++b) s += part[b];
    S->sigma2 = g.N > 0 ? s / A(g.N) : A(0);
    for (int64_t d = 0; d < g.C; ++d) store_any<A>(p.mean, sd, d, V.m[d]);
  } else {
    for (int64_t d = 0; d < g.C; ++d) store_any<A>(p.mean, sd, d, V.rmv[d]);
  }
  store_any<A>(p.var, sd, 0, S->sigma2);
  S->sc = sqrt(S->gamma / (S->sigma2 + A(p.eps)));
}

template <class T, class A>
__global__ void k_bn_out(MidpointBNParams p, BNGeom g, BNState<A>* S, BNVecs<A> V) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= g.N) return;
  const Curv<A> k = curv_of(S->c);
  const DRow<T, A> rows[3] = {vrow<T, A>(p.x, g, r), crow<T, A>(V.m), crow<T, A>(V.mu)};
  Gram<A, 3> G;
  detail::gram<A, 3, 3, 1>(rows, g.C, G);
  L::BNRow<A, 3> row;
  L::bn_row_point(row, G, k, S->eps_proj);
  L::bn_row_out(row, G, S->sc, k, S->eps_proj);
  T* o = static_cast<T*>(p.out) + (r / g.inner) * g.C * g.inner + (r % g.inner);
  detail::emit<A, 3, 3>(rows, row.out, detail::vzero<A, 3>(), g.C, detail::SOut<T, A>{o, g.inner});
}

// Backward setup (one thread): m = proj(mean), σ², sc from the forward's statistics.
template <class A>
__global__ void k_bn_bwd_setup(MidpointBNParams p, BNGeom g, BNState<A>* S, BNVecs<A> V, DType sd) {
  if (threadIdx.x || blockIdx.x) return;
  const Curv<A> k = curv_of(S->c);
  for (int64_t d = 0; d < g.C; ++d) V.rmv[d] = load_any<A>(p.mean, sd, d);
  const detail::Radial<A> rp = detail::proj_radial(dotv(V.rmv, V.rmv, g.C), k, S->eps_proj);
  for (int64_t d = 0; d < g.C; ++d) V.m[d] = rp.fn * V.rmv[d];
  S->sigma2 = load_any<A>(p.var, sd, 0);
  S->sc = sqrt(S->gamma / (S->sigma2 + A(p.eps)));
  S->twoN = g.N > 0 ? A(2) / A(g.N) : A(0);
}

template <class T, class A>
__global__ void k_bn_q1(MidpointBNParams p, BNGeom g, BNState<A>* S, BNVecs<A> V, A* part, bool train) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nb = (g.N + kBNBlock - 1) / kBNBlock;
  if (b >= nb) return;
  const Curv<A> k = curv_of(S->c);
  const int64_t C = g.C, w = 4 * C + 3;
  A* pv = part + b * w;
  for (int64_t i = 0; i < w; ++i) pv[i] = A(0);
  for (int64_t r = b * kBNBlock; r < min(g.N, (b + 1) * kBNBlock); ++r) {
    const DRow<T, A> rows[4] = {vrow<T, A>(p.x, g, r), crow<T, A>(V.m), crow<T, A>(V.mu), vrow<T, A>(p.grad, g, r)};
    Gram<A, 4> G;
    detail::gram<A, 4, 4, 1>(rows, C, G);
    L::BNRow<A, 4> row;
    L::bn_row_point(row, G, k, S->eps_proj);
    L::bn_row_out(row, G, S->sc, k, S->eps_proj);
    const L::BNRowGrad<A, 4> gr = L::bn_row_backward(row, G, train, k);
    accumulate<A, 4>(rows, gr.dMu, C, pv);
    accumulate<A, 4>(rows, gr.dM, C, pv + C);
    if (train) {
      accumulate<A, 4>(rows, (S->twoN * row.d) * gr.dMd, C, pv + 2 * C);
      accumulate<A, 4>(rows, row.lam.lam * row.X, C, pv + 3 * C);
      pv[4 * C] += row.lam.lam - A(1);
    }
    pv[4 * C + 1] += gr.dsc;
    pv[4 * C + 2] += gr.g_out;
  }
}

// One thread: reduce Q1's partials (into part's first row), ∂γ, ∂σ², the midpoint VJP (∂V, ∂Q), ∂β, and the
// ∂c terms known here (stored in acc[0..]). scratch: 3C.
template <class A>
__global__ void k_bn_final(MidpointBNParams p, BNGeom g, BNState<A>* S, BNVecs<A> V, A* part, int64_t nb, bool train, A* scratch,
                           A* cterm) {
  if (threadIdx.x || blockIdx.x) return;
  const int64_t C = g.C, w = 4 * C + 3;
  const Curv<A> k = curv_of(S->c);
  for (int64_t b = 1; b < nb; ++b)
    for (int64_t i = 0; i < w; ++i) part[i] += part[b * w + i];
  const A* dmu = part;
  A* dm = part + C;
  const A* kk = part + 2 * C;
  const A* Vs = part + 3 * C;
  const A Q = part[4 * C], dsc = part[4 * C + 1], gout = part[4 * C + 2];
  const A sc = S->sc, sigma2 = S->sigma2, gamma = S->gamma;
  const A dgamma = gamma != A(0) ? dsc * sc / (A(2) * gamma) : dsc / (A(2) * sc * (sigma2 + A(p.eps)));
  A dsig2 = A(0), dQ = A(0), extra = A(0);
  for (int64_t d = 0; d < C; ++d) V.dV[d] = A(0);
  if (train) {
    dsig2 = -dsc * sc / (A(2) * (sigma2 + A(p.eps)));
    for (int64_t d = 0; d < C; ++d) dm[d] += dsig2 * kk[d];
    A* t = scratch;
    A* mpre = scratch + C;
    A* dmp = scratch + 2 * C;
    const A Qc = (Q < A(0) ? A(-1) : A(1)) * detail::m_max(Q < A(0) ? -Q : Q, A(detail::kQFloor));
    for (int64_t d = 0; d < C; ++d) t[d] = Vs[d] / Qc;
    const A sg = sqrt(detail::m_max(A(1) - k.c * dotv(t, t, C), A(0)));
    for (int64_t d = 0; d < C; ++d) mpre[d] = t[d] / (A(1) + sg);
    const detail::Radial<A> rp = detail::proj_radial(dotv(mpre, mpre, C), k, S->eps_proj);
    const A gm = dotv(dm, mpre, C);
    for (int64_t d = 0; d < C; ++d) dmp[d] = rp.fn * dm[d] + rp.k1 * gm * mpre[d];
    const A k2 = k.c * dotv(dmp, t, C) / (detail::m_max(sg, A(detail::kNu)) * (A(1) + sg) * (A(1) + sg));
    A dtt = A(0);
    for (int64_t d = 0; d < C; ++d) {
      const A dt = dmp[d] / (A(1) + sg) + k2 * t[d];
      V.dV[d] = dt / Qc;
      dtt += dt * t[d];
    }
    dQ = -dtt / Qc;
  } else {
    const detail::Radial<A> rpm = detail::proj_radial(dotv(V.rmv, V.rmv, C), k, S->eps_proj);
    const A gr = dotv(dm, V.rmv, C);
    for (int64_t d = 0; d < C; ++d) extra += (rpm.fn * dm[d] + rpm.k1 * gr * V.rmv[d]) * V.rmv[d];
  }
  const detail::Radial<A> rb = detail::expmap0_radial(dotv(V.beta, V.beta, C), k, S->eps_proj, true);
  const A gb = dotv(dmu, V.beta, C);
  A dbb = A(0);
  for (int64_t d = 0; d < C; ++d) {
    const A db = rb.fn * dmu[d] + rb.k1 * gb * V.beta[d];
    dbb += db * V.beta[d];
    if (p.grad_bias) store_any<A>(p.grad_bias, p.w_dtype, d, db);
  }
  if (p.grad_weight) store_any<A>(p.grad_weight, p.w_dtype, 0, dgamma);
  S->dsig2 = dsig2;
  S->dQ = dQ;
  S->dgamma = dgamma;
  cterm[0] = dbb + extra - gout;
  cterm[1] = train ? gamma * dgamma * sigma2 / (k.c * (sigma2 + A(p.eps))) : A(0);
}

template <class T, class A>
__global__ void k_bn_q2(MidpointBNParams p, BNGeom g, BNState<A>* S, BNVecs<A> V, A* part, bool train) {
  const int64_t b = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t nb = (g.N + kBNBlock - 1) / kBNBlock;
  if (b >= nb) return;
  const Curv<A> k = curv_of(S->c);
  A s = A(0);
  for (int64_t r = b * kBNBlock; r < min(g.N, (b + 1) * kBNBlock); ++r) {
    const DRow<T, A> rows[5] = {vrow<T, A>(p.x, g, r), crow<T, A>(V.m), crow<T, A>(V.mu), vrow<T, A>(p.grad, g, r),
                                crow<T, A>(V.dV)};
    Gram<A, 5> G;
    detail::gram<A, 5, 5, 1>(rows, g.C, G);
    L::BNRow<A, 5> row;
    L::bn_row_point(row, G, k, S->eps_proj);
    L::bn_row_out(row, G, S->sc, k, S->eps_proj);
    const L::BNRowGrad<A, 5> gr = L::bn_row_backward(row, G, train, k);
    Vec<A, 5> dX = gr.dX;
    if (train) {
      const Vec<A, 5> DV = detail::unit<A, 5>(L::kBDV);
      dX = dX + (S->dsig2 * S->twoN * row.d) * gr.dXd + row.lam.lam * DV +
           ((G.dot(DV, row.X) + S->dQ) * row.lam.kx) * row.X;
    }
    const Vec<A, 5> U = detail::unit<A, 5>(L::kBU);
    const Vec<A, 5> du = detail::radial_vjp(row.re, dX, G.dot(dX, U), U);
    s += G.dot(du, U);
    if (p.grad_x) {
      T* o = static_cast<T*>(p.grad_x) + (r / g.inner) * g.C * g.inner + (r % g.inner);
      detail::emit<A, 5, 5>(rows, du, detail::vzero<A, 5>(), g.C, detail::SOut<T, A>{o, g.inner});
    }
  }
  part[b] = s;
}

template <class A>
__global__ void k_bn_dc(MidpointBNParams p, BNState<A>* S, const A* part, int64_t nb, const A* cterm) {
  if (threadIdx.x || blockIdx.x) return;
  A s = A(0);
  for (int64_t b = 0; b < nb; ++b) s += part[b];
  store_any<A>(p.grad_c, p.c.dtype, 0, (s + cterm[0]) / (A(2) * S->c) + cterm[1]);
}

template <class T, class A>
struct BNCuda {
  const MidpointBNParams& p;
  BNGeom g;
  int64_t nb;
  explicit BNCuda(const MidpointBNParams& pp) : p(pp) {
    g.C = pp.layout.D;
    g.inner = pp.layout.inner;
    g.N = pp.layout.outer * pp.layout.inner;
    nb = (g.N + kBNBlock - 1) / kBNBlock;
  }
  size_t workspace() const {
    return sizeof(BNState<A>) + size_t(8 * g.C + nb * (4 * g.C + 3) + 16) * sizeof(A) + 1024;
  }
  DType sd() const { return std::is_same<A, double>::value ? DType::Float64 : DType::Float32; }

  Status run(bool bwd, cudaStream_t s_) {
    if (p.workspace_bytes < workspace()) return invalid_argument("poincare cuda bn: workspace too small");
    char* base = reinterpret_cast<char*>((reinterpret_cast<uintptr_t>(p.workspace) + 255) & ~uintptr_t(255));
    BNState<A>* S = reinterpret_cast<BNState<A>*>(base);
    A* vec = reinterpret_cast<A*>(base + ((sizeof(BNState<A>) + 255) & ~size_t(255)));
    BNVecs<A> V{vec, vec + g.C, vec + 2 * g.C, vec + 3 * g.C, vec + 4 * g.C};
    A* scratch = vec + 5 * g.C;  // 3C
    A* cterm = vec + 8 * g.C;    // 2
    A* part = vec + 8 * g.C + 8;
    const CurvArg cv = make_curv_arg(p.c);
    const bool train = p.use_batch_stats;
    k_bn_setup<A><<<1, 1, 0, s_>>>(p, cv, S, V);
    if (!bwd) {
      if (train) {
        k_bn_vq<T, A><<<grid_for(nb, 64), 64, 0, s_>>>(p, g, S, V, part);
        k_bn_mean<A><<<1, 1, 0, s_>>>(p, g, S, V, part, nb, true);
        k_bn_d2<T, A><<<grid_for(nb, 64), 64, 0, s_>>>(p, g, S, V, part);
      } else {
        k_bn_mean<A><<<1, 1, 0, s_>>>(p, g, S, V, part, nb, false);
      }
      k_bn_stats<A><<<1, 1, 0, s_>>>(p, g, S, V, part, nb, train, sd());
      if (g.N > 0) k_bn_out<T, A><<<grid_for(g.N, 128), 128, 0, s_>>>(p, g, S, V);
    } else {
      k_bn_bwd_setup<A><<<1, 1, 0, s_>>>(p, g, S, V, sd());
      k_bn_q1<T, A><<<grid_for(nb, 64), 64, 0, s_>>>(p, g, S, V, part, train);
      k_bn_final<A><<<1, 1, 0, s_>>>(p, g, S, V, part, std::max<int64_t>(nb, 1), train, scratch, cterm);
      if (p.grad_x || p.grad_c) {
        k_bn_q2<T, A><<<grid_for(nb, 64), 64, 0, s_>>>(p, g, S, V, part, train);
        if (p.grad_c) k_bn_dc<A><<<1, 1, 0, s_>>>(p, S, part, nb, cterm);
      }
    }
    return launch_status("poincare_midpoint_batch_norm");
  }
};

// Running update (one thread; C is small): rows read straight from the buffers (any float dtype).
template <class A>
struct AnyRow {
  const void* p;
  DType t;
  __device__ A operator[](int64_t d) const { return load_any<A>(p, t, d); }
};

template <class A>
__global__ void k_bn_running(BNUpdateParams p, CurvArg cv) {
  if (threadIdx.x || blockIdx.x) return;
  const int64_t C = p.channels;
  const Curv<A> k = curv_of(read_c<A>(cv));
  const A eps = A(detail::default_eps(p.running_dtype));
  const AnyRow<A> rows[2] = {AnyRow<A>{p.running_mean, p.running_dtype}, AnyRow<A>{p.mean, p.stats_dtype}};
  Gram<A, 2> G;
  detail::gram<A, 2, 2, 1>(rows, C, G);
  const detail::Radial<A> rp = detail::proj_radial(G.g[0][0], k, eps);
  const Vec<A, 2> RM = detail::unit<A, 2>(0, rp.fn);
  const Vec<A, 2> M = detail::unit<A, 2>(1);
  const auto z = detail::mobius(A(-1) * RM, M, G, k);
  const A zz = detail::m_max(G.dot(z.z, z.z), A(0));
  const auto sm = detail::scalar_mul_radial(A(p.momentum), zz, k);
  const auto y = detail::mobius(RM, sm.rad.fn * z.z, G, k);
  const A yy = detail::m_max(G.dot(y.z, y.z), A(0));
  const detail::Radial<A> rq = detail::proj_radial(yy, k, eps);
  const Vec<A, 2> out = rq.fn * y.z;
  for (int64_t d = 0; d < C; ++d)  // element d is read before it is written
    store_any<A>(p.running_mean, p.running_dtype, d, out.a[0] * rows[0][d] + out.a[1] * rows[1][d]);
  const A rv = load_any<A>(p.running_var, p.running_dtype, 0);
  const A var = load_any<A>(p.var, p.stats_dtype, 0);
  const A kk = A(p.momentum), nn = A(p.count);
  store_any<A>(p.running_var, p.running_dtype, 0, (A(1) - kk) * rv + kk * var * nn / (nn - A(1)));
}

// ---- dispatch -----------------------------------------------------------------------------------------------
template <template <class, class, class> class Op, class P, class F>
Status with_op(const P& p, bool backward, F&& f) {
  auto go = [&](auto tx) -> Status {
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
  };
  switch (p.x_dtype) {
    case DType::Float32: return go(float{});
    case DType::Float64: return go(double{});
    case DType::Float16: return go(f16_t{});
    case DType::BFloat16: return go(bf16_t{});
    default: return unsupported("x dtype");
  }
}

template <class F>
Status with_bn(const MidpointBNParams& p, F&& f) {
  switch (p.x_dtype) {
    case DType::Float32: { BNCuda<float, float> op(p); return f(op); }
    case DType::Float64: { BNCuda<double, double> op(p); return f(op); }
    case DType::Float16: { BNCuda<f16_t, float> op(p); return f(op); }
    case DType::BFloat16: { BNCuda<bf16_t, float> op(p); return f(op); }
    default: return unsupported("x dtype");
  }
}

template <class P>
bool is_backward(const P& p) {
  return p.grad || p.grad_x || p.grad_weight || p.grad_bias || p.grad_c;
}

}  // namespace

size_t linear_workspace_bytes(const LinearParams& p) {
  size_t r = 0;
  with_op<LinearCuda>(p, is_backward(p), [&](auto& op) { r = op.workspace(); return Status::OK(); });
  return r;
}
Status linear_fwd(const LinearParams& p, cudaStream_t s) {
  if (p.rows < 0 || p.in_features < 0 || p.out_features < 0 || !p.c.ptr) return invalid_argument("bad linear params");
  return with_op<LinearCuda>(p, false, [&](auto& op) { return op.run(s); });
}
Status linear_bwd(const LinearParams& p, cudaStream_t s) {
  if (p.rows < 0 || p.in_features < 0 || p.out_features < 0 || !p.c.ptr) return invalid_argument("bad linear params");
  return with_op<LinearCuda>(p, true, [&](auto& op) { return op.run(s); });
}

size_t conv2d_workspace_bytes(const Conv2dParams& p) {
  size_t r = 0;
  with_op<ConvCuda>(p, is_backward(p), [&](auto& op) { r = op.workspace(); return Status::OK(); });
  return r;
}
Status conv2d_fwd(const Conv2dParams& p, cudaStream_t s) {
  if (!p.c.ptr || p.kernel_h < 1 || p.kernel_w < 1) return invalid_argument("bad conv params");
  return with_op<ConvCuda>(p, false, [&](auto& op) { return op.run(s); });
}
Status conv2d_bwd(const Conv2dParams& p, cudaStream_t s) {
  if (!p.c.ptr || p.kernel_h < 1 || p.kernel_w < 1) return invalid_argument("bad conv params");
  return with_op<ConvCuda>(p, true, [&](auto& op) { return op.run(s); });
}

size_t bn_workspace_bytes(const MidpointBNParams& p) {
  size_t r = 0;
  with_bn(p, [&](auto& op) { r = op.workspace(); return Status::OK(); });
  return r;
}
Status bn_fwd(const MidpointBNParams& p, cudaStream_t s) {
  if (!p.c.ptr || !p.weight || !p.bias || !p.mean || !p.var) return invalid_argument("bad bn params");
  return with_bn(p, [&](auto& op) { return op.run(false, s); });
}
Status bn_bwd(const MidpointBNParams& p, cudaStream_t s) {
  if (!p.c.ptr || !p.weight || !p.bias || !p.mean || !p.var) return invalid_argument("bad bn params");
  return with_bn(p, [&](auto& op) { return op.run(true, s); });
}

Status bn_running_update(const BNUpdateParams& p, cudaStream_t s) {
  if (p.channels < 0 || p.count < 2 || !p.c.ptr) return invalid_argument("bad running-update params");
  k_bn_running<double><<<1, 1, 0, s>>>(p, make_curv_arg(p.c));
  return launch_status("poincare_bn_running_update_");
}

}  // namespace cuda
}  // namespace poincare
}  // namespace fastnorm

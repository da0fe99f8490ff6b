// CUDA kernels of EvoNorm B0 / S0 (specs/norm.md §3.9), NCHW and channels_last.
//
// Plan (correctness first; every reduction has a fixed order, so results are bitwise reproducible):
//  1. statistics: one block per (sample, group of channels) — a B0 plane is a group of one channel — each
//     thread takes a two-pass mean/M2 of its strided share, then the block merges the partial moments in a
//     fixed tree (Chan et al.);
//  2. per-channel / per-group combination: one thread per channel (loops over the batch in order);
//  3. the element pass (y or dx): a grid-stride loop over all elements.
// The backward's per-(b, c) sums use one block per plane with a fixed tree reduction. The element math is
// the FASTNORM_HD code of detail/norm_evonorm_math.h that the CPU kernels run.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "fastnorm/detail/norm_evonorm_math.h"
#include "fastnorm/detail/norm_math.h"
#include "fastnorm/norm_evonorm_cuda.h"

namespace fastnorm {
namespace norm {
namespace cuda {
namespace {

using fastnorm::detail::bf16_to_float;
using fastnorm::detail::f16_to_float;
using fastnorm::detail::float_to_bf16;
using fastnorm::detail::float_to_f16;
using fastnorm::detail::load_as;
using fastnorm::detail::store_from;
using namespace fastnorm::norm::detail;

constexpr int kThreads = 256;

size_t acc_size(DType x) { return x == DType::Float64 ? 8 : 4; }

Status launch_status(const char* op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return Status(StatusCode::CudaError, std::string(op) + ": " + cudaGetErrorString(e));
  return Status::OK();
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535 * 8));
}

// A parameter element of any float dtype as A.
template <typename A> __device__ A load_param(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float32: return static_cast<A>(static_cast<const float*>(p)[i]);
    case DType::Float64: return static_cast<A>(static_cast<const double*>(p)[i]);
    case DType::BFloat16: return static_cast<A>(bf16_to_float(static_cast<const uint16_t*>(p)[i]));
    case DType::Float16: return static_cast<A>(f16_to_float(static_cast<const uint16_t*>(p)[i]));
    default: return A(0);
  }
}
__device__ void store_param(void* p, DType t, int64_t i, double v) {
  switch (t) {
    case DType::Float32: static_cast<float*>(p)[i] = static_cast<float>(v); break;
    case DType::Float64: static_cast<double*>(p)[i] = v; break;
    case DType::BFloat16: static_cast<uint16_t*>(p)[i] = float_to_bf16(static_cast<float>(v)); break;
    case DType::Float16: static_cast<uint16_t*>(p)[i] = float_to_f16(static_cast<float>(v)); break;
    default: break;
  }
}

// Offset of element (b, c, hw).
__device__ __forceinline__ int64_t offset_of(int64_t b, int64_t c, int64_t hw, int64_t C, int64_t HW, bool cl) {
  return cl ? (b * HW + hw) * C + c : (b * C + c) * HW + hw;
}
// (b, c) of flat element i of the tensor as stored.
__device__ __forceinline__ void bc_of(int64_t i, int64_t C, int64_t HW, bool cl, int64_t& b, int64_t& c) {
  if (cl) { c = i % C; b = i / (HW * C); }
  else { c = (i / HW) % C; b = i / (HW * C); }
}

// Mean and M2 over (sample b, channels [g*cg, (g+1)*cg), all hw); one block per (b, g).
template <typename T, typename A>
__global__ void group_moments_kernel(const T* __restrict__ x, int64_t C, int64_t HW, int64_t cg, bool cl,
                                     A* __restrict__ mean_out, A* __restrict__ m2_out) {
  const int64_t G = C / cg;
  const int64_t bg = blockIdx.x, b = bg / G, c0 = (bg % G) * cg;
  const int64_t n = cg * HW;
  // NCHW: the group is one contiguous run; NHWC: hw-major rows of cg channels.
  auto at = [&](int64_t k) -> A {
    const int64_t off = cl ? (b * HW + k / cg) * C + c0 + k % cg : (b * C + c0) * HW + k;
    return load_as<T, A>(x[off]);
  };
  A s = 0;
  int64_t cnt = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) { s += at(k); ++cnt; }
  const A m = cnt > 0 ? s / static_cast<A>(cnt) : A(0);
  A m2 = 0;
  for (int64_t k = threadIdx.x; k < n; k += blockDim.x) { const A d = at(k) - m; m2 += d * d; }
  __shared__ Moments<A> sh[kThreads];
  sh[threadIdx.x] = Moments<A>{static_cast<A>(cnt), m, m2};
  __syncthreads();
  for (int st = kThreads / 2; st > 0; st >>= 1) {
    if (threadIdx.x < st) sh[threadIdx.x] = merge(sh[threadIdx.x], sh[threadIdx.x + st]);
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    mean_out[bg] = n > 0 ? sh[0].mean : static_cast<A>(NAN);
    m2_out[bg] = sh[0].m2;
  }
}

// Per-(b, c) sums of K terms f(x, dy, b, c) over hw; one block per plane, fixed-order tree.
template <typename T, typename A, int K, class F>
__global__ void plane_sums_kernel(const T* __restrict__ x, const T* __restrict__ dy, int64_t C, int64_t HW, bool cl,
                                  F f, A* __restrict__ out) {
  const int64_t bc = blockIdx.x, b = bc / C, c = bc % C, BC = static_cast<int64_t>(gridDim.x);
  A acc[K];
#pragma unroll
  for (int k = 0; k < K; ++k) acc[k] = 0;
  for (int64_t hw = threadIdx.x; hw < HW; hw += blockDim.x) {
    const int64_t off = offset_of(b, c, hw, C, HW, cl);
    f(load_as<T, A>(x[off]), load_as<T, A>(dy[off]), b, c, acc);
  }
  __shared__ A sh[K][kThreads];
#pragma unroll
  for (int k = 0; k < K; ++k) sh[k][threadIdx.x] = acc[k];
  __syncthreads();
  for (int st = kThreads / 2; st > 0; st >>= 1) {
    if (threadIdx.x < st) {
#pragma unroll
      for (int k = 0; k < K; ++k) sh[k][threadIdx.x] += sh[k][threadIdx.x + st];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
#pragma unroll
    for (int k = 0; k < K; ++k) out[k * BC + bc] = sh[k][0];
  }
}

// ---- B0 forward ------------------------------------------------------------------------------------
// One thread per channel: S_bc, the batch variance (Chan merge of equal-count planes), running var, L_c.
template <typename A>
__global__ void b0_channel_kernel(EvoNormB0Params p, const A* __restrict__ pmean, const A* __restrict__ pm2,
                                  A* __restrict__ L) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t B = p.batch, C = p.channels, HW = p.spatial;
  if (c >= C) return;
  A* istd = static_cast<A*>(p.inst_std);
  A* lvar = static_cast<A*>(p.left_var);
  for (int64_t b = 0; b < B; ++b) istd[b * C + c] = evo_root(static_cast<A>(pm2[b * C + c] / static_cast<A>(HW)), p.eps);
  if (p.training) {
    double mu = 0;
    for (int64_t b = 0; b < B; ++b) mu += pmean[b * C + c];
    mu /= static_cast<double>(B);
    double m2 = 0, dev = 0;
    for (int64_t b = 0; b < B; ++b) {
      const double d = pmean[b * C + c] - mu;
      m2 += pm2[b * C + c];
      dev += d * d;
    }
    const int64_t n = B * HW;
    const double var = (m2 + static_cast<double>(HW) * dev) / static_cast<double>(n);
    lvar[c] = static_cast<A>(var);
    if (p.new_running_var != nullptr)
      store_param(p.new_running_var, p.rv_dtype, c,
                  evo_running_var(load_param<double>(p.running_var, p.rv_dtype, c), var, p.momentum, n, p.semantics));
  } else {
    lvar[c] = load_param<A>(p.running_var, p.rv_dtype, c);
  }
  L[c] = evo_root(lvar[c], p.eps);
}

template <typename T, typename A>
__global__ void b0_y_kernel(EvoNormB0Params p, const A* __restrict__ L) {
  const int64_t C = p.channels, HW = p.spatial, total = p.batch * C * HW;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  const A* istd = static_cast<const A*>(p.inst_std);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t b, c;
    bc_of(i, C, HW, p.channels_last, b, c);
    const A xv = load_as<T, A>(x[i]);
    const A r = load_param<A>(p.v, p.w_dtype, c) * xv + istd[b * C + c];
    y[i] = store_from<T, A>(b0_y(xv, evo_max(L[c], r), load_param<A>(p.weight, p.w_dtype, c),
                                 load_param<A>(p.bias, p.w_dtype, c)));
  }
}

// ---- B0 backward -----------------------------------------------------------------------------------
template <typename A> struct B0SumsF {
  const A* L; const A* istd; const void* w; const void* v; DType wd; int64_t C; EvoSemantics sem;
  __device__ void operator()(A xv, A g, int64_t b, int64_t c, A* acc) const {
    const A lc = L[c];
    const A r = load_param<A>(v, wd, c) * xv + istd[b * C + c];
    const A d = evo_max(lc, r);
    const A pp = evo_p(lc, r, sem);
    const A e = -(g * load_param<A>(w, wd, c)) * xv / (d * d);
    acc[0] += xv; acc[1] += pp * e; acc[2] += (A(1) - pp) * e; acc[3] += pp * e * xv; acc[4] += g * xv / d;
    acc[5] += g;
  }
};

template <typename A>
__global__ void b0_L_kernel(const A* __restrict__ lvar, int64_t C, double eps, A* __restrict__ L) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (c < C) L[c] = evo_root(lvar[c], eps);
}

// One thread per channel: weight gradients and the batch-term coefficients; then (b, c) coefficients.
template <typename A>
__global__ void b0_bwd_channel_kernel(EvoNormB0BwdParams p, A* __restrict__ sums, const A* __restrict__ L,
                                      A* __restrict__ mu, A* __restrict__ coef_l) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t B = p.batch, C = p.channels, HW = p.spatial, BC = B * C, n = B * HW;
  if (c >= C) return;
  A *sx = sums, *spe = sums + BC, *sqe = sums + 2 * BC, *spex = sums + 3 * BC, *sdyxd = sums + 4 * BC,
    *sdy = sums + 5 * BC;
  const A* istd = static_cast<const A*>(p.inst_std);
  A q = 0, m = 0, dv = 0, dw = 0, db = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t k = b * C + c;
    q += sqe[k]; m += sx[k]; dv += spex[k]; dw += sdyxd[k]; db += sdy[k];
    sx[k] = sx[k] / static_cast<A>(HW);                  // m_bc (only this thread touches column c)
    spe[k] = spe[k] / (static_cast<A>(HW) * istd[k]);    // coef_s
  }
  mu[c] = p.training ? m / static_cast<A>(n) : A(0);
  coef_l[c] = p.training ? q / (static_cast<A>(n) * L[c]) : A(0);
  if (p.dweight != nullptr) store_param(p.dweight, p.w_dtype, c, dw);
  if (p.dbias != nullptr) store_param(p.dbias, p.w_dtype, c, db);
  if (p.dv != nullptr) store_param(p.dv, p.w_dtype, c, dv);
}

template <typename T, typename A>
__global__ void b0_dx_kernel(EvoNormB0BwdParams p, const A* __restrict__ sums, const A* __restrict__ L,
                             const A* __restrict__ mu, const A* __restrict__ coef_l) {
  const int64_t C = p.channels, HW = p.spatial, BC = p.batch * C, total = BC * HW;
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const A* istd = static_cast<const A*>(p.inst_std);
  const A *mbc = sums, *cs = sums + BC;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t b, c;
    bc_of(i, C, HW, p.channels_last, b, c);
    const int64_t k = b * C + c;
    const A xv = load_as<T, A>(x[i]);
    const A vc = load_param<A>(p.v, p.w_dtype, c);
    const A r = vc * xv + istd[k];
    const A u = load_as<T, A>(dy[i]) * load_param<A>(p.weight, p.w_dtype, c);
    dx[i] = store_from<T, A>(b0_dx(u, xv, evo_max(L[c], r), evo_p(L[c], r, p.semantics), vc, mbc[k], cs[k], mu[c],
                                   coef_l[c]));
  }
}

// ---- S0 ----------------------------------------------------------------------------------------------
template <typename A>
__global__ void s0_group_kernel(EvoNormS0Params p, const A* __restrict__ m2, A* __restrict__ gstd) {
  const int64_t bg = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t G = p.groups, ng = (p.channels / G) * p.spatial;
  if (bg >= p.batch * G) return;
  const double sd = evo_std(m2[bg], ng, p.eps);
  gstd[bg] = static_cast<A>(sd);
  static_cast<A*>(p.group_rstd)[bg] = static_cast<A>(1.0 / sd);
}

template <typename T, typename A>
__global__ void s0_y_kernel(EvoNormS0Params p, const A* __restrict__ gstd) {
  const int64_t C = p.channels, HW = p.spatial, total = p.batch * C * HW, G = p.groups, cg = C / G;
  const T* x = static_cast<const T*>(p.x);
  T* y = static_cast<T*>(p.y);
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t b, c;
    bc_of(i, C, HW, p.channels_last, b, c);
    const A xv = load_as<T, A>(x[i]);
    const A sig = evo_sigmoid(load_param<A>(p.v, p.w_dtype, c) * xv);
    y[i] = store_from<T, A>(s0_y(xv, sig, gstd[b * G + c / cg], load_param<A>(p.weight, p.w_dtype, c),
                                 load_param<A>(p.bias, p.w_dtype, c)));
  }
}

template <typename A> struct S0SumsF {
  const void* w; const void* v; DType wd;
  __device__ void operator()(A xv, A g, int64_t, int64_t c, A* acc) const {
    const A sig = evo_sigmoid(load_param<A>(v, wd, c) * xv);
    const A h = xv * sig;
    const A u = g * load_param<A>(w, wd, c);
    acc[0] += u * h; acc[1] += u * xv * xv * sig * (A(1) - sig); acc[2] += g * h; acc[3] += g;
  }
};

template <typename A>
__global__ void s0_bwd_channel_kernel(EvoNormS0BwdParams p, const A* __restrict__ sums) {
  const int64_t c = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t B = p.batch, C = p.channels, G = p.groups, cg = C / G, BC = B * C;
  if (c >= C) return;
  const A *suxs = sums + BC, *sdyh = sums + 2 * BC, *sdy = sums + 3 * BC;
  const A* grstd = static_cast<const A*>(p.group_rstd);
  A dv = 0, dw = 0, db = 0;
  for (int64_t b = 0; b < B; ++b) {
    const A r = grstd[b * G + c / cg];
    const int64_t k = b * C + c;
    dv += r * suxs[k]; dw += r * sdyh[k]; db += sdy[k];
  }
  if (p.dweight != nullptr) store_param(p.dweight, p.w_dtype, c, dw);
  if (p.dbias != nullptr) store_param(p.dbias, p.w_dtype, c, db);
  if (p.dv != nullptr) store_param(p.dv, p.w_dtype, c, dv);
}

// One thread per (b, g): -r^3 * sum_g u*h / n_g, written over the group's u*x^2*sig' partials (read above).
template <typename A>
__global__ void s0_bwd_group_kernel(EvoNormS0BwdParams p, A* __restrict__ sums) {
  const int64_t bg = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t C = p.channels, G = p.groups, cg = C / G, BC = p.batch * C;
  if (bg >= p.batch * G) return;
  const int64_t b = bg / G, g = bg % G;
  A t = 0;
  for (int64_t j = 0; j < cg; ++j) t += sums[b * C + g * cg + j];
  const A r = static_cast<const A*>(p.group_rstd)[bg];
  const A coef = -r * r * r * t / static_cast<A>(cg * p.spatial);
  for (int64_t j = 0; j < cg; ++j) sums[BC + b * C + g * cg + j] = coef;
}

template <typename T, typename A>
__global__ void s0_dx_kernel(EvoNormS0BwdParams p, const A* __restrict__ sums) {
  const int64_t C = p.channels, HW = p.spatial, BC = p.batch * C, total = BC * HW, G = p.groups, cg = C / G;
  const T* x = static_cast<const T*>(p.x);
  const T* dy = static_cast<const T*>(p.dy);
  T* dx = static_cast<T*>(p.dx);
  const A* gmean = static_cast<const A*>(p.group_mean);
  const A* grstd = static_cast<const A*>(p.group_rstd);
  const A* coef = sums + BC;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t b, c;
    bc_of(i, C, HW, p.channels_last, b, c);
    const int64_t bg = b * G + c / cg;
    const A xv = load_as<T, A>(x[i]);
    const A vc = load_param<A>(p.v, p.w_dtype, c);
    const A u = load_as<T, A>(dy[i]) * load_param<A>(p.weight, p.w_dtype, c);
    dx[i] = store_from<T, A>(s0_dx(u, xv, evo_sigmoid(vc * xv), vc, grstd[bg], gmean[bg], coef[b * C + c]));
  }
}

int cgrid(int64_t n) { return static_cast<int>(std::max<int64_t>((n + kThreads - 1) / kThreads, 1)); }

// ---- launchers ---------------------------------------------------------------------------------------
template <typename T, typename A>
Status b0_fwd_t(const EvoNormB0Params& p, cudaStream_t s) {
  const int64_t B = p.batch, C = p.channels, HW = p.spatial, BC = B * C;
  if (C == 0) return Status::OK();
  A* ws = static_cast<A*>(p.workspace);
  A *pmean = ws, *pm2 = ws + BC, *L = ws + 2 * BC;
  if (BC > 0)
    group_moments_kernel<T, A><<<static_cast<unsigned>(BC), kThreads, 0, s>>>(
        static_cast<const T*>(p.x), C, HW, 1, p.channels_last, pmean, pm2);
  b0_channel_kernel<A><<<cgrid(C), kThreads, 0, s>>>(p, pmean, pm2, L);
  if (BC * HW > 0) b0_y_kernel<T, A><<<grid_for(BC * HW), kThreads, 0, s>>>(p, L);
  return launch_status("evonorm_b0");
}

template <typename T, typename A>
Status b0_bwd_t(const EvoNormB0BwdParams& p, cudaStream_t s) {
  const int64_t B = p.batch, C = p.channels, HW = p.spatial, BC = B * C;
  if (C == 0) return Status::OK();
  A* sums = static_cast<A*>(p.workspace);
  A *L = sums + 6 * BC, *mu = L + C, *coef_l = mu + C;
  b0_L_kernel<A><<<cgrid(C), kThreads, 0, s>>>(static_cast<const A*>(p.left_var), C, p.eps, L);
  if (BC > 0) {
    B0SumsF<A> f{L, static_cast<const A*>(p.inst_std), p.weight, p.v, p.w_dtype, C, p.semantics};
    plane_sums_kernel<T, A, 6><<<static_cast<unsigned>(BC), kThreads, 0, s>>>(
        static_cast<const T*>(p.x), static_cast<const T*>(p.dy), C, HW, p.channels_last, f, sums);
  }
  b0_bwd_channel_kernel<A><<<cgrid(C), kThreads, 0, s>>>(p, sums, L, mu, coef_l);
  if (BC * HW > 0) b0_dx_kernel<T, A><<<grid_for(BC * HW), kThreads, 0, s>>>(p, sums, L, mu, coef_l);
  return launch_status("evonorm_b0_backward");
}

template <typename T, typename A>
Status s0_fwd_t(const EvoNormS0Params& p, cudaStream_t s) {
  const int64_t B = p.batch, C = p.channels, HW = p.spatial, G = p.groups, BG = B * G;
  if (BG == 0) return Status::OK();
  A* ws = static_cast<A*>(p.workspace);
  A *m2 = ws, *gstd = ws + BG;
  group_moments_kernel<T, A><<<static_cast<unsigned>(BG), kThreads, 0, s>>>(
      static_cast<const T*>(p.x), C, HW, C / G, p.channels_last, static_cast<A*>(p.group_mean), m2);
  s0_group_kernel<A><<<cgrid(BG), kThreads, 0, s>>>(p, m2, gstd);
  if (B * C * HW > 0) s0_y_kernel<T, A><<<grid_for(B * C * HW), kThreads, 0, s>>>(p, gstd);
  return launch_status("evonorm_s0");
}

template <typename T, typename A>
Status s0_bwd_t(const EvoNormS0BwdParams& p, cudaStream_t s) {
  const int64_t B = p.batch, C = p.channels, HW = p.spatial, BC = B * C;
  if (C == 0) return Status::OK();
  A* sums = static_cast<A*>(p.workspace);
  if (BC > 0) {
    S0SumsF<A> f{p.weight, p.v, p.w_dtype};
    plane_sums_kernel<T, A, 4><<<static_cast<unsigned>(BC), kThreads, 0, s>>>(
        static_cast<const T*>(p.x), static_cast<const T*>(p.dy), C, HW, p.channels_last, f, sums);
  }
  s0_bwd_channel_kernel<A><<<cgrid(C), kThreads, 0, s>>>(p, sums);
  if (BC > 0) s0_bwd_group_kernel<A><<<cgrid(B * p.groups), kThreads, 0, s>>>(p, sums);
  if (BC * HW > 0) s0_dx_kernel<T, A><<<grid_for(BC * HW), kThreads, 0, s>>>(p, sums);
  return launch_status("evonorm_s0_backward");
}

template <template <typename, typename> class K, typename P>
Status by_dtype(const P& p, cudaStream_t s) {
  switch (p.x_dtype) {
    case DType::Float32: return K<float, float>::run(p, s);
    case DType::Float64: return K<double, double>::run(p, s);
    case DType::BFloat16: return K<bf16_t, float>::run(p, s);
    case DType::Float16: return K<f16_t, float>::run(p, s);
    default: return unsupported("evonorm: unsupported x dtype");
  }
}
template <typename T, typename A> struct B0Fwd {
  static Status run(const EvoNormB0Params& p, cudaStream_t s) { return b0_fwd_t<T, A>(p, s); }
};
template <typename T, typename A> struct B0Bwd {
  static Status run(const EvoNormB0BwdParams& p, cudaStream_t s) { return b0_bwd_t<T, A>(p, s); }
};
template <typename T, typename A> struct S0Fwd {
  static Status run(const EvoNormS0Params& p, cudaStream_t s) { return s0_fwd_t<T, A>(p, s); }
};
template <typename T, typename A> struct S0Bwd {
  static Status run(const EvoNormS0BwdParams& p, cudaStream_t s) { return s0_bwd_t<T, A>(p, s); }
};

}  // namespace

size_t evonorm_b0_fwd_workspace_bytes(const EvoNormB0Params& p) {
  return static_cast<size_t>(std::max<int64_t>(2 * p.batch * p.channels + p.channels, 0)) * acc_size(p.x_dtype);
}
size_t evonorm_s0_fwd_workspace_bytes(const EvoNormS0Params& p) {
  return static_cast<size_t>(std::max<int64_t>(2 * p.batch * p.groups, 0)) * acc_size(p.x_dtype);
}
size_t evonorm_b0_bwd_workspace_bytes(const EvoNormB0BwdParams& p) {
  return static_cast<size_t>(std::max<int64_t>(6 * p.batch * p.channels + 3 * p.channels, 0)) * acc_size(p.x_dtype);
}
size_t evonorm_s0_bwd_workspace_bytes(const EvoNormS0BwdParams& p) {
  return static_cast<size_t>(std::max<int64_t>(4 * p.batch * p.channels, 0)) * acc_size(p.x_dtype);
}

Status evonorm_b0_fwd(const EvoNormB0Params& p, cudaStream_t stream) {
  Status s = validate(p);
  if (s.ok() && p.channels > 0 && p.workspace == nullptr) s = invalid_argument("evonorm_b0: workspace is required");
  return s.ok() ? by_dtype<B0Fwd>(p, stream) : s;
}
Status evonorm_b0_bwd(const EvoNormB0BwdParams& p, cudaStream_t stream) {
  Status s = validate(p);
  if (s.ok() && p.channels > 0 && p.workspace == nullptr)
    s = invalid_argument("evonorm_b0_backward: workspace is required");
  return s.ok() ? by_dtype<B0Bwd>(p, stream) : s;
}
Status evonorm_s0_fwd(const EvoNormS0Params& p, cudaStream_t stream) {
  Status s = validate(p);
  if (s.ok() && p.batch > 0 && p.channels > 0 && p.workspace == nullptr)
    s = invalid_argument("evonorm_s0: workspace is required");
  return s.ok() ? by_dtype<S0Fwd>(p, stream) : s;
}
Status evonorm_s0_bwd(const EvoNormS0BwdParams& p, cudaStream_t stream) {
  Status s = validate(p);
  return s.ok() ? by_dtype<S0Bwd>(p, stream) : s;
}

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

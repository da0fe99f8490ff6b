// CUDA kernels of PowerNorm (specs/norm.md §3.6): training forward, approximate backward, eval.
//
// Numerics are those of the CPU kernels (core/cpu/norm_power.cpp): per-token and per-channel formulas come
// from detail/norm_power_math.h, conversions from detail/dtype.h, accumulation is float (double for float64
// x), -fmad=false keeps every rounding point. Only the order of the sums differs from the CPU.
//
// Kernel plan (deterministic, no atomics; correctness first -- x is read three times in the forward):
//   forward:  group_rstd_kernel   one warp per token: GroupScaling's factor per group (warp-shuffle sums)
//             colsum_fwd_kernel   (channel tile x row chunk): sum over the chunk's non-pad tokens of xt^2 and
//                                 the chunk's valid-token count, into the chunk's partial row
//             finalize_fwd_kernel one thread per channel: partials in chunk order -> x2, denom, running_phi
//             apply_kernel        element-wise y = weight * xt / denom + bias
//   backward: bwd_dx_kernel       one warp per token: dxt, the group sums of dxt*xt, then dx
//             colsum_bwd_kernel   per chunk: sums of dy*z, dy, and over P (all or non-pad) dy*z, z^2, |P|
//             finalize_bwd_kernel one thread per channel: dweight, dbias, new ema_gz
//   eval:     eval_kernel         one warp per token: group factors then y
// The row chunks are a function of M only. Nothing here synchronises the stream; every launch is followed by
// cudaGetLastError.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/norm_power_math.h"
#include "fastnorm/norm_power_cuda.h"

namespace fastnorm {
namespace norm {
namespace cuda {
namespace {

namespace pm = power_math;
using fastnorm::detail::load_as;
using fastnorm::detail::store_from;

constexpr int kWarpsPerBlock = 8;
constexpr int kColThreads = 128;

int64_t num_chunks(int64_t M) {
  if (M <= 0) return 0;
  const int64_t rows = std::max<int64_t>(64, (M + 255) / 256);
  return (M + rows - 1) / rows;
}
int64_t rows_per_chunk(int64_t M, int64_t n) { return n == 0 ? 0 : (M + n - 1) / n; }
size_t acc_size(DType x) { return x == DType::Float64 ? sizeof(double) : sizeof(float); }
size_t align8(size_t b) { return (b + 7) / 8 * 8; }

// Butterfly sum: every lane ends with the same bits (each step adds the same two values on both lanes).
template <typename A> __device__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ bool token_valid(const uint8_t* mask, int64_t r, int64_t T, int64_t B, bool bf) {
  return mask == nullptr || mask[pm::mask_index(r, T, B, bf)] == 0;
}

// ---- forward --------------------------------------------------------------------------------------------
template <typename X, typename A>
__global__ void group_rstd_kernel(const X* __restrict__ x, int64_t xs, int64_t M, int64_t C, int64_t G,
                                  double geps, A* __restrict__ grs) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= M) return;
  const int64_t K = C / G;
  const X* xr = x + r * xs;
  for (int64_t k = 0; k < G; ++k) {
    A s = 0;
    for (int64_t c = k * K + lane; c < (k + 1) * K; c += 32) {
      const A v = load_as<X, A>(xr[c]);
      s += v * v;
    }
    s = warp_sum(s);
    if (lane == 0) grs[r * G + k] = pm::group_rstd<A>(s, K, geps);
  }
}

template <typename X, typename A>
__global__ void colsum_fwd_kernel(const X* __restrict__ x, int64_t xs, const A* __restrict__ grs,
                                  const uint8_t* __restrict__ mask, int64_t T, int64_t B, int64_t C, int64_t G,
                                  bool bf, int64_t rpc, A* __restrict__ part, int64_t* __restrict__ counts) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColThreads + threadIdx.x;
  const int64_t ch = blockIdx.y, M = T * B, K = C / G;
  const int64_t r0 = ch * rpc, r1 = min(M, r0 + rpc);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    int64_t n = 0;
    for (int64_t r = r0; r < r1; ++r) n += token_valid(mask, r, T, B, bf);
    counts[ch] = n;
  }
  if (c >= C) return;
  A s = 0;
  for (int64_t r = r0; r < r1; ++r) {
    if (!token_valid(mask, r, T, B, bf)) continue;
    const A v = load_as<X, A>(x[r * xs + c]) * grs[r * G + c / K];
    s += v * v;
  }
  part[ch * C + c] = s;
}

template <typename A>
__global__ void finalize_fwd_kernel(const A* __restrict__ part, const int64_t* __restrict__ counts, int64_t nch,
                                    int64_t C, const A* __restrict__ phi, int64_t t, int64_t W, double eps,
                                    double af, PowerQuirks quirks, A* __restrict__ x2, A* __restrict__ den,
                                    A* __restrict__ nphi) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  A s = 0;
  int64_t n = 0;
  for (int64_t k = 0; k < nch; ++k) {
    s += part[k * C + c];
    n += counts[k];
  }
  const A q = s / static_cast<A>(n);  // NaN when every token is a pad (as the official code)
  x2[c] = q;
  den[c] = pm::denom<A>(q, phi[c], t, W, eps);
  nphi[c] = pm::phi_update<A>(phi[c], q, t, W, af, quirks);
}

template <typename X, typename A>
__global__ void apply_kernel(const X* __restrict__ x, int64_t xs, const A* __restrict__ grs, int64_t M, int64_t C,
                             int64_t G, const A* __restrict__ w, const A* __restrict__ b, const A* __restrict__ den,
                             X* __restrict__ y) {
  const int64_t K = C / G, n = M * C;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / C, c = i - r * C;
    const A xt = load_as<X, A>(x[r * xs + c]) * grs[r * G + c / K];
    y[i] = store_from<X, A>(w[c] * (xt / den[c]) + b[c]);
  }
}

// ---- backward -------------------------------------------------------------------------------------------
template <typename X, typename A>
__global__ void bwd_dx_kernel(const X* __restrict__ dy, int64_t dys, const X* __restrict__ x, int64_t xs,
                              const A* __restrict__ grs, const A* __restrict__ q, const A* __restrict__ den,
                              const A* __restrict__ w, const A* __restrict__ nu, int64_t M, int64_t C, int64_t G,
                              double eps, A omab, PowerQuirks quirks, X* __restrict__ dx) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= M) return;
  const int64_t K = C / G;
  for (int64_t k = 0; k < G; ++k) {
    const A rho = grs[r * G + k];
    A dot = 0;
    // pass 1: the group's sum of dxt * xt; pass 2 recomputes dxt (from L1) and writes dx
    for (int pass = 0; pass < 2; ++pass) {
      const A m = dot / static_cast<A>(K);
      for (int64_t c = k * K + lane; c < (k + 1) * K; c += 32) {
        const A xt = load_as<X, A>(x[r * xs + c]) * rho;
        const A z = xt / den[c];
        const A g = pm::approx_grad<A>(load_as<X, A>(dy[r * dys + c]), w[c], nu[c], z, omab) /
                    pm::bwd_divisor<A>(q[c], den[c], eps, quirks);
        if (pass == 0) dot += g * xt;
        else dx[r * C + c] = store_from<X, A>(rho * (g - xt * m));
      }
      if (pass == 0) dot = warp_sum(dot);
    }
  }
}

template <typename X, typename A>
__global__ void colsum_bwd_kernel(const X* __restrict__ dy, int64_t dys, const X* __restrict__ x, int64_t xs,
                                  const A* __restrict__ grs, const A* __restrict__ den,
                                  const uint8_t* __restrict__ mask, int64_t T, int64_t B, int64_t C, int64_t G,
                                  bool bf, bool official, int64_t rpc, A* __restrict__ part,
                                  int64_t* __restrict__ counts) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * kColThreads + threadIdx.x;
  const int64_t ch = blockIdx.y, M = T * B, K = C / G, nch = gridDim.y;
  const int64_t r0 = ch * rpc, r1 = min(M, r0 + rpc);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    int64_t n = 0;
    for (int64_t r = r0; r < r1; ++r) n += official || token_valid(mask, r, T, B, bf);
    counts[ch] = n;
  }
  if (c >= C) return;
  A s_dyz = 0, s_dy = 0, s_gz = 0, s_zz = 0;
  for (int64_t r = r0; r < r1; ++r) {
    const A z = load_as<X, A>(x[r * xs + c]) * grs[r * G + c / K] / den[c];
    const A d = load_as<X, A>(dy[r * dys + c]);
    s_dyz += d * z;
    s_dy += d;
    if (official || token_valid(mask, r, T, B, bf)) {
      s_gz += d * z;
      s_zz += z * z;
    }
  }
  part[(0 * nch + ch) * C + c] = s_dyz;
  part[(1 * nch + ch) * C + c] = s_dy;
  part[(2 * nch + ch) * C + c] = s_gz;
  part[(3 * nch + ch) * C + c] = s_zz;
}

template <typename A>
__global__ void finalize_bwd_kernel(const A* __restrict__ part, const int64_t* __restrict__ counts, int64_t nch,
                                    int64_t C, const A* __restrict__ w, const A* __restrict__ nu, A omab,
                                    A* __restrict__ dw, A* __restrict__ db, A* __restrict__ nnu) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= C) return;
  A s[4] = {0, 0, 0, 0};
  int64_t n = 0;
  for (int64_t k = 0; k < nch; ++k) {
    for (int j = 0; j < 4; ++j) s[j] += part[(j * nch + k) * C + c];
    n += counts[k];
  }
  if (dw != nullptr) dw[c] = s[0];
  if (db != nullptr) db[c] = s[1];
  nnu[c] = pm::nu_update<A>(nu[c], w[c], s[2], s[3], static_cast<A>(n), omab);
}

// ---- eval -----------------------------------------------------------------------------------------------
template <typename X, typename A>
__global__ void eval_kernel(const X* __restrict__ x, int64_t xs, int64_t M, int64_t C, int64_t G, double geps,
                            double eps, const A* __restrict__ w, const A* __restrict__ b, const A* __restrict__ phi,
                            X* __restrict__ y) {
  const int lane = threadIdx.x & 31;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (r >= M) return;
  const int64_t K = C / G;
  const X* xr = x + r * xs;
  for (int64_t k = 0; k < G; ++k) {
    A s = 0;
    for (int64_t c = k * K + lane; c < (k + 1) * K; c += 32) {
      const A v = load_as<X, A>(xr[c]);
      s += v * v;
    }
    const A rho = pm::group_rstd<A>(warp_sum(s), K, geps);
    for (int64_t c = k * K + lane; c < (k + 1) * K; c += 32)
      y[r * C + c] = store_from<X, A>(w[c] * ((load_as<X, A>(xr[c]) * rho) / sqrt(phi[c] + static_cast<A>(eps))) + b[c]);
  }
}

Status launch_status(const char* op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return Status(StatusCode::CudaError, std::string(op) + ": " + cudaGetErrorString(e));
  return Status::OK();
}

unsigned blocks_for(int64_t n, int64_t per) { return static_cast<unsigned>((n + per - 1) / per); }

template <typename X, typename A>
Status fwd_impl(const PowerNormParams& p, cudaStream_t st) {
  const int64_t M = p.T * p.B, C = p.C, G = p.group_num;
  const X* x = static_cast<const X*>(p.x);
  A* grs = static_cast<A*>(p.group_rstd);
  const int64_t nch = num_chunks(M), rpc = rows_per_chunk(M, nch);
  A* part = static_cast<A*>(p.workspace);
  int64_t* counts = reinterpret_cast<int64_t*>(static_cast<char*>(p.workspace) + align8(nch * C * sizeof(A)));
  if (M > 0)
    group_rstd_kernel<X, A><<<blocks_for(M, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, st>>>(x, p.x_stride, M, C, G,
                                                                                           p.group_eps, grs);
  if (C == 0) return launch_status("power_norm");
  if (M > 0)
    colsum_fwd_kernel<X, A><<<dim3(blocks_for(C, kColThreads), static_cast<unsigned>(nch)), kColThreads, 0, st>>>(
        x, p.x_stride, grs, p.pad_mask, p.T, p.B, C, G, p.batch_first, rpc, part, counts);
  finalize_fwd_kernel<A><<<blocks_for(C, 128), 128, 0, st>>>(
      part, counts, nch, C, static_cast<const A*>(p.running_phi), p.iteration, p.warmup_iters, p.eps, p.alpha_fwd,
      p.quirks, static_cast<A*>(p.x2), static_cast<A*>(p.denom), static_cast<A*>(p.new_running_phi));
  if (M > 0) {
    const int64_t blocks = std::min<int64_t>(blocks_for(M * C, 256), 65535);
    apply_kernel<X, A><<<static_cast<unsigned>(blocks), 256, 0, st>>>(
        x, p.x_stride, grs, M, C, G, static_cast<const A*>(p.weight), static_cast<const A*>(p.bias),
        static_cast<const A*>(p.denom), static_cast<X*>(p.y));
  }
  return launch_status("power_norm");
}

template <typename X, typename A>
Status bwd_impl(const PowerNormBwdParams& p, cudaStream_t st) {
  const int64_t M = p.T * p.B, C = p.C, G = p.group_num;
  if (C == 0) return Status::OK();
  const bool official = p.quirks == PowerQuirks::Official;
  const A omab = A(1) - static_cast<A>(p.alpha_bkw);
  const X* x = static_cast<const X*>(p.x);
  const X* dy = static_cast<const X*>(p.dy);
  const A* grs = static_cast<const A*>(p.group_rstd);
  const A* den = static_cast<const A*>(p.denom);
  const int64_t nch = num_chunks(M), rpc = rows_per_chunk(M, nch);
  A* part = static_cast<A*>(p.workspace);
  int64_t* counts = reinterpret_cast<int64_t*>(static_cast<char*>(p.workspace) + align8(4 * nch * C * sizeof(A)));
  if (M > 0) {
    if (p.dx != nullptr)
      bwd_dx_kernel<X, A><<<blocks_for(M, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, st>>>(
          dy, p.dy_stride, x, p.x_stride, grs, static_cast<const A*>(p.x2), den, static_cast<const A*>(p.weight),
          static_cast<const A*>(p.ema_gz), M, C, G, p.eps, omab, p.quirks, static_cast<X*>(p.dx));
    colsum_bwd_kernel<X, A><<<dim3(blocks_for(C, kColThreads), static_cast<unsigned>(nch)), kColThreads, 0, st>>>(
        dy, p.dy_stride, x, p.x_stride, grs, den, p.pad_mask, p.T, p.B, C, G, p.batch_first, official, rpc, part,
        counts);
  }
  finalize_bwd_kernel<A><<<blocks_for(C, 128), 128, 0, st>>>(
      part, counts, nch, C, static_cast<const A*>(p.weight), static_cast<const A*>(p.ema_gz), omab,
      static_cast<A*>(p.dweight), static_cast<A*>(p.dbias), static_cast<A*>(p.new_ema_gz));
  return launch_status("power_norm_backward");
}

template <typename X, typename A>
Status eval_impl(const PowerNormEvalParams& p, cudaStream_t st) {
  if (p.rows > 0 && p.C > 0)
    eval_kernel<X, A><<<blocks_for(p.rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, st>>>(
        static_cast<const X*>(p.x), p.x_stride, p.rows, p.C, p.group_num, p.group_eps, p.eps,
        static_cast<const A*>(p.weight), static_cast<const A*>(p.bias), static_cast<const A*>(p.running_phi),
        static_cast<X*>(p.y));
  return launch_status("power_norm_eval");
}

template <template <typename, typename> class F, typename P>
Status dispatch(const P& p, cudaStream_t st) {
  switch (p.x_dtype) {
    case DType::Float32: return F<float, float>::run(p, st);
    case DType::Float16: return F<f16_t, float>::run(p, st);
    case DType::BFloat16: return F<bf16_t, float>::run(p, st);
    case DType::Float64: return F<double, double>::run(p, st);
    default: return unsupported("power_norm: unsupported x dtype");
  }
}
template <typename X, typename A> struct Fwd {
  static Status run(const PowerNormParams& p, cudaStream_t st) { return fwd_impl<X, A>(p, st); }
};
template <typename X, typename A> struct Bwd {
  static Status run(const PowerNormBwdParams& p, cudaStream_t st) { return bwd_impl<X, A>(p, st); }
};
template <typename X, typename A> struct Eval {
  static Status run(const PowerNormEvalParams& p, cudaStream_t st) { return eval_impl<X, A>(p, st); }
};

}  // namespace

size_t power_norm_fwd_workspace_bytes(const PowerNormParams& p) {
  const int64_t nch = num_chunks(p.T * p.B);
  return align8(nch * std::max<int64_t>(p.C, 0) * acc_size(p.x_dtype)) + nch * sizeof(int64_t);
}
size_t power_norm_bwd_workspace_bytes(const PowerNormBwdParams& p) {
  const int64_t nch = num_chunks(p.T * p.B);
  return align8(4 * nch * std::max<int64_t>(p.C, 0) * acc_size(p.x_dtype)) + nch * sizeof(int64_t);
}

Status power_norm_fwd(const PowerNormParams& p, cudaStream_t stream) {
  Status s = detail_power::check_fwd(p);
  if (!s.ok()) return s;
  return dispatch<Fwd>(p, stream);
}
Status power_norm_bwd(const PowerNormBwdParams& p, cudaStream_t stream) {
  Status s = detail_power::check_bwd(p);
  if (!s.ok()) return s;
  return dispatch<Bwd>(p, stream);
}
Status power_norm_eval(const PowerNormEvalParams& p, cudaStream_t stream) {
  Status s = detail_power::check_eval(p);
  if (!s.ok()) return s;
  return dispatch<Eval>(p, stream);
}

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

// CUDA Unified Normalization (specs/norm.md §3.7) and channel_affine.
//
// Each direction is three launches on the caller's stream, none synchronising with the host:
//  1. column sums: grid (ceil(C/256), nb) with nb = row blocks (a function of M only); thread c of row
//     block b sums its channel over the block's rows in A (float, double for float64 x), coalesced across
//     channels, and writes one double partial; no atomics, so results are bitwise reproducible.
//  2. state step: one block adds the partials in block order (double) and runs the rules of
//     detail/norm_unified_math.h (window, global outlier variance via a fixed-order shared-memory tree,
//     "any channel" via __syncthreads_or, rho, EMA). `skip` is written and read on the device only.
//  3. elementwise pass: y = (x*istd)*gamma + beta, or dx = (dy*gamma*rho - x*c*istd)*istd, grid-stride
//     over M*C with 64-bit offsets, per-channel coefficients from the state step.
// Numerics match the CPU kernels up to the order of the column sums (-fmad=false: no contraction).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>
#include <type_traits>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/norm_unified_math.h"
#include "fastnorm/norm_unified_cuda.h"

namespace fastnorm {
namespace norm {
namespace cuda {
namespace {

using fastnorm::detail::load_as;
using fastnorm::detail::store_from;
using detail::load_state;
using detail::store_state;

constexpr int kColThreads = 256;
constexpr int kStateThreads = 1024;

template <typename X> using Acc = typename std::conditional<std::is_same<X, double>::value, double, float>::type;

int64_t num_blocks(int64_t rows) { return std::min<int64_t>(256, std::max<int64_t>(1, (rows + 63) / 64)); }

__device__ __forceinline__ int64_t block_begin(int64_t b, int64_t nb, int64_t m) { return b * m / nb; }

Status launch_status(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::OK();
  return Status(StatusCode::CudaError, std::string(what) + ": " + cudaGetErrorString(e));
}

// Sum of v over the block in a fixed tree order (every thread gets the result).
__device__ double block_sum(double v, double* sh) {
  sh[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) sh[threadIdx.x] += sh[threadIdx.x + s];
    __syncthreads();
  }
  const double r = sh[0];
  __syncthreads();
  return r;
}

// ---- forward ----------------------------------------------------------------------------------------
template <typename X>
__global__ void fwd_sums_kernel(const X* __restrict__ x, int64_t x_stride, const uint8_t* __restrict__ mask,
                                int64_t m, int64_t n, int64_t nb, double* __restrict__ partial,
                                int64_t* __restrict__ counts) {
  using A = Acc<X>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t b = blockIdx.y;
  A acc = 0;
  int64_t cnt = 0;
  for (int64_t r = block_begin(b, nb, m); r < block_begin(b + 1, nb, m); ++r) {
    if (mask != nullptr && mask[r]) continue;
    ++cnt;
    if (c < n) {
      const A v = load_as<X, A>(x[r * x_stride + c]);
      acc += v * v;
    }
  }
  if (c < n) partial[b * n + c] = static_cast<double>(acc);
  if (blockIdx.x == 0 && threadIdx.x == 0) counts[b] = cnt;
}

template <typename A>
__global__ void __launch_bounds__(kStateThreads) fwd_state_kernel(UnifiedNormParams p, int64_t nb, const double* __restrict__ partial,
                                 const int64_t* __restrict__ counts, double* __restrict__ q, A* __restrict__ coef) {
  __shared__ double sh[kStateThreads];
  __shared__ int64_t nv_sh;
  const int64_t n = p.cols, L = p.window, t = p.iteration;
  const DType sd = p.state_dtype, st = p.x_dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  if (threadIdx.x == 0) {
    int64_t nv = 0;
    for (int64_t b = 0; b < nb; ++b) nv += counts[b];
    nv_sh = nv;
  }
  __syncthreads();
  const int64_t slot = detail::un_slot(t, L);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    double s = 0;
    for (int64_t b = 0; b < nb; ++b) s += partial[b * n + c];
    q[c] = s / static_cast<double>(nv_sh);
  }
  __syncthreads();  // q is read across channels below
  for (int64_t i = threadIdx.x; i < L * n; i += blockDim.x)
    store_state(p.new_buffer_x2, sd, i, i / n == slot ? q[i % n] : load_state(p.buffer_x2, sd, i));
  __syncthreads();
  bool skip = L <= 1;
  int64_t counter = p.skip_counter[0];
  if (p.outlier_filtration && t >= p.warmup_iters) {
    const int64_t k = L * n;
    double s = 0;
    for (int64_t i = threadIdx.x; i < k; i += blockDim.x) s += sqrt(load_state(p.buffer_x2, sd, i));
    const double mean = block_sum(s, sh) / static_cast<double>(k);
    double m2 = 0;
    for (int64_t i = threadIdx.x; i < k; i += blockDim.x) {
      const double d = sqrt(load_state(p.buffer_x2, sd, i)) - mean;
      m2 += d * d;
    }
    const double v = block_sum(m2, sh) / static_cast<double>(k - 1);
    int outlier = 0;
    for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
      const double am = detail::un_window_mean(p.new_buffer_x2, sd, L, n, c);
      const double gm = detail::un_window_gmean(p.new_buffer_x2, sd, L, n, c);
      outlier |= detail::un_outlier(am, gm, v, L) ? 1 : 0;
    }
    if (__syncthreads_or(outlier)) {
      for (int64_t c = threadIdx.x; c < n; c += blockDim.x)
        store_state(p.new_buffer_x2, sd, slot * n + c, load_state(p.running_var, sd, c));
      skip = true;
      ++counter;
    }
    __syncthreads();
  }
  const bool batch = detail::un_use_batch(t, L, p.warmup_iters, skip);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
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
  if (threadIdx.x == 0) {
    p.skip[0] = skip ? 1 : 0;
    p.new_skip_counter[0] = counter;
  }
}

template <typename X>
__global__ void fwd_apply_kernel(const X* __restrict__ x, int64_t x_stride, X* __restrict__ y, int64_t m, int64_t n,
                                 const Acc<X>* __restrict__ coef) {
  using A = Acc<X>;
  const int64_t total = m * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, c = i - r * n;
    y[i] = store_from<X, A>(load_as<X, A>(x[r * x_stride + c]) * coef[c] * coef[n + c] + coef[2 * n + c]);
  }
}

// ---- backward ---------------------------------------------------------------------------------------
template <typename X>
__global__ void bwd_sums_kernel(const X* __restrict__ dy, int64_t dy_stride, const X* __restrict__ x,
                                int64_t x_stride, int64_t m, int64_t n, int64_t nb, double* __restrict__ partial) {
  using A = Acc<X>;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t b = blockIdx.y;
  if (c >= n) return;
  A s1 = 0, s2 = 0;
  for (int64_t r = block_begin(b, nb, m); r < block_begin(b + 1, nb, m); ++r) {
    const A g = load_as<X, A>(dy[r * dy_stride + c]);
    s1 += g * load_as<X, A>(x[r * x_stride + c]);
    s2 += g;
  }
  partial[(2 * b) * n + c] = static_cast<double>(s1);
  partial[(2 * b + 1) * n + c] = static_cast<double>(s2);
}

template <typename A>
__global__ void __launch_bounds__(kStateThreads) bwd_state_kernel(UnifiedNormBwdParams p, int64_t nb, const double* __restrict__ partial,
                                 double* __restrict__ gz, A* __restrict__ coef) {
  const int64_t m = p.rows, n = p.cols, L = p.window, t = p.iteration;
  const DType sd = p.state_dtype, st = p.x_dtype == DType::Float64 ? DType::Float64 : DType::Float32;
  const bool skip = p.skip[0] != 0;
  const int64_t slot = detail::un_slot(t, L);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
    double s1 = 0, s2 = 0;
    for (int64_t b = 0; b < nb; ++b) {
      s1 += partial[(2 * b) * n + c];
      s2 += partial[(2 * b + 1) * n + c];
    }
    const double var = load_state(p.var, st, c), rho = load_state(p.rho, st, c);
    const double istd = detail::un_inv_std(var, p.eps);
    const double w = load_state(p.weight, p.w_dtype, c);
    gz[c] = w * rho * istd * s1 / static_cast<double>(m);
    if (p.dweight) store_state(p.dweight, p.w_dtype, c, m == 0 ? 0.0 : rho * istd * s1);  // empty sum is 0
    if (p.dbias) store_state(p.dbias, p.w_dtype, c, s2);
  }
  __syncthreads();
  for (int64_t i = threadIdx.x; i < L * n; i += blockDim.x) {
    const int64_t c = i % n;
    store_state(p.new_buffer_gz, sd, i,
                i / n == slot ? (skip ? load_state(p.ema_gz, sd, c) : gz[c]) : load_state(p.buffer_gz, sd, i));
  }
  __syncthreads();
  const bool batch = detail::un_use_batch(t, L, p.warmup_iters, skip);
  for (int64_t c = threadIdx.x; c < n; c += blockDim.x) {
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
__global__ void bwd_apply_kernel(const X* __restrict__ dy, int64_t dy_stride, const X* __restrict__ x,
                                 int64_t x_stride, X* __restrict__ dx, int64_t m, int64_t n,
                                 const Acc<X>* __restrict__ coef) {
  using A = Acc<X>;
  const int64_t total = m * n;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / n, c = i - r * n;
    const A g = load_as<X, A>(dy[r * dy_stride + c]), xv = load_as<X, A>(x[r * x_stride + c]);
    dx[i] = store_from<X, A>((g * coef[c] - xv * coef[n + c]) * coef[2 * n + c]);
  }
}

template <typename X, typename S>
__global__ void affine_kernel(const X* __restrict__ x, const S* __restrict__ scale, const S* __restrict__ shift,
                              X* __restrict__ y, int64_t total, int64_t n, int64_t inner) {
  using A = Acc<X>;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = (i / inner) % n;
    y[i] = store_from<X, A>(load_as<X, A>(x[i]) * load_as<S, A>(scale[c]) + load_as<S, A>(shift[c]));
  }
}

unsigned grid_for(int64_t total) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + 255) / 256, 65535)));
}

template <typename X>
Status fwd_typed(const UnifiedNormParams& p, cudaStream_t s) {
  using A = Acc<X>;
  const int64_t nb = num_blocks(p.rows), n = p.cols, m = p.rows;
  double* partial = static_cast<double*>(p.workspace);
  int64_t* counts = reinterpret_cast<int64_t*>(partial + nb * n);
  double* q = reinterpret_cast<double*>(counts + nb);
  A* coef = reinterpret_cast<A*>(q + n);
  const dim3 g1(static_cast<unsigned>(std::max<int64_t>(1, (n + kColThreads - 1) / kColThreads)),
                static_cast<unsigned>(nb));
  fwd_sums_kernel<X><<<g1, kColThreads, 0, s>>>(static_cast<const X*>(p.x), p.x_stride, p.pad_mask, m, n, nb,
                                                partial, counts);
  Status st = launch_status("unified_norm column sums");
  if (!st.ok()) return st;
  fwd_state_kernel<A><<<1, kStateThreads, 0, s>>>(p, nb, partial, counts, q, coef);
  st = launch_status("unified_norm state");
  if (!st.ok() || m * n == 0) return st;
  fwd_apply_kernel<X><<<grid_for(m * n), 256, 0, s>>>(static_cast<const X*>(p.x), p.x_stride, static_cast<X*>(p.y),
                                                      m, n, coef);
  return launch_status("unified_norm apply");
}

template <typename X>
Status bwd_typed(const UnifiedNormBwdParams& p, cudaStream_t s) {
  using A = Acc<X>;
  const int64_t nb = num_blocks(p.rows), n = p.cols, m = p.rows;
  double* partial = static_cast<double*>(p.workspace);
  double* gz = partial + 2 * nb * n;
  A* coef = reinterpret_cast<A*>(gz + n);
  const dim3 g1(static_cast<unsigned>(std::max<int64_t>(1, (n + kColThreads - 1) / kColThreads)),
                static_cast<unsigned>(nb));
  bwd_sums_kernel<X><<<g1, kColThreads, 0, s>>>(static_cast<const X*>(p.dy), p.dy_stride,
                                                static_cast<const X*>(p.x), p.x_stride, m, n, nb, partial);
  Status st = launch_status("unified_norm_backward column sums");
  if (!st.ok()) return st;
  bwd_state_kernel<A><<<1, kStateThreads, 0, s>>>(p, nb, partial, gz, coef);
  st = launch_status("unified_norm_backward state");
  if (!st.ok() || m * n == 0 || p.dx == nullptr) return st;
  bwd_apply_kernel<X><<<grid_for(m * n), 256, 0, s>>>(static_cast<const X*>(p.dy), p.dy_stride,
                                                      static_cast<const X*>(p.x), p.x_stride,
                                                      static_cast<X*>(p.dx), m, n, coef);
  return launch_status("unified_norm_backward apply");
}

template <typename X, typename S>
Status affine_typed2(const ChannelAffineParams& p, cudaStream_t s) {
  const int64_t total = p.outer * p.channels * p.inner;
  if (total == 0) return Status::OK();
  affine_kernel<X, S><<<grid_for(total), 256, 0, s>>>(static_cast<const X*>(p.x), static_cast<const S*>(p.scale),
                                                      static_cast<const S*>(p.shift), static_cast<X*>(p.y), total,
                                                      p.channels, p.inner);
  return launch_status("channel_affine");
}

template <typename X>
Status affine_typed(const ChannelAffineParams& p, cudaStream_t s) {
  switch (p.s_dtype) {
    case DType::Float64: return affine_typed2<X, double>(p, s);
    case DType::BFloat16: return affine_typed2<X, bf16_t>(p, s);
    case DType::Float16: return affine_typed2<X, f16_t>(p, s);
    default: return affine_typed2<X, float>(p, s);
  }
}

}  // namespace

size_t unified_norm_fwd_workspace_bytes(const UnifiedNormParams& p) {
  const int64_t nb = num_blocks(p.rows);
  return static_cast<size_t>(nb * p.cols + nb + p.cols + 3 * p.cols) * 8;
}
size_t unified_norm_bwd_workspace_bytes(const UnifiedNormBwdParams& p) {
  const int64_t nb = num_blocks(p.rows);
  return static_cast<size_t>(2 * nb * p.cols + p.cols + 3 * p.cols) * 8;
}

Status unified_norm_fwd(const UnifiedNormParams& p, cudaStream_t s) {
  Status st = validate(p);
  if (!st.ok()) return st;
  switch (p.x_dtype) {
    case DType::Float64: return fwd_typed<double>(p, s);
    case DType::BFloat16: return fwd_typed<bf16_t>(p, s);
    case DType::Float16: return fwd_typed<f16_t>(p, s);
    default: return fwd_typed<float>(p, s);
  }
}

Status unified_norm_bwd(const UnifiedNormBwdParams& p, cudaStream_t s) {
  Status st = validate(p);
  if (!st.ok()) return st;
  switch (p.x_dtype) {
    case DType::Float64: return bwd_typed<double>(p, s);
    case DType::BFloat16: return bwd_typed<bf16_t>(p, s);
    case DType::Float16: return bwd_typed<f16_t>(p, s);
    default: return bwd_typed<float>(p, s);
  }
}

Status channel_affine(const ChannelAffineParams& p, cudaStream_t s) {
  Status st = validate(p);
  if (!st.ok()) return st;
  switch (p.x_dtype) {
    case DType::Float64: return affine_typed<double>(p, s);
    case DType::BFloat16: return affine_typed<bf16_t>(p, s);
    case DType::Float16: return affine_typed<f16_t>(p, s);
    default: return affine_typed<float>(p, s);
  }
}

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

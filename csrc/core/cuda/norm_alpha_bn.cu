// CUDA kernels of test-time alpha-BN (specs/norm.md §3.8). Numerics follow the CPU kernels: per-channel
// formulas from detail/norm_alpha_bn_math.h, fp32 accumulation (fp64 for fp64 x) inside a slot, double
// across slots in slot order, one rounding per output, -fmad=false; no atomics, so results are
// reproducible run to run.
//
// Slots as on the CPU: NCHW one plane (sample, channel) of S contiguous elements; NHWC a chunk of kRows
// rows of C channels. Forward: `moments` (a CTA per plane, or per chunk with threads over channels) writes
// per-slot (mean, M2, count) in double; `finish_fwd` (a thread per channel) merges them with Chan's
// formula in slot order and writes mean/rstd; `apply_fwd` writes y elementwise. Backward: `sums` writes
// per-slot sums of dy, dy*(x - mu), (x - mu); `finish_bwd` adds them in slot order, writes dweight/dbias
// and the dx coefficients; `apply_bwd` writes dx.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "fastnorm/detail/norm_alpha_bn_math.h"
#include "fastnorm/norm_alpha_bn.h"
#include "fastnorm/norm_alpha_bn_cuda.h"
#include "norm_elem.cuh"

namespace fastnorm {
namespace norm {
namespace cuda {
namespace {

namespace nd = fastnorm::norm::detail;

constexpr int64_t kRows = 32;     // NHWC rows per slot
constexpr int kThreads = 256;

int64_t slots_of(int64_t batch, int64_t spatial, bool channels_last) {
  if (!channels_last) return batch;
  return (batch * spatial + kRows - 1) / kRows;
}

// Channel of flat element i (x's own layout).
__device__ __forceinline__ int64_t channel_of(int64_t i, int64_t C, int64_t S, bool cl) {
  return cl ? i % C : (i / S) % C;
}

// ---- forward --------------------------------------------------------------------------------------------
template <typename A>
__global__ void moments_nchw(AlphaBatchNormParams p, double* ws) {
  __shared__ A red[32];
  const int64_t q = blockIdx.x, S = p.spatial, C = p.channels;  // plane q = b*C + c
  const char* x = static_cast<const char*>(p.x) + q * S * static_cast<int64_t>(dtype_size(p.x_dtype));
  A v[1] = {A(0)};
  for (int64_t i = threadIdx.x; i < S; i += blockDim.x) v[0] += elem::load<A>(x, p.x_dtype, i);
  elem::block_sum<1, A>(v, red);
  const double mean = static_cast<double>(v[0]) / static_cast<double>(S);
  const A ma = static_cast<A>(mean);
  A w[1] = {A(0)};
  for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
    const A d = elem::load<A>(x, p.x_dtype, i) - ma;
    w[0] += d * d;
  }
  elem::block_sum<1, A>(w, red);
  if (threadIdx.x == 0) {
    const int64_t b = q / C, c = q % C, slots = p.batch;
    const double dm = mean - static_cast<double>(ma);
    ws[b * C + c] = mean;
    ws[slots * C + b * C + c] = static_cast<double>(w[0]) - static_cast<double>(S) * dm * dm;
    if (c == 0) ws[2 * slots * C + b] = static_cast<double>(S);
  }
}

template <typename A>
__global__ void moments_nhwc(AlphaBatchNormParams p, double* ws, int64_t slots) {
  const int64_t k = blockIdx.x, C = p.channels, M = p.batch * p.spatial;
  const int64_t r0 = k * kRows, r1 = min(M, r0 + kRows), cnt = r1 - r0;
  const char* x = static_cast<const char*>(p.x);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    A s = A(0);
    for (int64_t r = r0; r < r1; ++r) s += elem::load<A>(x, p.x_dtype, r * C + c);
    const double mean = static_cast<double>(s) / static_cast<double>(cnt);
    const A ma = static_cast<A>(mean);
    A m2 = A(0);
    for (int64_t r = r0; r < r1; ++r) {
      const A d = elem::load<A>(x, p.x_dtype, r * C + c) - ma;
      m2 += d * d;
    }
    const double dm = mean - static_cast<double>(ma);
    ws[k * C + c] = mean;
    ws[slots * C + k * C + c] = static_cast<double>(m2) - static_cast<double>(cnt) * dm * dm;
  }
  if (threadIdx.x == 0) ws[2 * slots * C + k] = static_cast<double>(cnt);
}

template <typename A>
__global__ void finish_fwd(AlphaBatchNormParams p, const double* ws, int64_t slots) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, C = p.channels;
  if (c >= C) return;
  const double a = p.alpha_source;
  const int64_t n = p.batch * p.spatial;
  double mu_b = 0, var_b = 0;
  if (a != 1.0) {
    double cnt = 0, mean = 0, m2 = 0;
    for (int64_t k = 0; k < slots; ++k) {  // Chan's merge in slot order
      const double nk = ws[2 * slots * C + k], mk = ws[k * C + c], m2k = ws[slots * C + k * C + c];
      const double nn = cnt + nk, delta = mk - mean, wk = nk / nn;
      mean += delta * wk;
      m2 += m2k + delta * delta * cnt * wk;
      cnt = nn;
    }
    mu_b = n > 0 ? mean : nd::abn_batch_var(0.0, 0, false);  // 0/0: NaN for an empty batch
    var_b = n > 0 ? nd::abn_batch_var(m2, n, p.unbiased_batch_var) : mu_b;
  }
  const double rm = elem::load<double>(p.running_mean, p.running_dtype, c);
  const double rv = elem::load<double>(p.running_var, p.running_dtype, c);
  static_cast<A*>(p.mean)[c] = static_cast<A>(nd::abn_mix(a, rm, mu_b));
  static_cast<A*>(p.rstd)[c] = static_cast<A>(nd::abn_rstd(nd::abn_mix(a, rv, var_b), p.eps));
}

template <typename A>
__global__ void apply_fwd(AlphaBatchNormParams p, int64_t total) {
  const int64_t C = p.channels, S = p.spatial;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, C, S, p.channels_last);
    const A x = elem::load<A>(p.x, p.x_dtype, i);
    const A m = static_cast<const A*>(p.mean)[c], r = static_cast<const A*>(p.rstd)[c];
    const A g = elem::load_or<A>(p.weight, p.w_dtype, c, A(1)), b = elem::load_or<A>(p.bias, p.w_dtype, c, A(0));
    elem::store<A>(p.y, p.y_dtype, i, (x - m) * r * g + b);
  }
}

// ---- backward -------------------------------------------------------------------------------------------
template <typename A>
__global__ void sums_nchw(AlphaBatchNormBwdParams p, double* ws) {
  __shared__ A red[3 * 32];
  const int64_t q = blockIdx.x, S = p.spatial, C = p.channels, slots = p.batch;
  const int64_t c = q % C, b = q / C;
  const char* x = static_cast<const char*>(p.x) + q * S * static_cast<int64_t>(dtype_size(p.x_dtype));
  const char* dy = static_cast<const char*>(p.dy) + q * S * static_cast<int64_t>(dtype_size(p.dy_dtype));
  const A m = static_cast<const A*>(p.mean)[c];
  A v[3] = {A(0), A(0), A(0)};
  for (int64_t i = threadIdx.x; i < S; i += blockDim.x) {
    const A d = elem::load<A>(dy, p.dy_dtype, i), xc = elem::load<A>(x, p.x_dtype, i) - m;
    v[0] += d;
    v[1] += d * xc;
    v[2] += xc;
  }
  elem::block_sum<3, A>(v, red);
  if (threadIdx.x == 0)
    for (int k = 0; k < 3; ++k) ws[(k * slots + b) * C + c] = static_cast<double>(v[k]);
}

template <typename A>
__global__ void sums_nhwc(AlphaBatchNormBwdParams p, double* ws, int64_t slots) {
  const int64_t k = blockIdx.x, C = p.channels, M = p.batch * p.spatial;
  const int64_t r0 = k * kRows, r1 = min(M, r0 + kRows);
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const A m = static_cast<const A*>(p.mean)[c];
    A s0 = A(0), s1 = A(0), s2 = A(0);
    for (int64_t r = r0; r < r1; ++r) {
      const A d = elem::load<A>(p.dy, p.dy_dtype, r * C + c), xc = elem::load<A>(p.x, p.x_dtype, r * C + c) - m;
      s0 += d;
      s1 += d * xc;
      s2 += xc;
    }
    ws[(0 * slots + k) * C + c] = static_cast<double>(s0);
    ws[(1 * slots + k) * C + c] = static_cast<double>(s1);
    ws[(2 * slots + k) * C + c] = static_cast<double>(s2);
  }
}

// coef: [4][C] doubles after the slot sums: k_dy, k0, k_x, mu_b.
template <typename A>
__global__ void finish_bwd(AlphaBatchNormBwdParams p, double* ws, int64_t slots, bool have_sums) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, C = p.channels;
  if (c >= C) return;
  const int64_t n = p.batch * p.spatial;
  double s[3] = {0, 0, 0};
  if (have_sums)
    for (int64_t k = 0; k < slots; ++k)
      for (int j = 0; j < 3; ++j) s[j] += ws[(j * slots + k) * C + c];
  const double r = static_cast<double>(static_cast<const A*>(p.rstd)[c]);
  const double sdyxh = n > 0 ? r * s[1] : 0.0;  // an empty sum is 0, even where rstd is NaN
  if (p.dweight) elem::store<double>(p.dweight, p.w_dtype, c, sdyxh);
  if (p.dbias) elem::store<double>(p.dbias, p.w_dtype, c, s[0]);
  const double gamma = elem::load_or<double>(p.weight, p.w_dtype, c, 1.0);
  const nd::AbnBwdCoef k = nd::abn_bwd_coef(p.alpha_source, p.unbiased_batch_var, gamma, r, s[0], sdyxh, n);
  double* coef = ws + 3 * slots * C;
  coef[c] = k.k_dy;
  coef[C + c] = k.k0;
  coef[2 * C + c] = k.k_x;
  coef[3 * C + c] = static_cast<double>(static_cast<const A*>(p.mean)[c]) + (n > 0 ? s[2] / static_cast<double>(n) : 0.0);
}

template <typename A>
__global__ void apply_bwd(AlphaBatchNormBwdParams p, const double* coef, int64_t total) {
  const int64_t C = p.channels, S = p.spatial;
  const bool batch = p.alpha_source != 1.0;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i, C, S, p.channels_last);
    const A d = elem::load<A>(p.dy, p.dy_dtype, i);
    A v = static_cast<A>(coef[c]) * d;
    if (batch) {
      const A x = elem::load<A>(p.x, p.x_dtype, i);
      v = v + static_cast<A>(coef[C + c]) + static_cast<A>(coef[2 * C + c]) * (x - static_cast<A>(coef[3 * C + c]));
    }
    elem::store<A>(p.dx, p.dx_dtype, i, v);
  }
}

unsigned grid_for(int64_t total) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((total + kThreads - 1) / kThreads, 65535 * 8)));
}

template <typename A>
Status fwd(const AlphaBatchNormParams& p, double* ws, cudaStream_t stream) {
  const int64_t C = p.channels, total = p.batch * C * p.spatial;
  if (C == 0) return Status::OK();
  const int64_t slots = slots_of(p.batch, p.spatial, p.channels_last);
  const bool batch = p.alpha_source != 1.0 && total > 0;
  if (batch) {
    if (!p.channels_last) moments_nchw<A><<<static_cast<unsigned>(p.batch * C), kThreads, 0, stream>>>(p, ws);
    else moments_nhwc<A><<<static_cast<unsigned>(slots), static_cast<unsigned>(std::min<int64_t>(1024, ((C + 31) / 32) * 32)), 0, stream>>>(p, ws, slots);
  }
  finish_fwd<A><<<static_cast<unsigned>((C + 127) / 128), 128, 0, stream>>>(p, ws, batch ? slots : 0);
  if (total > 0) apply_fwd<A><<<grid_for(total), kThreads, 0, stream>>>(p, total);
  return elem::launch_status("alpha_batch_norm");
}

template <typename A>
Status bwd(const AlphaBatchNormBwdParams& p, cudaStream_t stream) {
  const int64_t C = p.channels, total = p.batch * C * p.spatial;
  if (C == 0) return Status::OK();
  const int64_t slots = slots_of(p.batch, p.spatial, p.channels_last);
  double* ws = static_cast<double*>(p.workspace);
  const bool have_sums = total > 0;
  if (have_sums) {
    if (!p.channels_last) sums_nchw<A><<<static_cast<unsigned>(p.batch * C), kThreads, 0, stream>>>(p, ws);
    else sums_nhwc<A><<<static_cast<unsigned>(slots), static_cast<unsigned>(std::min<int64_t>(1024, ((C + 31) / 32) * 32)), 0, stream>>>(p, ws, slots);
  }
  finish_bwd<A><<<static_cast<unsigned>((C + 127) / 128), 128, 0, stream>>>(p, ws, have_sums ? slots : 0, have_sums);
  if (total > 0 && p.dx != nullptr) apply_bwd<A><<<grid_for(total), kThreads, 0, stream>>>(p, ws + 3 * (have_sums ? slots : 0) * C, total);
  return elem::launch_status("alpha_batch_norm_backward");
}

}  // namespace

size_t alpha_batch_norm_fwd_workspace_bytes(const AlphaBatchNormParams& p) {
  if (p.alpha_source == 1.0 || p.batch * p.spatial * p.channels == 0) return 0;
  const int64_t slots = slots_of(p.batch, p.spatial, p.channels_last);
  return static_cast<size_t>(slots * (2 * p.channels + 1)) * sizeof(double);
}

size_t alpha_batch_norm_bwd_workspace_bytes(const AlphaBatchNormBwdParams& p) {
  // Always: the per-channel dx coefficients live after the slot sums.
  const int64_t slots = p.batch * p.spatial * p.channels > 0 ? slots_of(p.batch, p.spatial, p.channels_last) : 0;
  return static_cast<size_t>((3 * slots + 4) * p.channels) * sizeof(double);
}

Status alpha_batch_norm_fwd(const AlphaBatchNormParams& p, void* workspace, cudaStream_t stream) {
  Status s = validate(p);
  if (!s.ok()) return s;
  if (p.batch * p.channels > 0x7fffffffLL) return unsupported("alpha_batch_norm: more than 2^31-1 planes on CUDA");
  if (cuda::alpha_batch_norm_fwd_workspace_bytes(p) > 0 && workspace == nullptr)
    return invalid_argument("alpha_batch_norm: workspace is required");
  double* ws = static_cast<double*>(workspace);
  return p.x_dtype == DType::Float64 ? fwd<double>(p, ws, stream) : fwd<float>(p, ws, stream);
}

Status alpha_batch_norm_bwd(const AlphaBatchNormBwdParams& p, cudaStream_t stream) {
  Status s = validate(p);
  if (!s.ok()) return s;
  if (p.batch * p.channels > 0x7fffffffLL)
    return unsupported("alpha_batch_norm_backward: more than 2^31-1 planes on CUDA");
  if (p.channels > 0 && p.workspace == nullptr) return invalid_argument("alpha_batch_norm_backward: workspace is required");
  return p.x_dtype == DType::Float64 ? bwd<double>(p, stream) : bwd<float>(p, stream);
}

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

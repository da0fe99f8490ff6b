// CUDA kernels of CRMSNorm (specs/norm.md §3.5). Numerics follow the CPU kernels: per-element formulas and
// per-row scalars from detail/norm_crms_math.h, fp32 accumulation (fp64 for fp64 x), one rounding per
// output, -fmad=false. Only the order of the sums differs from the CPU.
//
// Forward: one CTA per row (128 threads up to N = 1024, else 256); pass 1 sums x and x^2 (thread-strided,
// so a warp reads consecutive elements), a fixed-order block reduction, pass 2 re-reads the row (L1/L2)
// and writes y. Backward: dx with the same plan (sums of x and g*x, then dx); dweight/dbias without
// atomics: a column-parallel kernel forms per-row-block partials (nb blocks, a function of M only) in
// `workspace`, a second kernel adds them in block order and rounds once.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <string>

#include "fastnorm/detail/norm_crms_math.h"
#include "fastnorm/norm_crms.h"
#include "fastnorm/norm_crms_cuda.h"
#include "norm_elem.cuh"

namespace fastnorm {
namespace norm {
namespace cuda {
namespace {

namespace nd = fastnorm::norm::detail;

int64_t row_blocks(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(rows, 256)); }
int threads_for(int64_t n) { return n <= 1024 ? 128 : 256; }

template <typename A>
__global__ void crms_fwd_kernel(CRMSNormParams p) {
  __shared__ A red[2 * 32];
  const int64_t r = blockIdx.x, n = p.cols;
  const char* xrow = static_cast<const char*>(p.x) + r * p.x_stride * static_cast<int64_t>(dtype_size(p.x_dtype));
  A v[2] = {A(0), A(0)};
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A x = elem::load<A>(xrow, p.x_dtype, i);
    v[0] += x;
    v[1] += x * x;
  }
  elem::block_sum<2, A>(v, red);
  const A rstd = nd::crms_rstd<A>(static_cast<double>(v[0]), static_cast<double>(v[1]), n, p.eps);
  if (threadIdx.x == 0 && p.rstd != nullptr) static_cast<A*>(p.rstd)[r] = rstd;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A x = elem::load<A>(xrow, p.x_dtype, i);
    const A g = elem::load_or<A>(p.weight, p.w_dtype, i, A(1));
    const A b = elem::load_or<A>(p.bias, p.w_dtype, i, A(0));
    elem::store<A>(p.y, p.y_dtype, r * n + i, x * rstd * g + b);
  }
}

template <typename A>
__global__ void crms_dx_kernel(CRMSNormBwdParams p) {
  __shared__ A red[2 * 32];
  const int64_t r = blockIdx.x, n = p.cols;
  const char* xrow = static_cast<const char*>(p.x) + r * p.x_stride * static_cast<int64_t>(dtype_size(p.x_dtype));
  const char* dyrow =
      static_cast<const char*>(p.dy) + r * p.dy_stride * static_cast<int64_t>(dtype_size(p.dy_dtype));
  const A rstd = static_cast<const A*>(p.rstd)[r];
  A v[2] = {A(0), A(0)};
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A x = elem::load<A>(xrow, p.x_dtype, i);
    const A g = elem::load<A>(dyrow, p.dy_dtype, i) * elem::load_or<A>(p.weight, p.w_dtype, i, A(1));
    v[0] += x;
    v[1] += g * x;
  }
  elem::block_sum<2, A>(v, red);
  const A c = nd::crms_coef<A>(static_cast<double>(v[1]), rstd, n);
  const A s = v[0];
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    const A x = elem::load<A>(xrow, p.x_dtype, i);
    const A g = elem::load<A>(dyrow, p.dy_dtype, i) * elem::load_or<A>(p.weight, p.w_dtype, i, A(1));
    elem::store<A>(p.dx, p.dx_dtype, r * n + i, nd::crms_dx<A>(g, x, rstd, c, s));
  }
}

// Partials of block b (rows [b*M/nb, (b+1)*M/nb)) for the columns of this thread: workspace holds
// [dweight partials (nb x N)] then [dbias partials (nb x N)], each present only when requested.
template <typename A>
__global__ void crms_dwdb_partial_kernel(CRMSNormBwdParams p, int64_t nb) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, n = p.cols, m = p.rows;
  const int64_t b = blockIdx.y;
  if (j >= n) return;
  const int64_t r0 = b * m / nb, r1 = (b + 1) * m / nb;
  const int64_t xs = static_cast<int64_t>(dtype_size(p.x_dtype)), ds = static_cast<int64_t>(dtype_size(p.dy_dtype));
  A sw = A(0), sb = A(0);
  for (int64_t r = r0; r < r1; ++r) {
    const A dy = elem::load<A>(static_cast<const char*>(p.dy) + r * p.dy_stride * ds, p.dy_dtype, j);
    if (p.dweight != nullptr) {
      const A x = elem::load<A>(static_cast<const char*>(p.x) + r * p.x_stride * xs, p.x_dtype, j);
      sw += dy * (x * static_cast<const A*>(p.rstd)[r]);
    }
    sb += dy;
  }
  A* ws = static_cast<A*>(p.workspace);
  if (p.dweight != nullptr) {
    ws[b * n + j] = sw;
    ws += nb * n;
  }
  if (p.dbias != nullptr) ws[b * n + j] = sb;
}

template <typename A>
__global__ void crms_reduce_kernel(CRMSNormBwdParams p, int64_t nb) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, n = p.cols;
  if (j >= n) return;
  const A* ws = static_cast<const A*>(p.workspace);
  void* outs[2] = {p.dweight, p.dbias};
  for (int k = 0; k < 2; ++k) {
    if (outs[k] == nullptr) continue;
    A t = A(0);
    for (int64_t b = 0; b < nb; ++b) t += ws[b * n + j];  // block order: reproducible
    elem::store<A>(outs[k], p.w_dtype, j, t);
    ws += nb * n;
  }
}

template <typename A>
__global__ void zero_kernel(void* out, DType t, int64_t n) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j < n) elem::store<A>(out, t, j, A(0));
}

template <typename A>
Status fwd(const CRMSNormParams& p, cudaStream_t stream) {
  if (p.rows == 0) return Status::OK();
  if (p.rows > 0x7fffffffLL) return unsupported("crms_norm: more than 2^31-1 rows on CUDA");
  crms_fwd_kernel<A><<<static_cast<unsigned>(p.rows), threads_for(p.cols), 0, stream>>>(p);
  return elem::launch_status("crms_norm");
}

template <typename A>
Status bwd(const CRMSNormBwdParams& p, cudaStream_t stream) {
  const int64_t m = p.rows, n = p.cols;
  if (n == 0) return Status::OK();
  const unsigned col_blocks = static_cast<unsigned>((n + 255) / 256);
  if (m == 0) {  // no rows: zero weight gradients, nothing else
    if (p.dweight) zero_kernel<A><<<col_blocks, 256, 0, stream>>>(p.dweight, p.w_dtype, n);
    if (p.dbias) zero_kernel<A><<<col_blocks, 256, 0, stream>>>(p.dbias, p.w_dtype, n);
    return elem::launch_status("crms_norm_backward");
  }
  if (m > 0x7fffffffLL) return unsupported("crms_norm_backward: more than 2^31-1 rows on CUDA");
  if (p.dx != nullptr) crms_dx_kernel<A><<<static_cast<unsigned>(m), threads_for(n), 0, stream>>>(p);
  if (p.dweight != nullptr || p.dbias != nullptr) {
    const int64_t nb = row_blocks(m);
    crms_dwdb_partial_kernel<A><<<dim3(col_blocks, static_cast<unsigned>(nb)), 256, 0, stream>>>(p, nb);
    crms_reduce_kernel<A><<<col_blocks, 256, 0, stream>>>(p, nb);
  }
  return elem::launch_status("crms_norm_backward");
}

}  // namespace

size_t crms_norm_bwd_workspace_bytes(const CRMSNormBwdParams& p) {
  const int n_out = (p.dweight != nullptr ? 1 : 0) + (p.dbias != nullptr ? 1 : 0);
  const size_t acc = p.x_dtype == DType::Float64 ? 8 : 4;
  return static_cast<size_t>(n_out) * static_cast<size_t>(row_blocks(p.rows)) * static_cast<size_t>(p.cols) * acc;
}

Status crms_norm_fwd(const CRMSNormParams& p, cudaStream_t stream) {
  Status s = validate(p);
  if (!s.ok()) return s;
  return p.x_dtype == DType::Float64 ? fwd<double>(p, stream) : fwd<float>(p, stream);
}

Status crms_norm_bwd(const CRMSNormBwdParams& p, cudaStream_t stream) {
  Status s = validate(p);
  if (!s.ok()) return s;
  return p.x_dtype == DType::Float64 ? bwd<double>(p, stream) : bwd<float>(p, stream);
}

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

// Internal: element access by run-time dtype and fixed-order block reductions for the small CUDA norm
// kernels (norm_crms.cu, norm_alpha_bn.cu). A dtype switch per element is uniform across a warp (one
// dtype per operand), so it costs a few instructions next to the memory access it guards.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "fastnorm/common.h"
#include "fastnorm/detail/dtype.h"

namespace fastnorm {
namespace norm {
namespace cuda {
namespace elem {

// Element i of an array of dtype t, widened to A.
template <typename A>
__device__ __forceinline__ A load(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float32: return static_cast<A>(static_cast<const float*>(p)[i]);
    case DType::Float64: return static_cast<A>(static_cast<const double*>(p)[i]);
    case DType::BFloat16:
      return static_cast<A>(fastnorm::detail::bf16_to_float(static_cast<const uint16_t*>(p)[i]));
    default: return static_cast<A>(fastnorm::detail::f16_to_float(static_cast<const uint16_t*>(p)[i]));
  }
}
// Element i of an optional array (fill when absent).
template <typename A>
__device__ __forceinline__ A load_or(const void* p, DType t, int64_t i, A fill) {
  return p == nullptr ? fill : load<A>(p, t, i);
}
// Stores v rounded to nearest even into element i of an array of dtype t.
template <typename A>
__device__ __forceinline__ void store(void* p, DType t, int64_t i, A v) {
  switch (t) {
    case DType::Float32: static_cast<float*>(p)[i] = static_cast<float>(v); return;
    case DType::Float64: static_cast<double*>(p)[i] = static_cast<double>(v); return;
    case DType::BFloat16:
      static_cast<uint16_t*>(p)[i] = fastnorm::detail::float_to_bf16(static_cast<float>(v));
      return;
    default: static_cast<uint16_t*>(p)[i] = fastnorm::detail::float_to_f16(static_cast<float>(v)); return;
  }
}

// Sums K values over the block in a fixed order (xor butterfly in each warp, then the warp totals in warp
// order); every thread gets the totals. blockDim.x is a multiple of 32, at most 1024. `red` holds
// K * 32 values.
template <int K, typename A>
__device__ __forceinline__ void block_sum(A (&v)[K], A* red) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k)
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_xor_sync(0xffffffffu, v[k], o);
  __syncthreads();  // red may still be read by a previous call
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) red[k * 32 + warp] = v[k];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) {
    A t = A(0);
    for (int w = 0; w < nwarps; ++w) t += red[k * 32 + w];
    v[k] = t;
  }
}

inline Status launch_status(const char* op) {
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) return Status(StatusCode::CudaError, std::string(op) + ": " + cudaGetErrorString(e));
  return Status::OK();
}

}  // namespace elem
}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

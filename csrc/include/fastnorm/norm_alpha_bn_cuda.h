// CUDA twins of the alpha-BN entry points (norm_alpha_bn.h): same Params, device pointers, launch on `stream`,
// never synchronise. Status: the CPU validate()'s codes, Unsupported for more than 2^31-1 (n, c) planes,
// CudaError (cudaGetErrorString) for a failed launch.
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/norm_alpha_bn.h"

namespace fastnorm {
namespace norm {
namespace cuda {

// Device scratch of the CUDA forward / backward (per-(channel, block) partial sums).
FASTNORM_API size_t alpha_batch_norm_fwd_workspace_bytes(const AlphaBatchNormParams& p);
FASTNORM_API size_t alpha_batch_norm_bwd_workspace_bytes(const AlphaBatchNormBwdParams& p);
// alpha-BN forward: partial moments per (channel, block), a fixed-order merge, then y.
FASTNORM_API Status alpha_batch_norm_fwd(const AlphaBatchNormParams& p, void* workspace, cudaStream_t stream);
// alpha-BN backward: partial sums per (channel, block), a fixed-order merge, then dx (no atomics).
FASTNORM_API Status alpha_batch_norm_bwd(const AlphaBatchNormBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

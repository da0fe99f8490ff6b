// CUDA twins of the UN entry points (norm_unified.h). They launch on `stream` and never synchronise (the
// state step runs in a one-block kernel, so `skip` never reaches the host). Pointers are device pointers.
// Same Params and shapes; Status: the CPU validate()'s codes (nothing launched), CudaError (cudaGetErrorString)
// for a failed launch.
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/norm_unified.h"

namespace fastnorm {
namespace norm {
namespace cuda {

// Scratch of the CUDA kernels (their row-block count is chosen for the GPU).
FASTNORM_API size_t unified_norm_fwd_workspace_bytes(const UnifiedNormParams& p);
FASTNORM_API size_t unified_norm_bwd_workspace_bytes(const UnifiedNormBwdParams& p);

// UN training forward / backward and the per-channel affine on `stream`, as their CPU twins.
FASTNORM_API Status unified_norm_fwd(const UnifiedNormParams& p, cudaStream_t stream);
FASTNORM_API Status unified_norm_bwd(const UnifiedNormBwdParams& p, cudaStream_t stream);
FASTNORM_API Status channel_affine(const ChannelAffineParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

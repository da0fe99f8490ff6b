// CUDA twins of the norm entry points (norm.h). They launch on `stream`, never synchronise, and return
// a Status (CudaError carries cudaGetErrorString of a failed launch). Pointers are device pointers;
// `workspace` is device memory of *_bwd_workspace_bytes() bytes of this header. Params, shapes and dtypes are
// those of norm.h; argument errors are the CPU validate()'s (InvalidArgument / Unsupported, nothing launched).
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/norm.h"

namespace fastnorm {
namespace norm {
namespace cuda {

// Scratch the CUDA backward needs (its block count is chosen for the GPU, not the CPU's).
FASTNORM_API size_t layer_norm_bwd_workspace_bytes(const LayerNormBwdParams& p);
FASTNORM_API size_t rms_norm_bwd_workspace_bytes(const RMSNormBwdParams& p);

// LayerNorm forward on `stream` (norm::layer_norm_fwd). Ok, InvalidArgument, Unsupported, CudaError.
FASTNORM_API Status layer_norm_fwd(const LayerNormParams& p, cudaStream_t stream);
// LayerNorm backward on `stream` (norm::layer_norm_bwd; workspace from cuda::layer_norm_bwd_workspace_bytes).
// Ok, InvalidArgument, Unsupported, CudaError.
FASTNORM_API Status layer_norm_bwd(const LayerNormBwdParams& p, cudaStream_t stream);
// RMSNorm forward on `stream` (norm::rms_norm_fwd). Ok, InvalidArgument, Unsupported, CudaError.
FASTNORM_API Status rms_norm_fwd(const RMSNormParams& p, cudaStream_t stream);
// RMSNorm backward on `stream` (norm::rms_norm_bwd; workspace from cuda::rms_norm_bwd_workspace_bytes).
// Ok, InvalidArgument, Unsupported, CudaError.
FASTNORM_API Status rms_norm_bwd(const RMSNormBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

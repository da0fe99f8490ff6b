// CUDA twins of the EvoNorm entry points (norm_evonorm.h). They launch on `stream`, never synchronise,
// and return a Status: the CPU validate()'s codes (nothing launched), CudaError (cudaGetErrorString) for a
// failed launch. Pointers are device pointers; `workspace` is device memory of the *_workspace_bytes() of
// this header (the CUDA backward needs more scratch than the CPU one, and the CUDA forward needs some too).
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/norm_evonorm.h"

namespace fastnorm {
namespace norm {
namespace cuda {

// The CUDA forward also needs scratch (per-(b, c) / per-group statistics); the CPU one does not.
FASTNORM_API size_t evonorm_b0_fwd_workspace_bytes(const EvoNormB0Params& p);
FASTNORM_API size_t evonorm_s0_fwd_workspace_bytes(const EvoNormS0Params& p);
FASTNORM_API size_t evonorm_b0_bwd_workspace_bytes(const EvoNormB0BwdParams& p);
FASTNORM_API size_t evonorm_s0_bwd_workspace_bytes(const EvoNormS0BwdParams& p);

// B0 forward / backward and S0 forward / backward on `stream`, as their CPU twins in norm_evonorm.h.
FASTNORM_API Status evonorm_b0_fwd(const EvoNormB0Params& p, cudaStream_t stream);
FASTNORM_API Status evonorm_b0_bwd(const EvoNormB0BwdParams& p, cudaStream_t stream);
FASTNORM_API Status evonorm_s0_fwd(const EvoNormS0Params& p, cudaStream_t stream);
FASTNORM_API Status evonorm_s0_bwd(const EvoNormS0BwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

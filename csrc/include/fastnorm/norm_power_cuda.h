// CUDA twins of the PowerNorm entry points (norm_power.h); same Params, device pointers, launched on `stream`,
// never synchronising it. Workspace sizes differ from the CPU ones: query the CUDA functions. Status: the CPU
// checks' codes (nothing launched), CudaError (cudaGetErrorString) for a failed launch.
#pragma once
#include <cuda_runtime.h>

#include "fastnorm/norm_power.h"

namespace fastnorm {
namespace norm {
namespace cuda {

// Training forward on `stream`.
FASTNORM_API Status power_norm_fwd(const PowerNormParams& p, cudaStream_t stream);
// Training backward on `stream`.
FASTNORM_API Status power_norm_bwd(const PowerNormBwdParams& p, cudaStream_t stream);
// Eval forward on `stream`.
FASTNORM_API Status power_norm_eval(const PowerNormEvalParams& p, cudaStream_t stream);
// Device scratch bytes of power_norm_fwd (per-row-chunk partials of xt^2).
FASTNORM_API size_t power_norm_fwd_workspace_bytes(const PowerNormParams& p);
// Device scratch bytes of power_norm_bwd (per-row-chunk partials of the four channel sums).
FASTNORM_API size_t power_norm_bwd_workspace_bytes(const PowerNormBwdParams& p);

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

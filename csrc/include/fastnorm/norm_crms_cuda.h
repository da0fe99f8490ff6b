// CUDA twins of the CRMSNorm entry points (norm_crms.h): same Params, device pointers, launch on `stream`,
// never synchronise. Status: the CPU validate()'s codes, Unsupported for more than 2^31-1 rows, CudaError
// (cudaGetErrorString) for a failed launch.
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/norm_crms.h"

namespace fastnorm {
namespace norm {
namespace cuda {

// Device scratch of the CUDA backward (its row-block count is chosen for the GPU).
FASTNORM_API size_t crms_norm_bwd_workspace_bytes(const CRMSNormBwdParams& p);
// CRMSNorm forward: one CTA per row.
FASTNORM_API Status crms_norm_fwd(const CRMSNormParams& p, cudaStream_t stream);
// CRMSNorm backward: dx one CTA per row; dweight/dbias through fixed row-block partials (no atomics).
FASTNORM_API Status crms_norm_bwd(const CRMSNormBwdParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

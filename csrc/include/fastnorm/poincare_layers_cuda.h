// CUDA twins of the Poincaré layers' core entry points (poincare_layers.h): same Params, a trailing stream.
// Workspace sizes are for the CUDA kernels (query with these functions, not the CPU ones). c may be a device
// scalar (read by the kernels, no host sync) or a host scalar (Curvature::on_host, read at launch).
// Pointers are device pointers; shapes and dtypes as poincare_layers.h. Status: Unsupported for the dtype rules
// of poincare_layers.h; InvalidArgument for a null c, negative sizes / kernel < 1, null BN parameters or
// statistics, a workspace smaller than the CUDA size; CudaError (cudaGetErrorString) for a failed launch.
// Unlike the CPU entry points they do not check every data pointer (the torch binding validates tensors
// first): pass Params that the CPU checks accept.
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/poincare_layers.h"

namespace fastnorm {
namespace poincare {
namespace cuda {

// What each computes: poincare_layers.h. Poincaré FC forward / backward on `stream`; device scratch bytes.
FASTNORM_API Status linear_fwd(const LinearParams& p, cudaStream_t stream);
FASTNORM_API Status linear_bwd(const LinearParams& p, cudaStream_t stream);
FASTNORM_API size_t linear_workspace_bytes(const LinearParams& p);

// Poincaré conv2d forward / backward on `stream`; device scratch bytes.
FASTNORM_API Status conv2d_fwd(const Conv2dParams& p, cudaStream_t stream);
FASTNORM_API Status conv2d_bwd(const Conv2dParams& p, cudaStream_t stream);
FASTNORM_API size_t conv2d_workspace_bytes(const Conv2dParams& p);

// Midpoint batch norm forward / backward on `stream`, device scratch bytes, and the running-statistics update
// (one thread; InvalidArgument for channels < 0, count < 2 or a null c).
FASTNORM_API Status bn_fwd(const MidpointBNParams& p, cudaStream_t stream);
FASTNORM_API Status bn_bwd(const MidpointBNParams& p, cudaStream_t stream);
FASTNORM_API size_t bn_workspace_bytes(const MidpointBNParams& p);
FASTNORM_API Status bn_running_update(const BNUpdateParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace poincare
}  // namespace fastnorm

// CUDA twins of the Poincaré layers' core entry points (poincare_layers.h): same Params, a trailing stream.
// Workspace sizes are for the CUDA kernels (query with these functions, not the CPU ones). c may be a device
// scalar (read by the kernels, no host sync) or a host scalar (Curvature::on_host, read at launch).
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/poincare_layers.h"

namespace fastnorm {
namespace poincare {
namespace cuda {

FASTNORM_API Status linear_fwd(const LinearParams& p, cudaStream_t stream);
FASTNORM_API Status linear_bwd(const LinearParams& p, cudaStream_t stream);
FASTNORM_API size_t linear_workspace_bytes(const LinearParams& p);

FASTNORM_API Status conv2d_fwd(const Conv2dParams& p, cudaStream_t stream);
FASTNORM_API Status conv2d_bwd(const Conv2dParams& p, cudaStream_t stream);
FASTNORM_API size_t conv2d_workspace_bytes(const Conv2dParams& p);

FASTNORM_API Status bn_fwd(const MidpointBNParams& p, cudaStream_t stream);
FASTNORM_API Status bn_bwd(const MidpointBNParams& p, cudaStream_t stream);
FASTNORM_API size_t bn_workspace_bytes(const MidpointBNParams& p);
FASTNORM_API Status bn_running_update(const BNUpdateParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace poincare
}  // namespace fastnorm

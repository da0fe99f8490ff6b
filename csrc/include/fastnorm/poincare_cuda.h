// CUDA twins of the Poincaré core ops (poincare.h, specs/poincare.md §2.4). Launches on `stream`, never
// synchronises, allocates or copies device -> host, and returns a Status (CudaError carries the launch error).
// All pointers of the params are device pointers on the current device, except c when c.on_host (then c.ptr
// is host memory read at launch). Workspaces come from the caller (torch's allocator in the binding).
// Params, shapes and dtypes are those of poincare.h. Status: the CPU validate()'s codes (nothing launched);
// CudaError (cudaGetErrorString) for a failed launch.
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/poincare.h"

namespace fastnorm {
namespace poincare {
namespace cuda {

// Generic entry points: one thread per vector (grid-stride, a fixed grid per size), curvature partials per
// block reduced by a one-block finaliser in a fixed order (deterministic, no float atomics).
FASTNORM_API Status row_fwd(RowOp op, const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status row_bwd(RowOp op, const RowOpParams& p, cudaStream_t stream);
// Device workspace of a row op's backward: one double per block when grad_c is set, else 0.
FASTNORM_API size_t row_workspace_bytes(RowOp op, const RowOpParams& p);

// Named entry points (forward to row_fwd / row_bwd with the op's id); what each computes: poincare.h.
FASTNORM_API Status project_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status project_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status mobius_add_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status mobius_add_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status mobius_scalar_mul_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status mobius_scalar_mul_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status expmap0_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status expmap0_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status logmap0_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status logmap0_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status expmap_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status expmap_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status logmap_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status logmap_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status dist_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status dist_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status conformal_factor_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status conformal_factor_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status gyration_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status gyration_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status transp_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status transp_bwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status residual_fwd(const RowOpParams& p, cudaStream_t stream);
FASTNORM_API Status residual_bwd(const RowOpParams& p, cudaStream_t stream);

// Weighted gyromidpoint forward / backward: one warp per (output, chunk of points) task, partials in the
// workspace, whose size (device memory) midpoint_workspace_bytes of this namespace gives.
FASTNORM_API Status midpoint_fwd(const MidpointParams& p, cudaStream_t stream);
FASTNORM_API Status midpoint_bwd(const MidpointParams& p, cudaStream_t stream);
FASTNORM_API size_t midpoint_workspace_bytes(const MidpointParams& p, bool backward);

}  // namespace cuda
}  // namespace poincare
}  // namespace fastnorm

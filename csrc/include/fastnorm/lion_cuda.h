// CUDA twin of the Lion step (lion.h, specs/lion.md §3.7). Launches on `stream`, never synchronises or
// allocates, and returns a Status (CudaError carries cudaGetErrorString of a failed launch). All pointers
// of the params (tensors, lr_device, grad_scale, found_inf, sr_step_device, workspace) are device pointers
// on the current device; `tensors` itself is a host array.
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/lion.h"

namespace fastnorm {
namespace lion {
namespace cuda {

// The fused multi-tensor Lion step: updates every tensor of `p` in place, bitwise equal to the CPU step.
// One (param, state, master) dtype combination per call; with cautious, p.workspace holds
// workspace_bytes(p) bytes, cleared here with cudaMemsetAsync. Status: validate()'s codes (lion.h);
// InvalidArgument for a cautious step with a smaller workspace; CudaError for a failed CUDA call; Internal
// if the launch plan and the kernel arguments disagree (a bug).
FASTNORM_API Status step(const LionStepParams& p, cudaStream_t stream);

// Whether kernels on `device` can take 32 KB of arguments (CUDA runtime and driver >= 12.1, compute
// capability >= 7.0, and this library built with CUDA >= 12.1). Cached per device after the first query;
// false when the query fails.
FASTNORM_API bool large_kernel_params_supported(int device);

}  // namespace cuda
}  // namespace lion
}  // namespace fastnorm

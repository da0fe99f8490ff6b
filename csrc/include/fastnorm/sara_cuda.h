// CUDA twins of the SaRA entry points (sara.h, specs/sara.md §3.3 "CUDA kernel v1"). They launch on `stream`,
// never allocate, and return a Status (CudaError carries cudaGetErrorString). All pointers are device pointers on
// the current device except the params structs themselves, SaraAdamWParams::tensors (a host array) and `count`.
// Index values are not validated (that would need a sync): the kernels clamp every index they read, so bad input
// gives wrong numbers, never a fault. sara_select_count synchronises the stream once (its result sizes the output).
// Each computes what its CPU twin in sara.h computes, with the same Params. Status: the CPU twin's argument codes
// (InvalidArgument / Unsupported, nothing launched; index values unchecked as said), CudaError for a failed launch.
#pragma once
#include <cuda_runtime_api.h>

#include "fastnorm/sara.h"

namespace fastnorm {
namespace sara {
namespace cuda {

// Adds the digit histogram to p.hist (device memory).
FASTNORM_API Status sara_abs_histogram(const SaraHistogramParams& p, cudaStream_t stream);
// Counts per block, then (one sync) turns p.block_counts into the write offsets sara_select_write reads.
FASTNORM_API Status sara_select_count(const SaraSelectParams& p, int64_t* count, cudaStream_t stream);
// Writes the selected indices and base values (after sara_select_count).
FASTNORM_API Status sara_select_write(const SaraSelectParams& p, cudaStream_t stream);
// CSR row offsets of the indices.
FASTNORM_API Status sara_row_ptr(const SaraRowPtrParams& p, cudaStream_t stream);
// Write-through weight[idx] = RN_w(base + alpha*delta) (set) or RN_w(weight[idx] + alpha*delta) (add).
FASTNORM_API Status sara_scatter(const SaraScatterParams& p, cudaStream_t stream);
// row_ptr is required on CUDA. Scratch: none (the N-split, when used, accumulates into out with atomics).
FASTNORM_API Status sara_sddmm(const SaraSddmmParams& p, cudaStream_t stream);
// The masked Conv2d weight gradient.
FASTNORM_API Status sara_conv2d_sddmm(const SaraConv2dSddmmParams& p, cudaStream_t stream);
// The fused sparse AdamW step (p.tensors is a host array of device pointers).
FASTNORM_API Status sara_adamw_step(const SaraAdamWParams& p, cudaStream_t stream);
// Transpose with deterministic needs sara_spmm_workspace_bytes_cuda(p) bytes (a per-call column sort).
FASTNORM_API size_t sara_spmm_workspace_bytes_cuda(const SaraSpmmParams& p);
// S * dense or S^T * dense (row_ptr required unless transpose).
FASTNORM_API Status sara_spmm(const SaraSpmmParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace sara
}  // namespace fastnorm

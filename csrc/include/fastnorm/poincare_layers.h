// fastnorm public C++ API: the Poincaré layers (specs/poincare.md §2.4, §3.5, §3.7, §3.8) — HNN++ FC,
// β-concatenation conv2d and midpoint batch norm, forward and hand-written backward. Torch-free.
// CPU entry points live in fastnorm::poincare, CUDA twins (poincare_layers_cuda.h) in fastnorm::poincare::cuda.
//
// Conventions shared by every entry point:
// - Tensors are dense and contiguous in the stated layout; pointers of unrequested grads are null
//   (a backward computes only what is asked for). Each grad has its input's dtype.
// - x/grad/out share one dtype (f32, f16, bf16, f64); parameters are x's dtype or f32 (f64 needs f64 x);
//   c (Curvature) any float dtype, read once; grad_c (if requested) has c's dtype and one element.
// - Computation is in float32 (float64 for float64 x). Cross-row sums (∂W, ∂bias, ∂c, BN statistics) are
//   fixed-order reductions over fixed row blocks: bitwise reproducible whatever the thread count.
// - workspace/workspace_bytes: scratch from the caller (the torch binding takes it from torch's allocator
//   so memory tests see it); query the size with <op>_workspace_bytes on fully filled Params.
// - Status of the *_fwd / *_bwd entry points: Ok; Unsupported for a non-float dtype, Float64 parameters with
//   non-Float64 x, or parameters neither of x's dtype nor Float32; InvalidArgument for negative sizes, a null
//   pointer the shape needs (c, x, weight, out in a forward, grad in a backward; BN: bias, mean, var, running
//   stats in eval), bad conv geometry, eps <= 0 (BN), or a workspace smaller than <op>_workspace_bytes().
//   A call with any grad pointer set is a backward; the *_workspace_bytes functions never fail (0 for bad params).
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"
#include "fastnorm/export.h"
#include "fastnorm/poincare.h"

namespace fastnorm {
namespace poincare {

// poincare_linear (§3.5): x [rows, n] (ball points, or tangent vectors when tangent_input), weight [m, n],
// bias [m] or null, out [rows, m] (ball points, or log0 of them when tangent_output).
struct LinearParams {
  int64_t rows = 0, in_features = 0, out_features = 0;  // rows, n, m
  const void* x = nullptr;
  DType x_dtype = DType::Float32;  // also out, grad and grad_x
  const void* weight = nullptr;
  const void* bias = nullptr;
  DType w_dtype = DType::Float32;  // weight, bias, grad_weight, grad_bias
  Curvature c;
  bool tangent_input = false, tangent_output = false, project = true;  // see above; project the output
  void* out = nullptr;  // forward: [rows, m]
  // backward
  const void* grad = nullptr;   // [rows, m], dL/d(out)
  void* grad_x = nullptr;       // [rows, n] or null
  void* grad_weight = nullptr;  // [m, n] or null
  void* grad_bias = nullptr;    // [m] or null
  void* grad_c = nullptr;       // c's dtype, one element, or null
  void* workspace = nullptr;    // linear_workspace_bytes(p) bytes
  size_t workspace_bytes = 0;   // bytes at workspace
  int64_t chunk_rows = 0;  // 0: automatic (backward scratch ≤ 25 % of the output bytes)
  int num_threads = 0;     // 0: OpenMP default
};

// poincare_conv2d (§3.7): x [B, C_in, H, W] tangent, weight [C_out, C_in, kh, kw], bias [C_out] or null,
// out [B, C_out, H_out, W_out] tangent; H_out = (H + 2·pad_h − dil_h·(kh−1) − 1)/stride_h + 1.
struct Conv2dParams {
  int64_t batch = 0, in_channels = 0, height = 0, width = 0;  // B, C_in, H, W
  int64_t out_channels = 0, kernel_h = 1, kernel_w = 1;       // C_out, kh, kw (>= 1)
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;  // stride, dilation >= 1; pad >= 0
  const void* x = nullptr;
  DType x_dtype = DType::Float32;
  const void* weight = nullptr;
  const void* bias = nullptr;
  DType w_dtype = DType::Float32;
  Curvature c;
  void* out = nullptr;          // forward: [B, C_out, H_out, W_out]
  const void* grad = nullptr;   // backward: out's shape
  void* grad_x = nullptr;       // x's shape, or null
  void* grad_weight = nullptr;  // weight's shape, or null
  void* grad_bias = nullptr;    // [C_out] or null
  void* grad_c = nullptr;       // c's dtype, one element, or null
  void* workspace = nullptr;    // conv2d_workspace_bytes(p) bytes
  size_t workspace_bytes = 0;
  int64_t chunk_pixels = 0;  // 0: automatic (patch tiles ≤ 25 % of the output bytes, ≥ 32 pixels)
  int num_threads = 0;       // 0: OpenMP default
};

// Output spatial size of a convolution (the standard formula; §8 pitfall 5).
inline int64_t conv_out_size(int64_t in, int64_t k, int64_t stride, int64_t pad, int64_t dil) {
  return (in + 2 * pad - dil * (k - 1) - 1) / stride + 1;
}

// poincare_midpoint_batch_norm (§3.8): x tangent vectors in a RowLayout {outer, D = C, inner} (rows =
// outer·inner), weight γ (one element), bias β [C], running_mean [C] / running_var (one element) read in
// eval (use_batch_stats = false). mean [C] / var (one element) are written by the forward (batch stats,
// or copies of the running stats) in the stats dtype (f32, f64 for f64 x) and read by the backward.
struct MidpointBNParams {
  RowLayout layout;
  const void* x = nullptr;
  DType x_dtype = DType::Float32;
  const void* weight = nullptr;
  const void* bias = nullptr;
  DType w_dtype = DType::Float32;
  const void* running_mean = nullptr;
  const void* running_var = nullptr;
  DType running_dtype = DType::Float32;
  Curvature c;
  bool use_batch_stats = true;  // training (batch statistics) or eval (running statistics)
  double eps = 1e-6;            // added to the variance; > 0
  void* out = nullptr;          // x's layout
  void* mean = nullptr;         // [C] forward output / backward input
  void* var = nullptr;          // one element, forward output / backward input
  const void* grad = nullptr;   // backward: out's shape
  void* grad_x = nullptr;       // x's shape, or null
  void* grad_weight = nullptr;  // one element, or null
  void* grad_bias = nullptr;    // [C] or null
  void* grad_c = nullptr;       // c's dtype, one element, or null
  void* workspace = nullptr;    // bn_workspace_bytes(p) bytes
  size_t workspace_bytes = 0;
  int num_threads = 0;          // 0: OpenMP default
};

// poincare_bn_running_update_ (§3.8): running_mean ← proj(rm ⊕ (k ⊗ ((−rm) ⊕ m))), running_var ←
// (1−k)·rv + k·σ²·N/(N−1), k = momentum. mean/var in stats_dtype, running buffers in running_dtype.
struct BNUpdateParams {
  int64_t channels = 0;
  void* running_mean = nullptr;
  void* running_var = nullptr;
  DType running_dtype = DType::Float32;
  const void* mean = nullptr;
  const void* var = nullptr;
  DType stats_dtype = DType::Float32;
  Curvature c;
  double momentum = 0.1;  // k in [0, 1]
  int64_t count = 0;      // N >= 2, rows that produced the statistics
};

// Poincaré FC on the CPU: out [rows, m] (forward); grad_x / grad_weight / grad_bias / grad_c as requested
// (backward). Status as above.
FASTNORM_API Status linear_fwd(const LinearParams& p);
FASTNORM_API Status linear_bwd(const LinearParams& p);
// Scratch bytes of linear_fwd (no grad pointer set) or linear_bwd (any set).
FASTNORM_API size_t linear_workspace_bytes(const LinearParams& p);

// Poincaré conv2d on the CPU: out [B, C_out, H_out, W_out] (forward); the requested grads (backward).
// Status as above (InvalidArgument also for a kernel larger than the padded input).
FASTNORM_API Status conv2d_fwd(const Conv2dParams& p);
FASTNORM_API Status conv2d_bwd(const Conv2dParams& p);
// Scratch bytes of conv2d_fwd / conv2d_bwd (as linear_workspace_bytes).
FASTNORM_API size_t conv2d_workspace_bytes(const Conv2dParams& p);

// Midpoint batch norm on the CPU: out, mean, var (forward); the requested grads (backward). Status as above.
FASTNORM_API Status bn_fwd(const MidpointBNParams& p);
FASTNORM_API Status bn_bwd(const MidpointBNParams& p);
// Scratch bytes of bn_fwd / bn_bwd.
FASTNORM_API size_t bn_workspace_bytes(const MidpointBNParams& p);
// Running-statistics update on the CPU (in place; channels = C). Status: Ok; InvalidArgument for channels < 0,
// count < 2, a null pointer, or momentum outside [0, 1].
FASTNORM_API Status bn_running_update(const BNUpdateParams& p);

// β of the β-concatenation: B(n_out/2, ½)/B(n_in/2, ½), computed in double with lgamma. Never fails.
FASTNORM_API double beta_concat_ratio(int64_t n_in, int64_t n_out);

}  // namespace poincare
}  // namespace fastnorm

// Unified Normalization (UN1d, Yang et al., ACM MM 2022) and the per-channel affine, torch-free C++ API
// (specs/norm.md §3.7, §2.5). Reproduces the official code: geometric-mean smoothing over a window of
// per-channel mean squares, adaptive outlier filtration, gradient compensation rho and the approximate
// backward with an EMA of mean(g*z).
//
// Layout: x is M = B*N rows (tokens) of C channels, rows contiguous inside (stride(-1) = 1), row stride
// x_stride. Statistics run over rows (tokens) per channel. Outputs y/dx are contiguous [M, C].
// State tensors (running_var [C], buffer_x2 [Lf, C], ema_gz [C], buffer_gz [Lb, C]) are contiguous, all of
// `state_dtype`; var/rho outputs are float32 (float64 for float64 x); skip is one byte (0/1); skip_counter
// int64. The state step (window, outlier test, rho) is computed in double on the device that runs the op,
// so a CUDA call never synchronises with the host: `skip` stays a device value.
//
// Column sums are deterministic: rows are split into a fixed number of blocks that depends on M only
// (per backend), each block sums in the accumulation type A (float, double for float64 x) and the block
// partials are added in block order in double. The caller allocates `workspace` with *_workspace_bytes().
//
// Dtypes: x (and y, dy, dx) any float type; weight/bias and the state a float type, Float64 only with Float64 x;
// dy must have x's dtype.
// Status of every entry point: Ok; Unsupported for other dtypes; InvalidArgument for negative sizes, window < 1,
// iteration < 1, eps not finite and > 0, momentum outside [0, 1], a row stride < cols, or a null pointer the
// shape needs (x, weight, workspace, the state, statistics and skip pointers, y / dy).
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace norm {

// Training forward (steps 1-6 of §3.7). t = iteration (>= 1), W = warmup_iters, S = compensation_start.
struct UnifiedNormParams {
  int64_t rows = 0, cols = 0;                     // M = B*N, C
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const uint8_t* pad_mask = nullptr;              // [M] bytes, nonzero = pad; null = all valid
  const void* weight = nullptr; const void* bias = nullptr; DType w_dtype = DType::Float32;   // [C]
  const void* running_var = nullptr;              // [C]
  const void* buffer_x2 = nullptr;                // [Lf, C]
  DType state_dtype = DType::Float32;
  const int64_t* skip_counter = nullptr;          // [1]
  int64_t window = 4;                             // Lf >= 1: mean squares kept for the geometric mean
  int64_t iteration = 1, warmup_iters = 4000, compensation_start = 1000;  // t >= 1, W, S
  bool outlier_filtration = false;                // adaptive outlier filtration (skip the update on outliers)
  double eps = 1e-5, momentum = 0.9;              // eps > 0; running_var EMA momentum in [0, 1]
  void* y = nullptr;                              // [M, C] in x_dtype
  void* var = nullptr; void* rho = nullptr;       // [C] stats dtype
  uint8_t* skip = nullptr;                        // [1]
  void* new_running_var = nullptr; void* new_buffer_x2 = nullptr;  // state_dtype, must not alias inputs
  int64_t* new_skip_counter = nullptr;            // [1]
  void* workspace = nullptr;                      // unified_norm_fwd_workspace_bytes()
};

// Training backward (approximate, official): g = dy*gamma*rho; gz = mean over all M rows of g*z;
// buffer_gz[t mod Lb] <- (skip ? ema_gz : gz); mean_gz = gz if (t <= Lb or t < W or skip) else window mean;
// ema_gz <- m*ema_gz + (1-m)*mean_gz; dx = (g - (skip ? mean_gz : ema_gz_new)*z)/sqrt(var+eps);
// dweight = sum dy*rho*z; dbias = sum dy.
struct UnifiedNormBwdParams {
  int64_t rows = 0, cols = 0;
  const void* dy = nullptr; int64_t dy_stride = 0; DType dy_dtype = DType::Float32;
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const void* var = nullptr; const void* rho = nullptr;   // [C] stats dtype (the forward's outputs)
  const uint8_t* skip = nullptr;                          // [1]
  const void* weight = nullptr; DType w_dtype = DType::Float32;
  const void* ema_gz = nullptr; const void* buffer_gz = nullptr; DType state_dtype = DType::Float32;
  int64_t window = 4;                                      // Lb >= 1
  int64_t iteration = 1, warmup_iters = 4000;              // t >= 1, W
  double eps = 1e-5, momentum = 0.9;                       // as in the forward; ema_gz momentum in [0, 1]
  void* dx = nullptr;                                      // [M, C] in x_dtype
  void* dweight = nullptr; void* dbias = nullptr;          // [C] in w_dtype
  void* new_ema_gz = nullptr; void* new_buffer_gz = nullptr;
  void* workspace = nullptr;                               // unified_norm_bwd_workspace_bytes()
};

// y = x * scale[c] + shift[c] with c the index along the channel dim of x viewed as [outer, C, inner]
// (contiguous); computed in float32 (float64 for float64 x), output in x_dtype.
struct ChannelAffineParams {
  int64_t outer = 0, channels = 0, inner = 0;
  const void* x = nullptr; DType x_dtype = DType::Float32;  // [outer, C, inner] contiguous, any float type
  const void* scale = nullptr; const void* shift = nullptr; DType s_dtype = DType::Float32;  // [C] each
  void* y = nullptr;                                          // x's shape, x_dtype
};

// Row blocks of the CPU column sums (depends on rows only).
FASTNORM_API int64_t unified_norm_num_blocks(int64_t rows);
// CPU scratch bytes of the forward / backward (8-byte per-block column partials, row counts, per-channel scratch).
FASTNORM_API size_t unified_norm_fwd_workspace_bytes(const UnifiedNormParams& p);
FASTNORM_API size_t unified_norm_bwd_workspace_bytes(const UnifiedNormBwdParams& p);

// Checks shared by the CPU and CUDA entry points, without running anything (same codes as the ops).
FASTNORM_API Status validate(const UnifiedNormParams& p);
FASTNORM_API Status validate(const UnifiedNormBwdParams& p);
FASTNORM_API Status validate(const ChannelAffineParams& p);

// Training forward of UN on the CPU: y [M, C], var/rho [C], skip [1] and the new state (new_running_var [C],
// new_buffer_x2 [Lf, C], new_skip_counter [1]). Status as above.
FASTNORM_API Status unified_norm_fwd(const UnifiedNormParams& p);
// Training backward of UN on the CPU: dx [M, C], dweight/dbias [C] and the new backward state (new_ema_gz [C],
// new_buffer_gz [Lb, C]). Status as above.
FASTNORM_API Status unified_norm_bwd(const UnifiedNormBwdParams& p);
// Per-channel affine on the CPU (UN eval: scale = gamma/sqrt(running_var + eps), shift = beta). Status: Ok;
// Unsupported for a non-float x or a scale dtype other than a float type (Float64 only with Float64 x);
// InvalidArgument for negative sizes or a null pointer.
FASTNORM_API Status channel_affine(const ChannelAffineParams& p);

}  // namespace norm
}  // namespace fastnorm

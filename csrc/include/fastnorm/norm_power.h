// fastnorm PowerNorm (MaskPowerNorm), public torch-free C++ API (specs/norm.md §2.5, §3.6).
//
// Layout. x holds M = T*B tokens of C channels: (T, B, C), or (B, T, C) with batch_first, addressed as M
// rows (the logical order of the leading dims) with a row stride; elements of a row are contiguous.
// Token row r is (t, b) = (r / B, r % B), or (r % T, r / T) with batch_first. pad_mask is (B, T) row-major,
// nonzero = pad, or null (no pads). y and dx are written contiguously [M, C].
//
// Types. x, y, dy, dx share x_dtype (f32, f16, bf16, f64). Every C-sized vector (weight, bias, running_phi,
// ema_gz and all per-channel outputs) and group_rstd have the accumulation type A: float, or double for
// float64 x. The torch binding converts the module's tensors to and from A (they are C-sized).
//
// Determinism. Per-channel sums run over a fixed split of the M rows into blocks that depends on (M, C)
// only; each block sums into its own partial row of `workspace`, then the partials are added in block
// order. Results are bitwise identical for any thread count. Caller allocates workspace with
// power_norm_{fwd,bwd}_workspace_bytes().
//
// CPU entry points live in fastnorm::norm, CUDA twins in fastnorm::norm::cuda (norm_power_cuda.h).
//
// Status of every entry point: Ok; Unsupported for a non-float x_dtype; InvalidArgument for negative sizes,
// group_num < 1 or not dividing C, a row stride < C, eps / group_eps not finite and > 0, alpha_fwd /
// alpha_bkw outside [0, 1], iteration < 1, warmup_iters < 0, an unknown quirks value, or a null pointer the
// shape needs (every C-sized vector; y, group_rstd, dy and workspace when there are rows).
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace norm {

// Which reading of PowerNorm (specs/norm.md §3.6, Q1-Q4): the official code (default) or the paper.
enum class PowerQuirks : int32_t { Official = 0, Paper = 1 };

// Training forward. With t = iteration, W = warmup_iters, K = C / group_num, V the non-pad tokens:
//   rho[r, k]  = (mean over group k of x[r]^2 + group_eps)^-1/2        -> group_rstd [M, G]
//   xt         = x * rho                                                (GroupScaling)
//   q[c]       = sum_V xt[:, c]^2 / |V|                                 -> x2 [C] (NaN when |V| = 0)
//   denom[c]   = sqrt(q + eps) while batch statistics are used, else sqrt(running_phi + eps)  -> denom [C]
//   y          = weight * xt / denom + bias  (all tokens, pads included)
//   new_running_phi: official: if t < W cumulative mean, then always EMA with alpha_fwd;
//                    paper: cumulative mean while t <= W, EMA after.  Batch statistics: t <= W (both modes).
struct PowerNormParams {
  int64_t T = 0, B = 0, C = 0, group_num = 1;  // time steps, batch, channels, GroupScaling groups (divide C)
  bool batch_first = false;                  // rows ordered (B, T) instead of (T, B)
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;  // row stride in elements
  const uint8_t* pad_mask = nullptr;         // [B, T] nonzero = pad, or null
  const void* weight = nullptr;              // [C] A
  const void* bias = nullptr;                // [C] A
  const void* running_phi = nullptr;         // [C] A (phi before this step)
  void* y = nullptr;                         // [M, C] x_dtype
  void* group_rstd = nullptr;                // [M, G] A
  void* x2 = nullptr;                        // [C] A
  void* denom = nullptr;                     // [C] A
  void* new_running_phi = nullptr;           // [C] A
  int64_t iteration = 1, warmup_iters = 0;   // t >= 1 (this step), W >= 0
  double eps = 1e-5, alpha_fwd = 0.9, group_eps = 1e-5;  // eps of denom, EMA weight in [0, 1], eps of rho
  PowerQuirks quirks = PowerQuirks::Official;
  void* workspace = nullptr;                 // power_norm_fwd_workspace_bytes()
};

// Training backward (the paper's approximate gradient with the running statistic nu = ema_gz):
//   z = xt / denom (recomputed from x, group_rstd, denom); g = dy * weight
//   gh = g - (1 - alpha_bkw) * nu * z;  dxt = gh / s with s = sqrt(x2 + eps) (official, Q1) or denom (paper)
//   dx = rho * (dxt - xt * mean_group(dxt * xt))          (GroupScaling's exact gradient)
//   new_ema_gz = nu + mean over P of gh * z, P = all M tokens (official) or V (paper, Q4)
//   dweight = sum_all dy * z, dbias = sum_all dy
struct PowerNormBwdParams {
  int64_t T = 0, B = 0, C = 0, group_num = 1;       // as in the forward
  bool batch_first = false;
  const void* dy = nullptr; int64_t dy_stride = 0;   // [M, C] x_dtype, row stride in elements
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const uint8_t* pad_mask = nullptr;                 // [B, T] or null
  const void* group_rstd = nullptr;                  // [M, G] A
  const void* x2 = nullptr;                          // [C] A
  const void* denom = nullptr;                       // [C] A
  const void* weight = nullptr;                      // [C] A
  const void* ema_gz = nullptr;                      // [C] A (nu before this step)
  void* dx = nullptr;                                // [M, C] x_dtype
  void* dweight = nullptr; void* dbias = nullptr;    // [C] A
  void* new_ema_gz = nullptr;                        // [C] A
  double eps = 1e-5, alpha_bkw = 0.9;                // as in the forward; EMA weight of nu in [0, 1]
  PowerQuirks quirks = PowerQuirks::Official;
  void* workspace = nullptr;                         // power_norm_bwd_workspace_bytes()
};

// Eval: y = weight * GroupScaling(x) / sqrt(running_phi + eps) + bias, row-wise (M rows of C, any layout);
// no state changes.
struct PowerNormEvalParams {
  int64_t rows = 0, C = 0, group_num = 1;            // M rows of C channels, groups dividing C
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const void* weight = nullptr; const void* bias = nullptr; const void* running_phi = nullptr;  // [C] A
  void* y = nullptr;                                 // [rows, C] x_dtype
  double eps = 1e-5, group_eps = 1e-5;
};

// Training forward on the CPU (see PowerNormParams): y [M, C], group_rstd [M, G], x2/denom/new_running_phi [C].
// Status as above.
FASTNORM_API Status power_norm_fwd(const PowerNormParams& p);
// Training backward on the CPU (see PowerNormBwdParams): dx [M, C], dweight/dbias/new_ema_gz [C]. Status as
// above.
FASTNORM_API Status power_norm_bwd(const PowerNormBwdParams& p);
// Eval forward on the CPU (see PowerNormEvalParams): y [rows, C]; no workspace. Status as above.
FASTNORM_API Status power_norm_eval(const PowerNormEvalParams& p);
// Bytes of CPU scratch power_norm_fwd needs (per-block partial sums of xt^2).
FASTNORM_API size_t power_norm_fwd_workspace_bytes(const PowerNormParams& p);
// Bytes of CPU scratch power_norm_bwd needs (per-block partial sums of dy*z, dy, and the nu statistic's).
FASTNORM_API size_t power_norm_bwd_workspace_bytes(const PowerNormBwdParams& p);

namespace detail_power {
// Argument checks shared by the CPU and CUDA entry points, without running anything (same codes as the ops).
FASTNORM_API Status check_fwd(const PowerNormParams& p);
FASTNORM_API Status check_bwd(const PowerNormBwdParams& p);
FASTNORM_API Status check_eval(const PowerNormEvalParams& p);
}  // namespace detail_power

}  // namespace norm
}  // namespace fastnorm

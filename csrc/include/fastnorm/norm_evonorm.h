// EvoNorm B0 and S0 (Liu et al. 2020; specs/norm.md §3.9), public torch-free C++ API.
//
// Inputs are 4-D [B, C, H, W] tensors stored either NCHW-contiguous or channels_last (NHWC-contiguous);
// y / dy / dx use the same layout as x. `spatial` is H*W. Per-channel parameters (weight, bias, v) are [C]
// in one dtype (w_dtype). Statistics are float32 (float64 for float64 x); accumulation likewise.
//
// B0:  L_c = sqrt(var_c + eps), var_c the biased batch variance over (B, H, W) in training or running_var
//      in eval; S_bc = sqrt(biased var over (H, W) + eps); R = v_c*x + S_bc; D = max(L_c, R);
//      y = x / D * weight + bias. Training also returns the updated running variance
//      (1 - momentum) * running_var + momentum * var_c * k, k = n/(n-1) (timm, Bessel) or 1 (tf).
//      Backward gradient at max ties: timm splits 1/2 / 1/2, tf gives it all to L (the first argument).
// S0:  per sample and group of C/G channels, S = sqrt(biased var over (C/G, H, W) + eps);
//      y = x * sigmoid(v*x) / S * weight + bias.
//
// dweight/dbias/dv are deterministic: per-(b, c) partial sums go to `workspace` (caller-allocated,
// *_bwd_workspace_bytes()), then are added over b in a fixed order. CUDA twins: norm_evonorm_cuda.h.
//
// Dtypes: x (and y, dy, dx, which share it) any float type; weight/bias/v (w_dtype) a float type, Float64 only
// with Float64 x; running_var any float type.
// Status of every entry point: Ok; Unsupported for other dtypes; InvalidArgument for negative sizes, eps not
// finite and > 0, an unknown semantics, momentum outside [0, 1], groups < 1 or not dividing channels, or a
// null pointer the shape needs (weight and v always; the outputs, statistics and workspace listed per op).
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace norm {

// Whose conventions to follow where timm and the TensorFlow reference differ.
enum class EvoSemantics : int32_t {
  Timm = 0,  // Bessel-corrected running_var, max ties split the gradient in half
  Tf = 1,    // no Bessel correction, max ties send the whole gradient to L
};

struct EvoNormB0Params {
  int64_t batch = 0, channels = 0, spatial = 0;      // B, C, H*W
  bool channels_last = false;                        // layout of x and y
  const void* x = nullptr; DType x_dtype = DType::Float32;
  const void* weight = nullptr; const void* bias = nullptr; const void* v = nullptr;  // [C] each
  DType w_dtype = DType::Float32;
  const void* running_var = nullptr; DType rv_dtype = DType::Float32;               // [C]
  void* y = nullptr;                                 // x's layout and dtype
  void* left_var = nullptr;                          // [C] stats dtype: batch var (training) or running_var
  void* inst_std = nullptr;                          // [B, C] stats dtype: S_bc
  void* new_running_var = nullptr;                   // [C] rv_dtype; written in training when non-null
  void* workspace = nullptr;                         // CUDA only: cuda::evonorm_b0_fwd_workspace_bytes()
  bool training = false;                             // batch variance (true) or running_var (false) for L
  double momentum = 0.1;                             // running-variance EMA weight, in [0, 1]
  double eps = 1e-3;                                 // added to both variances; finite, > 0
  EvoSemantics semantics = EvoSemantics::Timm;
};

struct EvoNormB0BwdParams {
  int64_t batch = 0, channels = 0, spatial = 0;
  bool channels_last = false;                        // layout of dy, x and dx
  const void* dy = nullptr; const void* x = nullptr; DType x_dtype = DType::Float32;  // dy has x's dtype
  const void* weight = nullptr; const void* v = nullptr; DType w_dtype = DType::Float32;
  const void* left_var = nullptr; const void* inst_std = nullptr;  // the forward's statistics
  void* dx = nullptr;                                // x's layout and dtype
  void* dweight = nullptr; void* dbias = nullptr; void* dv = nullptr;  // [C] in w_dtype, each may be null
  void* workspace = nullptr;                         // evonorm_b0_bwd_workspace_bytes()
  bool training = false;                             // training: gradient also flows through var_c
  double eps = 1e-3;                                 // as in the forward
  EvoSemantics semantics = EvoSemantics::Timm;
};

struct EvoNormS0Params {
  int64_t batch = 0, channels = 0, spatial = 0, groups = 1;  // groups divides channels
  bool channels_last = false;
  const void* x = nullptr; DType x_dtype = DType::Float32;
  const void* weight = nullptr; const void* bias = nullptr; const void* v = nullptr;
  DType w_dtype = DType::Float32;
  void* y = nullptr;
  void* group_mean = nullptr; void* group_rstd = nullptr;  // [B, G] stats dtype; rstd = 1/S
  void* workspace = nullptr;                         // CUDA only: cuda::evonorm_s0_fwd_workspace_bytes()
  double eps = 1e-5;                                 // added to the group variance; finite, > 0
};

struct EvoNormS0BwdParams {
  int64_t batch = 0, channels = 0, spatial = 0, groups = 1;  // as in the forward
  bool channels_last = false;                        // layout of dy, x and dx
  const void* dy = nullptr; const void* x = nullptr; DType x_dtype = DType::Float32;  // dy has x's dtype
  const void* weight = nullptr; const void* v = nullptr; DType w_dtype = DType::Float32;  // [C] each
  const void* group_mean = nullptr; const void* group_rstd = nullptr;  // [B, G], the forward's statistics
  void* dx = nullptr;                                // x's layout and dtype
  void* dweight = nullptr; void* dbias = nullptr; void* dv = nullptr;  // [C] in w_dtype, each may be null
  void* workspace = nullptr;                         // evonorm_s0_bwd_workspace_bytes()
};

// CPU scratch bytes of the backward (per-(b, c) partial sums in the accumulation type: 6 for B0, 4 for S0).
FASTNORM_API size_t evonorm_b0_bwd_workspace_bytes(const EvoNormB0BwdParams& p);
FASTNORM_API size_t evonorm_s0_bwd_workspace_bytes(const EvoNormS0BwdParams& p);

// B0 forward on the CPU: y [B, C, H, W] (x's layout), left_var [C], inst_std [B, C] and (training)
// new_running_var [C]. Status as above (bias, running_var, left_var, inst_std, y required).
FASTNORM_API Status evonorm_b0_fwd(const EvoNormB0Params& p);
// B0 backward on the CPU: dx (x's layout), dweight/dbias/dv [C] from dy and the forward's statistics.
// Status as above (dy, dx, left_var, inst_std, workspace required).
FASTNORM_API Status evonorm_b0_bwd(const EvoNormB0BwdParams& p);
// S0 forward on the CPU: y (x's layout), group_mean/group_rstd [B, G]. Status as above (bias, group_mean,
// group_rstd, y required).
FASTNORM_API Status evonorm_s0_fwd(const EvoNormS0Params& p);
// S0 backward on the CPU: dx (x's layout), dweight/dbias/dv [C]. Status as above (dy, dx, group statistics,
// workspace required).
FASTNORM_API Status evonorm_s0_bwd(const EvoNormS0BwdParams& p);

// Checks shared by the CPU and CUDA entry points (sizes, pointers, dtypes, eps, momentum, groups), without
// running anything (same codes as the ops).
FASTNORM_API Status validate(const EvoNormB0Params& p);
FASTNORM_API Status validate(const EvoNormB0BwdParams& p);
FASTNORM_API Status validate(const EvoNormS0Params& p);
FASTNORM_API Status validate(const EvoNormS0BwdParams& p);

}  // namespace norm
}  // namespace fastnorm

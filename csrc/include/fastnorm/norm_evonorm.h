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
  bool training = false;
  double momentum = 0.1;
  double eps = 1e-3;
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
  double eps = 1e-3;
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
  double eps = 1e-5;
};

struct EvoNormS0BwdParams {
  int64_t batch = 0, channels = 0, spatial = 0, groups = 1;
  bool channels_last = false;
  const void* dy = nullptr; const void* x = nullptr; DType x_dtype = DType::Float32;
  const void* weight = nullptr; const void* v = nullptr; DType w_dtype = DType::Float32;
  const void* group_mean = nullptr; const void* group_rstd = nullptr;
  void* dx = nullptr;
  void* dweight = nullptr; void* dbias = nullptr; void* dv = nullptr;
  void* workspace = nullptr;                         // evonorm_s0_bwd_workspace_bytes()
};

// Scratch bytes of the backward (per-(b, c) partial sums in the accumulation type).
FASTNORM_API size_t evonorm_b0_bwd_workspace_bytes(const EvoNormB0BwdParams& p);
FASTNORM_API size_t evonorm_s0_bwd_workspace_bytes(const EvoNormS0BwdParams& p);

// B0 forward: y, left_var, inst_std and (training) new_running_var.
FASTNORM_API Status evonorm_b0_fwd(const EvoNormB0Params& p);
// B0 backward: dx, dweight, dbias, dv from dy and the forward's statistics.
FASTNORM_API Status evonorm_b0_bwd(const EvoNormB0BwdParams& p);
// S0 forward: y, group_mean, group_rstd.
FASTNORM_API Status evonorm_s0_fwd(const EvoNormS0Params& p);
// S0 backward: dx, dweight, dbias, dv.
FASTNORM_API Status evonorm_s0_bwd(const EvoNormS0BwdParams& p);

// Checks shared by the CPU and CUDA entry points (sizes, pointers, dtypes, eps, momentum, groups).
FASTNORM_API Status validate(const EvoNormB0Params& p);
FASTNORM_API Status validate(const EvoNormB0BwdParams& p);
FASTNORM_API Status validate(const EvoNormS0Params& p);
FASTNORM_API Status validate(const EvoNormS0BwdParams& p);

}  // namespace norm
}  // namespace fastnorm

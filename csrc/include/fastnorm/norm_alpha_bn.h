// fastnorm norm family: test-time alpha-BatchNorm (specs/norm.md §3.8). Torch-free public C++ API; CUDA
// twins in norm_alpha_bn_cuda.h.
//
// x has shape (N, C, S) with S the product of the dims after the channel dim, stored either as
// x[n][c][s] (NCHW, `channels_last` false) or x[n][s][c] (NHWC, `channels_last` true), dense. Per channel
// over its n = N*S elements: batch mean mu_b and variance var_b (biased, or divided by n-1 with
// `unbiased_batch_var`). With a = alpha_source (the weight of the source statistics):
//   mu = a*running_mean + (1-a)*mu_b;  var = a*running_var + (1-a)*var_b;  rstd = (var + eps)^(-1/2)
//   y = weight * (x - mu) * rstd + bias                       (y has x's layout; buffers never change)
// Backward (exact; g = dy*weight, xhat = (x - mu)*rstd, n' = n or n-1):
//   dx = rstd*g - (1-a)*rstd*mean(g) - (1-a)*rstd^2*(x - mu_b)*sum(g*xhat)/n'
//   dweight = sum dy*xhat, dbias = sum dy
// The forward saves mean = mu (the mixed mean) and rstd; the backward recomputes mu_b from x.
// Sums are fp32 (fp64 for fp64 x) over fixed blocks, combined in double in a fixed order: results do not
// depend on the thread count.
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace norm {

struct AlphaBatchNormParams {
  int64_t batch = 0, channels = 0, spatial = 0;  // N, C, S
  bool channels_last = false;                    // layout of x and y (see above)
  const void* x = nullptr; DType x_dtype = DType::Float32;
  const void* running_mean = nullptr; const void* running_var = nullptr;  // [C], read only
  DType running_dtype = DType::Float32;
  const void* weight = nullptr; const void* bias = nullptr;  // [C] or null
  DType w_dtype = DType::Float32;
  void* y = nullptr; DType y_dtype = DType::Float32;        // x's shape and layout
  void* mean = nullptr; void* rstd = nullptr;               // [C] stats dtype (fp32, fp64 for fp64 x)
  double alpha_source = 1.0;
  double eps = 1e-5;
  bool unbiased_batch_var = false;
};

struct AlphaBatchNormBwdParams {
  int64_t batch = 0, channels = 0, spatial = 0;
  bool channels_last = false;                    // layout of x, dy and dx
  const void* dy = nullptr; DType dy_dtype = DType::Float32;
  const void* x = nullptr; DType x_dtype = DType::Float32;
  const void* mean = nullptr; const void* rstd = nullptr;   // [C] from the forward
  const void* weight = nullptr; DType w_dtype = DType::Float32;
  void* dx = nullptr; DType dx_dtype = DType::Float32;      // or null
  void* dweight = nullptr; void* dbias = nullptr;           // [C] in w_dtype, or null
  void* workspace = nullptr;                                // alpha_batch_norm_bwd_workspace_bytes()
  double alpha_source = 1.0;
  bool unbiased_batch_var = false;
};

// CPU scratch of the forward / backward (per-block partial sums, doubles).
FASTNORM_API size_t alpha_batch_norm_fwd_workspace_bytes(const AlphaBatchNormParams& p);
FASTNORM_API size_t alpha_batch_norm_bwd_workspace_bytes(const AlphaBatchNormBwdParams& p);
// alpha-BN forward on the CPU; `workspace` as sized above (may be null when the size is 0).
FASTNORM_API Status alpha_batch_norm_fwd(const AlphaBatchNormParams& p, void* workspace);
// alpha-BN backward on the CPU: dx, dweight, dbias (each optional).
FASTNORM_API Status alpha_batch_norm_bwd(const AlphaBatchNormBwdParams& p);
// Argument checks shared by the CPU and CUDA entry points.
FASTNORM_API Status validate(const AlphaBatchNormParams& p);
FASTNORM_API Status validate(const AlphaBatchNormBwdParams& p);

}  // namespace norm
}  // namespace fastnorm

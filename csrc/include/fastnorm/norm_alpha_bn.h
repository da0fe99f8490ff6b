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
// Dtypes: x, y, dy, dx any float type; weight/bias a float type, Float64 only with Float64 x; running stats
// any float type.
// Status: Ok; Unsupported for other dtypes; InvalidArgument for negative sizes, alpha_source outside [0, 1],
// eps not finite and > 0, a null pointer the shape needs (x, y, running stats, dy, mean/rstd, workspace).
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
  double alpha_source = 1.0;                     // a in [0, 1]: 1 = source (running) statistics only
  double eps = 1e-5;                             // added to var; finite, > 0
  bool unbiased_batch_var = false;               // var_b divided by n - 1 instead of n
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
  double alpha_source = 1.0;                     // as in the forward
  bool unbiased_batch_var = false;               // as in the forward
};

// CPU scratch of the forward / backward (per-block partial sums, doubles).
FASTNORM_API size_t alpha_batch_norm_fwd_workspace_bytes(const AlphaBatchNormParams& p);
FASTNORM_API size_t alpha_batch_norm_bwd_workspace_bytes(const AlphaBatchNormBwdParams& p);
// alpha-BN forward on the CPU: y (x's shape and layout), mean/rstd [C]; `workspace` as sized above (may be null
// when the size is 0). Status as above; InvalidArgument also for a missing workspace.
FASTNORM_API Status alpha_batch_norm_fwd(const AlphaBatchNormParams& p, void* workspace);
// alpha-BN backward on the CPU: dx (x's layout), dweight/dbias [C] (each optional). Status as above.
FASTNORM_API Status alpha_batch_norm_bwd(const AlphaBatchNormBwdParams& p);
// Argument checks shared by the CPU and CUDA entry points, without running anything (same codes as the ops).
FASTNORM_API Status validate(const AlphaBatchNormParams& p);
FASTNORM_API Status validate(const AlphaBatchNormBwdParams& p);

}  // namespace norm
}  // namespace fastnorm

// fastnorm norm family: CRMSNorm (compressed RMSNorm, Pre-CRMSNorm transformers; specs/norm.md §3.5).
// Torch-free public C++ API; CUDA twins in norm_crms_cuda.h.
//
// A row x of N = d-1 elements holds the first d-1 coordinates of a zero-mean vector of d elements whose
// last coordinate is -sum(x). With s = sum(x) and Q = sum(x^2) + s^2:
//   rstd = (Q / d + eps)^(-1/2);  y = weight * (x * rstd) + bias   (affine optional)
// Backward (g = dy * weight, G = sum_j g_j x_j):
//   dx_j = rstd * g_j - (rstd^3 / d) * G * (x_j + s);  dweight = sum_rows dy * x * rstd;  dbias = sum_rows dy
// Layout, statistics dtype and the deterministic weight-gradient scheme are those of norm.h.
// Dtypes: x, y, dy, dx any float type; weight/bias a float type, Float64 only with Float64 x.
// Status: Ok; Unsupported for other dtypes; InvalidArgument for negative rows/cols, a null pointer the shape
// needs, a row stride < cols, eps not finite and > 0. rows == 0 or cols == 0 is a valid no-op.
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace norm {

struct CRMSNormParams {
  int64_t rows = 0, cols = 0;                 // M, N (= d - 1)
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;  // row stride in elements
  const void* weight = nullptr;               // [N] or null (gamma = 1)
  const void* bias = nullptr;                 // [N] or null (beta = 0)
  DType w_dtype = DType::Float32;
  void* y = nullptr; DType y_dtype = DType::Float32;  // [M, N] contiguous
  void* rstd = nullptr;                       // [M] stats dtype (fp32, fp64 for fp64 x); may be null
  double eps = 1e-5;                          // added to Q / d; finite, > 0
};

struct CRMSNormBwdParams {
  int64_t rows = 0, cols = 0;                 // M, N
  const void* dy = nullptr; int64_t dy_stride = 0; DType dy_dtype = DType::Float32;
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const void* rstd = nullptr;                 // [M] from the forward
  const void* weight = nullptr; DType w_dtype = DType::Float32;  // [N] or null
  void* dx = nullptr; DType dx_dtype = DType::Float32;  // [M, N] contiguous, or null
  void* dweight = nullptr; void* dbias = nullptr;       // [N] in w_dtype, or null
  void* workspace = nullptr;                  // crms_norm_bwd_workspace_bytes()
};

// CPU scratch bytes of the backward (fp32/fp64 partials of dweight and dbias; 0 when neither is asked).
FASTNORM_API size_t crms_norm_bwd_workspace_bytes(const CRMSNormBwdParams& p);
// CRMSNorm forward on the CPU (OpenMP over rows): y [M, N], rstd [M]. Status as above.
FASTNORM_API Status crms_norm_fwd(const CRMSNormParams& p);
// CRMSNorm backward on the CPU: dx [M, N], and deterministic dweight/dbias [N] from per-block partials (each
// optional). Status as above; InvalidArgument also when dy or rstd is null, or dweight/dbias come without
// workspace.
FASTNORM_API Status crms_norm_bwd(const CRMSNormBwdParams& p);
// Argument checks shared by the CPU and CUDA entry points, without running anything (same codes as the ops).
FASTNORM_API Status validate(const CRMSNormParams& p);
FASTNORM_API Status validate(const CRMSNormBwdParams& p);

}  // namespace norm
}  // namespace fastnorm

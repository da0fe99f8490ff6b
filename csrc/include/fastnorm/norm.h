// fastnorm norm family, public torch-free C++ API (specs/norm.md §2.5).
//
// Every op works on M rows of N elements (the last dimension). A tensor is addressed by its base pointer
// and a row stride in elements; elements inside a row are contiguous. Outputs (y, dx, residual_out) are
// written contiguously (row stride N). Statistics (mean, rstd) are float32, or float64 when x is float64,
// one per row. Accumulation is float32 (float64 for float64 inputs).
//
// dweight/dbias are deterministic: rows are split into a fixed number of blocks that depends on the shape
// only (CPU: (M, N); CUDA: M), each block sums into its own partial row in `workspace` (fp32, fp64 for
// float64 x), then a second pass adds the partials in block order. The caller allocates `workspace` with
// *_bwd_workspace_bytes() of the device it runs on.
//
// CPU entry points live in fastnorm::norm, CUDA twins in fastnorm::norm::cuda (norm_cuda.h) and take a
// trailing cudaStream_t. All return Status; none throws.
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace norm {

// RMSNorm rounding convention where the input is 16-bit (specs/norm.md §3.2).
enum class Casting : int32_t {
  Llama = 0,  // HF LlamaRMSNorm: round x*r to X, multiply by gamma, output promote(X, W)
  Gemma = 1,  // torch.nn.RMSNorm / HF Gemma: everything in fp32, one rounding (default)
  None = 2,   // Liger "none": round r, x*r and gamma to X
};

// Forward of LayerNorm, optionally fused with a residual add (add & norm).
//   plain:   y = ((x - mean) * rstd) * weight + bias
//   add:     s = x + residual (fp32 sum, stored in residual_out with residual_out_dtype); y = LN(s)
// Add mode is selected by residual_out != nullptr; residual == nullptr then means s = x.
struct LayerNormParams {
  int64_t rows = 0, cols = 0;                // M, N
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const void* residual = nullptr; int64_t residual_stride = 0; DType residual_dtype = DType::Float32;
  const void* weight = nullptr;              // [N] or null (gamma = 1)
  const void* bias = nullptr;                // [N] or null (beta = 0)
  DType w_dtype = DType::Float32;            // dtype of weight and bias
  void* y = nullptr; DType y_dtype = DType::Float32;           // [M, N] contiguous
  void* residual_out = nullptr; DType residual_out_dtype = DType::Float32;  // [M, N] contiguous
  void* mean = nullptr;                      // [M] stats dtype
  void* rstd = nullptr;                      // [M] stats dtype
  double eps = 1e-5;
};

// Backward of LayerNorm (and of add & norm, where x is the stored sum s and dresidual_out, when given,
// is added to the norm's input gradient before the one rounding to dx_dtype).
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * weight
//   dweight = sum_rows dy * xhat, dbias = sum_rows dy
struct LayerNormBwdParams {
  int64_t rows = 0, cols = 0;
  const void* dy = nullptr; int64_t dy_stride = 0; DType dy_dtype = DType::Float32;
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const void* dresidual_out = nullptr; int64_t dresidual_out_stride = 0; DType dresidual_out_dtype = DType::Float32;
  const void* mean = nullptr; const void* rstd = nullptr;
  const void* weight = nullptr; DType w_dtype = DType::Float32;
  void* dx = nullptr; DType dx_dtype = DType::Float32;        // [M, N] contiguous, or null
  void* dweight = nullptr; void* dbias = nullptr;             // [N] in w_dtype, or null
  void* workspace = nullptr;                                  // layer_norm_bwd_workspace_bytes()
};

// Forward of RMSNorm (optionally add & norm, as above).
//   rstd = (mean(x^2) + eps)^(-1/2); y = x * rstd * (weight + offset) (+ bias), rounded per `casting`
struct RMSNormParams {
  int64_t rows = 0, cols = 0;
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const void* residual = nullptr; int64_t residual_stride = 0; DType residual_dtype = DType::Float32;
  const void* weight = nullptr; const void* bias = nullptr; DType w_dtype = DType::Float32;
  void* y = nullptr; DType y_dtype = DType::Float32;
  void* residual_out = nullptr; DType residual_out_dtype = DType::Float32;
  void* rstd = nullptr;
  double eps = 1e-6;
  double offset = 0.0;                        // gamma_eff = float(weight) + offset (Gemma: 1)
  Casting casting = Casting::Gemma;
};

//   dx = rstd * (g - xhat * mean(g * xhat)),  g = dy * gamma_eff; dweight = sum_rows dy * xhat; dbias = sum_rows dy
struct RMSNormBwdParams {
  int64_t rows = 0, cols = 0;
  const void* dy = nullptr; int64_t dy_stride = 0; DType dy_dtype = DType::Float32;
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const void* dresidual_out = nullptr; int64_t dresidual_out_stride = 0; DType dresidual_out_dtype = DType::Float32;
  const void* rstd = nullptr;
  const void* weight = nullptr; DType w_dtype = DType::Float32;
  DType y_dtype = DType::Float32;             // the forward's output dtype (casting=llama rounds through it)
  void* dx = nullptr; DType dx_dtype = DType::Float32;
  void* dweight = nullptr; void* dbias = nullptr;
  void* workspace = nullptr;
  double offset = 0.0;
  Casting casting = Casting::Gemma;
};

// Number of row blocks used for the weight-gradient partials; depends on (rows, cols) only.
FASTNORM_API int64_t bwd_num_blocks(int64_t rows, int64_t cols);
// Scratch bytes the backward needs (fp32 partials for dweight and dbias; 0 when neither is requested).
FASTNORM_API size_t layer_norm_bwd_workspace_bytes(const LayerNormBwdParams& p);
FASTNORM_API size_t rms_norm_bwd_workspace_bytes(const RMSNormBwdParams& p);

FASTNORM_API Status layer_norm_fwd(const LayerNormParams& p);
FASTNORM_API Status layer_norm_bwd(const LayerNormBwdParams& p);
FASTNORM_API Status rms_norm_fwd(const RMSNormParams& p);
FASTNORM_API Status rms_norm_bwd(const RMSNormBwdParams& p);

// Checks shared by the CPU and CUDA entry points (sizes, pointers, dtype combinations).
FASTNORM_API Status validate(const LayerNormParams& p);
FASTNORM_API Status validate(const LayerNormBwdParams& p);
FASTNORM_API Status validate(const RMSNormParams& p);
FASTNORM_API Status validate(const RMSNormBwdParams& p);

}  // namespace norm
}  // namespace fastnorm

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
//
// Dtypes: x, dy, y, dx: Float32, Float16, BFloat16, Float64 (each its own); weight/bias (w_dtype): a float
// type, Float64 only with Float64 x; residual / residual_out: x's dtype or Float32 (Float64 for Float64 x).
// Status of every entry point: Ok; Unsupported for a dtype outside these rules; InvalidArgument for negative
// rows/cols, a null pointer that the shape needs, a row stride < cols, eps not finite and > 0, or the
// per-op conditions listed below. rows == 0 or cols == 0 is a valid no-op.
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
  int64_t rows = 0, cols = 0;                // M rows of N elements
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;
  const void* residual = nullptr; int64_t residual_stride = 0; DType residual_dtype = DType::Float32;
  const void* weight = nullptr;              // [N] or null (gamma = 1)
  const void* bias = nullptr;                // [N] or null (beta = 0)
  DType w_dtype = DType::Float32;            // dtype of weight and bias
  void* y = nullptr; DType y_dtype = DType::Float32;           // [M, N] contiguous
  void* residual_out = nullptr; DType residual_out_dtype = DType::Float32;  // [M, N] contiguous
  void* mean = nullptr;                      // [M] stats dtype; mean and rstd both set or both null
  void* rstd = nullptr;                      // [M] stats dtype, 1/sqrt(var + eps)
  double eps = 1e-5;                         // added to the variance; finite, > 0
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
  const void* mean = nullptr; const void* rstd = nullptr;     // [M] stats dtype, from the forward (required)
  const void* weight = nullptr; DType w_dtype = DType::Float32;  // [N] or null (gamma = 1)
  void* dx = nullptr; DType dx_dtype = DType::Float32;        // [M, N] contiguous, or null
  void* dweight = nullptr; void* dbias = nullptr;             // [N] in w_dtype, or null
  void* workspace = nullptr;                                  // layer_norm_bwd_workspace_bytes()
};

// Forward of RMSNorm (optionally add & norm, as above).
//   rstd = (mean(x^2) + eps)^(-1/2); y = x * rstd * (weight + offset) (+ bias), rounded per `casting`
struct RMSNormParams {
  int64_t rows = 0, cols = 0;                 // M rows of N elements
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;  // row stride in elements
  const void* residual = nullptr; int64_t residual_stride = 0; DType residual_dtype = DType::Float32;
  const void* weight = nullptr; const void* bias = nullptr; DType w_dtype = DType::Float32;  // [N] each, or null
  void* y = nullptr; DType y_dtype = DType::Float32;                       // [M, N] contiguous
  void* residual_out = nullptr; DType residual_out_dtype = DType::Float32;  // [M, N] contiguous (add mode)
  void* rstd = nullptr;                       // [M] stats dtype, or null
  double eps = 1e-6;                          // added to mean(x^2); finite, > 0
  double offset = 0.0;                        // gamma_eff = float(weight) + offset (Gemma: 1)
  Casting casting = Casting::Gemma;
};

//   dx = rstd * (g - xhat * mean(g * xhat)),  g = dy * gamma_eff; dweight = sum_rows dy * xhat; dbias = sum_rows dy
struct RMSNormBwdParams {
  int64_t rows = 0, cols = 0;                 // M, N
  const void* dy = nullptr; int64_t dy_stride = 0; DType dy_dtype = DType::Float32;
  const void* x = nullptr; int64_t x_stride = 0; DType x_dtype = DType::Float32;  // x, or the sum s in add mode
  const void* dresidual_out = nullptr; int64_t dresidual_out_stride = 0; DType dresidual_out_dtype = DType::Float32;
  const void* rstd = nullptr;                 // [M] stats dtype, from the forward (required)
  const void* weight = nullptr; DType w_dtype = DType::Float32;  // [N] or null
  DType y_dtype = DType::Float32;             // the forward's output dtype (casting=llama rounds through it)
  void* dx = nullptr; DType dx_dtype = DType::Float32;  // [M, N] contiguous, or null
  void* dweight = nullptr; void* dbias = nullptr;       // [N] in w_dtype, or null
  void* workspace = nullptr;                  // rms_norm_bwd_workspace_bytes()
  double offset = 0.0;                        // as in the forward
  Casting casting = Casting::Gemma;           // as in the forward
};

// Number of row blocks used for the CPU weight-gradient partials; depends on (rows, cols) only (1 for an empty
// shape, at most 64).
FASTNORM_API int64_t bwd_num_blocks(int64_t rows, int64_t cols);
// Scratch bytes the CPU backward needs: blocks x N partials of dweight and of dbias (each only when requested),
// float32 (float64 for Float64 x); 0 when neither is requested. Reads rows, cols, x_dtype, dweight, dbias.
FASTNORM_API size_t layer_norm_bwd_workspace_bytes(const LayerNormBwdParams& p);
FASTNORM_API size_t rms_norm_bwd_workspace_bytes(const RMSNormBwdParams& p);

// LayerNorm forward on the CPU (LayerNormParams: y [M, N], optional residual_out [M, N], mean/rstd [M]).
// Status: as above; InvalidArgument also when only one of mean/rstd is given, or residual without residual_out.
FASTNORM_API Status layer_norm_fwd(const LayerNormParams& p);
// LayerNorm backward on the CPU (LayerNormBwdParams: dx [M, N], dweight/dbias [N], each optional).
// Status: as above; InvalidArgument also when dy, mean or rstd is null, or dweight/dbias without workspace.
FASTNORM_API Status layer_norm_bwd(const LayerNormBwdParams& p);
// RMSNorm forward on the CPU (RMSNormParams: y [M, N], optional residual_out [M, N], rstd [M]).
// Status: as above; InvalidArgument also for a non-finite offset, an offset without weight, an unknown
// casting, or residual without residual_out.
FASTNORM_API Status rms_norm_fwd(const RMSNormParams& p);
// RMSNorm backward on the CPU (RMSNormBwdParams: dx [M, N], dweight/dbias [N], each optional).
// Status: as above; InvalidArgument also when dy or rstd is null, dweight/dbias come without workspace, or
// for the offset/casting conditions of the forward.
FASTNORM_API Status rms_norm_bwd(const RMSNormBwdParams& p);

// The argument checks of the entry points above (sizes, pointers, dtype combinations), without running
// anything; the CPU and CUDA entry points both call them. Same Status codes as the op.
FASTNORM_API Status validate(const LayerNormParams& p);
FASTNORM_API Status validate(const LayerNormBwdParams& p);
FASTNORM_API Status validate(const RMSNormParams& p);
FASTNORM_API Status validate(const RMSNormBwdParams& p);

}  // namespace norm
}  // namespace fastnorm

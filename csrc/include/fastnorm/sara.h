// fastnorm public C++ API: SaRA sparse fine-tuning kernels (specs/sara.md §2.5, §3). Torch-free.
//
// A SaRA layer trains k entries of a frozen weight W [rows x cols], named by sorted unique row-major flat
// indices idx_j (r_j = idx_j / cols, c_j = idx_j % cols). The kernels here:
//   sara_abs_histogram       256-bin digit histogram of magnitude keys under a prefix (radix selection)
//   sara_select_count/_write two-phase, order-preserving compaction: key < key_lt, plus the first eq_quota
//                            entries (flat order) with key == key_eq; writes indices and base = W[idx]
//   sara_row_ptr             CSR row offsets of sorted flat indices
//   sara_scatter             weight[idx] = RN_w(base + alpha*delta) (set) or RN_w(weight[idx] + alpha*delta) (add)
//   sara_sddmm               out_j = sum_n dY[n, r_j] * X[n, c_j]  (the masked Linear weight gradient)
//   sara_conv2d_sddmm        the masked Conv2d weight gradient (implicit im2col, no dense dW)
//   sara_adamw_step          fused AdamW on k-vectors + write-through into the weights
//   sara_spmm                S*D or S^T*D for S[r_j, c_j] = values_j
// CPU entry points live in fastnorm::sara, CUDA ones (same names, plus a cudaStream_t) in fastnorm::sara::cuda
// (sara_cuda.h). Every entry point validates its arguments and returns a Status whose message reads
// "<op>: argument '<name>' <expected>, got <actual>". CPU entry points also check the index values (in range,
// strictly increasing: O(k)); CUDA kernels clamp their reads instead.
// Status of every entry point: Ok (k == 0 and empty weights are valid no-ops); Unsupported for a dtype the op
// does not take (weights/values: Float16, BFloat16, Float32, Float64 unless stated; indices and row_ptr: Int32
// or Int64, Int32 only below 2^31 elements); InvalidArgument for negative sizes, null pointers the shape
// needs, out-of-range / unsorted / duplicate indices (CPU), a row_ptr that is not the CSR offsets of the
// indices (CPU, when given), bad hyper-parameters, or a workspace smaller than the *_workspace_bytes().
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace sara {

// Up to 8 dims of a strided tensor. ndim == 0 means "contiguous": flat index == element offset.
struct SaraLayout {
  int32_t ndim = 0;
  int64_t sizes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t strides[8] = {0, 0, 0, 0, 0, 0, 0, 0};
};

// One tensor of a list argument: data pointer, element count and dtype.
struct SaraTensorRef {
  void* ptr = nullptr;
  int64_t numel = 0;
  DType dtype = DType::Float32;
};

// ---- selection -------------------------------------------------------------------------------------------
// Key of x: the bit pattern of |x| in x's format (16/32/64 bits), sign cleared; NaN keys exceed key(+inf) and
// are never counted or selected.
struct SaraHistogramParams {
  const void* weight = nullptr;  // contiguous, numel elements of dtype
  int64_t numel = 0;
  DType dtype = DType::Float32;  // fp16 / bf16 / fp32 / fp64
  int64_t* hist = nullptr;       // 256 counts; the call ADDS to them (histograms of several weights sum)
  int32_t shift = 0;             // digit = (key >> shift) & 255; shift in [0, key bits - 8], multiple of 8
  uint64_t prefix_mask = 0;      // only keys with (key & prefix_mask) == prefix count
  uint64_t prefix = 0;
  int num_threads = 0;           // CPU only; 0 = OpenMP default
};
// Adds the 256-bin histogram of digit (key >> shift) & 255 over the keys with (key & prefix_mask) == prefix
// to hist (NaN never counted). InvalidArgument also for a shift that is not a multiple of 8 in
// [0, key bits - 8] or a null hist.
FASTNORM_API Status sara_abs_histogram(const SaraHistogramParams& p);

struct SaraSelectParams {
  const void* weight = nullptr;  // contiguous
  int64_t numel = 0;
  DType dtype = DType::Float32;
  uint64_t key_lt = 0;     // select key < key_lt ...
  uint64_t key_eq = 0;     // ... plus the first eq_quota entries with key == key_eq
  int64_t eq_quota = 0;
  DType index_dtype = DType::Int32;  // Int32 (numel < 2^31) or Int64
  void* indices = nullptr;           // sara_select_write: count entries
  void* base = nullptr;              // sara_select_write: count entries of dtype (nullable: not written)
  int64_t* block_counts = nullptr;   // workspace: 2 * sara_select_blocks(numel) int64, filled by _count
  int num_threads = 0;
};
// Blocks of the compaction (each block's counts are one workspace pair). Never fails.
FASTNORM_API int64_t sara_select_blocks(int64_t numel);
// Phase 1: per-block counts into block_counts; *count = the number of selected entries (size of the outputs
// of phase 2). InvalidArgument also for a null count or block_counts, or eq_quota < 0.
FASTNORM_API Status sara_select_count(const SaraSelectParams& p, int64_t* count);
// Phase 2 (after _count with the same params): writes the selected flat indices (ascending, index_dtype) and
// base values (weight's dtype, when base is set). InvalidArgument also for null indices or block_counts.
FASTNORM_API Status sara_select_write(const SaraSelectParams& p);

// ---- layout ----------------------------------------------------------------------------------------------
struct SaraRowPtrParams {
  const void* indices = nullptr;   // k sorted unique flat indices into [rows x cols]
  DType index_dtype = DType::Int32;
  int64_t k = 0;
  int64_t rows = 0, cols = 0;      // the weight's matrix shape
  void* row_ptr = nullptr;          // rows + 1 offsets
  DType row_ptr_dtype = DType::Int32;  // Int32 when k < 2^31, else Int64
};
// row_ptr[r] = number of indices < r * cols, for r in [0, rows] (CSR row offsets). InvalidArgument also for
// a null row_ptr or an Int32 row_ptr with k >= 2^31.
FASTNORM_API Status sara_row_ptr(const SaraRowPtrParams& p);

struct SaraScatterParams {
  void* weight = nullptr;          // numel elements of weight_dtype, addressed through layout
  int64_t weight_numel = 0;
  DType weight_dtype = DType::Float32;
  SaraLayout layout;
  const void* indices = nullptr;   // k sorted unique flat indices
  DType index_dtype = DType::Int32;
  int64_t k = 0;
  const void* base = nullptr;      // k of weight_dtype; null = add mode (read weight[idx])
  const void* delta = nullptr;     // k of delta_dtype
  DType delta_dtype = DType::Float32;
  double alpha = 1.0;              // scale of delta (finite); 0 restores base exactly
  int num_threads = 0;             // CPU only; 0 = OpenMP default
};
// weight[idx_j] = RN_w(base_j + alpha*delta_j) (set mode) or RN_w(weight[idx_j] + alpha*delta_j) (add mode),
// in place, through `layout` (up to 8 dims). InvalidArgument also for a non-finite alpha or ndim > 8.
FASTNORM_API Status sara_scatter(const SaraScatterParams& p);

// ---- masked weight gradient --------------------------------------------------------------------------------
// out_j = sum_n dY[n, r_j] * X[n, c_j], accumulated in float32 (float64 for float64 inputs) and written in that
// type. N = 0 gives zeros. CPU: N is consumed in chunks of nc (a multiple of 16, at most 256, chosen so that the
// packed fp32 X^T panel fits the workspace cap), each entry adding its 16-lane dot to its output: results are
// bitwise independent of the thread count and of the ISA build.
struct SaraSddmmParams {
  const void* grad_out = nullptr;  // [n, rows], strides (go_s0, go_s1) in elements
  const void* input = nullptr;     // [n, cols], strides (in_s0, in_s1)
  DType dtype = DType::Float32;    // of grad_out and input
  int64_t n = 0, rows = 0, cols = 0;
  int64_t go_s0 = 0, go_s1 = 1, in_s0 = 0, in_s1 = 1;
  const void* indices = nullptr;
  DType index_dtype = DType::Int32;
  int64_t k = 0;
  const void* row_ptr = nullptr;   // nullable; rows + 1 offsets (used by CUDA, checked by CPU)
  DType row_ptr_dtype = DType::Int32;
  void* out = nullptr;             // k of float32 (float64 for float64 inputs)
  bool deterministic = false;      // CPU: always deterministic
  void* workspace = nullptr;       // sara_sddmm_workspace_bytes(p) bytes
  size_t workspace_size = 0;
  int num_threads = 0;
};
// CPU scratch bytes the call needs: the packed X^T panel (cols x nc) plus one dY column of nc per thread, capped
// at max(min(k * sizeof(w), 8 MiB), 256 KiB) and never more than half a dense weight; 0 selects the panel-free
// path. Never fails.
FASTNORM_API size_t sara_sddmm_workspace_bytes(const SaraSddmmParams& p);

// The chunk length the CPU kernel uses for these params (0 = panel-free), exposed for tests.
FASTNORM_API int64_t sara_sddmm_chunk(const SaraSddmmParams& p);
// The masked Linear weight gradient above: out [k] from grad_out [n, rows] and input [n, cols]. InvalidArgument
// also for cols == 0 with k > 0, or a workspace smaller than sara_sddmm_workspace_bytes().
FASTNORM_API Status sara_sddmm(const SaraSddmmParams& p);

struct SaraConv2dSddmmParams {
  const void* grad_out = nullptr;  // [B, O, Ho, Wo], strides go_s[4]
  const void* input = nullptr;     // [B, C, H, W], strides in_s[4]
  DType dtype = DType::Float32;
  int64_t batch = 0, in_channels = 0, height = 0, width = 0;
  int64_t out_channels = 0, out_height = 0, out_width = 0;
  int64_t go_s[4] = {0, 0, 0, 1};
  int64_t in_s[4] = {0, 0, 0, 1};
  int64_t kh = 1, kw = 1;          // weight [O, C/groups, kh, kw]
  int64_t stride_h = 1, stride_w = 1, pad_h = 0, pad_w = 0, dil_h = 1, dil_w = 1;
  int64_t groups = 1;
  const void* indices = nullptr;
  DType index_dtype = DType::Int32;
  int64_t k = 0;
  const void* row_ptr = nullptr;
  DType row_ptr_dtype = DType::Int32;
  void* out = nullptr;             // k of float32 (float64 for float64 inputs)
  bool deterministic = false;      // CPU: always deterministic
  void* workspace = nullptr;       // sara_conv2d_sddmm_workspace_bytes(p) bytes
  size_t workspace_size = 0;
  int num_threads = 0;             // CPU only; 0 = OpenMP default
};
// CPU: 0 (direct per-entry loops over the two planes, no scratch). Never fails.
FASTNORM_API size_t sara_conv2d_sddmm_workspace_bytes(const SaraConv2dSddmmParams& p);
// The masked Conv2d weight gradient: out_j = dW[o, c, p, q] at idx_j of the weight [O, C/groups, kh, kw] viewed
// as [O, C/groups*kh*kw], from grad_out and input by implicit im2col. InvalidArgument also for kernel < 1,
// groups not dividing the channels, stride / dilation < 1, padding < 0, or an output size other than the
// geometry implies.
FASTNORM_API Status sara_conv2d_sddmm(const SaraConv2dSddmmParams& p);

// ---- optimizer -------------------------------------------------------------------------------------------
// Per tensor i (k_i entries), per element in the order of torch's _single_tensor_adamw (opmath = delta dtype):
//   d = d * (1 - lr*wd)          or, decay_absolute:  d = d - (lr*wd) * (base + d)
//   m = lerp(m, g, 1 - beta1);   v = v*beta2 + ((1-beta2)*g)*g
//   d = d + (-lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)
//   weight[idx] = RN_w(base + alpha*d)
struct SaraAdamWTensor {
  SaraTensorRef delta, exp_avg, exp_avg_sq, grad;  // k entries each (delta dtype)
  SaraTensorRef weight;                            // weight_numel entries of the weight dtype
  SaraLayout weight_layout;
  SaraTensorRef indices;                           // Int32 / Int64
  SaraTensorRef base;                              // k of the weight dtype
};
struct SaraAdamWParams {
  const SaraAdamWTensor* tensors = nullptr;  // host array of n_tensors
  int64_t n_tensors = 0;
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;  // lr, eps, wd >= 0; betas in [0, 1)
  double bias_correction1 = 1, bias_correction2 = 1;  // 1 - beta^t, in (0, 1]
  bool decay_absolute = false;               // decay the merged weight base + d instead of d
  double alpha = 1.0;                        // scale of the write-through (finite)
  int num_threads = 0;                       // CPU only; 0 = OpenMP default
};
// The fused AdamW step above, in place on every tensor's delta/exp_avg/exp_avg_sq and weight[idx].
// Dtypes: delta, exp_avg, exp_avg_sq, grad one of Float32 / Float64 shared by all tensors (Float64 exactly for
// Float64 weights); weights and bases one float dtype. Unsupported for other dtypes; InvalidArgument also for
// a bad hyper-parameter or lists of different lengths.
FASTNORM_API Status sara_adamw_step(const SaraAdamWParams& p);

// ---- sparse x dense ----------------------------------------------------------------------------------------
// transpose = false: out [rows x l] = S * dense [cols x l];  transpose = true: out [cols x l] = S^T * dense
// [rows x l]. Contiguous dense/out; values and dense of one float dtype, accumulated in fp32 (fp64).
struct SaraSpmmParams {
  const void* indices = nullptr;
  DType index_dtype = DType::Int32;
  int64_t k = 0;
  const void* values = nullptr;
  DType dtype = DType::Float32;
  const void* row_ptr = nullptr;
  DType row_ptr_dtype = DType::Int32;
  int64_t rows = 0, cols = 0, l = 0;
  const void* dense = nullptr;
  void* out = nullptr;
  bool transpose = false;
  bool deterministic = false;      // CPU: always deterministic
  void* workspace = nullptr;       // CPU: none (sara_spmm_workspace_bytes = 0); CUDA: sara_spmm_workspace_bytes_cuda
  size_t workspace_size = 0;
  int num_threads = 0;             // CPU only; 0 = OpenMP default
};
// CPU scratch bytes of sara_spmm: 0 (the CPU transpose sorts in host memory of its own). Never fails.
FASTNORM_API size_t sara_spmm_workspace_bytes(const SaraSpmmParams& p);
// S * dense or S^T * dense as above. Dtypes: values/dense/out Float32 or Float64 only (Unsupported otherwise).
FASTNORM_API Status sara_spmm(const SaraSpmmParams& p);

}  // namespace sara
}  // namespace fastnorm

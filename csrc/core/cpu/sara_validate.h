// Internal: argument validation of the SaRA entry points, shared by the CPU (sara.cpp) and CUDA (sara.cu) entry
// points. Messages read "<op>: argument '<name>' <expected>, got <actual>" (specs/sara.md §5); the torch binding
// prefixes "fastnorm.". Host-only; the index-value checks read host memory (CPU entry points only).
#pragma once
#include <cmath>
#include <string>

#include "fastnorm/detail/sara_math.h"
#include "fastnorm/sara.h"

namespace fastnorm {
namespace sara {

inline Status sara_bad(const char* op, const char* arg, const std::string& expected, const std::string& got) {
  return invalid_argument(std::string(op) + ": argument '" + arg + "' " + expected + ", got " + got);
}
inline Status sara_bad_dtype(const char* op, const char* arg, const std::string& expected, DType got) {
  return unsupported(std::string(op) + ": argument '" + arg + "' " + expected + ", got " + dtype_name(got));
}
inline std::string s_(int64_t v) { return std::to_string(v); }

inline bool is_index_dtype(DType t) { return t == DType::Int32 || t == DType::Int64; }

// Common checks of an index vector and the matrix it addresses.
inline Status check_index_args(const char* op, const void* idx, DType t, int64_t k, int64_t numel) {
  if (!is_index_dtype(t)) return sara_bad_dtype(op, "indices", "must be int32 or int64", t);
  if (k < 0) return sara_bad(op, "indices", "must have a length >= 0", s_(k));
  if (k > 0 && idx == nullptr) return sara_bad(op, "indices", "must not be null", "null");
  if (numel < 0) return sara_bad(op, "weight", "must have a size >= 0", s_(numel));
  if (t == DType::Int32 && numel > (int64_t(1) << 31))
    return sara_bad(op, "indices", "must be int64 for a weight of 2^31 elements or more", "int32");
  if (k > numel) return sara_bad(op, "indices", "must have at most as many entries as the weight (" + s_(numel) + ")", s_(k));
  return Status::OK();
}

// CPU only: every index in [0, numel), strictly increasing (sorted and unique). O(k).
inline Status check_indices_host(const char* op, const void* idx, DType t, int64_t k, int64_t numel) {
  Status s = check_index_args(op, idx, t, k, numel);
  if (!s.ok()) return s;
  int64_t prev = -1;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t v = detail::load_index(idx, t, j);
    if (v < 0 || v >= numel)
      return sara_bad(op, "indices", "must be flat indices in [0, " + s_(numel) + ")", s_(v) + " at position " + s_(j));
    if (v <= prev)
      return sara_bad(op, "indices", "must be sorted and unique",
                      s_(v) + " at position " + s_(j) + " after " + s_(prev));
    prev = v;
  }
  return Status::OK();
}

// CPU only: row_ptr must be the CSR offsets of the (already checked) indices.
inline Status check_row_ptr_host(const char* op, const void* rp, DType rt, int64_t rows, const void* idx, DType it,
                                 int64_t k, int64_t cols) {
  if (!is_index_dtype(rt)) return sara_bad_dtype(op, "row_ptr", "must be int32 or int64", rt);
  int64_t j = 0;
  for (int64_t r = 0; r <= rows; ++r) {
    while (j < k && detail::load_index(idx, it, j) < r * cols) ++j;
    const int64_t v = detail::load_index(rp, rt, r);
    if (v != j)
      return sara_bad(op, "row_ptr", "must be the CSR row offsets of indices (sara_row_ptr)",
                      "row_ptr[" + s_(r) + "] = " + s_(v) + " instead of " + s_(j));
  }
  return Status::OK();
}

inline Status validate_histogram(const SaraHistogramParams& p) {
  const char* op = "sara_abs_histogram_";
  if (!is_float(p.dtype)) return sara_bad_dtype(op, "weight", "must be float16, bfloat16, float32 or float64", p.dtype);
  if (p.numel < 0) return sara_bad(op, "weight", "must have numel >= 0", s_(p.numel));
  if (p.numel > 0 && p.weight == nullptr) return sara_bad(op, "weight", "must not be null", "null");
  if (p.hist == nullptr) return sara_bad(op, "hist", "must not be null", "null");
  const int bits = detail::key_bits(p.dtype);
  if (p.shift < 0 || p.shift > bits - 8 || p.shift % 8 != 0)
    return sara_bad(op, "shift", "must be a multiple of 8 in [0, " + s_(bits - 8) + "] for " + dtype_name(p.dtype),
                    s_(p.shift));
  return Status::OK();
}

inline Status validate_select(const SaraSelectParams& p, bool writing) {
  const char* op = "sara_select";
  if (!is_float(p.dtype)) return sara_bad_dtype(op, "weight", "must be float16, bfloat16, float32 or float64", p.dtype);
  if (p.numel < 0) return sara_bad(op, "weight", "must have numel >= 0", s_(p.numel));
  if (p.numel > 0 && p.weight == nullptr) return sara_bad(op, "weight", "must not be null", "null");
  if (p.eq_quota < 0) return sara_bad(op, "eq_quota", "must be >= 0", s_(p.eq_quota));
  if (!is_index_dtype(p.index_dtype)) return sara_bad_dtype(op, "indices", "must be int32 or int64", p.index_dtype);
  if (p.index_dtype == DType::Int32 && p.numel > (int64_t(1) << 31))
    return sara_bad(op, "indices", "must be int64 for a weight of 2^31 elements or more", "int32");
  if (writing && p.numel > 0 && (p.indices == nullptr || p.block_counts == nullptr))
    return sara_bad(op, "indices", "must not be null (and block_counts must come from sara_select_count)", "null");
  return Status::OK();
}

inline Status validate_row_ptr(const SaraRowPtrParams& p) {
  const char* op = "sara_row_ptr";
  if (p.rows < 0) return sara_bad(op, "rows", "must be >= 0", s_(p.rows));
  if (p.cols < 0) return sara_bad(op, "cols", "must be >= 0", s_(p.cols));
  if (p.row_ptr == nullptr) return sara_bad(op, "row_ptr", "must not be null", "null");
  if (!is_index_dtype(p.row_ptr_dtype)) return sara_bad_dtype(op, "row_ptr", "must be int32 or int64", p.row_ptr_dtype);
  if (p.row_ptr_dtype == DType::Int32 && p.k >= (int64_t(1) << 31))
    return sara_bad(op, "row_ptr", "must be int64 for 2^31 entries or more", "int32");
  return check_index_args(op, p.indices, p.index_dtype, p.k, p.rows * p.cols);
}

inline Status validate_scatter(const SaraScatterParams& p) {
  const char* op = "sara_scatter_";
  if (!is_float(p.weight_dtype))
    return sara_bad_dtype(op, "weight", "must be float16, bfloat16, float32 or float64", p.weight_dtype);
  if (!is_float(p.delta_dtype))
    return sara_bad_dtype(op, "delta", "must be float16, bfloat16, float32 or float64", p.delta_dtype);
  if (p.weight_numel > 0 && p.weight == nullptr) return sara_bad(op, "weight", "must not be null", "null");
  if (p.k > 0 && p.delta == nullptr) return sara_bad(op, "delta", "must not be null", "null");
  if (p.layout.ndim < 0 || p.layout.ndim > 8) return sara_bad(op, "weight", "must have at most 8 dims", s_(p.layout.ndim));
  if (!std::isfinite(p.alpha)) return sara_bad(op, "alpha", "must be finite", std::to_string(p.alpha));
  return check_index_args(op, p.indices, p.index_dtype, p.k, p.weight_numel);
}

inline Status validate_sddmm(const SaraSddmmParams& p) {
  const char* op = "sara_sddmm";
  if (!is_float(p.dtype)) return sara_bad_dtype(op, "grad_out", "must be float16, bfloat16, float32 or float64", p.dtype);
  if (p.n < 0) return sara_bad(op, "input", "must have a batch size >= 0", s_(p.n));
  if (p.rows < 0) return sara_bad(op, "grad_out", "must have a size(1) >= 0", s_(p.rows));
  if (p.cols < 0) return sara_bad(op, "cols", "must be >= 0", s_(p.cols));
  if (p.k > 0 && p.cols == 0) return sara_bad(op, "cols", "must be > 0 when indices is not empty", "0");
  if (p.k > 0 && p.out == nullptr) return sara_bad(op, "out", "must not be null", "null");
  if (p.k > 0 && p.n > 0 && (p.grad_out == nullptr || p.input == nullptr))
    return sara_bad(op, "grad_out", "and input must not be null", "null");
  if (p.row_ptr && !is_index_dtype(p.row_ptr_dtype))
    return sara_bad_dtype(op, "row_ptr", "must be int32 or int64", p.row_ptr_dtype);
  return check_index_args(op, p.indices, p.index_dtype, p.k, p.rows * p.cols);
}

inline Status validate_conv(const SaraConv2dSddmmParams& p) {
  const char* op = "sara_conv2d_sddmm";
  if (!is_float(p.dtype)) return sara_bad_dtype(op, "grad_out", "must be float16, bfloat16, float32 or float64", p.dtype);
  if (p.batch < 0 || p.in_channels < 0 || p.height < 0 || p.width < 0)
    return sara_bad(op, "input", "must have sizes >= 0", "a negative size");
  if (p.out_channels < 0 || p.out_height < 0 || p.out_width < 0)
    return sara_bad(op, "grad_out", "must have sizes >= 0", "a negative size");
  if (p.kh < 1 || p.kw < 1) return sara_bad(op, "weight_shape", "must have kernel sizes >= 1", s_(p.kh) + "x" + s_(p.kw));
  if (p.groups < 1) return sara_bad(op, "groups", "must be >= 1", s_(p.groups));
  if (p.in_channels % p.groups || p.out_channels % p.groups)
    return sara_bad(op, "groups", "must divide the input and output channels (" + s_(p.in_channels) + ", " +
                    s_(p.out_channels) + ")", s_(p.groups));
  if (p.stride_h < 1 || p.stride_w < 1) return sara_bad(op, "stride", "must be >= 1", s_(p.stride_h) + ", " + s_(p.stride_w));
  if (p.dil_h < 1 || p.dil_w < 1) return sara_bad(op, "dilation", "must be >= 1", s_(p.dil_h) + ", " + s_(p.dil_w));
  if (p.pad_h < 0 || p.pad_w < 0) return sara_bad(op, "padding", "must be >= 0", s_(p.pad_h) + ", " + s_(p.pad_w));
  const int64_t ho = (p.height + 2 * p.pad_h - p.dil_h * (p.kh - 1) - 1) / p.stride_h + 1;
  const int64_t wo = (p.width + 2 * p.pad_w - p.dil_w * (p.kw - 1) - 1) / p.stride_w + 1;
  if (ho != p.out_height || wo != p.out_width)
    return sara_bad(op, "grad_out", "must have the implied output size " + s_(ho) + "x" + s_(wo),
                    s_(p.out_height) + "x" + s_(p.out_width));
  if (p.k > 0 && p.out == nullptr) return sara_bad(op, "out", "must not be null", "null");
  if (p.row_ptr && !is_index_dtype(p.row_ptr_dtype))
    return sara_bad_dtype(op, "row_ptr", "must be int32 or int64", p.row_ptr_dtype);
  return check_index_args(op, p.indices, p.index_dtype, p.k, p.out_channels * (p.in_channels / p.groups) * p.kh * p.kw);
}

inline Status validate_spmm(const SaraSpmmParams& p) {
  const char* op = "sara_spmm";
  if (p.dtype != DType::Float32 && p.dtype != DType::Float64)
    return sara_bad_dtype(op, "values", "must be float32 or float64", p.dtype);
  if (p.rows < 0 || p.cols < 0) return sara_bad(op, "rows", "and cols must be >= 0", s_(p.rows) + ", " + s_(p.cols));
  if (p.l < 0) return sara_bad(op, "dense", "must have size(1) >= 0", s_(p.l));
  if (p.k > 0 && p.values == nullptr) return sara_bad(op, "values", "must not be null", "null");
  if (p.row_ptr && !is_index_dtype(p.row_ptr_dtype))
    return sara_bad_dtype(op, "row_ptr", "must be int32 or int64", p.row_ptr_dtype);
  const int64_t out_rows = p.transpose ? p.cols : p.rows, in_rows = p.transpose ? p.rows : p.cols;
  if (out_rows * p.l > 0 && p.out == nullptr) return sara_bad(op, "out", "must not be null", "null");
  if (in_rows * p.l > 0 && p.dense == nullptr) return sara_bad(op, "dense", "must not be null", "null");
  return check_index_args(op, p.indices, p.index_dtype, p.k, p.rows * p.cols);
}

inline Status validate_adamw(const SaraAdamWParams& p) {
  const char* op = "sara_adamw_step_";
  if (p.n_tensors < 0) return sara_bad(op, "deltas", "must have a length >= 0", s_(p.n_tensors));
  if (p.n_tensors > 0 && p.tensors == nullptr) return sara_bad(op, "deltas", "must not be null", "null");
  if (!(p.lr >= 0) || !std::isfinite(p.lr)) return sara_bad(op, "lr", "must be finite and >= 0", std::to_string(p.lr));
  if (!(p.beta1 >= 0 && p.beta1 < 1)) return sara_bad(op, "beta1", "must be in [0, 1)", std::to_string(p.beta1));
  if (!(p.beta2 >= 0 && p.beta2 < 1)) return sara_bad(op, "beta2", "must be in [0, 1)", std::to_string(p.beta2));
  if (!(p.eps >= 0) || !std::isfinite(p.eps)) return sara_bad(op, "eps", "must be finite and >= 0", std::to_string(p.eps));
  if (!(p.weight_decay >= 0) || !std::isfinite(p.weight_decay))
    return sara_bad(op, "weight_decay", "must be finite and >= 0", std::to_string(p.weight_decay));
  if (!(p.bias_correction1 > 0 && p.bias_correction1 <= 1))
    return sara_bad(op, "bias_correction1", "must be in (0, 1]", std::to_string(p.bias_correction1));
  if (!(p.bias_correction2 > 0 && p.bias_correction2 <= 1))
    return sara_bad(op, "bias_correction2", "must be in (0, 1]", std::to_string(p.bias_correction2));
  if (!std::isfinite(p.alpha)) return sara_bad(op, "alpha", "must be finite", std::to_string(p.alpha));
  for (int64_t i = 0; i < p.n_tensors; ++i) {
    const SaraAdamWTensor& t = p.tensors[i];
    const std::string at = "[" + s_(i) + "]";
    const DType A = p.tensors[0].delta.dtype, W = p.tensors[0].weight.dtype;
    if (t.delta.dtype != DType::Float32 && t.delta.dtype != DType::Float64)
      return sara_bad_dtype(op, "deltas", "must be float32 or float64", t.delta.dtype);
    if (t.delta.dtype != A) return sara_bad_dtype(op, "deltas", "must share one dtype (deltas[0]'s)", t.delta.dtype);
    if (!is_float(t.weight.dtype)) return sara_bad_dtype(op, "weights", "must be a float dtype", t.weight.dtype);
    if (t.weight.dtype != W) return sara_bad_dtype(op, "weights", "must share one dtype (weights[0]'s)", t.weight.dtype);
    if ((W == DType::Float64) != (A == DType::Float64))
      return sara_bad_dtype(op, "deltas", std::string("must be ") + (W == DType::Float64 ? "float64" : "float32") +
                            " for " + dtype_name(W) + " weights", A);
    const SaraTensorRef* same[] = {&t.exp_avg, &t.exp_avg_sq, &t.grad};
    const char* names[] = {"exp_avgs", "exp_avg_sqs", "grads"};
    for (int q = 0; q < 3; ++q) {
      if (same[q]->dtype != A) return sara_bad_dtype(op, names[q], "must have the dtype of deltas" + at, same[q]->dtype);
      if (same[q]->numel != t.delta.numel)
        return sara_bad(op, names[q], "must have deltas" + at + "'s length " + s_(t.delta.numel), s_(same[q]->numel));
    }
    if (t.base.dtype != W) return sara_bad_dtype(op, "bases", "must have the dtype of weights" + at, t.base.dtype);
    if (t.base.numel != t.delta.numel || t.indices.numel != t.delta.numel)
      return sara_bad(op, "bases", "and indices must have deltas" + at + "'s length " + s_(t.delta.numel),
                      s_(t.base.numel) + ", " + s_(t.indices.numel));
    if (t.delta.numel > 0 && (!t.delta.ptr || !t.exp_avg.ptr || !t.exp_avg_sq.ptr || !t.grad.ptr || !t.weight.ptr ||
                              !t.base.ptr || !t.indices.ptr))
      return sara_bad(op, "deltas", "and the other lists must not hold null pointers", "null at " + at);
    Status s = check_index_args(op, t.indices.ptr, t.indices.dtype, t.indices.numel, t.weight.numel);
    if (!s.ok()) return s;
  }
  return Status::OK();
}

}  // namespace sara
}  // namespace fastnorm

// Helpers shared by every family's torch binding (CPU and CUDA): dtype mapping, argument checks whose
// messages name the op and the argument, and the row view of a tensor. Only csrc/torch includes torch.
#pragma once
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/Exception.h>

#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "fastnorm/common.h"

namespace fastnorm {
namespace binding {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

// Builds "fastnorm.<op>: <parts...>" and throws it as a RuntimeError.
template <typename... Ts>
[[noreturn]] void fail(const char* op, const Ts&... parts) {
  std::ostringstream s;
  s << "fastnorm." << op << ": ";
  (s << ... << parts);
  throw std::runtime_error(s.str());
}

inline std::string shape_str(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.size(i);
  s << "]";
  return s.str();
}

inline std::optional<DType> to_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return DType::Float32;
    case ScalarType::Half: return DType::Float16;
    case ScalarType::BFloat16: return DType::BFloat16;
    case ScalarType::Double: return DType::Float64;
    case ScalarType::Int: return DType::Int32;
    case ScalarType::Long: return DType::Int64;
    case ScalarType::Byte: return DType::UInt8;
    case ScalarType::Bool: return DType::Bool;
    default: return std::nullopt;
  }
}

inline ScalarType to_scalar_type(DType t) {
  switch (t) {
    case DType::Float32: return ScalarType::Float;
    case DType::Float16: return ScalarType::Half;
    case DType::BFloat16: return ScalarType::BFloat16;
    case DType::Float64: return ScalarType::Double;
    case DType::Int32: return ScalarType::Int;
    case DType::Int64: return ScalarType::Long;
    case DType::UInt8: return ScalarType::Byte;
    case DType::Bool: return ScalarType::Bool;
  }
  return ScalarType::Float;
}

inline const char* scalar_name(ScalarType t) {
  const auto d = to_dtype(t);
  return d ? dtype_name(*d) : "a non-float dtype";
}

inline bool is_float_dtype(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Half || t == ScalarType::BFloat16 || t == ScalarType::Double;
}

// A float tensor's core dtype, or an error naming the argument.
inline DType float_dtype(const Tensor& t, const char* op, const char* arg) {
  if (!is_float_dtype(t.scalar_type()))
    fail(op, arg, " must be float32, float16, bfloat16 or float64, got ", scalar_name(t.scalar_type()));
  return *to_dtype(t.scalar_type());
}

// Every tensor argument of an op lives on x's device.
inline void check_same_device(const Tensor& x, const Tensor& t, const char* op, const char* arg) {
  if (t.is_cuda() != x.is_cuda() || t.get_device_index() != x.get_device_index())
    fail(op, arg, " is on ", t.is_cuda() ? "cuda" : "cpu", ":", int(t.get_device_index()), " but x is on ",
         x.is_cuda() ? "cuda" : "cpu", ":", int(x.get_device_index()));
}

inline void check_device_kind(const Tensor& x, bool cuda, const char* op) {
  if (x.is_cuda() != cuda) fail(op, "x must be a ", cuda ? "CUDA" : "CPU", " tensor for this kernel");
  if (x.layout() != torch::headeronly::Layout::Strided) fail(op, "x must be a strided (dense) tensor");
}

// The rows of a tensor as (M rows of N, row stride): elements of a row must be contiguous and the leading
// dims collapsible into one stride; otherwise the tensor is made contiguous once (a documented copy).
struct Rows {
  Tensor t;
  int64_t m = 0, n = 0, stride = 0;
};

inline Rows as_rows(const Tensor& x) {
  Rows r;
  const int64_t d = x.dim();
  r.n = d == 0 ? 1 : x.size(d - 1);
  r.m = 1;
  for (int64_t i = 0; i + 1 < d; ++i) r.m *= x.size(i);
  bool ok = d == 0 || x.stride(d - 1) == 1 || r.n == 1;
  int64_t stride = r.n;
  if (ok && d >= 2) {
    // Find the stride of the innermost leading dim of size > 1 and check the outer ones nest in it.
    int64_t inner = -1;
    for (int64_t i = d - 2; i >= 0; --i) {
      if (x.size(i) == 1) continue;
      if (inner < 0) { inner = i; stride = x.stride(i); continue; }
      // dims between i and inner (exclusive) all have size 1
      if (x.stride(i) != x.stride(inner) * x.size(inner)) { ok = false; break; }
      inner = i;
    }
    if (stride < r.n && r.m > 1) ok = false;  // overlapping rows (e.g. an expanded tensor)
  }
  r.t = ok ? x : torch::stable::contiguous(x);
  r.stride = ok ? stride : r.n;
  return r;
}

// The leading shape x.shape[:-1] (for per-row statistics).
inline std::vector<int64_t> leading_shape(const Tensor& x) {
  std::vector<int64_t> s;
  for (int64_t i = 0; i + 1 < x.dim(); ++i) s.push_back(x.size(i));
  return s;
}
inline std::vector<int64_t> shape_of(const Tensor& x) {
  std::vector<int64_t> s;
  for (int64_t i = 0; i < x.dim(); ++i) s.push_back(x.size(i));
  return s;
}

// A fresh contiguous tensor on x's device.
inline Tensor empty_like_shape(const Tensor& x, const std::vector<int64_t>& shape, ScalarType dtype) {
  return torch::stable::new_empty(x, shape, dtype);
}
// The [0]-shaped placeholder returned for an output that was not requested.
inline Tensor unused_output(const Tensor& x, ScalarType dtype) {
  return torch::stable::new_empty(x, std::vector<int64_t>{0}, dtype);
}

inline void check_status(const Status& s, const char* op) {
  if (!s.ok()) fail(op, s.message());
}

}  // namespace binding
}  // namespace fastnorm

// fastnorm public C++ API: types shared by every family. Torch-free by design (DESIGN.md §1).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "fastnorm/export.h"

namespace fastnorm {

// Element types. An op argument that names a dtype passes this code (-1 = "same as the input").
// The numbering is fixed: Python passes these integers through the op schemas.
enum class DType : int32_t {
  Float32 = 0,
  Float16 = 1,
  BFloat16 = 2,
  Float64 = 3,
  Int32 = 4,
  Int64 = 5,
  UInt8 = 6,
  Bool = 7,
};

// Size in bytes of one element of `t` (0 for an unknown code).
FASTNORM_HD_INLINE size_t dtype_size(DType t) {
  switch (t) {
    case DType::Float32: case DType::Int32: return 4;
    case DType::Float16: case DType::BFloat16: return 2;
    case DType::Float64: case DType::Int64: return 8;
    case DType::UInt8: case DType::Bool: return 1;
  }
  return 0;
}

// The four floating types every op accepts for its tensors.
FASTNORM_HD_INLINE bool is_float(DType t) {
  return t == DType::Float32 || t == DType::Float16 || t == DType::BFloat16 || t == DType::Float64;
}

// Human-readable name of `t` ("float32", ..., "unknown" for a code outside the enum), used in error
// messages. Never fails; the returned string is static.
FASTNORM_API const char* dtype_name(DType t);

// What went wrong. Every entry point documents which codes it returns; the meaning is the same everywhere.
enum class StatusCode : int32_t {
  Ok = 0,               // success; the outputs are written
  InvalidArgument = 1,  // a size, pointer, stride, hyper-parameter or workspace size is wrong; nothing was written
  Unsupported = 2,      // a dtype (or dtype combination) the op does not implement; nothing was written
  CudaError = 3,        // CUDA entry points only: a launch or CUDA runtime call failed (cudaGetErrorString in
                        // the message); outputs are undefined
  OutOfMemory = 4,      // reserved: the core never allocates device memory, so no entry point returns it today
  Internal = 5,         // a broken internal invariant (a bug in fastnorm); please report it
};

// Result of every core entry point: no exceptions cross the core boundary. ok() is true for StatusCode::Ok;
// otherwise message() is a short sentence that names the op and the argument ("layer_norm: eps must be a
// finite value > 0"). The torch binding turns a non-OK status into a Python error whose message names the op.
class Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status OK() { return Status(); }
  bool ok() const { return code_ == StatusCode::Ok; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }

 private:
  StatusCode code_ = StatusCode::Ok;
  std::string message_;
};

// Shorthands for the two codes argument checks return.
inline Status invalid_argument(std::string msg) { return Status(StatusCode::InvalidArgument, std::move(msg)); }
inline Status unsupported(std::string msg) { return Status(StatusCode::Unsupported, std::move(msg)); }

}  // namespace fastnorm

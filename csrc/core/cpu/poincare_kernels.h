// Internal: the two builds (baseline, avx2) of the Poincaré CPU kernels and what they share with poincare.cpp.
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/poincare.h"

namespace fastnorm {
namespace poincare {
namespace kernels {

using ::fastnorm::detail::load_as;
using ::fastnorm::detail::store_from;

constexpr int64_t kBlock = 512;     // vectors per work block (and per curvature partial)
constexpr int64_t kMidChunk = 1024; // midpoint: points per (output, chunk) task

inline int64_t mid_chunks(const MidpointParams& p) { return p.R == 0 ? 0 : (p.R + kMidChunk - 1) / kMidChunk; }
// Byte offset of the midpoint backward's double curvature partials (after the V/Q partials and coefficients).
inline size_t mid_cpart_offset(const MidpointParams& p) {
  const size_t a = p.dtype == DType::Float64 ? sizeof(double) : sizeof(float);
  const size_t tasks = size_t(p.batch) * size_t(mid_chunks(p));
  const size_t bytes = (tasks * size_t(p.D + 1) + size_t(p.batch) * size_t(p.D + 4)) * a;
  return (bytes + 15) / 16 * 16;
}

template <class A> inline A read_scalar(const void* p, DType t) {
  switch (t) {
    case DType::Float32: return A(*static_cast<const float*>(p));
    case DType::Float64: return A(*static_cast<const double*>(p));
    case DType::Float16: return A(load_as<f16_t, float>(*static_cast<const f16_t*>(p)));
    case DType::BFloat16: return A(load_as<bf16_t, float>(*static_cast<const bf16_t*>(p)));
    default: return A(0);
  }
}
inline void write_scalar(void* p, DType t, double v) {
  switch (t) {
    case DType::Float32: *static_cast<float*>(p) = float(v); break;
    case DType::Float64: *static_cast<double*>(p) = v; break;
    case DType::Float16: *static_cast<f16_t*>(p) = store_from<f16_t, float>(float(v)); break;
    case DType::BFloat16: *static_cast<bf16_t*>(p) = store_from<bf16_t, float>(float(v)); break;
    default: break;
  }
}


}  // namespace kernels
namespace baseline {
Status row_fwd_k(RowOp op, const RowOpParams& p);
Status row_bwd_k(RowOp op, const RowOpParams& p);
Status midpoint_fwd_k(const MidpointParams& p);
Status midpoint_bwd_k(const MidpointParams& p);
}  // namespace baseline
namespace avx2 {
Status row_fwd_k(RowOp op, const RowOpParams& p);
Status row_bwd_k(RowOp op, const RowOpParams& p);
Status midpoint_fwd_k(const MidpointParams& p);
Status midpoint_bwd_k(const MidpointParams& p);
}  // namespace avx2
}  // namespace poincare
}  // namespace fastnorm

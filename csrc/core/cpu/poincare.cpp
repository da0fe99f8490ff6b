// Poincaré-ball core ops on the CPU (specs/poincare.md §2.4, §3.1-§3.4, §3.6, §4): argument checks, workspace
// sizes and the entry points; the kernels are in poincare_kernels.cpp (built for the baseline ISA and AVX2,
// picked at run time). The per-vector math is in detail/poincare_math.h. The kernels run OpenMP over fixed
// blocks of vectors, each vector either read in place (inner = 1 and storage = compute type) or gathered once
// into a thread-local compute-type buffer, so the Gram / z / write passes of the math run over contiguous
// L1-resident rows with 8-lane vectorisable dot products. The curvature gradient is summed per fixed block of
// vectors into the workspace and the blocks are added in index order: bitwise independent of the thread count.
#include <string>

#include "fastnorm/poincare.h"
#include "isa.h"
#include "poincare_kernels.h"

namespace fastnorm {
namespace poincare {

namespace {

using kernels::kBlock;
using kernels::mid_chunks;
using kernels::mid_cpart_offset;
using kernels::write_scalar;

#if defined(FASTNORM_HAVE_AVX2)
#define FASTNORM_POINCARE_ISA(fn, ...) (::fastnorm::cpu::use_avx2() ? avx2::fn(__VA_ARGS__) : baseline::fn(__VA_ARGS__))
#else
#define FASTNORM_POINCARE_ISA(fn, ...) baseline::fn(__VA_ARGS__)
#endif

const char* op_name(RowOp op) {
  switch (op) {
    case RowOp::Project: return "project";
    case RowOp::MobiusAdd: return "mobius_add";
    case RowOp::MobiusScalarMul: return "mobius_scalar_mul";
    case RowOp::Expmap0: return "expmap0";
    case RowOp::Logmap0: return "logmap0";
    case RowOp::Expmap: return "expmap";
    case RowOp::Logmap: return "logmap";
    case RowOp::Dist: return "dist";
    case RowOp::ConformalFactor: return "conformal_factor";
    case RowOp::Gyration: return "gyration";
    case RowOp::Transp: return "transp";
    case RowOp::Residual: return "residual";
  }
  return "?";
}

int num_inputs(RowOp op) {
  switch (op) {
    case RowOp::Project: case RowOp::MobiusScalarMul: case RowOp::Expmap0: case RowOp::Logmap0:
    case RowOp::ConformalFactor: return 1;
    case RowOp::Gyration: case RowOp::Transp: return 3;
    default: return 2;
  }
}
bool scalar_out(RowOp op) { return op == RowOp::Dist || op == RowOp::ConformalFactor; }

Status check_c(const Curvature& c, const char* name) {
  if (c.ptr == nullptr) return invalid_argument(std::string("poincare.") + name + ": c is null");
  if (!is_float(c.dtype)) return unsupported(std::string("poincare.") + name + ": c must have a float dtype");
  return Status::OK();
}

}  // namespace

Status validate(RowOp op, const RowOpParams& p, bool backward) {
  const std::string n = std::string("poincare.") + op_name(op) + (backward ? "_bwd" : "_fwd");
  const RowLayout& L = p.layout;
  if (L.outer < 0 || L.D < 0 || L.inner < 0) return invalid_argument(n + ": negative size");
  if (!is_float(p.dtype)) return unsupported(n + ": dtype must be float32, float16, bfloat16 or float64");
  if (p.eps <= 0 || p.eps >= 1) return invalid_argument(n + ": eps must lie in (0, 1)");
  Status s = check_c(p.c, op_name(op));
  if (!s.ok()) return s;
  if (L.numel() == 0 && (L.rows() == 0 || !scalar_out(op))) return Status::OK();
  const int k = num_inputs(op);
  for (int i = 0; i < k; ++i)
    if (p.in[i] == nullptr) return invalid_argument(n + ": input " + std::to_string(i) + " is null");
  if ((scalar_out(op) || op == RowOp::MobiusScalarMul) && !is_float(p.scalar_dtype))
    return unsupported(n + ": scalar dtype must be a float dtype");
  if (op == RowOp::MobiusScalarMul && p.scalar == nullptr) return invalid_argument(n + ": r is null");
  if (!backward) {
    if (p.out == nullptr) return invalid_argument(n + ": out is null");
  } else {
    if (p.grad == nullptr) return invalid_argument(n + ": grad is null");
    if (p.grad_c != nullptr && p.workspace_bytes < row_workspace_bytes(op, p))
      return invalid_argument(n + ": workspace too small for the curvature gradient");
  }
  return Status::OK();
}

size_t row_workspace_bytes(RowOp, const RowOpParams& p) {
  if (p.grad_c == nullptr) return 0;
  const int64_t rows = p.layout.rows();
  return size_t((rows + kBlock - 1) / kBlock) * sizeof(double) + sizeof(double);
}

Status row_fwd(RowOp op, const RowOpParams& p) {
  Status s = validate(op, p, false);
  if (!s.ok()) return s;
  if (p.layout.rows() == 0) return Status::OK();
  return FASTNORM_POINCARE_ISA(row_fwd_k, op, p);
}

Status row_bwd(RowOp op, const RowOpParams& p) {
  Status s = validate(op, p, true);
  if (!s.ok()) return s;
  if (p.layout.rows() == 0) {
    if (p.grad_c) write_scalar(p.grad_c, p.c.dtype, 0.0);
    return Status::OK();
  }
  return FASTNORM_POINCARE_ISA(row_bwd_k, op, p);
}

#define FASTNORM_POINCARE_ROW_OP(name, id)                                                       \
  Status name##_fwd(const RowOpParams& p) { return row_fwd(RowOp::id, p); }                      \
  Status name##_bwd(const RowOpParams& p) { return row_bwd(RowOp::id, p); }                      \
  size_t name##_workspace_bytes(const RowOpParams& p) { return row_workspace_bytes(RowOp::id, p); }
FASTNORM_POINCARE_ROW_OP(project, Project)
FASTNORM_POINCARE_ROW_OP(mobius_add, MobiusAdd)
FASTNORM_POINCARE_ROW_OP(mobius_scalar_mul, MobiusScalarMul)
FASTNORM_POINCARE_ROW_OP(expmap0, Expmap0)
FASTNORM_POINCARE_ROW_OP(logmap0, Logmap0)
FASTNORM_POINCARE_ROW_OP(expmap, Expmap)
FASTNORM_POINCARE_ROW_OP(logmap, Logmap)
FASTNORM_POINCARE_ROW_OP(dist, Dist)
FASTNORM_POINCARE_ROW_OP(conformal_factor, ConformalFactor)
FASTNORM_POINCARE_ROW_OP(gyration, Gyration)
FASTNORM_POINCARE_ROW_OP(transp, Transp)
FASTNORM_POINCARE_ROW_OP(residual, Residual)
#undef FASTNORM_POINCARE_ROW_OP

// ------------------------------------------------------------------------------------------ midpoint
// Work is split into (batch, chunk of kMidChunk points) tasks; each task writes its partial V, Q to the
// workspace and the partials of one output are added in chunk order (deterministic for any thread count).
Status validate(const MidpointParams& p, bool backward) {
  const std::string n = backward ? "poincare.midpoint_bwd" : "poincare.midpoint_fwd";
  if (p.batch < 0 || p.R < 0 || p.D < 0) return invalid_argument(n + ": negative size");
  if (!is_float(p.dtype)) return unsupported(n + ": dtype must be float32, float16, bfloat16 or float64");
  if (p.weights && !is_float(p.w_dtype)) return unsupported(n + ": weights must have a float dtype");
  if (p.eps <= 0 || p.eps >= 1) return invalid_argument(n + ": eps must lie in (0, 1)");
  Status s = check_c(p.c, "midpoint");
  if (!s.ok()) return s;
  if (p.batch * p.D == 0) return Status::OK();
  if (p.R == 0) return invalid_argument(n + ": the reduced dimension is empty");
  if (p.x == nullptr) return invalid_argument(n + ": x is null");
  if (!backward && p.out == nullptr) return invalid_argument(n + ": out is null");
  if (backward && p.grad == nullptr) return invalid_argument(n + ": grad is null");
  if (backward && p.grad_weights && !p.weights) return invalid_argument(n + ": grad_weights needs weights");
  if (p.workspace_bytes < midpoint_workspace_bytes(p, backward)) return invalid_argument(n + ": workspace too small");
  return Status::OK();
}

size_t midpoint_workspace_bytes(const MidpointParams& p, bool backward) {
  const size_t a = p.dtype == DType::Float64 ? sizeof(double) : sizeof(float);
  const size_t tasks = size_t(p.batch) * size_t(mid_chunks(p));
  size_t bytes = tasks * size_t(p.D + 1) * a;
  if (backward) bytes = mid_cpart_offset(p) + tasks * sizeof(double);
  return bytes + 64;
}

Status midpoint_fwd(const MidpointParams& p) {
  Status s = validate(p, false);
  if (!s.ok()) return s;
  if (p.batch * p.D == 0) return Status::OK();
  return FASTNORM_POINCARE_ISA(midpoint_fwd_k, p);
}

Status midpoint_bwd(const MidpointParams& p) {
  Status s = validate(p, true);
  if (!s.ok()) return s;
  if (p.batch * p.D == 0 || p.R == 0) {
    if (p.grad_c) write_scalar(p.grad_c, p.c.dtype, 0.0);
    return Status::OK();
  }
  return FASTNORM_POINCARE_ISA(midpoint_bwd_k, p);
}

}  // namespace poincare
}  // namespace fastnorm

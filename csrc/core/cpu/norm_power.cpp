// CPU entry points of PowerNorm (specs/norm.md §3.6): argument validation (shared with the CUDA entry points),
// workspace sizing, and the choice between the baseline and AVX2 builds of the kernels (norm_power_kernels.cpp):
// the training forward, the approximate backward and eval. See norm_power.h for the layout and the math.
//
// Plan. Forward: one parallel pass over fixed row blocks computes GroupScaling's factors (saved), and each
// block's partial sums of xt^2 over non-pad tokens; after warmup the divisor is known beforehand (phi), so
// the same pass also writes y. During warmup the divisor needs the batch sums, so a second pass over x
// writes y. Backward: dx depends on the channel sums only through the old nu, so one pass per row computes
// dx (GroupScaling's backward needs the group's sum of dxt*xt, formed over the row buffer first) and adds
// the four per-channel statistics into its block's partials. Partials are summed in block order. Row sums
// use `omp simd reduction`, whose order is fixed at compile time, so results do not depend on the threads.
#include <algorithm>
#include <cmath>
#include <string>

#include "fastnorm/norm_power.h"
#include "isa.h"
#include "norm_power_kernels.h"

namespace fastnorm {
namespace norm {
namespace {

using power_kernels::num_blocks;

size_t acc_size(DType x) { return x == DType::Float64 ? sizeof(double) : sizeof(float); }

Status shape_checks(const char* op, int64_t T, int64_t B, int64_t C, int64_t G, DType xd, const void* x,
                    int64_t x_stride, int64_t M) {
  const std::string o(op);
  if (T < 0 || B < 0 || C < 0) return invalid_argument(o + ": sizes must be >= 0");
  if (G < 1) return invalid_argument(o + ": group_num must be >= 1, got " + std::to_string(G));
  if (C % G != 0)
    return invalid_argument(o + ": group_num " + std::to_string(G) + " does not divide C = " + std::to_string(C));
  if (!is_float(xd)) return unsupported(o + ": x dtype " + dtype_name(xd) + " is not a float type");
  if (M > 0 && C > 0 && x == nullptr) return invalid_argument(o + ": x is null");
  if (M > 1 && x_stride < C) return invalid_argument(o + ": x row stride is smaller than C");
  return Status::OK();
}

Status eps_check(const char* op, const char* name, double v) {
  if (!(v > 0) || !std::isfinite(v)) return invalid_argument(std::string(op) + ": " + name + " must be a finite value > 0");
  return Status::OK();
}


}  // namespace

namespace detail_power {

Status check_fwd(const PowerNormParams& p) {
  const char* op = "power_norm";
  const std::string o(op);
  const int64_t M = p.T * p.B;
  Status s = shape_checks(op, p.T, p.B, p.C, p.group_num, p.x_dtype, p.x, p.x_stride, M);
  if (!s.ok()) return s;
  if (!(s = eps_check(op, "eps", p.eps)).ok()) return s;
  if (!(s = eps_check(op, "group_eps", p.group_eps)).ok()) return s;
  if (!(p.alpha_fwd >= 0 && p.alpha_fwd <= 1)) return invalid_argument(o + ": alpha_fwd must be in [0, 1]");
  if (p.iteration < 1) return invalid_argument(o + ": iteration must be >= 1, got " + std::to_string(p.iteration));
  if (p.warmup_iters < 0) return invalid_argument(o + ": warmup_iters must be >= 0");
  if (p.quirks != PowerQuirks::Official && p.quirks != PowerQuirks::Paper)
    return invalid_argument(o + ": quirks must be 0 (official) or 1 (paper)");
  if (p.C > 0 && (!p.weight || !p.bias || !p.running_phi || !p.x2 || !p.denom || !p.new_running_phi))
    return invalid_argument(o + ": a per-channel pointer is null");
  if (M > 0 && (!p.group_rstd || (p.C > 0 && (!p.y || !p.workspace))))
    return invalid_argument(o + ": y, group_rstd or workspace is null");
  return Status::OK();
}

Status check_bwd(const PowerNormBwdParams& p) {
  const char* op = "power_norm_backward";
  const std::string o(op);
  const int64_t M = p.T * p.B;
  Status s = shape_checks(op, p.T, p.B, p.C, p.group_num, p.x_dtype, p.x, p.x_stride, M);
  if (!s.ok()) return s;
  if (!(s = eps_check(op, "eps", p.eps)).ok()) return s;
  if (!(p.alpha_bkw >= 0 && p.alpha_bkw <= 1)) return invalid_argument(o + ": alpha_bkw must be in [0, 1]");
  if (p.quirks != PowerQuirks::Official && p.quirks != PowerQuirks::Paper)
    return invalid_argument(o + ": quirks must be 0 (official) or 1 (paper)");
  if (M > 1 && p.dy_stride < p.C) return invalid_argument(o + ": dy row stride is smaller than C");
  if (p.C > 0 && (!p.weight || !p.ema_gz || !p.x2 || !p.denom || !p.new_ema_gz))
    return invalid_argument(o + ": a per-channel pointer is null");
  if (M > 0 && p.C > 0 && (!p.dy || !p.group_rstd || !p.workspace))
    return invalid_argument(o + ": dy, group_rstd or workspace is null");
  return Status::OK();
}

Status check_eval(const PowerNormEvalParams& p) {
  const char* op = "power_norm_eval";
  const std::string o(op);
  if (p.rows < 0) return invalid_argument(o + ": rows must be >= 0");
  Status s = shape_checks(op, p.rows, 1, p.C, p.group_num, p.x_dtype, p.x, p.x_stride, p.rows);
  if (!s.ok()) return s;
  if (!(s = eps_check(op, "eps", p.eps)).ok()) return s;
  if (!(s = eps_check(op, "group_eps", p.group_eps)).ok()) return s;
  if (p.C > 0 && (!p.weight || !p.bias || !p.running_phi)) return invalid_argument(o + ": a per-channel pointer is null");
  if (p.rows > 0 && p.C > 0 && !p.y) return invalid_argument(o + ": y is null");
  return Status::OK();
}

}  // namespace detail_power

size_t power_norm_fwd_workspace_bytes(const PowerNormParams& p) {
  const int64_t M = p.T * p.B;
  return static_cast<size_t>(num_blocks(M, p.C) * std::max<int64_t>(p.C, 0)) * acc_size(p.x_dtype);
}
size_t power_norm_bwd_workspace_bytes(const PowerNormBwdParams& p) {
  const int64_t M = p.T * p.B;
  return static_cast<size_t>(4 * num_blocks(M, p.C) * std::max<int64_t>(p.C, 0)) * acc_size(p.x_dtype);
}

Status power_norm_fwd(const PowerNormParams& p) {
  Status s = detail_power::check_fwd(p);
  if (!s.ok()) return s;
  FASTNORM_DISPATCH_ISA(power_fwd, p);
  return Status::OK();
}

Status power_norm_bwd(const PowerNormBwdParams& p) {
  Status s = detail_power::check_bwd(p);
  if (!s.ok()) return s;
  FASTNORM_DISPATCH_ISA(power_bwd, p);
  return Status::OK();
}

Status power_norm_eval(const PowerNormEvalParams& p) {
  Status s = detail_power::check_eval(p);
  if (!s.ok()) return s;
  FASTNORM_DISPATCH_ISA(power_eval, p);
  return Status::OK();
}

}  // namespace norm
}  // namespace fastnorm

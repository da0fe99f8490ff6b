// CPU entry points of EvoNorm B0/S0: argument validation (shared with the CUDA entry points), workspace
// sizing, and the choice between the baseline and AVX2 builds of the kernels (norm_evonorm_kernels.cpp).
#include <cmath>
#include <string>

#include "fastnorm/norm_evonorm.h"
#include "isa.h"
#include "norm_evonorm_kernels.h"

namespace fastnorm {
namespace norm {
namespace {

size_t acc_size(DType x) { return x == DType::Float64 ? 8 : 4; }

// Sizes, dtypes and the pointers every EvoNorm op needs.
template <typename P>
Status check_common(const P& p, const std::string& o) {
  if (p.batch < 0 || p.channels < 0 || p.spatial < 0) return invalid_argument(o + ": sizes must be >= 0");
  if (!is_float(p.x_dtype)) return unsupported(o + ": x dtype " + dtype_name(p.x_dtype) + " is not a float type");
  if (!is_float(p.w_dtype) || (p.w_dtype == DType::Float64 && p.x_dtype != DType::Float64))
    return unsupported(o + ": weight dtype " + dtype_name(p.w_dtype) + " is not supported with x dtype " +
                       dtype_name(p.x_dtype));
  const bool any = p.batch > 0 && p.channels > 0 && p.spatial > 0;
  if (any && p.x == nullptr) return invalid_argument(o + ": x is null");
  if (p.channels > 0 && (p.weight == nullptr || p.v == nullptr)) return invalid_argument(o + ": weight and v are required");
  return Status::OK();
}

Status check_eps(double eps, const std::string& o) {
  if (!(eps > 0) || !std::isfinite(eps)) return invalid_argument(o + ": eps must be a finite value > 0");
  return Status::OK();
}

Status check_semantics(EvoSemantics s, const std::string& o) {
  if (s != EvoSemantics::Timm && s != EvoSemantics::Tf)
    return invalid_argument(o + ": semantics must be 0 (timm) or 1 (tf)");
  return Status::OK();
}

template <typename P>
Status check_groups(const P& p, const std::string& o) {
  if (p.groups < 1) return invalid_argument(o + ": groups must be >= 1");
  if (p.channels % p.groups != 0)
    return invalid_argument(o + ": groups (" + std::to_string(p.groups) + ") must divide channels (" +
                            std::to_string(p.channels) + ")");
  return Status::OK();
}

}  // namespace

size_t evonorm_b0_bwd_workspace_bytes(const EvoNormB0BwdParams& p) {
  // Six per-(b, c) sums: x, p*e, (1-p)*e, p*e*x, dy*x/D, dy.
  return p.batch < 0 || p.channels < 0 ? 0 : static_cast<size_t>(6 * p.batch * p.channels) * acc_size(p.x_dtype);
}
size_t evonorm_s0_bwd_workspace_bytes(const EvoNormS0BwdParams& p) {
  // Four per-(b, c) sums: u*h, u*x^2*sig', dy*h, dy.
  return p.batch < 0 || p.channels < 0 ? 0 : static_cast<size_t>(4 * p.batch * p.channels) * acc_size(p.x_dtype);
}

Status validate(const EvoNormB0Params& p) {
  const std::string o = "evonorm_b0";
  Status s = check_common(p, o);
  if (s.ok()) s = check_eps(p.eps, o);
  if (s.ok()) s = check_semantics(p.semantics, o);
  if (!s.ok()) return s;
  if (!(p.momentum >= 0.0 && p.momentum <= 1.0)) return invalid_argument(o + ": momentum must be in [0, 1]");
  if (!is_float(p.rv_dtype)) return unsupported(o + ": running_var dtype is not a float type");
  if (p.channels > 0 && (p.bias == nullptr || p.running_var == nullptr || p.left_var == nullptr))
    return invalid_argument(o + ": bias, running_var and left_var are required");
  if (p.batch > 0 && p.channels > 0 && p.inst_std == nullptr) return invalid_argument(o + ": inst_std is required");
  if (p.batch > 0 && p.channels > 0 && p.spatial > 0 && p.y == nullptr) return invalid_argument(o + ": y is null");
  return Status::OK();
}

Status validate(const EvoNormB0BwdParams& p) {
  const std::string o = "evonorm_b0_backward";
  Status s = check_common(p, o);
  if (s.ok()) s = check_eps(p.eps, o);
  if (s.ok()) s = check_semantics(p.semantics, o);
  if (!s.ok()) return s;
  const bool any = p.batch > 0 && p.channels > 0 && p.spatial > 0;
  if (any && (p.dy == nullptr || p.dx == nullptr)) return invalid_argument(o + ": dy and dx are required");
  if (p.channels > 0 && p.left_var == nullptr) return invalid_argument(o + ": left_var is required");
  if (p.batch > 0 && p.channels > 0 && (p.inst_std == nullptr || p.workspace == nullptr))
    return invalid_argument(o + ": inst_std and workspace are required");
  return Status::OK();
}

Status validate(const EvoNormS0Params& p) {
  const std::string o = "evonorm_s0";
  Status s = check_common(p, o);
  if (s.ok()) s = check_eps(p.eps, o);
  if (s.ok()) s = check_groups(p, o);
  if (!s.ok()) return s;
  if (p.channels > 0 && p.bias == nullptr) return invalid_argument(o + ": bias is required");
  if (p.batch > 0 && p.channels > 0 && (p.group_mean == nullptr || p.group_rstd == nullptr))
    return invalid_argument(o + ": group_mean and group_rstd are required");
  if (p.batch > 0 && p.channels > 0 && p.spatial > 0 && p.y == nullptr) return invalid_argument(o + ": y is null");
  return Status::OK();
}

Status validate(const EvoNormS0BwdParams& p) {
  const std::string o = "evonorm_s0_backward";
  Status s = check_common(p, o);
  if (s.ok()) s = check_groups(p, o);
  if (!s.ok()) return s;
  const bool any = p.batch > 0 && p.channels > 0 && p.spatial > 0;
  if (any && (p.dy == nullptr || p.dx == nullptr)) return invalid_argument(o + ": dy and dx are required");
  if (p.batch > 0 && p.channels > 0 && (p.group_mean == nullptr || p.group_rstd == nullptr || p.workspace == nullptr))
    return invalid_argument(o + ": group_mean, group_rstd and workspace are required");
  return Status::OK();
}

Status evonorm_b0_fwd(const EvoNormB0Params& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(evonorm_b0_fwd, p) : s;
}
Status evonorm_b0_bwd(const EvoNormB0BwdParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(evonorm_b0_bwd, p) : s;
}
Status evonorm_s0_fwd(const EvoNormS0Params& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(evonorm_s0_fwd, p) : s;
}
Status evonorm_s0_bwd(const EvoNormS0BwdParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(evonorm_s0_bwd, p) : s;
}

}  // namespace norm
}  // namespace fastnorm

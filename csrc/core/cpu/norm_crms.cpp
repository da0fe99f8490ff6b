// CPU entry points of CRMSNorm: argument validation (shared with the CUDA entry points), workspace
// sizing, and the choice between the baseline and AVX2 builds of the kernels.
#include <cmath>
#include <string>

#include "fastnorm/norm.h"
#include "fastnorm/norm_crms.h"
#include "isa.h"
#include "norm_crms_kernels.h"

namespace fastnorm {
namespace norm {
namespace {

template <typename P>
Status check_common(const P& p, const char* op) {
  const std::string o(op);
  if (p.rows < 0 || p.cols < 0) return invalid_argument(o + ": rows and cols must be >= 0");
  if (!is_float(p.x_dtype)) return unsupported(o + ": x dtype " + dtype_name(p.x_dtype) + " is not a float type");
  if (!is_float(p.w_dtype) || (p.w_dtype == DType::Float64 && p.x_dtype != DType::Float64))
    return unsupported(o + ": weight dtype " + dtype_name(p.w_dtype) + " is not supported with x dtype " +
                       dtype_name(p.x_dtype));
  if (p.rows > 0 && p.cols > 0 && p.x == nullptr) return invalid_argument(o + ": x is null");
  if (p.rows > 1 && p.x_stride < p.cols) return invalid_argument(o + ": x row stride is smaller than cols");
  return Status::OK();
}

}  // namespace

Status validate(const CRMSNormParams& p) {
  Status s = check_common(p, "crms_norm");
  if (!s.ok()) return s;
  if (!(p.eps > 0) || !std::isfinite(p.eps)) return invalid_argument("crms_norm: eps must be a finite value > 0");
  if (!is_float(p.y_dtype)) return unsupported("crms_norm: output dtype is not a float type");
  if (p.rows > 0 && p.cols > 0 && p.y == nullptr) return invalid_argument("crms_norm: y is null");
  return Status::OK();
}

Status validate(const CRMSNormBwdParams& p) {
  Status s = check_common(p, "crms_norm_backward");
  if (!s.ok()) return s;
  if (!is_float(p.dy_dtype)) return unsupported("crms_norm_backward: dy dtype is not a float type");
  if (p.dx != nullptr && !is_float(p.dx_dtype)) return unsupported("crms_norm_backward: dx dtype is not a float type");
  if (p.rows > 0 && p.cols > 0 && (p.dy == nullptr || p.rstd == nullptr))
    return invalid_argument("crms_norm_backward: dy and rstd are required");
  if (p.rows > 1 && p.dy_stride < p.cols) return invalid_argument("crms_norm_backward: dy row stride is smaller than cols");
  if ((p.dweight != nullptr || p.dbias != nullptr) && p.workspace == nullptr && p.rows > 0 && p.cols > 0)
    return invalid_argument("crms_norm_backward: workspace is required for dweight/dbias");
  return Status::OK();
}

size_t crms_norm_bwd_workspace_bytes(const CRMSNormBwdParams& p) {
  const int n_out = (p.dweight != nullptr ? 1 : 0) + (p.dbias != nullptr ? 1 : 0);
  const size_t acc = p.x_dtype == DType::Float64 ? 8 : 4;
  return static_cast<size_t>(n_out) * static_cast<size_t>(bwd_num_blocks(p.rows, p.cols)) *
         static_cast<size_t>(p.cols) * acc;
}

Status crms_norm_fwd(const CRMSNormParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(crms_norm_fwd, p) : s;
}
Status crms_norm_bwd(const CRMSNormBwdParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(crms_norm_bwd, p) : s;
}

}  // namespace norm
}  // namespace fastnorm

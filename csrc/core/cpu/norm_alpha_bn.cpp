// CPU entry points of alpha-BN: argument validation (shared with the CUDA entry points), workspace sizing,
// and the choice between the baseline and AVX2 builds of the kernels.
#include <cmath>
#include <string>

#include "fastnorm/norm_alpha_bn.h"
#include "isa.h"
#include "norm_alpha_bn_kernels.h"

namespace fastnorm {
namespace norm {
namespace {

template <typename P>
Status check_common(const P& p, const char* op) {
  const std::string o(op);
  if (p.batch < 0 || p.channels < 0 || p.spatial < 0) return invalid_argument(o + ": sizes must be >= 0");
  if (!is_float(p.x_dtype)) return unsupported(o + ": x dtype " + dtype_name(p.x_dtype) + " is not a float type");
  if (!is_float(p.w_dtype) || (p.w_dtype == DType::Float64 && p.x_dtype != DType::Float64))
    return unsupported(o + ": weight dtype " + dtype_name(p.w_dtype) + " is not supported with x dtype " +
                       dtype_name(p.x_dtype));
  if (!(p.alpha_source >= 0.0 && p.alpha_source <= 1.0))
    return invalid_argument(o + ": alpha_source must be in [0, 1]");
  if (p.batch * p.channels * p.spatial > 0 && p.x == nullptr) return invalid_argument(o + ": x is null");
  return Status::OK();
}

}  // namespace

Status validate(const AlphaBatchNormParams& p) {
  Status s = check_common(p, "alpha_batch_norm");
  if (!s.ok()) return s;
  if (!(p.eps > 0) || !std::isfinite(p.eps)) return invalid_argument("alpha_batch_norm: eps must be a finite value > 0");
  if (!is_float(p.y_dtype)) return unsupported("alpha_batch_norm: output dtype is not a float type");
  if (!is_float(p.running_dtype)) return unsupported("alpha_batch_norm: running statistics must be float");
  if (p.channels > 0 && (p.running_mean == nullptr || p.running_var == nullptr))
    return invalid_argument("alpha_batch_norm: running_mean and running_var are required");
  if (p.batch * p.channels * p.spatial > 0 && p.y == nullptr) return invalid_argument("alpha_batch_norm: y is null");
  return Status::OK();
}

Status validate(const AlphaBatchNormBwdParams& p) {
  Status s = check_common(p, "alpha_batch_norm_backward");
  if (!s.ok()) return s;
  if (!is_float(p.dy_dtype)) return unsupported("alpha_batch_norm_backward: dy dtype is not a float type");
  if (p.dx != nullptr && !is_float(p.dx_dtype))
    return unsupported("alpha_batch_norm_backward: dx dtype is not a float type");
  if (p.channels > 0 && (p.mean == nullptr || p.rstd == nullptr))
    return invalid_argument("alpha_batch_norm_backward: mean and rstd are required");
  if (p.batch * p.channels * p.spatial > 0 && p.dy == nullptr)
    return invalid_argument("alpha_batch_norm_backward: dy is null");
  if (alpha_batch_norm_bwd_workspace_bytes(p) > 0 && p.workspace == nullptr)
    return invalid_argument("alpha_batch_norm_backward: workspace is required");
  return Status::OK();
}

// Forward: per-slot mean and M2 per channel, plus the slot counts (only when batch statistics are used).
size_t alpha_batch_norm_fwd_workspace_bytes(const AlphaBatchNormParams& p) {
  if (p.alpha_source == 1.0 || p.batch * p.spatial * p.channels == 0) return 0;
  const int64_t slots = abn_slots(p.batch, p.channels, p.spatial, p.channels_last);
  return static_cast<size_t>(slots * (2 * p.channels + 1)) * sizeof(double);
}
// Backward: per-slot sums of dy, dy*(x - mu), (x - mu) per channel.
size_t alpha_batch_norm_bwd_workspace_bytes(const AlphaBatchNormBwdParams& p) {
  const bool need = p.alpha_source != 1.0 || p.dweight != nullptr || p.dbias != nullptr;
  if (!need || p.batch * p.spatial * p.channels == 0) return 0;
  const int64_t slots = abn_slots(p.batch, p.channels, p.spatial, p.channels_last);
  return static_cast<size_t>(3 * slots * p.channels) * sizeof(double);
}

Status alpha_batch_norm_fwd(const AlphaBatchNormParams& p, void* workspace) {
  Status s = validate(p);
  if (!s.ok()) return s;
  if (alpha_batch_norm_fwd_workspace_bytes(p) > 0 && workspace == nullptr)
    return invalid_argument("alpha_batch_norm: workspace is required");
#if defined(FASTNORM_HAVE_AVX2)
  if (cpu::use_avx2()) return avx2::alpha_batch_norm_fwd(p, workspace);
#endif
  return baseline::alpha_batch_norm_fwd(p, workspace);
}
Status alpha_batch_norm_bwd(const AlphaBatchNormBwdParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(alpha_batch_norm_bwd, p) : s;
}

}  // namespace norm
}  // namespace fastnorm

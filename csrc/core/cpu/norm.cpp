// CPU entry points of the norm family: argument validation (shared with the CUDA entry points),
// workspace sizing, and the choice between the baseline and AVX2 builds of the kernels.
#include <cmath>
#include <string>

#include "fastnorm/norm.h"
#include "isa.h"
#include "norm_kernels.h"

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

template <typename P>
Status check_fwd(const P& p, const char* op) {
  Status s = check_common(p, op);
  if (!s.ok()) return s;
  const std::string o(op);
  if (!(p.eps > 0) || !std::isfinite(p.eps)) return invalid_argument(o + ": eps must be a finite value > 0");
  if (!is_float(p.y_dtype)) return unsupported(o + ": output dtype " + std::string(dtype_name(p.y_dtype)) + " is not a float type");
  if (p.rows > 0 && p.cols > 0 && p.y == nullptr) return invalid_argument(o + ": y is null");
  if (p.residual_out != nullptr) {
    const bool wide = p.x_dtype == DType::Float64;
    if (p.residual_out_dtype != p.x_dtype && p.residual_out_dtype != DType::Float32)
      return unsupported(o + ": residual_out dtype must be x's dtype or float32");
    if (wide && p.residual_out_dtype != DType::Float64)
      return unsupported(o + ": residual_out must be float64 for float64 x");
    if (p.residual != nullptr && p.residual_dtype != p.x_dtype && p.residual_dtype != DType::Float32)
      return unsupported(o + ": residual dtype must be x's dtype or float32");
    if (p.residual != nullptr && p.rows > 1 && p.residual_stride < p.cols)
      return invalid_argument(o + ": residual row stride is smaller than cols");
  } else if (p.residual != nullptr) {
    return invalid_argument(o + ": residual given without residual_out");
  }
  return Status::OK();
}

template <typename P>
Status check_bwd(const P& p, const char* op) {
  Status s = check_common(p, op);
  if (!s.ok()) return s;
  const std::string o(op);
  if (!is_float(p.dy_dtype)) return unsupported(o + ": dy dtype is not a float type");
  if (p.dx != nullptr && !is_float(p.dx_dtype)) return unsupported(o + ": dx dtype is not a float type");
  if (p.rows > 0 && p.cols > 0 && (p.dy == nullptr || p.rstd == nullptr))
    return invalid_argument(o + ": dy and rstd are required");
  if (p.rows > 1 && p.dy_stride < p.cols) return invalid_argument(o + ": dy row stride is smaller than cols");
  if (p.dresidual_out != nullptr && p.rows > 1 && p.dresidual_out_stride < p.cols)
    return invalid_argument(o + ": dresidual_out row stride is smaller than cols");
  if (p.dresidual_out != nullptr && !is_float(p.dresidual_out_dtype))
    return unsupported(o + ": dresidual_out dtype is not a float type");
  if ((p.dweight != nullptr || p.dbias != nullptr) && p.workspace == nullptr && p.rows > 0 && p.cols > 0)
    return invalid_argument(o + ": workspace is required for dweight/dbias");
  return Status::OK();
}

size_t acc_size(DType x) { return x == DType::Float64 ? 8 : 4; }

template <typename P>
size_t workspace_bytes(const P& p) {
  const int n_out = (p.dweight != nullptr ? 1 : 0) + (p.dbias != nullptr ? 1 : 0);
  return static_cast<size_t>(n_out) * static_cast<size_t>(bwd_num_blocks(p.rows, p.cols)) *
         static_cast<size_t>(p.cols) * acc_size(p.x_dtype);
}

}  // namespace

int64_t bwd_num_blocks(int64_t rows, int64_t cols) {
  // Enough blocks to keep many cores busy, few enough that the partials stay small next to the data:
  // at most 64 and at most ~4 MiB of fp32 partials per output.
  if (rows <= 0 || cols <= 0) return 1;
  int64_t nb = rows < 64 ? rows : 64;
  const int64_t cap = (int64_t(1) << 20) / cols;
  if (nb > cap) nb = cap > 0 ? cap : 1;
  return nb;
}

size_t layer_norm_bwd_workspace_bytes(const LayerNormBwdParams& p) { return workspace_bytes(p); }
size_t rms_norm_bwd_workspace_bytes(const RMSNormBwdParams& p) { return workspace_bytes(p); }

Status validate(const LayerNormParams& p) {
  Status s = check_fwd(p, "layer_norm");
  if (!s.ok()) return s;
  if (p.rows > 0 && p.cols > 0 && (p.mean == nullptr) != (p.rstd == nullptr))
    return invalid_argument("layer_norm: mean and rstd are both given or both null");
  return Status::OK();
}
Status validate(const LayerNormBwdParams& p) {
  Status s = check_bwd(p, "layer_norm_backward");
  if (!s.ok()) return s;
  if (p.rows > 0 && p.cols > 0 && p.mean == nullptr) return invalid_argument("layer_norm_backward: mean is required");
  return Status::OK();
}
Status validate(const RMSNormParams& p) {
  Status s = check_fwd(p, "rms_norm");
  if (!s.ok()) return s;
  if (!std::isfinite(p.offset)) return invalid_argument("rms_norm: offset must be finite");
  if (p.offset != 0.0 && p.weight == nullptr) return invalid_argument("rms_norm: offset needs a weight");
  if (p.casting != Casting::Llama && p.casting != Casting::Gemma && p.casting != Casting::None)
    return invalid_argument("rms_norm: casting must be 0 (llama), 1 (gemma) or 2 (none)");
  return Status::OK();
}
Status validate(const RMSNormBwdParams& p) {
  Status s = check_bwd(p, "rms_norm_backward");
  if (!s.ok()) return s;
  if (p.casting != Casting::Llama && p.casting != Casting::Gemma && p.casting != Casting::None)
    return invalid_argument("rms_norm_backward: casting must be 0 (llama), 1 (gemma) or 2 (none)");
  if (!is_float(p.y_dtype)) return unsupported("rms_norm_backward: y dtype is not a float type");
  if (!std::isfinite(p.offset)) return invalid_argument("rms_norm_backward: offset must be finite");
  if (p.offset != 0.0 && p.weight == nullptr) return invalid_argument("rms_norm_backward: offset needs a weight");
  return Status::OK();
}

Status layer_norm_fwd(const LayerNormParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(layer_norm_fwd, p) : s;
}
Status layer_norm_bwd(const LayerNormBwdParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(layer_norm_bwd, p) : s;
}
Status rms_norm_fwd(const RMSNormParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(rms_norm_fwd, p) : s;
}
Status rms_norm_bwd(const RMSNormBwdParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(rms_norm_bwd, p) : s;
}

}  // namespace norm
}  // namespace fastnorm

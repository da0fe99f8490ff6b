// crms_norm / crms_norm_backward written once over a Backend (CPU or CUDA) that supplies the core entry
// points; norm_crms.cpp registers them for CPU (with the schemas), norm_crms_cuda.cpp for CUDA. The
// argument checks and messages are those of the RMSNorm ops (norm_ops.h helpers).
#pragma once
#include <tuple>

#include "fastnorm/norm_crms.h"
#include "norm_ops.h"

namespace fastnorm {
namespace binding {
namespace crms_ops {

using norm_ops::affine_ptr;
using norm_ops::check_affine;
using norm_ops::check_eps;
using norm_ops::check_stats;
using norm_ops::contiguous_opt;
using norm_ops::grad_rows;
using norm_ops::out_dtype_or;
using norm_ops::stats_dtype;

template <class B>
std::tuple<Tensor, Tensor> crms_norm(Tensor x, std::optional<Tensor> weight_in, std::optional<Tensor> bias_in,
                                     double eps, int64_t out_dtype) {
  const char* op = "crms_norm";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  check_eps(eps, op);
  if (x.dim() < 1) fail(op, "x must have at least one dimension");
  Rows rx = as_rows(x);
  const DType wd = check_affine(x, xd, weight_in, bias_in, rx.n, op);
  const auto weight = contiguous_opt(weight_in), bias = contiguous_opt(bias_in);
  const DType yd = out_dtype_or(out_dtype, xd, op);
  if (yd == DType::Float64 && xd != DType::Float64) fail(op, "out_dtype float64 needs float64 x");

  fastnorm::norm::CRMSNormParams p;
  p.rows = rx.m; p.cols = rx.n;
  p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
  p.weight = affine_ptr(weight); p.bias = affine_ptr(bias); p.w_dtype = wd;
  p.eps = eps;
  Tensor y = empty_like_shape(x, shape_of(x), to_scalar_type(yd));
  Tensor rstd = empty_like_shape(x, leading_shape(x), to_scalar_type(stats_dtype(xd)));
  p.y = y.mutable_data_ptr(); p.y_dtype = yd;
  p.rstd = rstd.mutable_data_ptr();
  check_status(B::crms_norm_fwd(p, x), op);
  return {y, rstd};
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> crms_norm_backward(Tensor dy, Tensor x, Tensor rstd, std::optional<Tensor> weight_in,
                                                      std::optional<Tensor> bias_in, bool need_dx, bool need_dw,
                                                      bool need_db) {
  const char* op = "crms_norm_backward";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  if (x.dim() < 1) fail(op, "x must have at least one dimension");
  Rows rx = as_rows(x);
  const DType wd = check_affine(x, xd, weight_in, bias_in, rx.n, op);
  const auto weight = contiguous_opt(weight_in);
  Rows rdy = grad_rows(x, dy, op, "dy");
  check_stats(x, rstd, xd, rx.m, op, "rstd");
  need_dw = need_dw && weight_in.has_value();
  need_db = need_db && bias_in.has_value();

  fastnorm::norm::CRMSNormBwdParams p;
  p.rows = rx.m; p.cols = rx.n;
  p.dy = rdy.t.const_data_ptr(); p.dy_stride = rdy.stride; p.dy_dtype = *to_dtype(rdy.t.scalar_type());
  p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
  p.rstd = rstd.const_data_ptr();
  p.weight = affine_ptr(weight); p.w_dtype = wd;
  Tensor dx = need_dx ? empty_like_shape(x, shape_of(x), to_scalar_type(xd)) : unused_output(x, to_scalar_type(xd));
  Tensor dw = need_dw ? empty_like_shape(x, {rx.n}, to_scalar_type(wd)) : unused_output(x, to_scalar_type(wd));
  Tensor db = need_db ? empty_like_shape(x, {rx.n}, to_scalar_type(wd)) : unused_output(x, to_scalar_type(wd));
  p.dx = need_dx ? dx.mutable_data_ptr() : nullptr; p.dx_dtype = xd;
  p.dweight = need_dw ? dw.mutable_data_ptr() : nullptr;
  p.dbias = need_db ? db.mutable_data_ptr() : nullptr;
  Tensor ws = norm_ops::Impl<B>::workspace(x, B::crms_norm_bwd_workspace_bytes(p));
  p.workspace = ws.defined() ? ws.mutable_data_ptr() : nullptr;
  check_status(B::crms_norm_bwd(p, x), op);
  return {dx, dw, db};
}

#define FASTNORM_REGISTER_CRMS_IMPLS(m, B)                                               \
  m.impl("crms_norm", TORCH_BOX(&fastnorm::binding::crms_ops::crms_norm<B>));            \
  m.impl("crms_norm_backward", TORCH_BOX(&fastnorm::binding::crms_ops::crms_norm_backward<B>))

}  // namespace crms_ops
}  // namespace binding
}  // namespace fastnorm

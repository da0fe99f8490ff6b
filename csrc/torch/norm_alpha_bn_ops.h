// alpha_batch_norm / alpha_batch_norm_backward written once over a Backend (CPU or CUDA); norm_alpha_bn.cpp
// registers them for CPU (with the schemas), norm_alpha_bn_cuda.cpp for CUDA.
//
// Layout: x is (N, C, *). A contiguous x is NCHW; a 4-D channels_last x is used as NHWC without a copy;
// anything else is made contiguous once. y and dx are allocated like x (empty_like keeps the memory
// format); dy is brought to x's layout (a no-op when it already has it).
#pragma once
#include <cmath>
#include <tuple>

#include "fastnorm/norm_alpha_bn.h"
#include "norm_ops.h"

namespace fastnorm {
namespace binding {
namespace alpha_bn_ops {

using norm_ops::check_eps;
using norm_ops::stats_dtype;

struct ChannelView {
  Tensor t;
  int64_t n = 0, c = 0, s = 1;
  bool channels_last = false;
};

inline bool is_channels_last_4d(const Tensor& x) {
  if (x.dim() != 4) return false;
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t want[4] = {H * W * C, 1, W * C, C};
  for (int i = 0; i < 4; ++i)
    if (x.size(i) > 1 && x.stride(i) != want[i]) return false;
  return true;
}

inline ChannelView channel_view(const Tensor& x, const char* op, const char* arg) {
  if (x.dim() < 2) fail(op, arg, " must have shape (N, C, *) with at least 2 dimensions, got ", shape_str(x));
  ChannelView v;
  v.n = x.size(0);
  v.c = x.size(1);
  for (int64_t i = 2; i < x.dim(); ++i) v.s *= x.size(i);
  if (x.is_contiguous()) {
    v.t = x;
  } else if (is_channels_last_4d(x)) {
    v.t = x;
    v.channels_last = true;
  } else {
    v.t = torch::stable::contiguous(x);
  }
  return v;
}

inline void check_alpha(double a, const char* op) {
  if (!(a >= 0.0 && a <= 1.0)) fail(op, "alpha_source must be in [0, 1], got ", a);
}

// A [C] vector argument (running stats, weight, bias) on x's device.
inline DType check_channel_vec(const Tensor& x, const Tensor& t, int64_t c, const char* op, const char* arg) {
  check_same_device(x, t, op, arg);
  const DType d = float_dtype(t, op, arg);
  if (t.dim() != 1 || t.size(0) != c) fail(op, arg, " has shape ", shape_str(t), " but x has ", c, " channels");
  return d;
}

inline DType check_wb(const Tensor& x, DType xd, const std::optional<Tensor>& w, const std::optional<Tensor>& b,
                      int64_t c, const char* op) {
  DType wd = stats_dtype(xd);
  bool first = true;
  const char* names[2] = {"weight", "bias"};
  const std::optional<Tensor>* ts[2] = {&w, &b};
  for (int i = 0; i < 2; ++i) {
    if (!ts[i]->has_value()) continue;
    const DType td = check_channel_vec(x, ts[i]->value(), c, op, names[i]);
    if (td == DType::Float64 && xd != DType::Float64)
      fail(op, names[i], " is float64 but x is ", dtype_name(xd), " (float64 parameters need float64 x)");
    if (!first && td != wd) fail(op, "bias dtype ", dtype_name(td), " differs from weight dtype ", dtype_name(wd));
    wd = td;
    first = false;
  }
  return wd;
}

inline const void* ptr_or_null(const std::optional<Tensor>& t) { return t.has_value() ? t->const_data_ptr() : nullptr; }
inline std::optional<Tensor> contig(const std::optional<Tensor>& t) {
  if (!t.has_value() || t->is_contiguous()) return t;
  return torch::stable::contiguous(*t);
}

inline Tensor scratch(const Tensor& x, size_t bytes) {
  if (bytes == 0) return Tensor();
  return empty_like_shape(x, {static_cast<int64_t>(bytes)}, ScalarType::Byte);
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> alpha_batch_norm(Tensor x, Tensor running_mean, Tensor running_var,
                                                    std::optional<Tensor> weight_in, std::optional<Tensor> bias_in,
                                                    double alpha_source, double eps, bool unbiased_batch_var) {
  const char* op = "alpha_batch_norm";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  check_eps(eps, op);
  check_alpha(alpha_source, op);
  ChannelView v = channel_view(x, op, "x");
  const DType rd = check_channel_vec(x, running_mean, v.c, op, "running_mean");
  const DType rvd = check_channel_vec(x, running_var, v.c, op, "running_var");
  if (rvd != rd) fail(op, "running_var dtype ", dtype_name(rvd), " differs from running_mean dtype ", dtype_name(rd));
  const DType wd = check_wb(x, xd, weight_in, bias_in, v.c, op);
  const auto weight = contig(weight_in), bias = contig(bias_in);
  const Tensor rm = running_mean.is_contiguous() ? running_mean : torch::stable::contiguous(running_mean);
  const Tensor rv = running_var.is_contiguous() ? running_var : torch::stable::contiguous(running_var);

  fastnorm::norm::AlphaBatchNormParams p;
  p.batch = v.n; p.channels = v.c; p.spatial = v.s; p.channels_last = v.channels_last;
  p.x = v.t.const_data_ptr(); p.x_dtype = xd;
  p.running_mean = rm.const_data_ptr(); p.running_var = rv.const_data_ptr(); p.running_dtype = rd;
  p.weight = ptr_or_null(weight); p.bias = ptr_or_null(bias); p.w_dtype = wd;
  p.alpha_source = alpha_source; p.eps = eps; p.unbiased_batch_var = unbiased_batch_var;
  Tensor y = torch::stable::empty_like(v.t);
  Tensor mean = empty_like_shape(x, {v.c}, to_scalar_type(stats_dtype(xd)));
  Tensor rstd = empty_like_shape(x, {v.c}, to_scalar_type(stats_dtype(xd)));
  p.y = y.mutable_data_ptr(); p.y_dtype = xd;
  p.mean = mean.mutable_data_ptr(); p.rstd = rstd.mutable_data_ptr();
  Tensor ws = scratch(x, B::alpha_batch_norm_fwd_workspace_bytes(p));
  check_status(B::alpha_batch_norm_fwd(p, ws.defined() ? ws.mutable_data_ptr() : nullptr, x), op);
  return {y, mean, rstd};
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> alpha_batch_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor rstd,
                                                             std::optional<Tensor> weight_in, double alpha_source,
                                                             bool unbiased_batch_var, bool need_dx, bool need_dw,
                                                             bool need_db) {
  const char* op = "alpha_batch_norm_backward";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  check_alpha(alpha_source, op);
  ChannelView v = channel_view(x, op, "x");
  const DType wd = check_wb(x, xd, weight_in, std::nullopt, v.c, op);
  const auto weight = contig(weight_in);
  check_same_device(x, dy, op, "dy");
  float_dtype(dy, op, "dy");
  if (shape_of(dy) != shape_of(x)) fail(op, "dy has shape ", shape_str(dy), " but x has shape ", shape_str(x));
  const Tensor dyt = torch::stable::contiguous(
      dy, v.channels_last ? torch::headeronly::MemoryFormat::ChannelsLast : torch::headeronly::MemoryFormat::Contiguous);
  norm_ops::check_stats(x, mean, xd, v.c, op, "mean");
  norm_ops::check_stats(x, rstd, xd, v.c, op, "rstd");
  need_dw = need_dw && weight_in.has_value();

  fastnorm::norm::AlphaBatchNormBwdParams p;
  p.batch = v.n; p.channels = v.c; p.spatial = v.s; p.channels_last = v.channels_last;
  p.dy = dyt.const_data_ptr(); p.dy_dtype = *to_dtype(dyt.scalar_type());
  p.x = v.t.const_data_ptr(); p.x_dtype = xd;
  p.mean = mean.const_data_ptr(); p.rstd = rstd.const_data_ptr();
  p.weight = ptr_or_null(weight); p.w_dtype = wd;
  p.alpha_source = alpha_source; p.unbiased_batch_var = unbiased_batch_var;
  Tensor dx = need_dx ? torch::stable::empty_like(v.t) : unused_output(x, to_scalar_type(xd));
  Tensor dw = need_dw ? empty_like_shape(x, {v.c}, to_scalar_type(wd)) : unused_output(x, to_scalar_type(wd));
  Tensor db = need_db ? empty_like_shape(x, {v.c}, to_scalar_type(wd)) : unused_output(x, to_scalar_type(wd));
  p.dx = need_dx ? dx.mutable_data_ptr() : nullptr; p.dx_dtype = xd;
  p.dweight = need_dw ? dw.mutable_data_ptr() : nullptr;
  p.dbias = need_db ? db.mutable_data_ptr() : nullptr;
  Tensor ws = scratch(x, B::alpha_batch_norm_bwd_workspace_bytes(p));
  p.workspace = ws.defined() ? ws.mutable_data_ptr() : nullptr;
  check_status(B::alpha_batch_norm_bwd(p, x), op);
  return {dx, dw, db};
}

#define FASTNORM_REGISTER_ALPHA_BN_IMPLS(m, B)                                                        \
  m.impl("alpha_batch_norm", TORCH_BOX(&fastnorm::binding::alpha_bn_ops::alpha_batch_norm<B>));       \
  m.impl("alpha_batch_norm_backward", TORCH_BOX(&fastnorm::binding::alpha_bn_ops::alpha_batch_norm_backward<B>))

}  // namespace alpha_bn_ops
}  // namespace binding
}  // namespace fastnorm

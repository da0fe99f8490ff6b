// EvoNorm B0/S0 op implementations (specs/norm.md §2.4, §3.9), written once over a Backend (CPU or CUDA)
// that supplies the core entry points. norm_evonorm.cpp registers them for CPU (with the schemas),
// norm_evonorm_cuda.cpp for CUDA. Each op validates every argument (messages name the op and the
// argument), allocates its outputs in x's memory format, fills the core's Params and calls the core.
#pragma once
#include <torch/headeronly/core/MemoryFormat.h>

#include <tuple>

#include "fastnorm/norm_evonorm.h"
#include "norm_ops.h"

namespace fastnorm {
namespace binding {
namespace evonorm_ops {

using fastnorm::norm::EvoSemantics;
using norm_ops::contiguous_opt;
using norm_ops::stats_dtype;
using torch::headeronly::MemoryFormat;

// The layout the kernels read: NCHW-contiguous, NHWC-contiguous (channels_last), or anything else made
// NCHW-contiguous by one copy. Strides of size-1 dims do not matter (as in torch's own checks).
struct Layout4 {
  Tensor t;
  bool channels_last = false;
  int64_t b = 0, c = 0, hw = 0;
};

inline bool is_nhwc(const Tensor& x) {
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  return (C == 1 || x.stride(1) == 1) && (W == 1 || x.stride(3) == C) && (H == 1 || x.stride(2) == W * C) &&
         (B == 1 || x.stride(0) == H * W * C);
}

inline void check_4d(const Tensor& x, const char* op, const char* arg) {
  if (x.dim() != 4) fail(op, arg, " must be 4-D [B, C, H, W], got shape ", shape_str(x));
}

inline Layout4 layout_of(const Tensor& x) {
  Layout4 l;
  l.b = x.size(0); l.c = x.size(1); l.hw = x.size(2) * x.size(3);
  if (x.is_contiguous()) {
    l.t = x;
  } else if (is_nhwc(x)) {
    l.t = x; l.channels_last = true;
  } else {
    l.t = torch::stable::contiguous(x);
  }
  return l;
}

// A tensor brought to the layout and dtype x was read in (dy in the backward).
inline Tensor match_layout(const Tensor& g, const Layout4& l, ScalarType dtype) {
  Tensor t = g.scalar_type() == dtype ? g : torch::stable::to(g, dtype);
  if (l.channels_last) return is_nhwc(t) ? t : torch::stable::contiguous(t, MemoryFormat::ChannelsLast);
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

inline Tensor empty_4d(const Tensor& x, const Layout4& l, ScalarType dtype) {
  if (!l.channels_last) return empty_like_shape(x, shape_of(x), dtype);
  return torch::stable::empty(shape_of(x), dtype, std::nullopt, x.device(), std::nullopt, MemoryFormat::ChannelsLast);
}

// weight, bias, v: [C] float on x's device, one dtype, float64 only with float64 x.
inline DType check_params(const Tensor& x, DType xd, const std::vector<std::pair<const Tensor*, const char*>>& ps,
                          int64_t c, const char* op) {
  DType wd = DType::Float32;
  bool first = true;
  const char* first_name = "";
  for (const auto& [t, name] : ps) {
    check_same_device(x, *t, op, name);
    const DType td = float_dtype(*t, op, name);
    if (td == DType::Float64 && xd != DType::Float64)
      fail(op, name, " is float64 but x is ", dtype_name(xd), " (float64 parameters need float64 x)");
    if (t->dim() != 1 || t->size(0) != c) fail(op, name, " has shape ", shape_str(*t), " but x has ", c, " channels");
    if (!first && td != wd)
      fail(op, name, " dtype ", dtype_name(td), " differs from ", first_name, " dtype ", dtype_name(wd));
    if (first) { wd = td; first_name = name; }
    first = false;
  }
  return wd;
}

inline EvoSemantics semantics_of(int64_t s, const char* op) {
  if (s != 0 && s != 1) fail(op, "semantics must be 0 (timm) or 1 (tf), got ", s);
  return static_cast<EvoSemantics>(s);
}

inline void check_stats4(const Tensor& x, const Tensor& s, DType xd, int64_t numel, const char* op, const char* arg) {
  check_same_device(x, s, op, arg);
  if (s.scalar_type() != to_scalar_type(stats_dtype(xd)))
    fail(op, arg, " must be ", dtype_name(stats_dtype(xd)), ", got ", scalar_name(s.scalar_type()));
  if (s.numel() != numel) fail(op, arg, " has ", s.numel(), " elements, expected ", numel);
  if (!s.is_contiguous()) fail(op, arg, " must be contiguous");
}

inline void check_groups(int64_t groups, int64_t c, const char* op) {
  if (groups < 1) fail(op, "groups must be >= 1, got ", groups);
  if (c % groups != 0) fail(op, "groups (", groups, ") must divide the number of channels (", c, ")");
}

// Scratch of `bytes` bytes in the accumulation type (an empty tensor for 0 bytes).
inline Tensor scratch(const Tensor& x, DType xd, size_t bytes) {
  const size_t acc = xd == DType::Float64 ? 8 : 4;
  return empty_like_shape(x, {static_cast<int64_t>((bytes + acc - 1) / acc)}, to_scalar_type(stats_dtype(xd)));
}

template <class B>
struct Impl {
  static std::tuple<Tensor, Tensor, Tensor, Tensor> b0(Tensor x, Tensor weight, Tensor bias, Tensor v,
                                                       Tensor running_var, bool training, double momentum, double eps,
                                                       int64_t semantics) {
    const char* op = "evonorm_b0";
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    check_4d(x, op, "x");
    norm_ops::check_eps(eps, op);
    if (!(momentum >= 0.0 && momentum <= 1.0)) fail(op, "momentum must be in [0, 1], got ", momentum);
    const EvoSemantics sem = semantics_of(semantics, op);
    const int64_t C = x.size(1);
    const DType wd = check_params(x, xd, {{&weight, "weight"}, {&bias, "bias"}, {&v, "v"}}, C, op);
    check_same_device(x, running_var, op, "running_var");
    const DType rd = float_dtype(running_var, op, "running_var");
    if (running_var.dim() != 1 || running_var.size(0) != C)
      fail(op, "running_var has shape ", shape_str(running_var), " but x has ", C, " channels");
    const Layout4 l = layout_of(x);
    const Tensor w = *contiguous_opt(weight), b = *contiguous_opt(bias), vv = *contiguous_opt(v),
                 rv = *contiguous_opt(running_var);
    const ScalarType st = to_scalar_type(stats_dtype(xd));
    Tensor y = empty_4d(x, l, x.scalar_type());
    Tensor left_var = empty_like_shape(x, {C}, st);
    Tensor inst_std = empty_like_shape(x, {l.b, C}, st);
    Tensor new_rv = training ? empty_like_shape(x, {C}, running_var.scalar_type()) : unused_output(x, running_var.scalar_type());
    fastnorm::norm::EvoNormB0Params p;
    p.batch = l.b; p.channels = C; p.spatial = l.hw; p.channels_last = l.channels_last;
    p.x = l.t.const_data_ptr(); p.x_dtype = xd;
    p.weight = w.const_data_ptr(); p.bias = b.const_data_ptr(); p.v = vv.const_data_ptr(); p.w_dtype = wd;
    p.running_var = rv.const_data_ptr(); p.rv_dtype = rd;
    p.y = y.mutable_data_ptr(); p.left_var = left_var.mutable_data_ptr(); p.inst_std = inst_std.mutable_data_ptr();
    p.new_running_var = training ? new_rv.mutable_data_ptr() : nullptr;
    p.training = training; p.momentum = momentum; p.eps = eps; p.semantics = sem;
    Tensor ws = scratch(x, xd, B::b0_fwd_ws(p));
    p.workspace = ws.numel() > 0 ? ws.mutable_data_ptr() : nullptr;
    check_status(B::b0_fwd(p, x), op);
    return {y, left_var, inst_std, new_rv};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> b0_backward(Tensor dy, Tensor x, Tensor weight, Tensor v,
                                                                Tensor left_var, Tensor inst_std, bool training,
                                                                double eps, int64_t semantics) {
    const char* op = "evonorm_b0_backward";
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    check_4d(x, op, "x");
    norm_ops::check_eps(eps, op);
    const EvoSemantics sem = semantics_of(semantics, op);
    check_same_device(x, dy, op, "dy");
    float_dtype(dy, op, "dy");
    if (shape_of(dy) != shape_of(x))
      fail(op, "dy has shape ", shape_str(dy), " but the forward's output has shape ", shape_str(x));
    const int64_t C = x.size(1);
    const DType wd = check_params(x, xd, {{&weight, "weight"}, {&v, "v"}}, C, op);
    check_stats4(x, left_var, xd, C, op, "left_var");
    check_stats4(x, inst_std, xd, x.size(0) * C, op, "inst_std");
    const Layout4 l = layout_of(x);
    const Tensor g = match_layout(dy, l, x.scalar_type());
    const Tensor w = *contiguous_opt(weight), vv = *contiguous_opt(v);
    Tensor dx = empty_4d(x, l, x.scalar_type());
    const ScalarType wst = to_scalar_type(wd);
    Tensor dw = empty_like_shape(x, {C}, wst), db = empty_like_shape(x, {C}, wst), dv = empty_like_shape(x, {C}, wst);
    fastnorm::norm::EvoNormB0BwdParams p;
    p.batch = l.b; p.channels = C; p.spatial = l.hw; p.channels_last = l.channels_last;
    p.dy = g.const_data_ptr(); p.x = l.t.const_data_ptr(); p.x_dtype = xd;
    p.weight = w.const_data_ptr(); p.v = vv.const_data_ptr(); p.w_dtype = wd;
    p.left_var = left_var.const_data_ptr(); p.inst_std = inst_std.const_data_ptr();
    p.dx = dx.mutable_data_ptr(); p.dweight = dw.mutable_data_ptr(); p.dbias = db.mutable_data_ptr();
    p.dv = dv.mutable_data_ptr();
    p.training = training; p.eps = eps; p.semantics = sem;
    Tensor ws = scratch(x, xd, B::b0_ws(p));
    p.workspace = ws.mutable_data_ptr();
    check_status(B::b0_bwd(p, x), op);
    return {dx, dw, db, dv};
  }

  static std::tuple<Tensor, Tensor, Tensor> s0(Tensor x, Tensor weight, Tensor bias, Tensor v, int64_t groups,
                                               double eps) {
    const char* op = "evonorm_s0";
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    check_4d(x, op, "x");
    norm_ops::check_eps(eps, op);
    const int64_t C = x.size(1);
    check_groups(groups, C, op);
    const DType wd = check_params(x, xd, {{&weight, "weight"}, {&bias, "bias"}, {&v, "v"}}, C, op);
    const Layout4 l = layout_of(x);
    const Tensor w = *contiguous_opt(weight), b = *contiguous_opt(bias), vv = *contiguous_opt(v);
    const ScalarType st = to_scalar_type(stats_dtype(xd));
    Tensor y = empty_4d(x, l, x.scalar_type());
    Tensor gmean = empty_like_shape(x, {l.b, groups}, st), grstd = empty_like_shape(x, {l.b, groups}, st);
    fastnorm::norm::EvoNormS0Params p;
    p.batch = l.b; p.channels = C; p.spatial = l.hw; p.groups = groups; p.channels_last = l.channels_last;
    p.x = l.t.const_data_ptr(); p.x_dtype = xd;
    p.weight = w.const_data_ptr(); p.bias = b.const_data_ptr(); p.v = vv.const_data_ptr(); p.w_dtype = wd;
    p.y = y.mutable_data_ptr(); p.group_mean = gmean.mutable_data_ptr(); p.group_rstd = grstd.mutable_data_ptr();
    p.eps = eps;
    Tensor ws = scratch(x, xd, B::s0_fwd_ws(p));
    p.workspace = ws.numel() > 0 ? ws.mutable_data_ptr() : nullptr;
    check_status(B::s0_fwd(p, x), op);
    return {y, gmean, grstd};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> s0_backward(Tensor dy, Tensor x, Tensor weight, Tensor v,
                                                                Tensor group_mean, Tensor group_rstd, int64_t groups) {
    const char* op = "evonorm_s0_backward";
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    check_4d(x, op, "x");
    check_same_device(x, dy, op, "dy");
    float_dtype(dy, op, "dy");
    if (shape_of(dy) != shape_of(x))
      fail(op, "dy has shape ", shape_str(dy), " but the forward's output has shape ", shape_str(x));
    const int64_t C = x.size(1);
    check_groups(groups, C, op);
    const DType wd = check_params(x, xd, {{&weight, "weight"}, {&v, "v"}}, C, op);
    check_stats4(x, group_mean, xd, x.size(0) * groups, op, "group_mean");
    check_stats4(x, group_rstd, xd, x.size(0) * groups, op, "group_rstd");
    const Layout4 l = layout_of(x);
    const Tensor g = match_layout(dy, l, x.scalar_type());
    const Tensor w = *contiguous_opt(weight), vv = *contiguous_opt(v);
    Tensor dx = empty_4d(x, l, x.scalar_type());
    const ScalarType wst = to_scalar_type(wd);
    Tensor dw = empty_like_shape(x, {C}, wst), db = empty_like_shape(x, {C}, wst), dv = empty_like_shape(x, {C}, wst);
    fastnorm::norm::EvoNormS0BwdParams p;
    p.batch = l.b; p.channels = C; p.spatial = l.hw; p.groups = groups; p.channels_last = l.channels_last;
    p.dy = g.const_data_ptr(); p.x = l.t.const_data_ptr(); p.x_dtype = xd;
    p.weight = w.const_data_ptr(); p.v = vv.const_data_ptr(); p.w_dtype = wd;
    p.group_mean = group_mean.const_data_ptr(); p.group_rstd = group_rstd.const_data_ptr();
    p.dx = dx.mutable_data_ptr(); p.dweight = dw.mutable_data_ptr(); p.dbias = db.mutable_data_ptr();
    p.dv = dv.mutable_data_ptr();
    Tensor ws = scratch(x, xd, B::s0_ws(p));
    p.workspace = ws.mutable_data_ptr();
    check_status(B::s0_bwd(p, x), op);
    return {dx, dw, db, dv};
  }
};

// Registers the four EvoNorm ops for one dispatch key.
#define FASTNORM_REGISTER_EVONORM_IMPLS(m, B)                                                            \
  m.impl("evonorm_b0", TORCH_BOX(&fastnorm::binding::evonorm_ops::Impl<B>::b0));                         \
  m.impl("evonorm_b0_backward", TORCH_BOX(&fastnorm::binding::evonorm_ops::Impl<B>::b0_backward));       \
  m.impl("evonorm_s0", TORCH_BOX(&fastnorm::binding::evonorm_ops::Impl<B>::s0));                         \
  m.impl("evonorm_s0_backward", TORCH_BOX(&fastnorm::binding::evonorm_ops::Impl<B>::s0_backward))

}  // namespace evonorm_ops
}  // namespace binding
}  // namespace fastnorm

// Unified Normalization and channel_affine op implementations over a Backend (CPU or CUDA), shared by
// norm_unified.cpp (schemas + CPU) and norm_unified_cuda.cpp. Each op checks every argument (messages name
// the op and the argument), allocates fresh outputs (the Python layer copies the new state into the
// buffers), fills the core's Params and calls the core.
#pragma once
#include <cmath>
#include <tuple>

#include "binding.h"
#include "fastnorm/norm_unified.h"
#include "norm_ops.h"

namespace fastnorm {
namespace binding {
namespace unified_ops {

using norm_ops::check_affine;
using norm_ops::check_eps;
using norm_ops::stats_dtype;

inline void check_momentum(double m, const char* op) {
  if (!(m >= 0 && m <= 1)) fail(op, "momentum must be in [0, 1], got ", m);
}

// A small state tensor: float, on x's device, of `shape`, dtype `sd` (the first state tensor sets it).
inline Tensor state_tensor(const Tensor& x, DType xd, const Tensor& t, const std::vector<int64_t>& shape,
                           std::optional<DType>& sd, const char* op, const char* arg) {
  check_same_device(x, t, op, arg);
  const DType td = float_dtype(t, op, arg);
  if (td == DType::Float64 && xd != DType::Float64)
    fail(op, arg, " is float64 but x is ", dtype_name(xd), " (float64 state needs float64 x)");
  if (sd.has_value() && *sd != td) fail(op, arg, " dtype ", dtype_name(td), " differs from the other state dtype ",
                                        dtype_name(*sd));
  sd = td;
  if (shape_of(t) != shape) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    fail(op, arg, " has shape ", shape_str(t), " but ", s.str(), " is expected");
  }
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

// A [L, C] window buffer: 2-D with C columns and L >= 1 rows.
inline int64_t window_of(const Tensor& t, int64_t c, const char* op, const char* arg) {
  if (t.dim() != 2 || t.size(1) != c) fail(op, arg, " has shape ", shape_str(t), " but [window, ", c, "] is expected");
  if (t.size(0) < 1) fail(op, "window sizes must be >= 1, got ", arg, " with ", t.size(0), " rows");
  return t.size(0);
}

inline void check_x(const Tensor& x, const char* op) {
  if (x.dim() != 2 && x.dim() != 3) fail(op, "x must be (B, N, C) or (N, C), got shape ", shape_str(x));
}

inline Tensor workspace(const Tensor& x, size_t bytes) {
  return empty_like_shape(x, {static_cast<int64_t>(bytes < 8 ? 8 : bytes)}, ScalarType::Byte);
}

template <class B>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> unified_norm(
    Tensor x, std::optional<Tensor> pad_mask, Tensor weight, Tensor bias, Tensor running_var, Tensor buffer_x2,
    Tensor skip_counter, int64_t iteration, int64_t warmup_iters, bool outlier_filtration, double eps,
    double momentum, int64_t compensation_start) {
  const char* op = "unified_norm";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  check_x(x, op);
  check_eps(eps, op);
  check_momentum(momentum, op);
  if (iteration < 1) fail(op, "iteration must be >= 1, got ", iteration);
  if (warmup_iters < 0) fail(op, "warmup_iters must be >= 0, got ", warmup_iters);
  if (compensation_start < 0) fail(op, "compensation_start must be >= 0, got ", compensation_start);
  Rows rx = as_rows(x);
  const int64_t c = rx.n;
  const DType wd = check_affine(x, xd, weight, bias, c, op);
  const auto w = norm_ops::contiguous_opt(weight), b = norm_ops::contiguous_opt(bias);
  std::optional<DType> sd;
  const Tensor rv = state_tensor(x, xd, running_var, {c}, sd, op, "running_var");
  const int64_t lf = window_of(buffer_x2, c, op, "buffer_x2");
  const Tensor bx = state_tensor(x, xd, buffer_x2, {lf, c}, sd, op, "buffer_x2");
  check_same_device(x, skip_counter, op, "skip_counter");
  if (skip_counter.scalar_type() != ScalarType::Long || skip_counter.numel() != 1)
    fail(op, "skip_counter must be an int64 tensor of one element, got ", scalar_name(skip_counter.scalar_type()),
         " of shape ", shape_str(skip_counter));
  std::optional<Tensor> mask;
  if (pad_mask.has_value()) {
    check_same_device(x, *pad_mask, op, "pad_mask");
    if (pad_mask->scalar_type() != ScalarType::Bool)
      fail(op, "pad_mask must be bool, got ", scalar_name(pad_mask->scalar_type()));
    if (shape_of(*pad_mask) != leading_shape(x))
      fail(op, "pad_mask has shape ", shape_str(*pad_mask), " but x's leading shape is ",
           shape_str(torch::stable::new_empty(x, leading_shape(x))));
    mask = pad_mask->is_contiguous() ? *pad_mask : torch::stable::contiguous(*pad_mask);
  }
  const DType st = stats_dtype(xd);
  Tensor y = empty_like_shape(x, shape_of(x), to_scalar_type(xd));
  Tensor var = empty_like_shape(x, {c}, to_scalar_type(st));
  Tensor rho = empty_like_shape(x, {c}, to_scalar_type(st));
  Tensor skip = empty_like_shape(x, {}, ScalarType::Bool);
  Tensor new_rv = empty_like_shape(x, {c}, to_scalar_type(*sd));
  Tensor new_bx = empty_like_shape(x, {lf, c}, to_scalar_type(*sd));
  Tensor new_cnt = empty_like_shape(x, {1}, ScalarType::Long);

  fastnorm::norm::UnifiedNormParams p;
  p.rows = rx.m; p.cols = c;
  p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
  p.pad_mask = mask ? static_cast<const uint8_t*>(mask->const_data_ptr()) : nullptr;
  p.weight = w->const_data_ptr(); p.bias = b->const_data_ptr(); p.w_dtype = wd;
  p.running_var = rv.const_data_ptr(); p.buffer_x2 = bx.const_data_ptr(); p.state_dtype = *sd;
  const Tensor cnt = skip_counter.is_contiguous() ? skip_counter : torch::stable::contiguous(skip_counter);
  p.skip_counter = static_cast<const int64_t*>(cnt.const_data_ptr());
  p.window = lf; p.iteration = iteration; p.warmup_iters = warmup_iters; p.compensation_start = compensation_start;
  p.outlier_filtration = outlier_filtration; p.eps = eps; p.momentum = momentum;
  p.y = y.mutable_data_ptr(); p.var = var.mutable_data_ptr(); p.rho = rho.mutable_data_ptr();
  p.skip = static_cast<uint8_t*>(skip.mutable_data_ptr());
  p.new_running_var = new_rv.mutable_data_ptr(); p.new_buffer_x2 = new_bx.mutable_data_ptr();
  p.new_skip_counter = static_cast<int64_t*>(new_cnt.mutable_data_ptr());
  Tensor ws = workspace(x, B::unified_norm_fwd_workspace_bytes(p));
  p.workspace = ws.mutable_data_ptr();
  check_status(B::unified_norm_fwd(p, x), op);
  return {y, var, rho, skip, new_rv, new_bx, new_cnt};
}

template <class B>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> unified_norm_backward(
    Tensor dy, Tensor x, Tensor var, Tensor rho, Tensor skip, Tensor weight, Tensor ema_gz, Tensor buffer_gz,
    int64_t iteration, int64_t warmup_iters, double eps, double momentum) {
  const char* op = "unified_norm_backward";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  check_x(x, op);
  check_eps(eps, op);
  check_momentum(momentum, op);
  if (iteration < 1) fail(op, "iteration must be >= 1, got ", iteration);
  if (warmup_iters < 0) fail(op, "warmup_iters must be >= 0, got ", warmup_iters);
  Rows rx = as_rows(x);
  const int64_t c = rx.n;
  Rows rg = norm_ops::grad_rows(x, dy, op, "dy");
  if (dy.scalar_type() != x.scalar_type())
    fail(op, "dy dtype ", scalar_name(dy.scalar_type()), " differs from x dtype ", dtype_name(xd));
  const DType wd = check_affine(x, xd, weight, std::nullopt, c, op);
  const auto w = norm_ops::contiguous_opt(weight);
  const DType st = stats_dtype(xd);
  for (auto [t, name] : {std::pair<const Tensor*, const char*>{&var, "var"}, {&rho, "rho"}}) {
    check_same_device(x, *t, op, name);
    if (t->scalar_type() != to_scalar_type(st) || shape_of(*t) != std::vector<int64_t>{c} || !t->is_contiguous())
      fail(op, name, " must be a contiguous ", dtype_name(st), " tensor of shape [", c, "], got ",
           scalar_name(t->scalar_type()), " of shape ", shape_str(*t));
  }
  check_same_device(x, skip, op, "skip");
  if (skip.scalar_type() != ScalarType::Bool || skip.numel() != 1)
    fail(op, "skip must be a bool tensor of one element, got ", scalar_name(skip.scalar_type()), " of shape ",
         shape_str(skip));
  std::optional<DType> sd;
  const Tensor ema = state_tensor(x, xd, ema_gz, {c}, sd, op, "ema_gz");
  const int64_t lb = window_of(buffer_gz, c, op, "buffer_gz");
  const Tensor bg = state_tensor(x, xd, buffer_gz, {lb, c}, sd, op, "buffer_gz");

  Tensor dx = empty_like_shape(x, shape_of(x), to_scalar_type(xd));
  Tensor dw = empty_like_shape(x, {c}, to_scalar_type(wd));
  Tensor db = empty_like_shape(x, {c}, to_scalar_type(wd));
  Tensor new_ema = empty_like_shape(x, {c}, to_scalar_type(*sd));
  Tensor new_bg = empty_like_shape(x, {lb, c}, to_scalar_type(*sd));
  const Tensor sk = skip.is_contiguous() ? skip : torch::stable::contiguous(skip);

  fastnorm::norm::UnifiedNormBwdParams p;
  p.rows = rx.m; p.cols = c;
  p.dy = rg.t.const_data_ptr(); p.dy_stride = rg.stride; p.dy_dtype = xd;
  p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
  p.var = var.const_data_ptr(); p.rho = rho.const_data_ptr();
  p.skip = static_cast<const uint8_t*>(sk.const_data_ptr());
  p.weight = w->const_data_ptr(); p.w_dtype = wd;
  p.ema_gz = ema.const_data_ptr(); p.buffer_gz = bg.const_data_ptr(); p.state_dtype = *sd;
  p.window = lb; p.iteration = iteration; p.warmup_iters = warmup_iters; p.eps = eps; p.momentum = momentum;
  p.dx = dx.mutable_data_ptr(); p.dweight = dw.mutable_data_ptr(); p.dbias = db.mutable_data_ptr();
  p.new_ema_gz = new_ema.mutable_data_ptr(); p.new_buffer_gz = new_bg.mutable_data_ptr();
  Tensor ws = workspace(x, B::unified_norm_bwd_workspace_bytes(p));
  p.workspace = ws.mutable_data_ptr();
  check_status(B::unified_norm_bwd(p, x), op);
  return {dx, dw, db, new_ema, new_bg};
}

template <class B>
Tensor channel_affine(Tensor x, Tensor scale, Tensor shift, int64_t channel_dim) {
  const char* op = "channel_affine";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  const int64_t d = x.dim();
  if (d < 1) fail(op, "x must have at least one dimension");
  if (channel_dim < -d || channel_dim >= d)
    fail(op, "channel_dim ", channel_dim, " is out of range for x with ", d, " dimensions");
  const int64_t cd = channel_dim < 0 ? channel_dim + d : channel_dim;
  const int64_t c = x.size(cd);
  const char* names[2] = {"scale", "shift"};
  const Tensor* ts[2] = {&scale, &shift};
  DType sdt = DType::Float32;
  for (int i = 0; i < 2; ++i) {
    check_same_device(x, *ts[i], op, names[i]);
    const DType td = float_dtype(*ts[i], op, names[i]);
    if (td == DType::Float64 && xd != DType::Float64)
      fail(op, names[i], " is float64 but x is ", dtype_name(xd), " (float64 parameters need float64 x)");
    if (ts[i]->dim() != 1 || ts[i]->size(0) != c)
      fail(op, names[i], " has shape ", shape_str(*ts[i]), " but x has ", c, " channels along dim ", cd);
    if (i == 1 && td != sdt) fail(op, "shift dtype ", dtype_name(td), " differs from scale dtype ", dtype_name(sdt));
    sdt = td;
  }
  const Tensor xc = x.is_contiguous() ? x : torch::stable::contiguous(x);
  const Tensor sc = scale.is_contiguous() ? scale : torch::stable::contiguous(scale);
  const Tensor sh = shift.is_contiguous() ? shift : torch::stable::contiguous(shift);
  Tensor y = empty_like_shape(x, shape_of(x), to_scalar_type(xd));
  fastnorm::norm::ChannelAffineParams p;
  p.outer = 1; p.inner = 1; p.channels = c;
  for (int64_t i = 0; i < cd; ++i) p.outer *= x.size(i);
  for (int64_t i = cd + 1; i < d; ++i) p.inner *= x.size(i);
  p.x = xc.const_data_ptr(); p.x_dtype = xd;
  p.scale = sc.const_data_ptr(); p.shift = sh.const_data_ptr(); p.s_dtype = sdt;
  p.y = y.mutable_data_ptr();
  check_status(B::channel_affine(p, x), op);
  return y;
}

#define FASTNORM_REGISTER_UNIFIED_IMPLS(m, B)                                                          \
  m.impl("unified_norm", TORCH_BOX(&fastnorm::binding::unified_ops::unified_norm<B>));                 \
  m.impl("unified_norm_backward", TORCH_BOX(&fastnorm::binding::unified_ops::unified_norm_backward<B>)); \
  m.impl("channel_affine", TORCH_BOX(&fastnorm::binding::unified_ops::channel_affine<B>))

}  // namespace unified_ops
}  // namespace binding
}  // namespace fastnorm

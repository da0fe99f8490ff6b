// PowerNorm ops (specs/norm.md §2.4, §3.6) over a Backend (CPU or CUDA) that supplies the core entry points.
// norm_power.cpp registers them for CPU (with the schemas), norm_power_cuda.cpp for CUDA.
//
// The core works on A-typed (float, or double for float64 x) per-channel vectors; the module's weight, bias,
// running_phi and ema_gz may have any float dtype and shape with C elements ([C] or [1, C, 1, 1]). They are
// C-sized, so the binding converts them to A on the way in and the results back to their dtypes on the way out.
#pragma once
#include <cmath>
#include <tuple>

#include "binding.h"
#include "fastnorm/norm_power.h"

namespace fastnorm {
namespace binding {
namespace power_ops {

using fastnorm::norm::PowerQuirks;

inline ScalarType acc_type(DType xd) { return xd == DType::Float64 ? ScalarType::Double : ScalarType::Float; }

inline void check_pos(double v, const char* op, const char* name) {
  if (!(v > 0) || !std::isfinite(v)) fail(op, name, " must be a finite value > 0, got ", v);
}
inline void check_unit(double v, const char* op, const char* name) {
  if (!(v >= 0 && v <= 1)) fail(op, name, " must be in [0, 1], got ", v);
}
inline PowerQuirks quirks_of(int64_t q, const char* op) {
  if (q != 0 && q != 1) fail(op, "quirks must be 0 (official) or 1 (paper), got ", q);
  return static_cast<PowerQuirks>(q);
}
inline void check_groups(int64_t g, int64_t c, const char* op) {
  if (g < 1) fail(op, "group_num must be >= 1, got ", g);
  if (c % g != 0) fail(op, "group_num ", g, " does not divide the channel count ", c);
}

// A per-channel tensor with C elements, converted to the accumulation type, flat and contiguous.
inline Tensor channel_vec(const Tensor& x, const Tensor& t, int64_t c, ScalarType acc, const char* op,
                          const char* name) {
  check_same_device(x, t, op, name);
  const DType td = float_dtype(t, op, name);
  if (td == DType::Float64 && acc != ScalarType::Double)
    fail(op, name, " is float64 but x is not (float64 parameters and buffers need float64 x)");
  if (t.numel() != c) fail(op, name, " has shape ", shape_str(t), " (", t.numel(), " elements) but x has ", c,
                           " channels");
  Tensor flat = torch::stable::reshape(t, {c});
  if (flat.scalar_type() != acc) flat = torch::stable::to(flat, acc);
  return flat.is_contiguous() ? flat : torch::stable::contiguous(flat);
}

// The A-typed result `v` ([C]) as a tensor shaped and typed like `like`.
inline Tensor channel_out(const Tensor& v, const Tensor& like) {
  Tensor r = v;
  if (r.scalar_type() != like.scalar_type()) r = torch::stable::to(r, like.scalar_type());
  return torch::stable::reshape(r, shape_of(like));
}

struct Layout {
  int64_t T = 0, B = 0, C = 0;
};

// x is (T, B, C), (B, T, C) with batch_first, or (B, C) meaning T = 1.
inline Layout layout_of(const Tensor& x, bool batch_first, const char* op) {
  Layout l;
  if (x.dim() == 2) {
    l.T = 1; l.B = x.size(0); l.C = x.size(1);
  } else if (x.dim() == 3) {
    l.T = batch_first ? x.size(1) : x.size(0);
    l.B = batch_first ? x.size(0) : x.size(1);
    l.C = x.size(2);
  } else {
    fail(op, "x must be 2-D (B, C) or 3-D (", batch_first ? "B, T" : "T, B", ", C), got shape ", shape_str(x));
  }
  return l;
}

// pad_mask: bool (B, T), True = pad. Returns a contiguous tensor (or nothing).
inline std::optional<Tensor> mask_of(const Tensor& x, const std::optional<Tensor>& m, const Layout& l, const char* op) {
  if (!m.has_value()) return std::nullopt;
  const Tensor& t = *m;
  check_same_device(x, t, op, "pad_mask");
  if (t.scalar_type() != ScalarType::Bool)
    fail(op, "pad_mask must be bool (True = pad), got ", scalar_name(t.scalar_type()));
  if (!(t.dim() == 2 && t.size(0) == l.B && t.size(1) == l.T))
    fail(op, "pad_mask has shape ", shape_str(t), " but must be (B, T) = [", l.B, ", ", l.T, "]");
  return t.is_contiguous() ? t : torch::stable::contiguous(t);
}

inline Tensor workspace(const Tensor& x, size_t bytes) {
  return empty_like_shape(x, {static_cast<int64_t>(bytes ? bytes : 1)}, ScalarType::Byte);
}

template <class B>
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> power_norm(Tensor x, std::optional<Tensor> pad_mask, Tensor weight,
    Tensor bias, Tensor running_phi, int64_t iteration, int64_t warmup_iters, double eps, double alpha_fwd,
    int64_t group_num, double group_eps, bool batch_first, int64_t quirks) {
  const char* op = "power_norm";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  const Layout l = layout_of(x, batch_first, op);
  check_pos(eps, op, "eps");
  check_pos(group_eps, op, "group_eps");
  check_unit(alpha_fwd, op, "alpha_fwd");
  if (iteration < 1) fail(op, "iteration must be >= 1, got ", iteration);
  if (warmup_iters < 0) fail(op, "warmup_iters must be >= 0, got ", warmup_iters);
  const PowerQuirks qk = quirks_of(quirks, op);
  check_groups(group_num, l.C, op);
  const ScalarType acc = acc_type(xd);
  const Tensor w = channel_vec(x, weight, l.C, acc, op, "weight");
  const Tensor b = channel_vec(x, bias, l.C, acc, op, "bias");
  const Tensor phi = channel_vec(x, running_phi, l.C, acc, op, "running_phi");
  const auto mask = mask_of(x, pad_mask, l, op);
  Rows rx = as_rows(x);

  Tensor y = empty_like_shape(x, shape_of(x), x.scalar_type());
  std::vector<int64_t> gshape = leading_shape(x);
  gshape.push_back(group_num);
  Tensor grs = empty_like_shape(x, gshape, acc);
  Tensor x2 = empty_like_shape(x, {l.C}, acc);
  Tensor denom = empty_like_shape(x, {l.C}, acc);
  Tensor nphi = empty_like_shape(x, {l.C}, acc);

  fastnorm::norm::PowerNormParams p;
  p.T = l.T; p.B = l.B; p.C = l.C; p.group_num = group_num; p.batch_first = batch_first;
  p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
  p.pad_mask = mask ? static_cast<const uint8_t*>(mask->const_data_ptr()) : nullptr;
  p.weight = w.const_data_ptr(); p.bias = b.const_data_ptr(); p.running_phi = phi.const_data_ptr();
  p.y = y.mutable_data_ptr(); p.group_rstd = grs.mutable_data_ptr();
  p.x2 = x2.mutable_data_ptr(); p.denom = denom.mutable_data_ptr(); p.new_running_phi = nphi.mutable_data_ptr();
  p.iteration = iteration; p.warmup_iters = warmup_iters;
  p.eps = eps; p.alpha_fwd = alpha_fwd; p.group_eps = group_eps; p.quirks = qk;
  Tensor ws = workspace(x, B::fwd_workspace_bytes(p));
  p.workspace = ws.mutable_data_ptr();
  check_status(B::fwd(p, x), op);
  return {y, grs, x2, denom, channel_out(nphi, running_phi)};
}

template <class B>
std::tuple<Tensor, Tensor, Tensor, Tensor> power_norm_backward(Tensor dy, Tensor x, std::optional<Tensor> pad_mask,
    Tensor group_rstd, Tensor x2, Tensor denom, Tensor weight, Tensor ema_gz, double eps, double alpha_bkw,
    int64_t group_num, bool batch_first, int64_t quirks) {
  const char* op = "power_norm_backward";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  const Layout l = layout_of(x, batch_first, op);
  check_pos(eps, op, "eps");
  check_unit(alpha_bkw, op, "alpha_bkw");
  const PowerQuirks qk = quirks_of(quirks, op);
  check_groups(group_num, l.C, op);
  const ScalarType acc = acc_type(xd);
  check_same_device(x, dy, op, "dy");
  float_dtype(dy, op, "dy");
  if (shape_of(dy) != shape_of(x)) fail(op, "dy has shape ", shape_str(dy), " but x has shape ", shape_str(x));
  Tensor dyx = dy.scalar_type() == x.scalar_type() ? dy : torch::stable::to(dy, x.scalar_type());
  const Tensor w = channel_vec(x, weight, l.C, acc, op, "weight");
  const Tensor nu = channel_vec(x, ema_gz, l.C, acc, op, "ema_gz");
  const Tensor q = channel_vec(x, x2, l.C, acc, op, "x2");
  const Tensor d = channel_vec(x, denom, l.C, acc, op, "denom");
  check_same_device(x, group_rstd, op, "group_rstd");
  if (group_rstd.scalar_type() != acc)
    fail(op, "group_rstd must be ", scalar_name(acc), ", got ", scalar_name(group_rstd.scalar_type()));
  if (group_rstd.numel() != l.T * l.B * group_num)
    fail(op, "group_rstd has ", group_rstd.numel(), " elements but x has ", l.T * l.B, " tokens of ", group_num,
         " groups");
  const Tensor grs = group_rstd.is_contiguous() ? group_rstd : torch::stable::contiguous(group_rstd);
  const auto mask = mask_of(x, pad_mask, l, op);
  Rows rx = as_rows(x), rd = as_rows(dyx);

  Tensor dx = empty_like_shape(x, shape_of(x), x.scalar_type());
  Tensor dw = empty_like_shape(x, {l.C}, acc), db = empty_like_shape(x, {l.C}, acc);
  Tensor nnu = empty_like_shape(x, {l.C}, acc);
  fastnorm::norm::PowerNormBwdParams p;
  p.T = l.T; p.B = l.B; p.C = l.C; p.group_num = group_num; p.batch_first = batch_first;
  p.dy = rd.t.const_data_ptr(); p.dy_stride = rd.stride;
  p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
  p.pad_mask = mask ? static_cast<const uint8_t*>(mask->const_data_ptr()) : nullptr;
  p.group_rstd = grs.const_data_ptr(); p.x2 = q.const_data_ptr(); p.denom = d.const_data_ptr();
  p.weight = w.const_data_ptr(); p.ema_gz = nu.const_data_ptr();
  p.dx = dx.mutable_data_ptr(); p.dweight = dw.mutable_data_ptr(); p.dbias = db.mutable_data_ptr();
  p.new_ema_gz = nnu.mutable_data_ptr();
  p.eps = eps; p.alpha_bkw = alpha_bkw; p.quirks = qk;
  Tensor ws = workspace(x, B::bwd_workspace_bytes(p));
  p.workspace = ws.mutable_data_ptr();
  check_status(B::bwd(p, x), op);
  return {dx, channel_out(dw, weight), channel_out(db, weight), channel_out(nnu, ema_gz)};
}

template <class B>
Tensor power_norm_eval(Tensor x, Tensor weight, Tensor bias, Tensor running_phi, double eps, int64_t group_num,
                       double group_eps) {
  const char* op = "power_norm_eval";
  check_device_kind(x, B::kCuda, op);
  const DType xd = float_dtype(x, op, "x");
  if (x.dim() < 1) fail(op, "x must have at least one dimension (channels last)");
  check_pos(eps, op, "eps");
  check_pos(group_eps, op, "group_eps");
  Rows rx = as_rows(x);
  check_groups(group_num, rx.n, op);
  const ScalarType acc = acc_type(xd);
  const Tensor w = channel_vec(x, weight, rx.n, acc, op, "weight");
  const Tensor b = channel_vec(x, bias, rx.n, acc, op, "bias");
  const Tensor phi = channel_vec(x, running_phi, rx.n, acc, op, "running_phi");
  Tensor y = empty_like_shape(x, shape_of(x), x.scalar_type());
  fastnorm::norm::PowerNormEvalParams p;
  p.rows = rx.m; p.C = rx.n; p.group_num = group_num;
  p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
  p.weight = w.const_data_ptr(); p.bias = b.const_data_ptr(); p.running_phi = phi.const_data_ptr();
  p.y = y.mutable_data_ptr(); p.eps = eps; p.group_eps = group_eps;
  check_status(B::eval(p, x), op);
  return y;
}

#define FASTNORM_REGISTER_POWER_NORM_IMPLS(m, B)                                                         \
  m.impl("power_norm", TORCH_BOX(&fastnorm::binding::power_ops::power_norm<B>));                         \
  m.impl("power_norm_backward", TORCH_BOX(&fastnorm::binding::power_ops::power_norm_backward<B>));       \
  m.impl("power_norm_eval", TORCH_BOX(&fastnorm::binding::power_ops::power_norm_eval<B>))

}  // namespace power_ops
}  // namespace binding
}  // namespace fastnorm

// The norm family's op implementations, written once over a Backend (CPU or CUDA) that supplies the
// core entry points. norm.cpp registers them for CPU (with the schemas), norm_cuda.cpp for CUDA.
// Each op validates every argument (messages name the op and the argument), allocates its outputs,
// fills the core's Params and calls the core.
#pragma once
#include <cmath>
#include <tuple>

#include "binding.h"
#include "fastnorm/norm.h"

namespace fastnorm {
namespace binding {
namespace norm_ops {

using fastnorm::norm::Casting;

inline void check_eps(double eps, const char* op) {
  if (!(eps > 0) || !std::isfinite(eps)) fail(op, "eps must be a finite value > 0, got ", eps);
}

// weight/bias: 1-D of x's last dimension, float, same device; f64 only with f64 x; bias matches weight.
inline DType check_affine(const Tensor& x, DType xd, const std::optional<Tensor>& w, const std::optional<Tensor>& b,
                          int64_t n, const char* op) {
  DType wd = xd == DType::Float64 ? DType::Float64 : DType::Float32;
  const char* names[2] = {"weight", "bias"};
  const std::optional<Tensor>* ts[2] = {&w, &b};
  bool first = true;
  for (int i = 0; i < 2; ++i) {
    if (!ts[i]->has_value()) continue;
    const Tensor& t = ts[i]->value();
    check_same_device(x, t, op, names[i]);
    const DType td = float_dtype(t, op, names[i]);
    if (td == DType::Float64 && xd != DType::Float64)
      fail(op, names[i], " is float64 but x is ", dtype_name(xd), " (float64 parameters need float64 x)");
    if (t.dim() != 1 || t.size(0) != n)
      fail(op, names[i], " has shape ", shape_str(t), " but x's last dimension is ", n);
    if (!first && td != wd) fail(op, "bias dtype ", dtype_name(td), " differs from weight dtype ", dtype_name(wd));
    wd = td;
    first = false;
  }
  return wd;
}

// Affine tensors are tiny: make them contiguous (a no-op for parameters).
inline const void* affine_ptr(const std::optional<Tensor>& t) {
  if (!t.has_value()) return nullptr;
  return t->const_data_ptr();
}
inline std::optional<Tensor> contiguous_opt(const std::optional<Tensor>& t) {
  if (!t.has_value() || t->is_contiguous()) return t;
  return torch::stable::contiguous(*t);
}

inline DType out_dtype_or(int64_t code, DType dflt, const char* op) {
  if (code == -1) return dflt;
  if (code < 0 || code > 3) fail(op, "out_dtype must be a float dtype code (0..3) or -1, got ", code);
  return static_cast<DType>(code);
}

inline Casting casting_of(int64_t c, const char* op) {
  if (c < 0 || c > 2) fail(op, "casting must be 0 (llama), 1 (gemma) or 2 (none), got ", c);
  return static_cast<Casting>(c);
}

inline DType promote(DType a, DType b) {
  if (a == b) return a;
  if (a == DType::Float64 || b == DType::Float64) return DType::Float64;
  return DType::Float32;  // any mix of f32/f16/bf16 that is not equal promotes to f32
}

inline DType stats_dtype(DType xd) { return xd == DType::Float64 ? DType::Float64 : DType::Float32; }

// dy/dresidual_out: same shape and device as the forward's output; non-unit inner stride is copied once.
inline Rows grad_rows(const Tensor& x, const Tensor& g, const char* op, const char* arg) {
  check_same_device(x, g, op, arg);
  float_dtype(g, op, arg);
  if (g.dim() != x.dim() || shape_of(g) != shape_of(x))
    fail(op, arg, " has shape ", shape_str(g), " but the forward's output has shape ", shape_str(x));
  return as_rows(g);
}

inline void check_stats(const Tensor& x, const Tensor& s, DType xd, int64_t m, const char* op, const char* arg) {
  check_same_device(x, s, op, arg);
  if (s.scalar_type() != to_scalar_type(stats_dtype(xd)))
    fail(op, arg, " must be ", dtype_name(stats_dtype(xd)), ", got ", scalar_name(s.scalar_type()));
  if (s.numel() != m) fail(op, arg, " has ", s.numel(), " elements but x has ", m, " rows");
  if (!s.is_contiguous()) fail(op, arg, " must be contiguous");
}

// ---- forward (plain and add & norm share one function each) -----------------------------------------
template <class B>
struct Impl {
  static std::tuple<Tensor, Tensor, Tensor, Tensor> ln_forward(const char* op, const Tensor& x,
      const std::optional<Tensor>& residual, bool add, const std::optional<Tensor>& weight_in,
      const std::optional<Tensor>& bias_in, double eps, bool residual_in_fp32, int64_t out_dtype) {
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    check_eps(eps, op);
    if (x.dim() < 1) fail(op, "x must have at least one dimension");
    Rows rx = as_rows(x);
    const DType wd = check_affine(x, xd, weight_in, bias_in, rx.n, op);
    const auto weight = contiguous_opt(weight_in), bias = contiguous_opt(bias_in);
    const DType yd = out_dtype_or(out_dtype, xd, op);
    if (yd == DType::Float64 && xd != DType::Float64) fail(op, "out_dtype float64 needs float64 x");

    fastnorm::norm::LayerNormParams p;
    p.rows = rx.m; p.cols = rx.n;
    p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
    p.weight = affine_ptr(weight); p.bias = affine_ptr(bias); p.w_dtype = wd;
    p.eps = eps;
    Tensor y = empty_like_shape(x, shape_of(x), to_scalar_type(yd));
    Tensor mean = empty_like_shape(x, leading_shape(x), to_scalar_type(stats_dtype(xd)));
    Tensor rstd = empty_like_shape(x, leading_shape(x), to_scalar_type(stats_dtype(xd)));
    p.y = y.mutable_data_ptr(); p.y_dtype = yd;
    p.mean = mean.mutable_data_ptr(); p.rstd = rstd.mutable_data_ptr();
    Tensor res_out;  // only the add & norm ops return it; the plain ops drop it (no allocation)
    Rows rr;
    if (add) {
      const DType rd = residual_dtype(x, xd, residual, op, residual_in_fp32, rr);
      res_out = empty_like_shape(x, shape_of(x), to_scalar_type(rd));
      p.residual_out = res_out.mutable_data_ptr(); p.residual_out_dtype = rd;
      if (residual.has_value()) {
        p.residual = rr.t.const_data_ptr(); p.residual_stride = rr.stride;
        p.residual_dtype = *to_dtype(residual->scalar_type());
      }
    }
    check_status(B::layer_norm_fwd(p, x), op);
    return {y, res_out, mean, rstd};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> rms_forward(const char* op, const Tensor& x,
      const std::optional<Tensor>& residual, bool add, const std::optional<Tensor>& weight_in, double eps,
      const std::optional<Tensor>& bias_in, double offset, int64_t casting, bool residual_in_fp32, int64_t out_dtype) {
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    check_eps(eps, op);
    if (!std::isfinite(offset)) fail(op, "offset must be finite, got ", offset);
    const Casting c = casting_of(casting, op);
    if (x.dim() < 1) fail(op, "x must have at least one dimension");
    Rows rx = as_rows(x);
    const DType wd = check_affine(x, xd, weight_in, bias_in, rx.n, op);
    if (offset != 0.0 && !weight_in.has_value()) fail(op, "offset ", offset, " needs a weight");
    const auto weight = contiguous_opt(weight_in), bias = contiguous_opt(bias_in);
    Rows rr;
    DType rd = xd;
    if (add) rd = residual_dtype(x, xd, residual, op, residual_in_fp32, rr);
    // The output defaults to x's dtype (also in add & norm, whatever the stored sum's dtype); llama
    // promotes it with the weight's dtype, as HF's module does (specs/norm.md §3.2).
    const DType dflt = (c == Casting::Llama && weight.has_value()) ? promote(xd, wd) : xd;
    const DType yd = out_dtype_or(out_dtype, dflt, op);
    if (yd == DType::Float64 && xd != DType::Float64) fail(op, "out_dtype float64 needs float64 x");

    fastnorm::norm::RMSNormParams p;
    p.rows = rx.m; p.cols = rx.n;
    p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
    p.weight = affine_ptr(weight); p.bias = affine_ptr(bias); p.w_dtype = wd;
    p.eps = eps; p.offset = offset; p.casting = c;
    Tensor y = empty_like_shape(x, shape_of(x), to_scalar_type(yd));
    Tensor rstd = empty_like_shape(x, leading_shape(x), to_scalar_type(stats_dtype(xd)));
    p.y = y.mutable_data_ptr(); p.y_dtype = yd;
    p.rstd = rstd.mutable_data_ptr();
    Tensor res_out;  // only the add & norm ops return it; the plain ops drop it (no allocation)
    if (add) {
      res_out = empty_like_shape(x, shape_of(x), to_scalar_type(rd));
      p.residual_out = res_out.mutable_data_ptr(); p.residual_out_dtype = rd;
      if (residual.has_value()) {
        p.residual = rr.t.const_data_ptr(); p.residual_stride = rr.stride;
        p.residual_dtype = *to_dtype(residual->scalar_type());
      }
    }
    check_status(B::rms_norm_fwd(p, x), op);
    return {y, res_out, rstd, Tensor()};
  }

  // The stored sum's dtype: f32 if residual_in_fp32 or the residual is f32, else x's (specs/norm.md §3.3).
  static DType residual_dtype(const Tensor& x, DType xd, const std::optional<Tensor>& residual, const char* op,
                              bool residual_in_fp32, Rows& rr) {
    DType rd = residual_in_fp32 ? DType::Float32 : xd;
    if (xd == DType::Float64) rd = DType::Float64;
    if (residual.has_value()) {
      const Tensor& r = *residual;
      check_same_device(x, r, op, "residual");
      const DType d = float_dtype(r, op, "residual");
      if (d != xd && d != DType::Float32)
        fail(op, "residual must be ", dtype_name(xd), " (x's dtype) or float32, got ", dtype_name(d));
      if (shape_of(r) != shape_of(x)) fail(op, "residual has shape ", shape_str(r), " but x has shape ", shape_str(x));
      if (d == DType::Float32 && xd != DType::Float64) rd = DType::Float32;
      rr = as_rows(r);
    }
    return rd;
  }

  // ---- backward ----------------------------------------------------------------------------------------
  static std::tuple<Tensor, Tensor, Tensor> ln_backward(const char* op, const Tensor& dy,
      const std::optional<Tensor>& dres, const Tensor& x, const Tensor& mean, const Tensor& rstd,
      const std::optional<Tensor>& weight_in, const std::optional<Tensor>& bias_in, bool need_dx, bool need_dw,
      bool need_db) {
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, x_name(dres));
    if (x.dim() < 1) fail(op, "x must have at least one dimension");
    Rows rx = as_rows(x);
    const DType wd = check_affine(x, xd, weight_in, bias_in, rx.n, op);
    const auto weight = contiguous_opt(weight_in);
    Rows rdy = grad_rows(x, dy, op, "dy");
    check_stats(x, mean, xd, rx.m, op, "mean");
    check_stats(x, rstd, xd, rx.m, op, "rstd");
    need_dw = need_dw && weight_in.has_value();
    need_db = need_db && bias_in.has_value();

    fastnorm::norm::LayerNormBwdParams p;
    p.rows = rx.m; p.cols = rx.n;
    p.dy = rdy.t.const_data_ptr(); p.dy_stride = rdy.stride; p.dy_dtype = *to_dtype(rdy.t.scalar_type());
    p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
    p.mean = mean.const_data_ptr(); p.rstd = rstd.const_data_ptr();
    p.weight = affine_ptr(weight); p.w_dtype = wd;
    Rows rdr;
    if (dres.has_value()) {
      rdr = grad_rows(x, *dres, op, "dresidual_out");
      p.dresidual_out = rdr.t.const_data_ptr(); p.dresidual_out_stride = rdr.stride;
      p.dresidual_out_dtype = *to_dtype(rdr.t.scalar_type());
    }
    Tensor dx = need_dx ? empty_like_shape(x, shape_of(x), to_scalar_type(xd)) : unused_output(x, to_scalar_type(xd));
    Tensor dw = need_dw ? empty_like_shape(x, {rx.n}, to_scalar_type(wd)) : unused_output(x, to_scalar_type(wd));
    Tensor db = need_db ? empty_like_shape(x, {rx.n}, to_scalar_type(wd)) : unused_output(x, to_scalar_type(wd));
    p.dx = need_dx ? dx.mutable_data_ptr() : nullptr; p.dx_dtype = xd;
    p.dweight = need_dw ? dw.mutable_data_ptr() : nullptr;
    p.dbias = need_db ? db.mutable_data_ptr() : nullptr;
    Tensor ws = workspace(x, B::layer_norm_bwd_workspace_bytes(p));
    p.workspace = ws.defined() ? ws.mutable_data_ptr() : nullptr;
    check_status(B::layer_norm_bwd(p, x), op);
    return {dx, dw, db};
  }

  static std::tuple<Tensor, Tensor, Tensor> rms_backward(const char* op, const Tensor& dy,
      const std::optional<Tensor>& dres, const Tensor& x, const Tensor& rstd, const std::optional<Tensor>& weight_in,
      const std::optional<Tensor>& bias_in, double offset, int64_t casting, bool need_dx, bool need_dw, bool need_db) {
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, x_name(dres));
    const Casting c = casting_of(casting, op);
    if (!std::isfinite(offset)) fail(op, "offset must be finite, got ", offset);
    if (x.dim() < 1) fail(op, "x must have at least one dimension");
    Rows rx = as_rows(x);
    const DType wd = check_affine(x, xd, weight_in, bias_in, rx.n, op);
    if (offset != 0.0 && !weight_in.has_value()) fail(op, "offset ", offset, " needs a weight");
    const auto weight = contiguous_opt(weight_in);
    Rows rdy = grad_rows(x, dy, op, "dy");
    check_stats(x, rstd, xd, rx.m, op, "rstd");
    need_dw = need_dw && weight_in.has_value();
    need_db = need_db && bias_in.has_value();

    fastnorm::norm::RMSNormBwdParams p;
    p.rows = rx.m; p.cols = rx.n;
    p.dy = rdy.t.const_data_ptr(); p.dy_stride = rdy.stride; p.dy_dtype = *to_dtype(rdy.t.scalar_type());
    p.y_dtype = p.dy_dtype;  // dy has the forward output's dtype
    p.x = rx.t.const_data_ptr(); p.x_stride = rx.stride; p.x_dtype = xd;
    p.rstd = rstd.const_data_ptr();
    p.weight = affine_ptr(weight); p.w_dtype = wd;
    p.offset = offset; p.casting = c;
    Rows rdr;
    if (dres.has_value()) {
      rdr = grad_rows(x, *dres, op, "dresidual_out");
      p.dresidual_out = rdr.t.const_data_ptr(); p.dresidual_out_stride = rdr.stride;
      p.dresidual_out_dtype = *to_dtype(rdr.t.scalar_type());
    }
    Tensor dx = need_dx ? empty_like_shape(x, shape_of(x), to_scalar_type(xd)) : unused_output(x, to_scalar_type(xd));
    Tensor dw = need_dw ? empty_like_shape(x, {rx.n}, to_scalar_type(wd)) : unused_output(x, to_scalar_type(wd));
    Tensor db = need_db ? empty_like_shape(x, {rx.n}, to_scalar_type(wd)) : unused_output(x, to_scalar_type(wd));
    p.dx = need_dx ? dx.mutable_data_ptr() : nullptr; p.dx_dtype = xd;
    p.dweight = need_dw ? dw.mutable_data_ptr() : nullptr;
    p.dbias = need_db ? db.mutable_data_ptr() : nullptr;
    Tensor ws = workspace(x, B::rms_norm_bwd_workspace_bytes(p));
    p.workspace = ws.defined() ? ws.mutable_data_ptr() : nullptr;
    check_status(B::rms_norm_bwd(p, x), op);
    return {dx, dw, db};
  }

  static const char* x_name(const std::optional<Tensor>& dres) { return dres.has_value() ? "residual_out" : "x"; }

  static Tensor workspace(const Tensor& x, size_t bytes) {
    if (bytes == 0) return Tensor();
    return empty_like_shape(x, {static_cast<int64_t>(bytes)}, ScalarType::Byte);
  }
};

}  // namespace norm_ops
}  // namespace binding
}  // namespace fastnorm

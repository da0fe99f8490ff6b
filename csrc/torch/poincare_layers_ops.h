// The Poincaré layers' op implementations (specs/poincare.md §2.3), written once over a Backend (CPU or CUDA)
// that supplies the core entry points. poincare_layers.cpp registers them for CPU (with the schemas),
// poincare_layers_cuda.cpp for CUDA. Each op validates its arguments (messages name the op and the
// argument), allocates outputs and the core's workspace from torch, fills the Params and calls the core.
#pragma once
#include <cmath>
#include <tuple>

#include "binding.h"
#include "fastnorm/poincare_layers.h"

namespace fastnorm {
namespace binding {
namespace poincare_layers_ops {

namespace pc = fastnorm::poincare;

inline Tensor workspace(const Tensor& x, size_t bytes) {
  return empty_like_shape(x, {static_cast<int64_t>(bytes < 64 ? 64 : bytes)}, ScalarType::Byte);
}

// c: one element of a float dtype, on x's device or a CPU scalar read on the host (§5). Its grad needs it
// on x's device for CUDA ops (a CPU c that requires grad is moved there by the Python wrapper).
inline pc::Curvature curvature(const Tensor& x, const Tensor& c, const char* op) {
  const DType cd = float_dtype(c, op, "c");
  if (c.numel() != 1) fail(op, "c must have one element, got shape ", shape_str(c));
  const bool host = !c.is_cuda();
  if (!host) check_same_device(x, c, op, "c");
  if (!c.is_contiguous()) fail(op, "c must be contiguous");
  pc::Curvature cv;
  cv.ptr = c.const_data_ptr();
  cv.dtype = cd;
  cv.on_host = host;
  return cv;
}

// Parameters: x's dtype or float32 (float64 only with float64 x); bias matches weight.
inline DType param_dtype(const Tensor& x, DType xd, const Tensor& t, const char* op, const char* arg) {
  check_same_device(x, t, op, arg);
  const DType td = float_dtype(t, op, arg);
  if (td != xd && td != DType::Float32)
    fail(op, arg, " must be ", dtype_name(xd), " (x's dtype) or float32, got ", dtype_name(td));
  return td;
}

inline Tensor contig(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }

inline Tensor grad_c_out(const Tensor& x, const Tensor& c, bool need) {
  if (!need) return unused_output(x, c.scalar_type());
  return torch::stable::new_empty(c, shape_of(c), c.scalar_type());
}

inline void check_grad(const Tensor& x, const Tensor& g, const std::vector<int64_t>& shape, DType xd, const char* op) {
  check_same_device(x, g, op, "grad");
  const DType gd = float_dtype(g, op, "grad");
  if (gd != xd) fail(op, "grad must be ", dtype_name(xd), " (x's dtype), got ", dtype_name(gd));
  if (shape_of(g) != shape) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    fail(op, "grad has shape ", shape_str(g), " but the forward's output has shape ", s.str());
  }
}

template <class B>
struct Impl {
  // ---- poincare_linear ----------------------------------------------------------------------------------
  struct LinearSetup {
    pc::LinearParams p;
    Tensor x, w, b;
    std::vector<int64_t> out_shape;
  };

  static LinearSetup linear_setup(const char* op, const Tensor& x, const Tensor& weight,
                                  const std::optional<Tensor>& bias, const Tensor& c, bool tangent_input,
                                  bool tangent_output, bool project) {
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    if (x.dim() < 1) fail(op, "x must have at least one dimension");
    if (weight.dim() != 2) fail(op, "weight must be 2-D [out_features, in_features], got shape ", shape_str(weight));
    const int64_t n = x.size(x.dim() - 1);
    if (weight.size(1) != n)
      fail(op, "weight has ", weight.size(1), " input features but x's last dimension is ", n);
    const DType wd = param_dtype(x, xd, weight, op, "weight");
    if (bias.has_value()) {
      const DType bd = param_dtype(x, xd, *bias, op, "bias");
      if (bd != wd) fail(op, "bias dtype ", dtype_name(bd), " differs from weight dtype ", dtype_name(wd));
      if (bias->dim() != 1 || bias->size(0) != weight.size(0))
        fail(op, "bias has shape ", shape_str(*bias), " but weight has ", weight.size(0), " output features");
    }
    LinearSetup s;
    s.x = contig(x);
    s.w = contig(weight);
    if (bias.has_value()) s.b = contig(*bias);
    s.out_shape = leading_shape(x);
    s.out_shape.push_back(weight.size(0));
    pc::LinearParams& p = s.p;
    p.rows = x.numel() / (n > 0 ? n : 1);
    if (n == 0) {
      p.rows = 1;
      for (int64_t i = 0; i + 1 < x.dim(); ++i) p.rows *= x.size(i);
    }
    p.in_features = n;
    p.out_features = weight.size(0);
    p.x = s.x.const_data_ptr();
    p.x_dtype = xd;
    p.weight = s.w.const_data_ptr();
    p.bias = bias.has_value() ? s.b.const_data_ptr() : nullptr;
    p.w_dtype = wd;
    p.c = curvature(x, c, op);
    p.tangent_input = tangent_input;
    p.tangent_output = tangent_output;
    p.project = project;
    return s;
  }

  static Tensor linear(Tensor x, Tensor weight, std::optional<Tensor> bias, Tensor c, bool tangent_input,
                       bool tangent_output, bool project) {
    const char* op = "poincare_linear";
    LinearSetup s = linear_setup(op, x, weight, bias, c, tangent_input, tangent_output, project);
    Tensor out = empty_like_shape(x, s.out_shape, x.scalar_type());
    s.p.out = out.mutable_data_ptr();
    Tensor ws = workspace(x, B::linear_workspace_bytes(s.p));
    s.p.workspace = ws.mutable_data_ptr();
    s.p.workspace_bytes = static_cast<size_t>(ws.numel());
    check_status(B::linear_fwd(s.p, x), op);
    return out;
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> linear_backward(Tensor grad, Tensor x, Tensor weight,
      std::optional<Tensor> bias, Tensor c, bool tangent_input, bool tangent_output, bool project, bool need_x,
      bool need_weight, bool need_bias, bool need_c) {
    const char* op = "poincare_linear_backward";
    LinearSetup s = linear_setup(op, x, weight, bias, c, tangent_input, tangent_output, project);
    check_grad(x, grad, s.out_shape, s.p.x_dtype, op);
    Tensor g = contig(grad);
    s.p.grad = g.const_data_ptr();
    need_bias = need_bias && bias.has_value();
    if (need_c && B::kCuda && !c.is_cuda()) fail(op, "c must be on x's device to get its gradient");
    Tensor dx = need_x ? empty_like_shape(x, shape_of(x), x.scalar_type()) : unused_output(x, x.scalar_type());
    Tensor dw = need_weight ? empty_like_shape(x, shape_of(weight), weight.scalar_type())
                            : unused_output(x, weight.scalar_type());
    Tensor db = need_bias ? empty_like_shape(x, shape_of(*bias), bias->scalar_type())
                          : unused_output(x, weight.scalar_type());
    Tensor dc = grad_c_out(x, c, need_c);
    s.p.grad_x = need_x ? dx.mutable_data_ptr() : nullptr;
    s.p.grad_weight = need_weight ? dw.mutable_data_ptr() : nullptr;
    s.p.grad_bias = need_bias ? db.mutable_data_ptr() : nullptr;
    s.p.grad_c = need_c ? dc.mutable_data_ptr() : nullptr;
    if (need_x || need_weight || need_bias || need_c) {
      Tensor ws = workspace(x, B::linear_workspace_bytes(s.p));
      s.p.workspace = ws.mutable_data_ptr();
      s.p.workspace_bytes = static_cast<size_t>(ws.numel());
      check_status(B::linear_bwd(s.p, x), op);
    }
    return {dx, dw, db, dc};
  }

  // ---- poincare_conv2d ----------------------------------------------------------------------------------
  struct ConvSetup {
    pc::Conv2dParams p;
    Tensor x, w, b;
    std::vector<int64_t> out_shape;
  };

  static ConvSetup conv_setup(const char* op, const Tensor& x, const Tensor& weight,
                              const std::optional<Tensor>& bias, const Tensor& c, int64_t sh, int64_t sw,
                              int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    if (x.dim() != 4) fail(op, "x must be 4-D [B, C_in, H, W], got shape ", shape_str(x));
    if (weight.dim() != 4) fail(op, "weight must be 4-D [C_out, C_in, kh, kw], got shape ", shape_str(weight));
    if (weight.size(1) != x.size(1))
      fail(op, "weight has ", weight.size(1), " input channels but x has ", x.size(1), " (dim 1)");
    if (weight.size(2) < 1 || weight.size(3) < 1) fail(op, "weight has an empty kernel, shape ", shape_str(weight));
    if (sh < 1 || sw < 1) fail(op, "stride must be >= 1, got (", sh, ", ", sw, ")");
    if (dh < 1 || dw < 1) fail(op, "dilation must be >= 1, got (", dh, ", ", dw, ")");
    if (ph < 0 || pw < 0) fail(op, "padding must be >= 0, got (", ph, ", ", pw, ")");
    const DType wd = param_dtype(x, xd, weight, op, "weight");
    if (bias.has_value()) {
      const DType bd = param_dtype(x, xd, *bias, op, "bias");
      if (bd != wd) fail(op, "bias dtype ", dtype_name(bd), " differs from weight dtype ", dtype_name(wd));
      if (bias->dim() != 1 || bias->size(0) != weight.size(0))
        fail(op, "bias has shape ", shape_str(*bias), " but weight has ", weight.size(0), " output channels");
    }
    const int64_t kh = weight.size(2), kw = weight.size(3);
    const int64_t Ho = pc::conv_out_size(x.size(2), kh, sh, ph, dh);
    const int64_t Wo = pc::conv_out_size(x.size(3), kw, sw, pw, dw);
    if (x.size(2) + 2 * ph < dh * (kh - 1) + 1 || x.size(3) + 2 * pw < dw * (kw - 1) + 1 || Ho < 1 || Wo < 1)
      fail(op, "kernel ", kh, "x", kw, " (dilation ", dh, ", ", dw, ") is larger than the padded input ",
           x.size(2) + 2 * ph, "x", x.size(3) + 2 * pw);
    ConvSetup s;
    s.x = contig(x);
    s.w = contig(weight);
    if (bias.has_value()) s.b = contig(*bias);
    s.out_shape = {x.size(0), weight.size(0), Ho, Wo};
    pc::Conv2dParams& p = s.p;
    p.batch = x.size(0); p.in_channels = x.size(1); p.height = x.size(2); p.width = x.size(3);
    p.out_channels = weight.size(0); p.kernel_h = kh; p.kernel_w = kw;
    p.stride_h = sh; p.stride_w = sw; p.pad_h = ph; p.pad_w = pw; p.dil_h = dh; p.dil_w = dw;
    p.x = s.x.const_data_ptr();
    p.x_dtype = xd;
    p.weight = s.w.const_data_ptr();
    p.bias = bias.has_value() ? s.b.const_data_ptr() : nullptr;
    p.w_dtype = wd;
    p.c = curvature(x, c, op);
    return s;
  }

  static Tensor conv2d(Tensor x, Tensor weight, std::optional<Tensor> bias, Tensor c, int64_t sh, int64_t sw,
                       int64_t ph, int64_t pw, int64_t dh, int64_t dw) {
    const char* op = "poincare_conv2d";
    ConvSetup s = conv_setup(op, x, weight, bias, c, sh, sw, ph, pw, dh, dw);
    Tensor out = empty_like_shape(x, s.out_shape, x.scalar_type());
    s.p.out = out.mutable_data_ptr();
    Tensor ws = workspace(x, B::conv2d_workspace_bytes(s.p));
    s.p.workspace = ws.mutable_data_ptr();
    s.p.workspace_bytes = static_cast<size_t>(ws.numel());
    check_status(B::conv2d_fwd(s.p, x), op);
    return out;
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> conv2d_backward(Tensor grad, Tensor x, Tensor weight,
      std::optional<Tensor> bias, Tensor c, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw,
      bool need_x, bool need_weight, bool need_bias, bool need_c) {
    const char* op = "poincare_conv2d_backward";
    ConvSetup s = conv_setup(op, x, weight, bias, c, sh, sw, ph, pw, dh, dw);
    check_grad(x, grad, s.out_shape, s.p.x_dtype, op);
    Tensor g = contig(grad);
    s.p.grad = g.const_data_ptr();
    need_bias = need_bias && bias.has_value();
    if (need_c && B::kCuda && !c.is_cuda()) fail(op, "c must be on x's device to get its gradient");
    Tensor dx = need_x ? empty_like_shape(x, shape_of(x), x.scalar_type()) : unused_output(x, x.scalar_type());
    Tensor dwt = need_weight ? empty_like_shape(x, shape_of(weight), weight.scalar_type())
                             : unused_output(x, weight.scalar_type());
    Tensor db = need_bias ? empty_like_shape(x, shape_of(*bias), bias->scalar_type())
                          : unused_output(x, weight.scalar_type());
    Tensor dc = grad_c_out(x, c, need_c);
    s.p.grad_x = need_x ? dx.mutable_data_ptr() : nullptr;
    s.p.grad_weight = need_weight ? dwt.mutable_data_ptr() : nullptr;
    s.p.grad_bias = need_bias ? db.mutable_data_ptr() : nullptr;
    s.p.grad_c = need_c ? dc.mutable_data_ptr() : nullptr;
    if (need_x || need_weight || need_bias || need_c) {
      Tensor ws = workspace(x, B::conv2d_workspace_bytes(s.p));
      s.p.workspace = ws.mutable_data_ptr();
      s.p.workspace_bytes = static_cast<size_t>(ws.numel());
      check_status(B::conv2d_bwd(s.p, x), op);
    }
    return {dx, dwt, db, dc};
  }

  // ---- poincare_midpoint_batch_norm ---------------------------------------------------------------------
  struct BNSetup {
    pc::MidpointBNParams p;
    Tensor x, w, b, rm, rv;
    int64_t C = 0;
  };

  static BNSetup bn_setup(const char* op, const Tensor& x, const Tensor& weight, const Tensor& bias, const Tensor& c,
                          const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
                          bool use_batch_stats, int64_t dim, double eps, bool backward = false) {
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    if (x.dim() < 1) fail(op, "x must have at least one dimension");
    if (dim < -x.dim() || dim >= x.dim()) fail(op, "dim ", dim, " is out of range for x of rank ", x.dim());
    if (dim < 0) dim += x.dim();
    if (!(eps > 0) || !std::isfinite(eps)) fail(op, "eps must be a finite value > 0, got ", eps);
    const DType wd = param_dtype(x, xd, weight, op, "weight");
    if (weight.numel() != 1) fail(op, "weight (γ) must have one element, got shape ", shape_str(weight));
    const DType bd = param_dtype(x, xd, bias, op, "bias");
    if (bd != wd) fail(op, "bias dtype ", dtype_name(bd), " differs from weight dtype ", dtype_name(wd));
    const int64_t C = x.size(dim);
    if (bias.dim() != 1 || bias.size(0) != C)
      fail(op, "bias has shape ", shape_str(bias), " but x has ", C, " channels (dim ", dim, ")");
    BNSetup s;
    s.C = C;
    pc::MidpointBNParams& p = s.p;
    if (!use_batch_stats && !backward) {
      if (!running_mean.has_value() || !running_var.has_value())
        fail(op, "running_mean and running_var are needed when use_batch_stats is False");
    }
    if (running_mean.has_value() != running_var.has_value())
      fail(op, "running_mean and running_var must be given together");
    if (running_mean.has_value()) {
      check_same_device(x, *running_mean, op, "running_mean");
      check_same_device(x, *running_var, op, "running_var");
      const DType rd = float_dtype(*running_mean, op, "running_mean");
      if (float_dtype(*running_var, op, "running_var") != rd)
        fail(op, "running_var dtype differs from running_mean dtype ", dtype_name(rd));
      if (running_mean->dim() != 1 || running_mean->size(0) != C)
        fail(op, "running_mean has shape ", shape_str(*running_mean), " but x has ", C, " channels (dim ", dim, ")");
      if (running_var->numel() != 1) fail(op, "running_var must have one element, got shape ", shape_str(*running_var));
      s.rm = contig(*running_mean);
      s.rv = contig(*running_var);
      p.running_mean = s.rm.const_data_ptr();
      p.running_var = s.rv.const_data_ptr();
      p.running_dtype = rd;
    }
    s.x = contig(x);
    s.w = contig(weight);
    s.b = contig(bias);
    int64_t outer = 1, inner = 1;
    for (int64_t i = 0; i < dim; ++i) outer *= x.size(i);
    for (int64_t i = dim + 1; i < x.dim(); ++i) inner *= x.size(i);
    p.layout.outer = outer;
    p.layout.D = C;
    p.layout.inner = inner;
    if (use_batch_stats && outer * inner == 1)
      fail(op, "expected more than 1 value per channel when training (batch statistics), got input shape ",
           shape_str(x));
    p.x = s.x.const_data_ptr();
    p.x_dtype = xd;
    p.weight = s.w.const_data_ptr();
    p.bias = s.b.const_data_ptr();
    p.w_dtype = wd;
    p.c = curvature(x, c, op);
    p.use_batch_stats = use_batch_stats;
    p.eps = eps;
    return s;
  }

  static ScalarType stats_type(const Tensor& x) {
    return x.scalar_type() == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  }

  static std::tuple<Tensor, Tensor, Tensor> bn(Tensor x, Tensor weight, Tensor bias, Tensor c,
      std::optional<Tensor> running_mean, std::optional<Tensor> running_var, bool use_batch_stats, int64_t dim,
      double eps) {
    const char* op = "poincare_midpoint_batch_norm";
    BNSetup s = bn_setup(op, x, weight, bias, c, running_mean, running_var, use_batch_stats, dim, eps);
    Tensor out = empty_like_shape(x, shape_of(x), x.scalar_type());
    Tensor mean = empty_like_shape(x, {s.C}, stats_type(x));
    Tensor var = empty_like_shape(x, {}, stats_type(x));
    s.p.out = out.mutable_data_ptr();
    s.p.mean = mean.mutable_data_ptr();
    s.p.var = var.mutable_data_ptr();
    Tensor ws = workspace(x, B::bn_workspace_bytes(s.p));
    s.p.workspace = ws.mutable_data_ptr();
    s.p.workspace_bytes = static_cast<size_t>(ws.numel());
    check_status(B::bn_fwd(s.p, x), op);
    return {out, mean, var};
  }

  static std::tuple<Tensor, Tensor, Tensor, Tensor> bn_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias,
      Tensor c, Tensor mean, Tensor var, bool use_batch_stats, int64_t dim, double eps, bool need_x,
      bool need_weight, bool need_bias, bool need_c) {
    const char* op = "poincare_midpoint_batch_norm_backward";
    // The backward reads the forward's statistics instead of the running buffers.
    BNSetup s = bn_setup(op, x, weight, bias, c, std::nullopt, std::nullopt, use_batch_stats, dim, eps, true);
    check_grad(x, grad, shape_of(x), s.p.x_dtype, op);
    check_same_device(x, mean, op, "mean");
    check_same_device(x, var, op, "var");
    if (mean.scalar_type() != stats_type(x) || var.scalar_type() != stats_type(x))
      fail(op, "mean and var must be ", scalar_name(stats_type(x)), " (the forward's statistics)");
    if (mean.numel() != s.C || var.numel() != 1)
      fail(op, "mean must have ", s.C, " elements and var one, got ", shape_str(mean), " and ", shape_str(var));
    Tensor g = contig(grad);
    Tensor mc = contig(mean), vc = contig(var);
    s.p.grad = g.const_data_ptr();
    s.p.mean = const_cast<void*>(mc.const_data_ptr());
    s.p.var = const_cast<void*>(vc.const_data_ptr());
    if (need_c && B::kCuda && !c.is_cuda()) fail(op, "c must be on x's device to get its gradient");
    Tensor dx = need_x ? empty_like_shape(x, shape_of(x), x.scalar_type()) : unused_output(x, x.scalar_type());
    Tensor dwt = need_weight ? empty_like_shape(x, shape_of(weight), weight.scalar_type())
                             : unused_output(x, weight.scalar_type());
    Tensor db = need_bias ? empty_like_shape(x, shape_of(bias), bias.scalar_type())
                          : unused_output(x, bias.scalar_type());
    Tensor dc = grad_c_out(x, c, need_c);
    s.p.grad_x = need_x ? dx.mutable_data_ptr() : nullptr;
    s.p.grad_weight = need_weight ? dwt.mutable_data_ptr() : nullptr;
    s.p.grad_bias = need_bias ? db.mutable_data_ptr() : nullptr;
    s.p.grad_c = need_c ? dc.mutable_data_ptr() : nullptr;
    if (need_x || need_weight || need_bias || need_c) {
      Tensor ws = workspace(x, B::bn_workspace_bytes(s.p));
      s.p.workspace = ws.mutable_data_ptr();
      s.p.workspace_bytes = static_cast<size_t>(ws.numel());
      check_status(B::bn_bwd(s.p, x), op);
    }
    return {dx, dwt, db, dc};
  }

  static void bn_running_update(Tensor running_mean, Tensor running_var, Tensor mean, Tensor var, Tensor c,
                                double momentum, int64_t count) {
    const char* op = "poincare_bn_running_update_";
    check_device_kind(running_mean, B::kCuda, op);
    const DType rd = float_dtype(running_mean, op, "running_mean");
    check_same_device(running_mean, running_var, op, "running_var");
    check_same_device(running_mean, mean, op, "mean");
    check_same_device(running_mean, var, op, "var");
    if (float_dtype(running_var, op, "running_var") != rd) fail(op, "running_var dtype differs from running_mean's");
    const DType sd = float_dtype(mean, op, "mean");
    if (float_dtype(var, op, "var") != sd) fail(op, "var dtype differs from mean's");
    if (!(momentum >= 0 && momentum <= 1)) fail(op, "momentum must be in [0, 1], got ", momentum);
    if (count < 2) fail(op, "count must be >= 2 (unbiased variance), got ", count);
    if (running_mean.dim() != 1 || mean.numel() != running_mean.numel())
      fail(op, "running_mean has shape ", shape_str(running_mean), " but mean has shape ", shape_str(mean));
    if (running_var.numel() != 1 || var.numel() != 1) fail(op, "running_var and var must have one element");
    if (!running_mean.is_contiguous() || !running_var.is_contiguous())
      fail(op, "running_mean and running_var must be contiguous (they are updated in place)");
    Tensor mc = contig(mean), vc = contig(var);
    pc::BNUpdateParams p;
    p.channels = running_mean.numel();
    p.running_mean = running_mean.mutable_data_ptr();
    p.running_var = running_var.mutable_data_ptr();
    p.running_dtype = rd;
    p.mean = mc.const_data_ptr();
    p.var = vc.const_data_ptr();
    p.stats_dtype = sd;
    p.c = curvature(running_mean, c, op);
    p.momentum = momentum;
    p.count = count;
    check_status(B::bn_running_update(p, running_mean), op);
  }
};

}  // namespace poincare_layers_ops
}  // namespace binding
}  // namespace fastnorm

// Registers every Poincaré layer op of backend B on the library fragment m.
#define FASTNORM_REGISTER_POINCARE_LAYERS_IMPLS(m, B)                                                           \
  do {                                                                                                         \
    using _I = ::fastnorm::binding::poincare_layers_ops::Impl<B>;                                               \
    m.impl("poincare_linear", TORCH_BOX(&_I::linear));                                                         \
    m.impl("poincare_linear_backward", TORCH_BOX(&_I::linear_backward));                                       \
    m.impl("poincare_conv2d", TORCH_BOX(&_I::conv2d));                                                         \
    m.impl("poincare_conv2d_backward", TORCH_BOX(&_I::conv2d_backward));                                       \
    m.impl("poincare_midpoint_batch_norm", TORCH_BOX(&_I::bn));                                                \
    m.impl("poincare_midpoint_batch_norm_backward", TORCH_BOX(&_I::bn_backward));                              \
    m.impl("poincare_bn_running_update_", TORCH_BOX(&_I::bn_running_update));                                  \
  } while (0)

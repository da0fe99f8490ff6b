// The boxed op functions of the norm family over a Backend, one per schema in norm.cpp. Kept apart from
// norm_ops.h (the logic) so the CPU and CUDA registrations list the same functions.
#pragma once
#include "norm_ops.h"

namespace fastnorm {
namespace binding {
namespace norm_ops {

template <class B>
std::tuple<Tensor, Tensor, Tensor> layer_norm(Tensor x, std::optional<Tensor> weight, std::optional<Tensor> bias,
                                              double eps, int64_t out_dtype) {
  auto [y, unused, mean, rstd] =
      Impl<B>::ln_forward("layer_norm", x, std::nullopt, false, weight, bias, eps, false, out_dtype);
  return {y, mean, rstd};
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> layer_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor rstd,
                                                       std::optional<Tensor> weight, std::optional<Tensor> bias,
                                                       bool need_dx, bool need_dweight, bool need_dbias) {
  return Impl<B>::ln_backward("layer_norm_backward", dy, std::nullopt, x, mean, rstd, weight, bias, need_dx,
                              need_dweight, need_dbias);
}

template <class B>
std::tuple<Tensor, Tensor> rms_norm(Tensor x, std::optional<Tensor> weight, double eps, std::optional<Tensor> bias,
                                    double offset, int64_t casting, int64_t out_dtype) {
  auto [y, unused, rstd, none] =
      Impl<B>::rms_forward("rms_norm", x, std::nullopt, false, weight, eps, bias, offset, casting, false, out_dtype);
  return {y, rstd};
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> rms_norm_backward(Tensor dy, Tensor x, Tensor rstd, std::optional<Tensor> weight,
                                                     std::optional<Tensor> bias, double offset, int64_t casting,
                                                     bool need_dx, bool need_dweight, bool need_dbias) {
  return Impl<B>::rms_backward("rms_norm_backward", dy, std::nullopt, x, rstd, weight, bias, offset, casting, need_dx,
                               need_dweight, need_dbias);
}

template <class B>
std::tuple<Tensor, Tensor, Tensor, Tensor> add_layer_norm(Tensor x, std::optional<Tensor> residual,
                                                          std::optional<Tensor> weight, std::optional<Tensor> bias,
                                                          double eps, bool residual_in_fp32, int64_t out_dtype) {
  return Impl<B>::ln_forward("add_layer_norm", x, residual, true, weight, bias, eps, residual_in_fp32, out_dtype);
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> add_layer_norm_backward(Tensor dy, std::optional<Tensor> dresidual_out,
                                                           Tensor residual_out, Tensor mean, Tensor rstd,
                                                           std::optional<Tensor> weight, std::optional<Tensor> bias,
                                                           bool need_dweight, bool need_dbias) {
  return Impl<B>::ln_backward("add_layer_norm_backward", dy, dresidual_out, residual_out, mean, rstd, weight, bias,
                              true, need_dweight, need_dbias);
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> add_rms_norm(Tensor x, std::optional<Tensor> residual, std::optional<Tensor> weight,
                                                double eps, std::optional<Tensor> bias, double offset, int64_t casting,
                                                bool residual_in_fp32, int64_t out_dtype) {
  auto [y, res, rstd, none] = Impl<B>::rms_forward("add_rms_norm", x, residual, true, weight, eps, bias, offset,
                                                   casting, residual_in_fp32, out_dtype);
  return {y, res, rstd};
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> add_rms_norm_backward(Tensor dy, std::optional<Tensor> dresidual_out,
                                                         Tensor residual_out, Tensor rstd, std::optional<Tensor> weight,
                                                         std::optional<Tensor> bias, double offset, int64_t casting,
                                                         bool need_dweight, bool need_dbias) {
  return Impl<B>::rms_backward("add_rms_norm_backward", dy, dresidual_out, residual_out, rstd, weight, bias, offset,
                               casting, true, need_dweight, need_dbias);
}

// Registers every norm op for one dispatch key.
#define FASTNORM_REGISTER_NORM_IMPLS(m, B)                                                 \
  m.impl("layer_norm", TORCH_BOX(&fastnorm::binding::norm_ops::layer_norm<B>));            \
  m.impl("layer_norm_backward", TORCH_BOX(&fastnorm::binding::norm_ops::layer_norm_backward<B>)); \
  m.impl("rms_norm", TORCH_BOX(&fastnorm::binding::norm_ops::rms_norm<B>));                \
  m.impl("rms_norm_backward", TORCH_BOX(&fastnorm::binding::norm_ops::rms_norm_backward<B>)); \
  m.impl("add_layer_norm", TORCH_BOX(&fastnorm::binding::norm_ops::add_layer_norm<B>));    \
  m.impl("add_layer_norm_backward", TORCH_BOX(&fastnorm::binding::norm_ops::add_layer_norm_backward<B>)); \
  m.impl("add_rms_norm", TORCH_BOX(&fastnorm::binding::norm_ops::add_rms_norm<B>));        \
  m.impl("add_rms_norm_backward", TORCH_BOX(&fastnorm::binding::norm_ops::add_rms_norm_backward<B>))

}  // namespace norm_ops
}  // namespace binding
}  // namespace fastnorm

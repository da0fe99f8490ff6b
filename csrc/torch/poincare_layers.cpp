// Schemas of the Poincaré layers (specs/poincare.md §2.3: FC, conv2d, midpoint batch norm and its running-stat
// update) and their CPU kernels. The core ops of the family register in poincare.cpp.
#include "poincare_layers_ops.h"

namespace {

struct CpuBackend {
  static constexpr bool kCuda = false;
  using Tensor = torch::stable::Tensor;
  using P = fastnorm::poincare::LinearParams;
  using CP = fastnorm::poincare::Conv2dParams;
  using BP = fastnorm::poincare::MidpointBNParams;
  static fastnorm::Status linear_fwd(const P& p, const Tensor&) { return fastnorm::poincare::linear_fwd(p); }
  static fastnorm::Status linear_bwd(const P& p, const Tensor&) { return fastnorm::poincare::linear_bwd(p); }
  static size_t linear_workspace_bytes(const P& p) { return fastnorm::poincare::linear_workspace_bytes(p); }
  static fastnorm::Status conv2d_fwd(const CP& p, const Tensor&) { return fastnorm::poincare::conv2d_fwd(p); }
  static fastnorm::Status conv2d_bwd(const CP& p, const Tensor&) { return fastnorm::poincare::conv2d_bwd(p); }
  static size_t conv2d_workspace_bytes(const CP& p) { return fastnorm::poincare::conv2d_workspace_bytes(p); }
  static fastnorm::Status bn_fwd(const BP& p, const Tensor&) { return fastnorm::poincare::bn_fwd(p); }
  static fastnorm::Status bn_bwd(const BP& p, const Tensor&) { return fastnorm::poincare::bn_bwd(p); }
  static size_t bn_workspace_bytes(const BP& p) { return fastnorm::poincare::bn_workspace_bytes(p); }
  static fastnorm::Status bn_running_update(const fastnorm::poincare::BNUpdateParams& p, const Tensor&) {
    return fastnorm::poincare::bn_running_update(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("poincare_linear(Tensor x, Tensor weight, Tensor? bias, Tensor c, bool tangent_input, bool tangent_output, "
        "bool project) -> Tensor");
  m.def("poincare_linear_backward(Tensor grad, Tensor x, Tensor weight, Tensor? bias, Tensor c, bool tangent_input, "
        "bool tangent_output, bool project, bool need_x=True, bool need_weight=True, bool need_bias=True, "
        "bool need_c=True) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("poincare_conv2d(Tensor x, Tensor weight, Tensor? bias, Tensor c, int stride_h, int stride_w, int pad_h, "
        "int pad_w, int dil_h, int dil_w) -> Tensor");
  m.def("poincare_conv2d_backward(Tensor grad, Tensor x, Tensor weight, Tensor? bias, Tensor c, int stride_h, "
        "int stride_w, int pad_h, int pad_w, int dil_h, int dil_w, bool need_x=True, bool need_weight=True, "
        "bool need_bias=True, bool need_c=True) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("poincare_midpoint_batch_norm(Tensor x, Tensor weight, Tensor bias, Tensor c, Tensor? running_mean, "
        "Tensor? running_var, bool use_batch_stats, int dim, float eps) -> (Tensor out, Tensor mean, Tensor var)");
  m.def("poincare_midpoint_batch_norm_backward(Tensor grad, Tensor x, Tensor weight, Tensor bias, Tensor c, "
        "Tensor mean, Tensor var, bool use_batch_stats, int dim, float eps, bool need_x=True, bool need_weight=True, "
        "bool need_bias=True, bool need_c=True) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("poincare_bn_running_update_(Tensor(a!) running_mean, Tensor(b!) running_var, Tensor mean, Tensor var, "
        "Tensor c, float momentum, int count) -> ()");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_POINCARE_LAYERS_IMPLS(m, CpuBackend); }

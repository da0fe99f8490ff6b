// Schemas of the Poincaré core ops (specs/poincare.md §2.3) and their CPU kernels. The layers (poincare_linear,
// poincare_conv2d, midpoint batch norm) register theirs in poincare_layers.cpp.
#include "poincare_ops.h"

namespace {

struct CpuPoincareBackend {
  static constexpr bool kCuda = false;
  using Tensor = torch::stable::Tensor;
  using RowOp = fastnorm::poincare::RowOp;
  static fastnorm::Status row_fwd(RowOp op, const fastnorm::poincare::RowOpParams& p, const Tensor&) {
    return fastnorm::poincare::row_fwd(op, p);
  }
  static fastnorm::Status row_bwd(RowOp op, const fastnorm::poincare::RowOpParams& p, const Tensor&) {
    return fastnorm::poincare::row_bwd(op, p);
  }
  static size_t row_workspace_bytes(RowOp op, const fastnorm::poincare::RowOpParams& p) {
    return fastnorm::poincare::row_workspace_bytes(op, p);
  }
  static fastnorm::Status midpoint_fwd(const fastnorm::poincare::MidpointParams& p, const Tensor&) {
    return fastnorm::poincare::midpoint_fwd(p);
  }
  static fastnorm::Status midpoint_bwd(const fastnorm::poincare::MidpointParams& p, const Tensor&) {
    return fastnorm::poincare::midpoint_bwd(p);
  }
  static size_t midpoint_workspace_bytes(const fastnorm::poincare::MidpointParams& p, bool backward) {
    return fastnorm::poincare::midpoint_workspace_bytes(p, backward);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("poincare_project(Tensor x, Tensor c, int dim, float eps) -> Tensor");
  m.def("poincare_project_backward(Tensor grad, Tensor x, Tensor c, int dim, float eps, bool need_x=True, "
        "bool need_c=True) -> (Tensor, Tensor)");
  m.def("poincare_mobius_add(Tensor x, Tensor y, Tensor c, int dim, bool project) -> Tensor");
  m.def("poincare_mobius_add_backward(Tensor grad, Tensor x, Tensor y, Tensor c, int dim, bool project, "
        "bool need_x=True, bool need_y=True, bool need_c=True) -> (Tensor, Tensor, Tensor)");
  m.def("poincare_mobius_scalar_mul(Tensor r, Tensor x, Tensor c, int dim, bool project) -> Tensor");
  m.def("poincare_mobius_scalar_mul_backward(Tensor grad, Tensor r, Tensor x, Tensor c, int dim, bool project, "
        "bool need_r=True, bool need_x=True, bool need_c=True) -> (Tensor, Tensor, Tensor)");
  m.def("poincare_expmap0(Tensor v, Tensor c, int dim, bool project) -> Tensor");
  m.def("poincare_expmap0_backward(Tensor grad, Tensor v, Tensor c, int dim, bool project, bool need_v=True, "
        "bool need_c=True) -> (Tensor, Tensor)");
  m.def("poincare_logmap0(Tensor y, Tensor c, int dim) -> Tensor");
  m.def("poincare_logmap0_backward(Tensor grad, Tensor y, Tensor c, int dim, bool need_y=True, bool need_c=True) "
        "-> (Tensor, Tensor)");
  m.def("poincare_expmap(Tensor x, Tensor v, Tensor c, int dim, bool project) -> Tensor");
  m.def("poincare_expmap_backward(Tensor grad, Tensor x, Tensor v, Tensor c, int dim, bool project, "
        "bool need_x=True, bool need_v=True, bool need_c=True) -> (Tensor, Tensor, Tensor)");
  m.def("poincare_logmap(Tensor x, Tensor y, Tensor c, int dim) -> Tensor");
  m.def("poincare_logmap_backward(Tensor grad, Tensor x, Tensor y, Tensor c, int dim, bool need_x=True, "
        "bool need_y=True, bool need_c=True) -> (Tensor, Tensor, Tensor)");
  m.def("poincare_dist(Tensor x, Tensor y, Tensor c, int dim, bool keepdim) -> Tensor");
  m.def("poincare_dist_backward(Tensor grad, Tensor x, Tensor y, Tensor c, int dim, bool keepdim, "
        "bool need_x=True, bool need_y=True, bool need_c=True) -> (Tensor, Tensor, Tensor)");
  m.def("poincare_conformal_factor(Tensor x, Tensor c, int dim, bool keepdim) -> Tensor");
  m.def("poincare_conformal_factor_backward(Tensor grad, Tensor x, Tensor c, int dim, bool keepdim, "
        "bool need_x=True, bool need_c=True) -> (Tensor, Tensor)");
  m.def("poincare_gyration(Tensor u, Tensor v, Tensor w, Tensor c, int dim) -> Tensor");
  m.def("poincare_gyration_backward(Tensor grad, Tensor u, Tensor v, Tensor w, Tensor c, int dim, "
        "bool need_u=True, bool need_v=True, bool need_w=True, bool need_c=True) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("poincare_transp(Tensor x, Tensor y, Tensor v, Tensor c, int dim) -> Tensor");
  m.def("poincare_transp_backward(Tensor grad, Tensor x, Tensor y, Tensor v, Tensor c, int dim, "
        "bool need_x=True, bool need_y=True, bool need_v=True, bool need_c=True) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def("poincare_midpoint(Tensor x, Tensor? weights, Tensor c, int reduce_dim, int dim, bool keepdim, "
        "bool project) -> Tensor");
  m.def("poincare_midpoint_backward(Tensor grad, Tensor x, Tensor? weights, Tensor c, int reduce_dim, int dim, "
        "bool keepdim, bool project, bool need_x=True, bool need_weights=True, bool need_c=True) "
        "-> (Tensor, Tensor, Tensor)");
  m.def("poincare_residual(Tensor a, Tensor b, Tensor c, int dim) -> Tensor");
  m.def("poincare_residual_backward(Tensor grad, Tensor a, Tensor b, Tensor c, int dim, bool need_a=True, "
        "bool need_b=True, bool need_c=True) -> (Tensor, Tensor, Tensor)");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_POINCARE_IMPLS(m, CpuPoincareBackend); }

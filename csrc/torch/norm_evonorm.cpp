// Schemas of EvoNorm B0/S0 (specs/norm.md §2.4) and their CPU kernels. semantics travels as an int:
// 0 timm, 1 tf. S0's group count arrives already resolved (fastnorm.evonorm_s0 applies group_size and
// tf's lowering), so the op only checks that it divides C.
#include "norm_evonorm_ops.h"

namespace {

struct CpuEvoBackend {
  static constexpr bool kCuda = false;
  using Tensor = torch::stable::Tensor;
  static fastnorm::Status b0_fwd(const fastnorm::norm::EvoNormB0Params& p, const Tensor&) {
    return fastnorm::norm::evonorm_b0_fwd(p);
  }
  static fastnorm::Status b0_bwd(const fastnorm::norm::EvoNormB0BwdParams& p, const Tensor&) {
    return fastnorm::norm::evonorm_b0_bwd(p);
  }
  static fastnorm::Status s0_fwd(const fastnorm::norm::EvoNormS0Params& p, const Tensor&) {
    return fastnorm::norm::evonorm_s0_fwd(p);
  }
  static fastnorm::Status s0_bwd(const fastnorm::norm::EvoNormS0BwdParams& p, const Tensor&) {
    return fastnorm::norm::evonorm_s0_bwd(p);
  }
  static size_t b0_fwd_ws(const fastnorm::norm::EvoNormB0Params&) { return 0; }  // the CPU forward needs none
  static size_t s0_fwd_ws(const fastnorm::norm::EvoNormS0Params&) { return 0; }
  static size_t b0_ws(const fastnorm::norm::EvoNormB0BwdParams& p) {
    return fastnorm::norm::evonorm_b0_bwd_workspace_bytes(p);
  }
  static size_t s0_ws(const fastnorm::norm::EvoNormS0BwdParams& p) {
    return fastnorm::norm::evonorm_s0_bwd_workspace_bytes(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("evonorm_b0(Tensor x, Tensor weight, Tensor bias, Tensor v, Tensor running_var, bool training, "
        "float momentum, float eps, int semantics) -> (Tensor y, Tensor left_var, Tensor inst_std, "
        "Tensor new_running_var)");
  m.def("evonorm_b0_backward(Tensor dy, Tensor x, Tensor weight, Tensor v, Tensor left_var, Tensor inst_std, "
        "bool training, float eps, int semantics) -> (Tensor dx, Tensor dweight, Tensor dbias, Tensor dv)");
  m.def("evonorm_s0(Tensor x, Tensor weight, Tensor bias, Tensor v, int groups, float eps) "
        "-> (Tensor y, Tensor group_mean, Tensor group_rstd)");
  m.def("evonorm_s0_backward(Tensor dy, Tensor x, Tensor weight, Tensor v, Tensor group_mean, Tensor group_rstd, "
        "int groups) -> (Tensor dx, Tensor dweight, Tensor dbias, Tensor dv)");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_EVONORM_IMPLS(m, CpuEvoBackend); }

// PowerNorm schemas (specs/norm.md §2.4) and their CPU kernels. quirks travels as an int: 0 official, 1 paper.
#include "norm_power_ops.h"

namespace {

struct CpuBackend {
  static constexpr bool kCuda = false;
  using Tensor = torch::stable::Tensor;
  static fastnorm::Status fwd(const fastnorm::norm::PowerNormParams& p, const Tensor&) {
    return fastnorm::norm::power_norm_fwd(p);
  }
  static fastnorm::Status bwd(const fastnorm::norm::PowerNormBwdParams& p, const Tensor&) {
    return fastnorm::norm::power_norm_bwd(p);
  }
  static fastnorm::Status eval(const fastnorm::norm::PowerNormEvalParams& p, const Tensor&) {
    return fastnorm::norm::power_norm_eval(p);
  }
  static size_t fwd_workspace_bytes(const fastnorm::norm::PowerNormParams& p) {
    return fastnorm::norm::power_norm_fwd_workspace_bytes(p);
  }
  static size_t bwd_workspace_bytes(const fastnorm::norm::PowerNormBwdParams& p) {
    return fastnorm::norm::power_norm_bwd_workspace_bytes(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("power_norm(Tensor x, Tensor? pad_mask, Tensor weight, Tensor bias, Tensor running_phi, int iteration, "
        "int warmup_iters, float eps, float alpha_fwd, int group_num, float group_eps, bool batch_first, int quirks) "
        "-> (Tensor y, Tensor group_rstd, Tensor x2, Tensor denom, Tensor new_running_phi)");
  m.def("power_norm_backward(Tensor dy, Tensor x, Tensor? pad_mask, Tensor group_rstd, Tensor x2, Tensor denom, "
        "Tensor weight, Tensor ema_gz, float eps, float alpha_bkw, int group_num, bool batch_first, int quirks) "
        "-> (Tensor dx, Tensor dweight, Tensor dbias, Tensor new_ema_gz)");
  m.def("power_norm_eval(Tensor x, Tensor weight, Tensor bias, Tensor running_phi, float eps, int group_num, "
        "float group_eps) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_POWER_NORM_IMPLS(m, CpuBackend); }

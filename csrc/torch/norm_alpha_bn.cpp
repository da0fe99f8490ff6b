// Schemas of alpha_batch_norm / alpha_batch_norm_backward (specs/norm.md §2.4) and their CPU kernels.
#include "norm_alpha_bn_ops.h"

namespace {

struct CpuAlphaBnBackend {
  static constexpr bool kCuda = false;
  using Tensor = torch::stable::Tensor;
  static size_t alpha_batch_norm_fwd_workspace_bytes(const fastnorm::norm::AlphaBatchNormParams& p) {
    return fastnorm::norm::alpha_batch_norm_fwd_workspace_bytes(p);
  }
  static size_t alpha_batch_norm_bwd_workspace_bytes(const fastnorm::norm::AlphaBatchNormBwdParams& p) {
    return fastnorm::norm::alpha_batch_norm_bwd_workspace_bytes(p);
  }
  static fastnorm::Status alpha_batch_norm_fwd(const fastnorm::norm::AlphaBatchNormParams& p, void* ws, const Tensor&) {
    return fastnorm::norm::alpha_batch_norm_fwd(p, ws);
  }
  static fastnorm::Status alpha_batch_norm_bwd(const fastnorm::norm::AlphaBatchNormBwdParams& p, const Tensor&) {
    return fastnorm::norm::alpha_batch_norm_bwd(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("alpha_batch_norm(Tensor x, Tensor running_mean, Tensor running_var, Tensor? weight, Tensor? bias, "
        "float alpha_source, float eps, bool unbiased_batch_var=False) -> (Tensor y, Tensor mean, Tensor rstd)");
  m.def("alpha_batch_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor? weight, float alpha_source, "
        "bool unbiased_batch_var, bool need_dx=True, bool need_dweight=True, bool need_dbias=True) "
        "-> (Tensor dx, Tensor dweight, Tensor dbias)");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_ALPHA_BN_IMPLS(m, CpuAlphaBnBackend); }

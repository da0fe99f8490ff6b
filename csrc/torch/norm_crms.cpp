// Schemas of crms_norm / crms_norm_backward (specs/norm.md §2.4) and their CPU kernels.
#include "norm_crms_ops.h"

namespace {

struct CpuCrmsBackend {
  static constexpr bool kCuda = false;
  using Tensor = torch::stable::Tensor;
  static fastnorm::Status crms_norm_fwd(const fastnorm::norm::CRMSNormParams& p, const Tensor&) {
    return fastnorm::norm::crms_norm_fwd(p);
  }
  static fastnorm::Status crms_norm_bwd(const fastnorm::norm::CRMSNormBwdParams& p, const Tensor&) {
    return fastnorm::norm::crms_norm_bwd(p);
  }
  static size_t crms_norm_bwd_workspace_bytes(const fastnorm::norm::CRMSNormBwdParams& p) {
    return fastnorm::norm::crms_norm_bwd_workspace_bytes(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("crms_norm(Tensor x, Tensor? weight, Tensor? bias, float eps, int out_dtype=-1) -> (Tensor y, Tensor rstd)");
  m.def("crms_norm_backward(Tensor dy, Tensor x, Tensor rstd, Tensor? weight, Tensor? bias, bool need_dx=True, "
        "bool need_dweight=True, bool need_dbias=True) -> (Tensor dx, Tensor dweight, Tensor dbias)");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_CRMS_IMPLS(m, CpuCrmsBackend); }

// Schemas of Unified Normalization and channel_affine (specs/norm.md §2.4) and their CPU kernels.
#include "norm_unified_ops.h"

namespace {

struct CpuBackend {
  static constexpr bool kCuda = false;
  using Tensor = torch::stable::Tensor;
  static size_t unified_norm_fwd_workspace_bytes(const fastnorm::norm::UnifiedNormParams& p) {
    return fastnorm::norm::unified_norm_fwd_workspace_bytes(p);
  }
  static size_t unified_norm_bwd_workspace_bytes(const fastnorm::norm::UnifiedNormBwdParams& p) {
    return fastnorm::norm::unified_norm_bwd_workspace_bytes(p);
  }
  static fastnorm::Status unified_norm_fwd(const fastnorm::norm::UnifiedNormParams& p, const Tensor&) {
    return fastnorm::norm::unified_norm_fwd(p);
  }
  static fastnorm::Status unified_norm_bwd(const fastnorm::norm::UnifiedNormBwdParams& p, const Tensor&) {
    return fastnorm::norm::unified_norm_bwd(p);
  }
  static fastnorm::Status channel_affine(const fastnorm::norm::ChannelAffineParams& p, const Tensor&) {
    return fastnorm::norm::channel_affine(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("unified_norm(Tensor x, Tensor? pad_mask, Tensor weight, Tensor bias, Tensor running_var, Tensor buffer_x2, "
        "Tensor skip_counter, int iteration, int warmup_iters, bool outlier_filtration, float eps, float momentum, "
        "int compensation_start) -> (Tensor y, Tensor var, Tensor rho, Tensor skip, Tensor new_running_var, "
        "Tensor new_buffer_x2, Tensor new_skip_counter)");
  m.def("unified_norm_backward(Tensor dy, Tensor x, Tensor var, Tensor rho, Tensor skip, Tensor weight, "
        "Tensor ema_gz, Tensor buffer_gz, int iteration, int warmup_iters, float eps, float momentum) "
        "-> (Tensor dx, Tensor dweight, Tensor dbias, Tensor new_ema_gz, Tensor new_buffer_gz)");
  m.def("channel_affine(Tensor x, Tensor scale, Tensor shift, int channel_dim) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_UNIFIED_IMPLS(m, CpuBackend); }

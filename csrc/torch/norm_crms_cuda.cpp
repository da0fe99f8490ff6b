// CUDA kernels of crms_norm / crms_norm_backward, registered for the CUDA key (schemas in norm_crms.cpp).
// Launches go on torch's current stream of x's device, with x's device made current.

#include "binding_cuda.h"
#include "fastnorm/norm_crms_cuda.h"
#include "norm_crms_ops.h"

namespace {

using fastnorm::binding::current_stream;

struct CudaCrmsBackend {
  static constexpr bool kCuda = true;
  using Tensor = torch::stable::Tensor;
  static fastnorm::Status crms_norm_fwd(const fastnorm::norm::CRMSNormParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::crms_norm_fwd(p, current_stream(x));
  }
  static fastnorm::Status crms_norm_bwd(const fastnorm::norm::CRMSNormBwdParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::crms_norm_bwd(p, current_stream(x));
  }
  static size_t crms_norm_bwd_workspace_bytes(const fastnorm::norm::CRMSNormBwdParams& p) {
    return fastnorm::norm::cuda::crms_norm_bwd_workspace_bytes(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_CRMS_IMPLS(m, CudaCrmsBackend); }

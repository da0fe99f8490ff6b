// CUDA kernels of PowerNorm, registered for the CUDA dispatch key (schemas in norm_power.cpp). Launches go
// on torch's current stream of x's device, with x's device made current.

#include "binding_cuda.h"
#include "fastnorm/norm_power_cuda.h"
#include "norm_power_ops.h"

namespace {

using fastnorm::binding::current_stream;

struct CudaBackend {
  static constexpr bool kCuda = true;
  using Tensor = torch::stable::Tensor;
  static fastnorm::Status fwd(const fastnorm::norm::PowerNormParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::power_norm_fwd(p, current_stream(x));
  }
  static fastnorm::Status bwd(const fastnorm::norm::PowerNormBwdParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::power_norm_bwd(p, current_stream(x));
  }
  static fastnorm::Status eval(const fastnorm::norm::PowerNormEvalParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::power_norm_eval(p, current_stream(x));
  }
  static size_t fwd_workspace_bytes(const fastnorm::norm::PowerNormParams& p) {
    return fastnorm::norm::cuda::power_norm_fwd_workspace_bytes(p);
  }
  static size_t bwd_workspace_bytes(const fastnorm::norm::PowerNormBwdParams& p) {
    return fastnorm::norm::cuda::power_norm_bwd_workspace_bytes(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_POWER_NORM_IMPLS(m, CudaBackend); }

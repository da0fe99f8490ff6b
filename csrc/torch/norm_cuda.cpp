// CUDA kernels of the norm family, registered for the CUDA dispatch key. The schemas live in norm.cpp
// (fastnorm._C). Launches go on torch's current stream of x's device, with x's device made current.

#include "binding_cuda.h"
#include "fastnorm/norm_cuda.h"
#include "norm_impls.h"

namespace {

using fastnorm::binding::current_stream;

struct CudaBackend {
  static constexpr bool kCuda = true;
  using Tensor = torch::stable::Tensor;
  static fastnorm::Status layer_norm_fwd(const fastnorm::norm::LayerNormParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::layer_norm_fwd(p, current_stream(x));
  }
  static fastnorm::Status layer_norm_bwd(const fastnorm::norm::LayerNormBwdParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::layer_norm_bwd(p, current_stream(x));
  }
  static fastnorm::Status rms_norm_fwd(const fastnorm::norm::RMSNormParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::rms_norm_fwd(p, current_stream(x));
  }
  static fastnorm::Status rms_norm_bwd(const fastnorm::norm::RMSNormBwdParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::rms_norm_bwd(p, current_stream(x));
  }
  static size_t layer_norm_bwd_workspace_bytes(const fastnorm::norm::LayerNormBwdParams& p) {
    return fastnorm::norm::cuda::layer_norm_bwd_workspace_bytes(p);
  }
  static size_t rms_norm_bwd_workspace_bytes(const fastnorm::norm::RMSNormBwdParams& p) {
    return fastnorm::norm::cuda::rms_norm_bwd_workspace_bytes(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_NORM_IMPLS(m, CudaBackend); }

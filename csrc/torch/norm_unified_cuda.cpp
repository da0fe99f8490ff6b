// CUDA kernels of Unified Normalization and channel_affine, registered for the CUDA dispatch key. The
// schemas live in norm_unified.cpp (fastnorm._C). Launches go on torch's current stream of x's device,
// under a device guard; nothing synchronises (UN's `skip` stays on the device).

#include "binding_cuda.h"
#include "fastnorm/norm_unified_cuda.h"
#include "norm_unified_ops.h"

namespace {

using fastnorm::binding::current_stream;

struct CudaBackend {
  static constexpr bool kCuda = true;
  using Tensor = torch::stable::Tensor;
  static size_t unified_norm_fwd_workspace_bytes(const fastnorm::norm::UnifiedNormParams& p) {
    return fastnorm::norm::cuda::unified_norm_fwd_workspace_bytes(p);
  }
  static size_t unified_norm_bwd_workspace_bytes(const fastnorm::norm::UnifiedNormBwdParams& p) {
    return fastnorm::norm::cuda::unified_norm_bwd_workspace_bytes(p);
  }
  static fastnorm::Status unified_norm_fwd(const fastnorm::norm::UnifiedNormParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::unified_norm_fwd(p, current_stream(x));
  }
  static fastnorm::Status unified_norm_bwd(const fastnorm::norm::UnifiedNormBwdParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::unified_norm_bwd(p, current_stream(x));
  }
  static fastnorm::Status channel_affine(const fastnorm::norm::ChannelAffineParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::channel_affine(p, current_stream(x));
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_UNIFIED_IMPLS(m, CudaBackend); }

// CUDA kernels of EvoNorm B0/S0, registered for the CUDA dispatch key (schemas in norm_evonorm.cpp).
// Launches go on torch's current stream of x's device, with x's device made current.

#include "binding_cuda.h"
#include "fastnorm/norm_evonorm_cuda.h"
#include "norm_evonorm_ops.h"

namespace {

using fastnorm::binding::current_stream;

struct CudaEvoBackend {
  static constexpr bool kCuda = true;
  using Tensor = torch::stable::Tensor;
  static fastnorm::Status b0_fwd(const fastnorm::norm::EvoNormB0Params& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::evonorm_b0_fwd(p, current_stream(x));
  }
  static fastnorm::Status b0_bwd(const fastnorm::norm::EvoNormB0BwdParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::evonorm_b0_bwd(p, current_stream(x));
  }
  static fastnorm::Status s0_fwd(const fastnorm::norm::EvoNormS0Params& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::evonorm_s0_fwd(p, current_stream(x));
  }
  static fastnorm::Status s0_bwd(const fastnorm::norm::EvoNormS0BwdParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::evonorm_s0_bwd(p, current_stream(x));
  }
  static size_t b0_fwd_ws(const fastnorm::norm::EvoNormB0Params& p) {
    return fastnorm::norm::cuda::evonorm_b0_fwd_workspace_bytes(p);
  }
  static size_t s0_fwd_ws(const fastnorm::norm::EvoNormS0Params& p) {
    return fastnorm::norm::cuda::evonorm_s0_fwd_workspace_bytes(p);
  }
  static size_t b0_ws(const fastnorm::norm::EvoNormB0BwdParams& p) {
    return fastnorm::norm::cuda::evonorm_b0_bwd_workspace_bytes(p);
  }
  static size_t s0_ws(const fastnorm::norm::EvoNormS0BwdParams& p) {
    return fastnorm::norm::cuda::evonorm_s0_bwd_workspace_bytes(p);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_EVONORM_IMPLS(m, CudaEvoBackend); }

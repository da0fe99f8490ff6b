// CUDA kernels of alpha_batch_norm / alpha_batch_norm_backward, registered for the CUDA key (schemas in
// norm_alpha_bn.cpp). Launches go on torch's current stream of x's device, with x's device made current.

#include "binding_cuda.h"
#include "fastnorm/norm_alpha_bn_cuda.h"
#include "norm_alpha_bn_ops.h"

namespace {

using fastnorm::binding::current_stream;

struct CudaAlphaBnBackend {
  static constexpr bool kCuda = true;
  using Tensor = torch::stable::Tensor;
  static size_t alpha_batch_norm_fwd_workspace_bytes(const fastnorm::norm::AlphaBatchNormParams& p) {
    return fastnorm::norm::cuda::alpha_batch_norm_fwd_workspace_bytes(p);
  }
  static size_t alpha_batch_norm_bwd_workspace_bytes(const fastnorm::norm::AlphaBatchNormBwdParams& p) {
    return fastnorm::norm::cuda::alpha_batch_norm_bwd_workspace_bytes(p);
  }
  static fastnorm::Status alpha_batch_norm_fwd(const fastnorm::norm::AlphaBatchNormParams& p, void* ws, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::alpha_batch_norm_fwd(p, ws, current_stream(x));
  }
  static fastnorm::Status alpha_batch_norm_bwd(const fastnorm::norm::AlphaBatchNormBwdParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::norm::cuda::alpha_batch_norm_bwd(p, current_stream(x));
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_ALPHA_BN_IMPLS(m, CudaAlphaBnBackend); }

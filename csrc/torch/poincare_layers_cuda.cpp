// CUDA kernels of the Poincaré layers, registered for the CUDA dispatch key (schemas: poincare_layers.cpp in
// fastnorm._C). Launches go on torch's current stream of x's device, under a device guard; the workspace comes
// from torch's caching allocator.
#include "binding_cuda.h"
#include "fastnorm/poincare_layers_cuda.h"
#include "poincare_layers_ops.h"

namespace {

using fastnorm::binding::current_stream;
using fastnorm::binding::Tensor;
namespace pc = fastnorm::poincare;

struct CudaBackend {
  static constexpr bool kCuda = true;
  using Guard = torch::stable::accelerator::DeviceGuard;
  static fastnorm::Status linear_fwd(const pc::LinearParams& p, const Tensor& x) {
    Guard g(x.get_device_index());
    return pc::cuda::linear_fwd(p, current_stream(x));
  }
  static fastnorm::Status linear_bwd(const pc::LinearParams& p, const Tensor& x) {
    Guard g(x.get_device_index());
    return pc::cuda::linear_bwd(p, current_stream(x));
  }
  static size_t linear_workspace_bytes(const pc::LinearParams& p) { return pc::cuda::linear_workspace_bytes(p); }
  static fastnorm::Status conv2d_fwd(const pc::Conv2dParams& p, const Tensor& x) {
    Guard g(x.get_device_index());
    return pc::cuda::conv2d_fwd(p, current_stream(x));
  }
  static fastnorm::Status conv2d_bwd(const pc::Conv2dParams& p, const Tensor& x) {
    Guard g(x.get_device_index());
    return pc::cuda::conv2d_bwd(p, current_stream(x));
  }
  static size_t conv2d_workspace_bytes(const pc::Conv2dParams& p) { return pc::cuda::conv2d_workspace_bytes(p); }
  static fastnorm::Status bn_fwd(const pc::MidpointBNParams& p, const Tensor& x) {
    Guard g(x.get_device_index());
    return pc::cuda::bn_fwd(p, current_stream(x));
  }
  static fastnorm::Status bn_bwd(const pc::MidpointBNParams& p, const Tensor& x) {
    Guard g(x.get_device_index());
    return pc::cuda::bn_bwd(p, current_stream(x));
  }
  static size_t bn_workspace_bytes(const pc::MidpointBNParams& p) { return pc::cuda::bn_workspace_bytes(p); }
  static fastnorm::Status bn_running_update(const pc::BNUpdateParams& p, const Tensor& x) {
    Guard g(x.get_device_index());
    return pc::cuda::bn_running_update(p, current_stream(x));
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_POINCARE_LAYERS_IMPLS(m, CudaBackend); }

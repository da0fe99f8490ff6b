// CUDA kernels of the Poincaré core ops, registered for the CUDA key (schemas in poincare.cpp). Launches go on
// torch's current stream of x's device, with x's device made current. No host sync: a CPU c is read on the host
// (it is host memory), a CUDA c is read by the kernels.
#include "binding_cuda.h"
#include "fastnorm/poincare_cuda.h"
#include "poincare_ops.h"

namespace {

using fastnorm::binding::current_stream;

struct CudaPoincareBackend {
  static constexpr bool kCuda = true;
  using Tensor = torch::stable::Tensor;
  using RowOp = fastnorm::poincare::RowOp;
  static fastnorm::Status row_fwd(RowOp op, const fastnorm::poincare::RowOpParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::poincare::cuda::row_fwd(op, p, current_stream(x));
  }
  static fastnorm::Status row_bwd(RowOp op, const fastnorm::poincare::RowOpParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::poincare::cuda::row_bwd(op, p, current_stream(x));
  }
  static size_t row_workspace_bytes(RowOp op, const fastnorm::poincare::RowOpParams& p) {
    return fastnorm::poincare::cuda::row_workspace_bytes(op, p);
  }
  static fastnorm::Status midpoint_fwd(const fastnorm::poincare::MidpointParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::poincare::cuda::midpoint_fwd(p, current_stream(x));
  }
  static fastnorm::Status midpoint_bwd(const fastnorm::poincare::MidpointParams& p, const Tensor& x) {
    torch::stable::accelerator::DeviceGuard guard(x.get_device_index());
    return fastnorm::poincare::cuda::midpoint_bwd(p, current_stream(x));
  }
  static size_t midpoint_workspace_bytes(const fastnorm::poincare::MidpointParams& p, bool backward) {
    return fastnorm::poincare::cuda::midpoint_workspace_bytes(p, backward);
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_POINCARE_IMPLS(m, CudaPoincareBackend); }

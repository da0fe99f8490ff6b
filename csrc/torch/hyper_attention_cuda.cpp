// CUDA kernels of the five hyper_attention ops, registered for the CUDA dispatch key. The schemas, argument checks
// and output allocation live in hyper_attention.cpp / hyper_attention_ops.h (fastnorm._C); this file only supplies
// the CUDA backend: every call runs under a device guard on torch's current stream of the inputs' device, and
// workspaces come from torch's caching allocator (allocated by hyper_attention_ops.h with the sizes below).

#include "binding_cuda.h"
#include "fastnorm/hyper_attention.h"
#include "hyper_attention_ops.h"

namespace {

using fastnorm::Status;
using fastnorm::binding::current_stream;
using fastnorm::binding::Tensor;
namespace ha = fastnorm::hyper_attention;

struct CudaBackend {
  static constexpr bool kCuda = true;
  static Status lsh_hash(const ha::HyperAttnHashParams& p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return ha::cuda::lsh_hash(p, current_stream(ref));
  }
  static size_t plan_ws(const ha::HyperAttnProblem& p, int32_t r) { return ha::cuda::plan_workspace_size(p, r); }
  static Status plan(const ha::HyperAttnProblem& p, const ha::HyperAttnPlanInputs& in, const ha::HyperAttnPlan& pl,
                     void* ws, size_t bytes, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return ha::cuda::plan(p, in, pl, ws, bytes, current_stream(ref));
  }
  static size_t fwd_ws(const ha::HyperAttnProblem& p) { return ha::cuda::forward_workspace_size(p); }
  static Status forward(const ha::HyperAttnProblem& p, const ha::HyperAttnPlan& pl, const ha::HyperAttnOutput& o,
                        void* ws, size_t bytes, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return ha::cuda::forward(p, pl, o, ws, bytes, current_stream(ref));
  }
  static size_t bwd_ws(const ha::HyperAttnProblem& p) { return ha::cuda::backward_workspace_size(p); }
  static Status backward(const ha::HyperAttnProblem& p, const ha::HyperAttnPlan& pl, const ha::HyperAttnGrads& g,
                         void* ws, size_t bytes, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return ha::cuda::backward(p, pl, g, ws, bytes, current_stream(ref));
  }
  static Status merge(const ha::HyperAttnMergeParams& p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    return ha::cuda::merge(p, current_stream(ref));
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_HYPER_ATTENTION_IMPLS(m, CudaBackend); }

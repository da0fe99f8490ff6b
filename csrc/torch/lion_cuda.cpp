// CUDA kernel of lion_step_, registered for the CUDA dispatch key. The schemas live in lion.cpp
// (fastnorm._C). Launches go on torch's current stream of the params' device, under a device guard.

#include "binding_cuda.h"
#include "fastnorm/lion_cuda.h"
#include "lion_ops.h"

namespace {

using fastnorm::binding::current_stream;
using fastnorm::binding::Tensor;

struct CudaBackend {
  static constexpr bool kCuda = true;
  // A CPU lr / sr_step is read on the host, which a CUDA graph would bake in: refused during capture.
  static bool host_scalars_readable(const Tensor& ref) {
    cudaStreamCaptureStatus st = cudaStreamCaptureStatusNone;
    return cudaStreamIsCapturing(current_stream(ref), &st) == cudaSuccess && st == cudaStreamCaptureStatusNone;
  }
  static fastnorm::Status step(const fastnorm::lion::LionStepParams& p, const Tensor& ref) {
    torch::stable::accelerator::DeviceGuard guard(ref.get_device_index());
    fastnorm::lion::LionStepParams q = p;
    Tensor ws;  // cautious counts, from torch's caching allocator (graph-safe; the kernel clears them)
    const size_t bytes = fastnorm::lion::workspace_bytes(p);
    if (bytes > 0) {
      ws = torch::stable::new_empty(ref, std::vector<int64_t>{static_cast<int64_t>(bytes)},
                                    torch::headeronly::ScalarType::Byte);
      q.workspace = ws.data_ptr();
      q.workspace_size = bytes;
    }
    return fastnorm::lion::cuda::step(q, current_stream(ref));
  }
};

}  // namespace

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CUDA, m) { FASTNORM_REGISTER_LION_IMPLS(m, CudaBackend); }

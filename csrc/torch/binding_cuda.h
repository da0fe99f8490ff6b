// Helpers shared by every family's CUDA registration: torch's current stream of a tensor's device. (The one
// symbol of CUDA torch the module needs, aoti_torch_get_current_cuda_stream, resolves when it is loaded.)
#pragma once
#include <cuda_runtime_api.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/tensor.h>

namespace fastnorm {
namespace binding {

inline cudaStream_t current_stream(const torch::stable::Tensor& x) {
  void* s = nullptr;
  TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(x.get_device_index(), &s));
  return static_cast<cudaStream_t>(s);
}

}  // namespace binding
}  // namespace fastnorm

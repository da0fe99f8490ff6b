// fastnorm public C++ API: the Lion optimizer step (specs/lion.md). Torch-free.
//
// One call updates many tensors in place. For each element (opmath T = float32, float64 for float64 params):
//   c = b1*g + a1*m                       (product rounded, then one FMA)
//   u = sign(c)                           (sign(+-0) = 0; NaN per nan_policy; cautious: s*q where s*g > 0)
//   p = fma(-lr, u, p*(1 - delta))        (decay and step are two roundings)
//   m = b2*g + a2*m                       (stored in the state dtype, round to nearest even)
// CPU and CUDA evaluate the same FASTNORM_HD function (detail/lion_math.h) and agree bitwise.
//
// Dtypes: params and grads P in {Float32, Float64, Float16, BFloat16}; exp_avg S = P or Float32 (Float64 for
// Float64 params); master weights Float32 (16-bit P, Float32 S only).
// Status of validate() and the steps: Ok (also for n_tensors == 0 and empty tensors); Unsupported for a dtype
// outside these rules; InvalidArgument for a bad hyper-parameter (lr not finite and >= 0, beta1/beta2 outside
// [0, 1), weight_decay not finite and >= 0, decay_lr_power not in {0, 1, 2}, decay_ref not finite and > 0,
// cautious_min_frac outside (0, 1], unknown nan_policy), master weights or stochastic rounding with the wrong
// dtypes, negative numel, or a null pointer of a non-empty tensor.
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace lion {

// One tensor of a call: flat dense views of numel elements, all with the same layout.
// `slot` is the tensor's position in the caller's lists; it seeds stochastic rounding, so bucketing
// or dropping empty tensors does not change which random bits an element gets.
struct LionTensor {
  void* param = nullptr;        // P
  const void* grad = nullptr;   // P, read only
  void* exp_avg = nullptr;      // S
  void* master = nullptr;       // float32, only when LionStepParams::has_master
  int64_t numel = 0;
  uint32_t slot = 0;
};

enum class NanPolicy : int32_t {
  Propagate = 0,  // NaN c gives a NaN step: p and m become NaN (divergence shows at once)
  Torch = 1,      // NaN c gives sign 0, as torch.sign: p keeps its decayed value, m stays NaN
};

struct LionStepParams {
  const LionTensor* tensors = nullptr;
  int64_t n_tensors = 0;
  DType param_dtype = DType::Float32;  // P: Float32, Float64, Float16, BFloat16 (grads have P too)
  DType state_dtype = DType::Float32;  // S: P or Float32 (Float64 for Float64 params)
  bool has_master = false;             // float32 master weights (P 16-bit, S Float32)

  // Learning rate: `lr`, or when lr_device is set one element of lr_dtype read by the kernel (a host
  // pointer for the CPU step, a device pointer for the CUDA step).
  double lr = 0.0;
  const void* lr_device = nullptr;
  DType lr_dtype = DType::Float32;
  double beta1 = 0.9, beta2 = 0.99, weight_decay = 0.0;  // betas in [0, 1); decoupled weight decay >= 0
  // Weight decay per step: delta = weight_decay * lr^k / decay_ref  (k = decay_lr_power in {0, 1, 2}).
  int32_t decay_lr_power = 1;
  double decay_ref = 1.0;

  // GradScaler protocol (nullable, one float32 each, on the step's device): found_inf != 0 makes the
  // call a no-op; g is divided by grad_scale in-kernel and never written back.
  const float* grad_scale = nullptr;
  const float* found_inf = nullptr;
  bool maximize = false;
  bool cautious = false;             // timm-normalised cautious mask; needs workspace_bytes()
  double cautious_min_frac = 1e-3;   // floor of the kept fraction in the 1/frac rescale, in (0, 1]
  bool stochastic_rounding = false;  // bf16 params without master weights only
  uint64_t sr_seed = 0;              // Philox key of stochastic rounding
  int64_t sr_step = 0;                       // or, when set, one int64 read by the kernel:
  const int64_t* sr_step_device = nullptr;
  NanPolicy nan_policy = NanPolicy::Propagate;
  void* workspace = nullptr;  // workspace_bytes() bytes (device memory for the CUDA step)
  size_t workspace_size = 0;  // bytes at workspace
  int num_threads = 0;        // CPU only; 0 = the OpenMP default
};

// Checks dtypes, hyper-parameters and pointers (not values behind device pointers) without touching any
// tensor; both steps call it. Status codes as above.
FASTNORM_API Status validate(const LionStepParams& p);

// Scratch the step needs: 8 bytes per tensor with cautious (exact per-tensor mask counts), else 0.
FASTNORM_API size_t workspace_bytes(const LionStepParams& p);

// The CPU step: updates param, exp_avg (and master) of every tensor in place, host pointers (OpenMP over
// 16384-element chunks; serial below 32768 elements in all). Status as validate(). The CPU step keeps its
// cautious counts itself: p.workspace is not read.
FASTNORM_API Status step(const LionStepParams& p);

// Philox4x32-10 (Salmon et al. 2011), the generator of stochastic rounding's random bits, exposed for tests:
// out = philox(counter, key). Never fails.
FASTNORM_API void philox4x32_10_host(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]);

namespace cuda {
// Multi-tensor launch planning, host only (testable without a GPU). A launch carries, per tensor, its
// `depth` pointers (3, or 4 with master weights), its numel and an int64 prefix of chunk counts in the
// kernel-argument space (4 KB, or 32 KB on CUDA >= 12.1 / driver >= 530 / sm >= 70); tensors are never
// split across launches.
constexpr int64_t kChunk = 32768;          // elements per block
constexpr size_t kArgHeaderBytes = 256;    // the scalars every launch carries
constexpr size_t kArgSpaceSmall = 4096;
constexpr size_t kArgSpaceLarge = 32764;

// How many tensors fit in one launch's arguments (0 for depth < 1 or no room past the header). Never fails.
FASTNORM_API int64_t tensors_per_launch(int depth, size_t arg_space_bytes);

struct LaunchRange {
  int64_t first_tensor = 0;  // index into the call's tensor list
  int64_t n_tensors = 0;
  int64_t n_chunks = 0;      // the grid size
};

// Splits n_tensors tensors (numels[i] >= 0; empty ones take no chunk) into launches, in order: a launch
// ends when the argument space is full or its grid would pass 2^31 - 1 blocks. Writes up to `capacity`
// ranges into `out` (nullable) and returns the number of launches. Never fails (no Status).
FASTNORM_API int64_t plan_launches(const int64_t* numels, int64_t n_tensors, int depth, size_t arg_space_bytes,
                                   LaunchRange* out, int64_t capacity);
}  // namespace cuda

}  // namespace lion
}  // namespace fastnorm

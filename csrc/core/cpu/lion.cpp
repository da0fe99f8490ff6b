// CPU entry points of the Lion family: argument validation (shared with the CUDA step), workspace sizing,
// the choice between the baseline and AVX2+FMA builds of the kernel, and the host-only CUDA launch planner.
#include <cmath>
#include <string>

#include "fastnorm/detail/lion_math.h"
#include "fastnorm/lion.h"
#include "isa.h"
#include "lion_kernels.h"

namespace fastnorm {
namespace lion {
namespace {

bool is_16bit(DType t) { return t == DType::Float16 || t == DType::BFloat16; }

Status bad(const std::string& what) { return invalid_argument("lion_step_: " + what); }

}  // namespace

Status validate(const LionStepParams& p) {
  if (p.n_tensors < 0) return bad("n_tensors must be >= 0");
  if (p.n_tensors > 0 && p.tensors == nullptr) return bad("tensors is null");
  if (p.n_tensors > (int64_t(1) << 32)) return bad("too many tensors");
  const DType P = p.param_dtype, S = p.state_dtype;
  if (!is_float(P)) return unsupported("lion_step_: params must be float32, float64, float16 or bfloat16");
  const bool s_ok = P == DType::Float64 ? S == DType::Float64 : (S == P || S == DType::Float32);
  if (!s_ok)
    return unsupported(std::string("lion_step_: exp_avg dtype ") + dtype_name(S) + " is not allowed with params of " +
                       dtype_name(P) + " (expected the param dtype or float32; float64 params need float64 state)");
  if (p.has_master && !(is_16bit(P) && S == DType::Float32))
    return bad("master weights need float16/bfloat16 params and float32 exp_avg");
  if (p.stochastic_rounding && P != DType::BFloat16) return bad("stochastic_rounding needs bfloat16 params");
  if (p.stochastic_rounding && p.has_master) return bad("stochastic_rounding cannot be combined with master weights");
  if (p.lr_device == nullptr && (!(p.lr >= 0.0) || !std::isfinite(p.lr))) return bad("lr must be finite and >= 0");
  if (p.lr_device != nullptr && !is_float(p.lr_dtype)) return bad("lr tensor must be a float dtype");
  if (!(p.beta1 >= 0.0 && p.beta1 < 1.0)) return bad("beta1 must be in [0, 1)");
  if (!(p.beta2 >= 0.0 && p.beta2 < 1.0)) return bad("beta2 must be in [0, 1)");
  if (!(p.weight_decay >= 0.0) || !std::isfinite(p.weight_decay)) return bad("weight_decay must be finite and >= 0");
  if (p.decay_lr_power < 0 || p.decay_lr_power > 2) return bad("decay_lr_power must be 0, 1 or 2");
  if (!(p.decay_ref > 0.0) || !std::isfinite(p.decay_ref)) return bad("decay_ref must be finite and > 0");
  if (!(p.cautious_min_frac > 0.0 && p.cautious_min_frac <= 1.0)) return bad("cautious_min_frac must be in (0, 1]");
  if (p.nan_policy != NanPolicy::Propagate && p.nan_policy != NanPolicy::Torch) return bad("nan_policy must be 0 or 1");
  for (int64_t i = 0; i < p.n_tensors; ++i) {
    const LionTensor& t = p.tensors[i];
    if (t.numel < 0) return bad("tensors[" + std::to_string(i) + "].numel must be >= 0");
    if (t.numel == 0) continue;
    if (t.param == nullptr || t.grad == nullptr || t.exp_avg == nullptr)
      return bad("tensors[" + std::to_string(i) + "] has a null param, grad or exp_avg");
    if (p.has_master && t.master == nullptr) return bad("tensors[" + std::to_string(i) + "] has no master weight");
  }
  return Status::OK();
}

size_t workspace_bytes(const LionStepParams& p) {
  return p.cautious && p.n_tensors > 0 ? 8u * static_cast<size_t>(p.n_tensors) : 0u;
}

Status step(const LionStepParams& p) {
  Status s = validate(p);
  return s.ok() ? FASTNORM_DISPATCH_ISA(step, p) : s;
}

void philox4x32_10_host(const uint32_t counter[4], const uint32_t key[2], uint32_t out[4]) {
  const detail::Philox4 r = detail::philox4x32_10(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
  for (int i = 0; i < 4; ++i) out[i] = r.v[i];
}

namespace cuda {

int64_t tensors_per_launch(int depth, size_t arg_space_bytes) {
  if (depth < 1 || arg_space_bytes <= kArgHeaderBytes) return 0;
  const size_t per_tensor = static_cast<size_t>(depth) * 8u + 16u;  // pointers + numel + chunk prefix
  return static_cast<int64_t>((arg_space_bytes - kArgHeaderBytes) / per_tensor);
}

int64_t plan_launches(const int64_t* numels, int64_t n_tensors, int depth, size_t arg_space_bytes, LaunchRange* out,
                      int64_t capacity) {
  const int64_t cap = tensors_per_launch(depth, arg_space_bytes);
  if (cap <= 0 || n_tensors <= 0) return 0;
  constexpr int64_t kMaxGrid = (int64_t(1) << 31) - 1;
  int64_t launches = 0;
  LaunchRange cur;
  auto flush = [&]() {
    if (cur.n_tensors > 0 && cur.n_chunks > 0) {
      if (out != nullptr && launches < capacity) out[launches] = cur;
      ++launches;
    }
  };
  for (int64_t i = 0; i < n_tensors; ++i) {
    const int64_t chunks = numels[i] > 0 ? (numels[i] + kChunk - 1) / kChunk : 0;
    if (cur.n_tensors == cap || (cur.n_tensors > 0 && cur.n_chunks + chunks > kMaxGrid)) {
      flush();
      cur = LaunchRange{i, 0, 0};
    }
    if (cur.n_tensors == 0) cur.first_tensor = i;
    ++cur.n_tensors;
    cur.n_chunks += chunks;
  }
  flush();
  return launches;
}

}  // namespace cuda
}  // namespace lion
}  // namespace fastnorm

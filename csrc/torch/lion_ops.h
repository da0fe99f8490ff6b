// The torch side of lion_step_ (specs/lion.md §2.3, §3.7, §3.8, §5), shared by the CPU and CUDA
// registrations: argument checks whose messages read "fastnorm.lion_step_: <argument>[<i>]: expected ..., got
// ...", the grad layout copy, the overlap check, bucketing by (param dtype, state dtype) and the call into the
// core. A Backend supplies kCuda, step(params, ref) and, for CUDA, whether host scalars may be read.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "binding.h"
#include "fastnorm/detail/dtype.h"
#include "fastnorm/lion.h"

namespace fastnorm {
namespace binding {
namespace lion_ops {

using fastnorm::lion::LionStepParams;
using fastnorm::lion::LionTensor;
using fastnorm::lion::NanPolicy;

constexpr const char* kOp = "lion_step_";

inline std::string strides_str(const Tensor& t) {
  std::ostringstream s;
  s << "[";
  for (int64_t i = 0; i < t.dim(); ++i) s << (i ? ", " : "") << t.stride(i);
  s << "]";
  return s.str();
}
inline std::string dev_str(const Tensor& t) {
  return t.is_cuda() ? "cuda:" + std::to_string(int(t.get_device_index())) : std::string("cpu");
}
inline bool same_device(const Tensor& a, const Tensor& b) {
  return a.is_cuda() == b.is_cuda() && (!a.is_cuda() || a.get_device_index() == b.get_device_index());
}

// Dense and non-overlapping in some stride order (contiguous, channels_last, permuted): the elements fill
// exactly numel consecutive slots, so the kernel may walk them as a flat array.
inline bool is_dense(const Tensor& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of dims with size > 1
  for (int64_t i = 0; i < t.dim(); ++i)
    if (t.size(i) > 1) dims.emplace_back(t.stride(i), t.size(i));
  std::sort(dims.begin(), dims.end());
  int64_t expect = 1;
  for (const auto& d : dims) {
    if (d.first != expect) return false;
    expect *= d.second;
  }
  return true;
}
// Same memory layout: equal shapes and equal strides wherever a dim has more than one element.
inline bool same_layout(const Tensor& a, const Tensor& b) {
  if (a.dim() != b.dim()) return false;
  for (int64_t i = 0; i < a.dim(); ++i) {
    if (a.size(i) != b.size(i)) return false;
    if (a.size(i) > 1 && a.stride(i) != b.stride(i)) return false;
  }
  return true;
}
inline bool same_shape(const Tensor& a, const Tensor& b) {
  if (a.dim() != b.dim()) return false;
  for (int64_t i = 0; i < a.dim(); ++i)
    if (a.size(i) != b.size(i)) return false;
  return true;
}

inline const char* dtype_str(const Tensor& t) {
  const auto st = t.scalar_type();
  if (st == ScalarType::ComplexFloat || st == ScalarType::ComplexDouble || st == ScalarType::ComplexHalf)
    return "a complex dtype";
  return scalar_name(st);
}

// A one-element tensor argument (lr_tensor, grad_scale, found_inf, sr_step).
inline void check_scalar_tensor(const Tensor& t, const char* arg, bool want_float32, bool want_int64) {
  if (t.numel() != 1) fail(kOp, arg, ": expected one element, got ", t.numel());
  if (want_float32 && t.scalar_type() != ScalarType::Float)
    fail(kOp, arg, ": expected dtype float32, got ", dtype_str(t));
  if (want_int64 && t.scalar_type() != ScalarType::Long) fail(kOp, arg, ": expected dtype int64, got ", dtype_str(t));
  if (!want_float32 && !want_int64 && !is_float_dtype(t.scalar_type()))
    fail(kOp, arg, ": expected a floating dtype, got ", dtype_str(t));
}

struct Range {
  uintptr_t begin, end;
  bool written;
  std::string name;
};

// Rejects any overlap of byte ranges that involves a written tensor (grads may overlap each other).
inline void check_no_overlap(std::vector<Range>& rs) {
  std::sort(rs.begin(), rs.end(), [](const Range& a, const Range& b) { return a.begin < b.begin; });
  const Range* far_any = nullptr;      // the range reaching furthest so far
  const Range* far_written = nullptr;  // the written range reaching furthest so far
  for (const Range& r : rs) {
    if (r.begin == r.end) continue;
    const Range* clash = nullptr;
    if (r.written && far_any && r.begin < far_any->end) clash = far_any;
    else if (far_written && r.begin < far_written->end) clash = far_written;
    if (clash) fail(kOp, r.name, ": expected no memory overlap with tensors it writes, got an overlap with ", clash->name);
    if (!far_any || r.end > far_any->end) far_any = &r;
    if (r.written && (!far_written || r.end > far_written->end)) far_written = &r;
  }
}

// One element of a CPU float tensor as a double.
inline double read_host_float(const Tensor& t) {
  const void* d = t.data_ptr();
  switch (t.scalar_type()) {
    case ScalarType::Float: return *static_cast<const float*>(d);
    case ScalarType::Double: return *static_cast<const double*>(d);
    case ScalarType::BFloat16: return fastnorm::detail::bf16_to_float(*static_cast<const uint16_t*>(d));
    case ScalarType::Half: return fastnorm::detail::f16_to_float(*static_cast<const uint16_t*>(d));
    default: fail(kOp, "lr_tensor: expected a floating dtype");
  }
}

inline std::string at(const char* list, size_t i) { return std::string(list) + "[" + std::to_string(i) + "]"; }

template <class B>
void lion_step(const std::vector<Tensor>& params, const std::vector<Tensor>& grads, const std::vector<Tensor>& exp_avgs,
               const std::vector<Tensor>* masters, double lr, double beta1, double beta2, double weight_decay,
               int64_t decay_lr_power, double decay_ref, const std::optional<Tensor>& lr_tensor,
               const std::optional<Tensor>& grad_scale, const std::optional<Tensor>& found_inf, bool maximize,
               bool cautious, double cautious_min_frac, bool stochastic_rounding, int64_t sr_seed,
               const std::optional<Tensor>& sr_step, int64_t nan_policy, bool check_overlap) {
  const size_t n = params.size();
  if (grads.size() != n || exp_avgs.size() != n || (masters && masters->size() != n)) {
    std::ostringstream s;
    s << "params, grads, exp_avgs" << (masters ? ", master_params" : "") << ": expected equal lengths, got " << n
      << ", " << grads.size() << ", " << exp_avgs.size();
    if (masters) s << ", " << masters->size();
    fail(kOp, s.str());
  }
  // Hyper-parameters (the core re-checks them; these messages name the schema's arguments).
  if (!lr_tensor && (!(lr >= 0.0) || !std::isfinite(lr))) fail(kOp, "lr: expected a finite value >= 0, got ", lr);
  if (!(beta1 >= 0.0 && beta1 < 1.0)) fail(kOp, "beta1: expected a value in [0, 1), got ", beta1);
  if (!(beta2 >= 0.0 && beta2 < 1.0)) fail(kOp, "beta2: expected a value in [0, 1), got ", beta2);
  if (!(weight_decay >= 0.0) || !std::isfinite(weight_decay))
    fail(kOp, "weight_decay: expected a finite value >= 0, got ", weight_decay);
  if (decay_lr_power < 0 || decay_lr_power > 2) fail(kOp, "decay_lr_power: expected 0, 1 or 2, got ", decay_lr_power);
  if (!(decay_ref > 0.0) || !std::isfinite(decay_ref)) fail(kOp, "decay_ref: expected a finite value > 0, got ", decay_ref);
  if (!(cautious_min_frac > 0.0 && cautious_min_frac <= 1.0))
    fail(kOp, "cautious_min_frac: expected a value in (0, 1], got ", cautious_min_frac);
  if (sr_seed < 0) fail(kOp, "sr_seed: expected a value >= 0, got ", sr_seed);
  if (nan_policy != 0 && nan_policy != 1) fail(kOp, "nan_policy: expected 0 (propagate) or 1 (torch), got ", nan_policy);
  if (stochastic_rounding && masters) fail(kOp, "stochastic_rounding: expected False with master_params, got True");
  if (n == 0) return;

  const Tensor& ref = params[0];
  auto check_on_device = [&](const Tensor& t, const std::string& name) {
    if (!same_device(t, ref)) fail(kOp, name, ": expected a tensor on ", dev_str(ref), " (params[0]'s device), got ", dev_str(t));
  };
  // Per-tensor checks.
  std::vector<Tensor> g_used(grads);  // grads in p's layout (copied where they were not)
  for (size_t i = 0; i < n; ++i) {
    const Tensor& p = params[i];
    const Tensor* lists[] = {&p, &grads[i], &exp_avgs[i], masters ? &(*masters)[i] : nullptr};
    const char* names[] = {"params", "grads", "exp_avgs", "master_params"};
    for (int k = 0; k < 4; ++k) {
      if (!lists[k]) continue;
      const Tensor& t = *lists[k];
      if (t.layout() != torch::headeronly::Layout::Strided)
        fail(kOp, at(names[k], i), ": expected a dense (strided) tensor, got a sparse layout");
      check_on_device(t, at(names[k], i));
      const auto st = t.scalar_type();
      if (st == ScalarType::ComplexFloat || st == ScalarType::ComplexDouble || st == ScalarType::ComplexHalf)
        fail(kOp, at(names[k], i), ": expected a real dtype, got a complex dtype (use fastnorm.optim.Lion or view_as_real)");
    }
    const auto pt = to_dtype(p.scalar_type());
    if (!pt || !is_float_dtype(p.scalar_type()))
      fail(kOp, at("params", i), ": expected float32, float64, float16 or bfloat16, got ", dtype_str(p));
    if (grads[i].scalar_type() != p.scalar_type())
      fail(kOp, at("grads", i), ": expected dtype ", dtype_str(p), " (the param's), got ", dtype_str(grads[i]));
    const auto mt = exp_avgs[i].scalar_type();
    const bool p64 = p.scalar_type() == ScalarType::Double;
    if (!(mt == p.scalar_type() || (!p64 && mt == ScalarType::Float)))
      fail(kOp, at("exp_avgs", i), ": expected dtype ", dtype_str(p), p64 ? "" : " or float32", ", got ", dtype_str(exp_avgs[i]));
    if (masters) {
      const Tensor& w = (*masters)[i];
      if (!(p.scalar_type() == ScalarType::BFloat16 || p.scalar_type() == ScalarType::Half))
        fail(kOp, at("params", i), ": expected float16 or bfloat16 with master_params, got ", dtype_str(p));
      if (w.scalar_type() != ScalarType::Float) fail(kOp, at("master_params", i), ": expected dtype float32, got ", dtype_str(w));
      if (mt != ScalarType::Float)
        fail(kOp, at("exp_avgs", i), ": expected dtype float32 with master_params, got ", dtype_str(exp_avgs[i]));
    }
    if (stochastic_rounding && p.scalar_type() != ScalarType::BFloat16)
      fail(kOp, at("params", i), ": expected bfloat16 with stochastic_rounding, got ", dtype_str(p));
    for (int k = 1; k < 4; ++k)
      if (lists[k] && !same_shape(*lists[k], p))
        fail(kOp, at(names[k], i), ": expected shape ", shape_str(p), " (the param's), got ", shape_str(*lists[k]));
    if (!is_dense(p))
      fail(kOp, at("params", i), ": expected a dense, non-overlapping tensor, got shape ", shape_str(p), " with strides ",
           strides_str(p));
    for (int k = 2; k < 4; ++k)
      if (lists[k] && !same_layout(*lists[k], p))
        fail(kOp, at(names[k], i), ": expected the param's strides ", strides_str(p), ", got ", strides_str(*lists[k]));
    if (!same_layout(grads[i], p) || !is_dense(grads[i])) {
      // A documented temporary: this one grad is copied into the param's layout.
      Tensor tmp = torch::stable::empty_like(p);
      torch::stable::copy_(tmp, grads[i]);
      g_used[i] = tmp;
    }
  }
  // Scalar tensors.
  auto scalar_device_ok = [&](const Tensor& t, const char* name, bool host_allowed) {
    if (same_device(t, ref)) return;
    if (host_allowed && t.is_cpu() && B::host_scalars_readable(ref)) return;
    fail(kOp, name, ": expected a tensor on ", dev_str(ref), host_allowed ? " (or on cpu outside stream capture)" : "",
         ", got ", dev_str(t));
  };
  if (lr_tensor) { check_scalar_tensor(*lr_tensor, "lr_tensor", false, false); scalar_device_ok(*lr_tensor, "lr_tensor", true); }
  if (grad_scale) { check_scalar_tensor(*grad_scale, "grad_scale", true, false); scalar_device_ok(*grad_scale, "grad_scale", false); }
  if (found_inf) { check_scalar_tensor(*found_inf, "found_inf", true, false); scalar_device_ok(*found_inf, "found_inf", false); }
  if (sr_step) { check_scalar_tensor(*sr_step, "sr_step", false, true); scalar_device_ok(*sr_step, "sr_step", true); }

  if (check_overlap) {
    std::vector<Range> rs;
    auto add = [&](const Tensor& t, bool written, std::string name) {
      const auto b = reinterpret_cast<uintptr_t>(t.data_ptr());
      rs.push_back({b, b + static_cast<uintptr_t>(t.numel()) * t.element_size(), written, std::move(name)});
    };
    for (size_t i = 0; i < n; ++i) {
      add(params[i], true, at("params", i));
      add(exp_avgs[i], true, at("exp_avgs", i));
      if (masters) add((*masters)[i], true, at("master_params", i));
      add(g_used[i], false, at("grads", i));
    }
    check_no_overlap(rs);
  }

  LionStepParams base;
  base.has_master = masters != nullptr;
  base.lr = lr_tensor ? 0.0 : lr;
  base.beta1 = beta1;
  base.beta2 = beta2;
  base.weight_decay = weight_decay;
  base.decay_lr_power = static_cast<int32_t>(decay_lr_power);
  base.decay_ref = decay_ref;
  base.maximize = maximize;
  base.cautious = cautious;
  base.cautious_min_frac = cautious_min_frac;
  base.stochastic_rounding = stochastic_rounding;
  base.sr_seed = static_cast<uint64_t>(sr_seed);
  base.nan_policy = nan_policy == 0 ? NanPolicy::Propagate : NanPolicy::Torch;
  // Scalars on the params' device are read by the kernel; a CPU scalar with CUDA params is read here.
  if (lr_tensor) {
    if (same_device(*lr_tensor, ref)) {
      base.lr_device = lr_tensor->data_ptr();
      base.lr_dtype = *to_dtype(lr_tensor->scalar_type());
    } else {
      base.lr = read_host_float(*lr_tensor);
      if (!(base.lr >= 0.0) || !std::isfinite(base.lr)) fail(kOp, "lr_tensor: expected a finite value >= 0, got ", base.lr);
    }
  }
  if (grad_scale) base.grad_scale = static_cast<const float*>(grad_scale->data_ptr());
  if (found_inf) base.found_inf = static_cast<const float*>(found_inf->data_ptr());
  if (sr_step) {
    if (same_device(*sr_step, ref)) base.sr_step_device = static_cast<const int64_t*>(sr_step->data_ptr());
    else base.sr_step = *static_cast<const int64_t*>(sr_step->data_ptr());
  }

  // Buckets by (param dtype, state dtype); empty tensors are dropped. The slot is the list position.
  std::map<std::pair<int, int>, std::vector<LionTensor>> buckets;
  for (size_t i = 0; i < n; ++i) {
    if (params[i].numel() == 0) continue;
    LionTensor t;
    t.param = params[i].data_ptr();
    t.grad = g_used[i].data_ptr();
    t.exp_avg = exp_avgs[i].data_ptr();
    t.master = masters ? (*masters)[i].data_ptr() : nullptr;
    t.numel = params[i].numel();
    t.slot = static_cast<uint32_t>(i);
    buckets[{int(*to_dtype(params[i].scalar_type())), int(*to_dtype(exp_avgs[i].scalar_type()))}].push_back(t);
  }
  for (auto& [key, ts] : buckets) {
    LionStepParams p = base;
    p.param_dtype = static_cast<DType>(key.first);
    p.state_dtype = static_cast<DType>(key.second);
    p.tensors = ts.data();
    p.n_tensors = static_cast<int64_t>(ts.size());
    check_status(B::step(p, ref), kOp);
  }
}

// The two overloads' boxed functions over a Backend (lion_cuda.cpp registers the same ones for CUDA).
template <class B>
void lion_step_plain(std::vector<Tensor> params, std::vector<Tensor> grads, std::vector<Tensor> exp_avgs, double lr,
                     double beta1, double beta2, double weight_decay, int64_t decay_lr_power, double decay_ref,
                     std::optional<Tensor> lr_tensor, std::optional<Tensor> grad_scale, std::optional<Tensor> found_inf,
                     bool maximize, bool cautious, double cautious_min_frac, bool stochastic_rounding, int64_t sr_seed,
                     std::optional<Tensor> sr_step, int64_t nan_policy, bool check_overlap) {
  lion_step<B>(params, grads, exp_avgs, nullptr, lr, beta1, beta2, weight_decay, decay_lr_power, decay_ref, lr_tensor,
               grad_scale, found_inf, maximize, cautious, cautious_min_frac, stochastic_rounding, sr_seed, sr_step,
               nan_policy, check_overlap);
}
template <class B>
void lion_step_master(std::vector<Tensor> params, std::vector<Tensor> grads, std::vector<Tensor> exp_avgs,
                      std::vector<Tensor> master_params, double lr, double beta1, double beta2, double weight_decay,
                      int64_t decay_lr_power, double decay_ref, std::optional<Tensor> lr_tensor,
                      std::optional<Tensor> grad_scale, std::optional<Tensor> found_inf, bool maximize, bool cautious,
                      double cautious_min_frac, bool stochastic_rounding, int64_t sr_seed, std::optional<Tensor> sr_step,
                      int64_t nan_policy, bool check_overlap) {
  lion_step<B>(params, grads, exp_avgs, &master_params, lr, beta1, beta2, weight_decay, decay_lr_power, decay_ref,
               lr_tensor, grad_scale, found_inf, maximize, cautious, cautious_min_frac, stochastic_rounding, sr_seed,
               sr_step, nan_policy, check_overlap);
}

}  // namespace lion_ops
}  // namespace binding
}  // namespace fastnorm

// Registers both overloads' kernels for one dispatch key (CPU in lion.cpp, CUDA in lion_cuda.cpp).
#define FASTNORM_REGISTER_LION_IMPLS(m, Backend)                                                     \
  m.impl("lion_step_", TORCH_BOX(&fastnorm::binding::lion_ops::lion_step_plain<Backend>));           \
  m.impl("lion_step_.master", TORCH_BOX(&fastnorm::binding::lion_ops::lion_step_master<Backend>))

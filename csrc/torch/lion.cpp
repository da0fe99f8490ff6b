// Schemas of the lion family (specs/lion.md §2.3) and the CPU kernel's registration.
#include "lion_ops.h"

namespace {

using fastnorm::binding::Tensor;
namespace lo = fastnorm::binding::lion_ops;

// The CPU backend: the core's CPU step (it picks the AVX2+FMA or baseline build). Scalars are host memory.
struct CpuBackend {
  static constexpr bool kCuda = false;
  static bool host_scalars_readable(const Tensor&) { return true; }
  static fastnorm::Status step(const fastnorm::lion::LionStepParams& p, const Tensor&) { return fastnorm::lion::step(p); }
};

}  // namespace

namespace fastnorm {
namespace binding {
namespace lion_ops {

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

// decay_lr_power / decay_ref encode decay_mode (paper (1, 1), decoupled (1, lr_ref), corrected (2, lr_ref),
// fixed (0, 1)); nan_policy 0 propagate, 1 torch. Grads are read only; sr_step is read, never advanced.
#define FASTNORM_LION_KWARGS                                                                                   \
  "float lr, float beta1, float beta2, float weight_decay, *, int decay_lr_power=1, float decay_ref=1.0, "     \
  "Tensor? lr_tensor=None, Tensor? grad_scale=None, Tensor? found_inf=None, bool maximize=False, "             \
  "bool cautious=False, float cautious_min_frac=0.001, bool stochastic_rounding=False, int sr_seed=0, "       \
  "Tensor? sr_step=None, int nan_policy=0, bool check_overlap=True) -> ()"

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("lion_step_(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, " FASTNORM_LION_KWARGS);
  m.def("lion_step_.master(Tensor(a!)[] params, Tensor[] grads, Tensor(b!)[] exp_avgs, "
        "Tensor(c!)[] master_params, " FASTNORM_LION_KWARGS);
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) {
  m.impl("lion_step_", TORCH_BOX(&lo::lion_step_plain<CpuBackend>));
  m.impl("lion_step_.master", TORCH_BOX(&lo::lion_step_master<CpuBackend>));
}

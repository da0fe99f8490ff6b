// Schemas of the lion family (specs/lion.md §2.3) and the CPU kernel's registration.
#include "lion_ops.h"

namespace {

using fastnorm::binding::Tensor;

// The CPU backend: the core's CPU step (it picks the AVX2+FMA or baseline build). Scalars are host memory.
struct CpuBackend {
  static constexpr bool kCuda = false;
  static bool host_scalars_readable(const Tensor&) { return true; }
  static fastnorm::Status step(const fastnorm::lion::LionStepParams& p, const Tensor&) { return fastnorm::lion::step(p); }
};

}  // namespace

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

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_LION_IMPLS(m, CpuBackend); }

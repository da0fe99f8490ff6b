// Schemas of the norm family (specs/norm.md §2.4) and their CPU kernels.
#include "norm_impls.h"

namespace {

// The CPU backend: the core's CPU entry points (they pick the AVX2 or baseline build).
struct CpuBackend {
  static constexpr bool kCuda = false;
  using Tensor = torch::stable::Tensor;
  static fastnorm::Status layer_norm_fwd(const fastnorm::norm::LayerNormParams& p, const Tensor&) {
    return fastnorm::norm::layer_norm_fwd(p);
  }
  static fastnorm::Status layer_norm_bwd(const fastnorm::norm::LayerNormBwdParams& p, const Tensor&) {
    return fastnorm::norm::layer_norm_bwd(p);
  }
  static fastnorm::Status rms_norm_fwd(const fastnorm::norm::RMSNormParams& p, const Tensor&) {
    return fastnorm::norm::rms_norm_fwd(p);
  }
  static fastnorm::Status rms_norm_bwd(const fastnorm::norm::RMSNormBwdParams& p, const Tensor&) {
    return fastnorm::norm::rms_norm_bwd(p);
  }
  static size_t layer_norm_bwd_workspace_bytes(const fastnorm::norm::LayerNormBwdParams& p) {
    return fastnorm::norm::layer_norm_bwd_workspace_bytes(p);
  }
  static size_t rms_norm_bwd_workspace_bytes(const fastnorm::norm::RMSNormBwdParams& p) {
    return fastnorm::norm::rms_norm_bwd_workspace_bytes(p);
  }
};

}  // namespace

// Enums travel as ints: out_dtype = fastnorm::DType code or -1; casting 0 llama, 1 gemma, 2 none.
STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("layer_norm(Tensor x, Tensor? weight, Tensor? bias, float eps, int out_dtype=-1) "
        "-> (Tensor y, Tensor mean, Tensor rstd)");
  m.def("layer_norm_backward(Tensor dy, Tensor x, Tensor mean, Tensor rstd, Tensor? weight, Tensor? bias, "
        "bool need_dx=True, bool need_dweight=True, bool need_dbias=True) -> (Tensor dx, Tensor dweight, Tensor dbias)");
  m.def("rms_norm(Tensor x, Tensor? weight, float eps, Tensor? bias=None, float offset=0., int casting=1, "
        "int out_dtype=-1) -> (Tensor y, Tensor rstd)");
  m.def("rms_norm_backward(Tensor dy, Tensor x, Tensor rstd, Tensor? weight, Tensor? bias=None, float offset=0., "
        "int casting=1, bool need_dx=True, bool need_dweight=True, bool need_dbias=True) "
        "-> (Tensor dx, Tensor dweight, Tensor dbias)");
  m.def("add_layer_norm(Tensor x, Tensor? residual, Tensor? weight, Tensor? bias, float eps, "
        "bool residual_in_fp32=False, int out_dtype=-1) -> (Tensor y, Tensor residual_out, Tensor mean, Tensor rstd)");
  m.def("add_layer_norm_backward(Tensor dy, Tensor? dresidual_out, Tensor residual_out, Tensor mean, Tensor rstd, "
        "Tensor? weight, Tensor? bias, bool need_dweight=True, bool need_dbias=True) "
        "-> (Tensor ds, Tensor dweight, Tensor dbias)");
  m.def("add_rms_norm(Tensor x, Tensor? residual, Tensor? weight, float eps, Tensor? bias=None, float offset=0., "
        "int casting=1, bool residual_in_fp32=False, int out_dtype=-1) "
        "-> (Tensor y, Tensor residual_out, Tensor rstd)");
  m.def("add_rms_norm_backward(Tensor dy, Tensor? dresidual_out, Tensor residual_out, Tensor rstd, Tensor? weight, "
        "Tensor? bias=None, float offset=0., int casting=1, bool need_dweight=True, bool need_dbias=True) "
        "-> (Tensor ds, Tensor dweight, Tensor dbias)");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_NORM_IMPLS(m, CpuBackend); }

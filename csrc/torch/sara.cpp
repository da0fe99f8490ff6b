// Schemas of the SaRA family (specs/sara.md §2.4) and the CPU kernels' registration. The Python composites
// (sara_linear, sara_conv2d, sara_merge) are torch.library.custom_op in python/fastnorm/ops/sara.py.
#include "sara_ops.h"

namespace {

using fastnorm::binding::Tensor;
namespace fs = fastnorm::sara;

// The CPU backend: host entry points of the core; scratch comes from torch's allocator, so it shows in the
// profiler's memory events (the no-dense-dW test reads them).
struct CpuBackend {
  static void check_kind(const Tensor& t, const char* op, const char* arg) {
    if (!t.is_cpu()) fastnorm::binding::sara_ops::bad(op, arg, "must be a CPU tensor for this kernel, got ",
                                                      fastnorm::binding::sara_ops::dev_str(t));
  }
  static void prepare_rows(Tensor&, Tensor&) {}  // any strides
  static void prepare_conv(Tensor&, Tensor&) {}
  static fastnorm::Status histogram(const fs::SaraHistogramParams& p, const Tensor&) { return fs::sara_abs_histogram(p); }
  static fastnorm::Status select_count(const fs::SaraSelectParams& p, int64_t* n, const Tensor&) {
    return fs::sara_select_count(p, n);
  }
  static fastnorm::Status select_write(const fs::SaraSelectParams& p, const Tensor&) { return fs::sara_select_write(p); }
  static fastnorm::Status row_ptr(const fs::SaraRowPtrParams& p, const Tensor&) { return fs::sara_row_ptr(p); }
  static fastnorm::Status scatter(const fs::SaraScatterParams& p, const Tensor&) { return fs::sara_scatter(p); }
  static fastnorm::Status sddmm(fs::SaraSddmmParams p, const Tensor& ref) {
    Tensor ws;
    const size_t bytes = fs::sara_sddmm_workspace_bytes(p);
    if (bytes > 0) {
      ws = torch::stable::new_empty(ref, {static_cast<int64_t>(bytes)}, torch::headeronly::ScalarType::Byte);
      p.workspace = ws.data_ptr();
      p.workspace_size = bytes;
    }
    return fs::sara_sddmm(p);
  }
  static fastnorm::Status conv2d_sddmm(const fs::SaraConv2dSddmmParams& p, const Tensor&) {
    return fs::sara_conv2d_sddmm(p);
  }
  static fastnorm::Status adamw(const fs::SaraAdamWParams& p, const Tensor&) { return fs::sara_adamw_step(p); }
  static fastnorm::Status spmm(const fs::SaraSpmmParams& p, const Tensor&) { return fs::sara_spmm(p); }
};

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("sara_abs_histogram_(Tensor weight, Tensor(a!) hist, int shift, int prefix_mask, int prefix) -> ()");
  m.def("sara_select(Tensor weight, int key_lt, int key_eq, int eq_quota) -> (Tensor indices, Tensor base)");
  m.def("sara_row_ptr(Tensor indices, int rows, int cols) -> Tensor");
  m.def("sara_scatter_(Tensor(a!) weight, Tensor indices, Tensor? base, Tensor delta, float alpha) -> ()");
  m.def("sara_sddmm(Tensor grad_out, Tensor input, Tensor indices, Tensor? row_ptr, int cols, bool deterministic) "
        "-> Tensor");
  m.def("sara_conv2d_sddmm(Tensor grad_out, Tensor input, Tensor indices, Tensor? row_ptr, int[] weight_shape, "
        "int[] stride, int[] padding, int[] dilation, int groups, bool deterministic) -> Tensor");
  m.def("sara_adamw_step_(Tensor(a!)[] deltas, Tensor(b!)[] exp_avgs, Tensor(c!)[] exp_avg_sqs, Tensor[] grads, "
        "Tensor(d!)[] weights, Tensor[] indices, Tensor[] bases, float lr, float beta1, float beta2, float eps, "
        "float weight_decay, float bias_correction1, float bias_correction2, bool decay_absolute, float alpha) -> ()");
  m.def("sara_spmm(Tensor indices, Tensor values, Tensor? row_ptr, int rows, int cols, Tensor dense, bool transpose, "
        "bool deterministic) -> Tensor");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_SARA_IMPLS(m, CpuBackend); }

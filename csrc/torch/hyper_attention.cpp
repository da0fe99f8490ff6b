// Schemas of the hyper_attention family (specs/hyper_attention.md §2.3) and the CPU kernels' registration.
// All tensors are logical [B, H, N, D] views (the Python layer transposes bnhd inputs); empty tensors mean
// "absent / zero" (dlse). Autograd and fake kernels live in python/fastnorm/ops/hyper_attention.py.
#include "hyper_attention_ops.h"

namespace {

using fastnorm::binding::Tensor;
namespace ha = fastnorm::hyper_attention;

// The CPU backend: the core's CPU entry points (they pick the AVX2+FMA or baseline build).
struct CpuBackend {
  static constexpr bool kCuda = false;
  static fastnorm::Status lsh_hash(const ha::HyperAttnHashParams& p, const Tensor&) { return ha::lsh_hash(p); }
  static size_t plan_ws(const ha::HyperAttnProblem& p, int32_t r) { return ha::plan_workspace_size(p, r); }
  static fastnorm::Status plan(const ha::HyperAttnProblem& p, const ha::HyperAttnPlanInputs& in,
                               const ha::HyperAttnPlan& pl, void* ws, size_t bytes, const Tensor&) {
    return ha::plan(p, in, pl, ws, bytes);
  }
  static size_t fwd_ws(const ha::HyperAttnProblem& p) { return ha::forward_workspace_size(p); }
  static fastnorm::Status forward(const ha::HyperAttnProblem& p, const ha::HyperAttnPlan& pl,
                                  const ha::HyperAttnOutput& o, void* ws, size_t bytes, const Tensor&) {
    return ha::forward(p, pl, o, ws, bytes);
  }
  static size_t bwd_ws(const ha::HyperAttnProblem& p) { return ha::backward_workspace_size(p); }
  static fastnorm::Status backward(const ha::HyperAttnProblem& p, const ha::HyperAttnPlan& pl,
                                   const ha::HyperAttnGrads& g, void* ws, size_t bytes, const Tensor&) {
    return ha::backward(p, pl, g, ws, bytes);
  }
  static fastnorm::Status merge(const ha::HyperAttnMergeParams& p, const Tensor&) { return ha::merge(p); }
};

}  // namespace

STABLE_TORCH_LIBRARY_FRAGMENT(fastnorm, m) {
  m.def("hyper_attention_lsh_hash(Tensor x, Tensor lsh_proj) -> Tensor");
  m.def("hyper_attention_plan(Tensor q, Tensor k, Tensor lsh_proj, Tensor sample_words, bool causal, int block_size, "
        "int sample_size, int min_seq_len) -> (Tensor q_perm, Tensor k_perm, Tensor samples)");
  m.def("hyper_attention(Tensor q, Tensor k, Tensor v, Tensor q_perm, Tensor k_perm, Tensor samples, bool causal, "
        "float scale, int block_size, int sample_size, int min_seq_len) -> (Tensor out, Tensor lse)");
  m.def("hyper_attention_backward(Tensor dout, Tensor dlse, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, "
        "Tensor q_perm, Tensor k_perm, Tensor samples, bool causal, float scale, int block_size, int sample_size, "
        "int min_seq_len) -> (Tensor dq, Tensor dk, Tensor dv)");
  m.def("hyper_attention_merge(Tensor out1, Tensor lse1, Tensor out2, Tensor lse2) -> (Tensor out, Tensor lse)");
}

STABLE_TORCH_LIBRARY_IMPL(fastnorm, CPU, m) { FASTNORM_REGISTER_HYPER_ATTENTION_IMPLS(m, CpuBackend); }

// CPU entry points of the hyper_attention family (specs/hyper_attention.md §2.4): argument checks, then the
// ISA build of the kernels (hyper_attention_kernels.cpp) chosen at run time.
#include <string>

#include "fastnorm/hyper_attention.h"
#include "hyper_attention_kernels.h"
#include "isa.h"

namespace fastnorm {
namespace hyper_attention {
namespace {

#if defined(FASTNORM_HAVE_AVX2)
#define FASTNORM_HA_CALL(fn, ...) (::fastnorm::cpu::use_avx2() ? avx2::fn(__VA_ARGS__) : baseline::fn(__VA_ARGS__))
#else
#define FASTNORM_HA_CALL(fn, ...) baseline::fn(__VA_ARGS__)
#endif

Status check_plan(const HyperAttnProblem& p, const HyperAttnPlan& pl) {
  HyperAttnPlanSizes s;
  Status st = plan_sizes(p.config, p.nq, p.nk, p.causal, &s);
  if (!st.ok()) return st;
  if (pl.pq != s.pq || pl.pk != s.pk || pl.s != s.s)
    return invalid_argument("plan sizes (" + std::to_string(pl.pq) + ", " + std::to_string(pl.pk) + ", " +
                            std::to_string(pl.s) + ") differ from the schedule's (" + std::to_string(s.pq) + ", " +
                            std::to_string(s.pk) + ", " + std::to_string(s.s) + ")");
  const bool work = p.batch > 0 && p.heads_q > 0;
  if (work && ((s.pq > 0 && pl.q_perm == nullptr) || (s.pk > 0 && pl.k_perm == nullptr) ||
               (s.s > 0 && pl.samples == nullptr)))
    return invalid_argument("plan pointers are null");
  return Status::OK();
}

bool empty_problem(const HyperAttnProblem& p) { return p.batch == 0 || p.heads_q == 0 || p.nq == 0; }

}  // namespace

Status lsh_hash(const HyperAttnHashParams& p) {
  if (p.batch < 0 || p.heads < 0 || p.n < 0 || p.head_dim < 1) return invalid_argument("lsh_hash: bad sizes");
  if (p.num_projs < 0 || p.num_projs > 16)
    return invalid_argument("lsh_num_projs must be in [0, 16], got " + std::to_string(p.num_projs));
  if (!is_float(p.dtype)) return invalid_argument(std::string("unsupported dtype ") + dtype_name(p.dtype));
  if (p.batch * p.heads * p.n == 0) return Status::OK();
  if (p.x == nullptr || p.keys == nullptr || (p.num_projs > 0 && p.proj == nullptr))
    return invalid_argument("lsh_hash: null pointer");
  return FASTNORM_HA_CALL(lsh_hash, p);
}

size_t plan_workspace_size(const HyperAttnProblem& p, int32_t) { return baseline::plan_ws_bytes(p); }

Status plan(const HyperAttnProblem& p, const HyperAttnPlanInputs& in, const HyperAttnPlan& pl, void* workspace,
            size_t workspace_size) {
  Status st = validate(p);
  if (!st.ok()) return st;
  if (in.num_projs < 0 || in.num_projs > 16)
    return invalid_argument("lsh_num_projs must be in [0, 16], got " + std::to_string(in.num_projs));
  st = check_plan(p, pl);
  if (!st.ok()) return st;
  if (empty_problem(p) || pl.pq == 0) return Status::OK();
  if ((in.num_projs > 0 && in.proj == nullptr) || (pl.s > 0 && in.sample_words == nullptr))
    return invalid_argument("plan: null projection or sample words");
  if (workspace_size < plan_workspace_size(p, in.num_projs) || workspace == nullptr)
    return invalid_argument("plan: workspace too small");
  return FASTNORM_HA_CALL(plan, p, in, pl, workspace);
}

size_t forward_workspace_size(const HyperAttnProblem& p) { return baseline::forward_ws_bytes(p); }

Status forward(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnOutput& o, void* workspace,
               size_t workspace_size) {
  Status st = validate(p);
  if (!st.ok()) return st;
  st = check_plan(p, pl);
  if (!st.ok()) return st;
  if (empty_problem(p)) return Status::OK();
  if (o.out == nullptr || o.lse == nullptr) return invalid_argument("forward: null output");
  if (p.nk > 0 && p.v == nullptr) return invalid_argument("v is null");
  if (p.nk > 0 && (workspace_size < forward_workspace_size(p) || workspace == nullptr))
    return invalid_argument("forward: workspace too small");
  return FASTNORM_HA_CALL(forward, p, pl, o, workspace);
}

size_t backward_workspace_size(const HyperAttnProblem& p) { return baseline::backward_ws_bytes(p); }

Status backward(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnGrads& g, void* workspace,
                size_t workspace_size) {
  Status st = validate(p);
  if (!st.ok()) return st;
  st = check_plan(p, pl);
  if (!st.ok()) return st;
  const bool any_q = !empty_problem(p);
  const bool any_k = p.batch > 0 && p.heads_kv > 0 && p.nk > 0;
  if (!any_q && !any_k) return Status::OK();
  if ((any_q && (g.dq == nullptr || g.dout == nullptr || g.out == nullptr || g.lse == nullptr)) ||
      (any_k && (g.dk == nullptr || g.dv == nullptr)))
    return invalid_argument("backward: null pointer");
  if (workspace_size < backward_workspace_size(p) || workspace == nullptr)
    return invalid_argument("backward: workspace too small");
  return FASTNORM_HA_CALL(backward, p, pl, g, workspace);
}

Status merge(const HyperAttnMergeParams& p) {
  if (p.batch < 0 || p.heads < 0 || p.n < 0 || p.head_dim < 0) return invalid_argument("merge: bad sizes");
  if (!is_float(p.dtype)) return invalid_argument(std::string("unsupported dtype ") + dtype_name(p.dtype));
  if (p.batch * p.heads * p.n == 0) return Status::OK();
  if (!p.out1 || !p.out2 || !p.out || !p.lse1 || !p.lse2 || !p.lse) return invalid_argument("merge: null pointer");
  return FASTNORM_HA_CALL(merge, p);
}

}  // namespace hyper_attention
}  // namespace fastnorm

// Host-only parts of the hyper_attention core shared by the CPU and CUDA paths: the sub-problem schedule
// (specs/hyper_attention.md §3.6) and problem validation.
#include <cmath>
#include <string>
#include <vector>

#include "fastnorm/detail/hyper_attention_math.h"
#include "fastnorm/hyper_attention.h"

namespace fastnorm {
namespace hyper_attention {
namespace {

Status check_config(const HyperAttnConfig& c) {
  if (c.block_size < 1) return invalid_argument("block_size must be >= 1, got " + std::to_string(c.block_size));
  if (c.sample_size < 0) return invalid_argument("sample_size must be >= 0, got " + std::to_string(c.sample_size));
  if (c.min_seq_len < 1) return invalid_argument("min_seq_len must be >= 1, got " + std::to_string(c.min_seq_len));
  return Status::OK();
}

// Emits pieces in post-order; offsets are assigned in emission order.
struct Emitter {
  Emitter(const HyperAttnConfig& config, HyperAttnSubproblem* o, int64_t cap) : c(config), out(o), capacity(cap) {}
  const HyperAttnConfig& c;
  HyperAttnSubproblem* out;
  int64_t capacity;
  int64_t count = 0;
  HyperAttnPlanSizes sizes;

  void emit(HyperAttnSubproblem s) {
    if (s.kind == HyperAttnKind::Approx) {
      s.q_perm_offset = sizes.pq;
      s.k_perm_offset = sizes.pk;
      s.sample_offset = sizes.s;
      s.num_blocks = detail::num_blocks(s.nk, c.block_size);
      sizes.pq += s.nq;
      sizes.pk += s.nk;
      sizes.s += c.sample_size;
      sizes.num_approx += 1;
    }
    if (s.depth > sizes.max_depth) sizes.max_depth = s.depth;
    if (out != nullptr && count < capacity) out[count] = s;
    ++count;
  }

  // A rectangle rows x keys with nk' keys: exact iff nk' <= min_seq_len or it would have one block.
  void rect(int64_t qb, int64_t nq, int64_t kb, int64_t nk, int32_t depth) {
    HyperAttnSubproblem s;
    s.q_begin = qb; s.nq = nq; s.k_begin = kb; s.nk = nk; s.depth = depth;
    const bool exact = nk <= c.min_seq_len || detail::num_blocks(nk, c.block_size) <= 1;
    s.kind = exact ? HyperAttnKind::ExactFull : HyperAttnKind::Approx;
    emit(s);
  }

  void causal(int64_t a, int64_t n, int32_t depth) {
    if (n <= c.min_seq_len) {
      HyperAttnSubproblem s;
      s.kind = HyperAttnKind::ExactCausal;
      s.q_begin = a; s.nq = n; s.k_begin = a; s.nk = n; s.depth = depth;
      emit(s);
      return;
    }
    const int64_t h = (n + 1) / 2;
    causal(a, h, depth + 1);
    causal(a + h, n - h, depth + 1);
    rect(a + h, n - h, a, h, depth);
  }
};

}  // namespace

Status schedule(const HyperAttnConfig& config, int64_t nq, int64_t nk, bool causal, HyperAttnSubproblem* out,
                int64_t capacity, int64_t* out_count) {
  Status st = check_config(config);
  if (!st.ok()) return st;
  if (nq < 0 || nk < 0) return invalid_argument("sequence lengths must be >= 0");
  if (causal && nq != nk)
    return invalid_argument("causal=True requires Nq == Nk, got Nq=" + std::to_string(nq) + ", Nk=" + std::to_string(nk));
  if (capacity < 0 || (capacity > 0 && out == nullptr)) return invalid_argument("schedule: bad output array");
  Emitter e(config, out, capacity);
  if (nq > 0 && nk > 0) {
    if (causal) e.causal(0, nq, 0);
    else e.rect(0, nq, 0, nk, 0);
  }
  if (out_count != nullptr) *out_count = e.count;
  return Status::OK();
}

Status plan_sizes(const HyperAttnConfig& config, int64_t nq, int64_t nk, bool causal, HyperAttnPlanSizes* sizes) {
  Status st = check_config(config);
  if (!st.ok()) return st;
  if (nq < 0 || nk < 0) return invalid_argument("sequence lengths must be >= 0");
  if (causal && nq != nk)
    return invalid_argument("causal=True requires Nq == Nk, got Nq=" + std::to_string(nq) + ", Nk=" + std::to_string(nk));
  Emitter e(config, nullptr, 0);
  if (nq > 0 && nk > 0) {
    if (causal) e.causal(0, nq, 0);
    else e.rect(0, nq, 0, nk, 0);
  }
  e.sizes.count = e.count;
  if (sizes != nullptr) *sizes = e.sizes;
  return Status::OK();
}

Status validate(const HyperAttnProblem& p) {
  Status st = check_config(p.config);
  if (!st.ok()) return st;
  if (p.batch < 0 || p.heads_q < 0 || p.heads_kv < 0 || p.nq < 0 || p.nk < 0)
    return invalid_argument("sizes must be >= 0");
  if (p.head_dim < 1 || p.head_dim > 256)
    return invalid_argument("head_dim must be in [1, 256], got " + std::to_string(p.head_dim));
  if (p.heads_kv == 0 ? p.heads_q != 0 : p.heads_q % p.heads_kv != 0)
    return invalid_argument("heads_q (" + std::to_string(p.heads_q) + ") must be a multiple of heads_kv (" +
                            std::to_string(p.heads_kv) + ")");
  if (!is_float(p.dtype)) return invalid_argument(std::string("unsupported dtype ") + dtype_name(p.dtype));
  if (p.causal && p.nq != p.nk)
    return invalid_argument("causal=True requires Nq == Nk, got Nq=" + std::to_string(p.nq) + ", Nk=" +
                            std::to_string(p.nk));
  if (!std::isfinite(p.scale)) return invalid_argument("scale must be finite");
  if (p.nq >= (int64_t(1) << 31) || p.nk >= (int64_t(1) << 31))
    return invalid_argument("sequence lengths must be < 2^31");
  const bool any = p.batch > 0 && p.heads_q > 0 && p.nq > 0;
  if (any && p.q == nullptr) return invalid_argument("q is null");
  if (any && p.nk > 0 && p.k == nullptr) return invalid_argument("k is null");
  return Status::OK();
}

}  // namespace hyper_attention
}  // namespace fastnorm

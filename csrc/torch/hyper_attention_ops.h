// The torch side of the hyper_attention ops (specs/hyper_attention.md §2.3, §5), shared by the CPU and CUDA
// registrations: argument checks whose messages read "fastnorm.<op>: <argument> ...", output allocation
// (empty_like stride preservation for out/dq/dk/dv), params filling and the call into the core.
// A Backend supplies: kCuda, lsh_hash(p, ref), plan_ws(p, r), plan(p, in, pl, ws, bytes, ref), fwd_ws(p),
// forward(p, pl, o, ws, bytes, ref), bwd_ws(p), backward(p, pl, g, ws, bytes, ref), merge(p, ref).
#pragma once
#include <cmath>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "binding.h"
#include "fastnorm/hyper_attention.h"

namespace fastnorm {
namespace binding {
namespace hyper_attention_ops {

using fastnorm::hyper_attention::HyperAttnConfig;
using fastnorm::hyper_attention::HyperAttnGrads;
using fastnorm::hyper_attention::HyperAttnHashParams;
using fastnorm::hyper_attention::HyperAttnMergeParams;
using fastnorm::hyper_attention::HyperAttnOutput;
using fastnorm::hyper_attention::HyperAttnPlan;
using fastnorm::hyper_attention::HyperAttnPlanInputs;
using fastnorm::hyper_attention::HyperAttnPlanSizes;
using fastnorm::hyper_attention::HyperAttnProblem;
using fastnorm::hyper_attention::HyperAttnStrides;

inline HyperAttnStrides strides_of(const Tensor& t) {
  HyperAttnStrides s;
  s.b = t.stride(0); s.h = t.stride(1); s.n = t.stride(2); s.d = t.stride(3);
  return s;
}

inline bool same_dev(const Tensor& a, const Tensor& b) {
  return a.is_cuda() == b.is_cuda() && (!a.is_cuda() || a.get_device_index() == b.get_device_index());
}
inline std::string dev_str(const Tensor& t) {
  return t.is_cuda() ? "cuda:" + std::to_string(int(t.get_device_index())) : std::string("cpu");
}

inline ScalarType stats_type(DType d) { return d == DType::Float64 ? ScalarType::Double : ScalarType::Float; }

// q/k/v: 4-D, one device, one dtype allowed there, shapes [B, Hq, Nq, D] and [B, Hkv, Nk, D].
template <class B>
DType check_qkv(const char* op, const Tensor& q, const Tensor& k, const Tensor* v) {
  if (q.dim() != 4) fail(op, "'query' must be 4-D [B, Hq, Nq, D], got ", shape_str(q));
  if (k.dim() != 4) fail(op, "'key' must be 4-D [B, Hkv, Nk, D], got ", shape_str(k));
  if (v && v->dim() != 4) fail(op, "'value' must be 4-D [B, Hkv, Nk, D], got ", shape_str(*v));
  if (q.is_cuda() != B::kCuda) fail(op, "'query' must be a ", B::kCuda ? "CUDA" : "CPU", " tensor for this kernel");
  if (!same_dev(q, k)) fail(op, "'key' is on ", dev_str(k), " but 'query' is on ", dev_str(q));
  if (v && !same_dev(q, *v)) fail(op, "'value' is on ", dev_str(*v), " but 'query' is on ", dev_str(q));
  if (k.scalar_type() != q.scalar_type())
    fail(op, "'key' has dtype ", scalar_name(k.scalar_type()), " but 'query' has ", scalar_name(q.scalar_type()));
  if (v && v->scalar_type() != q.scalar_type())
    fail(op, "'value' has dtype ", scalar_name(v->scalar_type()), " but 'query' has ", scalar_name(q.scalar_type()));
  const DType dt = float_dtype(q, op, "'query'");
  if (B::kCuda && dt == DType::Float64) fail(op, "'query': float64 is supported on CPU only");
  if (k.size(0) != q.size(0)) fail(op, "'key' must have batch ", q.size(0), " like 'query', got ", shape_str(k));
  if (v && (v->size(0) != k.size(0) || v->size(1) != k.size(1) || v->size(2) != k.size(2)))
    fail(op, "'value' must have shape [B, Hkv, Nk] = [", k.size(0), ", ", k.size(1), ", ", k.size(2),
         "] like 'key', got ", shape_str(*v));
  const int64_t hq = q.size(1), hkv = k.size(1);
  if (hkv == 0 ? hq != 0 : hq % hkv != 0)
    fail(op, "query heads (", hq, ") must be a multiple of key/value heads (", hkv, ")");
  const int64_t d = q.size(3);
  if (d < 1 || d > 256) fail(op, "head dim D must be in [1, 256], got ", d);
  if (k.size(3) != d) fail(op, "'key' head dim ", k.size(3), " must equal 'query' head dim ", d);
  if (v && v->size(3) != d) fail(op, "'value' head dim ", v->size(3), " must equal 'query' head dim ", d);
  if (q.size(2) >= (int64_t(1) << 31) || k.size(2) >= (int64_t(1) << 31))
    fail(op, "sequence lengths must be < 2^31, got Nq=", q.size(2), ", Nk=", k.size(2));
  return dt;
}

inline HyperAttnConfig config_of(const char* op, int64_t block_size, int64_t sample_size, int64_t min_seq_len) {
  if (block_size < 1) fail(op, "block_size must be >= 1, got ", block_size);
  if (sample_size < 0) fail(op, "sample_size must be >= 0, got ", sample_size);
  if (min_seq_len < 1) fail(op, "min_seq_len must be >= 1, got ", min_seq_len);
  HyperAttnConfig c;
  c.block_size = block_size;
  c.sample_size = sample_size;
  c.min_seq_len = min_seq_len;
  return c;
}

inline HyperAttnProblem problem_of(DType dt, const Tensor& q, const Tensor& k, const Tensor* v, bool causal,
                                   double scale, const HyperAttnConfig& c) {
  HyperAttnProblem p;
  p.batch = q.size(0); p.heads_q = q.size(1); p.heads_kv = k.size(1);
  p.nq = q.size(2); p.nk = k.size(2); p.head_dim = q.size(3);
  p.dtype = dt;
  p.q = q.data_ptr(); p.q_strides = strides_of(q);
  p.k = k.data_ptr(); p.k_strides = strides_of(k);
  if (v) { p.v = v->data_ptr(); p.v_strides = strides_of(*v); }
  p.causal = causal;
  p.scale = scale;
  p.config = c;
  return p;
}

inline HyperAttnPlanSizes sizes_of(const char* op, const HyperAttnProblem& p) {
  if (p.causal && p.nq != p.nk) fail(op, "causal=True requires Nq == Nk, got Nq=", p.nq, ", Nk=", p.nk);
  HyperAttnPlanSizes s;
  check_status(fastnorm::hyper_attention::plan_sizes(p.config, p.nq, p.nk, p.causal, &s), op);
  return s;
}

// The float32 [D, r] projection, r in [0, 16].
inline Tensor proj_of(const char* op, const Tensor& q, const Tensor& proj) {
  if (proj.dim() != 2) fail(op, "'lsh_proj' must be 2-D [D, r], got ", shape_str(proj));
  if (!is_float_dtype(proj.scalar_type()))
    fail(op, "'lsh_proj' must be a float tensor, got ", scalar_name(proj.scalar_type()));
  if (!same_dev(q, proj)) fail(op, "'lsh_proj' is on ", dev_str(proj), " but the input is on ", dev_str(q));
  if (proj.size(0) != q.size(3)) fail(op, "'lsh_proj' must have ", q.size(3), " rows (the head dim), got ", shape_str(proj));
  if (proj.size(1) > 16) fail(op, "'lsh_proj' may have at most 16 columns, got ", proj.size(1));
  Tensor p = proj.scalar_type() == ScalarType::Float ? proj : torch::stable::to(proj, ScalarType::Float);
  return torch::stable::contiguous(p);
}

// An int32 plan tensor of exactly `shape`, contiguous.
inline Tensor plan_tensor(const char* op, const char* name, const Tensor& ref, const Tensor& t,
                          const std::vector<int64_t>& shape) {
  if (t.scalar_type() != ScalarType::Int) fail(op, "'", name, "' must be int32, got ", scalar_name(t.scalar_type()));
  if (!same_dev(ref, t)) fail(op, "'", name, "' is on ", dev_str(t), " but 'query' is on ", dev_str(ref));
  bool ok = t.dim() == int64_t(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = t.size(i) == shape[i];
  if (!ok) {
    std::ostringstream s;
    s << "[";
    for (size_t i = 0; i < shape.size(); ++i) s << (i ? ", " : "") << shape[i];
    s << "]";
    fail(op, "'", name, "' must have shape ", s.str(), " (from the schedule), got ", shape_str(t));
  }
  return torch::stable::contiguous(t);
}

// CPU: perm values in range (a bad plan must not read out of bounds).
inline void check_perm_range(const char* op, const char* name, const Tensor& t, int64_t hi) {
  const int32_t* p = static_cast<const int32_t*>(t.data_ptr());
  const int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i)
    if (p[i] < 0 || p[i] >= hi) fail(op, "'", name, "' holds ", p[i], " at flat index ", i, ", outside [0, ", hi, ")");
}

template <class B>
Tensor lsh_hash(Tensor x, Tensor proj) {
  const char* op = "hyper_attention_lsh_hash";
  if (x.dim() != 4) fail(op, "'x' must be 4-D [B, H, N, D], got ", shape_str(x));
  if (x.is_cuda() != B::kCuda) fail(op, "'x' must be a ", B::kCuda ? "CUDA" : "CPU", " tensor for this kernel");
  const DType dt = float_dtype(x, op, "'x'");
  if (B::kCuda && dt == DType::Float64) fail(op, "'x': float64 is supported on CPU only");
  if (x.size(3) < 1 || x.size(3) > 256) fail(op, "head dim D must be in [1, 256], got ", x.size(3));
  Tensor P = proj_of(op, x, proj);
  Tensor keys = empty_like_shape(x, {x.size(0), x.size(1), x.size(2)}, ScalarType::Int);
  HyperAttnHashParams p;
  p.batch = x.size(0); p.heads = x.size(1); p.n = x.size(2); p.head_dim = x.size(3);
  p.dtype = dt;
  p.x = x.data_ptr(); p.x_strides = strides_of(x);
  p.proj = static_cast<const float*>(P.data_ptr());
  p.num_projs = static_cast<int32_t>(P.size(1));
  p.keys = static_cast<int32_t*>(keys.data_ptr());
  check_status(B::lsh_hash(p, x), op);
  return keys;
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> plan(Tensor q, Tensor k, Tensor proj, Tensor sample_words, bool causal,
                                        int64_t block_size, int64_t sample_size, int64_t min_seq_len) {
  const char* op = "hyper_attention_plan";
  const DType dt = check_qkv<B>(op, q, k, nullptr);
  const HyperAttnConfig c = config_of(op, block_size, sample_size, min_seq_len);
  HyperAttnProblem p = problem_of(dt, q, k, nullptr, causal, 1.0, c);
  const HyperAttnPlanSizes s = sizes_of(op, p);
  Tensor P = proj_of(op, q, proj);
  Tensor words = plan_tensor(op, "sample_words", q, sample_words, {p.batch, p.heads_kv, s.s});
  Tensor qp = empty_like_shape(q, {p.batch, p.heads_q, s.pq}, ScalarType::Int);
  Tensor kp = empty_like_shape(q, {p.batch, p.heads_kv, s.pk}, ScalarType::Int);
  Tensor sm = empty_like_shape(q, {p.batch, p.heads_kv, s.s}, ScalarType::Int);
  if (qp.numel() == 0 && kp.numel() == 0 && sm.numel() == 0) return {qp, kp, sm};
  HyperAttnPlanInputs in;
  in.proj = static_cast<const float*>(P.data_ptr());
  in.num_projs = static_cast<int32_t>(P.size(1));
  in.sample_words = static_cast<const int32_t*>(words.data_ptr());
  HyperAttnPlan pl;
  pl.pq = s.pq; pl.pk = s.pk; pl.s = s.s;
  pl.q_perm = static_cast<int32_t*>(qp.data_ptr());
  pl.k_perm = static_cast<int32_t*>(kp.data_ptr());
  pl.samples = static_cast<int32_t*>(sm.data_ptr());
  const size_t bytes = B::plan_ws(p, in.num_projs);
  Tensor ws = empty_like_shape(q, {static_cast<int64_t>(bytes)}, ScalarType::Byte);
  check_status(B::plan(p, in, pl, ws.data_ptr(), bytes, q), op);
  return {qp, kp, sm};
}

// The plan tensors of a forward/backward call, checked against the schedule.
struct PlanArgs {
  Tensor qp, kp, sm;
  HyperAttnPlan pl;
};
template <class B>
PlanArgs plan_args(const char* op, const Tensor& q, const HyperAttnProblem& p, const Tensor& q_perm,
                   const Tensor& k_perm, const Tensor& samples) {
  const HyperAttnPlanSizes s = sizes_of(op, p);
  PlanArgs a{plan_tensor(op, "q_perm", q, q_perm, {p.batch, p.heads_q, s.pq}),
             plan_tensor(op, "k_perm", q, k_perm, {p.batch, p.heads_kv, s.pk}),
             plan_tensor(op, "samples", q, samples, {p.batch, p.heads_kv, s.s}), HyperAttnPlan{}};
  if (!B::kCuda) {
    check_perm_range(op, "q_perm", a.qp, std::max<int64_t>(p.nq, 1));
    check_perm_range(op, "k_perm", a.kp, std::max<int64_t>(p.nk, 1));
    // Sample ranks are relative to their piece: the smallest Approx key count bounds them all.
    int64_t count = 0;
    fastnorm::hyper_attention::schedule(p.config, p.nq, p.nk, p.causal, nullptr, 0, &count);
    std::vector<fastnorm::hyper_attention::HyperAttnSubproblem> sub(count);
    fastnorm::hyper_attention::schedule(p.config, p.nq, p.nk, p.causal, sub.data(), count, &count);
    const int32_t* sp = static_cast<const int32_t*>(a.sm.data_ptr());
    for (int64_t bg = 0; bg < p.batch * p.heads_kv; ++bg)
      for (const auto& piece : sub) {
        if (piece.kind != fastnorm::hyper_attention::HyperAttnKind::Approx) continue;
        for (int64_t t = 0; t < p.config.sample_size; ++t) {
          const int32_t v = sp[bg * s.s + piece.sample_offset + t];
          if (v < 0 || v >= piece.nk) fail(op, "'samples' holds ", v, ", outside [0, ", piece.nk, ") of its piece");
        }
      }
    // k_perm / q_perm entries must also lie inside their piece (else the block structure is meaningless).
    const int32_t* qv = static_cast<const int32_t*>(a.qp.data_ptr());
    const int32_t* kv = static_cast<const int32_t*>(a.kp.data_ptr());
    for (const auto& piece : sub) {
      if (piece.kind != fastnorm::hyper_attention::HyperAttnKind::Approx) continue;
      for (int64_t bh = 0; bh < p.batch * p.heads_q; ++bh)
        for (int64_t i = 0; i < piece.nq; ++i) {
          const int32_t v = qv[bh * s.pq + piece.q_perm_offset + i];
          if (v < piece.q_begin || v >= piece.q_begin + piece.nq)
            fail(op, "'q_perm' holds ", v, ", outside its piece's rows [", piece.q_begin, ", ", piece.q_begin + piece.nq, ")");
        }
      for (int64_t bg = 0; bg < p.batch * p.heads_kv; ++bg)
        for (int64_t i = 0; i < piece.nk; ++i) {
          const int32_t v = kv[bg * s.pk + piece.k_perm_offset + i];
          if (v < piece.k_begin || v >= piece.k_begin + piece.nk)
            fail(op, "'k_perm' holds ", v, ", outside its piece's keys [", piece.k_begin, ", ", piece.k_begin + piece.nk, ")");
        }
    }
  }
  a.pl.pq = s.pq; a.pl.pk = s.pk; a.pl.s = s.s;
  a.pl.q_perm = static_cast<int32_t*>(a.qp.data_ptr());
  a.pl.k_perm = static_cast<int32_t*>(a.kp.data_ptr());
  a.pl.samples = static_cast<int32_t*>(a.sm.data_ptr());
  return a;
}

template <class B>
std::tuple<Tensor, Tensor> forward(Tensor q, Tensor k, Tensor v, Tensor q_perm, Tensor k_perm, Tensor samples,
                                   bool causal, double scale, int64_t block_size, int64_t sample_size,
                                   int64_t min_seq_len) {
  const char* op = "hyper_attention";
  const DType dt = check_qkv<B>(op, q, k, &v);
  if (!std::isfinite(scale)) fail(op, "'scale' must be finite, got ", scale);
  const HyperAttnConfig c = config_of(op, block_size, sample_size, min_seq_len);
  HyperAttnProblem p = problem_of(dt, q, k, &v, causal, scale, c);
  PlanArgs a = plan_args<B>(op, q, p, q_perm, k_perm, samples);
  Tensor out = torch::stable::empty_like(q);
  Tensor lse = empty_like_shape(q, {p.batch, p.heads_q, p.nq}, stats_type(dt));
  if (out.numel() == 0) return {out, lse};
  HyperAttnOutput o;
  o.out = out.data_ptr(); o.out_strides = strides_of(out);
  o.lse = lse.data_ptr();
  const size_t bytes = B::fwd_ws(p);
  Tensor ws = empty_like_shape(q, {static_cast<int64_t>(bytes)}, ScalarType::Byte);
  check_status(B::forward(p, a.pl, o, ws.data_ptr(), bytes, q), op);
  return {out, lse};
}

template <class B>
std::tuple<Tensor, Tensor, Tensor> backward(Tensor dout, Tensor dlse, Tensor q, Tensor k, Tensor v, Tensor out,
                                            Tensor lse, Tensor q_perm, Tensor k_perm, Tensor samples, bool causal,
                                            double scale, int64_t block_size, int64_t sample_size,
                                            int64_t min_seq_len) {
  const char* op = "hyper_attention_backward";
  const DType dt = check_qkv<B>(op, q, k, &v);
  if (!std::isfinite(scale)) fail(op, "'scale' must be finite, got ", scale);
  const HyperAttnConfig c = config_of(op, block_size, sample_size, min_seq_len);
  HyperAttnProblem p = problem_of(dt, q, k, &v, causal, scale, c);
  PlanArgs a = plan_args<B>(op, q, p, q_perm, k_perm, samples);
  auto same_as_q = [&](const Tensor& t, const char* name) {
    if (t.dim() != 4 || t.size(0) != q.size(0) || t.size(1) != q.size(1) || t.size(2) != q.size(2) ||
        t.size(3) != q.size(3))
      fail(op, "'", name, "' must have the shape of 'query' ", shape_str(q), ", got ", shape_str(t));
    if (t.scalar_type() != q.scalar_type())
      fail(op, "'", name, "' has dtype ", scalar_name(t.scalar_type()), " but 'query' has ", scalar_name(q.scalar_type()));
    if (!same_dev(q, t)) fail(op, "'", name, "' is on ", dev_str(t), " but 'query' is on ", dev_str(q));
  };
  same_as_q(dout, "dout");
  same_as_q(out, "out");
  const ScalarType st = stats_type(dt);
  auto stats = [&](const Tensor& t, const char* name) {
    if (t.dim() != 3 || t.size(0) != p.batch || t.size(1) != p.heads_q || t.size(2) != p.nq)
      fail(op, "'", name, "' must have shape [", p.batch, ", ", p.heads_q, ", ", p.nq, "], got ", shape_str(t));
    if (!same_dev(q, t)) fail(op, "'", name, "' is on ", dev_str(t), " but 'query' is on ", dev_str(q));
    Tensor r = t.scalar_type() == st ? t : torch::stable::to(t, st);
    return torch::stable::contiguous(r);
  };
  Tensor L = stats(lse, "lse");
  const bool has_dlse = dlse.numel() > 0;
  Tensor dL = has_dlse ? stats(dlse, "dlse") : dlse;
  Tensor dq = torch::stable::empty_like(q);
  Tensor dk = torch::stable::empty_like(k);
  Tensor dv = torch::stable::empty_like(v);
  if (dq.numel() == 0 && dk.numel() == 0) return {dq, dk, dv};
  HyperAttnGrads g;
  g.dout = dout.data_ptr(); g.dout_strides = strides_of(dout);
  g.dlse = has_dlse ? dL.data_ptr() : nullptr;
  g.out = out.data_ptr(); g.out_strides = strides_of(out);
  g.lse = L.data_ptr();
  g.dq = dq.data_ptr(); g.dq_strides = strides_of(dq);
  g.dk = dk.data_ptr(); g.dk_strides = strides_of(dk);
  g.dv = dv.data_ptr(); g.dv_strides = strides_of(dv);
  const size_t bytes = B::bwd_ws(p);
  Tensor ws = empty_like_shape(q, {static_cast<int64_t>(bytes)}, ScalarType::Byte);
  check_status(B::backward(p, a.pl, g, ws.data_ptr(), bytes, q), op);
  return {dq, dk, dv};
}

template <class B>
std::tuple<Tensor, Tensor> merge(Tensor out1, Tensor lse1, Tensor out2, Tensor lse2) {
  const char* op = "hyper_attention_merge";
  if (out1.dim() != 4) fail(op, "'out1' must be 4-D [B, H, N, D], got ", shape_str(out1));
  if (out1.is_cuda() != B::kCuda) fail(op, "'out1' must be a ", B::kCuda ? "CUDA" : "CPU", " tensor for this kernel");
  const DType dt = float_dtype(out1, op, "'out1'");
  if (B::kCuda && dt == DType::Float64) fail(op, "'out1': float64 is supported on CPU only");
  if (out2.dim() != 4 || out2.size(0) != out1.size(0) || out2.size(1) != out1.size(1) || out2.size(2) != out1.size(2) ||
      out2.size(3) != out1.size(3))
    fail(op, "'out2' must have the shape of 'out1' ", shape_str(out1), ", got ", shape_str(out2));
  if (out2.scalar_type() != out1.scalar_type())
    fail(op, "'out2' has dtype ", scalar_name(out2.scalar_type()), " but 'out1' has ", scalar_name(out1.scalar_type()));
  if (!same_dev(out1, out2)) fail(op, "'out2' is on ", dev_str(out2), " but 'out1' is on ", dev_str(out1));
  const ScalarType st = stats_type(dt);
  auto stats = [&](const Tensor& t, const char* name) {
    if (t.dim() != 3 || t.size(0) != out1.size(0) || t.size(1) != out1.size(1) || t.size(2) != out1.size(2))
      fail(op, "'", name, "' must have shape [", out1.size(0), ", ", out1.size(1), ", ", out1.size(2), "], got ",
           shape_str(t));
    if (!same_dev(out1, t)) fail(op, "'", name, "' is on ", dev_str(t), " but 'out1' is on ", dev_str(out1));
    Tensor r = t.scalar_type() == st ? t : torch::stable::to(t, st);
    return torch::stable::contiguous(r);
  };
  Tensor l1 = stats(lse1, "lse1"), l2 = stats(lse2, "lse2");
  Tensor out = torch::stable::empty_like(out1);
  Tensor lse = empty_like_shape(out1, {out1.size(0), out1.size(1), out1.size(2)}, st);
  if (lse.numel() == 0) return {out, lse};
  HyperAttnMergeParams p;
  p.batch = out1.size(0); p.heads = out1.size(1); p.n = out1.size(2); p.head_dim = out1.size(3);
  p.dtype = dt;
  p.out1 = out1.data_ptr(); p.out1_strides = strides_of(out1); p.lse1 = l1.data_ptr();
  p.out2 = out2.data_ptr(); p.out2_strides = strides_of(out2); p.lse2 = l2.data_ptr();
  p.out = out.data_ptr(); p.out_strides = strides_of(out); p.lse = lse.data_ptr();
  check_status(B::merge(p, out1), op);
  return {out, lse};
}

}  // namespace hyper_attention_ops
}  // namespace binding
}  // namespace fastnorm

#define FASTNORM_REGISTER_HYPER_ATTENTION_IMPLS(m, Backend)                                                       \
  m.impl("hyper_attention_lsh_hash", TORCH_BOX(&fastnorm::binding::hyper_attention_ops::lsh_hash<Backend>));      \
  m.impl("hyper_attention_plan", TORCH_BOX(&fastnorm::binding::hyper_attention_ops::plan<Backend>));              \
  m.impl("hyper_attention", TORCH_BOX(&fastnorm::binding::hyper_attention_ops::forward<Backend>));                \
  m.impl("hyper_attention_backward", TORCH_BOX(&fastnorm::binding::hyper_attention_ops::backward<Backend>));      \
  m.impl("hyper_attention_merge", TORCH_BOX(&fastnorm::binding::hyper_attention_ops::merge<Backend>))

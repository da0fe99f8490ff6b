// hyper_attention family: the causal forward with grouped-query heads, against dense causal softmax
// attention in double.
//
// HyperAttention approximates attention only on (sub-)problems with more than config.min_seq_len keys; at or
// below it every piece of the schedule is exact (plan_sizes reports no approximated piece, pq = pk = s = 0),
// so the output must equal softmax attention up to float32 rounding. That is the regime checked here. The
// approximate estimator (LSH blocks plus reweighted samples) is checked against its own naive reimplementation
// by tests/cpp/test_hyper_attention.cpp, not here.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <vector>

#include "check.h"
#include "fastnorm/hyper_attention.h"

namespace example {

bool check_hyper_attention() {
  namespace ha = fastnorm::hyper_attention;
  constexpr int64_t B = 1, Hq = 2, Hkv = 1, N = 12, D = 8;  // two query heads share one kv head
  std::vector<float> q(B * Hq * N * D), k(B * Hkv * N * D), v(B * Hkv * N * D);
  for (size_t i = 0; i < q.size(); ++i) q[i] = static_cast<float>(std::sin(0.37 * i + 0.1));
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<float>(std::cos(0.23 * i));
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<float>(std::sin(0.91 * i + 1.0));

  ha::HyperAttnProblem p;
  p.batch = B;
  p.heads_q = Hq;
  p.heads_kv = Hkv;
  p.nq = N;
  p.nk = N;
  p.head_dim = D;
  p.dtype = fastnorm::DType::Float32;
  // Contiguous [B, H, N, D] views: element strides of (b, h, n, d).
  const ha::HyperAttnStrides sq{Hq * N * D, N * D, D, 1}, skv{Hkv * N * D, N * D, D, 1};
  p.q = q.data();
  p.q_strides = sq;
  p.k = k.data();
  p.k_strides = skv;
  p.v = v.data();
  p.v_strides = skv;
  p.causal = true;
  p.scale = 1.0 / std::sqrt(double(D));
  p.config.block_size = 4;
  p.config.sample_size = 4;
  p.config.min_seq_len = 16;  // >= N: the exact regime

  // The plan holds the LSH permutations and samples of the approximated pieces; here there are none.
  ha::HyperAttnPlanSizes sizes;
  if (!call_ok("hyper_attention::plan_sizes", ha::plan_sizes(p.config, N, N, p.causal, &sizes))) return false;
  const bool exact = sizes.pq == 0 && sizes.pk == 0 && sizes.s == 0;
  std::vector<int32_t> q_perm(sizes.pq), k_perm(sizes.pk), samples(sizes.s), words(sizes.s);
  ha::HyperAttnPlan plan;
  plan.pq = sizes.pq;
  plan.pk = sizes.pk;
  plan.s = sizes.s;
  plan.q_perm = q_perm.data();
  plan.k_perm = k_perm.data();
  plan.samples = samples.data();
  ha::HyperAttnPlanInputs in;  // LSH projections and sample words: unused without approximated pieces
  in.sample_words = words.data();
  std::vector<unsigned char> ws(std::max(ha::plan_workspace_size(p, 0), ha::forward_workspace_size(p)) + 1);
  if (!call_ok("hyper_attention::plan", ha::plan(p, in, plan, ws.data(), ws.size()))) return false;

  std::vector<float> out(B * Hq * N * D), lse(B * Hq * N);
  ha::HyperAttnOutput o;
  o.out = out.data();
  o.out_strides = sq;
  o.lse = lse.data();  // float32 [B, Hq, N]
  if (!call_ok("hyper_attention::forward", ha::forward(p, plan, o, ws.data(), ws.size()))) return false;

  // Dense causal attention in double: s_j = scale <q_i, k_j> for j <= i, lse_i = log sum_j exp(s_j),
  // out_i = sum_j exp(s_j - lse_i) v_j. Query head h reads kv head h / (Hq / Hkv).
  std::vector<double> out_ref(out.size()), lse_ref(lse.size());
  for (int64_t h = 0; h < Hq; ++h) {
    const int64_t g = h / (Hq / Hkv);
    for (int64_t i = 0; i < N; ++i) {
      std::vector<double> s(i + 1);
      double mx = -INFINITY;
      for (int64_t j = 0; j <= i; ++j) {
        double dot = 0;
        for (int64_t d = 0; d < D; ++d) dot += double(q[(h * N + i) * D + d]) * k[(g * N + j) * D + d];
        s[j] = p.scale * dot;
        mx = std::fmax(mx, s[j]);
      }
      double z = 0;
      for (double e : s) z += std::exp(e - mx);
      const double l = mx + std::log(z);
      lse_ref[h * N + i] = l;
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0;
        for (int64_t j = 0; j <= i; ++j) acc += std::exp(s[j] - l) * v[(g * N + j) * D + d];
        out_ref[(h * N + i) * D + d] = acc;
      }
    }
  }
  std::printf("hyper_attention: causal, %lld query heads on %lld kv head, N = %lld, D = %lld, %s schedule\n",
              (long long)Hq, (long long)Hkv, (long long)N, (long long)D, exact ? "exact" : "APPROXIMATE");
  bool ok = exact;
  ok &= report("hyper_attention::forward out", max_error(out, out_ref));
  ok &= report("hyper_attention::forward lse (scaled)", max_scaled_error(lse, lse_ref));
  return ok;
}

}  // namespace example

// Host emulation of the HyperAttention CUDA kernels (csrc/core/cuda/hyper_attention_kernel.cuh). The block bodies
// are FASTNORM_HD and written for any thread count, so g++ runs every block of every launch the CUDA launcher makes
// (same schedule, same piece geometry via kern::piece_of, same launch order) with one thread, and the results must
// match (a) a dense float64 evaluation of the estimator written here from the spec's definitions (§3.5, §3.9) and
// (b) the CPU core (fastnorm::hyper_attention::forward/backward) on the same plan.
// What it checks: tile geometry (ragged tiles, query blocks shorter than a tile, empty query blocks, causal tiles),
// the sample mask and weights, the merge into the accumulator, the key-owner/slot-owner split of dK/dV and the
// in-order sample scatter, hashing bit-identity with the CPU. What it cannot check: the multi-thread division of the
// phases and the __syncthreads placement (run the CUDA tests for that), the CUB sort (the CPU plan is used).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

#include "../../csrc/core/cuda/hyper_attention_kernel.cuh"
#include "fastnorm/hyper_attention.h"

namespace {

namespace ha = fastnorm::hyper_attention;
namespace kern = fastnorm::hyper_attention::cuda::kern;
using fastnorm::DType;

struct Case {
  int64_t B, Hq, Hkv, Nq, Nk, D;
  bool causal;
  int64_t b, m, mn;
  int tile;
};

struct Problem {
  Case c;
  std::vector<float> q, k, v, dout, dlse;
  std::vector<ha::HyperAttnSubproblem> sched;
  ha::HyperAttnPlanSizes sz;
  std::vector<int32_t> qp, kp, sm;
  float scale;
};

std::vector<ha::HyperAttnSubproblem> schedule_of(const Case& c, ha::HyperAttnPlanSizes& sz) {
  ha::HyperAttnConfig cfg;
  cfg.block_size = c.b; cfg.sample_size = c.m; cfg.min_seq_len = c.mn;
  int64_t n = 0;
  EXPECT_TRUE(ha::schedule(cfg, c.Nq, c.Nk, c.causal, nullptr, 0, &n).ok());
  std::vector<ha::HyperAttnSubproblem> s(n);
  if (n) {
    EXPECT_TRUE(ha::schedule(cfg, c.Nq, c.Nk, c.causal, s.data(), n, &n).ok());
  }
  EXPECT_TRUE(ha::plan_sizes(cfg, c.Nq, c.Nk, c.causal, &sz).ok());
  return s;
}

// A plan with random (not LSH) permutations per piece and random sample ranks: any such plan is valid input.
Problem make(const Case& c, uint32_t seed) {
  Problem p;
  p.c = c;
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto fill = [&](std::vector<float>& x, int64_t n) { x.resize(n); for (auto& e : x) e = nd(rng); };
  fill(p.q, c.B * c.Hq * c.Nq * c.D);
  fill(p.k, c.B * c.Hkv * c.Nk * c.D);
  fill(p.v, c.B * c.Hkv * c.Nk * c.D);
  fill(p.dout, c.B * c.Hq * c.Nq * c.D);
  fill(p.dlse, c.B * c.Hq * c.Nq);
  p.scale = 1.f / std::sqrt(static_cast<float>(c.D));
  p.sched = schedule_of(c, p.sz);
  p.qp.assign(c.B * c.Hq * p.sz.pq, 0);
  p.kp.assign(c.B * c.Hkv * p.sz.pk, 0);
  p.sm.assign(c.B * c.Hkv * p.sz.s, 0);
  for (const auto& sp : p.sched) {
    if (sp.kind != ha::HyperAttnKind::Approx) continue;
    for (int64_t bh = 0; bh < c.B * c.Hq; ++bh) {
      int32_t* dst = p.qp.data() + bh * p.sz.pq + sp.q_perm_offset;
      std::iota(dst, dst + sp.nq, static_cast<int32_t>(sp.q_begin));
      std::shuffle(dst, dst + sp.nq, rng);
    }
    for (int64_t bg = 0; bg < c.B * c.Hkv; ++bg) {
      int32_t* dst = p.kp.data() + bg * p.sz.pk + sp.k_perm_offset;
      std::iota(dst, dst + sp.nk, static_cast<int32_t>(sp.k_begin));
      std::shuffle(dst, dst + sp.nk, rng);
      std::uniform_int_distribution<int32_t> w(0, 0x7fffffff);
      for (int64_t t = 0; t < c.m; ++t)
        p.sm[bg * p.sz.s + sp.sample_offset + t] = static_cast<int32_t>(ha::detail::sample_rank(w(rng), sp.nk));
      // force a few in-block slots so the mask matters: slot 0 takes rank 0 (block 0)
      if (c.m > 0) p.sm[bg * p.sz.s + sp.sample_offset] = 0;
    }
  }
  return p;
}

int64_t qi(const Case& c, int64_t b, int64_t h, int64_t n) { return ((b * c.Hq + h) * c.Nq + n) * c.D; }
int64_t ki(const Case& c, int64_t b, int64_t g, int64_t n) { return ((b * c.Hkv + g) * c.Nk + n) * c.D; }

// Dense float64 weights W[b][h][i][j] of the final entry multiset (spec §3.5, §6 item 6).
std::vector<double> dense_w(const Problem& p) {
  const Case& c = p.c;
  std::vector<double> W(c.B * c.Hq * c.Nq * c.Nk, 0.0);
  const int64_t G = c.Hq / c.Hkv;
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h) {
      const int64_t g = h / G, bh = b * c.Hq + h, bg = b * c.Hkv + g;
      double* w = W.data() + bh * c.Nq * c.Nk;
      for (const auto& sp : p.sched) {
        if (sp.kind == ha::HyperAttnKind::ExactFull) {
          for (int64_t i = 0; i < sp.nq; ++i)
            for (int64_t j = 0; j < sp.nk; ++j) w[(sp.q_begin + i) * c.Nk + sp.k_begin + j] += 1;
        } else if (sp.kind == ha::HyperAttnKind::ExactCausal) {
          for (int64_t i = 0; i < sp.nq; ++i)
            for (int64_t j = 0; j <= i; ++j) w[(sp.q_begin + i) * c.Nk + sp.k_begin + j] += 1;
        } else {
          const int64_t nb = sp.num_blocks;
          for (int64_t r = 0; r < sp.nq; ++r) {
            const int64_t i = p.qp[bh * p.sz.pq + sp.q_perm_offset + r];
            const int64_t jb = ha::detail::block_of_rank(r, sp.nq, nb);
            for (int64_t kr = ha::detail::block_begin(jb, sp.nk, nb); kr < ha::detail::block_begin(jb + 1, sp.nk, nb); ++kr)
              w[i * c.Nk + p.kp[bg * p.sz.pk + sp.k_perm_offset + kr]] += 1;
            for (int64_t t = 0; t < c.m; ++t) {
              const int64_t cr = p.sm[bg * p.sz.s + sp.sample_offset + t];
              if (ha::detail::block_of_rank(cr, sp.nk, nb) == jb) continue;
              w[i * c.Nk + p.kp[bg * p.sz.pk + sp.k_perm_offset + cr]] += double(sp.nk) / double(c.m);
            }
          }
        }
      }
    }
  return W;
}

struct Result {
  std::vector<double> out, lse, dq, dk, dv;
};

Result dense_eval(const Problem& p) {
  const Case& c = p.c;
  const std::vector<double> W = dense_w(p);
  const int64_t G = c.Hq / c.Hkv, D = c.D;
  Result r;
  r.out.assign(c.B * c.Hq * c.Nq * D, 0);
  r.lse.assign(c.B * c.Hq * c.Nq, 0);
  r.dq.assign(r.out.size(), 0);
  r.dk.assign(c.B * c.Hkv * c.Nk * D, 0);
  r.dv.assign(r.dk.size(), 0);
  std::vector<double> l(c.Nk), pr(c.Nk);
  for (int64_t b = 0; b < c.B; ++b)
    for (int64_t h = 0; h < c.Hq; ++h) {
      const int64_t g = h / G, bh = b * c.Hq + h;
      for (int64_t i = 0; i < c.Nq; ++i) {
        double mx = -INFINITY;
        for (int64_t j = 0; j < c.Nk; ++j) {
          double s = 0;
          for (int64_t d = 0; d < D; ++d) s += double(p.q[qi(c, b, h, i) + d]) * p.k[ki(c, b, g, j) + d];
          l[j] = p.scale * s;
          if (W[(bh * c.Nq + i) * c.Nk + j] > 0) mx = std::max(mx, l[j]);
        }
        double z = 0;
        for (int64_t j = 0; j < c.Nk; ++j) {
          const double w = W[(bh * c.Nq + i) * c.Nk + j];
          pr[j] = w > 0 ? w * std::exp(l[j] - mx) : 0;
          z += pr[j];
        }
        const double L = mx + std::log(z);
        r.lse[bh * c.Nq + i] = L;
        for (int64_t j = 0; j < c.Nk; ++j) pr[j] /= z;
        double dd = 0;
        for (int64_t d = 0; d < D; ++d) {
          double o = 0;
          for (int64_t j = 0; j < c.Nk; ++j) o += pr[j] * p.v[ki(c, b, g, j) + d];
          r.out[qi(c, b, h, i) + d] = o;
          dd += o * p.dout[qi(c, b, h, i) + d];
        }
        dd -= p.dlse[bh * c.Nq + i];
        for (int64_t j = 0; j < c.Nk; ++j) {
          if (pr[j] == 0) continue;
          double dp = 0;
          for (int64_t d = 0; d < D; ++d) dp += double(p.dout[qi(c, b, h, i) + d]) * p.v[ki(c, b, g, j) + d];
          const double ds = pr[j] * (dp - dd);
          for (int64_t d = 0; d < D; ++d) {
            r.dq[qi(c, b, h, i) + d] += p.scale * ds * p.k[ki(c, b, g, j) + d];
            r.dk[ki(c, b, g, j) + d] += p.scale * ds * p.q[qi(c, b, h, i) + d];
            r.dv[ki(c, b, g, j) + d] += pr[j] * p.dout[qi(c, b, h, i) + d];
          }
        }
      }
    }
  return r;
}

kern::Args args_of(const Problem& p) {
  const Case& c = p.c;
  kern::Args a;
  a.B = c.B; a.Hq = c.Hq; a.Hkv = c.Hkv; a.G = c.Hq / c.Hkv; a.Nq = c.Nq; a.Nk = c.Nk; a.D = c.D;
  a.scale = p.scale; a.m = c.m;
  auto view = [&](const std::vector<float>& x, int64_t H, int64_t N) {
    kern::View v; v.p = x.data(); v.sd = 1; v.sn = c.D; v.sh = N * c.D; v.sb = H * N * c.D; return v;
  };
  a.q = view(p.q, c.Hq, c.Nq); a.k = view(p.k, c.Hkv, c.Nk); a.v = view(p.v, c.Hkv, c.Nk);
  a.q_perm = p.qp.data(); a.pq = p.sz.pq; a.k_perm = p.kp.data(); a.pk = p.sz.pk; a.samples = p.sm.data(); a.s = p.sz.s;
  a.TQ = a.TK = c.tile; a.Dp = static_cast<int>(c.D + 1);
  return a;
}

// The CUDA launch sequence of forward_t / backward_t, every block run by one host thread.
Result emulate(const Problem& p) {
  const Case& c = p.c;
  kern::Args a = args_of(p);
  const int T = c.tile;
  std::vector<unsigned char> smem(static_cast<size_t>(kern::meta_bytes() +
      4 * std::max({kern::fwd_smem_floats(T, T, a.Dp), kern::dq_smem_floats(T, T, a.Dp), kern::dkv_smem_floats(T, T, a.Dp)})) + 16);
  void* sp = smem.data() + ((16 - reinterpret_cast<uintptr_t>(smem.data()) % 16) % 16);
  std::vector<float> acc(c.B * c.Hq * c.Nq * c.D, std::nanf("")), lse(c.B * c.Hq * c.Nq, -INFINITY);
  kern::ViewF av; av.p = acc.data(); av.sd = 1; av.sn = c.D; av.sh = c.Nq * c.D; av.sb = c.Hq * c.Nq * c.D;
  for (const auto& s : p.sched) {
    const kern::PieceK pc = kern::piece_of(s, c.m, T, false, false);
    for (int64_t blk = 0; blk < c.B * c.Hq * pc.ntiles; ++blk) kern::fwd_block<float>(a, pc, av, lse.data(), blk, 0, 1, sp);
  }
  Result r;
  r.out.assign(acc.begin(), acc.end());
  r.lse.assign(lse.begin(), lse.end());
  // backward, with the emulated forward's out/lse (as the CUDA backward would get them)
  kern::View dout = a.q; dout.p = p.dout.data();
  kern::View outv = a.q; outv.p = acc.data();
  std::vector<float> dvec(c.B * c.Hq * c.Nq);
  for (int64_t row = 0; row < c.B * c.Hq * c.Nq; ++row) {
    const int64_t n = row % c.Nq, bh = row / c.Nq;
    dvec[row] = kern::dvec_row<float>(dout, outv, p.dlse.data(), bh / c.Hq, bh % c.Hq, n, row, c.D);
  }
  std::vector<float> dq(acc.size(), 0.f), dk(c.B * c.Hkv * c.Nk * c.D, 0.f), dv(dk.size(), 0.f);
  std::vector<float> pk(c.B * c.Hkv * c.m * c.D, std::nanf("")), pv(pk.size(), std::nanf(""));
  kern::DkvOut o; o.dk_acc = dk.data(); o.dv_acc = dv.data(); o.partial_k = pk.data(); o.partial_v = pv.data();
  for (const auto& s : p.sched) {
    const kern::PieceK pq = kern::piece_of(s, c.m, T, false, false);
    for (int64_t blk = 0; blk < c.B * c.Hq * pq.ntiles; ++blk)
      kern::dq_block<float>(a, pq, dout, lse.data(), dvec.data(), dq.data(), blk, 0, 1, sp);
    const kern::PieceK pk0 = kern::piece_of(s, c.m, T, true, false);
    for (int64_t blk = 0; blk < c.B * c.Hkv * pk0.ntiles; ++blk)
      kern::dkv_block<float>(a, pk0, 0, dout, lse.data(), dvec.data(), o, blk, 0, 1, sp);
    if (s.kind == ha::HyperAttnKind::Approx && c.m > 0 && s.num_blocks > 1) {
      const kern::PieceK ps = kern::piece_of(s, c.m, T, true, true);
      for (int64_t blk = 0; blk < c.B * c.Hkv * ps.ntiles; ++blk)
        kern::dkv_block<float>(a, ps, 1, dout, lse.data(), dvec.data(), o, blk, 0, 1, sp);
      for (int64_t bg = 0; bg < c.B * c.Hkv; ++bg) kern::scatter_samples(a, ps, o, bg, 0, 1);
    }
  }
  r.dq.assign(dq.begin(), dq.end());
  r.dk.assign(dk.begin(), dk.end());
  r.dv.assign(dv.begin(), dv.end());
  return r;
}

double max_rel(const std::vector<double>& x, const std::vector<double>& ref) {
  double num = 0, den = 1;
  for (size_t i = 0; i < x.size(); ++i) {
    num = std::max(num, std::isnan(x[i]) ? INFINITY : std::abs(x[i] - ref[i]));
    den = std::max(den, std::abs(ref[i]));
  }
  return num / den;
}

class HyperAttnCudaEmulation : public ::testing::TestWithParam<Case> {};

TEST_P(HyperAttnCudaEmulation, MatchesDenseFloat64) {
  const Case c = GetParam();
  const Problem p = make(c, 1234u + static_cast<uint32_t>(c.Nq * 7 + c.Nk));
  const Result ref = dense_eval(p);
  const Result got = emulate(p);
  EXPECT_LT(max_rel(got.out, ref.out), 2e-5);
  EXPECT_LT(max_rel(got.lse, ref.lse), 2e-5);
  EXPECT_LT(max_rel(got.dq, ref.dq), 1e-4);
  EXPECT_LT(max_rel(got.dk, ref.dk), 1e-4);
  EXPECT_LT(max_rel(got.dv, ref.dv), 1e-4);
  // the emulated launch order is deterministic: a second run is bitwise identical
  const Result again = emulate(p);
  EXPECT_EQ(got.out, again.out);
  EXPECT_EQ(got.dk, again.dk);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, HyperAttnCudaEmulation,
    ::testing::Values(
        // B, Hq, Hkv, Nq, Nk, D, causal, b, m, min, tile
        Case{1, 1, 1, 37, 37, 5, false, 4, 3, 8, 4},      // ragged blocks and tiles, non-causal approx
        Case{2, 4, 2, 37, 37, 8, true, 4, 3, 8, 4},       // causal recursion, GQA
        Case{1, 2, 1, 5, 61, 3, false, 4, 6, 8, 8},       // Nq < nb: empty query blocks
        Case{1, 2, 2, 61, 9, 4, false, 2, 2, 4, 4},       // Nq >> Nk: query blocks longer than a tile
        Case{1, 1, 1, 64, 64, 16, true, 8, 8, 16, 8},     // power of two, tile == block
        Case{1, 2, 2, 20, 20, 7, true, 4, 3, 64, 4},      // all exact (causal leaf only)
        Case{1, 3, 1, 33, 47, 9, false, 5, 0, 8, 4}));    // m = 0: block-diagonal only

TEST(HyperAttnCudaEmulation, HashMatchesCpuCore) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t B = 2, H = 3, N = 50, D = 24;
  const int r = 7;
  std::vector<float> x(B * H * N * D), proj(D * r);
  for (auto& e : x) e = nd(rng);
  for (auto& e : proj) e = nd(rng);
  x[5 * D + 3] = std::nanf("");  // a NaN row hashes to key 0 on both
  std::vector<int32_t> cpu(B * H * N, -1);
  ha::HyperAttnHashParams hp;
  hp.batch = B; hp.heads = H; hp.n = N; hp.head_dim = D; hp.dtype = DType::Float32;
  hp.x = x.data(); hp.x_strides = {H * N * D, N * D, D, 1};
  hp.proj = proj.data(); hp.num_projs = r; hp.keys = cpu.data();
  ASSERT_TRUE(ha::lsh_hash(hp).ok());
  kern::View v; v.p = x.data(); v.sb = H * N * D; v.sh = N * D; v.sn = D; v.sd = 1;
  for (int64_t row = 0; row < B * H * N; ++row) {
    const int64_t n = row % N, bh = row / N;
    EXPECT_EQ(kern::hash_row<float>(v, bh / H, bh % H, n, D, proj.data(), r), cpu[row]) << row;
  }
  EXPECT_EQ(cpu[5], 0);
}

TEST(HyperAttnCudaEmulation, MatchesCpuCoreOnSamePlan) {
  const Case c{2, 4, 2, 41, 41, 12, true, 4, 5, 8, 8};
  const Problem p = make(c, 99u);
  const Result got = emulate(p);
  ha::HyperAttnProblem pr;
  pr.batch = c.B; pr.heads_q = c.Hq; pr.heads_kv = c.Hkv; pr.nq = c.Nq; pr.nk = c.Nk; pr.head_dim = c.D;
  pr.dtype = DType::Float32;
  pr.q = p.q.data(); pr.q_strides = {c.Hq * c.Nq * c.D, c.Nq * c.D, c.D, 1};
  pr.k = p.k.data(); pr.k_strides = {c.Hkv * c.Nk * c.D, c.Nk * c.D, c.D, 1};
  pr.v = p.v.data(); pr.v_strides = pr.k_strides;
  pr.causal = c.causal; pr.scale = p.scale;
  pr.config.block_size = c.b; pr.config.sample_size = c.m; pr.config.min_seq_len = c.mn;
  ha::HyperAttnPlan pl;
  pl.pq = p.sz.pq; pl.pk = p.sz.pk; pl.s = p.sz.s;
  pl.q_perm = const_cast<int32_t*>(p.qp.data()); pl.k_perm = const_cast<int32_t*>(p.kp.data());
  pl.samples = const_cast<int32_t*>(p.sm.data());
  std::vector<float> out(p.q.size()), lse(c.B * c.Hq * c.Nq);
  ha::HyperAttnOutput o;
  o.out = out.data(); o.out_strides = pr.q_strides; o.lse = lse.data();
  std::vector<unsigned char> ws(ha::forward_workspace_size(pr) + 64);
  ASSERT_TRUE(ha::forward(pr, pl, o, ws.data(), ws.size()).ok());
  std::vector<double> o64(out.begin(), out.end()), l64(lse.begin(), lse.end());
  EXPECT_LT(max_rel(got.out, o64), 5e-6);
  EXPECT_LT(max_rel(got.lse, l64), 5e-6);
  std::vector<float> dq(p.q.size()), dk(p.k.size()), dv(p.v.size());
  ha::HyperAttnGrads g;
  g.dout = p.dout.data(); g.dout_strides = pr.q_strides; g.dlse = p.dlse.data();
  g.out = out.data(); g.out_strides = pr.q_strides; g.lse = lse.data();
  g.dq = dq.data(); g.dq_strides = pr.q_strides; g.dk = dk.data(); g.dk_strides = pr.k_strides;
  g.dv = dv.data(); g.dv_strides = pr.k_strides;
  std::vector<unsigned char> wb(ha::backward_workspace_size(pr) + 64);
  ASSERT_TRUE(ha::backward(pr, pl, g, wb.data(), wb.size()).ok());
  EXPECT_LT(max_rel(got.dq, std::vector<double>(dq.begin(), dq.end())), 5e-5);
  EXPECT_LT(max_rel(got.dk, std::vector<double>(dk.begin(), dk.end())), 5e-5);
  EXPECT_LT(max_rel(got.dv, std::vector<double>(dv.begin(), dv.end())), 5e-5);
}

}  // namespace

// GoogleTest of the hyper_attention core (specs/hyper_attention.md §6 item 19): the FASTNORM_HD math, the
// schedule, the CPU plan + forward + backward on tiny problems against naive loops written here, and Status codes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "fastnorm/detail/hyper_attention_math.h"
#include "fastnorm/hyper_attention.h"

namespace ha = fastnorm::hyper_attention;
namespace hd = fastnorm::hyper_attention::detail;

TEST(HyperAttentionMath, GrayRoundTripAndOrder) {
  for (uint32_t y = 0; y < (1u << 16); ++y) {
    ASSERT_EQ(hd::inverse_gray(hd::gray(y)), y);
    ASSERT_EQ(hd::gray(hd::inverse_gray(y)), y);
  }
  // Sorting bins by inverse_gray visits gray(0), gray(1), ...: r = 3 order 0,1,3,2,6,7,5,4.
  std::vector<uint32_t> bins(8);
  std::iota(bins.begin(), bins.end(), 0u);
  std::sort(bins.begin(), bins.end(), [](uint32_t a, uint32_t b) { return hd::inverse_gray(a) < hd::inverse_gray(b); });
  EXPECT_EQ(bins, (std::vector<uint32_t>{0, 1, 3, 2, 6, 7, 5, 4}));
}

TEST(HyperAttentionMath, BlockOfRankBruteForce) {
  for (int64_t L = 1; L <= 300; ++L)
    for (int64_t nb = 1; nb <= std::min<int64_t>(L + 5, 300); ++nb) {
      ASSERT_EQ(hd::block_begin(0, L, nb), 0);
      ASSERT_EQ(hd::block_begin(nb, L, nb), L);
      for (int64_t j = 0; j < nb; ++j)
        for (int64_t r = hd::block_begin(j, L, nb); r < hd::block_begin(j + 1, L, nb); ++r)
          ASSERT_EQ(hd::block_of_rank(r, L, nb), j) << "L=" << L << " nb=" << nb << " r=" << r;
    }
  // A multiple of b gives exact b-blocks.
  for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(hd::block_begin(j, 1024, 4), j * 256);
}

TEST(HyperAttentionMath, SampleRank) {
  EXPECT_EQ(hd::sample_rank(0, 1000), 0);
  EXPECT_EQ(hd::sample_rank(0x7fffffff, 1000), 999);
  EXPECT_EQ(hd::sample_rank(1 << 30, 1000), 500);
  const int64_t big = int64_t(1) << 30;
  EXPECT_EQ(hd::sample_rank(0x7fffffff, big), (int64_t(0x7fffffff) * big) >> 31);
}

TEST(HyperAttentionMath, LseMerge) {
  const double ninf = -INFINITY;
  auto m = hd::lse_merge<double>(ninf, ninf);
  EXPECT_EQ(m.lse, ninf);
  EXPECT_EQ(m.c1, 0.0);
  EXPECT_EQ(m.c2, 0.0);
  m = hd::lse_merge<double>(1.5, ninf);
  EXPECT_EQ(m.lse, 1.5);
  EXPECT_EQ(m.c1, 1.0);
  EXPECT_EQ(m.c2, 0.0);
  m = hd::lse_merge<double>(ninf, -2.0);
  EXPECT_EQ(m.lse, -2.0);
  EXPECT_EQ(m.c2, 1.0);
  m = hd::lse_merge<double>(0.3, 1.1);
  EXPECT_NEAR(m.lse, std::log(std::exp(0.3) + std::exp(1.1)), 1e-15);
  EXPECT_NEAR(m.c1 + m.c2, 1.0, 1e-15);
  hd::OnlineSoftmax<double> s;
  EXPECT_EQ(s.lse(), ninf);
  EXPECT_EQ(s.update(2.0), 0.0);
  s.l += 1.0;
  EXPECT_NEAR(s.update(3.0), std::exp(-1.0), 1e-15);
}

TEST(HyperAttentionSchedule, CausalTilesAndRule) {
  ha::HyperAttnConfig c;
  c.block_size = 4;
  c.sample_size = 3;
  c.min_seq_len = 16;
  for (int64_t n = 1; n <= 300; n += 7) {
    int64_t count = 0;
    ASSERT_TRUE(ha::schedule(c, n, n, true, nullptr, 0, &count).ok());
    std::vector<ha::HyperAttnSubproblem> s(count);
    ASSERT_TRUE(ha::schedule(c, n, n, true, s.data(), count, &count).ok());
    std::vector<int> grid(n * n, 0);
    int64_t pq = 0, pk = 0, S = 0;
    for (const auto& p : s) {
      for (int64_t i = p.q_begin; i < p.q_begin + p.nq; ++i)
        for (int64_t j = p.k_begin; j < p.k_begin + p.nk; ++j)
          if (p.kind != ha::HyperAttnKind::ExactCausal || j - p.k_begin <= i - p.q_begin) grid[i * n + j] += 1;
      if (p.kind == ha::HyperAttnKind::Approx) {
        EXPECT_GT(p.nk, c.min_seq_len);
        EXPECT_EQ(p.q_perm_offset, pq);
        EXPECT_EQ(p.k_perm_offset, pk);
        EXPECT_EQ(p.sample_offset, S);
        EXPECT_EQ(p.num_blocks, (p.nk + 3) / 4);
        pq += p.nq; pk += p.nk; S += c.sample_size;
      } else if (p.kind == ha::HyperAttnKind::ExactFull) {
        EXPECT_LE(p.nk, c.min_seq_len);
      }
    }
    for (int64_t i = 0; i < n; ++i)
      for (int64_t j = 0; j < n; ++j) ASSERT_EQ(grid[i * n + j], j <= i ? 1 : 0) << n;
    ha::HyperAttnPlanSizes sz;
    ASSERT_TRUE(ha::plan_sizes(c, n, n, true, &sz).ok());
    EXPECT_EQ(sz.pq, pq);
    EXPECT_EQ(sz.pk, pk);
    EXPECT_EQ(sz.s, S);
  }
  // Non-causal: one piece; exact iff nk <= min_seq_len (or a single block).
  int64_t count = 0;
  ha::HyperAttnSubproblem one;
  ASSERT_TRUE(ha::schedule(c, 5, 16, false, &one, 1, &count).ok());
  EXPECT_EQ(count, 1);
  EXPECT_EQ(one.kind, ha::HyperAttnKind::ExactFull);
  ASSERT_TRUE(ha::schedule(c, 5, 17, false, &one, 1, &count).ok());
  EXPECT_EQ(one.kind, ha::HyperAttnKind::Approx);
  ASSERT_TRUE(ha::schedule(c, 0, 17, false, nullptr, 0, &count).ok());
  EXPECT_EQ(count, 0);
}

TEST(HyperAttentionStatus, BadParams) {
  ha::HyperAttnConfig c;
  int64_t count = 0;
  c.block_size = 0;
  EXPECT_EQ(ha::schedule(c, 10, 10, false, nullptr, 0, &count).code(), fastnorm::StatusCode::InvalidArgument);
  c.block_size = 4;
  c.sample_size = -1;
  EXPECT_EQ(ha::schedule(c, 10, 10, false, nullptr, 0, &count).code(), fastnorm::StatusCode::InvalidArgument);
  c.sample_size = 2;
  EXPECT_EQ(ha::schedule(c, 10, 11, true, nullptr, 0, &count).code(), fastnorm::StatusCode::InvalidArgument);
  ha::HyperAttnProblem p;
  p.batch = 1; p.heads_q = 3; p.heads_kv = 2; p.nq = 4; p.nk = 4; p.head_dim = 8;
  EXPECT_EQ(ha::validate(p).code(), fastnorm::StatusCode::InvalidArgument);  // 3 % 2
  p.heads_q = 2;
  p.head_dim = 257;
  EXPECT_EQ(ha::validate(p).code(), fastnorm::StatusCode::InvalidArgument);
  p.head_dim = 8;
  p.scale = INFINITY;
  EXPECT_EQ(ha::validate(p).code(), fastnorm::StatusCode::InvalidArgument);
  ha::HyperAttnHashParams h;
  h.batch = 1; h.heads = 1; h.n = 1; h.head_dim = 4; h.num_projs = 17;
  EXPECT_EQ(ha::lsh_hash(h).code(), fastnorm::StatusCode::InvalidArgument);
}

// Naive evaluation of the estimator's entry multisets (§3.5, §3.7), straight from the definitions.
struct Naive {
  std::vector<double> out, lse;
};

static Naive naive(int64_t N, int64_t D, const std::vector<float>& q, const std::vector<float>& k,
                   const std::vector<float>& v, const std::vector<int32_t>& qp, const std::vector<int32_t>& kp,
                   const std::vector<int32_t>& sm, const ha::HyperAttnConfig& c, bool causal, double scale) {
  int64_t count = 0;
  ha::schedule(c, N, N, causal, nullptr, 0, &count);
  std::vector<ha::HyperAttnSubproblem> s(count);
  ha::schedule(c, N, N, causal, s.data(), count, &count);
  // W[i][j] = total weight of entry (i, j)
  std::vector<double> W(N * N, 0.0);
  for (const auto& p : s) {
    if (p.kind == ha::HyperAttnKind::ExactFull || p.kind == ha::HyperAttnKind::ExactCausal) {
      for (int64_t i = 0; i < p.nq; ++i)
        for (int64_t j = 0; j < p.nk; ++j)
          if (p.kind == ha::HyperAttnKind::ExactFull || j <= i) W[(p.q_begin + i) * N + p.k_begin + j] += 1;
      continue;
    }
    const int64_t nb = p.num_blocks;
    for (int64_t rq = 0; rq < p.nq; ++rq) {
      const int64_t i = qp[p.q_perm_offset + rq];
      const int64_t jb = hd::block_of_rank(rq, p.nq, nb);
      for (int64_t rk = hd::block_begin(jb, p.nk, nb); rk < hd::block_begin(jb + 1, p.nk, nb); ++rk)
        W[i * N + kp[p.k_perm_offset + rk]] += 1;
      for (int64_t t = 0; t < c.sample_size; ++t) {
        const int64_t cr = sm[p.sample_offset + t];
        if (hd::block_of_rank(cr, p.nk, nb) != jb)
          W[i * N + kp[p.k_perm_offset + cr]] += double(p.nk) / double(c.sample_size);
      }
    }
  }
  Naive r;
  r.out.assign(N * D, 0.0);
  r.lse.assign(N, 0.0);
  for (int64_t i = 0; i < N; ++i) {
    double mx = -INFINITY;
    std::vector<double> l(N);
    for (int64_t j = 0; j < N; ++j) {
      double dot = 0;
      for (int64_t d = 0; d < D; ++d) dot += double(q[i * D + d]) * double(k[j * D + d]);
      l[j] = scale * dot;
      if (W[i * N + j] > 0) mx = std::max(mx, l[j]);
    }
    double Z = 0;
    for (int64_t j = 0; j < N; ++j)
      if (W[i * N + j] > 0) {
        const double e = W[i * N + j] * std::exp(l[j] - mx);
        Z += e;
        for (int64_t d = 0; d < D; ++d) r.out[i * D + d] += e * v[j * D + d];
      }
    for (int64_t d = 0; d < D; ++d) r.out[i * D + d] /= Z;
    r.lse[i] = mx + std::log(Z);
  }
  return r;
}

class HyperAttentionForward : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(HyperAttentionForward, TinyVsNaive) {
  const int64_t N = std::get<0>(GetParam()), D = 5;
  const bool causal = std::get<1>(GetParam());
  std::mt19937 g(42);
  std::normal_distribution<float> nd;
  std::vector<float> q(N * D), k(N * D), v(N * D), proj(D * 3);
  for (auto* x : {&q, &k, &v, &proj})
    for (auto& e : *x) e = nd(g);
  ha::HyperAttnProblem p;
  p.batch = 1; p.heads_q = 1; p.heads_kv = 1; p.nq = N; p.nk = N; p.head_dim = D;
  p.causal = causal;
  p.scale = 0.4;
  p.config.block_size = 4;
  p.config.sample_size = 3;
  p.config.min_seq_len = 8;
  const ha::HyperAttnStrides st{N * D, N * D, D, 1};
  p.q = q.data(); p.k = k.data(); p.v = v.data();
  p.q_strides = st; p.k_strides = st; p.v_strides = st;
  ha::HyperAttnPlanSizes sz;
  ASSERT_TRUE(ha::plan_sizes(p.config, N, N, causal, &sz).ok());
  std::vector<int32_t> qp(sz.pq), kp(sz.pk), sm(sz.s), words(sz.s);
  for (auto& w : words) w = static_cast<int32_t>(g() & 0x7fffffffu);
  ha::HyperAttnPlan pl;
  pl.pq = sz.pq; pl.pk = sz.pk; pl.s = sz.s;
  pl.q_perm = qp.data(); pl.k_perm = kp.data(); pl.samples = sm.data();
  ha::HyperAttnPlanInputs in;
  in.proj = proj.data(); in.num_projs = 3; in.sample_words = words.data();
  std::vector<char> ws(std::max(ha::plan_workspace_size(p, 3), ha::forward_workspace_size(p)) + 1);
  ASSERT_TRUE(ha::plan(p, in, pl, ws.data(), ws.size()).ok());
  std::vector<float> out(N * D), lse(N);
  ha::HyperAttnOutput o;
  o.out = out.data(); o.out_strides = st; o.lse = lse.data();
  ASSERT_TRUE(ha::forward(p, pl, o, ws.data(), ws.size()).ok());
  const Naive r = naive(N, D, q, k, v, qp, kp, sm, p.config, causal, p.scale);
  for (int64_t i = 0; i < N * D; ++i) ASSERT_NEAR(out[i], r.out[i], 2e-5 * std::max(1.0, std::abs(r.out[i])));
  for (int64_t i = 0; i < N; ++i) ASSERT_NEAR(lse[i], r.lse[i], 2e-5 * std::max(1.0, std::abs(r.lse[i])));
  // Too small a workspace and a plan of the wrong size are refused.
  EXPECT_EQ(ha::forward(p, pl, o, ws.data(), 0).code(), N > 0 ? fastnorm::StatusCode::InvalidArgument
                                                                : fastnorm::StatusCode::Ok);
  ha::HyperAttnPlan bad = pl;
  bad.pq += 1;
  EXPECT_EQ(ha::forward(p, bad, o, ws.data(), ws.size()).code(), fastnorm::StatusCode::InvalidArgument);
}

INSTANTIATE_TEST_SUITE_P(Sizes, HyperAttentionForward,
                         ::testing::Combine(::testing::Values(1, 7, 9, 37, 64), ::testing::Bool()));

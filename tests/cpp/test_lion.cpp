// GoogleTest tests of the torch-free Lion core (specs/lion.md §6.20): sign, the element update against hand
// computations, bf16 rounding bits, Philox known answers, the CUDA launch planner, and the CPU step.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "fastnorm/detail/lion_math.h"
#include "fastnorm/lion.h"

namespace fl = fastnorm::lion;
namespace fd = fastnorm::lion::detail;
using fastnorm::DType;
using fastnorm::detail::bf16_to_float;
using fastnorm::detail::float_to_bf16;

namespace {

uint32_t bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

TEST(LionSign, ZeroInfNan) {
  EXPECT_EQ(fd::lion_sign(0.0f, true), 0.0f);
  EXPECT_EQ(fd::lion_sign(-0.0f, true), 0.0f);
  EXPECT_EQ(fd::lion_sign(1e-45f, true), 1.0f);
  EXPECT_EQ(fd::lion_sign(-1e-45f, true), -1.0f);
  EXPECT_EQ(fd::lion_sign(INFINITY, true), 1.0f);
  EXPECT_EQ(fd::lion_sign(-INFINITY, false), -1.0f);
  EXPECT_TRUE(std::isnan(fd::lion_sign(NAN, true)));
  EXPECT_EQ(fd::lion_sign(NAN, false), 0.0f);
  EXPECT_EQ(fd::lion_sign(-2.0, true), -1.0);
}

TEST(LionPhilox, KnownAnswers) {
  uint32_t out[4];
  const uint32_t c0[4] = {0, 0, 0, 0}, k0[2] = {0, 0};
  fl::philox4x32_10_host(c0, k0, out);
  EXPECT_EQ(out[0], 0x6627e8d5u); EXPECT_EQ(out[1], 0xe169c58du); EXPECT_EQ(out[2], 0xbc57ac4cu); EXPECT_EQ(out[3], 0x9b00dbd8u);
  const uint32_t c1[4] = {~0u, ~0u, ~0u, ~0u}, k1[2] = {~0u, ~0u};
  fl::philox4x32_10_host(c1, k1, out);
  EXPECT_EQ(out[0], 0x408f276du); EXPECT_EQ(out[1], 0x41c83b0eu); EXPECT_EQ(out[2], 0xa20bc7c6u); EXPECT_EQ(out[3], 0x6d5451fdu);
}

TEST(LionBf16, NearestAndStochasticBits) {
  // 1 + 2^-8 lies exactly between two bf16 values: RNE goes to even (1.0); SR goes up iff r16 >= 2^15.
  const float mid = 1.0f + 0x1.0p-8f;
  EXPECT_EQ(fd::bf16_round_nearest(mid), 0x3F80);
  EXPECT_EQ(fd::bf16_round_stochastic(mid, 0x7FFF), 0x3F80);
  EXPECT_EQ(fd::bf16_round_stochastic(mid, 0x8000), 0x3F81);
  // Representable values are exact for every r16.
  for (uint32_t r : {0u, 1u, 0x1234u, 0xFFFFu}) EXPECT_EQ(fd::bf16_round_stochastic(-2.5f, r), float_to_bf16(-2.5f));
  // Negative values round in magnitude, symmetric with positive ones.
  EXPECT_EQ(fd::bf16_round_stochastic(-mid, 0x8000), 0xBF81);
  // NaN and Inf round to nearest.
  EXPECT_EQ(fd::bf16_round_stochastic(INFINITY, 0xFFFF), 0x7F80);
  EXPECT_EQ(fd::bf16_round_stochastic(NAN, 0xFFFF) & 0x7FC0, 0x7FC0);
  // The top binade can round up to Inf, as RNE can.
  EXPECT_EQ(fd::bf16_round_stochastic(std::numeric_limits<float>::max(), 0xFFFF), 0x7F80);
}

TEST(LionScalars, DecayModes) {
  const double lr = 3e-4, wd = 0.1, ref = 1e-3;
  EXPECT_EQ(fd::make_scalars<float>(lr, 0.9, 0.99, wd, 1, 1.0).dmul, static_cast<float>(1.0 - lr * wd));
  EXPECT_EQ(fd::make_scalars<float>(lr, 0.9, 0.99, wd, 1, ref).dmul, static_cast<float>(1.0 - lr * (wd / ref)));
  EXPECT_EQ(fd::make_scalars<float>(lr, 0.9, 0.99, wd, 2, ref).dmul, static_cast<float>(1.0 - ((lr * lr) / ref) * wd));
  EXPECT_EQ(fd::make_scalars<float>(lr, 0.9, 0.99, wd, 0, 1.0).dmul, static_cast<float>(1.0 - wd));
  const auto s = fd::make_scalars<float>(lr, 0.9, 0.99, 0, 1, 1.0);
  EXPECT_EQ(s.b1, static_cast<float>(1.0 - 0.9));
  EXPECT_EQ(s.b2, static_cast<float>(1.0 - 0.99));
  EXPECT_EQ(s.dmul, 1.0f);
}

TEST(LionElement, HandValuesFloat) {
  const auto s = fd::make_scalars<float>(1e-3, 0.9, 0.99, 0.1, 1, 1.0);
  const float x = 0.75f, g = -0.2f, m = 0.05f;
  const auto u = fd::lion_update_element(x, g, m, s, false, 1.0f, true);
  const float c = std::fma(s.b1, g, s.a1 * m);  // 0.045 - 0.02 > 0
  ASSERT_GT(c, 0.0f);
  EXPECT_EQ(bits(u.x2), bits(std::fma(-s.lr, 1.0f, x * s.dmul)));
  EXPECT_EQ(bits(u.m_new), bits(std::fma(s.b2, g, s.a2 * m)));
  // Cautious: s*g < 0 here, so the step is masked and only decay remains.
  const auto uc = fd::lion_update_element(x, g, m, s, true, 4.0f, true);
  EXPECT_EQ(bits(uc.x2), bits(std::fma(-s.lr, 0.0f, x * s.dmul)));
  // Zero c: no move apart from decay.
  const auto z = fd::lion_update_element(x, 0.0f, 0.0f, s, false, 1.0f, true);
  EXPECT_EQ(bits(z.x2), bits(x * s.dmul));
  // NaN c: propagate gives NaN, torch gives the decayed value.
  EXPECT_TRUE(std::isnan(fd::lion_update_element(x, NAN, m, s, false, 1.0f, true).x2));
  EXPECT_EQ(bits(fd::lion_update_element(x, NAN, m, s, false, 1.0f, false).x2), bits(x * s.dmul));
}

TEST(LionElement, HandValuesDouble) {
  const auto s = fd::make_scalars<double>(1e-3, 0.9, 0.99, 0.0, 1, 1.0);
  const auto u = fd::lion_update_element(1.0, -0.5, -0.25, s, false, 1.0, true);
  EXPECT_EQ(u.x2, std::fma(-s.lr, -1.0, 1.0));
  EXPECT_EQ(u.m_new, std::fma(s.b2, -0.5, s.a2 * -0.25));
}

TEST(LionCautious, Scale) {
  EXPECT_EQ(fd::cautious_scale(50, 100, 1e-3), 2.0f);
  EXPECT_EQ(fd::cautious_scale(0, 100, 1e-3), 1.0f / static_cast<float>(1e-3));
  // Counts past 2^24 stay exact (an fp32 sum would not).
  const uint64_t n = (uint64_t(1) << 24) + 1;
  EXPECT_EQ(fd::cautious_scale(n, int64_t(n) * 2, 1e-3),
            1.0f / static_cast<float>(double(n) / double(2 * n)));
}

// ---- the CUDA launch planner (host only) -------------------------------------------------------------
TEST(LionPlanner, Capacity) {
  EXPECT_EQ(fl::cuda::tensors_per_launch(3, fl::cuda::kArgSpaceLarge), 812);
  EXPECT_EQ(fl::cuda::tensors_per_launch(4, fl::cuda::kArgSpaceLarge), 677);
  EXPECT_EQ(fl::cuda::tensors_per_launch(3, fl::cuda::kArgSpaceSmall), 96);
  EXPECT_EQ(fl::cuda::tensors_per_launch(4, fl::cuda::kArgSpaceSmall), 80);
}

TEST(LionPlanner, LaunchCounts) {
  std::vector<int64_t> numels(1000, 1024);
  EXPECT_EQ(fl::cuda::plan_launches(numels.data(), 1000, 3, fl::cuda::kArgSpaceLarge, nullptr, 0), 2);
  EXPECT_EQ(fl::cuda::plan_launches(numels.data(), 1000, 3, fl::cuda::kArgSpaceSmall, nullptr, 0), 11);
  std::vector<fl::cuda::LaunchRange> r(2);
  fl::cuda::plan_launches(numels.data(), 1000, 3, fl::cuda::kArgSpaceLarge, r.data(), 2);
  EXPECT_EQ(r[0].first_tensor, 0); EXPECT_EQ(r[0].n_tensors, 812); EXPECT_EQ(r[0].n_chunks, 812);
  EXPECT_EQ(r[1].first_tensor, 812); EXPECT_EQ(r[1].n_tensors, 188);
  EXPECT_EQ(fl::cuda::plan_launches(numels.data(), 0, 3, fl::cuda::kArgSpaceLarge, nullptr, 0), 0);
}

TEST(LionPlanner, LargeNumels) {
  const int64_t k = fl::cuda::kChunk;
  for (int64_t n : {(int64_t(1) << 31) - 1, int64_t(1) << 31, (int64_t(1) << 31) + 17, int64_t(1) << 32,
                    (int64_t(1) << 32) + 1, int64_t(1) << 40}) {
    fl::cuda::LaunchRange r;
    ASSERT_EQ(fl::cuda::plan_launches(&n, 1, 3, fl::cuda::kArgSpaceLarge, &r, 1), 1) << n;
    EXPECT_EQ(r.n_chunks, (n + k - 1) / k) << n;
  }
  // A grid never passes 2^31 - 1 blocks: tensors of 2^44 elements have 2^29 chunks, so three fit a launch
  // and a fourth does not.
  std::vector<int64_t> big(5, int64_t(1) << 44);
  std::vector<fl::cuda::LaunchRange> r(5);
  EXPECT_EQ(fl::cuda::plan_launches(big.data(), 5, 3, fl::cuda::kArgSpaceLarge, r.data(), 5), 2);
  EXPECT_EQ(r[0].n_tensors, 3);
  EXPECT_EQ(r[1].first_tensor, 3);
  EXPECT_LE(r[0].n_chunks, (int64_t(1) << 31) - 1);
  // Empty tensors take no chunk.
  std::vector<int64_t> mixed = {0, 5, 0, 40000};
  fl::cuda::LaunchRange m;
  ASSERT_EQ(fl::cuda::plan_launches(mixed.data(), 4, 3, fl::cuda::kArgSpaceLarge, &m, 1), 1);
  EXPECT_EQ(m.n_chunks, 3);
}

// ---- the CPU step --------------------------------------------------------------------------------------
struct F32Case {
  std::vector<float> p, g, m;
};

F32Case random_case(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  F32Case c;
  c.p.resize(n); c.g.resize(n); c.m.resize(n);
  for (int64_t i = 0; i < n; ++i) { c.p[i] = d(rng); c.g[i] = d(rng); c.m[i] = 0.1f * d(rng); }
  return c;
}

fl::LionStepParams base_params(std::vector<fl::LionTensor>& ts) {
  fl::LionStepParams p;
  p.tensors = ts.data();
  p.n_tensors = static_cast<int64_t>(ts.size());
  p.lr = 1e-3;
  p.weight_decay = 0.1;
  return p;
}

TEST(LionStep, Float32MatchesScalarMath) {
  for (int64_t n : {1, 7, 1023, 32769, 65537}) {
    F32Case c = random_case(n, static_cast<uint32_t>(n));
    F32Case ref = c;
    std::vector<fl::LionTensor> ts = {{c.p.data(), c.g.data(), c.m.data(), nullptr, n, 0}};
    fl::LionStepParams p = base_params(ts);
    ASSERT_TRUE(fl::step(p).ok());
    const float a1 = 0.9f, b1 = static_cast<float>(1.0 - 0.9), a2 = 0.99f, b2 = static_cast<float>(1.0 - 0.99);
    const float lr = 1e-3f, dmul = static_cast<float>(1.0 - 1e-3 * 0.1);
    for (int64_t i = 0; i < n; ++i) {
      const float cc = std::fma(b1, ref.g[i], a1 * ref.m[i]);
      const float s = cc > 0 ? 1.0f : (cc < 0 ? -1.0f : 0.0f);
      ASSERT_EQ(bits(c.p[i]), bits(std::fma(-lr, s, ref.p[i] * dmul))) << n << " " << i;
      ASSERT_EQ(bits(c.m[i]), bits(std::fma(b2, ref.g[i], a2 * ref.m[i]))) << n << " " << i;
    }
  }
}

TEST(LionStep, ThreadCountIndependent) {
  for (bool cautious : {false, true}) {
    F32Case a = random_case(200001, 7), b = a;
    std::vector<fl::LionTensor> ta = {{a.p.data(), a.g.data(), a.m.data(), nullptr, 200001, 0}};
    std::vector<fl::LionTensor> tb = {{b.p.data(), b.g.data(), b.m.data(), nullptr, 200001, 0}};
    fl::LionStepParams pa = base_params(ta), pb = base_params(tb);
    pa.cautious = pb.cautious = cautious;
    pa.num_threads = 1;
    pb.num_threads = 2;
    ASSERT_TRUE(fl::step(pa).ok());
    ASSERT_TRUE(fl::step(pb).ok());
    EXPECT_EQ(0, std::memcmp(a.p.data(), b.p.data(), a.p.size() * 4));
    EXPECT_EQ(0, std::memcmp(a.m.data(), b.m.data(), a.m.size() * 4));
  }
}

TEST(LionStep, FoundInfSkipsAndGradScaleDivides) {
  F32Case a = random_case(1000, 3), b = a, orig = a;
  std::vector<fl::LionTensor> ta = {{a.p.data(), a.g.data(), a.m.data(), nullptr, 1000, 0}};
  fl::LionStepParams pa = base_params(ta);
  const float inf_flag = 1.0f, scale = 1024.0f;
  pa.found_inf = &inf_flag;
  ASSERT_TRUE(fl::step(pa).ok());
  EXPECT_EQ(0, std::memcmp(a.p.data(), orig.p.data(), 4000));
  EXPECT_EQ(0, std::memcmp(a.m.data(), orig.m.data(), 4000));
  // grad_scale S with g*S equals the unscaled step (S a power of two: exact).
  const float zero = 0.0f;
  pa.found_inf = &zero;
  pa.grad_scale = &scale;
  for (auto& v : a.g) v *= scale;
  ASSERT_TRUE(fl::step(pa).ok());
  std::vector<fl::LionTensor> tb = {{b.p.data(), b.g.data(), b.m.data(), nullptr, 1000, 0}};
  fl::LionStepParams pb = base_params(tb);
  ASSERT_TRUE(fl::step(pb).ok());
  EXPECT_EQ(0, std::memcmp(a.p.data(), b.p.data(), 4000));
  EXPECT_EQ(0, std::memcmp(a.m.data(), b.m.data(), 4000));
}

TEST(LionStep, CautiousCountExact) {
  // Every element keeps its step (g and m share a sign): frac = 1, q = 1, so the move is exactly lr.
  const int64_t n = 40000;
  std::vector<float> p(n, 0.5f), g(n, 1.0f), m(n, 1.0f);
  std::vector<fl::LionTensor> ts = {{p.data(), g.data(), m.data(), nullptr, n, 0}};
  fl::LionStepParams prm = base_params(ts);
  prm.weight_decay = 0.0;
  prm.cautious = true;
  ASSERT_TRUE(fl::step(prm).ok());
  EXPECT_EQ(p[0], std::fma(-static_cast<float>(1e-3), 1.0f, 0.5f));
  // Half of the elements masked: q = 2 on the others.
  std::vector<float> p2(n, 0.5f), g2(n), m2(n, 1.0f);
  for (int64_t i = 0; i < n; ++i) g2[i] = (i % 2) ? 1.0f : -1e-3f;  // c > 0 everywhere; s*g < 0 on evens
  std::vector<fl::LionTensor> t2 = {{p2.data(), g2.data(), m2.data(), nullptr, n, 0}};
  prm = base_params(t2);
  prm.weight_decay = 0.0;
  prm.cautious = true;
  ASSERT_TRUE(fl::step(prm).ok());
  EXPECT_EQ(p2[0], 0.5f);
  EXPECT_EQ(p2[1], std::fma(-static_cast<float>(1e-3), 2.0f, 0.5f));
}

TEST(LionStep, Bf16MasterAndStochasticRounding) {
  const int64_t n = 4099;
  std::mt19937 rng(5);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<uint16_t> p(n), g(n);
  std::vector<float> m(n), w(n);
  for (int64_t i = 0; i < n; ++i) {
    w[i] = d(rng); p[i] = float_to_bf16(w[i]); g[i] = float_to_bf16(d(rng)); m[i] = 0.1f * d(rng);
  }
  // Master weights: p == RNE(w) after the step, w follows the fp32 math.
  {
    auto pp = p; auto mm = m; auto ww = w;
    std::vector<fl::LionTensor> ts = {{pp.data(), g.data(), mm.data(), ww.data(), n, 0}};
    fl::LionStepParams prm = base_params(ts);
    prm.param_dtype = DType::BFloat16;
    prm.has_master = true;
    ASSERT_TRUE(fl::step(prm).ok());
    const auto s = fd::make_scalars<float>(1e-3, 0.9, 0.99, 0.1, 1, 1.0);
    for (int64_t i = 0; i < n; ++i) {
      const auto u = fd::lion_update_element(w[i], bf16_to_float(g[i]), m[i], s, false, 1.0f, true);
      ASSERT_EQ(bits(ww[i]), bits(u.x2));
      ASSERT_EQ(pp[i], float_to_bf16(ww[i]));
    }
  }
  // SR: predicted bitwise from Philox, reproducible for a step, different for another step.
  auto run_sr = [&](int64_t step, uint32_t slot) {
    auto pp = p; auto mm = m;
    std::vector<fl::LionTensor> ts = {{pp.data(), g.data(), mm.data(), nullptr, n, slot}};
    fl::LionStepParams prm = base_params(ts);
    prm.param_dtype = DType::BFloat16;
    prm.stochastic_rounding = true;
    prm.sr_seed = 0x123456789ull;
    prm.sr_step = step;
    EXPECT_TRUE(fl::step(prm).ok());
    return pp;
  };
  const auto a = run_sr(3, 2), b = run_sr(3, 2), c = run_sr(4, 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  const auto s = fd::make_scalars<float>(1e-3, 0.9, 0.99, 0.1, 1, 1.0);
  for (int64_t i = 0; i < n; ++i) {
    const auto u = fd::lion_update_element(bf16_to_float(p[i]), bf16_to_float(g[i]), m[i], s, false, 1.0f, true);
    const auto r = fd::sr_bits(static_cast<uint64_t>(i) >> 3, 2, 3, 0x123456789ull);
    ASSERT_EQ(a[i], fd::bf16_round_stochastic(u.x2, fd::sr_r16(r, i))) << i;
  }
}

TEST(LionStep, Validation) {
  std::vector<float> p(4), g(4), m(4);
  std::vector<fl::LionTensor> ts = {{p.data(), g.data(), m.data(), nullptr, 4, 0}};
  auto expect_bad = [&](auto mutate, const char* what) {
    fl::LionStepParams prm = base_params(ts);
    mutate(prm);
    const auto s = fl::step(prm);
    EXPECT_FALSE(s.ok()) << what;
    EXPECT_NE(s.message().find(what), std::string::npos) << s.message();
  };
  expect_bad([](fl::LionStepParams& q) { q.lr = -1; }, "lr");
  expect_bad([](fl::LionStepParams& q) { q.lr = NAN; }, "lr");
  expect_bad([](fl::LionStepParams& q) { q.beta1 = 1.0; }, "beta1");
  expect_bad([](fl::LionStepParams& q) { q.beta2 = -0.1; }, "beta2");
  expect_bad([](fl::LionStepParams& q) { q.weight_decay = -1; }, "weight_decay");
  expect_bad([](fl::LionStepParams& q) { q.decay_lr_power = 3; }, "decay_lr_power");
  expect_bad([](fl::LionStepParams& q) { q.decay_ref = 0; }, "decay_ref");
  expect_bad([](fl::LionStepParams& q) { q.cautious_min_frac = 0; }, "cautious_min_frac");
  expect_bad([](fl::LionStepParams& q) { q.stochastic_rounding = true; }, "stochastic_rounding");
  expect_bad([](fl::LionStepParams& q) { q.state_dtype = DType::BFloat16; }, "exp_avg dtype");
  expect_bad([](fl::LionStepParams& q) { q.has_master = true; }, "master");
  expect_bad([](fl::LionStepParams& q) { q.nan_policy = static_cast<fl::NanPolicy>(5); }, "nan_policy");
  // A tensor lr is checked when it is read (CPU).
  const float neg = -1.0f;
  expect_bad([&](fl::LionStepParams& q) { q.lr_device = &neg; q.lr_dtype = DType::Float32; }, "lr");
  // Empty calls are fine.
  fl::LionStepParams empty;
  EXPECT_TRUE(fl::step(empty).ok());
}

}  // namespace

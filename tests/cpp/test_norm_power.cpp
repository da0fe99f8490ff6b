// GoogleTest tests of the PowerNorm CPU core (specs/norm.md §3.6, §6 item 17): forward, backward and eval vs
// naive double loops written here from the spec, both quirk modes, pads, batch_first, groups; statuses on
// bad arguments; workspace sizes; thread-count independence.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/norm_power.h"

namespace {
using fastnorm::DType;
using fastnorm::Status;
using fastnorm::StatusCode;
using fastnorm::norm::PowerNormBwdParams;
using fastnorm::norm::PowerNormEvalParams;
using fastnorm::norm::PowerNormParams;
using fastnorm::norm::PowerQuirks;

struct Case {
  int64_t T, B, C, G;
  bool batch_first, masked;
  PowerQuirks quirks;
  int64_t t, W;
};

// Naive reference state and results in double.
struct Ref {
  std::vector<double> y, grs, x2, denom, nphi, dx, dw, db, nnu;
};

int64_t mask_idx(const Case& c, int64_t r) {
  if (c.batch_first) return r;
  return (r % c.B) * c.T + r / c.B;
}

Ref naive(const Case& c, const std::vector<double>& x, const std::vector<uint8_t>& mask, const std::vector<double>& w,
          const std::vector<double>& b, const std::vector<double>& phi, const std::vector<double>& nu,
          const std::vector<double>& dy, double eps, double geps, double af, double ab) {
  const int64_t M = c.T * c.B, C = c.C, K = C / c.G;
  Ref r;
  std::vector<double> xt(M * C);
  r.grs.resize(M * c.G);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < c.G; ++k) {
      double s = 0;
      for (int64_t j = k * K; j < (k + 1) * K; ++j) s += x[i * C + j] * x[i * C + j];
      const double rho = 1.0 / std::sqrt(s / K + geps);
      r.grs[i * c.G + k] = rho;
      for (int64_t j = k * K; j < (k + 1) * K; ++j) xt[i * C + j] = x[i * C + j] * rho;
    }
  auto valid = [&](int64_t i) { return !c.masked || mask[mask_idx(c, i)] == 0; };
  int64_t nv = 0;
  for (int64_t i = 0; i < M; ++i) nv += valid(i);
  r.x2.assign(C, 0);
  r.denom.resize(C);
  r.nphi.resize(C);
  for (int64_t j = 0; j < C; ++j) {
    double s = 0;
    for (int64_t i = 0; i < M; ++i)
      if (valid(i)) s += xt[i * C + j] * xt[i * C + j];
    const double q = s / nv, t = double(c.t);
    r.x2[j] = q;
    r.denom[j] = c.t <= c.W ? std::sqrt(q + eps) : std::sqrt(phi[j] + eps);
    double p = phi[j];
    if (c.quirks == PowerQuirks::Official) {
      if (c.t < c.W) p = p * (t - 1) / t + q / t;
      p = af * p + (1 - af) * q;
    } else {
      p = c.t <= c.W ? p * (t - 1) / t + q / t : af * p + (1 - af) * q;
    }
    r.nphi[j] = p;
  }
  r.y.resize(M * C);
  std::vector<double> z(M * C), gh(M * C);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < C; ++j) {
      z[i * C + j] = xt[i * C + j] / r.denom[j];
      r.y[i * C + j] = w[j] * z[i * C + j] + b[j];
      gh[i * C + j] = dy[i * C + j] * w[j] - (1 - ab) * nu[j] * z[i * C + j];
    }
  r.dx.resize(M * C);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < c.G; ++k) {
      std::vector<double> dxt(K);
      double dot = 0;
      for (int64_t jj = 0; jj < K; ++jj) {
        const int64_t j = k * K + jj;
        const double div = c.quirks == PowerQuirks::Official ? std::sqrt(r.x2[j] + eps) : r.denom[j];
        dxt[jj] = gh[i * C + j] / div;
        dot += dxt[jj] * xt[i * C + j];
      }
      for (int64_t jj = 0; jj < K; ++jj) {
        const int64_t j = k * K + jj;
        r.dx[i * C + j] = r.grs[i * c.G + k] * (dxt[jj] - xt[i * C + j] * dot / K);
      }
    }
  r.dw.assign(C, 0);
  r.db.assign(C, 0);
  r.nnu.resize(C);
  for (int64_t j = 0; j < C; ++j) {
    double s = 0;
    int64_t n = 0;
    for (int64_t i = 0; i < M; ++i) {
      r.dw[j] += dy[i * C + j] * z[i * C + j];
      r.db[j] += dy[i * C + j];
      if (c.quirks == PowerQuirks::Official || valid(i)) {
        s += gh[i * C + j] * z[i * C + j];
        ++n;
      }
    }
    r.nnu[j] = nu[j] + s / n;
  }
  return r;
}

template <typename T>
void expect_near_vec(const std::vector<T>& got, const std::vector<double>& want, double rtol, const char* what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (double v : want) scale = std::max(scale, std::fabs(v));
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(double(got[i]), want[i], rtol * (scale + 1)) << what << " [" << i << "]";
}

template <typename T>
void run_case(const Case& c, double rtol) {
  constexpr DType dt = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  const int64_t M = c.T * c.B, C = c.C;
  std::mt19937 gen(42 + c.C + c.G + c.t);
  std::normal_distribution<double> nd;
  std::vector<T> x(M * C + 7), dy(M * C);  // x has a row stride of C + 1: strided rows
  const int64_t xs = C + 1;
  x.resize(M * xs);
  std::vector<double> xd(M * C), dyd(M * C), w(C), b(C), phi(C), nu(C);
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < C; ++j) {
      const T v = T(nd(gen) * 2 + 0.3);
      x[i * xs + j] = v;
      xd[i * C + j] = double(v);
      const T d = T(nd(gen));
      dy[i * C + j] = d;
      dyd[i * C + j] = double(d);
    }
  std::vector<T> wt(C), bt(C), pt(C), nt(C);
  for (int64_t j = 0; j < C; ++j) {
    wt[j] = T(1 + 0.3 * nd(gen)); bt[j] = T(0.2 * nd(gen));
    pt[j] = T(0.5 + std::fabs(nd(gen))); nt[j] = T(0.3 * nd(gen));
    w[j] = wt[j]; b[j] = bt[j]; phi[j] = pt[j]; nu[j] = nt[j];
  }
  std::vector<uint8_t> mask(M, 0);
  if (c.masked) {
    for (auto& m : mask) m = (gen() % 3) == 0;
    mask[0] = 0;
  }
  const double eps = 1e-5, geps = 1e-5, af = 0.8, ab = 0.7;
  const Ref r = naive(c, xd, mask, w, b, phi, nu, dyd, eps, geps, af, ab);

  PowerNormParams p;
  p.T = c.T; p.B = c.B; p.C = C; p.group_num = c.G; p.batch_first = c.batch_first;
  p.x = x.data(); p.x_stride = xs; p.x_dtype = dt;
  p.pad_mask = c.masked ? mask.data() : nullptr;
  p.weight = wt.data(); p.bias = bt.data(); p.running_phi = pt.data();
  std::vector<T> y(M * C, std::numeric_limits<T>::quiet_NaN()), grs(M * c.G), x2(C), den(C), nphi(C);
  p.y = y.data(); p.group_rstd = grs.data(); p.x2 = x2.data(); p.denom = den.data(); p.new_running_phi = nphi.data();
  p.iteration = c.t; p.warmup_iters = c.W; p.eps = eps; p.alpha_fwd = af; p.group_eps = geps; p.quirks = c.quirks;
  std::vector<char> ws(fastnorm::norm::power_norm_fwd_workspace_bytes(p) + 1);
  p.workspace = ws.data();
  ASSERT_TRUE(fastnorm::norm::power_norm_fwd(p).ok());
  expect_near_vec(y, r.y, rtol, "y");
  expect_near_vec(grs, r.grs, rtol, "group_rstd");
  expect_near_vec(x2, r.x2, rtol, "x2");
  expect_near_vec(den, r.denom, rtol, "denom");
  expect_near_vec(nphi, r.nphi, rtol, "new_running_phi");

  PowerNormBwdParams q;
  q.T = c.T; q.B = c.B; q.C = C; q.group_num = c.G; q.batch_first = c.batch_first;
  q.dy = dy.data(); q.dy_stride = C; q.x = x.data(); q.x_stride = xs; q.x_dtype = dt;
  q.pad_mask = p.pad_mask; q.group_rstd = grs.data(); q.x2 = x2.data(); q.denom = den.data();
  q.weight = wt.data(); q.ema_gz = nt.data();
  std::vector<T> dx(M * C, std::numeric_limits<T>::quiet_NaN()), dw(C), db(C), nnu(C);
  q.dx = dx.data(); q.dweight = dw.data(); q.dbias = db.data(); q.new_ema_gz = nnu.data();
  q.eps = eps; q.alpha_bkw = ab; q.quirks = c.quirks;
  std::vector<char> wsb(fastnorm::norm::power_norm_bwd_workspace_bytes(q) + 1);
  q.workspace = wsb.data();
  ASSERT_TRUE(fastnorm::norm::power_norm_bwd(q).ok());
  expect_near_vec(dx, r.dx, rtol, "dx");
  expect_near_vec(dw, r.dw, rtol, "dweight");
  expect_near_vec(db, r.db, rtol, "dbias");
  expect_near_vec(nnu, r.nnu, rtol, "new_ema_gz");
}

class PowerNormCore : public ::testing::TestWithParam<Case> {};

TEST_P(PowerNormCore, DoubleMatchesNaive) { run_case<double>(GetParam(), 1e-12); }
TEST_P(PowerNormCore, FloatMatchesNaive) { run_case<float>(GetParam(), 2e-5); }

INSTANTIATE_TEST_SUITE_P(
    Cases, PowerNormCore,
    ::testing::Values(Case{5, 3, 8, 1, false, true, PowerQuirks::Official, 3, 10},
                      Case{5, 3, 8, 4, false, true, PowerQuirks::Official, 10, 10},
                      Case{5, 3, 8, 4, true, true, PowerQuirks::Official, 11, 10},
                      Case{5, 3, 8, 2, true, true, PowerQuirks::Paper, 10, 10},
                      Case{5, 3, 8, 2, false, true, PowerQuirks::Paper, 12, 10},
                      Case{7, 1, 6, 3, false, false, PowerQuirks::Paper, 1, 10},
                      Case{40, 9, 12, 4, false, true, PowerQuirks::Official, 50, 10},   // several row blocks
                      Case{300, 4, 16, 4, true, true, PowerQuirks::Paper, 5, 10},
                      Case{1, 6, 5, 1, false, true, PowerQuirks::Official, 2, 0}));

TEST(PowerNormCore, EvalMatchesNaive) {
  const int64_t M = 9, C = 12, G = 3, K = C / G;
  std::mt19937 gen(3);
  std::normal_distribution<double> nd;
  std::vector<double> x(M * C), w(C), b(C), phi(C), y(M * C);
  for (auto& v : x) v = nd(gen);
  for (int64_t j = 0; j < C; ++j) { w[j] = 1 + nd(gen); b[j] = nd(gen); phi[j] = 0.3 + std::fabs(nd(gen)); }
  PowerNormEvalParams p;
  p.rows = M; p.C = C; p.group_num = G; p.x = x.data(); p.x_stride = C; p.x_dtype = DType::Float64;
  p.weight = w.data(); p.bias = b.data(); p.running_phi = phi.data(); p.y = y.data();
  ASSERT_TRUE(fastnorm::norm::power_norm_eval(p).ok());
  for (int64_t i = 0; i < M; ++i)
    for (int64_t k = 0; k < G; ++k) {
      double s = 0;
      for (int64_t j = k * K; j < (k + 1) * K; ++j) s += x[i * C + j] * x[i * C + j];
      const double rho = 1 / std::sqrt(s / K + 1e-5);
      for (int64_t j = k * K; j < (k + 1) * K; ++j)
        EXPECT_NEAR(y[i * C + j], w[j] * x[i * C + j] * rho / std::sqrt(phi[j] + 1e-5) + b[j], 1e-12);
    }
}

TEST(PowerNormCore, Bf16OutputIsRoundedOnce) {
  // One token, C = 4, G = 1, after warmup: y = w * x * rho / sqrt(phi + eps) + b in float, rounded to bf16.
  const int64_t C = 4;
  std::vector<fastnorm::bf16_t> x(C), y(C);
  const float xv[4] = {1.0f, -2.0f, 0.5f, 3.0f};
  for (int j = 0; j < C; ++j) x[j] = fastnorm::bf16_t{fastnorm::detail::float_to_bf16(xv[j])};
  std::vector<float> w{1.5f, 0.7f, -1.0f, 2.0f}, b{0.1f, 0.2f, 0.3f, -0.4f}, phi{0.9f, 1.1f, 2.0f, 0.5f};
  std::vector<float> grs(1), x2(C), den(C), nphi(C), ws(64);
  PowerNormParams p;
  p.T = 1; p.B = 1; p.C = C; p.x = x.data(); p.x_stride = C; p.x_dtype = DType::BFloat16;
  p.weight = w.data(); p.bias = b.data(); p.running_phi = phi.data(); p.y = y.data(); p.group_rstd = grs.data();
  p.x2 = x2.data(); p.denom = den.data(); p.new_running_phi = nphi.data(); p.iteration = 5; p.warmup_iters = 2;
  p.workspace = ws.data();
  ASSERT_GE(ws.size() * sizeof(float), fastnorm::norm::power_norm_fwd_workspace_bytes(p));
  ASSERT_TRUE(fastnorm::norm::power_norm_fwd(p).ok());
  float s = 0;
  for (int j = 0; j < C; ++j) s += xv[j] * xv[j];
  const float rho = 1.0f / std::sqrt(s / 4 + 1e-5f);
  for (int j = 0; j < C; ++j) {
    const float want = w[j] * ((xv[j] * rho) / std::sqrt(phi[j] + 1e-5f)) + b[j];
    EXPECT_EQ(y[j].bits, fastnorm::detail::float_to_bf16(want)) << j;
  }
}

TEST(PowerNormCore, BadArgumentsGiveStatus) {
  std::vector<float> buf(256, 1.0f);
  PowerNormParams p;
  p.T = 2; p.B = 2; p.C = 6; p.group_num = 4; p.x = buf.data(); p.x_stride = 6;
  p.weight = p.bias = p.running_phi = buf.data();
  p.y = p.group_rstd = p.x2 = p.denom = p.new_running_phi = p.workspace = buf.data();
  Status s = fastnorm::norm::power_norm_fwd(p);
  EXPECT_EQ(s.code(), StatusCode::InvalidArgument);
  EXPECT_NE(s.message().find("group_num 4 does not divide C = 6"), std::string::npos) << s.message();
  p.group_num = 2;
  EXPECT_TRUE(fastnorm::norm::power_norm_fwd(p).ok());
  PowerNormParams q = p; q.x = nullptr;
  EXPECT_EQ(fastnorm::norm::power_norm_fwd(q).code(), StatusCode::InvalidArgument);
  q = p; q.T = -1;
  EXPECT_EQ(fastnorm::norm::power_norm_fwd(q).code(), StatusCode::InvalidArgument);
  q = p; q.x_dtype = DType::Int32;
  EXPECT_EQ(fastnorm::norm::power_norm_fwd(q).code(), StatusCode::Unsupported);
  q = p; q.iteration = 0;
  EXPECT_EQ(fastnorm::norm::power_norm_fwd(q).code(), StatusCode::InvalidArgument);
  q = p; q.eps = 0;
  EXPECT_EQ(fastnorm::norm::power_norm_fwd(q).code(), StatusCode::InvalidArgument);
  q = p; q.quirks = static_cast<PowerQuirks>(5);
  EXPECT_EQ(fastnorm::norm::power_norm_fwd(q).code(), StatusCode::InvalidArgument);
  q = p; q.workspace = nullptr;
  EXPECT_EQ(fastnorm::norm::power_norm_fwd(q).code(), StatusCode::InvalidArgument);
  PowerNormBwdParams b;
  b.T = 2; b.B = 2; b.C = 6; b.group_num = 2; b.x = b.dy = buf.data(); b.x_stride = b.dy_stride = 6;
  b.group_rstd = b.x2 = b.denom = b.weight = b.ema_gz = buf.data();
  b.dx = b.dweight = b.dbias = b.new_ema_gz = b.workspace = buf.data();
  EXPECT_TRUE(fastnorm::norm::power_norm_bwd(b).ok());
  PowerNormBwdParams c = b; c.alpha_bkw = 2;
  EXPECT_EQ(fastnorm::norm::power_norm_bwd(c).code(), StatusCode::InvalidArgument);
  c = b; c.ema_gz = nullptr;
  EXPECT_EQ(fastnorm::norm::power_norm_bwd(c).code(), StatusCode::InvalidArgument);
  PowerNormEvalParams e;
  e.rows = 2; e.C = 6; e.group_num = 5; e.x = buf.data(); e.x_stride = 6;
  e.weight = e.bias = e.running_phi = buf.data(); e.y = buf.data();
  EXPECT_EQ(fastnorm::norm::power_norm_eval(e).code(), StatusCode::InvalidArgument);
}

TEST(PowerNormCore, WorkspaceAndEmpty) {
  PowerNormParams p;
  p.T = 0; p.B = 5; p.C = 8;
  EXPECT_EQ(fastnorm::norm::power_norm_fwd_workspace_bytes(p), 0u);
  p.T = 1000; p.x_dtype = DType::Float64;
  EXPECT_GT(fastnorm::norm::power_norm_fwd_workspace_bytes(p), 0u);
  EXPECT_EQ(fastnorm::norm::power_norm_fwd_workspace_bytes(p) % (8 * 8), 0u);
  PowerNormBwdParams b;
  b.T = 1000; b.B = 5; b.C = 8;
  EXPECT_EQ(fastnorm::norm::power_norm_bwd_workspace_bytes(b) % (4 * 4 * 8), 0u);
  // M = 0: x2 is NaN (no tokens), nothing else is touched
  std::vector<float> w(8, 1.0f), x2(8), den(8), nphi(8);
  p.T = 0; p.x_dtype = DType::Float32; p.weight = p.bias = p.running_phi = w.data();
  p.x2 = x2.data(); p.denom = den.data(); p.new_running_phi = nphi.data();
  ASSERT_TRUE(fastnorm::norm::power_norm_fwd(p).ok());
  EXPECT_TRUE(std::isnan(x2[0]));
}

TEST(PowerNormCore, SameBitsForAnyThreadCount) {
  const int64_t T = 300, B = 8, C = 32, M = T * B;
  std::mt19937 gen(9);
  std::normal_distribution<float> nd;
  std::vector<float> x(M * C), dy(M * C), w(C, 1.2f), b(C, 0.1f), phi(C, 1.0f), nu(C, 0.2f);
  for (auto& v : x) v = nd(gen);
  for (auto& v : dy) v = nd(gen);
  auto run = [&](int threads) {
    omp_set_num_threads(threads);
    std::vector<float> y(M * C), grs(M * 4), x2(C), den(C), nphi(C), dx(M * C), dw(C), db(C), nnu(C);
    PowerNormParams p;
    p.T = T; p.B = B; p.C = C; p.group_num = 4; p.x = x.data(); p.x_stride = C;
    p.weight = w.data(); p.bias = b.data(); p.running_phi = phi.data(); p.y = y.data(); p.group_rstd = grs.data();
    p.x2 = x2.data(); p.denom = den.data(); p.new_running_phi = nphi.data(); p.iteration = 3; p.warmup_iters = 10;
    std::vector<char> ws(fastnorm::norm::power_norm_fwd_workspace_bytes(p));
    p.workspace = ws.data();
    EXPECT_TRUE(fastnorm::norm::power_norm_fwd(p).ok());
    PowerNormBwdParams q;
    q.T = T; q.B = B; q.C = C; q.group_num = 4; q.x = x.data(); q.x_stride = C; q.dy = dy.data(); q.dy_stride = C;
    q.group_rstd = grs.data(); q.x2 = x2.data(); q.denom = den.data(); q.weight = w.data(); q.ema_gz = nu.data();
    q.dx = dx.data(); q.dweight = dw.data(); q.dbias = db.data(); q.new_ema_gz = nnu.data();
    std::vector<char> wsb(fastnorm::norm::power_norm_bwd_workspace_bytes(q));
    q.workspace = wsb.data();
    EXPECT_TRUE(fastnorm::norm::power_norm_bwd(q).ok());
    y.insert(y.end(), nphi.begin(), nphi.end());
    y.insert(y.end(), dx.begin(), dx.end());
    y.insert(y.end(), dw.begin(), dw.end());
    y.insert(y.end(), nnu.begin(), nnu.end());
    return y;
  };
  const int saved = omp_get_max_threads();
  const auto a = run(1), b2 = run(2), c = run(3);
  omp_set_num_threads(saved);
  EXPECT_EQ(a, b2);
  EXPECT_EQ(a, c);
}

}  // namespace

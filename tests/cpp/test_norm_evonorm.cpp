// GoogleTest tests of the EvoNorm B0/S0 CPU core (specs/norm.md §3.9, §6 item 17).
//
// Forward: every output against naive double loops written here from the spec (NCHW and NHWC, timm and tf,
// training and eval). Backward: against central finite differences of that naive forward of the loss
// sum(dy * y), in double, so the gradient formulas are checked independently of how they are written.
// Outputs are poisoned with NaN first, so an element the kernel forgets to write fails.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "fastnorm/norm_evonorm.h"

namespace {
using fastnorm::DType;
using fastnorm::Status;
using fastnorm::StatusCode;
using fastnorm::norm::EvoNormB0BwdParams;
using fastnorm::norm::EvoNormB0Params;
using fastnorm::norm::EvoNormS0BwdParams;
using fastnorm::norm::EvoNormS0Params;
using fastnorm::norm::EvoSemantics;
using Vec = std::vector<double>;

const double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Shape {
  int64_t B, C, H, W;
  bool cl;
  int64_t hw() const { return H * W; }
  int64_t numel() const { return B * C * H * W; }
  int64_t at(int64_t b, int64_t c, int64_t i) const { return cl ? (b * hw() + i) * C + c : (b * C + c) * hw() + i; }
};

Vec random_vec(int64_t n, uint32_t seed, double lo, double hi) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  Vec v(static_cast<size_t>(n));
  for (auto& x : v) x = d(g);
  return v;
}

// ---- naive forward -------------------------------------------------------------------------------------
struct B0Ref { Vec y, lvar, istd, new_rv; };
B0Ref b0_naive(const Shape& s, const Vec& x, const Vec& w, const Vec& b, const Vec& v, const Vec& rv, bool training,
               double mom, double eps, EvoSemantics sem) {
  B0Ref r;
  r.y.assign(x.size(), 0); r.lvar.assign(s.C, 0); r.istd.assign(s.B * s.C, 0); r.new_rv.assign(s.C, 0);
  const double n = static_cast<double>(s.B * s.hw());
  for (int64_t c = 0; c < s.C; ++c) {
    double mu = 0, var = 0;
    for (int64_t bb = 0; bb < s.B; ++bb)
      for (int64_t i = 0; i < s.hw(); ++i) mu += x[s.at(bb, c, i)];
    mu /= n;
    for (int64_t bb = 0; bb < s.B; ++bb)
      for (int64_t i = 0; i < s.hw(); ++i) var += (x[s.at(bb, c, i)] - mu) * (x[s.at(bb, c, i)] - mu);
    var /= n;
    r.lvar[c] = training ? var : rv[c];
    r.new_rv[c] = (1 - mom) * rv[c] + mom * var * (sem == EvoSemantics::Timm ? n / (n - 1) : 1.0);
    const double L = std::sqrt(r.lvar[c] + eps);
    for (int64_t bb = 0; bb < s.B; ++bb) {
      double m = 0, q = 0;
      for (int64_t i = 0; i < s.hw(); ++i) m += x[s.at(bb, c, i)];
      m /= s.hw();
      for (int64_t i = 0; i < s.hw(); ++i) q += (x[s.at(bb, c, i)] - m) * (x[s.at(bb, c, i)] - m);
      const double S = std::sqrt(q / s.hw() + eps);
      r.istd[bb * s.C + c] = S;
      for (int64_t i = 0; i < s.hw(); ++i) {
        const double xv = x[s.at(bb, c, i)];
        r.y[s.at(bb, c, i)] = xv / std::max(L, v[c] * xv + S) * w[c] + b[c];
      }
    }
  }
  return r;
}

struct S0Ref { Vec y, mean, rstd; };
S0Ref s0_naive(const Shape& s, int64_t G, const Vec& x, const Vec& w, const Vec& b, const Vec& v, double eps) {
  S0Ref r;
  r.y.assign(x.size(), 0); r.mean.assign(s.B * G, 0); r.rstd.assign(s.B * G, 0);
  const int64_t cg = s.C / G;
  const double n = static_cast<double>(cg * s.hw());
  for (int64_t bb = 0; bb < s.B; ++bb)
    for (int64_t g = 0; g < G; ++g) {
      double m = 0, q = 0;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (int64_t i = 0; i < s.hw(); ++i) m += x[s.at(bb, c, i)];
      m /= n;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (int64_t i = 0; i < s.hw(); ++i) q += (x[s.at(bb, c, i)] - m) * (x[s.at(bb, c, i)] - m);
      const double S = std::sqrt(q / n + eps);
      r.mean[bb * G + g] = m;
      r.rstd[bb * G + g] = 1 / S;
      for (int64_t c = g * cg; c < (g + 1) * cg; ++c)
        for (int64_t i = 0; i < s.hw(); ++i) {
          const double xv = x[s.at(bb, c, i)];
          r.y[s.at(bb, c, i)] = xv / (1 + std::exp(-v[c] * xv)) / S * w[c] + b[c];
        }
    }
  return r;
}

double loss(const Vec& y, const Vec& dy) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += y[i] * dy[i];
  return s;
}

// Central difference of f at coordinate i of vector p.
template <class F> double fd(Vec& p, size_t i, F f) {
  const double h = 1e-6 * std::max(1.0, std::fabs(p[i])), keep = p[i];
  p[i] = keep + h;
  const double up = f();
  p[i] = keep - h;
  const double down = f();
  p[i] = keep;
  return (up - down) / (2 * h);
}

void expect_near_rel(const Vec& got, const Vec& want, double rtol, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  double scale = 0;
  for (double w : want) scale = std::max(scale, std::fabs(w));
  for (size_t i = 0; i < got.size(); ++i)
    ASSERT_NEAR(got[i], want[i], rtol * std::max(scale, 1e-30)) << what << " element " << i;
}

std::vector<float> to_f(const Vec& v) { return std::vector<float>(v.begin(), v.end()); }
Vec to_d(const std::vector<float>& v) { return Vec(v.begin(), v.end()); }

// ---- B0 ------------------------------------------------------------------------------------------------
struct B0Case { bool cl, training; EvoSemantics sem; };
class EvoB0 : public ::testing::TestWithParam<B0Case> {};

TEST_P(EvoB0, ForwardDoubleAndFloatMatchNaiveLoops) {
  const auto cs = GetParam();
  const Shape s{3, 5, 4, 3, cs.cl};
  const Vec x = random_vec(s.numel(), 1, -2, 3), w = random_vec(s.C, 2, 0.5, 1.5), b = random_vec(s.C, 3, -1, 1),
            v = random_vec(s.C, 4, -1, 1), rv = random_vec(s.C, 5, 0.5, 2);
  const double eps = 1e-3, mom = 0.2;
  const B0Ref r = b0_naive(s, x, w, b, v, rv, cs.training, mom, eps, cs.sem);
  // double
  Vec y(x.size(), kNaN), lvar(s.C, kNaN), istd(s.B * s.C, kNaN), nrv(s.C, kNaN);
  EvoNormB0Params p;
  p.batch = s.B; p.channels = s.C; p.spatial = s.hw(); p.channels_last = s.cl;
  p.x = x.data(); p.x_dtype = DType::Float64; p.weight = w.data(); p.bias = b.data(); p.v = v.data();
  p.w_dtype = DType::Float64; p.running_var = rv.data(); p.rv_dtype = DType::Float64;
  p.y = y.data(); p.left_var = lvar.data(); p.inst_std = istd.data(); p.new_running_var = nrv.data();
  p.training = cs.training; p.momentum = mom; p.eps = eps; p.semantics = cs.sem;
  ASSERT_TRUE(fastnorm::norm::evonorm_b0_fwd(p).ok());
  expect_near_rel(y, r.y, 1e-13, "y");
  expect_near_rel(lvar, r.lvar, 1e-13, "left_var");
  expect_near_rel(istd, r.istd, 1e-13, "inst_std");
  if (cs.training) expect_near_rel(nrv, r.new_rv, 1e-13, "new_running_var");
  else for (double e : nrv) EXPECT_TRUE(std::isnan(e)) << "eval must not write new_running_var";
  // float x, float32 params and running var
  const auto xf = to_f(x), wf = to_f(w), bf = to_f(b), vf = to_f(v), rvf = to_f(rv);
  std::vector<float> yf(x.size(), NAN), lvf(s.C, NAN), isf(s.B * s.C, NAN), nrvf(s.C, NAN);
  p.x = xf.data(); p.x_dtype = DType::Float32; p.weight = wf.data(); p.bias = bf.data(); p.v = vf.data();
  p.w_dtype = DType::Float32; p.running_var = rvf.data(); p.rv_dtype = DType::Float32;
  p.y = yf.data(); p.left_var = lvf.data(); p.inst_std = isf.data(); p.new_running_var = nrvf.data();
  ASSERT_TRUE(fastnorm::norm::evonorm_b0_fwd(p).ok());
  expect_near_rel(to_d(yf), r.y, 2e-6, "y f32");
  if (cs.training) expect_near_rel(to_d(nrvf), r.new_rv, 2e-6, "new_running_var f32");
}

TEST_P(EvoB0, BackwardMatchesFiniteDifferences) {
  const auto cs = GetParam();
  const Shape s{2, 3, 3, 2, cs.cl};
  Vec x = random_vec(s.numel(), 11, -2, 3), w = random_vec(s.C, 12, 0.5, 1.5), b = random_vec(s.C, 13, -1, 1),
      v = random_vec(s.C, 14, -1, 1);
  const Vec rv = random_vec(s.C, 15, 0.5, 2), dy = random_vec(s.numel(), 16, -1, 1);
  const double eps = 1e-3;
  const B0Ref r = b0_naive(s, x, w, b, v, rv, cs.training, 0.1, eps, cs.sem);
  EvoNormB0BwdParams p;
  p.batch = s.B; p.channels = s.C; p.spatial = s.hw(); p.channels_last = s.cl;
  p.dy = dy.data(); p.x = x.data(); p.x_dtype = DType::Float64; p.weight = w.data(); p.v = v.data();
  p.w_dtype = DType::Float64; p.left_var = r.lvar.data(); p.inst_std = r.istd.data();
  Vec dx(x.size(), kNaN), dw(s.C, kNaN), db(s.C, kNaN), dv(s.C, kNaN);
  std::vector<char> ws(fastnorm::norm::evonorm_b0_bwd_workspace_bytes(p));
  p.dx = dx.data(); p.dweight = dw.data(); p.dbias = db.data(); p.dv = dv.data(); p.workspace = ws.data();
  p.training = cs.training; p.eps = eps; p.semantics = cs.sem;
  ASSERT_TRUE(fastnorm::norm::evonorm_b0_bwd(p).ok());
  auto f = [&] { return loss(b0_naive(s, x, w, b, v, rv, cs.training, 0.1, eps, cs.sem).y, dy); };
  Vec fdx(x.size()), fdw(s.C), fdb(s.C), fdv(s.C);
  for (size_t i = 0; i < x.size(); ++i) fdx[i] = fd(x, i, f);
  for (int64_t c = 0; c < s.C; ++c) { fdw[c] = fd(w, c, f); fdb[c] = fd(b, c, f); fdv[c] = fd(v, c, f); }
  expect_near_rel(dx, fdx, 1e-6, "dx");
  expect_near_rel(dw, fdw, 1e-6, "dweight");
  expect_near_rel(db, fdb, 1e-6, "dbias");
  expect_near_rel(dv, fdv, 1e-6, "dv");
}

INSTANTIATE_TEST_SUITE_P(Cases, EvoB0,
                         ::testing::Values(B0Case{false, true, EvoSemantics::Timm}, B0Case{true, true, EvoSemantics::Timm},
                                           B0Case{false, false, EvoSemantics::Timm}, B0Case{true, false, EvoSemantics::Tf},
                                           B0Case{false, true, EvoSemantics::Tf}, B0Case{true, true, EvoSemantics::Tf}));

// ---- S0 ------------------------------------------------------------------------------------------------
struct S0Case { bool cl; int64_t groups; };
class EvoS0 : public ::testing::TestWithParam<S0Case> {};

TEST_P(EvoS0, ForwardMatchesNaiveLoops) {
  const auto cs = GetParam();
  const Shape s{3, 6, 4, 3, cs.cl};
  const Vec x = random_vec(s.numel(), 21, -2, 3), w = random_vec(s.C, 22, 0.5, 1.5), b = random_vec(s.C, 23, -1, 1),
            v = random_vec(s.C, 24, -1, 1);
  const S0Ref r = s0_naive(s, cs.groups, x, w, b, v, 1e-5);
  Vec y(x.size(), kNaN), gm(s.B * cs.groups, kNaN), gr(s.B * cs.groups, kNaN);
  EvoNormS0Params p;
  p.batch = s.B; p.channels = s.C; p.spatial = s.hw(); p.groups = cs.groups; p.channels_last = s.cl;
  p.x = x.data(); p.x_dtype = DType::Float64; p.weight = w.data(); p.bias = b.data(); p.v = v.data();
  p.w_dtype = DType::Float64; p.y = y.data(); p.group_mean = gm.data(); p.group_rstd = gr.data(); p.eps = 1e-5;
  ASSERT_TRUE(fastnorm::norm::evonorm_s0_fwd(p).ok());
  expect_near_rel(y, r.y, 1e-13, "y");
  expect_near_rel(gm, r.mean, 1e-13, "group_mean");
  expect_near_rel(gr, r.rstd, 1e-13, "group_rstd");
  const auto xf = to_f(x), wf = to_f(w), bf = to_f(b), vf = to_f(v);
  std::vector<float> yf(x.size(), NAN), gmf(s.B * cs.groups, NAN), grf(s.B * cs.groups, NAN);
  p.x = xf.data(); p.x_dtype = DType::Float32; p.weight = wf.data(); p.bias = bf.data(); p.v = vf.data();
  p.w_dtype = DType::Float32; p.y = yf.data(); p.group_mean = gmf.data(); p.group_rstd = grf.data();
  ASSERT_TRUE(fastnorm::norm::evonorm_s0_fwd(p).ok());
  expect_near_rel(to_d(yf), r.y, 2e-6, "y f32");
}

TEST_P(EvoS0, BackwardMatchesFiniteDifferences) {
  const auto cs = GetParam();
  const Shape s{2, 6, 3, 2, cs.cl};
  Vec x = random_vec(s.numel(), 31, -2, 3), w = random_vec(s.C, 32, 0.5, 1.5), b = random_vec(s.C, 33, -1, 1),
      v = random_vec(s.C, 34, -1, 1);
  const Vec dy = random_vec(s.numel(), 35, -1, 1);
  const S0Ref r = s0_naive(s, cs.groups, x, w, b, v, 1e-5);
  EvoNormS0BwdParams p;
  p.batch = s.B; p.channels = s.C; p.spatial = s.hw(); p.groups = cs.groups; p.channels_last = s.cl;
  p.dy = dy.data(); p.x = x.data(); p.x_dtype = DType::Float64; p.weight = w.data(); p.v = v.data();
  p.w_dtype = DType::Float64; p.group_mean = r.mean.data(); p.group_rstd = r.rstd.data();
  Vec dx(x.size(), kNaN), dw(s.C, kNaN), db(s.C, kNaN), dv(s.C, kNaN);
  std::vector<char> ws(fastnorm::norm::evonorm_s0_bwd_workspace_bytes(p));
  p.dx = dx.data(); p.dweight = dw.data(); p.dbias = db.data(); p.dv = dv.data(); p.workspace = ws.data();
  ASSERT_TRUE(fastnorm::norm::evonorm_s0_bwd(p).ok());
  auto f = [&] { return loss(s0_naive(s, cs.groups, x, w, b, v, 1e-5).y, dy); };
  Vec fdx(x.size()), fdw(s.C), fdb(s.C), fdv(s.C);
  for (size_t i = 0; i < x.size(); ++i) fdx[i] = fd(x, i, f);
  for (int64_t c = 0; c < s.C; ++c) { fdw[c] = fd(w, c, f); fdb[c] = fd(b, c, f); fdv[c] = fd(v, c, f); }
  expect_near_rel(dx, fdx, 1e-6, "dx");
  expect_near_rel(dw, fdw, 1e-6, "dweight");
  expect_near_rel(db, fdb, 1e-6, "dbias");
  expect_near_rel(dv, fdv, 1e-6, "dv");
}

INSTANTIATE_TEST_SUITE_P(Cases, EvoS0,
                         ::testing::Values(S0Case{false, 1}, S0Case{false, 3}, S0Case{false, 6}, S0Case{true, 1},
                                           S0Case{true, 2}, S0Case{true, 6}));

// ---- Status on bad arguments ---------------------------------------------------------------------------
TEST(EvoStatus, RejectsBadArguments) {
  float x[8] = {0}, w[2] = {1, 1}, y[8], st[4];
  EvoNormB0Params p;
  p.batch = 1; p.channels = 2; p.spatial = 4; p.x = x; p.weight = w; p.bias = w; p.v = w; p.running_var = w;
  p.y = y; p.left_var = st; p.inst_std = st + 2;
  EXPECT_TRUE(fastnorm::norm::validate(p).ok());
  auto bad = [&](auto mutate, const char* what) {
    EvoNormB0Params q = p;
    mutate(q);
    const Status s = fastnorm::norm::evonorm_b0_fwd(q);
    EXPECT_FALSE(s.ok()) << what;
    EXPECT_NE(s.message().find("evonorm_b0"), std::string::npos) << s.message();
  };
  bad([](EvoNormB0Params& q) { q.batch = -1; }, "negative batch");
  bad([](EvoNormB0Params& q) { q.x = nullptr; }, "null x");
  bad([](EvoNormB0Params& q) { q.eps = 0; }, "eps 0");
  bad([](EvoNormB0Params& q) { q.momentum = 1.5; }, "momentum");
  bad([](EvoNormB0Params& q) { q.semantics = static_cast<EvoSemantics>(7); }, "semantics");
  bad([](EvoNormB0Params& q) { q.x_dtype = DType::Int32; }, "int x");
  bad([](EvoNormB0Params& q) { q.w_dtype = DType::Float64; }, "f64 weight with f32 x");
  EvoNormS0Params s;
  float w6[6] = {1, 1, 1, 1, 1, 1};
  s.batch = 1; s.channels = 6; s.spatial = 1; s.groups = 4;
  s.x = w6; s.weight = w6; s.bias = w6; s.v = w6; s.y = y; s.group_mean = st; s.group_rstd = st;
  const Status r = fastnorm::norm::validate(s);
  EXPECT_EQ(r.code(), StatusCode::InvalidArgument);
  EXPECT_NE(r.message().find("groups (4) must divide channels (6)"), std::string::npos) << r.message();
  EvoNormB0BwdParams bw;
  bw.batch = 2; bw.channels = 3; bw.x_dtype = DType::Float64;
  EXPECT_EQ(fastnorm::norm::evonorm_b0_bwd_workspace_bytes(bw), size_t(6 * 2 * 3 * 8));
}

}  // namespace

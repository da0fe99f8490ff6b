// GoogleTest tests of the alpha-BN CPU core (specs/norm.md §3.8, §6 item 17): forward and exact backward
// against naive double loops written here from the spec, NCHW and NHWC, a in {0, 0.3, 1}, both variance
// flags, plus Status on bad arguments and the workspace size queries.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <random>
#include <tuple>
#include <vector>

#include "fastnorm/norm_alpha_bn.h"
#include "norm_test_buf.h"

namespace {
using fastnorm::DType;
using fastnorm::StatusCode;
using fastnorm::norm::AlphaBatchNormBwdParams;
using fastnorm::norm::AlphaBatchNormParams;
using fastnorm_test::Buf;
using fastnorm_test::expect_close;
using fastnorm_test::out_tol;

// (x dtype, channels_last, alpha, unbiased)
class AlphaBnCore : public ::testing::TestWithParam<std::tuple<DType, bool, double, bool>> {};

TEST_P(AlphaBnCore, ForwardAndBackwardMatchNaiveLoops) {
  const auto [xt, cl, a, unbiased] = GetParam();
  const int64_t N = 3, C = 70, S = 13, n = N * S, total = N * C * S;
  const auto idx = [&](int64_t b, int64_t c, int64_t s) { return cl ? (b * S + s) * C + c : (b * C + c) * S + s; };
  const DType wt = xt == DType::Float64 ? DType::Float64 : DType::Float32;
  std::mt19937 g(7);
  Buf x(xt, total), dy(xt, total), w(wt, C), bias(wt, C), rm(DType::Float32, C), rv(DType::Float32, C);
  x.fill_random(g, 1.5);
  dy.fill_random(g);
  w.fill_random(g, 1.0);
  bias.fill_random(g);
  rm.fill_random(g);
  for (int64_t c = 0; c < C; ++c) rv.set(c, 0.5 + std::fabs(rm.val[c]));
  const double eps = 1e-5;
  std::vector<double> y_ref(total), dx_ref(total), dw_ref(C), db_ref(C);
  for (int64_t c = 0; c < C; ++c) {
    double s1 = 0;
    for (int64_t b = 0; b < N; ++b)
      for (int64_t s = 0; s < S; ++s) s1 += x.val[idx(b, c, s)];
    const double mub = s1 / n;
    double s2 = 0;
    for (int64_t b = 0; b < N; ++b)
      for (int64_t s = 0; s < S; ++s) s2 += (x.val[idx(b, c, s)] - mub) * (x.val[idx(b, c, s)] - mub);
    const double varb = s2 / (unbiased ? n - 1 : n);
    const double mu = a * rm.val[c] + (1 - a) * mub, var = a * rv.val[c] + (1 - a) * varb;
    const double r = 1.0 / std::sqrt(var + eps);
    double sg = 0, sgx = 0, sdy = 0, sdyx = 0;
    for (int64_t b = 0; b < N; ++b)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = idx(b, c, s);
        const double xh = (x.val[i] - mu) * r;
        y_ref[i] = w.val[c] * xh + bias.val[c];
        sg += dy.val[i] * w.val[c];
        sgx += dy.val[i] * w.val[c] * xh;
        sdy += dy.val[i];
        sdyx += dy.val[i] * xh;
      }
    dw_ref[c] = sdyx;
    db_ref[c] = sdy;
    for (int64_t b = 0; b < N; ++b)
      for (int64_t s = 0; s < S; ++s) {
        const int64_t i = idx(b, c, s);
        dx_ref[i] = r * dy.val[i] * w.val[c] - (1 - a) * r * sg / n -
                    (1 - a) * r * r * (x.val[i] - mub) * sgx / (unbiased ? n - 1 : n);
      }
  }
  const DType sd = xt == DType::Float64 ? DType::Float64 : DType::Float32;
  Buf y(xt, total), mean(sd, C), rstd(sd, C);
  AlphaBatchNormParams p;
  p.batch = N; p.channels = C; p.spatial = S; p.channels_last = cl;
  p.x = x.data(); p.x_dtype = xt;
  p.running_mean = rm.data(); p.running_var = rv.data(); p.running_dtype = DType::Float32;
  p.weight = w.data(); p.bias = bias.data(); p.w_dtype = wt;
  p.y = y.data(); p.y_dtype = xt; p.mean = mean.data(); p.rstd = rstd.data();
  p.alpha_source = a; p.eps = eps; p.unbiased_batch_var = unbiased;
  std::vector<unsigned char> fws(fastnorm::norm::alpha_batch_norm_fwd_workspace_bytes(p));
  EXPECT_EQ(fws.empty(), a == 1.0);
  ASSERT_TRUE(fastnorm::norm::alpha_batch_norm_fwd(p, fws.empty() ? nullptr : fws.data()).ok());
  expect_close(y, y_ref, out_tol(xt), "y");

  Buf dx(xt, total), dw(wt, C), db(wt, C);
  AlphaBatchNormBwdParams q;
  q.batch = N; q.channels = C; q.spatial = S; q.channels_last = cl;
  q.dy = dy.data(); q.dy_dtype = xt; q.x = x.data(); q.x_dtype = xt;
  q.mean = mean.data(); q.rstd = rstd.data(); q.weight = w.data(); q.w_dtype = wt;
  q.dx = dx.data(); q.dx_dtype = xt; q.dweight = dw.data(); q.dbias = db.data();
  q.alpha_source = a; q.unbiased_batch_var = unbiased;
  std::vector<unsigned char> bws(fastnorm::norm::alpha_batch_norm_bwd_workspace_bytes(q));
  q.workspace = bws.data();
  ASSERT_TRUE(fastnorm::norm::alpha_batch_norm_bwd(q).ok());
  expect_close(dx, dx_ref, out_tol(xt) * (xt == DType::Float32 ? 2 : 1), "dx");
  expect_close(dw, dw_ref, out_tol(wt) * 2, "dweight");
  expect_close(db, db_ref, out_tol(wt), "dbias");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AlphaBnCore,
    ::testing::Combine(::testing::Values(DType::Float32, DType::Float64, DType::BFloat16, DType::Float16),
                       ::testing::Bool(), ::testing::Values(0.0, 0.3, 1.0), ::testing::Bool()));

TEST(AlphaBnCoreStatus, RejectsBadArguments) {
  float x[24] = {}, y[24], m[2], r[2], rm[2] = {0, 0}, rv[2] = {1, 1};
  AlphaBatchNormParams p;
  p.batch = 3; p.channels = 2; p.spatial = 4;
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_fwd(p, nullptr).code(), StatusCode::InvalidArgument);  // null x
  p.x = x; p.y = y; p.mean = m; p.rstd = r;
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_fwd(p, nullptr).code(), StatusCode::InvalidArgument);  // no stats
  p.running_mean = rm; p.running_var = rv;
  p.alpha_source = 1.5;
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_fwd(p, nullptr).code(), StatusCode::InvalidArgument);
  p.alpha_source = 0.5;
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_fwd(p, nullptr).code(), StatusCode::InvalidArgument);  // workspace
  p.x_dtype = DType::Int64;
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_fwd(p, nullptr).code(), StatusCode::Unsupported);
  p.x_dtype = DType::Float32;
  p.eps = -1;
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_fwd(p, nullptr).code(), StatusCode::InvalidArgument);
  p.eps = 1e-5;
  p.alpha_source = 1.0;
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_fwd_workspace_bytes(p), 0u);
  ASSERT_TRUE(fastnorm::norm::alpha_batch_norm_fwd(p, nullptr).ok());
  EXPECT_FLOAT_EQ(r[0], static_cast<float>(1.0 / std::sqrt(1.0 + 1e-5)));
  AlphaBatchNormBwdParams q;
  q.batch = 3; q.channels = 2; q.spatial = 4; q.x = x; q.dy = x; q.mean = m; q.rstd = r; q.alpha_source = 0.0;
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_bwd(q).code(), StatusCode::InvalidArgument);  // no workspace
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_bwd_workspace_bytes(q), 3u * 3u * 2u * sizeof(double));
  q.alpha_source = 1.0;
  EXPECT_EQ(fastnorm::norm::alpha_batch_norm_bwd_workspace_bytes(q), 0u);
}

}  // namespace

// GoogleTest tests of the CRMSNorm CPU core (specs/norm.md §3.5, §6 item 17): the kernels against naive
// double loops written here from the spec formulas, on the very values the kernels read (16-bit inputs
// are generated already rounded), plus Status on bad arguments and the workspace size query.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <cstdint>
#include <random>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/norm.h"
#include "fastnorm/norm_crms.h"
#include "norm_test_buf.h"

namespace {
using fastnorm::DType;
using fastnorm::StatusCode;
using fastnorm::norm::CRMSNormBwdParams;
using fastnorm::norm::CRMSNormParams;
using fastnorm_test::Buf;
using fastnorm_test::expect_close;
using fastnorm_test::out_tol;

struct Case {
  DType x, w;
  int64_t m, n;
};

class CrmsCore : public ::testing::TestWithParam<Case> {};

TEST_P(CrmsCore, ForwardAndBackwardMatchNaiveLoops) {
  const Case c = GetParam();
  const int64_t m = c.m, n = c.n, stride = n + 3;  // strided rows
  std::mt19937 g(static_cast<unsigned>(m * 131 + n));
  Buf x(c.x, m * stride), w(c.w, n), b(c.w, n), dy(c.x, m * n);
  x.fill_random(g, 0.4);
  w.fill_random(g, 1.0);
  b.fill_random(g);
  dy.fill_random(g);
  const double eps = 1e-5;
  // naive forward and backward in double
  std::vector<double> y_ref(m * n), r_ref(m), dx_ref(m * n), dx_terms(m * n), dw_ref(n, 0.0), db_ref(n, 0.0);
  for (int64_t r = 0; r < m; ++r) {
    double s = 0, ss = 0;
    for (int64_t j = 0; j < n; ++j) { const double v = x.val[r * stride + j]; s += v; ss += v * v; }
    const double rs = 1.0 / std::sqrt((ss + s * s) / static_cast<double>(n + 1) + eps);
    r_ref[r] = rs;
    double G = 0;
    for (int64_t j = 0; j < n; ++j) {
      const double v = x.val[r * stride + j];
      y_ref[r * n + j] = w.val[j] * v * rs + b.val[j];
      G += dy.val[r * n + j] * w.val[j] * v;
      dw_ref[j] += dy.val[r * n + j] * v * rs;
      db_ref[j] += dy.val[r * n + j];
    }
    for (int64_t j = 0; j < n; ++j) {
      const double v = x.val[r * stride + j];
      const double t1 = rs * dy.val[r * n + j] * w.val[j], t2 = rs * rs * rs / static_cast<double>(n + 1) * G * (v + s);
      dx_ref[r * n + j] = t1 - t2;
      dx_terms[r * n + j] = std::fabs(t1) + std::fabs(t2);
    }
  }
  const DType sd = c.x == DType::Float64 ? DType::Float64 : DType::Float32;
  Buf y(c.x, m * n), rstd(sd, m);
  CRMSNormParams p;
  p.rows = m; p.cols = n;
  p.x = x.data(); p.x_stride = stride; p.x_dtype = c.x;
  p.weight = w.data(); p.bias = b.data(); p.w_dtype = c.w;
  p.y = y.data(); p.y_dtype = c.x; p.rstd = rstd.data(); p.eps = eps;
  ASSERT_TRUE(fastnorm::norm::crms_norm_fwd(p).ok());
  expect_close(y, y_ref, out_tol(c.x), "y");
  expect_close(rstd, r_ref, sd == DType::Float64 ? 1e-13 : 1e-6, "rstd");

  Buf dx(c.x, m * n), dw(c.w, n), db(c.w, n);
  CRMSNormBwdParams q;
  q.rows = m; q.cols = n;
  q.dy = dy.data(); q.dy_stride = n; q.dy_dtype = c.x;
  q.x = x.data(); q.x_stride = stride; q.x_dtype = c.x;
  q.rstd = rstd.data(); q.weight = w.data(); q.w_dtype = c.w;
  q.dx = dx.data(); q.dx_dtype = c.x; q.dweight = dw.data(); q.dbias = db.data();
  std::vector<unsigned char> ws(fastnorm::norm::crms_norm_bwd_workspace_bytes(q));
  EXPECT_EQ(ws.size(), 2 * static_cast<size_t>(fastnorm::norm::bwd_num_blocks(m, n)) * n * (sd == DType::Float64 ? 8 : 4));
  q.workspace = ws.data();
  ASSERT_TRUE(fastnorm::norm::crms_norm_bwd(q).ok());
  // dx/dweight use the saved (rounded) rstd: tolerance of the accumulation type, 16-bit output rounding
  // dx = t1 - t2 cancels when the row is short (N = 1: dx = r*g*eps/(x^2 + eps)): judged against |t1| + |t2|.
  expect_close(dx, dx_ref, out_tol(c.x) * (c.x == DType::Float32 ? 2 : 1), "dx", &dx_terms);
  expect_close(dw, dw_ref, c.w == DType::Float64 ? 1e-12 : (c.w == DType::Float32 ? 2e-5 : 1e-2), "dweight");
  expect_close(db, db_ref, c.w == DType::Float64 ? 1e-12 : (c.w == DType::Float32 ? 1e-5 : 1e-2), "dbias");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, CrmsCore,
                         ::testing::Values(Case{DType::Float32, DType::Float32, 37, 767},
                                           Case{DType::Float64, DType::Float64, 9, 1023},
                                           Case{DType::BFloat16, DType::Float32, 20, 255},
                                           Case{DType::Float16, DType::Float16, 5, 4095},
                                           Case{DType::Float32, DType::BFloat16, 3, 1},
                                           Case{DType::Float32, DType::Float32, 130, 33}));

TEST(CrmsCoreStatus, RejectsBadArguments) {
  CRMSNormParams p;
  p.rows = 2; p.cols = 4;
  EXPECT_EQ(fastnorm::norm::crms_norm_fwd(p).code(), StatusCode::InvalidArgument);  // null x
  float x[8] = {}, y[8], r[2];
  p.x = x; p.x_stride = 4; p.y = y; p.rstd = r;
  p.eps = 0.0;
  EXPECT_EQ(fastnorm::norm::crms_norm_fwd(p).code(), StatusCode::InvalidArgument);
  p.eps = 1e-5;
  p.x_dtype = DType::Int32;
  EXPECT_EQ(fastnorm::norm::crms_norm_fwd(p).code(), StatusCode::Unsupported);
  p.x_dtype = DType::Float32;
  p.rows = -1;
  EXPECT_EQ(fastnorm::norm::crms_norm_fwd(p).code(), StatusCode::InvalidArgument);
  p.rows = 2;
  p.x_stride = 3;
  EXPECT_EQ(fastnorm::norm::crms_norm_fwd(p).code(), StatusCode::InvalidArgument);
  p.x_stride = 4;
  p.w_dtype = DType::Float64;
  EXPECT_EQ(fastnorm::norm::crms_norm_fwd(p).code(), StatusCode::Unsupported);
  p.w_dtype = DType::Float32;
  ASSERT_TRUE(fastnorm::norm::crms_norm_fwd(p).ok());
  // an all-zero row: rstd = eps^(-1/2)
  EXPECT_NEAR(r[0], 1.0 / std::sqrt(1e-5), 1e-2);
  CRMSNormBwdParams q;
  q.rows = 2; q.cols = 4; q.x = x; q.x_stride = 4; q.dy = x; q.dy_stride = 4; q.rstd = r;
  float dw[4];
  q.dweight = dw;
  EXPECT_EQ(fastnorm::norm::crms_norm_bwd(q).code(), StatusCode::InvalidArgument);  // no workspace
  q.dweight = nullptr;
  q.dy = nullptr;
  EXPECT_EQ(fastnorm::norm::crms_norm_bwd(q).code(), StatusCode::InvalidArgument);
  EXPECT_EQ(fastnorm::norm::crms_norm_bwd_workspace_bytes(q), 0u);
}

}  // namespace

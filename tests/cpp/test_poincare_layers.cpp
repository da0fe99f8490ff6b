// Core tests of the Poincaré layers (specs/poincare.md §6.16): the FC epilogue and the FC/conv/BN entry points
// on raw buffers against scalar double implementations written from the formulas of §3.5/§3.7/§3.8,
// identity init, Status on bad arguments, workspace-size queries.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "fastnorm/detail/poincare_layers_math.h"
#include "fastnorm/poincare_layers.h"

namespace fp = fastnorm::poincare;
using fastnorm::DType;

namespace {

// Scalar double HNN++ FC of one row (unscaled sinh form: fine for the moderate values used here).
std::vector<double> naive_fc(const std::vector<double>& x, const std::vector<double>& Z, const std::vector<double>& r,
                             int n, int m, double c, bool project, double eps) {
  const double sc = std::sqrt(c);
  double xx = 0;
  for (double v : x) xx += v * v;
  const double lam = 2.0 / std::max(1.0 - c * xx, 1e-15);
  std::vector<double> w(m);
  double ww = 0;
  for (int k = 0; k < m; ++k) {
    double a = 0, zz = 0;
    for (int j = 0; j < n; ++j) {
      a += x[j] * Z[k * n + j];
      zz += Z[k * n + j] * Z[k * n + j];
    }
    const double zeta = std::max(std::sqrt(zz), 1e-15);
    const double t = lam * sc * a * std::cosh(2 * sc * r[k]) / zeta - (lam - 1) * std::sinh(2 * sc * r[k]);
    w[k] = std::sinh(2 * zeta * std::asinh(t));
    ww += w[k] * w[k];
  }
  std::vector<double> y(m);
  double yy = 0;
  for (int k = 0; k < m; ++k) {
    y[k] = w[k] / (sc * (1 + std::sqrt(1 + ww)));
    yy += y[k] * y[k];
  }
  const double M = (1 - eps) / sc;
  if (project && std::sqrt(yy) > M)
    for (double& v : y) v *= M / std::sqrt(yy);
  return y;
}

fp::Curvature host_c(const double* c) {
  fp::Curvature k;
  k.ptr = c;
  k.dtype = DType::Float64;
  k.on_host = true;
  return k;
}

}  // namespace

TEST(PoincareLayers, FcEpilogueMatchesScalarDouble) {
  std::mt19937 rng(1);
  std::normal_distribution<double> nd(0.0, 1.0);
  const int n = 7, m = 5;
  const double c = 0.8;
  for (int trial = 0; trial < 20; ++trial) {
    std::vector<double> x(n), Z(m * n), r(m);
    for (auto& v : x) v = 0.15 * nd(rng);
    for (auto& v : Z) v = 0.5 * nd(rng);
    for (auto& v : r) v = 0.2 * nd(rng);
    const auto k = fp::layers::make_consts<double>(c, DType::Float64);
    std::vector<fp::layers::FcCol<double>> cols(m);
    std::vector<double> buf(m);
    double xx = 0;
    for (double v : x) xx += v * v;
    for (int o = 0; o < m; ++o) {
      double zz = 0, a = 0;
      for (int j = 0; j < n; ++j) {
        zz += Z[o * n + j] * Z[o * n + j];
        a += x[j] * Z[o * n + j];
      }
      cols[o] = fp::layers::fc_col(std::sqrt(zz), r[o], k);
      buf[o] = a;
    }
    fp::layers::fc_row_forward(buf.data(), 1, m, xx, cols.data(), true, false, k);
    const auto ref = naive_fc(x, Z, r, n, m, c, true, 1e-5);
    for (int o = 0; o < m; ++o) EXPECT_NEAR(buf[o], ref[o], 1e-12 * (1 + std::fabs(ref[o])));
  }
}

TEST(PoincareLayers, LinearForwardAndIdentity) {
  const int rows = 9, n = 6;
  const double c = 1.0;
  std::mt19937 rng(2);
  std::normal_distribution<double> nd(0.0, 1.0);
  std::vector<double> x(rows * n), Z(n * n, 0.0), out(rows * n);
  for (auto& v : x) v = 0.2 * nd(rng);
  for (int i = 0; i < n; ++i) Z[i * n + i] = 0.5;  // ½·I: the exact identity with the corrected λ
  fp::LinearParams p;
  p.rows = rows; p.in_features = n; p.out_features = n;
  p.x = x.data(); p.x_dtype = DType::Float64;
  p.weight = Z.data(); p.w_dtype = DType::Float64;
  p.c = host_c(&c);
  p.out = out.data();
  std::vector<char> ws(fp::linear_workspace_bytes(p));
  p.workspace = ws.data(); p.workspace_bytes = ws.size();
  ASSERT_TRUE(fp::linear_fwd(p).ok());
  for (int i = 0; i < rows * n; ++i) EXPECT_NEAR(out[i], x[i], 1e-13);
  // random weights and bias against the scalar implementation
  std::vector<double> W(4 * n), b(4), y(rows * 4);
  for (auto& v : W) v = 0.5 * nd(rng);
  for (auto& v : b) v = 0.3 * nd(rng);
  p.out_features = 4; p.weight = W.data(); p.bias = b.data(); p.out = y.data();
  ws.resize(fp::linear_workspace_bytes(p));
  p.workspace = ws.data(); p.workspace_bytes = ws.size();
  ASSERT_TRUE(fp::linear_fwd(p).ok());
  for (int i = 0; i < rows; ++i) {
    const auto ref = naive_fc(std::vector<double>(x.begin() + i * n, x.begin() + (i + 1) * n), W, b, n, 4, c, true,
                              1e-5);
    for (int o = 0; o < 4; ++o) EXPECT_NEAR(y[i * 4 + o], ref[o], 1e-12);
  }
}

TEST(PoincareLayers, ConvEqualsUnfoldedFc) {
  // 1×1 conv with C_in = n: β = 1, each pixel is an FC row of the tangent input mapped by exp0 and log0.
  const int B = 2, C = 3, H = 2, W = 3, Co = 2;
  const double c = 0.5;
  std::vector<double> x(B * C * H * W), w(Co * C), out(B * Co * H * W);
  std::mt19937 rng(3);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (auto& v : x) v = 0.4 * nd(rng);
  for (auto& v : w) v = 0.5 * nd(rng);
  fp::Conv2dParams p;
  p.batch = B; p.in_channels = C; p.height = H; p.width = W; p.out_channels = Co;
  p.x = x.data(); p.x_dtype = DType::Float64; p.weight = w.data(); p.w_dtype = DType::Float64;
  p.c = host_c(&c); p.out = out.data();
  std::vector<char> ws(fp::conv2d_workspace_bytes(p));
  p.workspace = ws.data(); p.workspace_bytes = ws.size();
  ASSERT_TRUE(fp::conv2d_fwd(p).ok());
  EXPECT_DOUBLE_EQ(fp::beta_concat_ratio(C, C), 1.0);
  const double sc = std::sqrt(c);
  for (int b = 0; b < B; ++b)
    for (int q = 0; q < H * W; ++q) {
      std::vector<double> u(C);
      double nu = 0;
      for (int ch = 0; ch < C; ++ch) {
        u[ch] = x[(b * C + ch) * H * W + q];
        nu += u[ch] * u[ch];
      }
      nu = std::sqrt(nu);
      const double f = std::min(std::tanh(sc * nu), 1 - 1e-5) / (sc * nu);
      for (double& v : u) v *= f;
      auto y = naive_fc(u, w, std::vector<double>(Co, 0.0), C, Co, c, true, 1e-5);
      double ny = 0;
      for (double v : y) ny += v * v;
      ny = std::sqrt(ny);
      const double g = std::atanh(std::min(sc * ny, 1 - 1e-7)) / (sc * ny);
      for (int o = 0; o < Co; ++o) EXPECT_NEAR(out[(b * Co + o) * H * W + q], g * y[o], 1e-12);
    }
}

TEST(PoincareLayers, BatchNormEvalFinaliser) {
  // Eval with γ = running_var + eps and β = 0, running_mean = 0: sc = 1, μ = m = 0 ⇒ out = u (up to projection).
  const int N = 5, C = 3;
  const double c = 0.3, eps = 1e-6;
  std::vector<double> x(N * C), out(N * C), mean(C), var(1);
  std::mt19937 rng(4);
  std::normal_distribution<double> nd(0.0, 1.0);
  for (auto& v : x) v = 0.3 * nd(rng);
  const double gamma = 0.7 + eps, beta[3] = {0, 0, 0}, rm[3] = {0, 0, 0}, rv = 0.7;
  fp::MidpointBNParams p;
  p.layout.outer = N; p.layout.D = C; p.layout.inner = 1;
  p.x = x.data(); p.x_dtype = DType::Float64;
  p.weight = &gamma; p.bias = beta; p.w_dtype = DType::Float64;
  p.running_mean = rm; p.running_var = &rv; p.running_dtype = DType::Float64;
  p.c = host_c(&c); p.use_batch_stats = false; p.eps = eps;
  p.out = out.data(); p.mean = mean.data(); p.var = var.data();
  std::vector<char> ws(fp::bn_workspace_bytes(p));
  p.workspace = ws.data(); p.workspace_bytes = ws.size();
  ASSERT_TRUE(fp::bn_fwd(p).ok());
  for (int i = 0; i < N * C; ++i) EXPECT_NEAR(out[i], x[i], 1e-12);
  EXPECT_DOUBLE_EQ(var[0], rv);
}

TEST(PoincareLayers, RunningUpdate) {
  const double c = 1.0;
  std::vector<double> rm = {0.1, -0.2}, m = {0.3, 0.1};
  double rv = 1.0, var = 0.5;
  fp::BNUpdateParams p;
  p.channels = 2; p.running_mean = rm.data(); p.running_var = &rv; p.running_dtype = DType::Float64;
  p.mean = m.data(); p.var = &var; p.stats_dtype = DType::Float64; p.c = host_c(&c); p.momentum = 1.0; p.count = 5;
  ASSERT_TRUE(fp::bn_running_update(p).ok());
  EXPECT_NEAR(rm[0], 0.3, 1e-12);  // momentum 1: the batch midpoint
  EXPECT_NEAR(rm[1], 0.1, 1e-12);
  EXPECT_NEAR(rv, 0.5 * 5 / 4, 1e-14);
  p.count = 1;
  EXPECT_FALSE(fp::bn_running_update(p).ok());
}

TEST(PoincareLayers, StatusOnBadArguments) {
  const double c = 1.0;
  fp::LinearParams p;
  p.rows = -1; p.in_features = 2; p.out_features = 2; p.c = host_c(&c);
  EXPECT_EQ(fp::linear_fwd(p).code(), fastnorm::StatusCode::InvalidArgument);
  p.rows = 2;
  EXPECT_EQ(fp::linear_fwd(p).code(), fastnorm::StatusCode::InvalidArgument);  // null x
  p.x_dtype = DType::Int32;
  EXPECT_EQ(fp::linear_fwd(p).code(), fastnorm::StatusCode::Unsupported);
  EXPECT_EQ(fp::linear_workspace_bytes(p), 0u);
  fp::Conv2dParams q;
  q.batch = 1; q.in_channels = 1; q.height = 2; q.width = 2; q.out_channels = 1; q.kernel_h = 5; q.kernel_w = 5;
  q.c = host_c(&c);
  EXPECT_EQ(fp::conv2d_fwd(q).code(), fastnorm::StatusCode::InvalidArgument);  // kernel larger than the input
  q.kernel_h = q.kernel_w = 1;
  q.stride_h = 0;
  EXPECT_EQ(fp::conv2d_fwd(q).code(), fastnorm::StatusCode::InvalidArgument);
  fp::MidpointBNParams b;
  b.c = host_c(&c);
  EXPECT_FALSE(fp::bn_fwd(b).ok());  // null weight/bias
  // workspace too small is reported, not overrun
  std::vector<double> x(4, 0.1), w(4, 0.5), out(4);
  fp::LinearParams r;
  r.rows = 2; r.in_features = 2; r.out_features = 2; r.x = x.data(); r.x_dtype = DType::Float64; r.weight = w.data();
  r.w_dtype = DType::Float64; r.c = host_c(&c); r.out = out.data();
  EXPECT_GT(fp::linear_workspace_bytes(r), 0u);
  r.workspace_bytes = 8;
  std::vector<char> tiny(8);
  r.workspace = tiny.data();
  EXPECT_FALSE(fp::linear_fwd(r).ok());
}

// GoogleTest tests of the Unified Normalization CPU core and channel_affine (specs/norm.md §3.7, §6 item 17):
// core results against naive double loops written here from the spec, Status on bad arguments, workspace
// size queries, bf16 output rounding. Outputs are poisoned with NaN so unwritten elements fail.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/norm_unified.h"

namespace {
using fastnorm::DType;
using fastnorm::Status;
using fastnorm::StatusCode;
using namespace fastnorm::norm;

const double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Case {
  int64_t b, n, c, L;
  int64_t t, W, S;
  bool filt;
  bool mask;
  double spike;  // multiplies channel 0 of the input (outlier)
};

// Naive forward state step and output, in double, straight from §3.7.
struct FwdRef {
  std::vector<double> y, var, rho, new_rv, new_bx;
  bool skip;
  int64_t cnt;
};

FwdRef naive_fwd(const Case& k, const std::vector<double>& x, const std::vector<uint8_t>& mask,
                 const std::vector<double>& w, const std::vector<double>& bias, const std::vector<double>& rv,
                 const std::vector<double>& bx, int64_t cnt0, double eps, double mom) {
  const int64_t m = k.b * k.n, C = k.c, L = k.L;
  FwdRef r;
  std::vector<double> q(C, 0.0);
  int64_t nv = 0;
  for (int64_t i = 0; i < m; ++i) {
    if (k.mask && mask[i]) continue;
    ++nv;
    for (int64_t c = 0; c < C; ++c) q[c] += x[i * C + c] * x[i * C + c];
  }
  for (auto& v : q) v /= nv;
  double mean = 0, m2 = 0;
  for (int64_t i = 0; i < L * C; ++i) mean += std::sqrt(bx[i]);
  mean /= L * C;
  for (int64_t i = 0; i < L * C; ++i) m2 += (std::sqrt(bx[i]) - mean) * (std::sqrt(bx[i]) - mean);
  const double v = m2 / (L * C - 1);
  r.new_bx = bx;
  const int64_t slot = k.t % L;
  for (int64_t c = 0; c < C; ++c) r.new_bx[slot * C + c] = q[c];
  r.skip = L <= 1;
  r.cnt = cnt0;
  auto gmean = [&](int64_t c) {
    double s = 0;
    for (int64_t i = 0; i < L; ++i) s += std::log(r.new_bx[i * C + c]);
    return std::exp(s / L);
  };
  if (k.filt && k.t >= k.W) {
    bool any = false;
    for (int64_t c = 0; c < C; ++c) {
      double am = 0;
      for (int64_t i = 0; i < L; ++i) am += r.new_bx[i * C + c];
      am /= L;
      any = any || (am - gmean(c) > v * L);
    }
    if (any) {
      for (int64_t c = 0; c < C; ++c) r.new_bx[slot * C + c] = rv[c];
      r.skip = true;
      ++r.cnt;
    }
  }
  const bool batch = k.t <= L || k.t < k.W || r.skip;
  r.var.resize(C), r.rho.resize(C), r.new_rv.resize(C);
  for (int64_t c = 0; c < C; ++c) {
    r.var[c] = batch ? q[c] : gmean(c);
    double rho = std::sqrt(r.var[c] + eps) / std::sqrt(rv[c] + eps);
    rho = std::min(std::max(rho, 0.2), 5.0);
    r.rho[c] = (k.t <= std::max(k.S, k.W) || r.skip) ? 1.0 : rho;
    r.new_rv[c] = mom * rv[c] + (1 - mom) * r.var[c];
  }
  r.y.resize(m * C);
  for (int64_t i = 0; i < m; ++i)
    for (int64_t c = 0; c < C; ++c) r.y[i * C + c] = w[c] * x[i * C + c] / std::sqrt(r.var[c] + eps) + bias[c];
  return r;
}

template <typename T>
std::vector<double> rnd(size_t n, uint32_t seed, double lo, double hi) {
  std::mt19937 g(seed);
  std::uniform_real_distribution<double> d(lo, hi);
  std::vector<double> v(n);
  for (auto& e : v) e = static_cast<double>(static_cast<T>(d(g)));
  return v;
}

template <typename T>
double rel(const std::vector<T>& a, const std::vector<double>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
    den += b[i] * b[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

template <typename T>
void run_case(const Case& k, double tol) {
  const int64_t m = k.b * k.n, C = k.c, L = k.L;
  const double eps = 1e-5, mom = 0.9;
  std::vector<double> x = rnd<T>(m * C, 1, -2, 2);
  for (int64_t i = 0; i < m; ++i) x[i * C] = static_cast<double>(static_cast<T>(x[i * C] * k.spike));
  std::vector<uint8_t> mask(m, 0);
  for (int64_t i = 0; i < m; ++i) mask[i] = k.mask && (i % 3 == 2);
  const auto w = rnd<T>(C, 2, 0.5, 1.5), bias = rnd<T>(C, 3, -1, 1), rv = rnd<T>(C, 4, 0.5, 2);
  const auto bx = rnd<T>(L * C, 5, 0.5, 2);
  const int64_t cnt0 = 3;
  const FwdRef ref = naive_fwd(k, x, mask, w, bias, rv, bx, cnt0, eps, mom);

  std::vector<T> xt(x.begin(), x.end()), wt(w.begin(), w.end()), bt(bias.begin(), bias.end()),
      rvt(rv.begin(), rv.end()), bxt(bx.begin(), bx.end());
  std::vector<T> y(m * C, T(kNaN)), var(C, T(kNaN)), rho(C, T(kNaN)), nrv(C, T(kNaN)), nbx(L * C, T(kNaN));
  uint8_t skip = 7;
  int64_t cnt = -1;
  const DType dt = sizeof(T) == 8 ? DType::Float64 : DType::Float32;
  UnifiedNormParams p;
  p.rows = m; p.cols = C; p.x = xt.data(); p.x_stride = C; p.x_dtype = dt;
  p.pad_mask = k.mask ? mask.data() : nullptr;
  p.weight = wt.data(); p.bias = bt.data(); p.w_dtype = dt;
  p.running_var = rvt.data(); p.buffer_x2 = bxt.data(); p.state_dtype = dt; p.skip_counter = &cnt0;
  p.window = L; p.iteration = k.t; p.warmup_iters = k.W; p.compensation_start = k.S;
  p.outlier_filtration = k.filt; p.eps = eps; p.momentum = mom;
  p.y = y.data(); p.var = var.data(); p.rho = rho.data(); p.skip = &skip;
  p.new_running_var = nrv.data(); p.new_buffer_x2 = nbx.data(); p.new_skip_counter = &cnt;
  std::vector<uint8_t> ws(unified_norm_fwd_workspace_bytes(p));
  p.workspace = ws.data();
  ASSERT_TRUE(unified_norm_fwd(p).ok());
  EXPECT_EQ(skip != 0, ref.skip);
  EXPECT_EQ(cnt, ref.cnt);
  EXPECT_LT(rel(y, ref.y), tol);
  EXPECT_LT(rel(var, ref.var), tol);
  EXPECT_LT(rel(rho, ref.rho), tol);
  EXPECT_LT(rel(nrv, ref.new_rv), tol);
  EXPECT_LT(rel(nbx, ref.new_bx), tol);

  // Backward against the naive loops, for both values of skip.
  for (int s = 0; s < 2; ++s) {
    const int64_t Lb = L + 1;
    const auto dy = rnd<T>(m * C, 6, -1, 1), ema = rnd<T>(C, 7, -0.5, 0.5), bg = rnd<T>(Lb * C, 8, -0.5, 0.5);
    std::vector<double> gz(C, 0), dw(C, 0), db(C, 0), nbg = bg, nema(C), dx(m * C);
    const int64_t slot = k.t % Lb;
    const bool sk = s == 1;
    std::vector<double> istd(C);
    for (int64_t c = 0; c < C; ++c) istd[c] = 1 / std::sqrt(ref.var[c] + eps);
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < C; ++c) {
        const double z = x[i * C + c] * istd[c];
        gz[c] += dy[i * C + c] * w[c] * ref.rho[c] * z / m;
        dw[c] += dy[i * C + c] * ref.rho[c] * z;
        db[c] += dy[i * C + c];
      }
    for (int64_t c = 0; c < C; ++c) nbg[slot * C + c] = sk ? ema[c] : gz[c];
    const bool batch = k.t <= Lb || k.t < k.W || sk;
    std::vector<double> mg(C);
    for (int64_t c = 0; c < C; ++c) {
      double wm = 0;
      for (int64_t i = 0; i < Lb; ++i) wm += nbg[i * C + c];
      mg[c] = batch ? gz[c] : wm / Lb;
      nema[c] = mom * ema[c] + (1 - mom) * mg[c];
    }
    for (int64_t i = 0; i < m; ++i)
      for (int64_t c = 0; c < C; ++c) {
        const double z = x[i * C + c] * istd[c], g = dy[i * C + c] * w[c] * ref.rho[c];
        dx[i * C + c] = (g - (sk ? mg[c] : nema[c]) * z) * istd[c];
      }
    std::vector<T> dyt(dy.begin(), dy.end()), emat(ema.begin(), ema.end()), bgt(bg.begin(), bg.end());
    std::vector<T> odx(m * C, T(kNaN)), odw(C, T(kNaN)), odb(C, T(kNaN)), onema(C, T(kNaN)), onbg(Lb * C, T(kNaN));
    std::vector<T> vt(ref.var.begin(), ref.var.end()), rt(ref.rho.begin(), ref.rho.end());
    uint8_t skb = sk;
    UnifiedNormBwdParams q;
    q.rows = m; q.cols = C; q.dy = dyt.data(); q.dy_stride = C; q.dy_dtype = dt;
    q.x = xt.data(); q.x_stride = C; q.x_dtype = dt; q.var = vt.data(); q.rho = rt.data(); q.skip = &skb;
    q.weight = wt.data(); q.w_dtype = dt; q.ema_gz = emat.data(); q.buffer_gz = bgt.data(); q.state_dtype = dt;
    q.window = Lb; q.iteration = k.t; q.warmup_iters = k.W; q.eps = eps; q.momentum = mom;
    q.dx = odx.data(); q.dweight = odw.data(); q.dbias = odb.data();
    q.new_ema_gz = onema.data(); q.new_buffer_gz = onbg.data();
    std::vector<uint8_t> wsb(unified_norm_bwd_workspace_bytes(q));
    q.workspace = wsb.data();
    ASSERT_TRUE(unified_norm_bwd(q).ok());
    EXPECT_LT(rel(odx, dx), tol);
    EXPECT_LT(rel(odw, dw), tol);
    EXPECT_LT(rel(odb, db), tol);
    EXPECT_LT(rel(onema, nema), tol);
    EXPECT_LT(rel(onbg, nbg), tol);
  }
}

const Case kCases[] = {
    {2, 5, 7, 4, 2, 6, 10, false, false, 1.0},     // window not full: batch statistics
    {3, 50, 33, 4, 20, 6, 10, false, true, 1.0},   // geometric mean, rho active, pad mask, several row blocks
    {3, 50, 33, 3, 9, 6, 5, true, false, 300.0},   // outlier: skip path
    {4, 9, 16, 4, 12, 6, 10, true, true, 1.0},     // filtration on, no outlier
    {2, 4, 5, 1, 7, 2, 3, false, false, 1.0},      // window 1 forces skip
    {1, 300, 12, 5, 30, 6, 10, false, false, 1.0}, // many rows
};

TEST(UnifiedNormCore, MatchesNaiveDouble) {
  for (const auto& k : kCases) run_case<double>(k, 1e-12);
}
TEST(UnifiedNormCore, MatchesNaiveFloat) {
  for (const auto& k : kCases) run_case<float>(k, 2e-6);
}

TEST(UnifiedNormCore, Bf16OutputRoundedOnce) {
  const int64_t m = 40, C = 9;
  std::vector<uint16_t> x(m * C), y(m * C, 0xffff);
  std::vector<double> xd(m * C);
  std::mt19937 g(3);
  std::normal_distribution<float> d;
  for (int64_t i = 0; i < m * C; ++i) {
    x[i] = fastnorm::detail::float_to_bf16(d(g));
    xd[i] = fastnorm::detail::bf16_to_float(x[i]);
  }
  std::vector<float> w(C, 1.5f), b(C, 0.25f), rv(C, 1.f), bx(2 * C, 1.f), var(C), rho(C), nrv(C), nbx(2 * C);
  int64_t cnt0 = 0, cnt = 0;
  uint8_t skip = 0;
  UnifiedNormParams p;
  p.rows = m; p.cols = C; p.x = x.data(); p.x_stride = C; p.x_dtype = DType::BFloat16;
  p.weight = w.data(); p.bias = b.data(); p.running_var = rv.data(); p.buffer_x2 = bx.data();
  p.skip_counter = &cnt0; p.window = 2; p.iteration = 1;
  p.y = y.data(); p.var = var.data(); p.rho = rho.data(); p.skip = &skip; p.new_running_var = nrv.data();
  p.new_buffer_x2 = nbx.data(); p.new_skip_counter = &cnt;
  std::vector<uint8_t> ws(unified_norm_fwd_workspace_bytes(p));
  p.workspace = ws.data();
  ASSERT_TRUE(unified_norm_fwd(p).ok());
  for (int64_t c = 0; c < C; ++c) {
    double q = 0;
    for (int64_t i = 0; i < m; ++i) q += xd[i * C + c] * xd[i * C + c];
    EXPECT_NEAR(var[c], q / m, 1e-6 * q / m);
    for (int64_t i = 0; i < m; ++i) {
      const double exact = 1.5 * xd[i * C + c] / std::sqrt(q / m + 1e-5) + 0.25;
      const double got = fastnorm::detail::bf16_to_float(y[i * C + c]);
      EXPECT_LE(std::fabs(got - exact), std::ldexp(std::fabs(exact), -8) + 1e-6) << i << " " << c;
    }
  }
}

TEST(ChannelAffineCore, MatchesNaive) {
  for (int64_t inner : {1, 5}) {
    const int64_t outer = 3, C = 7, n = outer * C * inner;
    const auto x = rnd<double>(n, 9, -3, 3), s = rnd<double>(C, 10, -2, 2), h = rnd<double>(C, 11, -1, 1);
    std::vector<double> y(n, kNaN), ref(n);
    for (int64_t i = 0; i < n; ++i) ref[i] = x[i] * s[(i / inner) % C] + h[(i / inner) % C];
    ChannelAffineParams p;
    p.outer = outer; p.channels = C; p.inner = inner; p.x = x.data(); p.x_dtype = DType::Float64;
    p.scale = s.data(); p.shift = h.data(); p.s_dtype = DType::Float64; p.y = y.data();
    ASSERT_TRUE(channel_affine(p).ok());
    for (int64_t i = 0; i < n; ++i) EXPECT_EQ(y[i], ref[i]);
  }
}

TEST(UnifiedNormCore, StatusOnBadArguments) {
  float buf[64] = {};
  int64_t cnt = 0;
  uint8_t skip = 0;
  UnifiedNormParams p;
  p.rows = 2; p.cols = 4; p.x = buf; p.x_stride = 4; p.weight = buf; p.bias = buf; p.running_var = buf;
  p.buffer_x2 = buf; p.skip_counter = &cnt; p.y = buf + 16; p.var = buf + 32; p.rho = buf + 36; p.skip = &skip;
  p.new_running_var = buf + 40; p.new_buffer_x2 = buf + 44; p.new_skip_counter = &cnt; p.workspace = buf + 48;
  EXPECT_TRUE(validate(p).ok());
  auto bad = [&](auto mutate, StatusCode code) {
    UnifiedNormParams q = p;
    mutate(q);
    const Status s = unified_norm_fwd(q);
    EXPECT_EQ(s.code(), code) << s.message();
    EXPECT_NE(s.message().find("unified_norm"), std::string::npos);
  };
  bad([](UnifiedNormParams& q) { q.rows = -1; }, StatusCode::InvalidArgument);
  bad([](UnifiedNormParams& q) { q.x = nullptr; }, StatusCode::InvalidArgument);
  bad([](UnifiedNormParams& q) { q.weight = nullptr; }, StatusCode::InvalidArgument);
  bad([](UnifiedNormParams& q) { q.workspace = nullptr; }, StatusCode::InvalidArgument);
  bad([](UnifiedNormParams& q) { q.skip = nullptr; }, StatusCode::InvalidArgument);
  bad([](UnifiedNormParams& q) { q.window = 0; }, StatusCode::InvalidArgument);
  bad([](UnifiedNormParams& q) { q.iteration = 0; }, StatusCode::InvalidArgument);
  bad([](UnifiedNormParams& q) { q.eps = 0; }, StatusCode::InvalidArgument);
  bad([](UnifiedNormParams& q) { q.momentum = 1.5; }, StatusCode::InvalidArgument);
  bad([](UnifiedNormParams& q) { q.x_dtype = DType::Int32; }, StatusCode::Unsupported);
  bad([](UnifiedNormParams& q) { q.state_dtype = DType::Float64; }, StatusCode::Unsupported);
  bad([](UnifiedNormParams& q) { q.x_stride = 2; }, StatusCode::InvalidArgument);
  UnifiedNormBwdParams b;
  b.rows = 1; b.cols = 1; b.dy = buf; b.x = buf; b.weight = buf; b.dy_dtype = DType::Float16;
  EXPECT_EQ(validate(b).code(), StatusCode::InvalidArgument);  // workspace null is checked first
  b.workspace = buf;
  EXPECT_EQ(validate(b).code(), StatusCode::Unsupported);  // dy dtype differs from x
  ChannelAffineParams a;
  a.outer = 1; a.channels = 2; a.inner = 1;
  EXPECT_EQ(channel_affine(a).code(), StatusCode::InvalidArgument);
  a.outer = -1;
  EXPECT_EQ(channel_affine(a).code(), StatusCode::InvalidArgument);
}

TEST(UnifiedNormCore, WorkspaceQueries) {
  UnifiedNormParams p;
  p.rows = 4096; p.cols = 768;
  const int64_t nb = unified_norm_num_blocks(4096);
  EXPECT_EQ(nb, 32);
  EXPECT_EQ(unified_norm_num_blocks(0), 1);
  EXPECT_EQ(unified_norm_fwd_workspace_bytes(p), static_cast<size_t>((nb * 768 + nb + 3 * 768) * 8));
  UnifiedNormBwdParams q;
  q.rows = 4096; q.cols = 768;
  EXPECT_EQ(unified_norm_bwd_workspace_bytes(q), static_cast<size_t>((2 * nb * 768 + 3 * 768) * 8));
}

TEST(UnifiedNormCore, EmptyRowsAndColumns) {
  int64_t cnt = 0, ncnt = -1;
  uint8_t skip = 9;
  float w[3] = {1, 1, 1}, b[3] = {}, rv[3] = {1, 1, 1}, bx[6] = {1, 1, 1, 1, 1, 1}, var[3], rho[3], nrv[3], nbx[6];
  UnifiedNormParams p;
  p.rows = 0; p.cols = 3; p.weight = w; p.bias = b; p.running_var = rv; p.buffer_x2 = bx; p.skip_counter = &cnt;
  p.window = 2; p.var = var; p.rho = rho; p.skip = &skip; p.new_running_var = nrv; p.new_buffer_x2 = nbx;
  p.new_skip_counter = &ncnt;
  std::vector<uint8_t> ws(unified_norm_fwd_workspace_bytes(p));
  p.workspace = ws.data();
  ASSERT_TRUE(unified_norm_fwd(p).ok());
  EXPECT_TRUE(std::isnan(var[0]));  // no valid token: 0/0, as the official code
  EXPECT_EQ(ncnt, 0);
  EXPECT_EQ(skip, 0);
}

}  // namespace

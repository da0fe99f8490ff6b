// Poincaré core ops on raw buffers (specs/poincare.md §6.16): forward vs a scalar double implementation,
// every backward (inputs and c) vs central finite differences of the core forward, the CUDA row-kernel body
// (strided SIn/SOut views, one lane) run on the host vs the CPU path, Status on bad params, workspace sizes.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "fastnorm/detail/poincare_math.h"
#include "fastnorm/poincare.h"

namespace {

using namespace fastnorm;
using namespace fastnorm::poincare;
using Vd = std::vector<double>;

double dot(const double* a, const double* b, int D) {
  double s = 0;
  for (int i = 0; i < D; ++i) s += a[i] * b[i];
  return s;
}

// Scalar double references (textbook formulas).
Vd ref_mobius(const double* x, const double* y, int D, double c) {
  const double xy = dot(x, y, D), xx = dot(x, x, D), yy = dot(y, y, D);
  const double den = 1 + 2 * c * xy + c * c * xx * yy;
  Vd z(D);
  for (int i = 0; i < D; ++i) z[i] = ((1 + 2 * c * xy + c * yy) * x[i] + (1 - c * xx) * y[i]) / den;
  return z;
}
Vd ref_expmap0(const double* v, int D, double c) {
  const double n = std::sqrt(dot(v, v, D)), sc = std::sqrt(c);
  Vd z(D);
  for (int i = 0; i < D; ++i) z[i] = n > 0 ? std::tanh(sc * n) * v[i] / (sc * n) : v[i];
  return z;
}
Vd ref_logmap0(const double* y, int D, double c) {
  const double n = std::sqrt(dot(y, y, D)), sc = std::sqrt(c);
  Vd z(D);
  for (int i = 0; i < D; ++i) z[i] = n > 0 ? std::atanh(sc * n) * y[i] / (sc * n) : y[i];
  return z;
}
// gyr[u, v] w = -(u (+) v) (+) (u (+) (v (+) w)) (four Möbius additions: fine for points inside the ball).
Vd ref_gyration(const double* u, const double* v, const double* w, int D, double c) {
  Vd uv = ref_mobius(u, v, D, c), vw = ref_mobius(v, w, D, c);
  Vd uvw = ref_mobius(u, vw.data(), D, c);
  for (double& t : uv) t = -t;
  return ref_mobius(uv.data(), uvw.data(), D, c);
}

struct Data {
  int R, D;
  Vd in[3];
  Vd r;
};

Data make_data(int R, int D, double c, unsigned seed, double rmax = 0.9) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> nd;
  std::uniform_real_distribution<double> ud(0, rmax);
  Data d{R, D, {}, {}};
  for (int k = 0; k < 3; ++k) {
    d.in[k].resize(size_t(R) * D);
    for (int i = 0; i < R; ++i) {
      double* p = d.in[k].data() + size_t(i) * D;
      for (int j = 0; j < D; ++j) p[j] = nd(g);
      const double n = std::sqrt(dot(p, p, D)), s = ud(g) / std::sqrt(c);
      for (int j = 0; j < D; ++j) p[j] *= s / n;
    }
  }
  d.r.resize(R);
  for (double& t : d.r) t = nd(g);
  return d;
}

int n_in(RowOp op) {
  switch (op) {
    case RowOp::Project: case RowOp::MobiusScalarMul: case RowOp::Expmap0: case RowOp::Logmap0:
    case RowOp::ConformalFactor: return 1;
    case RowOp::Gyration: case RowOp::Transp: return 3;
    default: return 2;
  }
}
bool scalar_out(RowOp op) { return op == RowOp::Dist || op == RowOp::ConformalFactor; }

RowOpParams params(RowOp op, const Data& d, const double* ins[3], const double* r, const double& c, void* out) {
  RowOpParams p;
  p.layout = RowLayout{d.R, d.D, 1};
  p.dtype = DType::Float64;
  p.scalar_dtype = DType::Float64;
  for (int k = 0; k < n_in(op); ++k) p.in[k] = ins[k];
  if (op == RowOp::MobiusScalarMul) p.scalar = r;
  p.out = out;
  p.c = Curvature{&c, DType::Float64, true};
  p.eps = 1e-5;
  p.project = true;
  return p;
}

Vd run_fwd(RowOp op, const Data& d, const std::vector<Vd>& ins, const Vd& r, double c) {
  const double* ip[3] = {ins[0].data(), ins.size() > 1 ? ins[1].data() : nullptr,
                         ins.size() > 2 ? ins[2].data() : nullptr};
  Vd out(scalar_out(op) ? size_t(d.R) : size_t(d.R) * d.D);
  RowOpParams p = params(op, d, ip, r.data(), c, out.data());
  Status s = row_fwd(op, p);
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

const RowOp kAll[] = {RowOp::Project, RowOp::MobiusAdd, RowOp::MobiusScalarMul, RowOp::Expmap0, RowOp::Logmap0,
                      RowOp::Expmap, RowOp::Logmap, RowOp::Dist, RowOp::ConformalFactor, RowOp::Gyration,
                      RowOp::Transp, RowOp::Residual};

TEST(PoincareCore, ForwardVsScalarReference) {
  const double c = 0.7;
  Data d = make_data(37, 9, c, 1);
  std::vector<Vd> xy = {d.in[0], d.in[1]};
  Vd z = run_fwd(RowOp::MobiusAdd, d, xy, d.r, c);
  Vd e0 = run_fwd(RowOp::Expmap0, d, {d.in[2]}, d.r, c);
  Vd l0 = run_fwd(RowOp::Logmap0, d, {d.in[0]}, d.r, c);
  Vd gy = run_fwd(RowOp::Gyration, d, {d.in[0], d.in[1], d.in[2]}, d.r, c);
  Vd ds = run_fwd(RowOp::Dist, d, xy, d.r, c);
  for (int i = 0; i < d.R; ++i) {
    const double* x = d.in[0].data() + i * d.D;
    const double* y = d.in[1].data() + i * d.D;
    const double* w = d.in[2].data() + i * d.D;
    Vd rz = ref_mobius(x, y, d.D, c), re = ref_expmap0(w, d.D, c), rl = ref_logmap0(x, d.D, c);
    Vd rg = ref_gyration(x, y, w, d.D, c);
    Vd mx(x, x + d.D);
    for (double& t : mx) t = -t;
    Vd zz = ref_mobius(mx.data(), y, d.D, c);
    const double rd = 2 / std::sqrt(c) * std::atanh(std::sqrt(c * dot(zz.data(), zz.data(), d.D)));
    EXPECT_NEAR(ds[i], rd, 1e-12);
    for (int j = 0; j < d.D; ++j) {
      EXPECT_NEAR(z[i * d.D + j], rz[j], 1e-13);
      EXPECT_NEAR(e0[i * d.D + j], re[j], 1e-13);
      EXPECT_NEAR(l0[i * d.D + j], rl[j], 1e-13);
      EXPECT_NEAR(gy[i * d.D + j], rg[j], 1e-12);
    }
  }
}

// <g, out> as a function of the inputs and c, for the finite differences.
double loss(RowOp op, const Data& d, const std::vector<Vd>& ins, const Vd& r, double c, const Vd& g) {
  Vd out = run_fwd(op, d, ins, r, c);
  double s = 0;
  for (size_t i = 0; i < out.size(); ++i) s += out[i] * g[i];
  return s;
}

TEST(PoincareCore, BackwardVsFiniteDifferences) {
  const double c = 0.9, h = 1e-6;
  for (RowOp op : kAll) {
    Data d = make_data(5, 4, c, 7 + int(op));
    const int k = n_in(op);
    std::vector<Vd> ins;
    for (int i = 0; i < k; ++i) ins.push_back(d.in[i]);
    if (op == RowOp::Project) ins[0] = [&] { Vd t = ins[0]; for (double& v : t) v *= 2; return t; }();
    if (op == RowOp::Residual || op == RowOp::Expmap0)
      for (auto& v : ins) for (double& t : v) t *= 1.7;
    std::mt19937_64 gen(3);
    std::normal_distribution<double> nd;
    Vd g(scalar_out(op) ? size_t(d.R) : size_t(d.R) * d.D);
    for (double& t : g) t = nd(gen);
    std::vector<Vd> grads(k, Vd(size_t(d.R) * d.D));
    Vd gr(d.R);
    double dc = 0;
    const double* ip[3] = {ins[0].data(), k > 1 ? ins[1].data() : nullptr, k > 2 ? ins[2].data() : nullptr};
    RowOpParams p = params(op, d, ip, d.r.data(), c, nullptr);
    p.grad = g.data();
    for (int i = 0; i < k; ++i) p.grad_in[i] = grads[i].data();
    if (op == RowOp::MobiusScalarMul) p.grad_scalar = gr.data();
    p.grad_c = &dc;
    std::vector<char> ws(row_workspace_bytes(op, p));
    p.workspace = ws.data();
    p.workspace_bytes = ws.size();
    Status s = row_bwd(op, p);
    ASSERT_TRUE(s.ok()) << s.message();
    for (int i = 0; i < k; ++i) {
      for (size_t e = 0; e < ins[i].size(); e += 3) {
        std::vector<Vd> a = ins, b = ins;
        a[i][e] += h;
        b[i][e] -= h;
        const double fd = (loss(op, d, a, d.r, c, g) - loss(op, d, b, d.r, c, g)) / (2 * h);
        EXPECT_NEAR(grads[i][e], fd, 1e-6 * (1 + std::fabs(fd))) << "op " << int(op) << " input " << i << " elem " << e;
      }
    }
    const double fdc = (loss(op, d, ins, d.r, c + h, g) - loss(op, d, ins, d.r, c - h, g)) / (2 * h);
    EXPECT_NEAR(dc, fdc, 1e-6 * (1 + std::fabs(fdc))) << "op " << int(op) << " c";
    if (op == RowOp::MobiusScalarMul) {
      for (int e = 0; e < d.R; ++e) {
        Vd ra = d.r, rb = d.r;
        ra[e] += h;
        rb[e] -= h;
        const double fd = (loss(op, d, ins, ra, c, g) - loss(op, d, ins, rb, c, g)) / (2 * h);
        EXPECT_NEAR(gr[e], fd, 1e-6 * (1 + std::fabs(fd)));
      }
    }
  }
}

// The CUDA kernels run the op structs with one lane over strided storage views: run that body here on a
// [outer, D, inner] float buffer and compare with the CPU entry point (same math, different lanes/order).
TEST(PoincareCore, CudaRowBodyEmulation) {
  using namespace fastnorm::poincare::detail;
  const int outer = 3, D = 5, inner = 4;
  const float c = 0.8f;
  std::mt19937 g(5);
  std::uniform_real_distribution<float> ud(-0.4f, 0.4f);
  std::vector<float> x(outer * D * inner), y(x.size()), out_cpu(x.size()), out_emu(x.size());
  for (float& t : x) t = ud(g);
  for (float& t : y) t = ud(g);
  RowOpParams p;
  p.layout = RowLayout{outer, D, inner};
  p.dtype = DType::Float32;
  p.in[0] = x.data();
  p.in[1] = y.data();
  p.out = out_cpu.data();
  p.c = Curvature{&c, DType::Float32, true};
  p.eps = 4e-3;
  ASSERT_TRUE(row_fwd(RowOp::MobiusAdd, p).ok());
  const Ctx<float> k{make_curv(c), 4e-3f, true, D};
  for (int o = 0; o < outer; ++o)
    for (int i = 0; i < inner; ++i) {
      const int64_t off = int64_t(o) * D * inner + i;
      SIn<float, float> in[2] = {{x.data() + off, inner}, {y.data() + off, inner}};
      MobiusAddOp::fwd<float, 1>(k, in, 0.f, SOut<float, float>{out_emu.data() + off, inner}, (float*)nullptr);
    }
  for (size_t i = 0; i < x.size(); ++i) EXPECT_NEAR(out_emu[i], out_cpu[i], 1e-6f);
}

TEST(PoincareCore, MidpointVsScalarAndGrad) {
  const double c = 1.1, h = 1e-6;
  const int B = 3, R = 4, D = 5;
  Data d = make_data(B * R, D, c, 9);
  Vd w(B * R);
  for (int i = 0; i < B * R; ++i) w[i] = 0.2 + 0.1 * i;
  auto fwd = [&](const Vd& x, const Vd& ww, double cc) {
    MidpointParams p;
    p.batch = B; p.R = R; p.D = D; p.dtype = DType::Float64; p.w_dtype = DType::Float64;
    p.x = x.data(); p.weights = ww.data();
    Vd out(B * D);
    p.out = out.data();
    p.c = Curvature{&cc, DType::Float64, true};
    p.eps = 1e-5;
    std::vector<char> ws(midpoint_workspace_bytes(p, false));
    p.workspace = ws.data(); p.workspace_bytes = ws.size();
    EXPECT_TRUE(midpoint_fwd(p).ok());
    return out;
  };
  Vd m = fwd(d.in[0], w, c);
  for (int b = 0; b < B; ++b) {  // Einstein midpoint in Klein coordinates
    Vd num(D, 0.0);
    double den = 0;
    for (int i = 0; i < R; ++i) {
      const double* x = d.in[0].data() + (b * R + i) * D;
      const double xx = dot(x, x, D);
      Vd kx(D);
      for (int j = 0; j < D; ++j) kx[j] = 2 * x[j] / (1 + c * xx);
      const double gam = 1 / std::sqrt(1 - c * dot(kx.data(), kx.data(), D));
      for (int j = 0; j < D; ++j) num[j] += w[b * R + i] * gam * kx[j];
      den += w[b * R + i] * gam;
    }
    for (double& t : num) t /= den;
    const double s = 1 + std::sqrt(1 - c * dot(num.data(), num.data(), D));
    for (int j = 0; j < D; ++j) EXPECT_NEAR(m[b * D + j], num[j] / s, 1e-13);
  }
  Vd g(B * D);
  for (int i = 0; i < B * D; ++i) g[i] = std::sin(1.0 + i);
  auto L = [&](const Vd& x, const Vd& ww, double cc) {
    Vd o = fwd(x, ww, cc);
    double s = 0;
    for (int i = 0; i < B * D; ++i) s += o[i] * g[i];
    return s;
  };
  MidpointParams p;
  p.batch = B; p.R = R; p.D = D; p.dtype = DType::Float64; p.w_dtype = DType::Float64;
  p.x = d.in[0].data(); p.weights = w.data(); p.grad = g.data();
  Vd gx(B * R * D), gw(B * R);
  double dc = 0;
  p.grad_x = gx.data(); p.grad_weights = gw.data(); p.grad_c = &dc;
  p.c = Curvature{&c, DType::Float64, true};
  p.eps = 1e-5;
  std::vector<char> ws(midpoint_workspace_bytes(p, true));
  p.workspace = ws.data(); p.workspace_bytes = ws.size();
  ASSERT_TRUE(midpoint_bwd(p).ok());
  for (int e = 0; e < B * R * D; e += 2) {
    Vd a = d.in[0], b = d.in[0];
    a[e] += h; b[e] -= h;
    EXPECT_NEAR(gx[e], (L(a, w, c) - L(b, w, c)) / (2 * h), 1e-6);
  }
  for (int e = 0; e < B * R; ++e) {
    Vd a = w, b = w;
    a[e] += h; b[e] -= h;
    EXPECT_NEAR(gw[e], (L(d.in[0], a, c) - L(d.in[0], b, c)) / (2 * h), 1e-6);
  }
  EXPECT_NEAR(dc, (L(d.in[0], w, c + h) - L(d.in[0], w, c - h)) / (2 * h), 1e-6);
}

TEST(PoincareCore, StatusOnBadParams) {
  const double c = 1;
  double buf[8] = {};
  RowOpParams p;
  p.layout = RowLayout{2, 4, 1};
  p.dtype = DType::Float64;
  p.in[0] = buf;
  p.out = nullptr;
  p.c = Curvature{&c, DType::Float64, true};
  p.eps = 1e-5;
  EXPECT_EQ(expmap0_fwd(p).code(), StatusCode::InvalidArgument);  // null out
  p.out = buf;
  p.in[0] = nullptr;
  EXPECT_EQ(expmap0_fwd(p).code(), StatusCode::InvalidArgument);  // null input
  p.in[0] = buf;
  p.layout.outer = -1;
  EXPECT_EQ(expmap0_fwd(p).code(), StatusCode::InvalidArgument);  // negative size
  p.layout.outer = 2;
  p.dtype = DType::Int32;
  EXPECT_EQ(expmap0_fwd(p).code(), StatusCode::Unsupported);
  p.dtype = DType::Float64;
  p.eps = 0;
  EXPECT_EQ(project_fwd(p).code(), StatusCode::InvalidArgument);
  p.eps = 1e-5;
  p.c.ptr = nullptr;
  EXPECT_EQ(logmap0_fwd(p).code(), StatusCode::InvalidArgument);
  p.c.ptr = &c;
  EXPECT_TRUE(expmap0_fwd(p).ok());
  // backward: the curvature gradient needs the workspace
  double dc = 0;
  p.grad = buf;
  p.grad_c = &dc;
  EXPECT_GT(expmap0_workspace_bytes(p), 0u);
  EXPECT_EQ(expmap0_bwd(p).code(), StatusCode::InvalidArgument);
  p.grad_c = nullptr;
  EXPECT_EQ(expmap0_workspace_bytes(p), 0u);
  EXPECT_TRUE(expmap0_bwd(p).ok());
  // midpoint over an empty reduce dim
  MidpointParams m;
  m.batch = 2; m.R = 0; m.D = 3; m.dtype = DType::Float64;
  m.x = buf; m.out = buf; m.c = Curvature{&c, DType::Float64, true}; m.eps = 1e-5;
  EXPECT_EQ(midpoint_fwd(m).code(), StatusCode::InvalidArgument);
  m.R = 2;
  EXPECT_EQ(midpoint_fwd(m).code(), StatusCode::InvalidArgument);  // workspace missing
  EXPECT_GT(midpoint_workspace_bytes(m, true), midpoint_workspace_bytes(m, false));
}

TEST(PoincareCore, Float32DefaultEpsAndDeterminism) {
  using fastnorm::poincare::detail::default_eps;
  EXPECT_EQ(default_eps(DType::Float64), 1e-5);
  EXPECT_EQ(default_eps(DType::Float32), 4e-3);
  EXPECT_EQ(default_eps(DType::Float16), 4e-3);
  EXPECT_EQ(default_eps(DType::BFloat16), 1e-2);
  const float c = 0.5f;
  const int R = 5000, D = 16;
  std::vector<float> x(R * D), g(R * D), gx1(R * D), gx2(R * D);
  std::mt19937 gen(2);
  std::uniform_real_distribution<float> ud(-0.3f, 0.3f);
  for (float& t : x) t = ud(gen);
  for (float& t : g) t = ud(gen);
  float dc1 = 0, dc2 = 0;
  for (int rep = 0; rep < 2; ++rep) {
    RowOpParams p;
    p.layout = RowLayout{R, D, 1};
    p.dtype = DType::Float32;
    p.in[0] = x.data();
    p.grad = g.data();
    p.grad_in[0] = rep ? gx2.data() : gx1.data();
    p.grad_c = rep ? &dc2 : &dc1;
    p.c = Curvature{&c, DType::Float32, true};
    p.eps = 4e-3;
    p.num_threads = rep ? 1 : 2;
    std::vector<char> ws(logmap0_workspace_bytes(p));
    p.workspace = ws.data();
    p.workspace_bytes = ws.size();
    ASSERT_TRUE(logmap0_bwd(p).ok());
  }
  EXPECT_EQ(dc1, dc2);
  EXPECT_EQ(gx1, gx2);
}

}  // namespace

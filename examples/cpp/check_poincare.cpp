// poincare family: Möbius addition x (+)_c y and the geodesic distance d_c(x, y) on the Poincaré ball of
// curvature -c, for a few pairs of points, one vector per row.
#include <cmath>
#include <cstdio>
#include <vector>

#include "check.h"
#include "fastnorm/poincare.h"

namespace example {
namespace {

constexpr int kRows = 3, kDim = 4;

// x (+)_c y = ((1 + 2c<x,y> + c|y|^2) x + (1 - c|x|^2) y) / (1 + 2c<x,y> + c^2 |x|^2 |y|^2), in double.
std::vector<double> mobius_add(const double* x, const double* y, double c) {
  double xy = 0, x2 = 0, y2 = 0;
  for (int i = 0; i < kDim; ++i) {
    xy += x[i] * y[i];
    x2 += x[i] * x[i];
    y2 += y[i] * y[i];
  }
  const double den = 1 + 2 * c * xy + c * c * x2 * y2;
  std::vector<double> r(kDim);
  for (int i = 0; i < kDim; ++i) r[i] = ((1 + 2 * c * xy + c * y2) * x[i] + (1 - c * x2) * y[i]) / den;
  return r;
}

}  // namespace

bool check_poincare() {
  // Points well inside the ball of radius 1/sqrt(c), so the output projection (radius (1 - eps)/sqrt(c))
  // leaves them alone and the plain formulas apply.
  const float c = 0.5f;
  std::vector<float> x(kRows * kDim), y(kRows * kDim);
  for (int i = 0; i < kRows * kDim; ++i) {
    x[i] = static_cast<float>(0.3 * std::sin(0.7 * i + 0.2));
    y[i] = static_cast<float>(0.35 * std::cos(1.3 * i));
  }

  fastnorm::poincare::RowOpParams p;
  p.layout.outer = kRows;  // kRows vectors of kDim elements, contiguous (inner = 1)
  p.layout.D = kDim;
  p.dtype = fastnorm::DType::Float32;
  p.scalar_dtype = fastnorm::DType::Float32;  // dtype of dist's per-vector output
  p.in[0] = x.data();
  p.in[1] = y.data();
  p.c.ptr = &c;  // host scalar of c.dtype
  p.c.dtype = fastnorm::DType::Float32;
  std::vector<float> sum(kRows * kDim), dist(kRows);
  p.out = sum.data();
  if (!call_ok("poincare::mobius_add_fwd", fastnorm::poincare::mobius_add_fwd(p))) return false;
  p.out = dist.data();
  if (!call_ok("poincare::dist_fwd", fastnorm::poincare::dist_fwd(p))) return false;

  // d_c(x, y) = (2 / sqrt(c)) artanh(sqrt(c) |(-x) (+)_c y|).
  std::vector<double> sum_ref, dist_ref;
  for (int r = 0; r < kRows; ++r) {
    double xd[kDim], yd[kDim], nx[kDim];
    for (int i = 0; i < kDim; ++i) {
      xd[i] = x[r * kDim + i];
      yd[i] = y[r * kDim + i];
      nx[i] = -xd[i];
    }
    const std::vector<double> s = mobius_add(xd, yd, c);
    sum_ref.insert(sum_ref.end(), s.begin(), s.end());
    const std::vector<double> w = mobius_add(nx, yd, c);
    double n2 = 0;
    for (double e : w) n2 += e * e;
    dist_ref.push_back(2 / std::sqrt(double(c)) * std::atanh(std::sqrt(c * n2)));
  }
  std::printf("poincare: %d pairs of points in %d dimensions, c = %g\n", kRows, kDim, c);
  bool ok = true;
  ok &= report("poincare::mobius_add_fwd", max_error(sum, sum_ref));
  ok &= report("poincare::dist_fwd (scaled)", max_scaled_error(dist, dist_ref));
  return ok;
}

}  // namespace example

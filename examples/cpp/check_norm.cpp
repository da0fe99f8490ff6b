// norm family: LayerNorm, RMSNorm and CRMSNorm forward on a few rows, plus the bad-argument Status.
#include <cmath>
#include <cstdio>
#include <vector>

#include "check.h"
#include "fastnorm/norm.h"
#include "fastnorm/norm_crms.h"

namespace example {
namespace {

constexpr int kRows = 4, kCols = 10;

// Rows of 10 values with different means and scales; a per-column weight and bias.
struct Data {
  std::vector<float> x, weight, bias;
  Data() : x(kRows * kCols), weight(kCols), bias(kCols) {
    for (int r = 0; r < kRows; ++r)
      for (int i = 0; i < kCols; ++i)
        x[r * kCols + i] = static_cast<float>(r - 1.5 + 0.5 * (r + 1) * std::sin(1.0 + i + 3 * r));
    for (int i = 0; i < kCols; ++i) {
      weight[i] = 1.0f + 0.1f * i;
      bias[i] = 0.05f * (i - 5);
    }
  }
};

// The fields LayerNormParams, RMSNormParams and CRMSNormParams share: float32 rows of d.x, the weight,
// the output y and the per-row rstd.
template <typename Params>
Params row_params(const Data& d, float* y, float* rstd, double eps) {
  Params p;
  p.rows = kRows;
  p.cols = kCols;
  p.x = d.x.data();
  p.x_stride = kCols;  // row stride in elements
  p.x_dtype = fastnorm::DType::Float32;
  p.weight = d.weight.data();
  p.w_dtype = fastnorm::DType::Float32;  // dtype of weight and bias
  p.y = y;
  p.y_dtype = fastnorm::DType::Float32;
  p.rstd = rstd;  // optional: needed only for a backward pass
  p.eps = eps;
  return p;
}

fastnorm::norm::LayerNormParams layer_norm_params(const Data& d, float* y, float* mean, float* rstd) {
  auto ln = row_params<fastnorm::norm::LayerNormParams>(d, y, rstd, 1e-5);
  ln.bias = d.bias.data();
  ln.mean = mean;  // given together with rstd, or both null
  return ln;
}

// Largest |got - want| / want: rstd is of order 1/sigma, so compare it relative to its size.
double max_rel(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < got.size(); ++i) e = std::fmax(e, std::fabs(got[i] - want[i]) / want[i]);
  return e;
}

}  // namespace

bool check_norm() {
  const Data d;

  // LayerNorm: y = (x - mean) / sqrt(var + eps) * weight + bias, one row at a time.
  std::vector<float> y(d.x.size()), mean(kRows), rstd(kRows);
  const fastnorm::norm::LayerNormParams ln = layer_norm_params(d, y.data(), mean.data(), rstd.data());
  if (!call_ok("norm::layer_norm_fwd", fastnorm::norm::layer_norm_fwd(ln))) return false;

  // RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight.
  std::vector<float> z(d.x.size()), zrstd(kRows);
  const auto rms = row_params<fastnorm::norm::RMSNormParams>(d, z.data(), zrstd.data(), 1e-6);  // no bias
  if (!call_ok("norm::rms_norm_fwd", fastnorm::norm::rms_norm_fwd(rms))) return false;

  // CRMSNorm: a row holds the first N of N + 1 coordinates of a zero-mean vector, the last being -sum(x);
  // rstd = ((sum(x^2) + sum(x)^2) / (N + 1) + eps)^(-1/2), y = x * rstd * weight + bias.
  std::vector<float> c(d.x.size()), crstd(kRows);
  auto cr = row_params<fastnorm::norm::CRMSNormParams>(d, c.data(), crstd.data(), 1e-5);
  cr.bias = d.bias.data();
  if (!call_ok("norm::crms_norm_fwd", fastnorm::norm::crms_norm_fwd(cr))) return false;

  // The same computations, naively, in double.
  std::vector<double> y_ref(d.x.size()), z_ref(d.x.size()), c_ref(d.x.size());
  std::vector<double> mean_ref(kRows), rstd_ref(kRows), zrstd_ref(kRows), crstd_ref(kRows);
  for (int r = 0; r < kRows; ++r) {
    const float* xr = &d.x[r * kCols];
    double mu = 0, var = 0, ms = 0;
    for (int i = 0; i < kCols; ++i) mu += xr[i];
    mu /= kCols;
    for (int i = 0; i < kCols; ++i) {
      var += (xr[i] - mu) * (xr[i] - mu);
      ms += static_cast<double>(xr[i]) * xr[i];
    }
    const double sum = mu * kCols, sumsq = ms;
    var /= kCols;
    ms /= kCols;
    mean_ref[r] = mu;
    rstd_ref[r] = 1.0 / std::sqrt(var + ln.eps);
    zrstd_ref[r] = 1.0 / std::sqrt(ms + rms.eps);
    crstd_ref[r] = 1.0 / std::sqrt((sumsq + sum * sum) / (kCols + 1) + cr.eps);
    for (int i = 0; i < kCols; ++i) {
      y_ref[r * kCols + i] = (xr[i] - mu) * rstd_ref[r] * d.weight[i] + d.bias[i];
      z_ref[r * kCols + i] = xr[i] * zrstd_ref[r] * d.weight[i];
      c_ref[r * kCols + i] = xr[i] * crstd_ref[r] * d.weight[i] + d.bias[i];
    }
  }

  std::printf("norm: %d rows x %d columns\n", kRows, kCols);
  bool ok = true;
  ok &= report("norm::layer_norm_fwd y", max_error(y, y_ref));
  ok &= report("norm::layer_norm_fwd mean", max_error(mean, mean_ref));
  ok &= report("norm::layer_norm_fwd rstd (relative)", max_rel(rstd, rstd_ref));
  ok &= report("norm::rms_norm_fwd y", max_error(z, z_ref));
  ok &= report("norm::rms_norm_fwd rstd (relative)", max_rel(zrstd, zrstd_ref));
  ok &= report("norm::crms_norm_fwd y", max_error(c, c_ref));
  ok &= report("norm::crms_norm_fwd rstd (relative)", max_rel(crstd, crstd_ref));
  return ok;
}

bool check_bad_argument() {
  // A bad argument comes back as a Status (code and message), never as a crash or an exception.
  const Data d;
  std::vector<float> y(d.x.size());
  fastnorm::norm::LayerNormParams bad = layer_norm_params(d, y.data(), nullptr, nullptr);
  bad.eps = -1.0;
  const fastnorm::Status b = fastnorm::norm::layer_norm_fwd(bad);
  const bool rejected = !b.ok() && b.code() == fastnorm::StatusCode::InvalidArgument;
  std::printf("%-44s %s (\"%s\")\n", "norm::layer_norm_fwd with eps = -1", rejected ? "rejected, ok" : "NOT REJECTED",
              b.message().c_str());
  return rejected;
}

}  // namespace example

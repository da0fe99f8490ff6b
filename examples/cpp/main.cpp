// Links the torch-free fastnorm core from another program: normalises a small batch of rows with
// LayerNorm and RMSNorm, takes one Lion optimizer step over two tensors, and checks every output against a
// plain double-precision computation.
// Exit status 0 when everything matches, 1 otherwise.
#include <cmath>
#include <cstdio>
#include <vector>

#include "fastnorm/lion.h"
#include "fastnorm/norm.h"

namespace {

constexpr int kRows = 4, kCols = 10;
constexpr double kTol = 1e-5;  // float32 results against a double reference, values of order 1

// Largest |got - want| over all elements.
double max_error(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < got.size(); ++i) e = std::fmax(e, std::fabs(got[i] - want[i]));
  return e;
}

bool report(const char* what, double err) {
  const bool ok = err <= kTol;
  std::printf("%-36s max |error| = %.3g  %s\n", what, err, ok ? "ok" : "MISMATCH");
  return ok;
}

}  // namespace

int main() {
  // Rows of 10 values with different means and scales; a per-column weight and bias.
  std::vector<float> x(kRows * kCols), weight(kCols), bias(kCols);
  for (int r = 0; r < kRows; ++r)
    for (int i = 0; i < kCols; ++i) x[r * kCols + i] = static_cast<float>(r - 1.5 + 0.5 * (r + 1) * std::sin(1.0 + i + 3 * r));
  for (int i = 0; i < kCols; ++i) {
    weight[i] = 1.0f + 0.1f * i;
    bias[i] = 0.05f * (i - 5);
  }

  // LayerNorm: y = (x - mean) / sqrt(var + eps) * weight + bias, one row at a time.
  std::vector<float> y(x.size()), mean(kRows), rstd(kRows);
  fastnorm::norm::LayerNormParams ln;
  ln.rows = kRows;
  ln.cols = kCols;
  ln.x = x.data();
  ln.x_stride = kCols;  // row stride in elements
  ln.x_dtype = fastnorm::DType::Float32;
  ln.weight = weight.data();
  ln.bias = bias.data();
  ln.w_dtype = fastnorm::DType::Float32;
  ln.y = y.data();
  ln.y_dtype = fastnorm::DType::Float32;
  ln.mean = mean.data();  // optional: needed only for a backward pass
  ln.rstd = rstd.data();
  ln.eps = 1e-5;
  fastnorm::Status s = fastnorm::norm::layer_norm_fwd(ln);
  if (!s.ok()) {
    std::printf("layer_norm_fwd failed: %s\n", s.message().c_str());
    return 1;
  }

  // RMSNorm: y = x / sqrt(mean(x^2) + eps) * weight.
  std::vector<float> z(x.size()), zrstd(kRows);
  fastnorm::norm::RMSNormParams rms;
  rms.rows = kRows;
  rms.cols = kCols;
  rms.x = x.data();
  rms.x_stride = kCols;
  rms.x_dtype = fastnorm::DType::Float32;
  rms.weight = weight.data();
  rms.w_dtype = fastnorm::DType::Float32;
  rms.y = z.data();
  rms.y_dtype = fastnorm::DType::Float32;
  rms.rstd = zrstd.data();
  rms.eps = 1e-6;
  s = fastnorm::norm::rms_norm_fwd(rms);
  if (!s.ok()) {
    std::printf("rms_norm_fwd failed: %s\n", s.message().c_str());
    return 1;
  }

  // The same computations, naively, in double.
  std::vector<double> y_ref(x.size()), z_ref(x.size()), mean_ref(kRows), rstd_ref(kRows), zrstd_ref(kRows);
  for (int r = 0; r < kRows; ++r) {
    const float* xr = &x[r * kCols];
    double mu = 0, var = 0, ms = 0;
    for (int i = 0; i < kCols; ++i) mu += xr[i];
    mu /= kCols;
    for (int i = 0; i < kCols; ++i) {
      var += (xr[i] - mu) * (xr[i] - mu);
      ms += static_cast<double>(xr[i]) * xr[i];
    }
    var /= kCols;
    ms /= kCols;
    mean_ref[r] = mu;
    rstd_ref[r] = 1.0 / std::sqrt(var + ln.eps);
    zrstd_ref[r] = 1.0 / std::sqrt(ms + rms.eps);
    for (int i = 0; i < kCols; ++i) {
      y_ref[r * kCols + i] = (xr[i] - mu) * rstd_ref[r] * weight[i] + bias[i];
      z_ref[r * kCols + i] = xr[i] * zrstd_ref[r] * weight[i];
    }
  }

  std::printf("fastnorm core: %d rows x %d columns, float32, checked against double precision\n", kRows, kCols);
  bool ok = true;
  ok &= report("layer_norm_fwd y", max_error(y, y_ref));
  ok &= report("layer_norm_fwd mean", max_error(mean, mean_ref));
  // rstd is of order 1/sigma; compare it relative to its size.
  double rel = 0;
  for (int r = 0; r < kRows; ++r) rel = std::fmax(rel, std::fabs(rstd[r] - rstd_ref[r]) / rstd_ref[r]);
  ok &= report("layer_norm_fwd rstd (relative)", rel);
  ok &= report("rms_norm_fwd y", max_error(z, z_ref));
  rel = 0;
  for (int r = 0; r < kRows; ++r) rel = std::fmax(rel, std::fabs(zrstd[r] - zrstd_ref[r]) / zrstd_ref[r]);
  ok &= report("rms_norm_fwd rstd (relative)", rel);

  // Lion: one in-place step over two tensors (params, grads, momenta), lr 0.01, weight decay 0.1.
  std::vector<float> p1 = {0.5f, -1.0f, 2.0f}, g1 = {1.0f, 0.0f, -3.0f}, m1 = {0.0f, 0.0f, 1.0f};
  std::vector<float> p2 = {1.0f, 1.0f}, g2 = {-0.5f, 0.25f}, m2 = {0.1f, -0.1f};
  const std::vector<float> p_old[2] = {p1, p2}, g_old[2] = {g1, g2}, m_old[2] = {m1, m2};
  fastnorm::lion::LionTensor tensors[2] = {{p1.data(), g1.data(), m1.data(), nullptr, 3, 0},
                                           {p2.data(), g2.data(), m2.data(), nullptr, 2, 1}};
  fastnorm::lion::LionStepParams lion;
  lion.tensors = tensors;
  lion.n_tensors = 2;
  lion.lr = 0.01;
  lion.weight_decay = 0.1;  // beta1 = 0.9, beta2 = 0.99 by default
  s = fastnorm::lion::step(lion);
  if (!s.ok()) {
    std::printf("lion::step failed: %s\n", s.message().c_str());
    return 1;
  }
  double lion_p_err = 0, lion_m_err = 0;
  const std::vector<float>* p_new[2] = {&p1, &p2};
  const std::vector<float>* m_new[2] = {&m1, &m2};
  for (int t = 0; t < 2; ++t)
    for (size_t i = 0; i < p_old[t].size(); ++i) {
      const double c = 0.9 * m_old[t][i] + 0.1 * g_old[t][i];
      const double sign = c > 0 ? 1.0 : (c < 0 ? -1.0 : 0.0);
      const double p_ref = p_old[t][i] * (1.0 - 0.01 * 0.1) - 0.01 * sign;
      const double m_ref = 0.99 * m_old[t][i] + 0.01 * g_old[t][i];
      lion_p_err = std::fmax(lion_p_err, std::fabs((*p_new[t])[i] - p_ref));
      lion_m_err = std::fmax(lion_m_err, std::fabs((*m_new[t])[i] - m_ref));
    }
  ok &= report("lion::step params", lion_p_err);
  ok &= report("lion::step exp_avg", lion_m_err);

  // A bad argument comes back as a Status, never as a crash or an exception.
  fastnorm::norm::LayerNormParams bad = ln;
  bad.eps = -1.0;
  const fastnorm::Status b = fastnorm::norm::layer_norm_fwd(bad);
  const bool rejected = !b.ok() && b.code() == fastnorm::StatusCode::InvalidArgument;
  std::printf("%-36s %s (\"%s\")\n", "layer_norm_fwd with eps = -1", rejected ? "rejected, ok" : "NOT REJECTED",
              b.message().c_str());
  ok &= rejected;

  std::printf("%s\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
  return ok ? 0 : 1;
}

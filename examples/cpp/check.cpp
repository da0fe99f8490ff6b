#include "check.h"

#include <cmath>
#include <cstdio>

namespace example {

double max_error(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < got.size(); ++i) e = std::fmax(e, std::fabs(got[i] - want[i]));
  return got.size() == want.size() ? e : INFINITY;
}

double max_scaled_error(const std::vector<float>& got, const std::vector<double>& want) {
  double e = 0;
  for (size_t i = 0; i < got.size(); ++i) e = std::fmax(e, std::fabs(got[i] - want[i]) / std::fmax(1.0, std::fabs(want[i])));
  return got.size() == want.size() ? e : INFINITY;
}

bool report(const char* what, double err, double tol) {
  const bool ok = err <= tol;  // false for NaN too
  std::printf("%-44s max |error| = %.3g  %s\n", what, err, ok ? "ok" : "MISMATCH");
  return ok;
}

bool call_ok(const char* what, const fastnorm::Status& s) {
  if (!s.ok()) std::printf("%-44s FAILED: %s\n", what, s.message().c_str());
  return s.ok();
}

}  // namespace example

// Test helper of the per-op norm GoogleTests: a typed host buffer whose values are generated already
// rounded to its dtype (so a naive double loop sees exactly what the kernel reads), and a normwise check.
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "fastnorm/common.h"
#include "fastnorm/detail/dtype.h"

namespace fastnorm_test {
using fastnorm::DType;

// Values stored as dtype t (bits in a byte buffer) and their exact doubles.
struct Buf {
  DType t;
  std::vector<unsigned char> bytes;
  std::vector<double> val;
  Buf(DType t_, size_t n) : t(t_), bytes(n * fastnorm::dtype_size(t_)), val(n) {}
  void* data() { return bytes.data(); }
  void set(size_t i, double v) {
    switch (t) {
      case DType::Float32: { float f = static_cast<float>(v); std::memcpy(&bytes[i * 4], &f, 4); val[i] = f; break; }
      case DType::Float64: { std::memcpy(&bytes[i * 8], &v, 8); val[i] = v; break; }
      case DType::BFloat16: {
        uint16_t b = fastnorm::detail::float_to_bf16(static_cast<float>(v));
        std::memcpy(&bytes[i * 2], &b, 2); val[i] = fastnorm::detail::bf16_to_float(b); break;
      }
      default: {
        uint16_t b = fastnorm::detail::float_to_f16(static_cast<float>(v));
        std::memcpy(&bytes[i * 2], &b, 2); val[i] = fastnorm::detail::f16_to_float(b); break;
      }
    }
  }
  double get(size_t i) const {
    switch (t) {
      case DType::Float32: { float f; std::memcpy(&f, &bytes[i * 4], 4); return f; }
      case DType::Float64: { double d; std::memcpy(&d, &bytes[i * 8], 8); return d; }
      case DType::BFloat16: { uint16_t b; std::memcpy(&b, &bytes[i * 2], 2); return fastnorm::detail::bf16_to_float(b); }
      default: { uint16_t b; std::memcpy(&b, &bytes[i * 2], 2); return fastnorm::detail::f16_to_float(b); }
    }
  }
  void fill_random(std::mt19937& g, double shift = 0.0) {
    std::normal_distribution<double> nd;
    for (size_t i = 0; i < val.size(); ++i) set(i, nd(g) + shift);
  }
};

inline double out_tol(DType t) {
  switch (t) {
    case DType::Float64: return 1e-12;
    case DType::Float32: return 1e-5;
    default: return 1e-2;  // 16-bit outputs: a few ulps of bf16/f16
  }
}

// ||got - want|| / ||scale|| < tol, scale defaulting to want. A formula that cancels (dx = a - b with
// a ~ b) is judged against the size of its terms: that is the accuracy its arithmetic can promise.
inline void expect_close(const Buf& got, const std::vector<double>& want, double tol, const char* what,
                         const std::vector<double>* scale = nullptr) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double d = got.get(i) - want[i];
    const double s = scale ? (*scale)[i] : want[i];
    num += d * d;
    den += s * s;
  }
  EXPECT_LT(std::sqrt(num / (den > 0 ? den : 1)), tol) << what;
}

}  // namespace fastnorm_test

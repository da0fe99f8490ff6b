// Tests of the 16-bit float conversions in fastnorm/detail/dtype.h and of common.h's dtype helpers.
//
// The conversions are checked against an independent reference written here from the IEEE 754
// definitions (decode by ldexp, round by scaling to the format's ulp and std::nearbyint, which rounds
// ties to even in the default rounding mode). test_norm.cpp reuses this reference (round_ref,
// decode_ref, encode_ref) to build its correctly rounded expected outputs, so it is tested here first.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>

#include "fastnorm/common.h"
#include "fastnorm/detail/dtype.h"

namespace fastnorm_test {
using fastnorm::DType;

namespace {
// An IEEE binary format: precision p counts the implicit bit; emin is the exponent of the smallest normal.
struct Format {
  int precision;
  int exp_bits;
  int emin;
  int emax;
};
constexpr Format kBF16{8, 8, -126, 127};
constexpr Format kF16{11, 5, -14, 15};

Format format_of(DType t) { return t == DType::BFloat16 ? kBF16 : kF16; }

double max_finite(Format f) { return std::ldexp(2.0 - std::ldexp(1.0, 1 - f.precision), f.emax); }

double round_format(double v, Format f) {
  if (std::isnan(v) || std::isinf(v) || v == 0) return v;
  int e;
  std::frexp(v, &e);                           // |v| = m * 2^e with m in [0.5, 1): leading bit 2^(e-1)
  const int lead = std::max(e - 1, f.emin);    // below emin the grid is the subnormal one
  const double ulp = std::ldexp(1.0, lead - (f.precision - 1));
  const double r = std::nearbyint(v / ulp) * ulp;  // both scalings by powers of two are exact
  // Overflow: anything that rounds past the largest finite value is infinite (IEEE: |v| >= max + ulp/2).
  if (std::fabs(r) > max_finite(f)) return std::copysign(std::numeric_limits<double>::infinity(), v);
  return r;
}
}  // namespace

// Correctly rounded (ties to even) value of v in dtype t, as a double. Float32 uses the double->float
// conversion, which is itself IEEE round-to-nearest-even.
double round_ref(double v, DType t) {
  switch (t) {
    case DType::Float64: return v;
    case DType::Float32: return static_cast<double>(static_cast<float>(v));
    case DType::BFloat16:
    case DType::Float16: return round_format(v, format_of(t));
    default: return std::numeric_limits<double>::quiet_NaN();
  }
}

// Value of a 16-bit pattern, from the field layout.
double decode_ref(uint16_t bits, DType t) {
  const Format f = format_of(t);
  const int man_bits = f.precision - 1;
  const int exp_all = (1 << f.exp_bits) - 1;
  const int bias = (1 << (f.exp_bits - 1)) - 1;
  const int e = (bits >> man_bits) & exp_all;
  const int m = bits & ((1 << man_bits) - 1);
  double v;
  if (e == exp_all) v = m != 0 ? std::numeric_limits<double>::quiet_NaN() : std::numeric_limits<double>::infinity();
  else if (e == 0) v = std::ldexp(m, f.emin - man_bits);
  else v = std::ldexp(m + (1 << man_bits), e - bias - man_bits);
  return (bits & 0x8000u) ? -v : v;
}

// Bit pattern of a value that is exactly representable in t (NaN -> the canonical quiet NaN).
uint16_t encode_ref(double v, DType t) {
  const Format f = format_of(t);
  const int man_bits = f.precision - 1;
  const unsigned exp_all = (1u << f.exp_bits) - 1;
  const int bias = (1 << (f.exp_bits - 1)) - 1;
  const unsigned sign = std::signbit(v) ? 0x8000u : 0u;
  const double a = std::fabs(v);
  if (std::isnan(v)) return static_cast<uint16_t>(sign | (exp_all << man_bits) | (1u << (man_bits - 1)));
  if (std::isinf(a)) return static_cast<uint16_t>(sign | (exp_all << man_bits));
  if (a == 0) return static_cast<uint16_t>(sign);
  int e;
  std::frexp(a, &e);
  const int lead = e - 1;
  if (lead < f.emin) return static_cast<uint16_t>(sign | static_cast<unsigned>(a / std::ldexp(1.0, f.emin - man_bits)));
  const unsigned mant = static_cast<unsigned>(a / std::ldexp(1.0, lead - man_bits)) - (1u << man_bits);
  return static_cast<uint16_t>(sign | (static_cast<unsigned>(lead + bias) << man_bits) | mant);
}

namespace {
using fastnorm::detail::bf16_to_float;
using fastnorm::detail::f16_to_float;
using fastnorm::detail::float_to_bf16;
using fastnorm::detail::float_to_f16;

float core_to_float(uint16_t b, DType t) { return t == DType::BFloat16 ? bf16_to_float(b) : f16_to_float(b); }
uint16_t core_from_float(float f, DType t) { return t == DType::BFloat16 ? float_to_bf16(f) : float_to_f16(f); }

bool is_nan_bits(uint16_t b, DType t) { return std::isnan(decode_ref(b, t)); }

class Half : public ::testing::TestWithParam<DType> {};

// Every one of the 65536 patterns decodes to the value its fields define (NaN to NaN, -0 keeps its sign).
TEST_P(Half, DecodeAllPatterns) {
  const DType t = GetParam();
  for (uint32_t b = 0; b < 65536; ++b) {
    const double want = decode_ref(static_cast<uint16_t>(b), t);
    const float got = core_to_float(static_cast<uint16_t>(b), t);
    if (std::isnan(want)) {
      ASSERT_TRUE(std::isnan(got)) << "pattern 0x" << std::hex << b;
    } else {
      ASSERT_EQ(static_cast<double>(got), want) << "pattern 0x" << std::hex << b;
      ASSERT_EQ(std::signbit(got), std::signbit(want)) << "pattern 0x" << std::hex << b;
    }
  }
}

// decode then encode returns the same bits for every non-NaN pattern; NaNs stay NaN with their sign.
TEST_P(Half, RoundTripAllPatterns) {
  const DType t = GetParam();
  for (uint32_t b = 0; b < 65536; ++b) {
    const uint16_t bits = static_cast<uint16_t>(b);
    const uint16_t back = core_from_float(core_to_float(bits, t), t);
    if (is_nan_bits(bits, t)) {
      ASSERT_TRUE(is_nan_bits(back, t)) << "pattern 0x" << std::hex << b;
      ASSERT_EQ(back & 0x8000u, bits & 0x8000u) << "pattern 0x" << std::hex << b;
    } else {
      ASSERT_EQ(back, bits) << "pattern 0x" << std::hex << b;
    }
  }
}

// Between every pair of neighbouring values (normal, subnormal, and the step from the largest finite
// value to the overflow threshold) the midpoint goes to the even neighbour and the floats just beside
// it go to the nearer one. This is where truncation or ties-away-from-zero would show.
TEST_P(Half, TiesToEvenAtEveryMidpoint) {
  const DType t = GetParam();
  const Format f = format_of(t);
  const uint16_t inf_bits = encode_ref(std::numeric_limits<double>::infinity(), t);
  for (uint16_t lo_bits = 0; lo_bits < inf_bits; ++lo_bits) {
    const double lo = decode_ref(lo_bits, t);
    // Above the largest finite value, the "next" grid point is max + ulp, whose midpoint is the
    // overflow threshold (65520 for f16).
    const double hi = lo_bits + 1 < inf_bits ? decode_ref(static_cast<uint16_t>(lo_bits + 1), t)
                                             : lo + std::ldexp(1.0, f.emax - (f.precision - 1));
    const double mid = 0.5 * (lo + hi);
    ASSERT_EQ(static_cast<double>(static_cast<float>(mid)), mid);  // midpoints are floats
    const uint16_t even = (lo_bits & 1u) ? static_cast<uint16_t>(lo_bits + 1) : lo_bits;
    for (double sign : {1.0, -1.0}) {
      const uint16_t s = sign < 0 ? 0x8000u : 0u;
      const float m = static_cast<float>(sign * mid);
      ASSERT_EQ(core_from_float(m, t), static_cast<uint16_t>(even | s)) << "midpoint " << m;
      // nextafterf: the float neighbours (std::nextafter(float, double) would step in double).
      const float above = std::nextafterf(m, static_cast<float>(sign) * INFINITY);
      const float below = std::nextafterf(m, 0.0f);
      ASSERT_EQ(core_from_float(above, t), static_cast<uint16_t>((lo_bits + 1) | s)) << "just past " << m;
      ASSERT_EQ(core_from_float(below, t), static_cast<uint16_t>(lo_bits | s)) << "just short of " << m;
    }
  }
}

// Random floats over the whole bit range (all exponents, both signs) against the reference rounding.
TEST_P(Half, RandomFloatsMatchReference) {
  const DType t = GetParam();
  std::mt19937 rng(1234);
  for (int i = 0; i < 2000000; ++i) {
    const uint32_t u = static_cast<uint32_t>(rng());
    float f;
    std::memcpy(&f, &u, 4);
    const uint16_t got = core_from_float(f, t);
    if (std::isnan(f)) {
      ASSERT_TRUE(is_nan_bits(got, t)) << "bits 0x" << std::hex << u;
      continue;
    }
    const double want = round_ref(f, t);
    ASSERT_EQ(decode_ref(got, t), want) << "float " << f << " bits 0x" << std::hex << u;
    ASSERT_EQ(got, encode_ref(want, t)) << "float " << f;  // including the sign of zero
  }
}

// rho_T as the kernels use it agrees with convert-and-back; identity for the wide types.
TEST_P(Half, RoundToMatchesConversion) {
  const DType t = GetParam();
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> u(-70000.f, 70000.f);
  for (int i = 0; i < 10000; ++i) {
    const float v = u(rng) * (i % 2 ? 1e-6f : 1.0f);
    EXPECT_EQ(static_cast<double>(fastnorm::detail::round_to(t, v)), round_ref(v, t));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtype, Half, ::testing::Values(DType::BFloat16, DType::Float16),
                         [](const auto& info) { return std::string(fastnorm::dtype_name(info.param)); });

TEST(Dtype, RoundToIsIdentityForWideTypes) {
  const float v = 1.0f + std::ldexp(1.0f, -20);  // not representable in 16 bits
  EXPECT_EQ(fastnorm::detail::round_to(DType::Float32, v), v);
  EXPECT_EQ(fastnorm::detail::round_to(DType::Float64, v), v);
  const double d = 1.0 + std::ldexp(1.0, -40);
  EXPECT_EQ(fastnorm::detail::round_to(DType::BFloat16, d), d);  // the double overload never rounds
}

TEST(Dtype, BF16KnownValues) {
  EXPECT_EQ(float_to_bf16(1.0f), 0x3F80);
  EXPECT_EQ(float_to_bf16(-2.0f), 0xC000);
  EXPECT_EQ(float_to_bf16(0.0f), 0x0000);
  EXPECT_EQ(float_to_bf16(-0.0f), 0x8000);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to the even 1.0; 1 + 3*2^-8 goes up to 1 + 2^-6.
  EXPECT_EQ(float_to_bf16(1.0f + std::ldexp(1.0f, -8)), 0x3F80);
  EXPECT_EQ(float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3F82);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(float_to_bf16(-std::numeric_limits<float>::infinity()), 0xFF80);
  // FLT_MAX lies beyond bf16's max + ulp/2: it overflows to inf rather than wrapping into NaN.
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::max()), 0x7F80);
  // bf16's largest finite value survives.
  EXPECT_EQ(float_to_bf16(bf16_to_float(0x7F7F)), 0x7F7F);
  // Float subnormals keep their top bits: 2^-130 = 8 * 2^-133 (bf16 subnormal step).
  EXPECT_EQ(float_to_bf16(std::ldexp(1.0f, -130)), 0x0008);
  EXPECT_EQ(float_to_bf16(std::numeric_limits<float>::denorm_min()), 0x0000);  // rounds to +0
  // A signalling NaN whose payload sits in the low bits must not truncate to infinity.
  uint32_t snan = 0x7F800001u, nsnan = 0xFF800001u;
  float f;
  std::memcpy(&f, &snan, 4);
  const uint16_t b = float_to_bf16(f);
  EXPECT_TRUE(std::isnan(bf16_to_float(b))) << std::hex << b;
  std::memcpy(&f, &nsnan, 4);
  const uint16_t nb = float_to_bf16(f);
  EXPECT_TRUE(std::isnan(bf16_to_float(nb))) << std::hex << nb;
  EXPECT_TRUE(nb & 0x8000u);
  EXPECT_EQ(bf16_to_float(0x3F80), 1.0f);
  EXPECT_EQ(bf16_to_float(0x0001), std::ldexp(1.0f, -133));
}

TEST(Dtype, F16KnownValues) {
  EXPECT_EQ(float_to_f16(1.0f), 0x3C00);
  EXPECT_EQ(float_to_f16(-2.0f), 0xC000);
  EXPECT_EQ(float_to_f16(-0.0f), 0x8000);
  EXPECT_EQ(float_to_f16(65504.0f), 0x7BFF);            // largest finite half
  EXPECT_EQ(float_to_f16(65519.996f), 0x7BFF);          // just under the overflow threshold
  EXPECT_EQ(float_to_f16(65520.0f), 0x7C00);            // the threshold itself ties to inf (even)
  EXPECT_EQ(float_to_f16(-65520.0f), 0xFC00);
  EXPECT_EQ(float_to_f16(1e10f), 0x7C00);
  EXPECT_EQ(float_to_f16(std::numeric_limits<float>::max()), 0x7C00);
  EXPECT_EQ(float_to_f16(std::numeric_limits<float>::infinity()), 0x7C00);
  // Subnormals: 2^-24 is the smallest; 2^-25 ties to even 0; just above it rounds up; 1.5 * 2^-24
  // ties between 1 and 2 steps and goes to the even 2.
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -24)), 0x0001);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -25)), 0x0000);
  EXPECT_EQ(float_to_f16(std::nextafter(std::ldexp(1.0f, -25), 1.0f)), 0x0001);
  EXPECT_EQ(float_to_f16(1.5f * std::ldexp(1.0f, -24)), 0x0002);
  EXPECT_EQ(float_to_f16(2.5f * std::ldexp(1.0f, -24)), 0x0002);
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -14)), 0x0400);   // smallest normal
  EXPECT_EQ(float_to_f16(std::ldexp(1023.0f, -24)), 0x03FF);  // largest subnormal
  EXPECT_EQ(float_to_f16(std::ldexp(1.0f, -30)), 0x0000);   // far below: +0
  EXPECT_EQ(float_to_f16(-std::ldexp(1.0f, -30)), 0x8000);  // ... keeping the sign
  // 1 + 2^-11 ties between 1 and 1 + 2^-10: even is 1.0.
  EXPECT_EQ(float_to_f16(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(float_to_f16(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  const uint16_t qnan = float_to_f16(std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(f16_to_float(qnan))) << std::hex << qnan;
  const uint16_t nqnan = float_to_f16(-std::numeric_limits<float>::quiet_NaN());
  EXPECT_TRUE(std::isnan(f16_to_float(nqnan)));
  EXPECT_TRUE(nqnan & 0x8000u);
  EXPECT_EQ(f16_to_float(0x3C00), 1.0f);
  EXPECT_EQ(f16_to_float(0x7BFF), 65504.0f);
  EXPECT_EQ(f16_to_float(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(f16_to_float(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(f16_to_float(0xFC00), -std::numeric_limits<float>::infinity());
}

TEST(Dtype, ConvTemplates) {
  using fastnorm::bf16_t;
  using fastnorm::f16_t;
  using fastnorm::detail::load_as;
  using fastnorm::detail::store_from;
  EXPECT_EQ((load_as<bf16_t, float>(bf16_t{0x3FC0})), 1.5f);
  EXPECT_EQ((load_as<f16_t, double>(f16_t{0x3E00})), 1.5);
  EXPECT_EQ((store_from<bf16_t, float>(1.5f).bits), 0x3FC0);
  EXPECT_EQ((store_from<f16_t, double>(1.5).bits), 0x3E00);
  EXPECT_EQ((store_from<float, double>(0.1)), 0.1f);
  EXPECT_EQ((load_as<double, double>(0.1)), 0.1);
}

TEST(Dtype, SizesAndNames) {
  using fastnorm::dtype_name;
  using fastnorm::dtype_size;
  EXPECT_EQ(dtype_size(DType::Float32), 4u);
  EXPECT_EQ(dtype_size(DType::Float16), 2u);
  EXPECT_EQ(dtype_size(DType::BFloat16), 2u);
  EXPECT_EQ(dtype_size(DType::Float64), 8u);
  EXPECT_EQ(dtype_size(DType::Int32), 4u);
  EXPECT_EQ(dtype_size(DType::Int64), 8u);
  EXPECT_EQ(dtype_size(DType::UInt8), 1u);
  EXPECT_EQ(dtype_size(DType::Bool), 1u);
  EXPECT_EQ(dtype_size(static_cast<DType>(42)), 0u);
  EXPECT_STREQ(dtype_name(DType::BFloat16), "bfloat16");
  EXPECT_STREQ(dtype_name(DType::Float16), "float16");
  EXPECT_STREQ(dtype_name(DType::Int32), "int32");
  EXPECT_STREQ(dtype_name(static_cast<DType>(42)), "unknown");
  // The codes travel through the op schemas as integers; they must not move.
  EXPECT_EQ(static_cast<int>(DType::Float32), 0);
  EXPECT_EQ(static_cast<int>(DType::Float16), 1);
  EXPECT_EQ(static_cast<int>(DType::BFloat16), 2);
  EXPECT_EQ(static_cast<int>(DType::Float64), 3);
  EXPECT_EQ(static_cast<int>(DType::Int32), 4);
  EXPECT_EQ(static_cast<int>(DType::Bool), 7);
}

TEST(Dtype, Status) {
  fastnorm::Status ok;
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.code(), fastnorm::StatusCode::Ok);
  const fastnorm::Status bad = fastnorm::invalid_argument("x is null");
  EXPECT_FALSE(bad.ok());
  EXPECT_EQ(bad.code(), fastnorm::StatusCode::InvalidArgument);
  EXPECT_EQ(bad.message(), "x is null");
  EXPECT_EQ(fastnorm::unsupported("u").code(), fastnorm::StatusCode::Unsupported);
}

// The reference itself, on values whose roundings are known by hand, so that it cannot drift.
TEST(Dtype, ReferenceSelfCheck) {
  EXPECT_EQ(round_ref(65520.0, DType::Float16), std::numeric_limits<double>::infinity());
  EXPECT_EQ(round_ref(65519.0, DType::Float16), 65504.0);
  EXPECT_EQ(round_ref(1.0 + std::ldexp(1.0, -11), DType::Float16), 1.0);
  EXPECT_EQ(round_ref(1.0 + std::ldexp(1.0, -8), DType::BFloat16), 1.0);
  EXPECT_EQ(round_ref(std::ldexp(1.0, -25), DType::Float16), 0.0);
  EXPECT_EQ(encode_ref(1.0, DType::BFloat16), 0x3F80);
  EXPECT_EQ(encode_ref(65504.0, DType::Float16), 0x7BFF);
  EXPECT_EQ(encode_ref(std::ldexp(1.0, -24), DType::Float16), 0x0001);
  EXPECT_EQ(decode_ref(0x7BFF, DType::Float16), 65504.0);
  EXPECT_EQ(decode_ref(0xBF80, DType::BFloat16), -1.0);
}

}  // namespace
}  // namespace fastnorm_test

// Storage types for the 16-bit floats and their conversions, shared by CPU and CUDA code.
// The host path is bit-exact IEEE round-to-nearest-even written with integer and float arithmetic only
// (so it auto-vectorises and needs no F16C); under nvcc's device pass the hardware conversions are used,
// which round identically.
#pragma once
#include <cstdint>
#include <cstring>

#include "fastnorm/common.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace fastnorm {

struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

namespace detail {

FASTNORM_HD_INLINE uint32_t f32_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u; std::memcpy(&u, &f, 4); return u;
#endif
}
FASTNORM_HD_INLINE float f32_from_bits(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f; std::memcpy(&f, &u, 4); return f;
#endif
}

// bfloat16 is the top half of a float32.
FASTNORM_HD_INLINE float bf16_to_float(uint16_t b) { return f32_from_bits(static_cast<uint32_t>(b) << 16); }
FASTNORM_HD_INLINE uint16_t float_to_bf16(float f) {
  uint32_t u = f32_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // quiet NaN, sign kept
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return static_cast<uint16_t>(u >> 16);
}

// IEEE half <-> float by rescaling through the float exponent range, so subnormals, overflow to
// infinity and ties-to-even all come out of ordinary float rounding.
FASTNORM_HD_INLINE float f16_to_float(uint16_t h) {
#if defined(__CUDA_ARCH__)
  return __half2float(__ushort_as_half(h));
#else
  const uint32_t w = static_cast<uint32_t>(h) << 16;
  const uint32_t sign = w & 0x80000000u;
  const uint32_t two_w = w + w;  // exponent and mantissa, sign shifted out
  // Normal numbers: move exponent+mantissa into float position and rescale by 2^-112.
  const float normal = f32_from_bits((two_w >> 4) + (0xE0u << 23)) * 0x1.0p-112f;
  // Subnormals: place the mantissa under a 0.5 exponent and subtract the 0.5.
  const float subnormal = f32_from_bits((two_w >> 17) | (126u << 23)) - 0.5f;
  const uint32_t mag = two_w < (1u << 27) ? f32_bits(subnormal) : f32_bits(normal);
  return f32_from_bits(sign | mag);
#endif
}
FASTNORM_HD_INLINE uint16_t float_to_f16(float f) {
#if defined(__CUDA_ARCH__)
  return __half_as_ushort(__float2half_rn(f));
#else
  // Scale up then down so that values too large become inf and the low bits round as half would.
  float mag = f < 0 ? -f : f;
  float base = (mag * 0x1.0p+112f) * 0x1.0p-110f;
  const uint32_t w = f32_bits(f);
  const uint32_t shl1_w = w + w;
  const uint32_t sign = w & 0x80000000u;
  uint32_t bias = shl1_w & 0xFF000000u;
  if (bias < 0x71000000u) bias = 0x71000000u;  // the smallest exponent a half subnormal rounds at
  base = f32_from_bits((bias >> 1) + 0x07800000u) + base;
  const uint32_t bits = f32_bits(base);
  const uint32_t nonsign = ((bits >> 13) & 0x7C00u) + (bits & 0x0FFFu);
  return static_cast<uint16_t>((sign >> 16) | (shl1_w > 0xFF000000u ? 0x7E00u : nonsign));
#endif
}

// Load/store one element of storage type T as the accumulation type.
template <typename T> struct Conv;
template <> struct Conv<float> {
  static FASTNORM_HD_INLINE float load(float v) { return v; }
  static FASTNORM_HD_INLINE float store(float v) { return v; }
};
template <> struct Conv<double> {
  static FASTNORM_HD_INLINE double load(double v) { return v; }
  static FASTNORM_HD_INLINE double store(double v) { return v; }
};
template <> struct Conv<bf16_t> {
  static FASTNORM_HD_INLINE float load(bf16_t v) { return bf16_to_float(v.bits); }
  static FASTNORM_HD_INLINE bf16_t store(float v) { return bf16_t{float_to_bf16(v)}; }
};
template <> struct Conv<f16_t> {
  static FASTNORM_HD_INLINE float load(f16_t v) { return f16_to_float(v.bits); }
  static FASTNORM_HD_INLINE f16_t store(float v) { return f16_t{float_to_f16(v)}; }
};

template <typename T, typename A> FASTNORM_HD_INLINE A load_as(const T& v) { return static_cast<A>(Conv<T>::load(v)); }
template <typename T, typename A> FASTNORM_HD_INLINE T store_from(A v) { return Conv<T>::store(static_cast<decltype(Conv<T>::load(T{}))>(v)); }

// rho_T: round an accumulator value to the precision of dtype t and back (identity for f32/f64).
FASTNORM_HD_INLINE float round_to(DType t, float v) {
  switch (t) {
    case DType::BFloat16: return bf16_to_float(float_to_bf16(v));
    case DType::Float16: return f16_to_float(float_to_f16(v));
    default: return v;
  }
}
FASTNORM_HD_INLINE double round_to(DType, double v) { return v; }

}  // namespace detail
}  // namespace fastnorm

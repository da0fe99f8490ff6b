// Pinned roundings shared by the FASTNORM_HD math of every family that must round bit-identically on the
// CPU and the GPU (lion_math.h, sara_math.h). Each wrapper is one IEEE operation rounded to nearest even:
// under nvcc's device pass the explicit _rn intrinsics, which nvcc never contracts into an FMA (whatever
// -fmad says); on the host the plain operator, which the core compiles with -ffp-contract=off, and
// std::fma / std::sqrt, which are correctly rounded. A kernel that writes add_rn(a, mul_rn(b, c)) therefore
// gets two roundings on both sides, and fma_rn(b, c, a) one.
#pragma once
#include <cmath>

#include "fastnorm/export.h"

namespace fastnorm {
namespace detail {

FASTNORM_HD_INLINE float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
FASTNORM_HD_INLINE double add_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dadd_rn(a, b);
#else
  return a + b;
#endif
}
FASTNORM_HD_INLINE float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FASTNORM_HD_INLINE double mul_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __dmul_rn(a, b);
#else
  return a * b;
#endif
}
FASTNORM_HD_INLINE float div_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}
FASTNORM_HD_INLINE double div_rn(double a, double b) {
#if defined(__CUDA_ARCH__)
  return __ddiv_rn(a, b);
#else
  return a / b;
#endif
}
FASTNORM_HD_INLINE float fma_rn(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
FASTNORM_HD_INLINE double fma_rn(double a, double b, double c) {
#if defined(__CUDA_ARCH__)
  return __fma_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}
FASTNORM_HD_INLINE float sqrt_rn(float a) {
#if defined(__CUDA_ARCH__)
  return __fsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}
FASTNORM_HD_INLINE double sqrt_rn(double a) {
#if defined(__CUDA_ARCH__)
  return __dsqrt_rn(a);
#else
  return std::sqrt(a);
#endif
}

}  // namespace detail
}  // namespace fastnorm

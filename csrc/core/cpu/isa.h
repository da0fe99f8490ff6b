// Internal: which build of a CPU kernel file runs here. Kernel files listed in FASTNORM_CPU_KERNELS
// (core/CMakeLists.txt) are compiled twice, for the baseline x86-64 ISA and with -mavx2 -mf16c -mfma,
// into namespaces `baseline` and `avx2`; entry points pick one at run time with use_avx2().
#pragma once

namespace fastnorm {
namespace cpu {

inline bool use_avx2() {
#if defined(FASTNORM_HAVE_AVX2)
  static const bool ok =
      __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

}  // namespace cpu
}  // namespace fastnorm

#if defined(FASTNORM_HAVE_AVX2)
#define FASTNORM_DISPATCH_ISA(fn, p) (::fastnorm::cpu::use_avx2() ? avx2::fn(p) : baseline::fn(p))
#else
#define FASTNORM_DISPATCH_ISA(fn, p) baseline::fn(p)
#endif

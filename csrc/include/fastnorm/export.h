// Symbol visibility and the host/device marker. The core is built with hidden visibility; only what
// carries FASTNORM_API is exported from a shared build of it.
#pragma once

#if defined(_WIN32)
#define FASTNORM_API
#else
#define FASTNORM_API __attribute__((visibility("default")))
#endif

// FASTNORM_HD marks math shared by the CPU and CUDA kernels: __host__ __device__ under nvcc, plain
// inline under a host compiler, so g++ tests the very formulas the GPU runs.
#if defined(__CUDACC__)
#define FASTNORM_HD __host__ __device__
#define FASTNORM_HD_INLINE __host__ __device__ inline
#else
#define FASTNORM_HD
#define FASTNORM_HD_INLINE inline
#endif

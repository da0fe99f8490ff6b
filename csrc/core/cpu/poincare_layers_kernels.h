// Internal: the dense stages of the Poincaré FC/conv CPU kernels (the blocked GEMM), compiled
// once per ISA (poincare_layers_kernels.cpp is built for the baseline x86-64 and for AVX2) and chosen at run
// time by poincare_layers.cpp. Arguments are already validated.
#pragma once
#include <cstdint>

namespace fastnorm {
namespace poincare {
namespace layers_cpu {

// C[i, j] (+)= Σ_k A(i, k)·B[k·ldb + j] for i < M, j < N, k < K, with A(i, k) = A[i·ars + k·acs]. Each
// C element is owned by one thread and summed in k order: bitwise independent of the thread count.
struct GemmArgs {
  int64_t M = 0, N = 0, K = 0;
  const void* A = nullptr;
  int64_t ars = 0, acs = 0;
  const void* B = nullptr;
  int64_t ldb = 0;
  void* C = nullptr;
  int64_t ldc = 0;
  bool accumulate = false;
  bool f64 = false;
  int threads = 1;
};

namespace baseline {
void gemm(const GemmArgs& a);
}
namespace avx2 {
void gemm(const GemmArgs& a);
}

}  // namespace layers_cpu
}  // namespace poincare
}  // namespace fastnorm

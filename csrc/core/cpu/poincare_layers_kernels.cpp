// The blocked GEMM of the Poincaré FC/conv CPU kernels. Built twice (FASTNORM_ISA = baseline | avx2);
// poincare_layers.cpp picks the build. Register blocking MR×NR with the accumulators in a local array
// (scalar-replaced and vectorised by the compiler); the B panel [K, NR] stays in L1/L2 across the row
// blocks. No FMA contraction (-ffp-contract=off): both builds round the same way.
#include <omp.h>

#include <algorithm>

#include "poincare_layers_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

namespace fastnorm {
namespace poincare {
namespace layers_cpu {
namespace FASTNORM_ISA {
namespace {

template <class T, int MR, int NR>
inline void block_full(const GemmArgs& g, const T* A, const T* B, T* C, int64_t i0, int64_t j0) {
  T acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = g.accumulate ? C[(i0 + r) * g.ldc + j0 + j] : T(0);
  const T* a[MR];
  for (int r = 0; r < MR; ++r) a[r] = A + (i0 + r) * g.ars;
  const T* b = B + j0;
  for (int64_t k = 0; k < g.K; ++k) {
    const T* bk = b + k * g.ldb;
    for (int r = 0; r < MR; ++r) {
      const T av = a[r][k * g.acs];
#pragma omp simd
      for (int j = 0; j < NR; ++j) acc[r][j] += av * bk[j];
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) C[(i0 + r) * g.ldc + j0 + j] = acc[r][j];
}

// Edge blocks: same summation order (k ascending, one accumulator per element), any size.
template <class T>
inline void block_edge(const GemmArgs& g, const T* A, const T* B, T* C, int64_t i0, int64_t i1, int64_t j0,
                       int64_t j1) {
  for (int64_t i = i0; i < i1; ++i) {
    T* c = C + i * g.ldc;
    for (int64_t j = j0; j < j1; ++j) {
      T acc = g.accumulate ? c[j] : T(0);
      for (int64_t k = 0; k < g.K; ++k) acc += A[i * g.ars + k * g.acs] * B[k * g.ldb + j];
      c[j] = acc;
    }
  }
}

template <class T, int NR>
void gemm_nr(const GemmArgs& g) {
  constexpr int MR = 4;
  const T* A = static_cast<const T*>(g.A);
  const T* B = static_cast<const T*>(g.B);
  T* C = static_cast<T*>(g.C);
  const int64_t nbi = (g.M + MR - 1) / MR, nbj = (g.N + NR - 1) / NR;
  const int64_t nblocks = nbi * nbj;
  const int threads = int(std::max<int64_t>(1, std::min<int64_t>(g.threads, nblocks)));
  // j-block major: consecutive blocks of one thread share the B panel. Small products stay on one thread
  // (a parallel region costs more than they do).
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && g.M * g.N * g.K > 262144)
  for (int64_t blk = 0; blk < nblocks; ++blk) {
    const int64_t bj = blk / nbi, bi = blk % nbi;
    const int64_t i0 = bi * MR, j0 = bj * NR;
    const int64_t i1 = std::min(g.M, i0 + MR), j1 = std::min(g.N, j0 + NR);
    if (i1 - i0 == MR && j1 - j0 == NR)
      block_full<T, MR, NR>(g, A, B, C, i0, j0);
    else
      block_edge<T>(g, A, B, C, i0, i1, j0, j1);
  }
}

template <class T>
void gemm_t(const GemmArgs& g) {
  T* C = static_cast<T*>(g.C);
  if (g.M <= 0 || g.N <= 0) return;
  if (g.K <= 0) {
    if (!g.accumulate)
      for (int64_t i = 0; i < g.M; ++i) std::fill(C + i * g.ldc, C + i * g.ldc + g.N, T(0));
    return;
  }
  // Register block width: two 256-bit vectors per row, or one for narrow products (N = 8 channels).
  constexpr int NR2 = 32 / int(sizeof(T)) * 2, NR1 = 32 / int(sizeof(T));
  if (g.N < NR2)
    gemm_nr<T, NR1>(g);
  else
    gemm_nr<T, NR2>(g);
}

}  // namespace

void gemm(const GemmArgs& a) {
  if (a.f64)
    gemm_t<double>(a);
  else
    gemm_t<float>(a);
}

}  // namespace FASTNORM_ISA
}  // namespace layers_cpu
}  // namespace poincare
}  // namespace fastnorm

// Index and softmax math of HyperAttention (specs/hyper_attention.md §3), written once for the CPU kernels
// (g++) and the CUDA kernels (nvcc), so both build identical plans and merge identically.
#pragma once
#include <cmath>
#include <cstdint>

#include "fastnorm/export.h"

namespace fastnorm {
namespace hyper_attention {
namespace detail {

// Reflected Gray code.
FASTNORM_HD_INLINE uint32_t gray(uint32_t y) { return y ^ (y >> 1); }

// Inverse Gray code: the prefix XOR y ^ (y >> 1) ^ (y >> 2) ^ ..., by doubling shifts. Sorting buckets by
// inverse_gray(bin) visits them in the order gray(0), gray(1), ... (one sign flip per step, §3.1).
FASTNORM_HD_INLINE uint32_t inverse_gray(uint32_t g) {
  g ^= g >> 1;
  g ^= g >> 2;
  g ^= g >> 4;
  g ^= g >> 8;
  g ^= g >> 16;
  return g;
}

// Number of blocks of a sub-problem with nk keys: ceil(nk / b).
FASTNORM_HD_INLINE int64_t num_blocks(int64_t nk, int64_t b) { return (nk + b - 1) / b; }

// First rank of block j of a sorted sequence of length L split into nb balanced blocks: floor(j*L/nb)
// (§3.3). block_begin(nb, L, nb) == L.
FASTNORM_HD_INLINE int64_t block_begin(int64_t j, int64_t L, int64_t nb) { return (j * L) / nb; }

// Block of rank r: the j with block_begin(j) <= r < block_begin(j + 1), i.e. floor(((r+1)*nb - 1) / L).
FASTNORM_HD_INLINE int64_t block_of_rank(int64_t r, int64_t L, int64_t nb) { return ((r + 1) * nb - 1) / L; }

// Sample rank of word w in [0, 2^31) over nk keys: floor(w * nk / 2^31) (int64 math, §3.4).
FASTNORM_HD_INLINE int64_t sample_rank(int32_t w, int64_t nk) {
  return (static_cast<int64_t>(static_cast<uint32_t>(w) & 0x7fffffffu) * nk) >> 31;
}

// Merge of two partial softmax results (§3.7): L = max + log(e^{l1-max} + e^{l2-max}); the output weights
// are c1 = e^{l1-L}, c2 = e^{l2-L}. Both -inf: L = -inf and c1 = c2 = 0; one -inf: the other unchanged.
template <typename T>
struct LseMerge {
  T lse, c1, c2;
};
template <typename T>
FASTNORM_HD_INLINE LseMerge<T> lse_merge(T l1, T l2) {
  using std::exp;
  using std::log;
  const T ninf = -INFINITY;
  if (l1 == ninf && l2 == ninf) return {ninf, T(0), T(0)};
  if (l2 == ninf) return {l1, T(1), T(0)};
  if (l1 == ninf) return {l2, T(0), T(1)};
  const T mx = l1 > l2 ? l1 : l2;
  const T e1 = exp(l1 - mx), e2 = exp(l2 - mx);
  const T L = mx + log(e1 + e2);
  return {L, exp(l1 - L), exp(l2 - L)};
}

// Online softmax state of one row: running max m and running sum l of e^{x - m} (weights folded into x as
// a log bias). update() takes the max of a new chunk and returns the factor alpha = e^{m_old - m_new} that
// rescales l and the output accumulator; empty history (m = -inf) gives alpha = 0.
template <typename T>
struct OnlineSoftmax {
  T m = -INFINITY;
  T l = T(0);
  FASTNORM_HD_INLINE T update(T chunk_max) {
    using std::exp;
    if (!(chunk_max > m)) return T(1);  // also keeps m when chunk_max is -inf or NaN-free smaller
    const T alpha = (m == T(-INFINITY)) ? T(0) : exp(m - chunk_max);
    m = chunk_max;
    l *= alpha;
    return alpha;
  }
  // lse = m + log(l); -inf when the row met no entry.
  FASTNORM_HD_INLINE T lse() const {
    using std::log;
    return l > T(0) ? m + log(l) : T(-INFINITY);
  }
};

}  // namespace detail
}  // namespace hyper_attention
}  // namespace fastnorm

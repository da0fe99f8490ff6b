// Internal: the SaRA CPU kernels built once per ISA (sara_kernels.cpp for the baseline x86-64 and for AVX2), chosen
// at run time by sara.cpp, plus the sddmm chunk plan both the kernel and the workspace query use. Arguments are
// already validated when these run.
#pragma once
#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "fastnorm/sara.h"

namespace fastnorm {
namespace sara {

// sddmm chunk plan (specs/sara.md §3.3): nc = the largest multiple of 16 <= 256 (and <= N rounded up to 16) whose
// packed X^T panel (cols x nc in the accumulation type) fits the per-thread cap; 0 selects the panel-free path.
// Each thread packs its own panel (no barrier per chunk: on a loaded machine a barrier costs a scheduling
// quantum, measured at ~18 ms per chunk with 2 threads at load 8), so the workspace is threads x (cols + 1) x nc.
// Per-thread cap: min(8 MiB, max(k * sizeof(w), min(128 KiB, rows * cols * sizeof(w) / 4))) -- the spec's
// min(k * sizeof(w), 8 MiB) with a floor of 128 KiB (at most a quarter of the dense weight) so that small layers at
// low density keep the streaming panel path. nc depends only on shapes, k and dtype, never on the thread count,
// so results are bitwise independent of it.
struct SddmmPlan {
  int64_t nc = 0;
  int threads = 1;
  size_t panel_elems = 0;  // cols * nc
  size_t workspace = 0;    // bytes: threads * (panel + nc)
};

inline int sara_threads(int requested) { return requested > 0 ? requested : omp_get_max_threads(); }

inline SddmmPlan sddmm_plan(const SaraSddmmParams& p) {
  SddmmPlan s;
  s.threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(sara_threads(p.num_threads), p.k / 256)));
  if (p.k <= 0 || p.n <= 0 || p.cols <= 0) return s;
  const size_t sw = dtype_size(p.dtype);
  const size_t sa = p.dtype == DType::Float64 ? 8 : 4;
  const size_t dense = static_cast<size_t>(p.rows) * static_cast<size_t>(p.cols) * sw;
  const size_t floor_b = std::min<size_t>(size_t(128) << 10, dense / 4);
  const size_t cap = std::min<size_t>(size_t(8) << 20, std::max<size_t>(static_cast<size_t>(p.k) * sw, floor_b));
  int64_t nc = static_cast<int64_t>(cap / (static_cast<size_t>(p.cols) * sa)) / 16 * 16;
  nc = std::min<int64_t>(nc, 256);
  nc = std::min<int64_t>(nc, (p.n + 15) / 16 * 16);
  if (nc < 16) return s;
  s.nc = nc;
  s.panel_elems = static_cast<size_t>(p.cols) * static_cast<size_t>(nc);
  s.workspace = static_cast<size_t>(s.threads) * (s.panel_elems + static_cast<size_t>(nc)) * sa;
  return s;
}

namespace baseline {
Status sddmm(const SaraSddmmParams& p);
Status conv2d_sddmm(const SaraConv2dSddmmParams& p);
Status spmm(const SaraSpmmParams& p);
}  // namespace baseline
namespace avx2 {
Status sddmm(const SaraSddmmParams& p);
Status conv2d_sddmm(const SaraConv2dSddmmParams& p);
Status spmm(const SaraSpmmParams& p);
}  // namespace avx2

}  // namespace sara
}  // namespace fastnorm

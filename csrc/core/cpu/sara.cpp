// CPU entry points of the SaRA family (specs/sara.md §3.1-§3.5): argument validation (shared with the CUDA
// entry points through sara_validate.h), the selection kernels (histogram, two-phase compaction), CSR row
// offsets, the write-through scatter and the fused AdamW step. The data-parallel GEMM-like kernels (sddmm,
// conv sddmm, spmm) live in sara_kernels.cpp, built once per ISA.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "fastnorm/detail/sara_math.h"
#include "fastnorm/sara.h"
#include "isa.h"
#include "sara_kernels.h"
#include "sara_validate.h"

namespace fastnorm {
namespace sara {
namespace {

using fastnorm::detail::Conv;
using namespace fastnorm::sara::detail;

int threads_for(int requested, int64_t work, int64_t grain) {
  int t = requested > 0 ? requested : omp_get_max_threads();
  const int64_t by_work = std::max<int64_t>(1, work / std::max<int64_t>(grain, 1));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(t, by_work)));
}

// Calls f(T*) with the weight's storage type.
template <typename F> void with_float(DType t, F&& f) {
  switch (t) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::BFloat16: f(bf16_t{}); break;
    case DType::Float16: f(f16_t{}); break;
    default: break;
  }
}

// ---- histogram -------------------------------------------------------------------------------------------
template <typename T> void histogram_impl(const SaraHistogramParams& p) {
  const T* w = static_cast<const T*>(p.weight);
  const int nt = threads_for(p.num_threads, p.numel, 1 << 16);
  std::vector<int64_t> local(static_cast<size_t>(nt) * 256, 0);
#pragma omp parallel num_threads(nt)
  {
    int64_t* h = local.data() + 256 * omp_get_thread_num();
#pragma omp for schedule(static)
    for (int64_t i = 0; i < p.numel; ++i) {
      const uint64_t k = KeyTraits<T>::key(w[i]);
      if (k <= KeyTraits<T>::kInf && (k & p.prefix_mask) == p.prefix) ++h[(k >> p.shift) & 255u];
    }
  }
  for (int t = 0; t < nt; ++t)
    for (int d = 0; d < 256; ++d) p.hist[d] += local[static_cast<size_t>(t) * 256 + d];
}

// ---- selection -------------------------------------------------------------------------------------------
constexpr int64_t kSelectBlock = 1 << 16;

template <typename T> void select_count_impl(const SaraSelectParams& p) {
  const T* w = static_cast<const T*>(p.weight);
  const int64_t nb = sara_select_blocks(p.numel);
  const bool has_eq = p.eq_quota > 0;
  const int nt = threads_for(p.num_threads, p.numel, kSelectBlock);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    int64_t lt = 0, eq = 0;
    const int64_t e = std::min(p.numel, (b + 1) * kSelectBlock);
    for (int64_t i = b * kSelectBlock; i < e; ++i) {
      const int c = select_class(w[i], p.key_lt, p.key_eq, has_eq);
      lt += c == 0;
      eq += c == 1;
    }
    p.block_counts[2 * b] = lt;
    p.block_counts[2 * b + 1] = eq;
  }
}

template <typename T, typename I> void select_write_impl(const SaraSelectParams& p) {
  const T* w = static_cast<const T*>(p.weight);
  I* idx = static_cast<I*>(p.indices);
  T* base = static_cast<T*>(p.base);
  const int64_t nb = sara_select_blocks(p.numel);
  const bool has_eq = p.eq_quota > 0;
  // Exclusive prefixes: where each block writes, and how many equal keys came before it.
  std::vector<int64_t> out_off(static_cast<size_t>(nb)), eq_before(static_cast<size_t>(nb));
  int64_t off = 0, eqs = 0;
  for (int64_t b = 0; b < nb; ++b) {
    out_off[b] = off;
    eq_before[b] = eqs;
    const int64_t taken = std::max<int64_t>(0, std::min(p.block_counts[2 * b + 1], p.eq_quota - eqs));
    off += p.block_counts[2 * b] + taken;
    eqs += p.block_counts[2 * b + 1];
  }
  const int nt = threads_for(p.num_threads, p.numel, kSelectBlock);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t b = 0; b < nb; ++b) {
    int64_t o = out_off[b], eq_seen = eq_before[b];
    const int64_t e = std::min(p.numel, (b + 1) * kSelectBlock);
    for (int64_t i = b * kSelectBlock; i < e; ++i) {
      const int c = select_class(w[i], p.key_lt, p.key_eq, has_eq);
      bool take = c == 0;
      if (c == 1) take = eq_seen++ < p.eq_quota;
      if (take) {
        idx[o] = static_cast<I>(i);
        if (base) base[o] = w[i];
        ++o;
      }
    }
  }
}

// ---- row_ptr ---------------------------------------------------------------------------------------------
template <typename R> void row_ptr_impl(const SaraRowPtrParams& p) {
  R* rp = static_cast<R*>(p.row_ptr);
  int64_t j = 0;
  for (int64_t r = 0; r <= p.rows; ++r) {
    const int64_t bound = r * p.cols;  // first flat index of row r
    while (j < p.k && load_index(p.indices, p.index_dtype, j) < bound) ++j;
    rp[r] = static_cast<R>(j);
  }
}

// ---- scatter ---------------------------------------------------------------------------------------------
template <typename W, typename D, typename A> void scatter_impl(const SaraScatterParams& p) {
  W* w = static_cast<W*>(p.weight);
  const W* base = static_cast<const W*>(p.base);
  const D* delta = static_cast<const D*>(p.delta);
  const A alpha = static_cast<A>(p.alpha);
  const int nt = threads_for(p.num_threads, p.k, 1 << 15);
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t j = 0; j < p.k; ++j) {
    const int64_t o = strided_offset(load_index(p.indices, p.index_dtype, j), p.layout);
    const W src = base ? base[j] : w[o];
    w[o] = merged_value<W, A>(src, alpha, static_cast<A>(Conv<D>::load(delta[j])));
  }
}

// ---- AdamW -----------------------------------------------------------------------------------------------
template <typename A, typename W> void adamw_tensor(const SaraAdamWTensor& t, const AdamWScalars<A>& s, bool absolute,
                                                    int64_t b, int64_t e) {
  A* d = static_cast<A*>(t.delta.ptr);
  A* m = static_cast<A*>(t.exp_avg.ptr);
  A* v = static_cast<A*>(t.exp_avg_sq.ptr);
  const A* g = static_cast<const A*>(t.grad.ptr);
  W* w = static_cast<W*>(t.weight.ptr);
  const W* base = static_cast<const W*>(t.base.ptr);
  for (int64_t j = b; j < e; ++j) {
    const A bv = static_cast<A>(Conv<W>::load(base[j]));
    const AdamWElem<A> r = adamw_element<A>(d[j], m[j], v[j], g[j], bv, s, absolute);
    d[j] = r.d;
    m[j] = r.m;
    v[j] = r.v;
    const int64_t o = strided_offset(load_index(t.indices.ptr, t.indices.dtype, j), t.weight_layout);
    w[o] = merged_value<W, A>(base[j], s.alpha, r.d);
  }
}

template <typename A, typename W> void adamw_impl(const SaraAdamWParams& p) {
  const AdamWScalars<A> s = adamw_scalars<A>(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.bias_correction1,
                                             p.bias_correction2, p.alpha);
  // (tensor, begin, end) chunks of 16384 entries spread over threads.
  struct Chunk { int64_t t, b, e; };
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (int64_t i = 0; i < p.n_tensors; ++i) {
    const int64_t k = p.tensors[i].delta.numel;
    for (int64_t b = 0; b < k; b += 16384) chunks.push_back({i, b, std::min(k, b + 16384)});
    total += k;
  }
  const int nt = threads_for(p.num_threads, total, 32768);
  const int64_t nc = static_cast<int64_t>(chunks.size());
#pragma omp parallel for num_threads(nt) schedule(static)
  for (int64_t c = 0; c < nc; ++c) adamw_tensor<A, W>(p.tensors[chunks[c].t], s, p.decay_absolute, chunks[c].b, chunks[c].e);
}

}  // namespace

// ---- entry points ----------------------------------------------------------------------------------------
int64_t sara_select_blocks(int64_t numel) { return numel <= 0 ? 0 : (numel + kSelectBlock - 1) / kSelectBlock; }

Status sara_abs_histogram(const SaraHistogramParams& p) {
  Status s = validate_histogram(p);
  if (!s.ok() || p.numel == 0) return s;
  with_float(p.dtype, [&](auto t) { histogram_impl<decltype(t)>(p); });
  return Status::OK();
}

Status sara_select_count(const SaraSelectParams& p, int64_t* count) {
  Status s = validate_select(p, false);
  if (!s.ok()) return s;
  if (count == nullptr) return invalid_argument("sara_select: argument 'count' must not be null, got null");
  *count = 0;
  if (p.numel == 0) return Status::OK();
  if (p.block_counts == nullptr) return invalid_argument("sara_select: argument 'block_counts' must not be null, got null");
  with_float(p.dtype, [&](auto t) { select_count_impl<decltype(t)>(p); });
  int64_t total = 0, eqs = 0;
  for (int64_t b = 0, nb = sara_select_blocks(p.numel); b < nb; ++b) {
    total += p.block_counts[2 * b];
    eqs += p.block_counts[2 * b + 1];
  }
  *count = total + std::max<int64_t>(0, std::min(eqs, p.eq_quota));
  return Status::OK();
}

Status sara_select_write(const SaraSelectParams& p) {
  Status s = validate_select(p, true);
  if (!s.ok() || p.numel == 0) return s;
  with_float(p.dtype, [&](auto t) {
    using T = decltype(t);
    if (p.index_dtype == DType::Int64) select_write_impl<T, int64_t>(p);
    else select_write_impl<T, int32_t>(p);
  });
  return Status::OK();
}

Status sara_row_ptr(const SaraRowPtrParams& p) {
  Status s = validate_row_ptr(p);
  if (!s.ok()) return s;
  s = check_indices_host("sara_row_ptr", p.indices, p.index_dtype, p.k, p.rows * p.cols);
  if (!s.ok()) return s;
  if (p.row_ptr_dtype == DType::Int64) row_ptr_impl<int64_t>(p);
  else row_ptr_impl<int32_t>(p);
  return Status::OK();
}

Status sara_scatter(const SaraScatterParams& p) {
  Status s = validate_scatter(p);
  if (!s.ok()) return s;
  s = check_indices_host("sara_scatter_", p.indices, p.index_dtype, p.k, p.weight_numel);
  if (!s.ok() || p.k == 0) return s;
  with_float(p.weight_dtype, [&](auto wt) {
    using W = decltype(wt);
    with_float(p.delta_dtype, [&](auto dt) {
      using D = decltype(dt);
      if (p.weight_dtype == DType::Float64) scatter_impl<W, D, double>(p);
      else scatter_impl<W, D, float>(p);
    });
  });
  return Status::OK();
}

Status sara_adamw_step(const SaraAdamWParams& p) {
  Status s = validate_adamw(p);
  if (!s.ok()) return s;
  for (int64_t i = 0; i < p.n_tensors; ++i) {
    const SaraAdamWTensor& t = p.tensors[i];
    s = check_indices_host("sara_adamw_step_", t.indices.ptr, t.indices.dtype, t.indices.numel, t.weight.numel);
    if (!s.ok()) return s;
  }
  if (p.n_tensors == 0) return s;
  const DType A = p.tensors[0].delta.dtype, W = p.tensors[0].weight.dtype;
  with_float(W, [&](auto wt) {
    using WT = decltype(wt);
    if (A == DType::Float64) adamw_impl<double, WT>(p);
    else adamw_impl<float, WT>(p);
  });
  return Status::OK();
}

size_t sara_sddmm_workspace_bytes(const SaraSddmmParams& p) { return sddmm_plan(p).workspace; }
int64_t sara_sddmm_chunk(const SaraSddmmParams& p) { return sddmm_plan(p).nc; }

Status sara_sddmm(const SaraSddmmParams& p) {
  Status s = validate_sddmm(p);
  if (!s.ok()) return s;
  s = check_indices_host("sara_sddmm", p.indices, p.index_dtype, p.k, p.rows * p.cols);
  if (!s.ok()) return s;
  if (p.row_ptr) {
    s = check_row_ptr_host("sara_sddmm", p.row_ptr, p.row_ptr_dtype, p.rows, p.indices, p.index_dtype, p.k, p.cols);
    if (!s.ok()) return s;
  }
  const SddmmPlan plan = sddmm_plan(p);
  if (plan.workspace > 0 && (p.workspace == nullptr || p.workspace_size < plan.workspace))
    return invalid_argument("sara_sddmm: argument 'workspace' must hold " + std::to_string(plan.workspace) +
                            " bytes, got " + std::to_string(p.workspace == nullptr ? 0 : p.workspace_size));
  if (p.k == 0) return Status::OK();
  return FASTNORM_DISPATCH_ISA(sddmm, p);
}

size_t sara_conv2d_sddmm_workspace_bytes(const SaraConv2dSddmmParams&) { return 0; }

Status sara_conv2d_sddmm(const SaraConv2dSddmmParams& p) {
  Status s = validate_conv(p);
  if (!s.ok()) return s;
  const int64_t cols = p.in_channels / p.groups * p.kh * p.kw;
  s = check_indices_host("sara_conv2d_sddmm", p.indices, p.index_dtype, p.k, p.out_channels * cols);
  if (!s.ok()) return s;
  if (p.row_ptr) {
    s = check_row_ptr_host("sara_conv2d_sddmm", p.row_ptr, p.row_ptr_dtype, p.out_channels, p.indices, p.index_dtype,
                           p.k, cols);
    if (!s.ok()) return s;
  }
  if (p.k == 0) return Status::OK();
  return FASTNORM_DISPATCH_ISA(conv2d_sddmm, p);
}

size_t sara_spmm_workspace_bytes(const SaraSpmmParams&) { return 0; }  // CPU: sorts in host memory

Status sara_spmm(const SaraSpmmParams& p) {
  Status s = validate_spmm(p);
  if (!s.ok()) return s;
  s = check_indices_host("sara_spmm", p.indices, p.index_dtype, p.k, p.rows * p.cols);
  if (!s.ok()) return s;
  if (p.row_ptr) {
    s = check_row_ptr_host("sara_spmm", p.row_ptr, p.row_ptr_dtype, p.rows, p.indices, p.index_dtype, p.k, p.cols);
    if (!s.ok()) return s;
  }
  return FASTNORM_DISPATCH_ISA(spmm, p);
}

}  // namespace sara
}  // namespace fastnorm

// SaRA CUDA kernels (specs/sara.md §3.1-§3.5, "CUDA kernel v1"). Compiled for sm_90a in CI; not yet run on a GPU
// at the time of writing (tests/python/test_sara_ops.py carries the @cuda comparisons against the CPU kernels).
//
// sddmm v1: grid (ceil(cols/64), ceil(rows/64), S); one 256-thread block per 64x64 weight tile. The tile's entries
// come from row_ptr plus a per-row binary search of the column window; empty tiles exit; each thread holds <= 16
// entries in registers. N is consumed in chunks of 32 through shared tiles dY[32][64 rows] and X[32][64 cols]
// (fp32; fp64 for fp64), each entry accumulating its dot in a register. With fewer tiles than 2 x SMs, N is split
// S ways and the partial dots are added with atomicAdd into a zeroed output; `deterministic` forces S = 1, whose
// result depends only on the inputs. No global scratch beyond row_ptr.
// conv2d v1: one warp per entry over N = B*Ho*Wo (lane-strided, fixed shuffle tree), padding skipped by bounds checks:
// deterministic, no scratch.
// Every index read is clamped into range, so bad indices cannot fault (specs/sara.md §5).
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "../cpu/sara_validate.h"
#include "fastnorm/detail/sara_math.h"
#include "fastnorm/sara_cuda.h"

namespace fastnorm {
namespace sara {
namespace cuda {
namespace {

using fastnorm::detail::Conv;
using namespace fastnorm::sara::detail;

template <typename T> using Acc = decltype(Conv<T>::load(T{}));

Status cuda_error(const char* op, const char* what, cudaError_t e) {
  (void)cudaGetLastError();
  return Status(StatusCode::CudaError, std::string(op) + " (cuda): " + what + ": " + cudaGetErrorString(e));
}
Status check_launch(const char* op, const char* what) {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? Status::OK() : cuda_error(op, what, e);
}

__device__ __forceinline__ int64_t clamp_i(int64_t v, int64_t hi) { return v < 0 ? 0 : (v >= hi ? hi - 1 : v); }

template <typename T> __device__ __forceinline__ T ld(const T* p) { return *p; }

// ---- histogram -------------------------------------------------------------------------------------------
template <typename T>
__global__ void histogram_kernel(const T* __restrict__ w, int64_t n, unsigned long long* __restrict__ hist, int shift,
                                 uint64_t mask, uint64_t prefix) {
  __shared__ unsigned int h[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) h[i] = 0;
  __syncthreads();
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const uint64_t k = KeyTraits<T>::key(w[i]);
    if (k <= KeyTraits<T>::kInf && (k & mask) == prefix) atomicAdd(&h[(k >> shift) & 255u], 1u);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < 256; i += blockDim.x)
    if (h[i]) atomicAdd(&hist[i], static_cast<unsigned long long>(h[i]));
}

// ---- selection -------------------------------------------------------------------------------------------
constexpr int64_t kSelBlock = 1 << 16;  // must equal the CPU compaction block (sara_select_blocks)
constexpr int kSelThreads = 256;

template <typename T>
__global__ void select_count_kernel(const T* __restrict__ w, int64_t n, uint64_t klt, uint64_t keq, bool has_eq,
                                    long long* __restrict__ counts) {
  const int64_t b = blockIdx.x, beg = b * kSelBlock, end = min(n, beg + kSelBlock);
  unsigned int lt = 0, eq = 0;
  for (int64_t i = beg + threadIdx.x; i < end; i += blockDim.x) {
    const int c = select_class(w[i], klt, keq, has_eq);
    lt += c == 0;
    eq += c == 1;
  }
  __shared__ unsigned int s_lt[kSelThreads / 32], s_eq[kSelThreads / 32];
  for (int o = 16; o > 0; o >>= 1) {
    lt += __shfl_down_sync(0xffffffffu, lt, o);
    eq += __shfl_down_sync(0xffffffffu, eq, o);
  }
  if ((threadIdx.x & 31) == 0) { s_lt[threadIdx.x >> 5] = lt; s_eq[threadIdx.x >> 5] = eq; }
  __syncthreads();
  if (threadIdx.x == 0) {
    long long a = 0, e = 0;
    for (int i = 0; i < kSelThreads / 32; ++i) { a += s_lt[i]; e += s_eq[i]; }
    counts[2 * b] = a;
    counts[2 * b + 1] = e;
  }
}

// Order-preserving compaction of one block of kSelBlock elements in tiles of 256: warp ballots give each thread
// the number of taken entries before it, equal keys are ranked the same way against the block's eq budget.
template <typename T, typename I>
__global__ void select_write_kernel(const T* __restrict__ w, int64_t n, uint64_t klt, uint64_t keq, bool has_eq,
                                    int64_t quota, const long long* __restrict__ offs, I* __restrict__ idx,
                                    T* __restrict__ base) {
  const int64_t b = blockIdx.x, beg = b * kSelBlock, end = min(n, beg + kSelBlock);
  int64_t out = offs[2 * b], eq_seen = offs[2 * b + 1];
  __shared__ unsigned int s_take[kSelThreads / 32], s_eq[kSelThreads / 32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const unsigned lower = (1u << lane) - 1u;
  for (int64_t t0 = beg; t0 < end; t0 += kSelThreads) {
    const int64_t i = t0 + threadIdx.x;
    const int c = i < end ? select_class(w[i], klt, keq, has_eq) : 2;
    // Rank of this thread's equal key within the tile.
    const unsigned eq_b = __ballot_sync(0xffffffffu, c == 1);
    if (lane == 0) s_eq[warp] = __popc(eq_b);
    __syncthreads();
    int64_t eq_before = eq_seen + __popc(eq_b & lower);
    int eq_tile = 0;
    for (int q = 0; q < kSelThreads / 32; ++q) {
      if (q < warp) eq_before += s_eq[q];
      eq_tile += s_eq[q];
    }
    const bool take = c == 0 || (c == 1 && eq_before < quota);
    const unsigned tk_b = __ballot_sync(0xffffffffu, take);
    if (lane == 0) s_take[warp] = __popc(tk_b);
    __syncthreads();
    int64_t pos = out + __popc(tk_b & lower);
    int tk_tile = 0;
    for (int q = 0; q < kSelThreads / 32; ++q) {
      if (q < warp) pos += s_take[q];
      tk_tile += s_take[q];
    }
    if (take) {
      idx[pos] = static_cast<I>(i);
      if (base) base[pos] = w[i];
    }
    out += tk_tile;
    eq_seen += eq_tile;
    __syncthreads();  // s_eq / s_take are rewritten by the next tile
  }
}

// ---- row_ptr ---------------------------------------------------------------------------------------------
template <typename I, typename R>
__global__ void row_ptr_kernel(const I* __restrict__ idx, int64_t k, int64_t rows, int64_t cols, R* __restrict__ rp) {
  const int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (r > rows) return;
  rp[r] = static_cast<R>(lower_bound_index(idx, int64_t(0), k, r * cols));
}

// ---- scatter ---------------------------------------------------------------------------------------------
template <typename W, typename D, typename A, typename I>
__global__ void scatter_kernel(W* __restrict__ w, int64_t numel, SaraLayout L, const I* __restrict__ idx, int64_t k,
                               const W* __restrict__ base, const D* __restrict__ delta, A alpha) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= k) return;
  const int64_t o = strided_offset(clamp_i(static_cast<int64_t>(idx[j]), numel), L);
  const W src = base ? base[j] : w[o];
  w[o] = merged_value<W, A>(src, alpha, static_cast<A>(Conv<D>::load(delta[j])));
}

// ---- sddmm -----------------------------------------------------------------------------------------------
constexpr int kTile = 64, kChunkN = 32, kThreads = 256, kPerThread = kTile * kTile / kThreads;  // 16

template <typename T, typename I, typename R>
__global__ void __launch_bounds__(kThreads) sddmm_kernel(const T* __restrict__ G, const T* __restrict__ X, int64_t n,
                                                         int64_t rows, int64_t cols, int64_t gs0, int64_t xs0,
                                                         const I* __restrict__ idx, int64_t k, const R* __restrict__ rp,
                                                         Acc<T>* __restrict__ out, int split) {
  using A = Acc<T>;
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile;
  __shared__ int s_lo[kTile], s_cnt[kTile + 1];
  __shared__ A sG[kChunkN][kTile], sX[kChunkN][kTile + 1];
  // Per-row entry ranges of this tile's column window.
  if (threadIdx.x < kTile) {
    const int64_t r = r0 + threadIdx.x;
    int lo = 0, cnt = 0;
    int64_t a = 0;
    if (r < rows) {
      const int64_t rb = clamp_i(static_cast<int64_t>(rp[r]), k + 1), re = clamp_i(static_cast<int64_t>(rp[r + 1]), k + 1);
      a = lower_bound_index(idx, rb, re, r * cols + c0);
      const int64_t e = lower_bound_index(idx, a, re, r * cols + min(c0 + kTile, cols));
      cnt = static_cast<int>(e - a);
    }
    lo = 0;
    s_lo[threadIdx.x] = lo;
    s_cnt[threadIdx.x + 1] = cnt;
    // Stash the start entry in s_lo as an offset from the row's start (entries < 2^31 per tile row: <= 64).
    reinterpret_cast<long long*>(sG)[threadIdx.x] = a;  // sG is free until the first chunk
  }
  __syncthreads();
  __shared__ long long s_first[kTile];
  if (threadIdx.x == 0) {
    s_cnt[0] = 0;
    for (int i = 0; i < kTile; ++i) s_cnt[i + 1] += s_cnt[i];  // inclusive prefix: tile entry offsets
  }
  if (threadIdx.x < kTile) s_first[threadIdx.x] = reinterpret_cast<long long*>(sG)[threadIdx.x];
  __syncthreads();
  const int total = s_cnt[kTile];
  if (total == 0) return;  // empty tile (uniform across the block)
  // This thread's entries: tile entries t, t + 256, ... (at most 16).
  int my_r[kPerThread], my_c[kPerThread];
  int64_t my_j[kPerThread];
  A acc[kPerThread];
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    const int t = threadIdx.x + e * kThreads;
    my_j[e] = -1;
    my_r[e] = 0;
    my_c[e] = 0;
    acc[e] = A(0);
    if (t < total) {
      int lo = 0, hi = kTile - 1;  // the row whose [s_cnt[row], s_cnt[row+1]) holds t
      while (lo < hi) {
        const int mid = (lo + hi + 1) >> 1;
        if (s_cnt[mid] <= t) lo = mid; else hi = mid - 1;
      }
      const int64_t j = s_first[lo] + (t - s_cnt[lo]);
      my_j[e] = j;
      my_r[e] = lo;
      my_c[e] = static_cast<int>(clamp_i(static_cast<int64_t>(idx[j]) - (r0 + lo) * cols - c0, kTile));
    }
  }
  (void)s_lo;
  // N range of this split.
  const int64_t chunks = (n + kChunkN - 1) / kChunkN;
  const int64_t cb = chunks * blockIdx.z / split, ce = chunks * (blockIdx.z + 1) / split;
  for (int64_t ch = cb; ch < ce; ++ch) {
    const int64_t n0 = ch * kChunkN;
    __syncthreads();
    // Coalesced loads: 32 rows of 64 consecutive elements each for dY and X (zero outside the matrix).
    for (int q = threadIdx.x; q < kChunkN * kTile; q += kThreads) {
      const int i = q / kTile, col = q % kTile;
      const int64_t nn = n0 + i;
      const bool okn = nn < n;
      sG[i][col] = (okn && r0 + col < rows) ? static_cast<A>(Conv<T>::load(G[nn * gs0 + r0 + col])) : A(0);
      sX[i][col] = (okn && c0 + col < cols) ? static_cast<A>(Conv<T>::load(X[nn * xs0 + c0 + col])) : A(0);
    }
    __syncthreads();
#pragma unroll
    for (int e = 0; e < kPerThread; ++e) {
      if (my_j[e] < 0) continue;
      A s = acc[e];
#pragma unroll 8
      for (int i = 0; i < kChunkN; ++i) s = fma_rn(sG[i][my_r[e]], sX[i][my_c[e]], s);
      acc[e] = s;
    }
  }
#pragma unroll
  for (int e = 0; e < kPerThread; ++e) {
    if (my_j[e] < 0) continue;
    if (split == 1) out[my_j[e]] = acc[e];
    else atomicAdd(&out[my_j[e]], acc[e]);
  }
}

// ---- conv2d: one warp per entry --------------------------------------------------------------------------
template <typename T, typename I>
__global__ void conv_kernel(SaraConv2dSddmmParams p, const T* __restrict__ G, const T* __restrict__ X,
                            const I* __restrict__ idx, Acc<T>* __restrict__ out) {
  using A = Acc<T>;
  const int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= p.k) return;
  const int64_t cg = p.in_channels / p.groups, og = p.out_channels / p.groups, cols = cg * p.kh * p.kw;
  const int64_t f = clamp_i(static_cast<int64_t>(idx[warp]), p.out_channels * cols);
  const int64_t o = f / cols;
  const ConvCol cc = decode_conv_col(f - o * cols, p.kh, p.kw);
  const int64_t ci = (o / og) * cg + cc.c;
  const int64_t hw = p.out_height * p.out_width, N = p.batch * hw;
  A s = A(0);
  for (int64_t nn = lane; nn < N; nn += 32) {
    const int64_t b = nn / hw, rem = nn - b * hw, y = rem / p.out_width, x = rem - y * p.out_width;
    const int64_t iy = y * p.stride_h + cc.p * p.dil_h - p.pad_h, ix = x * p.stride_w + cc.q * p.dil_w - p.pad_w;
    if (iy < 0 || iy >= p.height || ix < 0 || ix >= p.width) continue;
    const A g = static_cast<A>(Conv<T>::load(G[b * p.go_s[0] + o * p.go_s[1] + y * p.go_s[2] + x * p.go_s[3]]));
    const A v = static_cast<A>(Conv<T>::load(X[b * p.in_s[0] + ci * p.in_s[1] + iy * p.in_s[2] + ix * p.in_s[3]]));
    s = fma_rn(g, v, s);
  }
  for (int d = 16; d > 0; d >>= 1) s += __shfl_down_sync(0xffffffffu, s, d);
  if (lane == 0) out[warp] = s;
}

// ---- AdamW -----------------------------------------------------------------------------------------------
template <typename A, typename W, typename I>
__global__ void adamw_kernel(SaraAdamWTensor t, AdamWScalars<A> s, bool absolute) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= t.delta.numel) return;
  A* d = static_cast<A*>(t.delta.ptr);
  A* m = static_cast<A*>(t.exp_avg.ptr);
  A* v = static_cast<A*>(t.exp_avg_sq.ptr);
  const A* g = static_cast<const A*>(t.grad.ptr);
  W* w = static_cast<W*>(t.weight.ptr);
  const W* base = static_cast<const W*>(t.base.ptr);
  const I* idx = static_cast<const I*>(t.indices.ptr);
  const A bv = static_cast<A>(Conv<W>::load(base[j]));
  const AdamWElem<A> r = adamw_element<A>(d[j], m[j], v[j], g[j], bv, s, absolute);
  d[j] = r.d;
  m[j] = r.m;
  v[j] = r.v;
  const int64_t o = strided_offset(clamp_i(static_cast<int64_t>(idx[j]), t.weight.numel), t.weight_layout);
  w[o] = merged_value<W, A>(base[j], s.alpha, r.d);
}

// ---- spmm ------------------------------------------------------------------------------------------------
// S*D: one thread per (row, e): deterministic, no atomics.
template <typename A, typename I, typename R>
__global__ void spmm_rows_kernel(const I* __restrict__ idx, const A* __restrict__ val, const R* __restrict__ rp,
                                 int64_t rows, int64_t cols, int64_t k, int64_t l, const A* __restrict__ D,
                                 A* __restrict__ out) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= rows * l) return;
  const int64_t r = t / l, e = t - r * l;
  const int64_t b = clamp_i(static_cast<int64_t>(rp[r]), k + 1), en = clamp_i(static_cast<int64_t>(rp[r + 1]), k + 1);
  A s = A(0);
  for (int64_t j = b; j < en; ++j) {
    const int64_t c = clamp_i(static_cast<int64_t>(idx[j]) - r * cols, cols);
    s = fma_rn(val[j], D[c * l + e], s);
  }
  out[t] = s;
}

// S^T*D with atomics (non-deterministic order of the additions).
template <typename A, typename I>
__global__ void spmm_t_atomic_kernel(const I* __restrict__ idx, const A* __restrict__ val, int64_t rows, int64_t cols,
                                     int64_t k, int64_t l, const A* __restrict__ D, A* __restrict__ out) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= k * l) return;
  const int64_t j = t / l, e = t - j * l;
  const int64_t f = clamp_i(static_cast<int64_t>(idx[j]), rows * cols);
  const int64_t r = f / cols, c = f - r * cols;
  atomicAdd(&out[c * l + e], val[j] * D[r * l + e]);
}

// Deterministic S^T*D: a per-call counting sort by column. (1) column counts, (2) exclusive scan (one block),
// (3) scatter entry ids into their column segments, (4) sort each segment by entry id (stable order), (5) one
// thread per (column, e) sums its segment in entry order.
template <typename I>
__global__ void col_count_kernel(const I* __restrict__ idx, int64_t k, int64_t numel, int64_t cols,
                                 unsigned long long* __restrict__ cnt) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j < k) atomicAdd(&cnt[clamp_i(static_cast<int64_t>(idx[j]), numel) % cols], 1ull);
}
__global__ void col_scan_kernel(const unsigned long long* __restrict__ cnt, int64_t cols,
                                unsigned long long* __restrict__ start, unsigned long long* __restrict__ fill) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  unsigned long long run = 0;
  for (int64_t c = 0; c < cols; ++c) {
    start[c] = run;
    fill[c] = run;
    run += cnt[c];
  }
  start[cols] = run;
}
template <typename I>
__global__ void col_fill_kernel(const I* __restrict__ idx, int64_t k, int64_t numel, int64_t cols,
                                unsigned long long* __restrict__ fill, long long* __restrict__ perm) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j < k) perm[atomicAdd(&fill[clamp_i(static_cast<int64_t>(idx[j]), numel) % cols], 1ull)] = j;
}
__global__ void col_sort_kernel(const unsigned long long* __restrict__ start, int64_t cols, long long* __restrict__ perm) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= cols) return;
  const int64_t b = static_cast<int64_t>(start[c]), e = static_cast<int64_t>(start[c + 1]);
  for (int64_t i = b + 1; i < e; ++i) {  // insertion sort: segments are short (k / cols on average)
    const long long v = perm[i];
    int64_t q = i - 1;
    while (q >= b && perm[q] > v) { perm[q + 1] = perm[q]; --q; }
    perm[q + 1] = v;
  }
}
template <typename A, typename I>
__global__ void spmm_t_sorted_kernel(const I* __restrict__ idx, const A* __restrict__ val,
                                     const unsigned long long* __restrict__ start, const long long* __restrict__ perm,
                                     int64_t cols, int64_t k, int64_t l, const A* __restrict__ D, A* __restrict__ out) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= cols * l) return;
  const int64_t c = t / l, e = t - c * l;
  A s = A(0);
  for (int64_t q = static_cast<int64_t>(start[c]); q < static_cast<int64_t>(start[c + 1]); ++q) {
    const int64_t j = clamp_i(perm[q], k);
    const int64_t r = static_cast<int64_t>(idx[j]) / cols;
    s = fma_rn(val[j], D[r * l + e], s);
  }
  out[t] = s;
}

// ---- dispatch helpers --------------------------------------------------------------------------------------
template <typename F> void with_float(DType t, F&& f) {
  switch (t) {
    case DType::Float32: f(float{}); break;
    case DType::Float64: f(double{}); break;
    case DType::BFloat16: f(bf16_t{}); break;
    case DType::Float16: f(f16_t{}); break;
    default: break;
  }
}
template <typename F> void with_index(DType t, F&& f) {
  if (t == DType::Int64) f(int64_t{});
  else f(int32_t{});
}
inline unsigned blocks_for(int64_t n, int threads) {
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>((n + threads - 1) / threads, 1 << 30)));
}
int sm_count() {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess)
    return 80;
  return sms;
}

}  // namespace

// ---- entry points ----------------------------------------------------------------------------------------
Status sara_abs_histogram(const SaraHistogramParams& p, cudaStream_t stream) {
  Status s = validate_histogram(p);
  if (!s.ok() || p.numel == 0) return s;
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>((p.numel + 1023) / 1024, 4096));
  with_float(p.dtype, [&](auto t) {
    using T = decltype(t);
    histogram_kernel<T><<<grid, 256, 0, stream>>>(static_cast<const T*>(p.weight), p.numel,
                                                  reinterpret_cast<unsigned long long*>(p.hist), p.shift, p.prefix_mask,
                                                  p.prefix);
  });
  return check_launch("sara_abs_histogram_", "histogram_kernel");
}

Status sara_select_count(const SaraSelectParams& p, int64_t* count, cudaStream_t stream) {
  Status s = validate_select(p, false);
  if (!s.ok()) return s;
  if (count == nullptr) return invalid_argument("sara_select: argument 'count' must not be null, got null");
  *count = 0;
  if (p.numel == 0) return Status::OK();
  if (p.block_counts == nullptr) return invalid_argument("sara_select: argument 'block_counts' must not be null, got null");
  const int64_t nb = sara_select_blocks(p.numel);
  const bool has_eq = p.eq_quota > 0;
  with_float(p.dtype, [&](auto t) {
    using T = decltype(t);
    select_count_kernel<T><<<static_cast<unsigned>(nb), kSelThreads, 0, stream>>>(
        static_cast<const T*>(p.weight), p.numel, p.key_lt, p.key_eq, has_eq, reinterpret_cast<long long*>(p.block_counts));
  });
  s = check_launch("sara_select", "select_count_kernel");
  if (!s.ok()) return s;
  // The one host sync of the op: the count sizes its output. Offsets go back to the device for the write.
  std::vector<long long> h(static_cast<size_t>(2 * nb));
  cudaError_t e = cudaMemcpyAsync(h.data(), p.block_counts, h.size() * 8, cudaMemcpyDeviceToHost, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);
  if (e != cudaSuccess) return cuda_error("sara_select", "copy of block counts", e);
  long long off = 0, eqs = 0;
  for (int64_t b = 0; b < nb; ++b) {
    const long long lt = h[2 * b], eq = h[2 * b + 1];
    const long long taken = std::max<long long>(0, std::min<long long>(eq, p.eq_quota - eqs));
    h[2 * b] = off;
    h[2 * b + 1] = eqs;
    off += lt + taken;
    eqs += eq;
  }
  e = cudaMemcpyAsync(p.block_counts, h.data(), h.size() * 8, cudaMemcpyHostToDevice, stream);
  if (e == cudaSuccess) e = cudaStreamSynchronize(stream);  // h is pageable host memory: finish before it dies
  if (e != cudaSuccess) return cuda_error("sara_select", "copy of block offsets", e);
  *count = off;
  return Status::OK();
}

Status sara_select_write(const SaraSelectParams& p, cudaStream_t stream) {
  Status s = validate_select(p, true);
  if (!s.ok() || p.numel == 0) return s;
  const int64_t nb = sara_select_blocks(p.numel);
  const bool has_eq = p.eq_quota > 0;
  with_float(p.dtype, [&](auto t) {
    using T = decltype(t);
    with_index(p.index_dtype, [&](auto it) {
      using I = decltype(it);
      select_write_kernel<T, I><<<static_cast<unsigned>(nb), kSelThreads, 0, stream>>>(
          static_cast<const T*>(p.weight), p.numel, p.key_lt, p.key_eq, has_eq, p.eq_quota,
          reinterpret_cast<const long long*>(p.block_counts), static_cast<I*>(p.indices), static_cast<T*>(p.base));
    });
  });
  return check_launch("sara_select", "select_write_kernel");
}

Status sara_row_ptr(const SaraRowPtrParams& p, cudaStream_t stream) {
  Status s = validate_row_ptr(p);
  if (!s.ok()) return s;
  with_index(p.index_dtype, [&](auto it) {
    using I = decltype(it);
    auto go = [&](auto rt) {
      using R = decltype(rt);
      row_ptr_kernel<I, R><<<blocks_for(p.rows + 1, 256), 256, 0, stream>>>(static_cast<const I*>(p.indices), p.k,
                                                                           p.rows, p.cols, static_cast<R*>(p.row_ptr));
    };
    if (p.row_ptr_dtype == DType::Int64) go(int64_t{});
    else go(int32_t{});
  });
  return check_launch("sara_row_ptr", "row_ptr_kernel");
}

Status sara_scatter(const SaraScatterParams& p, cudaStream_t stream) {
  Status s = validate_scatter(p);
  if (!s.ok() || p.k == 0) return s;
  with_float(p.weight_dtype, [&](auto wt) {
    using W = decltype(wt);
    with_float(p.delta_dtype, [&](auto dt) {
      using D = decltype(dt);
      with_index(p.index_dtype, [&](auto it) {
        using I = decltype(it);
        using A = typename std::conditional<std::is_same<W, double>::value, double, float>::type;
        scatter_kernel<W, D, A, I><<<blocks_for(p.k, 256), 256, 0, stream>>>(
            static_cast<W*>(p.weight), p.weight_numel, p.layout, static_cast<const I*>(p.indices), p.k,
            static_cast<const W*>(p.base), static_cast<const D*>(p.delta), static_cast<A>(p.alpha));
      });
    });
  });
  return check_launch("sara_scatter_", "scatter_kernel");
}

Status sara_sddmm(const SaraSddmmParams& p, cudaStream_t stream) {
  Status s = validate_sddmm(p);
  if (!s.ok()) return s;
  if (p.k == 0) return Status::OK();
  if (p.row_ptr == nullptr) return invalid_argument("sara_sddmm (cuda): argument 'row_ptr' must not be null, got null");
  if (p.go_s1 != 1 || p.in_s1 != 1)
    return invalid_argument("sara_sddmm (cuda): argument 'input' must have last-dim stride 1 (the binding copies), got " +
                            std::to_string(p.in_s1) + " and grad_out " + std::to_string(p.go_s1));
  const size_t acc = p.dtype == DType::Float64 ? 8 : 4;
  const int64_t tx = (p.cols + kTile - 1) / kTile, ty = (p.rows + kTile - 1) / kTile;
  if (ty > 65535) return unsupported("sara_sddmm (cuda): argument 'grad_out' must have < 65535*64 rows, got " +
                                     std::to_string(p.rows));
  int split = 1;
  const int64_t tiles = tx * ty, chunks = (p.n + kChunkN - 1) / kChunkN;
  if (!p.deterministic && tiles < 2 * sm_count())
    split = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({(2 * sm_count() + tiles - 1) / tiles, chunks, 64})));
  if (split > 1 || p.n == 0) {
    const cudaError_t e = cudaMemsetAsync(p.out, 0, static_cast<size_t>(p.k) * acc, stream);
    if (e != cudaSuccess) return cuda_error("sara_sddmm", "memset", e);
    if (p.n == 0) return Status::OK();
  }
  const dim3 grid(static_cast<unsigned>(tx), static_cast<unsigned>(ty), static_cast<unsigned>(split));
  with_float(p.dtype, [&](auto t) {
    using T = decltype(t);
    with_index(p.index_dtype, [&](auto it) {
      using I = decltype(it);
      auto go = [&](auto rt) {
        using R = decltype(rt);
        sddmm_kernel<T, I, R><<<grid, kThreads, 0, stream>>>(
            static_cast<const T*>(p.grad_out), static_cast<const T*>(p.input), p.n, p.rows, p.cols, p.go_s0, p.in_s0,
            static_cast<const I*>(p.indices), p.k, static_cast<const R*>(p.row_ptr), static_cast<Acc<T>*>(p.out), split);
      };
      if (p.row_ptr_dtype == DType::Int64) go(int64_t{});
      else go(int32_t{});
    });
  });
  return check_launch("sara_sddmm", "sddmm_kernel");
}

Status sara_conv2d_sddmm(const SaraConv2dSddmmParams& p, cudaStream_t stream) {
  Status s = validate_conv(p);
  if (!s.ok() || p.k == 0) return s;
  const unsigned grid = blocks_for(p.k * 32, 256);
  with_float(p.dtype, [&](auto t) {
    using T = decltype(t);
    with_index(p.index_dtype, [&](auto it) {
      using I = decltype(it);
      conv_kernel<T, I><<<grid, 256, 0, stream>>>(p, static_cast<const T*>(p.grad_out), static_cast<const T*>(p.input),
                                                   static_cast<const I*>(p.indices), static_cast<Acc<T>*>(p.out));
    });
  });
  return check_launch("sara_conv2d_sddmm", "conv_kernel");
}

Status sara_adamw_step(const SaraAdamWParams& p, cudaStream_t stream) {
  Status s = validate_adamw(p);
  if (!s.ok() || p.n_tensors == 0) return s;
  const DType A = p.tensors[0].delta.dtype, W = p.tensors[0].weight.dtype;
  for (int64_t i = 0; i < p.n_tensors; ++i) {
    const SaraAdamWTensor& t = p.tensors[i];
    if (t.delta.numel == 0) continue;
    with_float(W, [&](auto wt) {
      using WT = decltype(wt);
      with_index(t.indices.dtype, [&](auto it) {
        using I = decltype(it);
        if (A == DType::Float64) {
          const auto sc = adamw_scalars<double>(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.bias_correction1,
                                                p.bias_correction2, p.alpha);
          adamw_kernel<double, WT, I><<<blocks_for(t.delta.numel, 256), 256, 0, stream>>>(t, sc, p.decay_absolute);
        } else {
          const auto sc = adamw_scalars<float>(p.lr, p.beta1, p.beta2, p.eps, p.weight_decay, p.bias_correction1,
                                               p.bias_correction2, p.alpha);
          adamw_kernel<float, WT, I><<<blocks_for(t.delta.numel, 256), 256, 0, stream>>>(t, sc, p.decay_absolute);
        }
      });
    });
    s = check_launch("sara_adamw_step_", "adamw_kernel");
    if (!s.ok()) return s;
  }
  return Status::OK();
}

size_t sara_spmm_workspace_bytes_cuda(const SaraSpmmParams& p) {
  if (!(p.transpose && p.deterministic) || p.k == 0) return 0;
  return (static_cast<size_t>(p.k) + 3 * (static_cast<size_t>(p.cols) + 1)) * 8;
}

Status sara_spmm(const SaraSpmmParams& p, cudaStream_t stream) {
  Status s = validate_spmm(p);
  if (!s.ok()) return s;
  const int64_t out_rows = p.transpose ? p.cols : p.rows;
  const size_t es = p.dtype == DType::Float64 ? 8 : 4;
  if (out_rows * p.l == 0) return Status::OK();
  if (!p.transpose && p.row_ptr == nullptr)
    return invalid_argument("sara_spmm (cuda): argument 'row_ptr' must not be null, got null");
  const size_t ws = sara_spmm_workspace_bytes_cuda(p);
  if (ws > 0 && (p.workspace == nullptr || p.workspace_size < ws))
    return invalid_argument("sara_spmm (cuda): argument 'workspace' must hold " + std::to_string(ws) + " bytes, got " +
                            std::to_string(p.workspace_size));
  if (p.transpose && !(p.deterministic && p.k > 0)) {
    const cudaError_t e = cudaMemsetAsync(p.out, 0, static_cast<size_t>(out_rows * p.l) * es, stream);
    if (e != cudaSuccess) return cuda_error("sara_spmm", "memset", e);
    if (p.k == 0) return Status::OK();
  }
  const int64_t numel = p.rows * p.cols;
  with_index(p.index_dtype, [&](auto it) {
    using I = decltype(it);
    auto run = [&](auto at) {
      using A = decltype(at);
      const I* idx = static_cast<const I*>(p.indices);
      const A* val = static_cast<const A*>(p.values);
      const A* D = static_cast<const A*>(p.dense);
      A* out = static_cast<A*>(p.out);
      if (!p.transpose) {
        auto go = [&](auto rt) {
          using R = decltype(rt);
          spmm_rows_kernel<A, I, R><<<blocks_for(p.rows * p.l, 256), 256, 0, stream>>>(
              idx, val, static_cast<const R*>(p.row_ptr), p.rows, p.cols, p.k, p.l, D, out);
        };
        if (p.row_ptr_dtype == DType::Int64) go(int64_t{});
        else go(int32_t{});
      } else if (!p.deterministic) {
        spmm_t_atomic_kernel<A, I><<<blocks_for(p.k * p.l, 256), 256, 0, stream>>>(idx, val, p.rows, p.cols, p.k, p.l, D,
                                                                                     out);
      } else {
        auto* cnt = static_cast<unsigned long long*>(p.workspace);
        unsigned long long* start = cnt + (p.cols + 1);
        unsigned long long* fill = start + (p.cols + 1);
        long long* perm = reinterpret_cast<long long*>(fill + (p.cols + 1));
        if (cudaMemsetAsync(cnt, 0, static_cast<size_t>(p.cols + 1) * 8, stream) != cudaSuccess) return;
        col_count_kernel<I><<<blocks_for(p.k, 256), 256, 0, stream>>>(idx, p.k, numel, p.cols, cnt);
        col_scan_kernel<<<1, 1, 0, stream>>>(cnt, p.cols, start, fill);
        col_fill_kernel<I><<<blocks_for(p.k, 256), 256, 0, stream>>>(idx, p.k, numel, p.cols, fill, perm);
        col_sort_kernel<<<blocks_for(p.cols, 128), 128, 0, stream>>>(start, p.cols, perm);
        spmm_t_sorted_kernel<A, I><<<blocks_for(p.cols * p.l, 256), 256, 0, stream>>>(idx, val, start, perm, p.cols,
                                                                                        p.k, p.l, D, out);
      }
    };
    if (p.dtype == DType::Float64) run(double{});
    else run(float{});
  });
  return check_launch("sara_spmm", "spmm kernels");
}

}  // namespace cuda
}  // namespace sara
}  // namespace fastnorm

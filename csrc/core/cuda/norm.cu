// CUDA kernels of LayerNorm / RMSNorm and their fused residual add & norm forms (specs/norm.md §3.1-3.3, §7).
//
// Numerics are those of the CPU kernels (core/cpu/norm_kernels.cpp): the per-element formulas come from
// detail/norm_math.h, conversions from detail/dtype.h, accumulation is float (double for float64 x), every
// output is rounded once, and the build uses -fmad=false so no FMA contraction changes a rounding. Only
// the order of the sums differs from the CPU.
//
// Kernel plan
// -----------
// Dtypes. Every tensor operand (x, residual, weight/bias, y, residual_out, dy, dx, dresidual_out) carries
// its dtype at run time and is read or written through one `switch` on it per row and operand (not per
// element), so every dtype combination runs the same vectorised code. Kernels are templated only on the
// accumulation type A, the tile width VEC and the tiles per thread NV, a few dozen instantiations.
//
// Layout. A row is cut into tiles of VEC contiguous elements; the TPR threads of a row (TPR a power of
// two) own tiles tx, tx + TPR, ... (NV of them), so a warp touches consecutive pieces of the row.
// Fast path: VEC = 16 bytes / sizeof(x) (8 for 16-bit x, 4 for f32, 2 for f64), taken when N % VEC == 0
// and every operand's base pointer and row stride allow VEC-element vector accesses (checked once on the
// host). A tile is then wholly inside or wholly past the row and is moved by one vector access (16 bytes
// for x's dtype, 4-64 bytes for the others); the kernels contain no scalar paths, which keeps registers
// and code size down. Anything else (odd N such as 4095, views misaligned by an element, odd strides)
// takes the same chunked kernels instantiated with VEC = 1: element-wise but coalesced (a warp reads 32
// consecutive elements), correct for every layout. 64-bit offsets throughout.
//
// Forward, fast path, N <= 16384 (f16/bf16/f32) / 8192 (f64): `fwd_kernel`. The row stays in registers
// (NV*VEC <= 32 values of A per thread). Blocks hold max(TPR, 128) threads: short rows get TPR <= 32
// lanes (warp-shuffle reductions), longer rows TPR = 64..512 threads (shuffles, then the row's warps
// combined through shared memory). LayerNorm takes two passes over the registers (mean, then sum((x - mean)^2)),
// RMSNorm one (sum(x^2)).
// Forward, longer rows or the VEC = 1 path: `fwd_chunked_kernel`, one block per row walks the row in
// chunks of TPR*NV*VEC elements; pass 1 forms per-thread two-pass chunk moments, merged over chunks with
// Chan's formula (norm_math merge()) and across the block in a fixed tree; pass 2 re-reads the row (from
// L1/L2) and writes y.
// Add & norm: s = x + residual is summed in A, rounded to residual_out's dtype and stored; the norm is
// applied to the stored s (pass 2 of the chunked kernel re-reads it from residual_out).
//
// Backward, fast path, N <= 16384 (f16/bf16/f32) / 4096 (f64): `bwd_kernel`, deterministic and atomic-free.
// The grid is nb = bwd_blocks(M) CTAs (a function of M only, never of the device); CTA b owns a
// contiguous run of rows (the first M % nb CTAs ceil(M/nb) rows, the others floor(M/nb)). Inside a CTA, 256/TPR row slots (or one slot of TPR >= 256
// threads) take those rows in turn; x and dy of a row stay in registers; pass 1 forms g = dy*gamma and
// xhat (with the forward's rounding points for RMSNorm llama/none), the row sums, and adds dy*xhat and dy
// into the slot's fp32 (fp64) dweight/dbias partials in shared memory (each thread owns fixed columns,
// so no two threads touch one entry); pass 2 (after the row reduction) writes dx (+ dresidual_out, then
// the one rounding). At the end the CTA sums its slots in slot order into its partial row workspace[b][:].
// When dx alone is wanted the same kernel runs on ceil(M / slots) CTAs and needs no workspace.
// Backward, longer rows, the VEC = 1 path, or too little shared memory on the device for the partials:
// dx from `bwd_dx_chunked_kernel` (a block per row, two chunked passes, the second from L1/L2), the
// partials from `bwd_dwdb_kernel`, a column-tiled kernel over the same nb row blocks.
// Both paths end with `reduce_partials_kernel`: dweight[j] = sum over b = 0..nb-1 of workspace[b][j] in
// a fixed order, rounded once to the weight dtype. Workspace: (number of dweight, dbias requested) * nb * N
// values of A.
//
// Nothing here synchronises the stream; every launch is followed by cudaGetLastError.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/norm_math.h"
#include "fastnorm/norm.h"
#include "fastnorm/norm_cuda.h"

namespace fastnorm {
namespace norm {
namespace cuda {
namespace {

namespace fd = fastnorm::detail;        // storage types, Conv, round_to
namespace nd = fastnorm::norm::detail;  // per-element formulas shared with the CPU kernels

constexpr int kWarp = 32;
constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kMaxRowThreads = 512;   // threads on one row in the register-resident kernels
constexpr int kFwdMinThreads = 128;   // forward block size when rows are short (several rows per block)
constexpr int kBwdMinThreads = 256;   // backward CTA size when rows are short
constexpr int kChunkThreads = 512;    // most threads on one row in the chunked kernels
constexpr int kChunkNv = 4;           // tiles per thread per chunk, chunked kernels on the fast path
constexpr int kScalarNv = 8;          // elements per thread per chunk on the VEC = 1 path (f64: 4)
constexpr int kColThreads = 32;       // bwd_dwdb_kernel / reduce_partials_kernel: threads across columns
constexpr int kRowThreads = 8;        //   ... and across rows (or row blocks)
constexpr int64_t kMaxGrid = int64_t(1) << 30;

// Row blocks of the backward's weight-gradient partials: a function of M only (the CUDA twin of
// bwd_num_blocks). ~32 rows per block keeps the partials' traffic (write + read, 16 bytes per column and
// block) under ~8% of a bf16 backward's, while 128..512 blocks fill a GPU of ~100-150 SMs.
int64_t bwd_blocks(int64_t rows) {
  if (rows <= 0) return 0;
  int64_t nb = (rows + 31) / 32;
  nb = std::min<int64_t>(std::max<int64_t>(nb, 128), 512);
  return std::min(nb, rows);
}

// ---------------------------------------------------------------------------------------------------
// Element I/O
// ---------------------------------------------------------------------------------------------------

// VEC elements of storage type D as one aligned aggregate, so that the compiler emits vector accesses
// (16 bytes at most per instruction).
template <typename D, int VEC>
constexpr int pack_align() {
  return VEC * static_cast<int>(sizeof(D)) < 16 ? VEC * static_cast<int>(sizeof(D)) : 16;
}
template <typename D, int VEC>
struct alignas(pack_align<D, VEC>()) Pack {
  D d[VEC];
};

// Tiles are wholly inside the row (c0 < n) or wholly past it (the host guarantees n % VEC == 0 and
// VEC-aligned rows), so one vector access, or none, moves a tile. Tiles past the row read as 0.
template <typename D, typename A, int VEC>
__device__ __forceinline__ void tile_load(const D* row, int64_t c0, int64_t n, A (&v)[VEC]) {
  if (c0 < n) {
    const Pack<D, VEC> pk = *reinterpret_cast<const Pack<D, VEC>*>(row + c0);
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = fd::load_as<D, A>(pk.d[e]);
  } else {
#pragma unroll
    for (int e = 0; e < VEC; ++e) v[e] = A(0);
  }
}

// Stores a tile that lies inside the row, rounding to nearest even.
template <typename D, typename A, int VEC>
__device__ __forceinline__ void tile_store(D* row, int64_t c0, int64_t n, const A (&v)[VEC]) {
  if (c0 >= n) return;
  Pack<D, VEC> pk;
#pragma unroll
  for (int e = 0; e < VEC; ++e) pk.d[e] = fd::store_from<D, A>(v[e]);
  *reinterpret_cast<Pack<D, VEC>*>(row + c0) = pk;
}

// Calls f(D{}) with D the storage type of dtype t. validate() has rejected non-float dtypes.
template <typename F>
__device__ __forceinline__ void with_dtype(DType t, F&& f) {
  switch (t) {
    case DType::Float16: f(f16_t{}); break;
    case DType::BFloat16: f(bf16_t{}); break;
    case DType::Float64: f(double{}); break;
    default: f(float{}); break;
  }
}

// One tile of a row whose dtype is known only at run time (weight and bias, loaded tile by tile so that
// the arithmetic that follows exists once, not once per dtype).
template <typename A, int VEC>
__device__ __forceinline__ void tile_load_dt(const void* row, DType t, int64_t c0, int64_t n, A (&v)[VEC]) {
  with_dtype(t, [&](auto tag) {
    using D = decltype(tag);
    tile_load<D, A, VEC>(static_cast<const D*>(row), c0, n, v);
  });
}

// First column of tile j of thread tx (of tpr) in a chunk starting at col0.
template <int VEC>
__device__ __forceinline__ int64_t tile_col(int64_t col0, int j, int tpr, int tx) {
  return col0 + (static_cast<int64_t>(j) * tpr + tx) * VEC;
}

// This thread's NV tiles of a row of dtype t: load, load-and-add, store. One dtype switch per call.
template <typename A, int VEC, int NV>
__device__ __forceinline__ void load_row(const void* row, DType t, int64_t col0, int64_t n, int tpr, int tx,
                                         A (&v)[NV][VEC]) {
  with_dtype(t, [&](auto tag) {
    using D = decltype(tag);
    const D* r = static_cast<const D*>(row);
#pragma unroll
    for (int j = 0; j < NV; ++j) tile_load<D, A, VEC>(r, tile_col<VEC>(col0, j, tpr, tx), n, v[j]);
  });
}

template <typename A, int VEC, int NV>
__device__ __forceinline__ void add_row(const void* row, DType t, int64_t col0, int64_t n, int tpr, int tx,
                                        A (&v)[NV][VEC]) {
  with_dtype(t, [&](auto tag) {
    using D = decltype(tag);
    const D* r = static_cast<const D*>(row);
#pragma unroll
    for (int j = 0; j < NV; ++j) {
      A a[VEC];
      tile_load<D, A, VEC>(r, tile_col<VEC>(col0, j, tpr, tx), n, a);
#pragma unroll
      for (int e = 0; e < VEC; ++e) v[j][e] += a[e];
    }
  });
}

template <typename A, int VEC, int NV>
__device__ __forceinline__ void store_row(void* row, DType t, int64_t col0, int64_t n, int tpr, int tx,
                                          const A (&v)[NV][VEC]) {
  with_dtype(t, [&](auto tag) {
    using D = decltype(tag);
    D* r = static_cast<D*>(row);
#pragma unroll
    for (int j = 0; j < NV; ++j) tile_store<D, A, VEC>(r, tile_col<VEC>(col0, j, tpr, tx), n, v[j]);
  });
}

// rho_T applied in place (the add & norm sum is rounded to residual_out's dtype before the norm sees it).
template <typename A, int VEC, int NV>
__device__ __forceinline__ void round_row(DType t, A (&v)[NV][VEC]) {
  if constexpr (std::is_same<A, float>::value) {
    if (t == DType::BFloat16) {
#pragma unroll
      for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[j][e] = fd::round_to(DType::BFloat16, v[j][e]);
    } else if (t == DType::Float16) {
#pragma unroll
      for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[j][e] = fd::round_to(DType::Float16, v[j][e]);
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Reductions (fixed order, so results are reproducible run to run)
// ---------------------------------------------------------------------------------------------------

// Sums v[0..P) over the tpr threads of a row. tpr <= 32: xor butterfly inside the row's lane group
// (a + b == b + a, so every lane ends with the same bits). tpr > 32: then the per-warp totals of the
// row's tpr/32 warps (a block may hold several such rows) are added in warp order by every thread.
// Every thread of the block must call it. `red` holds P * 32 values. kFullWarps: tpr >= 32 is known
// (chunked kernels), so the butterfly has compile-time offsets.
template <int P, bool kFullWarps = false, typename A, int N>
__device__ __forceinline__ void row_allreduce(A (&v)[N], int tpr, A* red) {
  static_assert(P >= 1 && P <= N && P <= 2, "row_allreduce reduces the first P of N <= 2 values");
  if constexpr (kFullWarps) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) {
#pragma unroll
      for (int q = 0; q < P; ++q) v[q] += __shfl_xor_sync(kFullMask, v[q], o);
    }
  } else {
    const int width = tpr >= kWarp ? kWarp : tpr;
    for (int o = width >> 1; o > 0; o >>= 1) {
#pragma unroll
      for (int q = 0; q < P; ++q) v[q] += __shfl_xor_sync(kFullMask, v[q], o);
    }
  }
  if (tpr > kWarp) {
    const int warp = threadIdx.x >> 5, nw = tpr >> 5;
    const int first = warp & ~(nw - 1);  // the row's first warp (rows are tpr-aligned)
    if ((threadIdx.x & (kWarp - 1)) == 0) {
#pragma unroll
      for (int q = 0; q < P; ++q) red[q * kWarp + warp] = v[q];
    }
    __syncthreads();
#pragma unroll
    for (int q = 0; q < P; ++q) {
      A s = red[q * kWarp + first];
      for (int w = 1; w < nw; ++w) s += red[q * kWarp + first + w];
      v[q] = s;
    }
    __syncthreads();  // `red` is free again
  }
}

// Chan merge of every thread's moments in a fixed tree (lanes, then warps in order); all threads get
// the block's moments. `sm` holds 33 entries.
template <typename A>
__device__ __forceinline__ nd::Moments<A> block_merge(nd::Moments<A> m, nd::Moments<A>* sm) {
  for (int o = kWarp / 2; o > 0; o >>= 1) {
    const nd::Moments<A> other{__shfl_down_sync(kFullMask, m.n, o), __shfl_down_sync(kFullMask, m.mean, o),
                               __shfl_down_sync(kFullMask, m.m2, o)};
    m = nd::merge(m, other);  // lanes >= 32 - o merge junk, but lane 0 only reads valid lanes
  }
  const int warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
  if ((threadIdx.x & (kWarp - 1)) == 0) sm[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    nd::Moments<A> r = sm[0];
    for (int w = 1; w < nw; ++w) r = nd::merge(r, sm[w]);
    sm[kWarp] = r;
  }
  __syncthreads();
  const nd::Moments<A> r = sm[kWarp];
  __syncthreads();  // `sm` is free again
  return r;
}

// Two-pass moments of this thread's elements of a chunk (those before column n).
template <typename A, int VEC, int NV>
__device__ __forceinline__ nd::Moments<A> thread_moments(const A (&v)[NV][VEC], int64_t col0, int64_t n, int tpr,
                                                         int tx) {
  A cnt = 0, s = 0;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if (tile_col<VEC>(col0, j, tpr, tx) >= n) continue;
    cnt += A(VEC);
#pragma unroll
    for (int e = 0; e < VEC; ++e) s += v[j][e];
  }
  if (cnt == A(0)) return nd::Moments<A>{A(0), A(0), A(0)};
  const A mu = s / cnt;
  A m2 = 0;
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    if (tile_col<VEC>(col0, j, tpr, tx) >= n) continue;
#pragma unroll
    for (int e = 0; e < VEC; ++e) { const A d = v[j][e] - mu; m2 += d * d; }
  }
  return nd::Moments<A>{cnt, mu, m2};
}

// Whether a kernel can see 16-bit x, the only case where RMSNorm llama/none round anything (the host
// passes Casting::Gemma otherwise, as the CPU's "exact" path). Only these kernels carry that code.
template <typename A, int VEC>
constexpr bool may_round() {
  return VEC == 8 || (VEC == 1 && std::is_same<A, float>::value);
}

// 1/N as the CPU forms it, A(1) / A(N), computed on the host (a division in the kernel would add a
// slow-path subroutine call and the register saves around it).
template <typename A, typename P>
__device__ __forceinline__ A inv_cols(const P& p) {
  if constexpr (std::is_same<A, double>::value) return p.inv_n_d; else return p.inv_n_f;
}

// Rows of block b out of G: the first rows % G blocks take rows / G + 1 rows, the others rows / G.
// A function of (rows, G) only, and free of 64-bit divisions in the kernel.
__device__ __forceinline__ void block_rows(int64_t b, int64_t q, int64_t r, int64_t& begin, int64_t& end) {
  begin = b * q + (b < r ? b : r);
  end = begin + q + (b < r ? 1 : 0);
}

// ---------------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------------

// Forward arguments, strides in bytes. LayerNorm leaves offset/casting/xd unused, RMSNorm leaves mean null.
struct FwdArgs {
  int64_t rows, cols;
  const char* x; int64_t x_stride_b; DType x_dt;
  const char* res; int64_t res_stride_b; DType res_dt;   // residual (add & norm) or null
  const void* w; const void* b; DType w_dt;
  char* y; int64_t y_row_b; DType y_dt;
  char* ro; int64_t ro_row_b; DType ro_dt;               // residual_out; non-null selects add & norm
  void* mean; void* rstd;                                // [rows] of A, or null
  double eps, offset;
  float inv_n_f; double inv_n_d;                         // 1/N in the accumulation type (host-computed)
  Casting casting;  // RMSNorm: Gemma whenever the normalised dtype is f32/f64 (rounding is then the identity)
  DType xd;         // RMSNorm: dtype that llama/none round to (residual_out's in add & norm, else x's)
  int tpr;          // threads per row (register kernel), a power of two
  int tpr_log2;
};

// s = x (+ residual) for this thread's tiles; in add & norm mode rounded to and stored as residual_out.
template <typename A, int VEC, int NV>
__device__ __forceinline__ void fwd_input(const FwdArgs& p, int64_t row, int64_t col0, int tpr, int tx,
                                          A (&v)[NV][VEC]) {
  load_row<A, VEC, NV>(p.x + row * p.x_stride_b, p.x_dt, col0, p.cols, tpr, tx, v);
  if (p.ro == nullptr) return;
  if (p.res != nullptr) add_row<A, VEC, NV>(p.res + row * p.res_stride_b, p.res_dt, col0, p.cols, tpr, tx, v);
  round_row<A, VEC, NV>(p.ro_dt, v);
  store_row<A, VEC, NV>(p.ro + row * p.ro_row_b, p.ro_dt, col0, p.cols, tpr, tx, v);
}

// y = affine(normalised s) for this thread's tiles, computed in place in v and stored. Weight and bias
// are read a tile at a time (they stay in L1/L2 across rows).
template <typename A, int VEC, int NV, bool kRms, bool kG>
__device__ __forceinline__ void fwd_affine(const FwdArgs& p, int64_t col0, int tpr, int tx, A mean, A rstd,
                                           A (&v)[NV][VEC]) {
  const int64_t n = p.cols;
  // kG: RMSNorm casting is (equivalent to) gemma, so the rounding helpers fold away at compile time.
  const Casting c = kG ? Casting::Gemma : p.casting;
  const A offset = static_cast<A>(p.offset);
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int64_t c0 = tile_col<VEC>(col0, j, tpr, tx);
    if (c0 >= n) continue;
    A g[VEC], bb[VEC];
    if (p.w != nullptr) {
      tile_load_dt<A, VEC>(p.w, p.w_dt, c0, n, g);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) g[e] = A(1);
    }
    if (p.b != nullptr) {
      tile_load_dt<A, VEC>(p.b, p.w_dt, c0, n, bb);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) bb[e] = A(0);
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if constexpr (kRms) {
        // The offset is applied to a present weight only; absent weight means gamma = 1.
        const A ge = p.w != nullptr ? nd::rms_gamma<A>(g[e], offset, c, p.xd) : A(1);
        v[j][e] = nd::rms_y<A>(nd::rms_xhat_fwd<A>(v[j][e], rstd, c, p.xd), ge, bb[e]);
      } else {
        v[j][e] = nd::ln_y<A>(v[j][e], mean, rstd, g[e], bb[e]);
      }
    }
  }
  (void)c;
  (void)offset;
}

template <typename A, int VEC, int NV, bool kRms>
__device__ __forceinline__ void fwd_output(const FwdArgs& p, int64_t row, int64_t col0, int tpr, int tx, A mean,
                                           A rstd, A (&v)[NV][VEC]) {
  if constexpr (!kRms || !may_round<A, VEC>()) {
    fwd_affine<A, VEC, NV, kRms, true>(p, col0, tpr, tx, mean, rstd, v);
  } else if (p.casting == Casting::Gemma) {
    fwd_affine<A, VEC, NV, true, true>(p, col0, tpr, tx, mean, rstd, v);
  } else {
    fwd_affine<A, VEC, NV, true, false>(p, col0, tpr, tx, mean, rstd, v);
  }
  store_row<A, VEC, NV>(p.y + row * p.y_row_b, p.y_dt, col0, p.cols, tpr, tx, v);
}

// Register-resident forward: blockDim.x / tpr rows per block, NV tiles of VEC per thread.
template <typename A, int VEC, int NV, bool kRms>
__global__ void __launch_bounds__(kMaxRowThreads) fwd_kernel(const FwdArgs p) {
  __shared__ A red[kWarp];
  const int tpr = p.tpr;
  const int tx = threadIdx.x & (tpr - 1);
  const int slot = threadIdx.x >> p.tpr_log2;
  const int slots = blockDim.x >> p.tpr_log2;
  const int64_t n = p.cols;
  const A inv_n = inv_cols<A>(p);
  const A eps = static_cast<A>(p.eps);
  // All threads of a block run the same iterations (reductions need every lane); with several rows
  // per block the rows past the end compute on zeros and store nothing.
  for (int64_t r0 = static_cast<int64_t>(blockIdx.x) * slots; r0 < p.rows;
       r0 += static_cast<int64_t>(gridDim.x) * slots) {
    const int64_t row = r0 + slot;
    const bool valid = row < p.rows;
    A v[NV][VEC];
    if (valid) {
      fwd_input<A, VEC, NV>(p, row, 0, tpr, tx, v);
    } else {
#pragma unroll
      for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) v[j][e] = A(0);
    }
    A mean = A(0), rstd;
    if constexpr (kRms) {
      A q[1] = {A(0)};
#pragma unroll
      for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) q[0] += v[j][e] * v[j][e];  // elements past n are 0
      row_allreduce<1>(q, tpr, red);
      rstd = nd::rms_saved_rstd<A>(nd::rstd_from<A>(q[0] * inv_n, eps), p.casting, p.xd);
    } else {
      A s[1] = {A(0)};
#pragma unroll
      for (int j = 0; j < NV; ++j)
#pragma unroll
        for (int e = 0; e < VEC; ++e) s[0] += v[j][e];
      row_allreduce<1>(s, tpr, red);
      mean = s[0] * inv_n;
      A q[1] = {A(0)};
#pragma unroll
      for (int j = 0; j < NV; ++j) {
        if (tile_col<VEC>(0, j, tpr, tx) >= n) continue;  // tiles past the row hold 0, not x
#pragma unroll
        for (int e = 0; e < VEC; ++e) { const A d = v[j][e] - mean; q[0] += d * d; }
      }
      row_allreduce<1>(q, tpr, red);
      rstd = nd::rstd_from<A>(q[0] * inv_n, eps);
    }
    if (valid) {
      if (tx == 0) {
        if (p.mean != nullptr) static_cast<A*>(p.mean)[row] = mean;
        if (p.rstd != nullptr) static_cast<A*>(p.rstd)[row] = rstd;
      }
      fwd_output<A, VEC, NV, kRms>(p, row, 0, tpr, tx, mean, rstd, v);
    }
  }
}

// Forward for rows too long for registers: one block per row, chunks of blockDim.x * NV * VEC.
template <typename A, int VEC, int NV, bool kRms>
__global__ void __launch_bounds__(kChunkThreads) fwd_chunked_kernel(const FwdArgs p) {
  __shared__ A red[kWarp];
  __shared__ nd::Moments<A> msm[kWarp + 1];
  const int tpr = blockDim.x, tx = threadIdx.x;
  const int64_t n = p.cols;
  const int64_t chunk = static_cast<int64_t>(tpr) * NV * VEC;
  const A inv_n = inv_cols<A>(p);
  const A eps = static_cast<A>(p.eps);
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    // Pass 1: moments (LN) or the sum of squares (RMS); add & norm stores s as it goes.
    nd::Moments<A> m{A(0), A(0), A(0)};
    A q[1] = {A(0)};
    for (int64_t col0 = 0; col0 < n; col0 += chunk) {
      A v[NV][VEC];
      fwd_input<A, VEC, NV>(p, row, col0, tpr, tx, v);
      if constexpr (kRms) {
#pragma unroll
        for (int j = 0; j < NV; ++j)
#pragma unroll
          for (int e = 0; e < VEC; ++e) q[0] += v[j][e] * v[j][e];
      } else {
        m = nd::merge(m, thread_moments<A, VEC, NV>(v, col0, n, tpr, tx));
      }
    }
    A mean = A(0), rstd;
    if constexpr (kRms) {
      row_allreduce<1, true>(q, tpr, red);
      rstd = nd::rms_saved_rstd<A>(nd::rstd_from<A>(q[0] * inv_n, eps), p.casting, p.xd);
    } else {
      m = block_merge<A>(m, msm);
      mean = m.mean;
      rstd = nd::rstd_from<A>(m.m2 * inv_n, eps);
    }
    if (tx == 0) {
      if (p.mean != nullptr) static_cast<A*>(p.mean)[row] = mean;
      if (p.rstd != nullptr) static_cast<A*>(p.rstd)[row] = rstd;
    }
    // Pass 2: the row again (the stored s in add & norm mode; this thread wrote those elements itself).
    for (int64_t col0 = 0; col0 < n; col0 += chunk) {
      A v[NV][VEC];
      if (p.ro != nullptr) {
        load_row<A, VEC, NV>(p.ro + row * p.ro_row_b, p.ro_dt, col0, n, tpr, tx, v);
      } else {
        load_row<A, VEC, NV>(p.x + row * p.x_stride_b, p.x_dt, col0, n, tpr, tx, v);
      }
      fwd_output<A, VEC, NV, kRms>(p, row, col0, tpr, tx, mean, rstd, v);
    }
  }
}

// cols == 0: the statistics of an empty row are NaN (as on the CPU: 0 * (1/0)).
template <typename A>
__global__ void fill_nan_kernel(A* a, A* b, int64_t m) {
  const A nan = std::numeric_limits<A>::quiet_NaN();
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < m;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    if (a != nullptr) a[i] = nan;
    if (b != nullptr) b[i] = nan;
  }
}

// ---------------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------------

struct BwdArgs {
  int64_t rows, cols;
  const char* dy; int64_t dy_stride_b; DType dy_dt;
  const char* x; int64_t x_stride_b; DType x_dt;
  const char* dres; int64_t dres_stride_b; DType dres_dt;  // dresidual_out or null
  const void* mean; const void* rstd;                      // [rows] of A (mean: LayerNorm only)
  const void* w; DType w_dt;
  char* dx; int64_t dx_row_b; DType dx_dt;                 // null: no input gradient
  void* ws_w; void* ws_b;                                  // partial rows [nb][cols] of A, or null
  int64_t rows_q, rows_r;                                  // row blocks: rows / grid, rows % grid
  double offset;
  float inv_n_f; double inv_n_d;                           // 1/N in the accumulation type (host-computed)
  Casting casting;  // RMSNorm: Gemma whenever x is f32/f64 (the CPU's "exact" path)
  DType xd, yd;     // RMSNorm: x's and the forward output's dtype (llama/none rounding points)
  int tpr;          // threads per row (fused kernel), a power of two
  int tpr_log2;
};

// Pass 1 over this thread's tiles of one row: g = dy * gamma and xhat (RMSNorm: with the forward's
// rounding points; kG: gemma, where they fold away), the row sums (LN: sum g, sum g*xhat; RMS: sum g*xhat)
// and, when use_w/use_b, dy*xhat and dy added into this thread's NV*VEC partials acc_w/acc_b at
// j*VEC + e. On entry xv/gv hold x/dy, on exit xhat/g. Tiles past the row are skipped.
template <typename A, int VEC, int NV, bool kRms, bool kG>
__device__ __forceinline__ void bwd_pass1_impl(const BwdArgs& p, int64_t col0, int tpr, int tx, A mean, A rstd,
                                               A (&xv)[NV][VEC], A (&gv)[NV][VEC], A (&sums)[2], A* acc_w,
                                               A* acc_b, bool use_w, bool use_b) {
  const int64_t n = p.cols;
  const Casting c = kG ? Casting::Gemma : p.casting;
  const A offset = static_cast<A>(p.offset);
#pragma unroll
  for (int j = 0; j < NV; ++j) {
    const int64_t c0 = tile_col<VEC>(col0, j, tpr, tx);
    if (c0 >= n) continue;
    A wt[VEC];
    if (p.w != nullptr) {
      tile_load_dt<A, VEC>(p.w, p.w_dt, c0, n, wt);
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) wt[e] = A(1);
    }
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const A x = xv[j][e], dy = gv[j][e];
      A xh, g, xdw;
      if constexpr (kRms) {
        const A ge = p.w != nullptr ? nd::rms_gamma<A>(wt[e], offset, c, p.xd) : A(1);
        if constexpr (kG) {
          g = dy * ge;
          xh = x * rstd;
          xdw = xh;
        } else {
          g = nd::rms_g<A>(dy, ge, c, p.xd, p.yd);
          xh = nd::rms_xhat_bwd<A>(x, rstd, c, p.xd);
          xdw = nd::rms_xhat_dw<A>(x, rstd, c, p.xd);
        }
        sums[0] += g * xh;
      } else {
        xh = (x - mean) * rstd;
        g = dy * wt[e];
        xdw = xh;
        sums[0] += g;
        sums[1] += g * xh;
      }
      if (use_w) acc_w[j * VEC + e] += dy * xdw;  // constant offsets from one base
      if (use_b) acc_b[j * VEC + e] += dy;
      xv[j][e] = xh;
      gv[j][e] = g;
    }
  }
  (void)c;
  (void)offset;
}

template <typename A, int VEC, int NV, bool kRms>
__device__ __forceinline__ void bwd_pass1(const BwdArgs& p, int64_t col0, int tpr, int tx, A mean, A rstd,
                                          A (&xv)[NV][VEC], A (&gv)[NV][VEC], A (&sums)[2], A* acc_w = nullptr,
                                          A* acc_b = nullptr, bool use_w = false, bool use_b = false) {
  if constexpr (!kRms || !may_round<A, VEC>()) {
    bwd_pass1_impl<A, VEC, NV, kRms, true>(p, col0, tpr, tx, mean, rstd, xv, gv, sums, acc_w, acc_b, use_w, use_b);
  } else if (p.casting == Casting::Gemma) {
    bwd_pass1_impl<A, VEC, NV, true, true>(p, col0, tpr, tx, mean, rstd, xv, gv, sums, acc_w, acc_b, use_w, use_b);
  } else {
    bwd_pass1_impl<A, VEC, NV, true, false>(p, col0, tpr, tx, mean, rstd, xv, gv, sums, acc_w, acc_b, use_w, use_b);
  }
}

// Pass 2: dx = norm backward (+ dresidual_out), one rounding to dx's dtype. xv/gv hold xhat/g.
template <typename A, int VEC, int NV, bool kRms>
__device__ __forceinline__ void bwd_dx(const BwdArgs& p, int64_t row, int64_t col0, int tpr, int tx, A rstd,
                                       const A (&sums)[2], A (&xv)[NV][VEC], A (&gv)[NV][VEC]) {
  const A inv_n = inv_cols<A>(p);
  const A mg = sums[0] * inv_n, mgx = sums[1] * inv_n;
#pragma unroll
  for (int j = 0; j < NV; ++j)
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      if constexpr (kRms) {
        gv[j][e] = nd::rms_dx<A>(gv[j][e], xv[j][e], rstd, mg);  // RMS: sums[0] is sum g*xhat
      } else {
        gv[j][e] = nd::ln_dx<A>(gv[j][e], xv[j][e], rstd, mg, mgx);
      }
    }
  if (p.dres != nullptr) add_row<A, VEC, NV>(p.dres + row * p.dres_stride_b, p.dres_dt, col0, p.cols, tpr, tx, gv);
  store_row<A, VEC, NV>(p.dx + row * p.dx_row_b, p.dx_dt, col0, p.cols, tpr, tx, gv);
}

template <typename A>
__device__ __forceinline__ void load_stats(const BwdArgs& p, int64_t row, A& mean, A& rstd) {
  mean = p.mean != nullptr ? static_cast<const A*>(p.mean)[row] : A(0);
  rstd = static_cast<const A*>(p.rstd)[row];
}

// Fused backward: CTA b owns the rows block_rows(b) of G = gridDim.x blocks; blockDim.x / tpr row slots.
// Dynamic shared memory: the partials, [#partials][slots][tpr][NV*VEC + 1] of A: each thread's own
// columns are contiguous (constant offsets, no per-element address registers) and the odd row pitch
// puts the 32 lanes of a warp in 32 different banks.
template <typename A, int VEC, int NV, bool kRms>
__global__ void __launch_bounds__(kMaxRowThreads) bwd_kernel(const BwdArgs p) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ A red[2 * kWarp];
  const int tpr = p.tpr;
  const int tx = threadIdx.x & (tpr - 1);
  const int slot = threadIdx.x >> p.tpr_log2;
  const int slots = blockDim.x >> p.tpr_log2;
  constexpr int kPitch = NV * VEC + 1;
  const int cap = blockDim.x * kPitch;  // values of one partial (all slots)
  const int64_t n = p.cols;
  const bool need_w = p.ws_w != nullptr, need_b = p.ws_b != nullptr;

  // Never-null shared-memory pointers (unused ones alias the first partial), so the compiler keeps
  // shared addressing; need_w / need_b say which are live.
  A* acc = reinterpret_cast<A*>(smem_raw);
  A* acc_w = acc;
  A* acc_b = acc + (need_w ? cap : 0);
  const int acc_len = ((need_w ? 1 : 0) + (need_b ? 1 : 0)) * cap;
  for (int i = threadIdx.x; i < acc_len; i += blockDim.x) acc[i] = A(0);
  __syncthreads();
  A* my_w = acc_w + threadIdx.x * kPitch;  // threadIdx.x == slot * tpr + tx
  A* my_b = acc_b + threadIdx.x * kPitch;

  const int64_t blk = blockIdx.x;
  int64_t begin, end;
  block_rows(blk, p.rows_q, p.rows_r, begin, end);
  for (int64_t r0 = begin; r0 < end; r0 += slots) {  // same trip count for every thread of the CTA
    const int64_t row = r0 + slot;
    const bool valid = row < end;
    A xv[NV][VEC], gv[NV][VEC];
    A sums[2] = {A(0), A(0)};
    A mean = A(0), rstd = A(0);
    if (valid) {
      load_row<A, VEC, NV>(p.x + row * p.x_stride_b, p.x_dt, 0, n, tpr, tx, xv);
      load_row<A, VEC, NV>(p.dy + row * p.dy_stride_b, p.dy_dt, 0, n, tpr, tx, gv);
      load_stats<A>(p, row, mean, rstd);
      bwd_pass1<A, VEC, NV, kRms>(p, 0, tpr, tx, mean, rstd, xv, gv, sums, my_w, my_b, need_w, need_b);
    }
    if (p.dx != nullptr) {
      row_allreduce<kRms ? 1 : 2>(sums, tpr, red);
      if (valid) bwd_dx<A, VEC, NV, kRms>(p, row, 0, tpr, tx, rstd, sums, xv, gv);
    }
  }

  if (!need_w && !need_b) return;
  __syncthreads();
  // This CTA's partial rows: columns spread over all threads (coalesced), slots summed in slot order.
  const int slot_pitch = tpr * kPitch;
  for (int c = threadIdx.x; c < n; c += blockDim.x) {  // n <= tpr * NV * VEC here
    const int t = c / VEC, e = c - t * VEC;   // tile t = j * tpr + owner
    const int j = t >> p.tpr_log2, owner = t & (tpr - 1);
    const int ai = owner * kPitch + j * VEC + e;
    if (need_w) {
      A s = acc_w[ai];
      for (int sl = 1; sl < slots; ++sl) s += acc_w[sl * slot_pitch + ai];
      static_cast<A*>(p.ws_w)[blk * n + c] = s;
    }
    if (need_b) {
      A s = acc_b[ai];
      for (int sl = 1; sl < slots; ++sl) s += acc_b[sl * slot_pitch + ai];
      static_cast<A*>(p.ws_b)[blk * n + c] = s;
    }
  }
}

// dx for rows too long for registers: one block per row, two chunked passes (the second from L2).
template <typename A, int VEC, int NV, bool kRms>
__global__ void __launch_bounds__(kChunkThreads) bwd_dx_chunked_kernel(const BwdArgs p) {
  __shared__ A red[2 * kWarp];
  const int tpr = blockDim.x, tx = threadIdx.x;
  const int64_t n = p.cols;
  const int64_t chunk = static_cast<int64_t>(tpr) * NV * VEC;
  for (int64_t row = blockIdx.x; row < p.rows; row += gridDim.x) {
    A mean, rstd;
    load_stats<A>(p, row, mean, rstd);
    A sums[2] = {A(0), A(0)};
    for (int64_t col0 = 0; col0 < n; col0 += chunk) {
      A xv[NV][VEC], gv[NV][VEC];
      load_row<A, VEC, NV>(p.x + row * p.x_stride_b, p.x_dt, col0, n, tpr, tx, xv);
      load_row<A, VEC, NV>(p.dy + row * p.dy_stride_b, p.dy_dt, col0, n, tpr, tx, gv);
      bwd_pass1<A, VEC, NV, kRms>(p, col0, tpr, tx, mean, rstd, xv, gv, sums);
    }
    row_allreduce<kRms ? 1 : 2, true>(sums, tpr, red);
    for (int64_t col0 = 0; col0 < n; col0 += chunk) {
      A xv[NV][VEC], gv[NV][VEC];
      A unused[2] = {A(0), A(0)};
      load_row<A, VEC, NV>(p.x + row * p.x_stride_b, p.x_dt, col0, n, tpr, tx, xv);
      load_row<A, VEC, NV>(p.dy + row * p.dy_stride_b, p.dy_dt, col0, n, tpr, tx, gv);
      bwd_pass1<A, VEC, NV, kRms>(p, col0, tpr, tx, mean, rstd, xv, gv, unused);
      bwd_dx<A, VEC, NV, kRms>(p, row, col0, tpr, tx, rstd, sums, xv, gv);
    }
  }
}

// Weight-gradient partials when bwd_kernel is not used: block (32, 8) covers 32*VEC columns (blockIdx.x)
// of row block blockIdx.y; its 8 row lanes are summed in lane order into workspace[b][cols].
template <typename A, int VEC, bool kRms>
__global__ void __launch_bounds__(kColThreads * kRowThreads) bwd_dwdb_kernel(const BwdArgs p) {
  constexpr int kCols = kColThreads * VEC;
  __shared__ A part[2][kRowThreads][kCols];
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t n = p.cols;
  const int64_t c0 = (static_cast<int64_t>(blockIdx.x) * kColThreads + tx) * VEC;
  const int64_t blk = blockIdx.y;
  int64_t begin, end;
  block_rows(blk, p.rows_q, p.rows_r, begin, end);
  const Casting c = p.casting;
  A dw[VEC], db[VEC];
#pragma unroll
  for (int e = 0; e < VEC; ++e) { dw[e] = A(0); db[e] = A(0); }
  if (c0 < n) {
    for (int64_t row = begin + ty; row < end; row += kRowThreads) {
      A x[VEC], dy[VEC];
      with_dtype(p.x_dt, [&](auto tag) {
        using D = decltype(tag);
        tile_load<D, A, VEC>(reinterpret_cast<const D*>(p.x + row * p.x_stride_b), c0, n, x);
      });
      with_dtype(p.dy_dt, [&](auto tag) {
        using D = decltype(tag);
        tile_load<D, A, VEC>(reinterpret_cast<const D*>(p.dy + row * p.dy_stride_b), c0, n, dy);
      });
      A mean, rstd;
      load_stats<A>(p, row, mean, rstd);
#pragma unroll
      for (int e = 0; e < VEC; ++e) {
        A xdw;
        if constexpr (kRms) {
          if constexpr (may_round<A, VEC>()) {
            xdw = c == Casting::Gemma ? x[e] * rstd : nd::rms_xhat_dw<A>(x[e], rstd, c, p.xd);
          } else {
            xdw = x[e] * rstd;
          }
        } else {
          xdw = (x[e] - mean) * rstd;
        }
        dw[e] += dy[e] * xdw;
        db[e] += dy[e];
      }
    }
  }
  (void)c;
#pragma unroll
  for (int e = 0; e < VEC; ++e) {
    part[0][ty][tx * VEC + e] = dw[e];
    part[1][ty][tx * VEC + e] = db[e];
  }
  __syncthreads();
  for (int i = ty * kColThreads + tx; i < kCols; i += kColThreads * kRowThreads) {
    const int64_t col = static_cast<int64_t>(blockIdx.x) * kCols + i;
    if (col >= n) continue;
    if (p.ws_w != nullptr) {
      A s = part[0][0][i];
      for (int k = 1; k < kRowThreads; ++k) s += part[0][k][i];
      static_cast<A*>(p.ws_w)[blk * n + col] = s;
    }
    if (p.ws_b != nullptr) {
      A s = part[1][0][i];
      for (int k = 1; k < kRowThreads; ++k) s += part[1][k][i];
      static_cast<A*>(p.ws_b)[blk * n + col] = s;
    }
  }
}

// dweight / dbias: the nb partial rows summed in a fixed order (row lane ty takes blocks ty, ty+8, ...,
// then the 8 lanes in order), rounded once to the weight dtype. blockIdx.y picks the output.
template <typename A>
__global__ void __launch_bounds__(kColThreads * kRowThreads)
    reduce_partials_kernel(const A* src0, const A* src1, void* out0, void* out1, int64_t nb, int64_t n,
                           DType w_dt) {
  __shared__ A part[kRowThreads][kColThreads];
  const A* src = blockIdx.y == 0 ? src0 : src1;
  void* out = blockIdx.y == 0 ? out0 : out1;
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kColThreads + tx;
  A s = A(0);
  if (col < n)
    for (int64_t b = ty; b < nb; b += kRowThreads) s += src[b * n + col];
  part[ty][tx] = s;
  __syncthreads();
  if (ty != 0 || col >= n) return;
  A t = part[0][tx];
  for (int k = 1; k < kRowThreads; ++k) t += part[k][tx];
  with_dtype(w_dt, [&](auto tag) {
    using D = decltype(tag);
    static_cast<D*>(out)[col] = fd::store_from<D, A>(t);
  });
}

// ---------------------------------------------------------------------------------------------------
// Host side: planning and launching
// ---------------------------------------------------------------------------------------------------

Status check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::OK();
  return Status(StatusCode::CudaError, std::string(what) + ": " + cudaGetErrorString(e));
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Smallest power of two >= v (callers pass v <= 512).
int pow2_ceil(int64_t v) {
  int p = 1;
  while (p < v) p <<= 1;
  return p;
}

int log2_exact(int v) {
  int l = 0;
  while ((1 << l) < v) ++l;
  return l;
}

int64_t esize(DType t) { return static_cast<int64_t>(dtype_size(t)); }

bool is_16bit(DType t) { return t == DType::BFloat16 || t == DType::Float16; }

// Register-resident plan: the fewest tiles per thread (NV of 1, 2, 4, 8, at most nv_max) whose row fits
// on TPR threads, TPR <= 32 while NV <= 2 (warp or sub-warp per row) and TPR <= 512 beyond.
// nv == 0: the row does not fit; use the chunked kernels.
struct RowPlan {
  int nv = 0, tpr = 0;
};
RowPlan plan_rows(int64_t n, int vec, int nv_max) {
  const int64_t tiles = ceil_div(n, vec);
  for (int nv = 1; nv <= nv_max; nv *= 2) {
    const int64_t need = ceil_div(tiles, nv);
    const int64_t limit = nv <= 2 ? kWarp : kMaxRowThreads;
    if (need <= limit) return RowPlan{nv, pow2_ceil(need)};
  }
  return RowPlan{};
}

// Whether an operand allows VEC-element vector accesses on every row: base pointer and row stride
// (bytes) aligned to the access size. Absent operands pass.
bool vec_ok(const void* ptr, int64_t stride_b, DType t, int vec, int64_t rows) {
  if (ptr == nullptr) return true;
  const int64_t al = std::min<int64_t>(16, vec * esize(t));
  if (reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(al) != 0) return false;
  return rows <= 1 || stride_b % al == 0;
}

bool fwd_vec_ok(const FwdArgs& a, int vec) {
  const int64_t m = a.rows;
  return a.cols % vec == 0 && vec_ok(a.x, a.x_stride_b, a.x_dt, vec, m) &&
         vec_ok(a.res, a.res_stride_b, a.res_dt, vec, m) && vec_ok(a.w, 0, a.w_dt, vec, 1) &&
         vec_ok(a.b, 0, a.w_dt, vec, 1) && vec_ok(a.y, a.y_row_b, a.y_dt, vec, m) &&
         vec_ok(a.ro, a.ro_row_b, a.ro_dt, vec, m);
}

bool bwd_vec_ok(const BwdArgs& a, int vec) {
  const int64_t m = a.rows;
  return a.cols % vec == 0 && vec_ok(a.x, a.x_stride_b, a.x_dt, vec, m) &&
         vec_ok(a.dy, a.dy_stride_b, a.dy_dt, vec, m) && vec_ok(a.dres, a.dres_stride_b, a.dres_dt, vec, m) &&
         vec_ok(a.w, 0, a.w_dt, vec, 1) && vec_ok(a.dx, a.dx_row_b, a.dx_dt, vec, m);
}

// Block size of the chunked kernels: enough threads for a chunk to cover short rows, at most 512.
int chunk_threads(int64_t n, int per_thread) {
  const int64_t need = std::min<int64_t>(ceil_div(n, per_thread), kChunkThreads);
  return std::max(kWarp, pow2_ceil(need));
}

// Largest dynamic shared memory a block may opt into on the current device (cached per device).
size_t max_smem_optin() {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices];
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) { (void)cudaGetLastError(); return 48 * 1024; }
  if (dev >= 0 && dev < kMaxDevices) {
    const int v = cache[dev].load(std::memory_order_relaxed);
    if (v > 0) return static_cast<size_t>(v);
  }
  int v = 0;
  if (cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev) != cudaSuccess || v <= 0) {
    (void)cudaGetLastError();
    return 48 * 1024;
  }
  if (dev >= 0 && dev < kMaxDevices) cache[dev].store(v, std::memory_order_relaxed);
  return static_cast<size_t>(v);
}

// ---- forward ----

template <typename A, int VEC, int NV, bool kRms>
void launch_fwd_chunked(const FwdArgs& a, cudaStream_t s) {
  const int threads = chunk_threads(a.cols, NV * VEC);
  const int64_t grid = std::min(a.rows, kMaxGrid);
  fwd_chunked_kernel<A, VEC, NV, kRms><<<static_cast<unsigned>(grid), threads, 0, s>>>(a);
}

template <typename A, int VEC, int NV, bool kRms>
void launch_fwd_regs(const FwdArgs& a, int threads, int64_t grid, cudaStream_t s) {
  fwd_kernel<A, VEC, NV, kRms><<<static_cast<unsigned>(grid), threads, 0, s>>>(a);
}

// Tiles per thread the forward keeps in registers: at most 32 values of A.
template <int VEC>
constexpr int fwd_nv_max() { return VEC == 8 ? 4 : 8; }

template <typename A, int VEC, bool kRms>
void launch_fwd(FwdArgs a, cudaStream_t s) {
  const RowPlan pl = plan_rows(a.cols, VEC, fwd_nv_max<VEC>());
  if (pl.nv == 0) return launch_fwd_chunked<A, VEC, kChunkNv, kRms>(a, s);
  a.tpr = pl.tpr;
  a.tpr_log2 = log2_exact(pl.tpr);
  const int threads = std::max(pl.tpr, kFwdMinThreads);
  const int64_t grid = std::min(ceil_div(a.rows, threads / pl.tpr), kMaxGrid);
  switch (pl.nv) {
    case 1: launch_fwd_regs<A, VEC, 1, kRms>(a, threads, grid, s); break;
    case 2: launch_fwd_regs<A, VEC, 2, kRms>(a, threads, grid, s); break;
    case 4: launch_fwd_regs<A, VEC, 4, kRms>(a, threads, grid, s); break;
    default:
      if constexpr (fwd_nv_max<VEC>() >= 8) launch_fwd_regs<A, VEC, 8, kRms>(a, threads, grid, s);
      break;
  }
}

template <bool kRms>
Status dispatch_fwd(const FwdArgs& a, cudaStream_t s) {
  const bool wide = a.x_dt == DType::Float64;
  const int vec = wide ? 2 : a.x_dt == DType::Float32 ? 4 : 8;
  if (!fwd_vec_ok(a, vec)) {
    if (wide) launch_fwd_chunked<double, 1, kScalarNv / 2, kRms>(a, s);
    else launch_fwd_chunked<float, 1, kScalarNv, kRms>(a, s);
  } else if (vec == 2) {
    launch_fwd<double, 2, kRms>(a, s);
  } else if (vec == 4) {
    launch_fwd<float, 4, kRms>(a, s);
  } else {
    launch_fwd<float, 8, kRms>(a, s);
  }
  return check_launch(kRms ? "rms_norm (cuda)" : "layer_norm (cuda)");
}

// ---- backward ----

// Tiles per thread the backward keeps: x and dy, 2 * NV * VEC values of A, at most 64 registers
// (f64: 32; its NV = 8 variant would spill).
template <int VEC>
constexpr int bwd_nv_max() { return VEC == 4 ? 8 : 4; }

template <typename A, int VEC, int NV, bool kRms>
Status launch_bwd_regs(const BwdArgs& a, int threads, int64_t grid, size_t smem, cudaStream_t s) {
  auto kernel = bwd_kernel<A, VEC, NV, kRms>;
  if (smem > 48 * 1024) {
    const cudaError_t e =
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return Status(StatusCode::CudaError, std::string("cudaFuncSetAttribute: ") + cudaGetErrorString(e));
    }
  }
  kernel<<<static_cast<unsigned>(grid), threads, smem, s>>>(a);
  return Status::OK();
}

// The fused kernel, if the row fits in registers and the device has the shared memory for the partials.
// Returns false (nothing launched) otherwise.
template <typename A, int VEC, bool kRms>
bool try_bwd_fused(BwdArgs a, Status& st, cudaStream_t s) {
  const RowPlan pl = plan_rows(a.cols, VEC, bwd_nv_max<VEC>());
  if (pl.nv == 0) return false;
  const int nacc = (a.ws_w != nullptr ? 1 : 0) + (a.ws_b != nullptr ? 1 : 0);
  const int threads = std::max(pl.tpr, kBwdMinThreads);
  const int slots = threads / pl.tpr;
  const size_t smem = static_cast<size_t>(nacc) * threads * (pl.nv * VEC + 1) * sizeof(A);
  if (smem > max_smem_optin()) return false;
  a.tpr = pl.tpr;
  a.tpr_log2 = log2_exact(pl.tpr);
  const int64_t grid = nacc > 0 ? bwd_blocks(a.rows) : std::min(ceil_div(a.rows, slots), kMaxGrid);
  a.rows_q = a.rows / grid;
  a.rows_r = a.rows % grid;
  switch (pl.nv) {
    case 1: st = launch_bwd_regs<A, VEC, 1, kRms>(a, threads, grid, smem, s); break;
    case 2: st = launch_bwd_regs<A, VEC, 2, kRms>(a, threads, grid, smem, s); break;
    case 4: st = launch_bwd_regs<A, VEC, 4, kRms>(a, threads, grid, smem, s); break;
    default:
      if constexpr (bwd_nv_max<VEC>() >= 8) st = launch_bwd_regs<A, VEC, 8, kRms>(a, threads, grid, smem, s);
      break;
  }
  return true;
}

// dx by rows and the partials by columns, for any N and layout.
template <typename A, int VEC, int NV, bool kRms>
void launch_bwd_split(BwdArgs a, cudaStream_t s) {
  if (a.dx != nullptr) {
    const int threads = chunk_threads(a.cols, NV * VEC);
    const int64_t grid = std::min(a.rows, kMaxGrid);
    bwd_dx_chunked_kernel<A, VEC, NV, kRms><<<static_cast<unsigned>(grid), threads, 0, s>>>(a);
  }
  if (a.ws_w != nullptr || a.ws_b != nullptr) {
    const int64_t nb = bwd_blocks(a.rows);
    a.rows_q = a.rows / nb;
    a.rows_r = a.rows % nb;
    const dim3 grid(static_cast<unsigned>(ceil_div(a.cols, int64_t(kColThreads) * VEC)), static_cast<unsigned>(nb));
    bwd_dwdb_kernel<A, VEC, kRms><<<grid, dim3(kColThreads, kRowThreads), 0, s>>>(a);
  }
}

template <typename A, int VEC, bool kRms>
Status launch_bwd_vec(const BwdArgs& a, cudaStream_t s) {
  Status st;
  if (!try_bwd_fused<A, VEC, kRms>(a, st, s)) launch_bwd_split<A, VEC, kChunkNv, kRms>(a, s);
  return st;
}

template <typename A>
void launch_reduce(const BwdArgs& a, void* dweight, void* dbias, DType w_dt, cudaStream_t s) {
  const int nout = (a.ws_w != nullptr ? 1 : 0) + (a.ws_b != nullptr ? 1 : 0);
  if (nout == 0) return;
  const A* src0 = static_cast<const A*>(a.ws_w != nullptr ? a.ws_w : a.ws_b);
  void* out0 = a.ws_w != nullptr ? dweight : dbias;
  const dim3 grid(static_cast<unsigned>(ceil_div(a.cols, kColThreads)), static_cast<unsigned>(nout));
  reduce_partials_kernel<A><<<grid, dim3(kColThreads, kRowThreads), 0, s>>>(
      src0, static_cast<const A*>(a.ws_b), out0, dbias, bwd_blocks(a.rows), a.cols, w_dt);
}

template <bool kRms>
Status dispatch_bwd(const BwdArgs& a, void* dweight, void* dbias, DType w_dt, cudaStream_t s) {
  const char* what = kRms ? "rms_norm_backward (cuda)" : "layer_norm_backward (cuda)";
  const bool wide = a.x_dt == DType::Float64;
  const int vec = wide ? 2 : a.x_dt == DType::Float32 ? 4 : 8;
  Status st;
  if (!bwd_vec_ok(a, vec)) {
    if (wide) launch_bwd_split<double, 1, kScalarNv / 2, kRms>(a, s);
    else launch_bwd_split<float, 1, kScalarNv, kRms>(a, s);
  } else if (vec == 2) {
    st = launch_bwd_vec<double, 2, kRms>(a, s);
  } else if (vec == 4) {
    st = launch_bwd_vec<float, 4, kRms>(a, s);
  } else {
    st = launch_bwd_vec<float, 8, kRms>(a, s);
  }
  if (!st.ok()) return st;
  st = check_launch(what);
  if (!st.ok()) return st;
  if (wide) launch_reduce<double>(a, dweight, dbias, w_dt, s);
  else launch_reduce<float>(a, dweight, dbias, w_dt, s);
  return check_launch(what);
}

size_t acc_size(DType x) { return x == DType::Float64 ? 8 : 4; }

template <typename P>
size_t workspace_bytes(const P& p) {
  const int nacc = (p.dweight != nullptr ? 1 : 0) + (p.dbias != nullptr ? 1 : 0);
  if (nacc == 0 || p.rows <= 0 || p.cols <= 0) return 0;
  return static_cast<size_t>(nacc) * static_cast<size_t>(bwd_blocks(p.rows)) * static_cast<size_t>(p.cols) *
         acc_size(p.x_dtype);
}

// cols == 0 with rows > 0: NaN statistics, nothing else to write.
Status fill_nan_stats(DType x_dt, void* a, void* b, int64_t rows, cudaStream_t s, const char* what) {
  if (a == nullptr && b == nullptr) return Status::OK();
  const unsigned grid = static_cast<unsigned>(std::min<int64_t>(ceil_div(rows, 256), 4096));
  if (x_dt == DType::Float64) {
    fill_nan_kernel<double><<<grid, 256, 0, s>>>(static_cast<double*>(a), static_cast<double*>(b), rows);
  } else {
    fill_nan_kernel<float><<<grid, 256, 0, s>>>(static_cast<float*>(a), static_cast<float*>(b), rows);
  }
  return check_launch(what);
}

// rows == 0: dweight / dbias are sums over no rows.
Status zero_weight_grads(void* dw, void* db, int64_t cols, DType w_dt, cudaStream_t s, const char* what) {
  const size_t bytes = static_cast<size_t>(cols) * dtype_size(w_dt);
  for (void* out : {dw, db}) {
    if (out == nullptr || bytes == 0) continue;
    const cudaError_t e = cudaMemsetAsync(out, 0, bytes, s);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      return Status(StatusCode::CudaError, std::string(what) + ": " + cudaGetErrorString(e));
    }
  }
  return Status::OK();
}

template <typename P>
FwdArgs fwd_args(const P& p) {
  FwdArgs a{};
  a.rows = p.rows;
  a.cols = p.cols;
  a.x = static_cast<const char*>(p.x);
  a.x_stride_b = p.x_stride * esize(p.x_dtype);
  a.x_dt = p.x_dtype;
  a.res = static_cast<const char*>(p.residual);
  a.res_stride_b = p.residual_stride * esize(p.residual_dtype);
  a.res_dt = p.residual_dtype;
  a.w = p.weight;
  a.b = p.bias;
  a.w_dt = p.w_dtype;
  a.y = static_cast<char*>(p.y);
  a.y_row_b = p.cols * esize(p.y_dtype);
  a.y_dt = p.y_dtype;
  a.ro = static_cast<char*>(p.residual_out);
  a.ro_row_b = p.cols * esize(p.residual_out_dtype);
  a.ro_dt = p.residual_out_dtype;
  a.eps = p.eps;
  a.inv_n_f = 1.0f / static_cast<float>(p.cols);
  a.inv_n_d = 1.0 / static_cast<double>(p.cols);
  a.offset = 0.0;
  a.casting = Casting::Gemma;
  a.xd = p.residual_out != nullptr ? p.residual_out_dtype : p.x_dtype;
  a.tpr = 1;
  a.tpr_log2 = 0;
  // A residual without residual_out is rejected by validate(); residual is only read in add & norm mode.
  if (a.ro == nullptr) a.res = nullptr;
  return a;
}

template <typename P>
BwdArgs bwd_args(const P& p) {
  BwdArgs a{};
  a.rows = p.rows;
  a.cols = p.cols;
  a.dy = static_cast<const char*>(p.dy);
  a.dy_stride_b = p.dy_stride * esize(p.dy_dtype);
  a.dy_dt = p.dy_dtype;
  a.x = static_cast<const char*>(p.x);
  a.x_stride_b = p.x_stride * esize(p.x_dtype);
  a.x_dt = p.x_dtype;
  a.dres = static_cast<const char*>(p.dresidual_out);
  a.dres_stride_b = p.dresidual_out_stride * esize(p.dresidual_out_dtype);
  a.dres_dt = p.dresidual_out_dtype;
  a.rstd = p.rstd;
  a.w = p.weight;
  a.w_dt = p.w_dtype;
  a.dx = static_cast<char*>(p.dx);
  a.dx_row_b = p.cols * esize(p.dx_dtype);
  a.dx_dt = p.dx_dtype;
  const int64_t part = bwd_blocks(p.rows) * p.cols;
  const size_t asz = acc_size(p.x_dtype);
  char* ws = static_cast<char*>(p.workspace);
  a.ws_w = p.dweight != nullptr ? ws : nullptr;
  a.ws_b = p.dbias != nullptr ? ws + (p.dweight != nullptr ? static_cast<size_t>(part) * asz : 0) : nullptr;
  a.rows_q = p.rows;
  a.rows_r = 0;
  a.inv_n_f = 1.0f / static_cast<float>(p.cols);
  a.inv_n_d = 1.0 / static_cast<double>(p.cols);
  a.offset = 0.0;
  a.casting = Casting::Gemma;
  a.xd = p.x_dtype;
  a.yd = p.x_dtype;
  a.tpr = 1;
  a.tpr_log2 = 0;
  return a;
}

}  // namespace

size_t layer_norm_bwd_workspace_bytes(const LayerNormBwdParams& p) { return workspace_bytes(p); }
size_t rms_norm_bwd_workspace_bytes(const RMSNormBwdParams& p) { return workspace_bytes(p); }

Status layer_norm_fwd(const LayerNormParams& p, cudaStream_t stream) {
  Status st = norm::validate(p);
  if (!st.ok() || p.rows == 0) return st;
  if (p.cols == 0) return fill_nan_stats(p.x_dtype, p.mean, p.rstd, p.rows, stream, "layer_norm (cuda)");
  FwdArgs a = fwd_args(p);
  a.mean = p.mean;
  a.rstd = p.rstd;
  return dispatch_fwd<false>(a, stream);
}

Status rms_norm_fwd(const RMSNormParams& p, cudaStream_t stream) {
  Status st = norm::validate(p);
  if (!st.ok() || p.rows == 0) return st;
  if (p.cols == 0) return fill_nan_stats(p.x_dtype, p.rstd, nullptr, p.rows, stream, "rms_norm (cuda)");
  FwdArgs a = fwd_args(p);
  a.mean = nullptr;
  a.rstd = p.rstd;
  a.offset = p.offset;
  // llama/none only round where the normalised dtype is 16-bit; elsewhere they are gemma (as on the CPU).
  a.casting = is_16bit(a.xd) ? p.casting : Casting::Gemma;
  return dispatch_fwd<true>(a, stream);
}

Status layer_norm_bwd(const LayerNormBwdParams& p, cudaStream_t stream) {
  Status st = norm::validate(p);
  if (!st.ok()) return st;
  const char* what = "layer_norm_backward (cuda)";
  if (p.rows == 0) return zero_weight_grads(p.dweight, p.dbias, p.cols, p.w_dtype, stream, what);
  if (p.cols == 0 || (p.dx == nullptr && p.dweight == nullptr && p.dbias == nullptr)) return st;
  BwdArgs a = bwd_args(p);
  a.mean = p.mean;
  return dispatch_bwd<false>(a, p.dweight, p.dbias, p.w_dtype, stream);
}

Status rms_norm_bwd(const RMSNormBwdParams& p, cudaStream_t stream) {
  Status st = norm::validate(p);
  if (!st.ok()) return st;
  const char* what = "rms_norm_backward (cuda)";
  if (p.rows == 0) return zero_weight_grads(p.dweight, p.dbias, p.cols, p.w_dtype, stream, what);
  if (p.cols == 0 || (p.dx == nullptr && p.dweight == nullptr && p.dbias == nullptr)) return st;
  BwdArgs a = bwd_args(p);
  a.mean = nullptr;
  a.offset = p.offset;
  a.xd = p.x_dtype;
  a.yd = p.y_dtype;
  a.casting = is_16bit(p.x_dtype) ? p.casting : Casting::Gemma;
  return dispatch_bwd<true>(a, p.dweight, p.dbias, p.w_dtype, stream);
}

}  // namespace cuda
}  // namespace norm
}  // namespace fastnorm

// HyperAttention CUDA core (specs/hyper_attention.md §2.4, §3.10): hash, plan, forward, backward, merge.
//
// The per-block work lives in hyper_attention_kernel.cuh (FASTNORM_HD, also run on the host by the emulation test);
// this file holds the __global__ wrappers, the launch plan and the plan's sort.
//
// Execution (one stream, launches in schedule order, nothing synchronises, nothing allocates):
//   plan      hash q and k (one launch each) -> per Approx piece, copy its keys and row indices into a segmented
//             layout equal to q_perm/k_perm's -> one cub::DeviceSegmentedRadixSort of (key, row) pairs over all
//             (b, h, piece) segments (LSD radix sort is stable, so the order is (key, row index), the unique order
//             the CPU's counting sort gives) -> sample ranks.
//   forward   lse := -inf; per piece one row-owner launch (query tiles; Approx tiles never straddle a query block)
//             merging into the fp32 accumulator (out itself for float32); a final cast for fp16/bf16.
//   backward  D_i; per piece: dQ row-owner launch, dK/dV key-owner launch (block and exact entries, all G heads of
//             the group), and for Approx pieces a slot-owner launch writing per-slot partials followed by an in-order
//             scatter; final casts. No floating-point atomics: every accumulator element has one owner per launch.
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cub/device/device_segmented_radix_sort.cuh>
#include <string>
#include <vector>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/hyper_attention.h"
#include "hyper_attention_kernel.cuh"

namespace fastnorm {
namespace hyper_attention {
namespace cuda {
namespace {

using namespace kern;  // NOLINT

// ---- kernels ------------------------------------------------------------------------------------------------------
template <class T>
__global__ void hash_kernel(View x, int64_t H, int64_t N, int64_t D, const float* proj, int r, int32_t* keys,
                            int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const int64_t n = row % N, bh = row / N;
  keys[row] = hash_row<T>(x, bh / H, bh % H, n, D, proj, r);
}

// One Approx piece's slice of the segmented sort input: keys and row indices in q_perm's (or k_perm's) layout,
// plus the segment bounds of every (b, h) for this piece (segment index bh * num_approx + a).
__global__ void fill_segments_kernel(const int32_t* keys, int64_t N, int64_t first, int64_t n, int64_t P,
                                     int64_t off, int64_t rows, uint32_t* keys_in, int32_t* vals_out,
                                     int* seg_begin, int* seg_end, int64_t num_approx, int64_t a) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows) return;
  const int64_t bh = i / n, t = i % n;
  if (keys_in != nullptr) keys_in[bh * P + off + t] = static_cast<uint32_t>(keys[bh * N + first + t]);
  vals_out[bh * P + off + t] = static_cast<int32_t>(first + t);
  if (t == 0 && seg_begin != nullptr) {
    seg_begin[bh * num_approx + a] = static_cast<int>(bh * P + off);
    seg_end[bh * num_approx + a] = static_cast<int>(bh * P + off + n);
  }
}

__global__ void sample_rank_kernel(const int32_t* words, int32_t* samples, int64_t S, int64_t off, int64_t m,
                                   int64_t nk, int64_t rows) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= rows) return;
  const int64_t bg = i / m, t = i % m;
  const int64_t at = bg * S + off + t;
  samples[at] = static_cast<int32_t>(hd::sample_rank(words[at], nk));
}

template <class T>
__global__ void __launch_bounds__(kThreads) fwd_kernel(Args a, PieceK pc, ViewF acc, float* lse) {
  extern __shared__ __align__(16) unsigned char smem[];
  fwd_block<T>(a, pc, acc, lse, blockIdx.x, threadIdx.x, blockDim.x, smem);
}

template <class T>
__global__ void __launch_bounds__(kThreads) dq_kernel(Args a, PieceK pc, View dout, const float* lse,
                                                      const float* dvec, float* dq_acc) {
  extern __shared__ __align__(16) unsigned char smem[];
  dq_block<T>(a, pc, dout, lse, dvec, dq_acc, blockIdx.x, threadIdx.x, blockDim.x, smem);
}

template <class T>
__global__ void __launch_bounds__(kThreads) dkv_kernel(Args a, PieceK pc, int mode, View dout, const float* lse,
                                                       const float* dvec, DkvOut o) {
  extern __shared__ __align__(16) unsigned char smem[];
  dkv_block<T>(a, pc, mode, dout, lse, dvec, o, blockIdx.x, threadIdx.x, blockDim.x, smem);
}

__global__ void scatter_kernel(Args a, PieceK pc, DkvOut o) {
  scatter_samples(a, pc, o, blockIdx.x, threadIdx.x, blockDim.x);
}

template <class T>
__global__ void dvec_kernel(View dout, View out, const float* dlse, float* dvec, int64_t H, int64_t N, int64_t D,
                            int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const int64_t n = row % N, bh = row / N;
  dvec[row] = dvec_row<T>(dout, out, dlse, bh / H, bh % H, n, row, D);
}

__global__ void fill_f32_kernel(float* p, float v, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) p[i] = v;
}

// dst (storage T, strides) = src (fp32 contiguous [B, H, N, D]); src == nullptr writes zeros.
template <class T>
__global__ void cast_kernel(const float* src, void* dst, int64_t sb, int64_t sh, int64_t sn, int64_t sd, int64_t H,
                            int64_t N, int64_t D, int64_t total) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const int64_t d = i % D, row = i / D, n = row % N, bh = row / N, b = bh / H, h = bh % H;
  static_cast<T*>(dst)[b * sb + h * sh + n * sn + d * sd] = Conv<T>::store(src != nullptr ? src[i] : 0.f);
}

template <class T>
__global__ void merge_kernel(View o1, const float* l1, View o2, const float* l2, void* out, int64_t sb, int64_t sh,
                             int64_t sn, int64_t sd, float* lse, int64_t H, int64_t N, int64_t D, int64_t rows) {
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const int64_t n = row % N, bh = row / N, b = bh / H, h = bh % H;
  const hd::LseMerge<float> mg = hd::lse_merge<float>(l1[row], l2[row]);
  T* dst = static_cast<T*>(out) + b * sb + h * sh + n * sn;
  for (int64_t d = 0; d < D; ++d) {
    const float x = mg.c1 != 0.f ? mg.c1 * ld<T>(o1, b, h, n, d) : 0.f;
    const float y = mg.c2 != 0.f ? mg.c2 * ld<T>(o2, b, h, n, d) : 0.f;
    dst[d * sd] = Conv<T>::store(x + y);
  }
  lse[row] = mg.lse;
}

// ---- host helpers -------------------------------------------------------------------------------------------------
Status check_launch(const char* what) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return Status::OK();
  return Status(StatusCode::CudaError, std::string("hyper_attention ") + what + ": " + cudaGetErrorString(e));
}
Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::OK();
  (void)cudaGetLastError();
  return Status(StatusCode::CudaError, std::string("hyper_attention ") + what + ": " + cudaGetErrorString(e));
}

unsigned grid1d(int64_t n, int threads) { return static_cast<unsigned>(ceil_div(n, threads)); }

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

// Largest tile (32, 16 or 8 rows and keys) whose shared memory fits the device.
enum class KernelKind { Fwd, Dq, Dkv };
int pick_tile(KernelKind kk, int Dp, size_t& bytes) {
  const size_t cap = max_smem_optin();
  for (int t = kMaxTile; t >= 8; t /= 2) {
    const int64_t fl = kk == KernelKind::Fwd ? fwd_smem_floats(t, t, Dp)
                       : kk == KernelKind::Dq ? dq_smem_floats(t, t, Dp) : dkv_smem_floats(t, t, Dp);
    bytes = static_cast<size_t>(meta_bytes() + fl * 4);
    if (bytes <= cap) return t;
  }
  return 0;
}

template <class K>
Status set_smem(K kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return Status::OK();
  return cuda_status(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)),
                     "cudaFuncSetAttribute");
}

View view_of(const void* p, const HyperAttnStrides& s) {
  View v;
  v.p = p; v.sb = s.b; v.sh = s.h; v.sn = s.n; v.sd = s.d;
  return v;
}

std::vector<HyperAttnSubproblem> get_schedule(const HyperAttnProblem& p, Status& st) {
  int64_t count = 0;
  st = schedule(p.config, p.nq, p.nk, p.causal, nullptr, 0, &count);
  std::vector<HyperAttnSubproblem> s(static_cast<size_t>(count));
  if (st.ok() && count > 0) st = schedule(p.config, p.nq, p.nk, p.causal, s.data(), count, &count);
  return s;
}

Args args_of(const HyperAttnProblem& p, const HyperAttnPlan& pl) {
  Args a;
  a.B = p.batch; a.Hq = p.heads_q; a.Hkv = p.heads_kv; a.G = p.heads_kv > 0 ? p.heads_q / p.heads_kv : 1;
  a.Nq = p.nq; a.Nk = p.nk; a.D = p.head_dim;
  a.scale = static_cast<float>(p.scale);
  a.m = p.config.sample_size;
  a.q = view_of(p.q, p.q_strides); a.k = view_of(p.k, p.k_strides); a.v = view_of(p.v, p.v_strides);
  a.q_perm = pl.q_perm; a.pq = pl.pq; a.k_perm = pl.k_perm; a.pk = pl.pk; a.samples = pl.samples; a.s = pl.s;
  a.Dp = static_cast<int>(p.head_dim + 1);
  return a;
}

Status check_grid(int64_t blocks) {
  if (blocks > 0x7fffffffLL) return unsupported("hyper_attention: launch grid too large (B*H*tiles >= 2^31)");
  return Status::OK();
}

// Aligned carving of a workspace.
struct Carver {
  char* base;
  size_t used = 0;
  template <class X>
  X* take(int64_t count) {
    used = (used + 255) / 256 * 256;
    X* p = base ? reinterpret_cast<X*>(base + used) : nullptr;
    used += static_cast<size_t>(count > 0 ? count : 0) * sizeof(X);
    return p;
  }
};

// ---- plan ---------------------------------------------------------------------------------------------------------
struct PlanLayout {
  int32_t *qkeys, *kkeys;
  uint32_t *qk_in, *qk_out, *kk_in, *kk_out;
  int32_t *qv_in, *kv_in;
  int *qb, *qe, *kb, *ke;
  void* temp;
  size_t temp_bytes;
  size_t total;
};

size_t cub_temp_bytes(int64_t items, int64_t segs, int r) {
  size_t bytes = 0;
  if (items <= 0 || segs <= 0 || r <= 0) return 0;
  cub::DeviceSegmentedRadixSort::SortPairs(nullptr, bytes, static_cast<const uint32_t*>(nullptr),
                                           static_cast<uint32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
                                           static_cast<int32_t*>(nullptr), static_cast<int>(items),
                                           static_cast<int>(segs), static_cast<const int*>(nullptr),
                                           static_cast<const int*>(nullptr), 0, r);
  return bytes;
}

PlanLayout plan_layout(const HyperAttnProblem& p, const HyperAttnPlanSizes& s, int r, void* ws) {
  PlanLayout L{};
  Carver c{static_cast<char*>(ws)};
  const int64_t qi = p.batch * p.heads_q * s.pq, ki = p.batch * p.heads_kv * s.pk;
  const int64_t qs = p.batch * p.heads_q * s.num_approx, ks = p.batch * p.heads_kv * s.num_approx;
  L.qkeys = c.take<int32_t>(p.batch * p.heads_q * p.nq);
  L.kkeys = c.take<int32_t>(p.batch * p.heads_kv * p.nk);
  L.qk_in = c.take<uint32_t>(qi); L.qk_out = c.take<uint32_t>(qi); L.qv_in = c.take<int32_t>(qi);
  L.kk_in = c.take<uint32_t>(ki); L.kk_out = c.take<uint32_t>(ki); L.kv_in = c.take<int32_t>(ki);
  L.qb = c.take<int>(qs); L.qe = c.take<int>(qs); L.kb = c.take<int>(ks); L.ke = c.take<int>(ks);
  L.temp_bytes = std::max(cub_temp_bytes(qi, qs, r), cub_temp_bytes(ki, ks, r));
  L.temp = c.take<char>(static_cast<int64_t>(L.temp_bytes));
  L.total = c.used + 256;
  return L;
}

template <class T>
Status hash_t(const View& x, int64_t B, int64_t H, int64_t N, int64_t D, const float* proj, int r, int32_t* keys,
              cudaStream_t st) {
  const int64_t rows = B * H * N;
  if (rows == 0) return Status::OK();
  hash_kernel<T><<<grid1d(rows, 128), 128, 0, st>>>(x, H, N, D, proj, r, keys, rows);
  return check_launch("lsh_hash");
}

Status hash_any(DType dt, const View& x, int64_t B, int64_t H, int64_t N, int64_t D, const float* proj, int r,
                int32_t* keys, cudaStream_t st) {
  switch (dt) {
    case DType::Float32: return hash_t<float>(x, B, H, N, D, proj, r, keys, st);
    case DType::Float16: return hash_t<fastnorm::f16_t>(x, B, H, N, D, proj, r, keys, st);
    case DType::BFloat16: return hash_t<fastnorm::bf16_t>(x, B, H, N, D, proj, r, keys, st);
    default: return unsupported("hyper_attention (CUDA): float64 is supported on CPU only");
  }
}

Status check_dtype(DType dt) {
  if (dt == DType::Float32 || dt == DType::Float16 || dt == DType::BFloat16) return Status::OK();
  if (dt == DType::Float64) return unsupported("hyper_attention (CUDA): float64 is supported on CPU only");
  return invalid_argument("hyper_attention (CUDA): unsupported dtype");
}

// ---- forward / backward per dtype -----------------------------------------------------------------------------------
struct FwdLayout {
  float* acc;
  size_t total;
};
FwdLayout fwd_layout(const HyperAttnProblem& p, void* ws) {
  Carver c{static_cast<char*>(ws)};
  FwdLayout L{};
  L.acc = p.dtype == DType::Float32 ? nullptr : c.take<float>(p.batch * p.heads_q * p.nq * p.head_dim);
  L.total = c.used + 256;
  return L;
}

template <class T>
Status forward_t(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnOutput& o, void* ws,
                 cudaStream_t st) {
  const int64_t rows = p.batch * p.heads_q * p.nq, D = p.head_dim;
  if (rows == 0) return Status::OK();
  float* lse = static_cast<float*>(o.lse);
  if (p.nk == 0 || p.heads_kv == 0) {  // out = 0, lse = -inf
    cast_kernel<T><<<grid1d(rows * D, 256), 256, 0, st>>>(nullptr, o.out, o.out_strides.b, o.out_strides.h,
                                                           o.out_strides.n, o.out_strides.d, p.heads_q, p.nq, D,
                                                           rows * D);
    fill_f32_kernel<<<grid1d(rows, 256), 256, 0, st>>>(lse, -INFINITY, rows);
    return check_launch("forward (Nk = 0)");
  }
  Status s;
  const std::vector<HyperAttnSubproblem> sched = get_schedule(p, s);
  if (!s.ok()) return s;
  Args a = args_of(p, pl);
  size_t smem = 0;
  const int tile = pick_tile(KernelKind::Fwd, a.Dp, smem);
  if (tile == 0) return unsupported("hyper_attention (CUDA): not enough shared memory for head_dim " + std::to_string(D));
  a.TQ = a.TK = tile;
  const FwdLayout L = fwd_layout(p, ws);
  ViewF acc;
  if (L.acc == nullptr) {  // float32: accumulate in out itself
    acc.p = static_cast<float*>(o.out);
    acc.sb = o.out_strides.b; acc.sh = o.out_strides.h; acc.sn = o.out_strides.n; acc.sd = o.out_strides.d;
  } else {
    acc.p = L.acc; acc.sd = 1; acc.sn = D; acc.sh = p.nq * D; acc.sb = p.heads_q * p.nq * D;
  }
  fill_f32_kernel<<<grid1d(rows, 256), 256, 0, st>>>(lse, -INFINITY, rows);
  if (!(s = check_launch("forward (lse init)")).ok()) return s;
  if (!(s = set_smem(fwd_kernel<T>, smem)).ok()) return s;
  for (const HyperAttnSubproblem& sp : sched) {
    const PieceK pc = piece_of(sp, a.m, tile, false, false);
    const int64_t blocks = p.batch * p.heads_q * pc.ntiles;
    if (!(s = check_grid(blocks)).ok()) return s;
    fwd_kernel<T><<<static_cast<unsigned>(blocks), kThreads, smem, st>>>(a, pc, acc, lse);
    if (!(s = check_launch("forward")).ok()) return s;
  }
  if (L.acc != nullptr) {
    cast_kernel<T><<<grid1d(rows * D, 256), 256, 0, st>>>(L.acc, o.out, o.out_strides.b, o.out_strides.h,
                                                           o.out_strides.n, o.out_strides.d, p.heads_q, p.nq, D,
                                                           rows * D);
    if (!(s = check_launch("forward (cast)")).ok()) return s;
  }
  return Status::OK();
}

struct BwdLayout {
  float *dvec, *dq, *dk, *dv, *pk, *pv;
  size_t total;
};
BwdLayout bwd_layout(const HyperAttnProblem& p, void* ws) {
  Carver c{static_cast<char*>(ws)};
  BwdLayout L{};
  const int64_t D = p.head_dim;
  L.dvec = c.take<float>(p.batch * p.heads_q * p.nq);
  L.dq = c.take<float>(p.batch * p.heads_q * p.nq * D);
  L.dk = c.take<float>(p.batch * p.heads_kv * p.nk * D);
  L.dv = c.take<float>(p.batch * p.heads_kv * p.nk * D);
  L.pk = c.take<float>(p.batch * p.heads_kv * p.config.sample_size * D);
  L.pv = c.take<float>(p.batch * p.heads_kv * p.config.sample_size * D);
  L.total = c.used + 256;
  return L;
}

template <class T>
Status backward_t(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnGrads& g, void* ws,
                  cudaStream_t st) {
  const int64_t D = p.head_dim;
  const int64_t qrows = p.batch * p.heads_q * p.nq, krows = p.batch * p.heads_kv * p.nk;
  Status s;
  const BwdLayout L = bwd_layout(p, ws);
  if (qrows > 0 && (s = cuda_status(cudaMemsetAsync(L.dq, 0, sizeof(float) * qrows * D, st), "memset")).ok() == false)
    return s;
  if (krows > 0) {
    if (!(s = cuda_status(cudaMemsetAsync(L.dk, 0, sizeof(float) * krows * D, st), "memset")).ok()) return s;
    if (!(s = cuda_status(cudaMemsetAsync(L.dv, 0, sizeof(float) * krows * D, st), "memset")).ok()) return s;
  }
  if (qrows > 0 && krows > 0) {
    const std::vector<HyperAttnSubproblem> sched = get_schedule(p, s);
    if (!s.ok()) return s;
    Args a = args_of(p, pl);
    const View dout = view_of(g.dout, g.dout_strides), out = view_of(g.out, g.out_strides);
    const float* lse = static_cast<const float*>(g.lse);
    dvec_kernel<T><<<grid1d(qrows, 128), 128, 0, st>>>(dout, out, static_cast<const float*>(g.dlse), L.dvec,
                                                        p.heads_q, p.nq, D, qrows);
    if (!(s = check_launch("backward (D_i)")).ok()) return s;
    size_t smem_q = 0, smem_k = 0;
    const int Tq = pick_tile(KernelKind::Dq, a.Dp, smem_q), Tk = pick_tile(KernelKind::Dkv, a.Dp, smem_k);
    if (Tq == 0 || Tk == 0)
      return unsupported("hyper_attention (CUDA): not enough shared memory for head_dim " + std::to_string(D));
    if (!(s = set_smem(dq_kernel<T>, smem_q)).ok()) return s;
    if (!(s = set_smem(dkv_kernel<T>, smem_k)).ok()) return s;
    Args aq = a, ak = a;
    aq.TQ = aq.TK = Tq;
    ak.TQ = ak.TK = Tk;
    DkvOut o;
    o.dk_acc = L.dk; o.dv_acc = L.dv; o.partial_k = L.pk; o.partial_v = L.pv;
    for (const HyperAttnSubproblem& sp : sched) {
      const PieceK pq = piece_of(sp, a.m, Tq, false, false);
      int64_t blocks = p.batch * p.heads_q * pq.ntiles;
      if (!(s = check_grid(blocks)).ok()) return s;
      dq_kernel<T><<<static_cast<unsigned>(blocks), kThreads, smem_q, st>>>(aq, pq, dout, lse, L.dvec, L.dq);
      if (!(s = check_launch("backward (dq)")).ok()) return s;
      const PieceK pk = piece_of(sp, a.m, Tk, true, false);
      blocks = p.batch * p.heads_kv * pk.ntiles;
      if (!(s = check_grid(blocks)).ok()) return s;
      dkv_kernel<T><<<static_cast<unsigned>(blocks), kThreads, smem_k, st>>>(ak, pk, 0, dout, lse, L.dvec, o);
      if (!(s = check_launch("backward (dk, dv)")).ok()) return s;
      if (sp.kind == HyperAttnKind::Approx && a.m > 0 && sp.num_blocks > 1) {
        const PieceK ps = piece_of(sp, a.m, Tk, true, true);
        blocks = p.batch * p.heads_kv * ps.ntiles;
        if (!(s = check_grid(blocks)).ok()) return s;
        dkv_kernel<T><<<static_cast<unsigned>(blocks), kThreads, smem_k, st>>>(ak, ps, 1, dout, lse, L.dvec, o);
        if (!(s = check_launch("backward (sample partials)")).ok()) return s;
        const int th = static_cast<int>(std::min<int64_t>(D, 256));
        scatter_kernel<<<static_cast<unsigned>(p.batch * p.heads_kv), th, 0, st>>>(ak, ps, o);
        if (!(s = check_launch("backward (sample scatter)")).ok()) return s;
      }
    }
  }
  if (qrows > 0) {
    cast_kernel<T><<<grid1d(qrows * D, 256), 256, 0, st>>>(L.dq, g.dq, g.dq_strides.b, g.dq_strides.h,
                                                            g.dq_strides.n, g.dq_strides.d, p.heads_q, p.nq, D,
                                                            qrows * D);
    if (!(s = check_launch("backward (dq cast)")).ok()) return s;
  }
  if (krows > 0) {
    cast_kernel<T><<<grid1d(krows * D, 256), 256, 0, st>>>(L.dk, g.dk, g.dk_strides.b, g.dk_strides.h,
                                                            g.dk_strides.n, g.dk_strides.d, p.heads_kv, p.nk, D,
                                                            krows * D);
    cast_kernel<T><<<grid1d(krows * D, 256), 256, 0, st>>>(L.dv, g.dv, g.dv_strides.b, g.dv_strides.h,
                                                            g.dv_strides.n, g.dv_strides.d, p.heads_kv, p.nk, D,
                                                            krows * D);
    if (!(s = check_launch("backward (dk, dv cast)")).ok()) return s;
  }
  return Status::OK();
}

template <class T>
Status merge_t(const HyperAttnMergeParams& p, cudaStream_t st) {
  const int64_t rows = p.batch * p.heads * p.n;
  if (rows == 0) return Status::OK();
  merge_kernel<T><<<grid1d(rows, 128), 128, 0, st>>>(
      view_of(p.out1, p.out1_strides), static_cast<const float*>(p.lse1), view_of(p.out2, p.out2_strides),
      static_cast<const float*>(p.lse2), p.out, p.out_strides.b, p.out_strides.h, p.out_strides.n, p.out_strides.d,
      static_cast<float*>(p.lse), p.heads, p.n, p.head_dim, rows);
  return check_launch("merge");
}

}  // namespace

// ---- entry points ---------------------------------------------------------------------------------------------------
Status lsh_hash(const HyperAttnHashParams& p, CUstream_st* stream) {
  if (p.num_projs < 0 || p.num_projs > 16) return invalid_argument("lsh_hash: num_projs must be in [0, 16]");
  if (p.batch < 0 || p.heads < 0 || p.n < 0 || p.head_dim < 1) return invalid_argument("lsh_hash: bad sizes");
  Status s = check_dtype(p.dtype);
  if (!s.ok()) return s;
  return hash_any(p.dtype, view_of(p.x, p.x_strides), p.batch, p.heads, p.n, p.head_dim, p.proj, p.num_projs, p.keys,
                  stream);
}

size_t plan_workspace_size(const HyperAttnProblem& p, int32_t num_projs) {
  HyperAttnPlanSizes s;
  if (!plan_sizes(p.config, p.nq, p.nk, p.causal, &s).ok() || s.num_approx == 0) return 256;
  return plan_layout(p, s, num_projs, nullptr).total;
}

Status plan(const HyperAttnProblem& p, const HyperAttnPlanInputs& in, const HyperAttnPlan& pl, void* workspace,
            size_t workspace_size, CUstream_st* stream) {
  Status s = validate(p);
  if (!s.ok()) return s;
  if (!(s = check_dtype(p.dtype)).ok()) return s;
  if (in.num_projs < 0 || in.num_projs > 16) return invalid_argument("plan: num_projs must be in [0, 16]");
  HyperAttnPlanSizes sz;
  if (!(s = plan_sizes(p.config, p.nq, p.nk, p.causal, &sz)).ok()) return s;
  if (pl.pq != sz.pq || pl.pk != sz.pk || pl.s != sz.s) return invalid_argument("plan: plan sizes differ from the schedule");
  if (sz.num_approx == 0 || p.batch == 0 || p.heads_q == 0) return Status::OK();
  const int r = in.num_projs;
  const int64_t qi = p.batch * p.heads_q * sz.pq, ki = p.batch * p.heads_kv * sz.pk;
  if (qi >= (int64_t(1) << 31) || ki >= (int64_t(1) << 31))
    return unsupported("plan (CUDA): more than 2^31 - 1 permutation entries");
  const PlanLayout L = plan_layout(p, sz, r, workspace);
  if (workspace_size < L.total) return invalid_argument("plan: workspace too small");
  cudaStream_t st = stream;
  const std::vector<HyperAttnSubproblem> sched = get_schedule(p, s);
  if (!s.ok()) return s;
  if (r > 0) {
    if (!(s = hash_any(p.dtype, view_of(p.q, p.q_strides), p.batch, p.heads_q, p.nq, p.head_dim, in.proj, r, L.qkeys,
                       st)).ok())
      return s;
    if (!(s = hash_any(p.dtype, view_of(p.k, p.k_strides), p.batch, p.heads_kv, p.nk, p.head_dim, in.proj, r,
                       L.kkeys, st)).ok())
      return s;
  }
  int64_t a = 0;
  for (const HyperAttnSubproblem& sp : sched) {
    if (sp.kind != HyperAttnKind::Approx) continue;
    // r == 0: every key is 0, the stable order is the identity: write the row indices straight into the perms
    const int64_t nq_rows = p.batch * p.heads_q * sp.nq, nk_rows = p.batch * p.heads_kv * sp.nk;
    fill_segments_kernel<<<grid1d(nq_rows, 256), 256, 0, st>>>(
        L.qkeys, p.nq, sp.q_begin, sp.nq, sz.pq, sp.q_perm_offset, nq_rows, r > 0 ? L.qk_in : nullptr,
        r > 0 ? L.qv_in : pl.q_perm, r > 0 ? L.qb : nullptr, L.qe, sz.num_approx, a);
    fill_segments_kernel<<<grid1d(nk_rows, 256), 256, 0, st>>>(
        L.kkeys, p.nk, sp.k_begin, sp.nk, sz.pk, sp.k_perm_offset, nk_rows, r > 0 ? L.kk_in : nullptr,
        r > 0 ? L.kv_in : pl.k_perm, r > 0 ? L.kb : nullptr, L.ke, sz.num_approx, a);
    const int64_t m = p.config.sample_size;
    if (m > 0) {
      const int64_t srows = p.batch * p.heads_kv * m;
      sample_rank_kernel<<<grid1d(srows, 256), 256, 0, st>>>(in.sample_words, pl.samples, sz.s, sp.sample_offset, m,
                                                            sp.nk, srows);
    }
    if (!(s = check_launch("plan (segments)")).ok()) return s;
    ++a;
  }
  if (r > 0) {
    size_t tb = L.temp_bytes;
    // LSD radix sort over the r key bits: stable, so equal keys keep ascending row index (the unique order of §3.2)
    s = cuda_status(cub::DeviceSegmentedRadixSort::SortPairs(
                        L.temp, tb, L.qk_in, L.qk_out, L.qv_in, pl.q_perm, static_cast<int>(qi),
                        static_cast<int>(p.batch * p.heads_q * sz.num_approx), L.qb, L.qe, 0, r, st),
                    "plan (sort q)");
    if (!s.ok()) return s;
    tb = L.temp_bytes;
    s = cuda_status(cub::DeviceSegmentedRadixSort::SortPairs(
                        L.temp, tb, L.kk_in, L.kk_out, L.kv_in, pl.k_perm, static_cast<int>(ki),
                        static_cast<int>(p.batch * p.heads_kv * sz.num_approx), L.kb, L.ke, 0, r, st),
                    "plan (sort k)");
    if (!s.ok()) return s;
  }
  return check_launch("plan");
}

size_t forward_workspace_size(const HyperAttnProblem& p) { return fwd_layout(p, nullptr).total; }

Status forward(const HyperAttnProblem& p, const HyperAttnPlan& plan, const HyperAttnOutput& o, void* workspace,
               size_t workspace_size, CUstream_st* stream) {
  Status s = validate(p);
  if (!s.ok()) return s;
  if (!(s = check_dtype(p.dtype)).ok()) return s;
  if (workspace_size < cuda::forward_workspace_size(p)) return invalid_argument("forward: workspace too small");
  switch (p.dtype) {
    case DType::Float32: return forward_t<float>(p, plan, o, workspace, stream);
    case DType::Float16: return forward_t<fastnorm::f16_t>(p, plan, o, workspace, stream);
    default: return forward_t<fastnorm::bf16_t>(p, plan, o, workspace, stream);
  }
}

size_t backward_workspace_size(const HyperAttnProblem& p) { return bwd_layout(p, nullptr).total; }

Status backward(const HyperAttnProblem& p, const HyperAttnPlan& plan, const HyperAttnGrads& g, void* workspace,
                size_t workspace_size, CUstream_st* stream) {
  Status s = validate(p);
  if (!s.ok()) return s;
  if (!(s = check_dtype(p.dtype)).ok()) return s;
  if (workspace_size < cuda::backward_workspace_size(p)) return invalid_argument("backward: workspace too small");
  switch (p.dtype) {
    case DType::Float32: return backward_t<float>(p, plan, g, workspace, stream);
    case DType::Float16: return backward_t<fastnorm::f16_t>(p, plan, g, workspace, stream);
    default: return backward_t<fastnorm::bf16_t>(p, plan, g, workspace, stream);
  }
}

Status merge(const HyperAttnMergeParams& p, CUstream_st* stream) {
  Status s = check_dtype(p.dtype);
  if (!s.ok()) return s;
  if (p.batch < 0 || p.heads < 0 || p.n < 0 || p.head_dim < 0) return invalid_argument("merge: bad sizes");
  switch (p.dtype) {
    case DType::Float32: return merge_t<float>(p, stream);
    case DType::Float16: return merge_t<fastnorm::f16_t>(p, stream);
    default: return merge_t<fastnorm::bf16_t>(p, stream);
  }
}

}  // namespace cuda
}  // namespace hyper_attention
}  // namespace fastnorm

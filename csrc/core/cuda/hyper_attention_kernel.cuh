// The HyperAttention CUDA kernels' per-block work (specs/hyper_attention.md §3.1-§3.10), written as FASTNORM_HD
// functions so that g++ can run them on the host (tests/cpp/test_hyper_attention_cuda_emulation.cpp).
//
// Every block body is written for ANY thread count: work items are walked with `for (i = tid; i < n; i += nthr)`
// and the phases are separated by FASTNORM_HA_SYNC() (__syncthreads() on the device, nothing on the host). The host
// emulation runs each block with one thread (tid 0, nthr 1), which executes every phase in order; the device runs
// the same code with 256 threads. No warp intrinsics, no atomics: every output element has one owner per launch
// and the launches run in schedule order on one stream, so results are deterministic (§3.8).
//
// The tiles are scalar fp32 (no tensor cores): correctness first. Shared memory holds a tile of TQ query rows and
// TK keys, both of head dim D padded to Dp = D + 1 floats per row (odd stride: the column walks of the dot products
// hit 32 different banks).
//
// Kernels (all fp32 accumulation, loads upcast from the storage type T in {float, f16_t, bf16_t}):
//   hash_row             one row's LSH key (same summation order as the CPU core: bit-identical keys)
//   fwd_block            row owner: a query tile of one piece, online softmax over the piece's key tiles (block keys,
//                        then sample slots with bias log ω and the in-block mask), merged into the fp32 accumulator
//                        with the §3.7 rule (pieces launch in schedule order; lse starts at -inf)
//   dq_block             row owner: dQ_i += s·Σ_e dS_e·k_j over the piece's entries of row i
//   dkv_block            key owner: dK_j, dV_j over the rows meeting key j (all G heads); for sample slots it writes
//                        per-slot partials that scatter_samples adds in slot order
#pragma once
#include <cmath>
#include <cstdint>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/hyper_attention_math.h"
#include "fastnorm/hyper_attention.h"

#if defined(__CUDA_ARCH__)
#define FASTNORM_HA_SYNC() __syncthreads()
#else
#define FASTNORM_HA_SYNC() ((void)0)
#endif

namespace fastnorm {
namespace hyper_attention {
namespace cuda {
namespace kern {

using fastnorm::detail::Conv;
namespace hd = fastnorm::hyper_attention::detail;

constexpr int kThreads = 256;
constexpr int kMaxTile = 32;

// A read-only [B, H, N, D] view.
struct View {
  const void* p = nullptr;
  int64_t sb = 0, sh = 0, sn = 0, sd = 0;
};
// A writable fp32 [B, H, N, D] view.
struct ViewF {
  float* p = nullptr;
  int64_t sb = 0, sh = 0, sn = 0, sd = 0;
};

template <class T>
FASTNORM_HD_INLINE float ld(const View& v, int64_t b, int64_t h, int64_t n, int64_t d) {
  return Conv<T>::load(static_cast<const T*>(v.p)[b * v.sb + h * v.sh + n * v.sn + d * v.sd]);
}

// Sizes, inputs and plan of the problem (device pointers), shared by all kernels.
struct Args {
  int64_t B = 0, Hq = 0, Hkv = 0, G = 1, Nq = 0, Nk = 0, D = 0;
  float scale = 1.f;
  int64_t m = 0;  // sample_size
  View q, k, v;
  const int32_t* q_perm = nullptr; int64_t pq = 0;
  const int32_t* k_perm = nullptr; int64_t pk = 0;
  const int32_t* samples = nullptr; int64_t s = 0;
  int TQ = kMaxTile, TK = kMaxTile, Dp = 1;
};

// One sub-problem as the kernels see it (host fills it from HyperAttnSubproblem).
struct PieceK {
  int32_t kind = 0;  // HyperAttnKind
  int64_t q0 = 0, nq = 0, k0 = 0, nk = 0;
  int64_t qpo = 0, kpo = 0, so = 0, nb = 0;
  float log_omega = 0.f;   // log(nk / m)
  int64_t qtpb = 0;        // Approx: query tiles per query block (row owner)
  int64_t ktpb = 0;        // Approx: key tiles per key block (key owner)
  int64_t ntiles = 0;      // tiles per (b, h) (row owner) or per (b, g) (key owner)
};

constexpr int32_t kExactFull = static_cast<int32_t>(HyperAttnKind::ExactFull);
constexpr int32_t kExactCausal = static_cast<int32_t>(HyperAttnKind::ExactCausal);
constexpr int32_t kApprox = static_cast<int32_t>(HyperAttnKind::Approx);

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Kernel view of one piece with T-row tiles (host side). Row owner: tiles of query rows (Approx: per query block,
// never straddling one); key owner: tiles of keys (Approx: per key block); slots: tiles of the m sample slots.
inline PieceK piece_of(const HyperAttnSubproblem& sp, int64_t m, int T, bool key_owner, bool slots) {
  PieceK pc;
  pc.kind = static_cast<int32_t>(sp.kind);
  pc.q0 = sp.q_begin; pc.nq = sp.nq; pc.k0 = sp.k_begin; pc.nk = sp.nk;
  pc.qpo = sp.q_perm_offset; pc.kpo = sp.k_perm_offset; pc.so = sp.sample_offset; pc.nb = sp.num_blocks;
  pc.log_omega = (sp.kind == HyperAttnKind::Approx && m > 0)
                     ? static_cast<float>(std::log(static_cast<double>(sp.nk) / static_cast<double>(m))) : 0.f;
  if (sp.kind == HyperAttnKind::Approx) {
    pc.qtpb = ceil_div(ceil_div(sp.nq, sp.num_blocks), T);
    pc.ktpb = ceil_div(ceil_div(sp.nk, sp.num_blocks), T);
    if (pc.qtpb < 1) pc.qtpb = 1;
  }
  if (slots) pc.ntiles = ceil_div(m, T);
  else if (!key_owner) pc.ntiles = sp.kind == HyperAttnKind::Approx ? sp.num_blocks * pc.qtpb : ceil_div(sp.nq, T);
  else pc.ntiles = sp.kind == HyperAttnKind::Approx ? sp.num_blocks * pc.ktpb : ceil_div(sp.nk, T);
  return pc;
}

// Small per-tile metadata kept in shared memory next to the float tiles.
struct RowMeta {
  int64_t abs[kMaxTile];   // absolute row index
  int64_t pos[kMaxTile];   // position used by the masks: relative row (causal) or query block (approx)
  float lse[kMaxTile], dd[kMaxTile];      // backward: final LSE and D_i
  float m[kMaxTile], l[kMaxTile], alpha[kMaxTile], c1[kMaxTile], c2[kMaxTile], inv[kMaxTile];
};
struct KeyMeta {
  int64_t abs[kMaxTile];   // absolute key index
  int64_t pos[kMaxTile];   // relative key position (causal)
  int64_t blk[kMaxTile];   // block of a sample slot's rank, -1 for block/exact keys (never masked by block)
  float bias[kMaxTile];    // log weight: 0 or log ω
};

// ---- hashing (§3.1) --------------------------------------------------------------------------------------------
// Bit t is set iff float32(<x, P[:, t]>) > 0, the dot product summed over d in ascending order without FMA
// contraction (built with -fmad=false), exactly as the CPU core does: the keys are bit-identical.
template <class T>
FASTNORM_HD_INLINE int32_t hash_row(const View& x, int64_t b, int64_t h, int64_t n, int64_t D, const float* proj,
                                    int r) {
  float acc[16];
  for (int t = 0; t < 16; ++t) acc[t] = 0.f;
  for (int64_t d = 0; d < D; ++d) {
    const float xv = ld<T>(x, b, h, n, d);
    for (int t = 0; t < r; ++t) acc[t] += xv * proj[d * r + t];
  }
  uint32_t bin = 0;
  for (int t = 0; t < r; ++t)
    if (acc[t] > 0.f) bin |= 1u << t;
  return static_cast<int32_t>(hd::inverse_gray(bin));
}

// ---- tile geometry ---------------------------------------------------------------------------------------------
// Shared-memory floats a kernel needs (RowMeta/KeyMeta live in front of them).
FASTNORM_HD_INLINE int64_t fwd_smem_floats(int TQ, int TK, int Dp) { return int64_t(2) * TQ * Dp + 2 * TK * Dp + TQ * TK; }
FASTNORM_HD_INLINE int64_t dq_smem_floats(int TQ, int TK, int Dp) { return int64_t(3) * TQ * Dp + 2 * TK * Dp + TQ * TK; }
FASTNORM_HD_INLINE int64_t dkv_smem_floats(int TQ, int TK, int Dp) { return int64_t(2) * TQ * Dp + 4 * TK * Dp + 2 * TQ * TK; }
FASTNORM_HD_INLINE int64_t meta_bytes() {
  return static_cast<int64_t>((sizeof(RowMeta) + sizeof(KeyMeta) + 15) / 16 * 16);
}

// Rows of a row-owner tile: which query rows block `tile` of piece `pc` owns for (b, h).
struct RowTile {
  int64_t nrows = 0;  // valid rows (0: nothing to do)
  int64_t start = 0;  // first relative row (exact) or first sorted position (approx)
  int64_t jb = 0;     // approx: query block
};
FASTNORM_HD_INLINE RowTile row_tile(const Args& a, const PieceK& pc, int64_t tile) {
  RowTile t;
  if (pc.kind == kApprox) {
    t.jb = tile / pc.qtpb;
    const int64_t qa = hd::block_begin(t.jb, pc.nq, pc.nb), qe = hd::block_begin(t.jb + 1, pc.nq, pc.nb);
    t.start = qa + (tile % pc.qtpb) * a.TQ;
    const int64_t n = qe - t.start;
    t.nrows = n < 0 ? 0 : (n > a.TQ ? a.TQ : n);
  } else {
    t.start = tile * a.TQ;
    const int64_t n = pc.nq - t.start;
    t.nrows = n > a.TQ ? a.TQ : n;
  }
  return t;
}

// Number of key entries (block keys + sample slots, or exact keys) a row-owner tile walks.
FASTNORM_HD_INLINE void row_tile_keys(const Args& a, const PieceK& pc, const RowTile& t, int64_t& nblk,
                                      int64_t& total, int64_t& ka) {
  if (pc.kind == kApprox) {
    ka = hd::block_begin(t.jb, pc.nk, pc.nb);
    nblk = hd::block_begin(t.jb + 1, pc.nk, pc.nb) - ka;
    total = nblk + ((a.m > 0 && pc.nb > 1) ? a.m : 0);
  } else {
    ka = 0;
    nblk = (pc.kind == kExactCausal) ? ((t.start + t.nrows) < pc.nk ? (t.start + t.nrows) : pc.nk) : pc.nk;
    total = nblk;
  }
}

// Metadata of key entry u of a piece for kv head (b, g): block key (rank ka + u), sample slot u - nblk, or exact key u.
FASTNORM_HD_INLINE void key_entry(const Args& a, const PieceK& pc, int64_t bg, int64_t u, int64_t nblk, int64_t ka,
                                  int64_t& abs, int64_t& pos, int64_t& blk, float& bias) {
  if (pc.kind != kApprox) {
    abs = pc.k0 + u; pos = u; blk = -1; bias = 0.f;
    return;
  }
  pos = 0;
  if (u < nblk) {
    abs = a.k_perm[bg * a.pk + pc.kpo + ka + u]; blk = -1; bias = 0.f;
  } else {
    const int64_t c = a.samples[bg * a.s + pc.so + (u - nblk)];
    abs = a.k_perm[bg * a.pk + pc.kpo + c];
    blk = hd::block_of_rank(c, pc.nk, pc.nb);
    bias = pc.log_omega;
  }
}

// Whether entry (row r, key j) of the tile counts (§3.4 mask, causal mask, tile bounds).
FASTNORM_HD_INLINE bool entry_valid(const PieceK& pc, const RowMeta& rm, const KeyMeta& km, int r, int j) {
  if (km.blk[j] >= 0 && km.blk[j] == rm.pos[r]) return false;            // sample slot in the row's own block
  if (pc.kind == kExactCausal && km.pos[j] > rm.pos[r]) return false;    // future key
  return true;
}

// Loads the key/value rows of tile entries [u0, u0 + nk) into Ks/Vs (and their metadata); rows past nk are zero.
template <class T>
FASTNORM_HD_INLINE void load_keys(const Args& a, const PieceK& pc, int64_t b, int64_t g, int64_t u0, int64_t nkt,
                                  int64_t nblk, int64_t ka, KeyMeta& km, float* Ks, float* Vs, int tid, int nthr) {
  const int64_t bg = b * a.Hkv + g;
  for (int j = tid; j < a.TK; j += nthr) {
    if (j < nkt) {
      key_entry(a, pc, bg, u0 + j, nblk, ka, km.abs[j], km.pos[j], km.blk[j], km.bias[j]);
    } else {
      km.abs[j] = -1; km.pos[j] = 0; km.blk[j] = -1; km.bias[j] = 0.f;
    }
  }
  FASTNORM_HA_SYNC();
  const int64_t D = a.D;
  for (int64_t i = tid; i < int64_t(a.TK) * D; i += nthr) {
    const int j = static_cast<int>(i / D);
    const int64_t d = i % D;
    const int64_t kabs = km.abs[j];
    Ks[j * a.Dp + d] = kabs >= 0 ? ld<T>(a.k, b, g, kabs, d) : 0.f;
    Vs[j * a.Dp + d] = kabs >= 0 ? ld<T>(a.v, b, g, kabs, d) : 0.f;
  }
  FASTNORM_HA_SYNC();
}

// Loads the rows of a row-owner tile (q and, for dq, dout), with their metadata.
template <class T>
FASTNORM_HD_INLINE void load_rows(const Args& a, const PieceK& pc, const RowTile& t, int64_t b, int64_t h,
                                  RowMeta& rm, float* Qs, const View* dout, float* dOs, int tid, int nthr) {
  const int64_t bh = b * a.Hq + h;
  for (int r = tid; r < a.TQ; r += nthr) {
    if (r < t.nrows) {
      if (pc.kind == kApprox) {
        rm.abs[r] = a.q_perm[bh * a.pq + pc.qpo + t.start + r];
        rm.pos[r] = t.jb;
      } else {
        rm.abs[r] = pc.q0 + t.start + r;
        rm.pos[r] = t.start + r;
      }
    } else {
      rm.abs[r] = -1; rm.pos[r] = -1;
    }
  }
  FASTNORM_HA_SYNC();
  const int64_t D = a.D;
  for (int64_t i = tid; i < int64_t(a.TQ) * D; i += nthr) {
    const int r = static_cast<int>(i / D);
    const int64_t d = i % D;
    const int64_t qabs = rm.abs[r];
    Qs[r * a.Dp + d] = qabs >= 0 ? ld<T>(a.q, b, h, qabs, d) : 0.f;
    if (dOs != nullptr) dOs[r * a.Dp + d] = qabs >= 0 ? ld<T>(*dout, b, h, qabs, d) : 0.f;
  }
  FASTNORM_HA_SYNC();
}

// Splits the block's dynamic shared memory.
struct Smem {
  RowMeta* rm;
  KeyMeta* km;
  float* f;
};
FASTNORM_HD_INLINE Smem carve(void* smem) {
  Smem s;
  char* p = static_cast<char*>(smem);
  s.rm = reinterpret_cast<RowMeta*>(p);
  s.km = reinterpret_cast<KeyMeta*>(p + sizeof(RowMeta));
  s.f = reinterpret_cast<float*>(p + meta_bytes());
  return s;
}

// ---- forward: one query tile of one piece (row owner) -------------------------------------------------------------
// acc/lse: the fp32 accumulator (out itself for fp32, else workspace) and the final lse, lse initialised to -inf;
// the tile's result is merged into them with lse_merge (a first piece meets -inf and is copied exactly).
template <class T>
FASTNORM_HD_INLINE void fwd_block(const Args& a, const PieceK& pc, const ViewF& acc, float* lse, int64_t block,
                                  int tid, int nthr, void* smem) {
  const int64_t bh = block / pc.ntiles, tile = block % pc.ntiles;
  const int64_t b = bh / a.Hq, h = bh % a.Hq, g = h / a.G;
  const RowTile t = row_tile(a, pc, tile);
  if (t.nrows <= 0) return;  // uniform over the block
  Smem sm = carve(smem);
  RowMeta& rm = *sm.rm;
  KeyMeta& km = *sm.km;
  const int TQ = a.TQ, TK = a.TK, Dp = a.Dp;
  const int64_t D = a.D;
  float* Qs = sm.f;
  float* Os = Qs + TQ * Dp;
  float* Ks = Os + TQ * Dp;
  float* Vs = Ks + TK * Dp;
  float* S = Vs + TK * Dp;  // [TQ][TK]
  load_rows<T>(a, pc, t, b, h, rm, Qs, nullptr, nullptr, tid, nthr);
  for (int64_t i = tid; i < int64_t(TQ) * D; i += nthr) Os[(i / D) * Dp + i % D] = 0.f;
  for (int r = tid; r < TQ; r += nthr) { rm.m[r] = -INFINITY; rm.l[r] = 0.f; }
  int64_t nblk, total, ka;
  row_tile_keys(a, pc, t, nblk, total, ka);
  for (int64_t u0 = 0; u0 < total; u0 += TK) {
    const int64_t nkt = (total - u0) < TK ? (total - u0) : TK;
    load_keys<T>(a, pc, b, g, u0, nkt, nblk, ka, km, Ks, Vs, tid, nthr);
    // S = s·<q, k> + log w, -inf where the entry does not count
    for (int i = tid; i < TQ * TK; i += nthr) {
      const int r = i / TK, j = i % TK;
      float sv = -INFINITY;
      if (r < t.nrows && j < nkt && entry_valid(pc, rm, km, r, j)) {
        float dot = 0.f;
        for (int64_t d = 0; d < D; ++d) dot += Qs[r * Dp + d] * Ks[j * Dp + d];
        sv = a.scale * dot + km.bias[j];
      }
      S[r * TK + j] = sv;
    }
    FASTNORM_HA_SYNC();
    // online softmax statistics per row; S becomes the unnormalised probabilities e^{S - m}
    for (int r = tid; r < TQ; r += nthr) {
      float mx = -INFINITY;
      for (int j = 0; j < TK; ++j) mx = S[r * TK + j] > mx ? S[r * TK + j] : mx;
      hd::OnlineSoftmax<float> os;
      os.m = rm.m[r];
      os.l = rm.l[r];
      const float alpha = os.update(mx);
      float sum = 0.f;
      for (int j = 0; j < TK; ++j) {
        const float sv = S[r * TK + j];
        const float p = sv == -INFINITY ? 0.f : expf(sv - os.m);
        S[r * TK + j] = p;
        sum += p;
      }
      rm.m[r] = os.m;
      rm.l[r] = os.l + sum;
      rm.alpha[r] = alpha;
    }
    FASTNORM_HA_SYNC();
    for (int64_t i = tid; i < int64_t(TQ) * D; i += nthr) {
      const int r = static_cast<int>(i / D);
      const int64_t d = i % D;
      float o = Os[r * Dp + d] * rm.alpha[r];
      for (int j = 0; j < TK; ++j) o += S[r * TK + j] * Vs[j * Dp + d];
      Os[r * Dp + d] = o;
    }
    FASTNORM_HA_SYNC();
  }
  // epilogue: normalise and merge into the accumulator (§3.7)
  for (int r = tid; r < TQ; r += nthr) {
    if (r >= t.nrows) continue;
    const float l = rm.l[r];
    const float lnew = l > 0.f ? rm.m[r] + logf(l) : -INFINITY;
    const int64_t row = bh * a.Nq + rm.abs[r];
    const hd::LseMerge<float> mg = hd::lse_merge<float>(lse[row], lnew);
    rm.c1[r] = mg.c1;
    rm.c2[r] = mg.c2;
    rm.inv[r] = l > 0.f ? 1.f / l : 0.f;
    rm.lse[r] = mg.lse;
  }
  FASTNORM_HA_SYNC();
  for (int64_t i = tid; i < int64_t(TQ) * D; i += nthr) {
    const int r = static_cast<int>(i / D);
    const int64_t d = i % D;
    if (r >= t.nrows) continue;
    float* dst = acc.p + b * acc.sb + h * acc.sh + rm.abs[r] * acc.sn + d * acc.sd;
    const float prev = rm.c1[r] != 0.f ? rm.c1[r] * *dst : 0.f;
    const float cur = rm.c2[r] != 0.f ? rm.c2[r] * (Os[r * Dp + d] * rm.inv[r]) : 0.f;
    *dst = prev + cur;
  }
  for (int r = tid; r < TQ; r += nthr)
    if (r < t.nrows) lse[bh * a.Nq + rm.abs[r]] = rm.lse[r];
  FASTNORM_HA_SYNC();
}

// ---- backward: dQ of one query tile of one piece (row owner) -------------------------------------------------------
// P_e = exp(S_e - LSE_i) with S_e = s·<q_i, k_j> + log w_e (final LSE, §3.9); dS_e = P_e (<dO_i, v_j> - D_i);
// dq_acc[i] += s·Σ_e dS_e k_j (fp32 [B, Hq, Nq, D] contiguous; one owner per row per launch).
template <class T>
FASTNORM_HD_INLINE void dq_block(const Args& a, const PieceK& pc, const View& dout, const float* lse,
                                 const float* dvec, float* dq_acc, int64_t block, int tid, int nthr, void* smem) {
  const int64_t bh = block / pc.ntiles, tile = block % pc.ntiles;
  const int64_t b = bh / a.Hq, h = bh % a.Hq, g = h / a.G;
  const RowTile t = row_tile(a, pc, tile);
  if (t.nrows <= 0) return;
  Smem sm = carve(smem);
  RowMeta& rm = *sm.rm;
  KeyMeta& km = *sm.km;
  const int TQ = a.TQ, TK = a.TK, Dp = a.Dp;
  const int64_t D = a.D;
  float* Qs = sm.f;
  float* dOs = Qs + TQ * Dp;
  float* Acc = dOs + TQ * Dp;
  float* Ks = Acc + TQ * Dp;
  float* Vs = Ks + TK * Dp;
  float* S = Vs + TK * Dp;   // [TQ][TK]: dS
  load_rows<T>(a, pc, t, b, h, rm, Qs, &dout, dOs, tid, nthr);
  for (int64_t i = tid; i < int64_t(TQ) * D; i += nthr) Acc[(i / D) * Dp + i % D] = 0.f;
  for (int r = tid; r < TQ; r += nthr) {
    rm.lse[r] = r < t.nrows ? lse[bh * a.Nq + rm.abs[r]] : 0.f;
    rm.dd[r] = r < t.nrows ? dvec[bh * a.Nq + rm.abs[r]] : 0.f;
  }
  int64_t nblk, total, ka;
  row_tile_keys(a, pc, t, nblk, total, ka);
  for (int64_t u0 = 0; u0 < total; u0 += TK) {
    const int64_t nkt = (total - u0) < TK ? (total - u0) : TK;
    load_keys<T>(a, pc, b, g, u0, nkt, nblk, ka, km, Ks, Vs, tid, nthr);
    for (int i = tid; i < TQ * TK; i += nthr) {
      const int r = i / TK, j = i % TK;
      float ds = 0.f;
      if (r < t.nrows && j < nkt && entry_valid(pc, rm, km, r, j) && rm.lse[r] != -INFINITY) {
        float dot = 0.f, dpv = 0.f;
        for (int64_t d = 0; d < D; ++d) dot += Qs[r * Dp + d] * Ks[j * Dp + d];
        for (int64_t d = 0; d < D; ++d) dpv += dOs[r * Dp + d] * Vs[j * Dp + d];
        const float p = expf(a.scale * dot + km.bias[j] - rm.lse[r]);
        ds = p * (dpv - rm.dd[r]);
      }
      S[r * TK + j] = ds;
    }
    FASTNORM_HA_SYNC();
    for (int64_t i = tid; i < int64_t(TQ) * D; i += nthr) {
      const int r = static_cast<int>(i / D);
      const int64_t d = i % D;
      float acc = Acc[r * Dp + d];
      for (int j = 0; j < TK; ++j) acc += S[r * TK + j] * Ks[j * Dp + d];
      Acc[r * Dp + d] = acc;
    }
    FASTNORM_HA_SYNC();
  }
  for (int64_t i = tid; i < int64_t(TQ) * D; i += nthr) {
    const int r = static_cast<int>(i / D);
    const int64_t d = i % D;
    if (r >= t.nrows) continue;
    float* dst = dq_acc + (bh * a.Nq + rm.abs[r]) * D + d;
    *dst += a.scale * Acc[r * Dp + d];
  }
  FASTNORM_HA_SYNC();
}

// ---- backward: dK, dV of one key tile (key owner) ---------------------------------------------------------------
// mode 0 (exact pieces, approx block keys): the tile's keys are distinct and owned by this block in this launch;
//   dk_acc/dv_acc [B, Hkv, Nk, D] fp32 += the sums over every row of every head h of the group that meets them.
// mode 1 (approx sample slots): the tile is TK slots; partial_k/partial_v [B*Hkv, m, D] receive the slot's sums
//   (duplicated keys are added later, in slot order, by scatter_samples).
struct DkvOut {
  float* dk_acc = nullptr;
  float* dv_acc = nullptr;
  float* partial_k = nullptr;
  float* partial_v = nullptr;
};

template <class T>
FASTNORM_HD_INLINE void dkv_block(const Args& a, const PieceK& pc, int mode, const View& dout, const float* lse,
                                  const float* dvec, const DkvOut& o, int64_t block, int tid, int nthr, void* smem) {
  const int64_t bg = block / pc.ntiles, tile = block % pc.ntiles;
  const int64_t b = bg / a.Hkv, g = bg % a.Hkv;
  Smem sm = carve(smem);
  RowMeta& rm = *sm.rm;
  KeyMeta& km = *sm.km;
  const int TQ = a.TQ, TK = a.TK, Dp = a.Dp;
  const int64_t D = a.D;
  // which entries this block owns
  int64_t nkt = 0, u0 = 0, nblk = 0, ka = 0, jb = 0, row_lo = 0, row_hi = 0;
  if (mode == 1) {
    u0 = tile * TK;                        // slots [u0, u0 + nkt), entered as u = nblk + slot with nblk = 0
    nkt = a.m - u0 < TK ? a.m - u0 : TK;
    nblk = 0;
    row_lo = 0; row_hi = pc.nq;            // every sorted row position of the piece
  } else if (pc.kind == kApprox) {
    jb = tile / pc.ktpb;
    ka = hd::block_begin(jb, pc.nk, pc.nb);
    const int64_t ke = hd::block_begin(jb + 1, pc.nk, pc.nb);
    u0 = (tile % pc.ktpb) * TK;
    const int64_t n = ke - ka - u0;
    nkt = n < 0 ? 0 : (n > TK ? TK : n);
    nblk = ke - ka;
    row_lo = hd::block_begin(jb, pc.nq, pc.nb);
    row_hi = hd::block_begin(jb + 1, pc.nq, pc.nb);
  } else {
    u0 = tile * TK;
    nkt = pc.nk - u0 < TK ? pc.nk - u0 : TK;
    nblk = pc.nk;
    row_lo = pc.kind == kExactCausal ? u0 : 0;  // rows before the tile's first key meet none of its keys
    row_hi = pc.nq;
  }
  if (nkt <= 0) return;
  float* Ks = sm.f;
  float* Vs = Ks + TK * Dp;
  float* dK = Vs + TK * Dp;
  float* dV = dK + TK * Dp;
  float* Qs = dV + TK * Dp;
  float* dOs = Qs + TQ * Dp;
  float* P = dOs + TQ * Dp;   // [TK][TQ]
  float* dS = P + TK * TQ;    // [TK][TQ]
  load_keys<T>(a, pc, b, g, u0, nkt, nblk, ka, km, Ks, Vs, tid, nthr);
  for (int64_t i = tid; i < int64_t(TK) * D; i += nthr) {
    dK[(i / D) * Dp + i % D] = 0.f;
    dV[(i / D) * Dp + i % D] = 0.f;
  }
  const View& dview = dout;
  for (int64_t hh = 0; hh < a.G; ++hh) {
    const int64_t h = g * a.G + hh, bh = b * a.Hq + h;
    for (int64_t r0 = row_lo; r0 < row_hi; r0 += TQ) {
      const int64_t nr = (row_hi - r0) < TQ ? (row_hi - r0) : TQ;
      FASTNORM_HA_SYNC();  // the previous row tile's readers are done
      for (int r = tid; r < TQ; r += nthr) {
        if (r < nr) {
          const int64_t pos = r0 + r;
          if (pc.kind == kApprox) {
            rm.abs[r] = a.q_perm[bh * a.pq + pc.qpo + pos];
            rm.pos[r] = mode == 1 ? hd::block_of_rank(pos, pc.nq, pc.nb) : jb;
          } else {
            rm.abs[r] = pc.q0 + pos;
            rm.pos[r] = pos;
          }
          rm.lse[r] = lse[bh * a.Nq + rm.abs[r]];
          rm.dd[r] = dvec[bh * a.Nq + rm.abs[r]];
        } else {
          rm.abs[r] = -1; rm.pos[r] = -1; rm.lse[r] = 0.f; rm.dd[r] = 0.f;
        }
      }
      FASTNORM_HA_SYNC();
      for (int64_t i = tid; i < int64_t(TQ) * D; i += nthr) {
        const int r = static_cast<int>(i / D);
        const int64_t d = i % D;
        const int64_t qabs = rm.abs[r];
        Qs[r * Dp + d] = qabs >= 0 ? ld<T>(a.q, b, h, qabs, d) : 0.f;
        dOs[r * Dp + d] = qabs >= 0 ? ld<T>(dview, b, h, qabs, d) : 0.f;
      }
      FASTNORM_HA_SYNC();
      for (int i = tid; i < TK * TQ; i += nthr) {
        const int j = i / TQ, r = i % TQ;
        float p = 0.f, ds = 0.f;
        if (j < nkt && r < nr && entry_valid(pc, rm, km, r, j) && rm.lse[r] != -INFINITY) {
          float dot = 0.f, dpv = 0.f;
          for (int64_t d = 0; d < D; ++d) dot += Qs[r * Dp + d] * Ks[j * Dp + d];
          for (int64_t d = 0; d < D; ++d) dpv += dOs[r * Dp + d] * Vs[j * Dp + d];
          p = expf(a.scale * dot + km.bias[j] - rm.lse[r]);
          ds = p * (dpv - rm.dd[r]);
        }
        P[j * TQ + r] = p;
        dS[j * TQ + r] = ds;
      }
      FASTNORM_HA_SYNC();
      for (int64_t i = tid; i < int64_t(TK) * D; i += nthr) {
        const int j = static_cast<int>(i / D);
        const int64_t d = i % D;
        float dk = dK[j * Dp + d], dv = dV[j * Dp + d];
        for (int r = 0; r < TQ; ++r) {
          dv += P[j * TQ + r] * dOs[r * Dp + d];
          dk += dS[j * TQ + r] * Qs[r * Dp + d];
        }
        dK[j * Dp + d] = dk;
        dV[j * Dp + d] = dv;
      }
    }
  }
  FASTNORM_HA_SYNC();
  for (int64_t i = tid; i < int64_t(TK) * D; i += nthr) {
    const int j = static_cast<int>(i / D);
    const int64_t d = i % D;
    if (j >= nkt) continue;
    if (mode == 1) {
      const int64_t slot = bg * a.m + u0 + j;
      o.partial_k[slot * D + d] = a.scale * dK[j * Dp + d];
      o.partial_v[slot * D + d] = dV[j * Dp + d];
    } else {
      const int64_t row = (bg * a.Nk + km.abs[j]) * D + d;
      o.dk_acc[row] += a.scale * dK[j * Dp + d];
      o.dv_acc[row] += dV[j * Dp + d];
    }
  }
  FASTNORM_HA_SYNC();
}

// Adds the slot partials of one piece for kv head bg into dk/dv, slots in ascending order (duplicates included).
FASTNORM_HD_INLINE void scatter_samples(const Args& a, const PieceK& pc, const DkvOut& o, int64_t bg, int tid,
                                        int nthr) {
  for (int64_t d = tid; d < a.D; d += nthr) {
    for (int64_t t = 0; t < a.m; ++t) {
      const int64_t c = a.samples[bg * a.s + pc.so + t];
      const int64_t key = a.k_perm[bg * a.pk + pc.kpo + c];
      const int64_t row = (bg * a.Nk + key) * a.D + d;
      o.dk_acc[row] += o.partial_k[(bg * a.m + t) * a.D + d];
      o.dv_acc[row] += o.partial_v[(bg * a.m + t) * a.D + d];
    }
  }
}

// D_i = <dO_i, O_i> - dlse_i (dlse may be null: zero).
template <class T>
FASTNORM_HD_INLINE float dvec_row(const View& dout, const View& out, const float* dlse, int64_t b, int64_t h,
                                  int64_t n, int64_t row, int64_t D) {
  float s = 0.f;
  for (int64_t d = 0; d < D; ++d) s += ld<T>(dout, b, h, n, d) * ld<T>(out, b, h, n, d);
  return s - (dlse != nullptr ? dlse[row] : 0.f);
}

}  // namespace kern
}  // namespace cuda
}  // namespace hyper_attention
}  // namespace fastnorm

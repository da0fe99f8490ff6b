// CPU kernels of HyperAttention (specs/hyper_attention.md §3, §3.10 CPU plan).
//
// Built twice (FASTNORM_ISA = baseline | avx2); hyper_attention.cpp validates arguments and picks the build.
//
// Plan of the work: the schedule's sub-problems ("pieces") run one after another in schedule order; inside a
// piece, OpenMP spreads independent tasks: (b, h, query block) for approximated pieces, (b, h, query tile)
// for exact ones in the forward and the dQ pass, (b, g, key block / key tile) for dK/dV. A task gathers its
// rows (through the plan's permutations, from any strides and dtype) into thread-local fp32 buffers (fp64
// for float64 inputs), zero-padded to the micro-kernels' tile sizes, and runs register-tiled micro-kernels:
//   qk: S[T x C] = Q[T x D] * Kt[D x C]  (4 rows x 2 vectors of keys per register tile)
//   pv: O[T x Dp] += P[T x C] * V[C x Dp] (4 rows x 2 vectors of features per register tile)
// with an online softmax over key chunks of kChunk columns. Padding columns carry bias -inf (never enter a
// softmax); masked sample slots carry -inf; unmasked ones log(nk'/m).
//
// Determinism: every output element has one owner task per piece, tasks never depend on the thread count,
// and pieces are merged (forward) or accumulated (backward) in schedule order, so results are bitwise
// independent of the number of threads. Sample dK/dV go to per-(query block, slot) partials that are summed
// in block order, then scattered to keys in slot order.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__FMA__) || defined(__AVX2__)
#include <immintrin.h>
#endif

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/hyper_attention_math.h"
#include "hyper_attention_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

#pragma GCC diagnostic ignored "-Wpsabi"

namespace fastnorm {
namespace hyper_attention {
namespace FASTNORM_ISA {
namespace {

using fastnorm::detail::load_as;
using fastnorm::detail::store_from;
using namespace fastnorm::hyper_attention::detail;

constexpr int64_t kTileQ = 64;   // query rows per tile
constexpr int64_t kChunk = 128;  // key columns per online-softmax chunk (multiple of 16)
constexpr int64_t kPadK = 16;    // key counts are padded to this (2 vectors of 8 floats)
constexpr int64_t kTileK = 64;   // keys per dK/dV task of exact pieces

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t pad_d(int64_t d) { return round_up(d, 16); }

// ---- vector types (GCC vector extensions; 32 bytes = one AVX register, two SSE registers) -------------
template <class A> struct VT;
template <> struct VT<float> {
  typedef float v __attribute__((vector_size(32)));
  typedef float vu __attribute__((vector_size(32), aligned(4)));
  static constexpr int W = 8;
};
template <> struct VT<double> {
  typedef double v __attribute__((vector_size(32)));
  typedef double vu __attribute__((vector_size(32), aligned(8)));
  static constexpr int W = 4;
};
typedef int32_t vi8 __attribute__((vector_size(32)));

template <class V> inline V vload(const void* p) {
  typedef typename std::remove_reference<decltype(V{}[0])>::type E;
  typedef E U __attribute__((vector_size(32), aligned(sizeof(E))));
  return *static_cast<const U*>(p);
}
template <class V> inline void vstore(void* p, V x) {
  typedef typename std::remove_reference<decltype(V{}[0])>::type E;
  typedef E U __attribute__((vector_size(32), aligned(sizeof(E))));
  *static_cast<U*>(p) = x;
}

inline VT<float>::v vfma(VT<float>::v a, VT<float>::v b, VT<float>::v c) {
#if defined(__FMA__)
  return (VT<float>::v)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#else
  return a * b + c;
#endif
}
inline VT<double>::v vfma(VT<double>::v a, VT<double>::v b, VT<double>::v c) {
#if defined(__FMA__)
  return (VT<double>::v)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#else
  return a * b + c;
#endif
}

// e^x for 8 floats (Cephes expf: range reduction by ln2 in two parts, degree-6 polynomial; ~1 ulp).
// x < -87 gives exactly 0 (so -inf, i.e. masked entries, contribute nothing); NaN propagates.
inline VT<float>::v vexp(VT<float>::v x) {
  typedef VT<float>::v V;
  const V hi = V{} + 88.3762626647949f;
  const V xc = x > hi ? hi : x;
  const V fx = xc * 1.44269504088896341f + 0.5f;
  const V lo_clamp = V{} - 100.0f;
  const V fxc = fx < lo_clamp ? lo_clamp : fx;  // keeps the int conversion in range (result masked below)
  const vi8 ti = __builtin_convertvector(fxc, vi8);
  V tf = __builtin_convertvector(ti, V);
  tf = tf > fxc ? tf - 1.0f : tf;  // floor
  V r = xc - tf * 0.693359375f;
  r = r - tf * -2.12194440e-4f;
  const V z = r * r;
  V y = V{} + 1.9875691500E-4f;
  y = y * r + 1.3981999507E-3f;
  y = y * r + 8.3334519073E-3f;
  y = y * r + 4.1665795894E-2f;
  y = y * r + 1.6666665459E-1f;
  y = y * r + 5.0000001201E-1f;
  y = y * z + r + 1.0f;
  const vi8 n = __builtin_convertvector(tf, vi8);
  const vi8 bits = (n + 127) << 23;
  const V res = y * (V)bits;
  const V zero = V{};
  return x < -87.0f ? zero : res;
}

// exp over an array (n a multiple of the vector width).
inline void exp_inplace(float* x, int64_t n) {
  typedef VT<float>::v V;
  for (int64_t c = 0; c < n; c += 8) vstore<V>(x + c, vexp(vload<V>(x + c)));
}
inline void exp_inplace(double* x, int64_t n) {
  for (int64_t c = 0; c < n; ++c) x[c] = std::exp(x[c]);
}

// ---- micro-kernels ----------------------------------------------------------------------------------

// S[i][c] = sum_{d<D} Q[i][d] * Kt[d][c], i < T (multiple of 4), c < C (multiple of 2W).
template <class A>
void mm_qk(const A* Q, int64_t ldq, int64_t T, const A* Kt, int64_t ldk, int64_t C, int64_t D, A* S, int64_t lds) {
  typedef typename VT<A>::v V;
  constexpr int W = VT<A>::W;
  for (int64_t i = 0; i < T; i += 4) {
    const A* q0 = Q + i * ldq;
    const A* q1 = q0 + ldq;
    const A* q2 = q1 + ldq;
    const A* q3 = q2 + ldq;
    for (int64_t c = 0; c < C; c += 2 * W) {
      V a00{}, a01{}, a10{}, a11{}, a20{}, a21{}, a30{}, a31{};
      const A* kp = Kt + c;
      for (int64_t d = 0; d < D; ++d, kp += ldk) {
        const V k0 = vload<V>(kp), k1 = vload<V>(kp + W);
        V b = V{} + q0[d];
        a00 = vfma(b, k0, a00); a01 = vfma(b, k1, a01);
        b = V{} + q1[d];
        a10 = vfma(b, k0, a10); a11 = vfma(b, k1, a11);
        b = V{} + q2[d];
        a20 = vfma(b, k0, a20); a21 = vfma(b, k1, a21);
        b = V{} + q3[d];
        a30 = vfma(b, k0, a30); a31 = vfma(b, k1, a31);
      }
      A* s = S + i * lds + c;
      vstore(s, a00); vstore(s + W, a01); s += lds;
      vstore(s, a10); vstore(s + W, a11); s += lds;
      vstore(s, a20); vstore(s + W, a21); s += lds;
      vstore(s, a30); vstore(s + W, a31);
    }
  }
}

// O[i][d] += sum_{c<C} P[i][c] * V[c][d], i < T (multiple of 4), d < Dp (multiple of 2W).
template <class A>
void mm_pv(const A* P, int64_t ldp, int64_t T, int64_t C, const A* Vm, int64_t ldv, int64_t Dp, A* O, int64_t ldo) {
  typedef typename VT<A>::v V;
  constexpr int W = VT<A>::W;
  for (int64_t i = 0; i < T; i += 4) {
    const A* p0 = P + i * ldp;
    const A* p1 = p0 + ldp;
    const A* p2 = p1 + ldp;
    const A* p3 = p2 + ldp;
    for (int64_t d = 0; d < Dp; d += 2 * W) {
      A* o = O + i * ldo + d;
      V a00 = vload<V>(o), a01 = vload<V>(o + W);
      V a10 = vload<V>(o + ldo), a11 = vload<V>(o + ldo + W);
      V a20 = vload<V>(o + 2 * ldo), a21 = vload<V>(o + 2 * ldo + W);
      V a30 = vload<V>(o + 3 * ldo), a31 = vload<V>(o + 3 * ldo + W);
      const A* vp = Vm + d;
      for (int64_t c = 0; c < C; ++c, vp += ldv) {
        const V v0 = vload<V>(vp), v1 = vload<V>(vp + W);
        V b = V{} + p0[c];
        a00 = vfma(b, v0, a00); a01 = vfma(b, v1, a01);
        b = V{} + p1[c];
        a10 = vfma(b, v0, a10); a11 = vfma(b, v1, a11);
        b = V{} + p2[c];
        a20 = vfma(b, v0, a20); a21 = vfma(b, v1, a21);
        b = V{} + p3[c];
        a30 = vfma(b, v0, a30); a31 = vfma(b, v1, a31);
      }
      vstore(o, a00); vstore(o + W, a01);
      vstore(o + ldo, a10); vstore(o + ldo + W, a11);
      vstore(o + 2 * ldo, a20); vstore(o + 2 * ldo + W, a21);
      vstore(o + 3 * ldo, a30); vstore(o + 3 * ldo + W, a31);
    }
  }
}

template <class A> inline A row_max(const A* x, int64_t n) {
  typedef typename VT<A>::v V;
  constexpr int W = VT<A>::W;
  V m = V{} - std::numeric_limits<A>::infinity();
  for (int64_t c = 0; c < n; c += W) {
    const V v = vload<V>(x + c);
    m = v > m ? v : m;
  }
  A r = m[0];
  for (int w = 1; w < W; ++w) r = m[w] > r ? m[w] : r;
  return r;
}
template <class A> inline A row_sum(const A* x, int64_t n) {
  typedef typename VT<A>::v V;
  constexpr int W = VT<A>::W;
  V s{};
  for (int64_t c = 0; c < n; c += W) s += vload<V>(x + c);
  A r = 0;
  for (int w = 0; w < W; ++w) r += s[w];
  return r;
}

// ---- gathers ----------------------------------------------------------------------------------------

// Element pointer helpers.
template <class T> inline const T* row_ptr(const void* base, const HyperAttnStrides& s, int64_t b, int64_t h, int64_t n) {
  return static_cast<const T*>(base) + b * s.b + h * s.h + n * s.n;
}

// dst[r][0..D) = x rows (idx[r] or first + r), rest of the row (to ld) zero; rows [cnt, rows_pad) zero.
template <class T, class A>
void gather_rows(const void* base, const HyperAttnStrides& s, int64_t b, int64_t h, const int32_t* idx, int64_t first,
                 int64_t cnt, int64_t rows_pad, int64_t D, A* dst, int64_t ld) {
  for (int64_t r = 0; r < cnt; ++r) {
    const int64_t n = idx ? idx[r] : first + r;
    const T* x = row_ptr<T>(base, s, b, h, n);
    A* o = dst + r * ld;
    if (s.d == 1) {
      for (int64_t d = 0; d < D; ++d) o[d] = load_as<T, A>(x[d]);
    } else {
      for (int64_t d = 0; d < D; ++d) o[d] = load_as<T, A>(x[d * s.d]);
    }
    for (int64_t d = D; d < ld; ++d) o[d] = A(0);
  }
  for (int64_t r = cnt; r < rows_pad; ++r) std::memset(dst + r * ld, 0, sizeof(A) * ld);
}

// dst[d][c] = x row c, d < D; columns [cnt, ld) zero.
template <class T, class A>
void gather_cols(const void* base, const HyperAttnStrides& s, int64_t b, int64_t h, const int32_t* idx, int64_t first,
                 int64_t cnt, int64_t D, A* dst, int64_t ld) {
  for (int64_t c = 0; c < cnt; ++c) {
    const int64_t n = idx ? idx[c] : first + c;
    const T* x = row_ptr<T>(base, s, b, h, n);
    for (int64_t d = 0; d < D; ++d) dst[d * ld + c] = load_as<T, A>(x[d * s.d]);
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t c = cnt; c < ld; ++c) dst[d * ld + c] = A(0);
}

template <class A> struct Buf {
  std::vector<A> v;
  A* get(size_t n) {
    if (v.size() < n) v.resize(n);
    return v.data();
  }
};

int threads_of(int n) { return n > 0 ? n : omp_get_max_threads(); }

// Threads for a call of about `work` multiply-adds: small calls run on one thread, because the per-piece
// barriers of a team cost more than the work (and far more on an oversubscribed machine). Results never
// depend on this choice.
int threads_for(int n, double work) {
  const int t = threads_of(n);
  return work < 4.0e6 ? 1 : t;
}

// Multiply-adds of a problem's schedule (QK^T and PV over every computed entry).
double problem_work(const HyperAttnProblem& p);

// ---- schedule ---------------------------------------------------------------------------------------
std::vector<HyperAttnSubproblem> get_schedule(const HyperAttnProblem& p) {
  int64_t count = 0;
  schedule(p.config, p.nq, p.nk, p.causal, nullptr, 0, &count);
  std::vector<HyperAttnSubproblem> s(count);
  schedule(p.config, p.nq, p.nk, p.causal, s.data(), count, &count);
  return s;
}

double problem_work(const HyperAttnProblem& p) {
  double e = 0;
  for (const HyperAttnSubproblem& sp : get_schedule(p)) {
    if (sp.kind == HyperAttnKind::Approx)
      e += double(sp.nq) * double(p.config.block_size + p.config.sample_size);
    else if (sp.kind == HyperAttnKind::ExactCausal)
      e += 0.5 * double(sp.nq) * double(sp.nq + 1);
    else
      e += double(sp.nq) * double(sp.nk);
  }
  return 2.0 * e * double(p.batch) * double(p.heads_q) * double(p.head_dim);
}

// ---- the key side of one chunk as seen by a query tile ------------------------------------------------
// Kt [D x ld] (columns = keys), V [ld x Dp] (forward) / K [ld x Dp] and Vt [D x ld] (backward), bias [ld].
// causal_k0 >= 0: key column c has absolute index causal_k0 + c and is masked for rows < that index.
template <class A> struct Chunk {
  const A* Kt = nullptr;
  const A* Vr = nullptr;  // V rows (forward)
  const A* Kr = nullptr;  // K rows (backward dQ)
  const A* Vt = nullptr;  // V columns (backward dP)
  int64_t ld = 0;         // leading dim of Kt/Vt (columns), also row count capacity of Vr/Kr
  int64_t off = 0;        // first column of this chunk
  int64_t C = 0;          // columns in this chunk (multiple of kPadK)
  const A* bias = nullptr;  // [ld], indexed from 0 (off added)
  int64_t causal_k0 = -1;
};

// Query tile state: gathered rows and the online softmax.
template <class A> struct QTile {
  int64_t n = 0, np = 0;     // rows, padded to 4
  const int64_t* rows = nullptr;  // absolute row indices (for the causal mask)
  A* Q = nullptr;            // [np x Dp]
  A* O = nullptr;            // [np x Dp] accumulator
  A* m = nullptr;            // [np]
  A* l = nullptr;            // [np]
};

// Applies scale, bias and the causal mask to S rows, in place.
template <class A>
inline void logits(A* srow, int64_t C, A scale, const A* bias, int64_t row_abs, int64_t key_abs0) {
  typedef typename VT<A>::v V;
  constexpr int W = VT<A>::W;
  for (int64_t c = 0; c < C; c += W) vstore<V>(srow + c, vload<V>(srow + c) * scale + vload<V>(bias + c));
  if (key_abs0 >= 0) {
    const int64_t lim = row_abs - key_abs0;  // columns > lim are future keys
    for (int64_t c = std::max<int64_t>(lim + 1, 0); c < C; ++c) srow[c] = -std::numeric_limits<A>::infinity();
  }
}

// Forward: one chunk into the tile's online softmax. S is scratch [np x kChunk].
template <class A>
void attend_chunk(QTile<A>& t, const Chunk<A>& ch, int64_t D, int64_t Dp, A scale, A* S) {
  const int64_t C = ch.C;
  mm_qk(t.Q, Dp, t.np, ch.Kt + ch.off, ch.ld, C, D, S, kChunk);
  const A ninf = -std::numeric_limits<A>::infinity();
  for (int64_t i = 0; i < t.np; ++i) {
    A* srow = S + i * kChunk;
    if (i >= t.n) {
      std::memset(srow, 0, sizeof(A) * C);
      continue;
    }
    logits(srow, C, scale, ch.bias + ch.off, t.rows[i], ch.causal_k0 >= 0 ? ch.causal_k0 + ch.off : -1);
    const A mx = row_max(srow, C);
    const A m_old = t.m[i];
    const A m_new = mx > m_old ? mx : m_old;
    if (m_new == ninf) {  // nothing unmasked yet
      std::memset(srow, 0, sizeof(A) * C);
      continue;
    }
    typedef typename VT<A>::v V;
    constexpr int W = VT<A>::W;
    for (int64_t c = 0; c < C; c += W) vstore<V>(srow + c, vload<V>(srow + c) - m_new);
    exp_inplace(srow, C);
    const A sum = row_sum(srow, C);
    if (m_new != m_old) {
      const A alpha = m_old == ninf ? A(0) : std::exp(m_old - m_new);
      A* o = t.O + i * Dp;
      for (int64_t d = 0; d < Dp; ++d) o[d] *= alpha;
      t.l[i] = t.l[i] * alpha + sum;
      t.m[i] = m_new;
    } else {
      t.l[i] += sum;
    }
  }
  mm_pv(S, kChunk, t.np, C, ch.Vr + ch.off * Dp, Dp, Dp, t.O, Dp);
}

// Backward: P and dS of one chunk for a tile (P = w e^{l - LSE}, dS = P (dP - D_i)); rows >= n zero.
template <class A>
void p_ds_chunk(int64_t n, int64_t np, const int64_t* rows, const A* Q, const A* dO, const A* lse, const A* Di,
                const Chunk<A>& ch, int64_t D, int64_t Dp, A scale, A* P, A* dS) {
  const int64_t C = ch.C;
  mm_qk(Q, Dp, np, ch.Kt + ch.off, ch.ld, C, D, P, kChunk);
  mm_qk(dO, Dp, np, ch.Vt + ch.off, ch.ld, C, D, dS, kChunk);
  typedef typename VT<A>::v V;
  constexpr int W = VT<A>::W;
  for (int64_t i = 0; i < np; ++i) {
    A* prow = P + i * kChunk;
    A* drow = dS + i * kChunk;
    if (i >= n || lse[i] == -std::numeric_limits<A>::infinity()) {
      std::memset(prow, 0, sizeof(A) * C);
      std::memset(drow, 0, sizeof(A) * C);
      continue;
    }
    logits(prow, C, scale, ch.bias + ch.off, rows[i], ch.causal_k0 >= 0 ? ch.causal_k0 + ch.off : -1);
    const A li = lse[i];
    for (int64_t c = 0; c < C; c += W) vstore<V>(prow + c, vload<V>(prow + c) - li);
    exp_inplace(prow, C);
    const A di = Di[i];
    for (int64_t c = 0; c < C; c += W) vstore<V>(drow + c, vload<V>(prow + c) * (vload<V>(drow + c) - di));
  }
}

// dst[c][i] = src[i][c] * mul for c < C, i < np (dst leading dim np).
template <class A> void transpose(const A* src, int64_t np, int64_t C, A mul, A* dst) {
  for (int64_t i = 0; i < np; ++i)
    for (int64_t c = 0; c < C; ++c) dst[c * np + i] = src[i * kChunk + c] * mul;
}

// ---- output / accumulator ---------------------------------------------------------------------------
template <class T, class A> struct Ctx {
  const HyperAttnProblem& p;
  int64_t D, Dp, G;
  A scale;
};

// Writes the tile's normalised rows: direct (out/lse) or merged into the causal accumulator.
template <class T, class A>
void finish_tile(const HyperAttnProblem& p, const HyperAttnOutput& o, QTile<A>& t, int64_t b, int64_t h, int64_t Dp,
                 A* accO, A* accL) {
  const int64_t D = p.head_dim;
  for (int64_t i = 0; i < t.n; ++i) {
    const int64_t r = t.rows[i];
    const A l = t.l[i];
    const A lse = l > A(0) ? t.m[i] + std::log(l) : -std::numeric_limits<A>::infinity();
    const A inv = l > A(0) ? A(1) / l : A(0);
    const A* src = t.O + i * Dp;
    const int64_t row = (b * p.heads_q + h) * p.nq + r;
    if (accO == nullptr) {
      T* dst = static_cast<T*>(o.out) + b * o.out_strides.b + h * o.out_strides.h + r * o.out_strides.n;
      for (int64_t d = 0; d < D; ++d) dst[d * o.out_strides.d] = store_from<T, A>(src[d] * inv);
      static_cast<A*>(o.lse)[row] = lse;
    } else {
      const LseMerge<A> mg = lse_merge<A>(accL[row], lse);
      A* acc = accO + row * D;
      for (int64_t d = 0; d < D; ++d) {
        const A prev = mg.c1 != A(0) ? mg.c1 * acc[d] : A(0);
        const A cur = mg.c2 != A(0) ? mg.c2 * (src[d] * inv) : A(0);
        acc[d] = prev + cur;
      }
      accL[row] = mg.lse;
    }
  }
}

// Samples of one Approx piece for one (b, g), gathered once and shared by all query blocks.
template <class A> struct SampleSet {
  A* Kt = nullptr;   // [D x mp]
  A* Vr = nullptr;   // [mp x Dp] (forward)
  A* Kr = nullptr;   // [mp x Dp] (backward)
  A* Vt = nullptr;   // [D x mp] (backward)
  int64_t* blk = nullptr;  // [m] block of each slot
  int32_t* key = nullptr;  // [m] absolute key index of each slot
};

inline int64_t samples_pad(int64_t m) { return round_up(std::max<int64_t>(m, 1), kPadK); }

template <class T, class A>
void gather_samples(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnSubproblem& sp, int64_t b,
                    int64_t g, SampleSet<A>& ss, bool backward) {
  const int64_t m = p.config.sample_size, mp = samples_pad(m), D = p.head_dim, Dp = pad_d(D);
  const int32_t* kperm = pl.k_perm + (b * p.heads_kv + g) * pl.pk + sp.k_perm_offset;
  const int32_t* smp = pl.samples + (b * p.heads_kv + g) * pl.s + sp.sample_offset;
  for (int64_t t = 0; t < m; ++t) {
    const int64_t c = smp[t];
    ss.blk[t] = block_of_rank(c, sp.nk, sp.num_blocks);
    ss.key[t] = kperm[c];
  }
  gather_cols<T, A>(p.k, p.k_strides, b, g, ss.key, 0, m, D, ss.Kt, mp);
  if (!backward) {
    gather_rows<T, A>(p.v, p.v_strides, b, g, ss.key, 0, m, mp, D, ss.Vr, Dp);
  } else {
    gather_rows<T, A>(p.k, p.k_strides, b, g, ss.key, 0, m, mp, D, ss.Kr, Dp);
    gather_cols<T, A>(p.v, p.v_strides, b, g, ss.key, 0, m, D, ss.Vt, mp);
  }
}

// ---- forward ----------------------------------------------------------------------------------------
struct FwdLayout {
  size_t accO = 0, accL = 0, samples = 0, blk = 0, key = 0, total = 0;
};
template <class A> FwdLayout fwd_layout(const HyperAttnProblem& p) {
  FwdLayout L;
  const int64_t rows = p.batch * p.heads_q * p.nq;
  const int64_t D = p.head_dim, Dp = pad_d(D), m = p.config.sample_size, mp = samples_pad(m);
  size_t off = 0;
  auto take = [&](size_t bytes) { size_t at = off; off += (bytes + 63) / 64 * 64; return at; };
  if (p.causal) {
    L.accO = take(sizeof(A) * rows * D);
    L.accL = take(sizeof(A) * rows);
  }
  const int64_t bg = p.batch * p.heads_kv;
  L.samples = take(sizeof(A) * bg * mp * (D + Dp));
  L.blk = take(sizeof(int64_t) * bg * std::max<int64_t>(m, 1));
  L.key = take(sizeof(int32_t) * bg * std::max<int64_t>(m, 1));
  L.total = off;
  return L;
}

template <class T, class A>
Status forward_t(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnOutput& o, void* ws) {
  const int64_t B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, D = p.head_dim, Dp = pad_d(D);
  const int64_t G = Hkv > 0 ? Hq / Hkv : 1;
  const A scale = static_cast<A>(p.scale);
  const int nt = threads_for(p.num_threads, problem_work(p));
  A* lse_out = static_cast<A*>(o.lse);
  if (p.nk == 0) {  // no keys: out = 0, lse = -inf
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t r = 0; r < p.nq; ++r) {
          T* dst = static_cast<T*>(o.out) + b * o.out_strides.b + h * o.out_strides.h + r * o.out_strides.n;
          for (int64_t d = 0; d < D; ++d) dst[d * o.out_strides.d] = store_from<T, A>(A(0));
          lse_out[(b * Hq + h) * p.nq + r] = -std::numeric_limits<A>::infinity();
        }
    return Status::OK();
  }
  const std::vector<HyperAttnSubproblem> sched = get_schedule(p);
  const FwdLayout L = fwd_layout<A>(p);
  char* w = static_cast<char*>(ws);
  A* accO = p.causal ? reinterpret_cast<A*>(w + L.accO) : nullptr;
  A* accL = p.causal ? reinterpret_cast<A*>(w + L.accL) : nullptr;
  const int64_t m = p.config.sample_size, mp = samples_pad(m);
  A* samp = reinterpret_cast<A*>(w + L.samples);
  int64_t* sblk = reinterpret_cast<int64_t*>(w + L.blk);
  int32_t* skey = reinterpret_cast<int32_t*>(w + L.key);
  const int64_t rows_total = B * Hq * p.nq;
  if (accO) {
    std::fill(accO, accO + rows_total * D, A(0));
    std::fill(accL, accL + rows_total, -std::numeric_limits<A>::infinity());
  }
  auto sample_set = [&](int64_t bg) {
    SampleSet<A> ss;
    ss.Kt = samp + bg * mp * (D + Dp);
    ss.Vr = ss.Kt + mp * D;
    ss.blk = sblk + bg * std::max<int64_t>(m, 1);
    ss.key = skey + bg * std::max<int64_t>(m, 1);
    return ss;
  };

#pragma omp parallel num_threads(nt)
  {
    Buf<A> bq, bo, bm, bl, bs, bkt, bv, bbias, bsbias;
    std::vector<int64_t> rows;
    for (const HyperAttnSubproblem& sp : sched) {
      if (sp.kind == HyperAttnKind::Approx) {
        const int64_t nb = sp.num_blocks;
        if (m > 0) {
#pragma omp for schedule(static)
          for (int64_t bg = 0; bg < B * Hkv; ++bg) {
            SampleSet<A> ss = sample_set(bg);
            gather_samples<T, A>(p, pl, sp, bg / Hkv, bg % Hkv, ss, false);
          }
        }
        const A logw = std::log(static_cast<A>(sp.nk) / static_cast<A>(std::max<int64_t>(m, 1)));
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * Hq * nb; ++task) {
          const int64_t j = task % nb, bh = task / nb, b = bh / Hq, h = bh % Hq, g = h / G;
          const int64_t q0 = block_begin(j, sp.nq, nb), q1 = block_begin(j + 1, sp.nq, nb);
          if (q1 <= q0) continue;
          const int64_t k0 = block_begin(j, sp.nk, nb), k1 = block_begin(j + 1, sp.nk, nb);
          const int64_t nkb = k1 - k0, nkbp = round_up(nkb, kPadK);
          const int32_t* kperm = pl.k_perm + (b * Hkv + g) * pl.pk + sp.k_perm_offset;
          const int32_t* qperm = pl.q_perm + (b * Hq + h) * pl.pq + sp.q_perm_offset;
          A* Kt = bkt.get(D * nkbp);
          A* Vr = bv.get(nkbp * Dp);
          A* bias = bbias.get(nkbp);
          gather_cols<T, A>(p.k, p.k_strides, b, g, kperm + k0, 0, nkb, D, Kt, nkbp);
          gather_rows<T, A>(p.v, p.v_strides, b, g, kperm + k0, 0, nkb, nkbp, D, Vr, Dp);
          for (int64_t c = 0; c < nkbp; ++c) bias[c] = c < nkb ? A(0) : -std::numeric_limits<A>::infinity();
          SampleSet<A> ss = sample_set(b * Hkv + g);
          A* sbias = bsbias.get(mp);
          for (int64_t t = 0; t < mp; ++t)
            sbias[t] = (t < m && ss.blk[t] != j) ? logw : -std::numeric_limits<A>::infinity();
          for (int64_t r0 = q0; r0 < q1; r0 += kTileQ) {
            QTile<A> t;
            t.n = std::min(kTileQ, q1 - r0);
            t.np = round_up(t.n, 4);
            rows.resize(t.n);
            for (int64_t i = 0; i < t.n; ++i) rows[i] = qperm[r0 + i];
            t.rows = rows.data();
            t.Q = bq.get(t.np * Dp);
            t.O = bo.get(t.np * Dp);
            t.m = bm.get(t.np);
            t.l = bl.get(t.np);
            gather_rows<T, A>(p.q, p.q_strides, b, h, qperm + r0, 0, t.n, t.np, D, t.Q, Dp);
            std::fill(t.O, t.O + t.np * Dp, A(0));
            std::fill(t.m, t.m + t.np, -std::numeric_limits<A>::infinity());
            std::fill(t.l, t.l + t.np, A(0));
            A* S = bs.get(t.np * kChunk);
            Chunk<A> ch;
            ch.Kt = Kt; ch.Vr = Vr; ch.ld = nkbp; ch.bias = bias;
            for (int64_t c0 = 0; c0 < nkbp; c0 += kChunk) {
              ch.off = c0;
              ch.C = std::min(kChunk, nkbp - c0);
              attend_chunk(t, ch, D, Dp, scale, S);
            }
            if (m > 0 && nb > 1) {
              Chunk<A> cs;
              cs.Kt = ss.Kt; cs.Vr = ss.Vr; cs.ld = mp; cs.bias = sbias;
              for (int64_t c0 = 0; c0 < mp; c0 += kChunk) {
                cs.off = c0;
                cs.C = std::min(kChunk, mp - c0);
                attend_chunk(t, cs, D, Dp, scale, S);
              }
            }
            finish_tile<T, A>(p, o, t, b, h, Dp, accO, accL);
          }
        }
      } else {
        // Exact piece: tiles of kTileQ consecutive rows against the piece's keys in chunks.
        const bool causal_piece = sp.kind == HyperAttnKind::ExactCausal;
        const int64_t ntiles = (sp.nq + kTileQ - 1) / kTileQ;
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * Hq * ntiles; ++task) {
          const int64_t ti = task % ntiles, bh = task / ntiles, b = bh / Hq, h = bh % Hq, g = h / G;
          QTile<A> t;
          const int64_t r0 = sp.q_begin + ti * kTileQ;
          t.n = std::min(kTileQ, sp.q_begin + sp.nq - r0);
          t.np = round_up(t.n, 4);
          rows.resize(t.n);
          for (int64_t i = 0; i < t.n; ++i) rows[i] = r0 + i;
          t.rows = rows.data();
          t.Q = bq.get(t.np * Dp);
          t.O = bo.get(t.np * Dp);
          t.m = bm.get(t.np);
          t.l = bl.get(t.np);
          gather_rows<T, A>(p.q, p.q_strides, b, h, nullptr, r0, t.n, t.np, D, t.Q, Dp);
          std::fill(t.O, t.O + t.np * Dp, A(0));
          std::fill(t.m, t.m + t.np, -std::numeric_limits<A>::infinity());
          std::fill(t.l, t.l + t.np, A(0));
          A* S = bs.get(t.np * kChunk);
          const int64_t kend = causal_piece ? std::min(sp.k_begin + sp.nk, r0 + t.n) : sp.k_begin + sp.nk;
          A* Kt = bkt.get(D * kChunk);
          A* Vr = bv.get(kChunk * Dp);
          A* bias = bbias.get(kChunk);
          for (int64_t c0 = sp.k_begin; c0 < kend; c0 += kChunk) {
            const int64_t cn = std::min(kChunk, kend - c0), cp = round_up(cn, kPadK);
            gather_cols<T, A>(p.k, p.k_strides, b, g, nullptr, c0, cn, D, Kt, cp);
            gather_rows<T, A>(p.v, p.v_strides, b, g, nullptr, c0, cn, cp, D, Vr, Dp);
            for (int64_t c = 0; c < cp; ++c) bias[c] = c < cn ? A(0) : -std::numeric_limits<A>::infinity();
            Chunk<A> ch;
            ch.Kt = Kt; ch.Vr = Vr; ch.ld = cp; ch.off = 0; ch.C = cp; ch.bias = bias;
            // Only chunks reaching past the tile's first row need the causal mask.
            ch.causal_k0 = (causal_piece && c0 + cn - 1 > r0) ? c0 : -1;
            attend_chunk(t, ch, D, Dp, scale, S);
          }
          finish_tile<T, A>(p, o, t, b, h, Dp, accO, accL);
        }
      }
    }
    if (accO) {
#pragma omp for schedule(static)
      for (int64_t row = 0; row < rows_total; ++row) {
        const int64_t r = row % p.nq, bh = row / p.nq, b = bh / Hq, h = bh % Hq;
        T* dst = static_cast<T*>(o.out) + b * o.out_strides.b + h * o.out_strides.h + r * o.out_strides.n;
        const A* src = accO + row * D;
        for (int64_t d = 0; d < D; ++d) dst[d * o.out_strides.d] = store_from<T, A>(src[d]);
        lse_out[row] = accL[row];
      }
    }
  }
  return Status::OK();
}

// ---- backward ---------------------------------------------------------------------------------------
struct BwdLayout {
  size_t Di = 0, dq = 0, dk = 0, dv = 0, samples = 0, blk = 0, key = 0, part = 0, total = 0;
};
template <class A> BwdLayout bwd_layout(const HyperAttnProblem& p) {
  BwdLayout L;
  const int64_t rows = p.batch * p.heads_q * p.nq, krows = p.batch * p.heads_kv * p.nk;
  const int64_t D = p.head_dim, Dp = pad_d(D), m = p.config.sample_size, mp = samples_pad(m);
  int64_t max_nb = 0;
  for (const HyperAttnSubproblem& sp : get_schedule(p))
    if (sp.kind == HyperAttnKind::Approx) max_nb = std::max(max_nb, sp.num_blocks);
  size_t off = 0;
  auto take = [&](size_t bytes) { size_t at = off; off += (bytes + 63) / 64 * 64; return at; };
  const int64_t bg = p.batch * p.heads_kv;
  L.Di = take(sizeof(A) * rows);
  L.dq = take(sizeof(A) * rows * D);
  L.dk = take(sizeof(A) * krows * D);
  L.dv = take(sizeof(A) * krows * D);
  L.samples = take(sizeof(A) * bg * mp * (2 * D + Dp));
  L.blk = take(sizeof(int64_t) * bg * std::max<int64_t>(m, 1));
  L.key = take(sizeof(int32_t) * bg * std::max<int64_t>(m, 1));
  L.part = take(sizeof(A) * bg * max_nb * mp * Dp * 2);
  L.total = off;
  return L;
}

template <class A> void add_rows(A* dst, const A* src, int64_t D) {
  for (int64_t d = 0; d < D; ++d) dst[d] += src[d];
}

template <class T, class A>
Status backward_t(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnGrads& gr, void* ws) {
  const int64_t B = p.batch, Hq = p.heads_q, Hkv = p.heads_kv, D = p.head_dim, Dp = pad_d(D);
  const int64_t G = Hkv > 0 ? Hq / Hkv : 1;
  const A scale = static_cast<A>(p.scale);
  const int nt = threads_for(p.num_threads, 2.5 * problem_work(p));
  const BwdLayout L = bwd_layout<A>(p);
  char* w = static_cast<char*>(ws);
  A* Di = reinterpret_cast<A*>(w + L.Di);
  A* dq = reinterpret_cast<A*>(w + L.dq);
  A* dk = reinterpret_cast<A*>(w + L.dk);
  A* dv = reinterpret_cast<A*>(w + L.dv);
  A* samp = reinterpret_cast<A*>(w + L.samples);
  int64_t* sblk = reinterpret_cast<int64_t*>(w + L.blk);
  int32_t* skey = reinterpret_cast<int32_t*>(w + L.key);
  A* part = reinterpret_cast<A*>(w + L.part);
  const int64_t rows_total = B * Hq * p.nq, krows_total = B * Hkv * p.nk;
  const int64_t m = p.config.sample_size, mp = samples_pad(m);
  const std::vector<HyperAttnSubproblem> sched = get_schedule(p);
  const A* lse = static_cast<const A*>(gr.lse);
  const A* dlse = static_cast<const A*>(gr.dlse);
  auto sample_set = [&](int64_t bg) {
    SampleSet<A> ss;
    ss.Kt = samp + bg * mp * (2 * D + Dp);
    ss.Vt = ss.Kt + mp * D;
    ss.Kr = ss.Vt + mp * D;
    ss.blk = sblk + bg * std::max<int64_t>(m, 1);
    ss.key = skey + bg * std::max<int64_t>(m, 1);
    return ss;
  };

#pragma omp parallel num_threads(nt)
  {
    Buf<A> bq, bdo, blse, bdi, bdq, bP, bdS, bT, bkt, bkr, bvt, bbias, bsbias, bdk, bdv, bdks, bdvs;
    std::vector<int64_t> rows;
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows_total; ++row) {
      const int64_t r = row % p.nq, bh = row / p.nq, b = bh / Hq, h = bh % Hq;
      const T* o = row_ptr<T>(gr.out, gr.out_strides, b, h, r);
      const T* g = row_ptr<T>(gr.dout, gr.dout_strides, b, h, r);
      A s = 0;
      for (int64_t d = 0; d < D; ++d)
        s += load_as<T, A>(o[d * gr.out_strides.d]) * load_as<T, A>(g[d * gr.dout_strides.d]);
      Di[row] = s - (dlse ? dlse[row] : A(0));
      std::fill(dq + row * D, dq + (row + 1) * D, A(0));
    }
#pragma omp for schedule(static)
    for (int64_t row = 0; row < krows_total; ++row) {
      std::fill(dk + row * D, dk + (row + 1) * D, A(0));
      std::fill(dv + row * D, dv + (row + 1) * D, A(0));
    }

    // Gathers a query tile's q, dO, lse, D_i rows.
    auto load_tile = [&](int64_t b, int64_t h, const int32_t* idx, int64_t first, int64_t n, int64_t np, A*& Q,
                         A*& dO, A*& ls, A*& di) {
      Q = bq.get(np * Dp);
      dO = bdo.get(np * Dp);
      ls = blse.get(np);
      di = bdi.get(np);
      gather_rows<T, A>(p.q, p.q_strides, b, h, idx, first, n, np, D, Q, Dp);
      gather_rows<T, A>(gr.dout, gr.dout_strides, b, h, idx, first, n, np, D, dO, Dp);
      rows.resize(n);
      for (int64_t i = 0; i < n; ++i) {
        rows[i] = idx ? idx[i] : first + i;
        const int64_t row = (b * Hq + h) * p.nq + rows[i];
        ls[i] = lse[row];
        di[i] = Di[row];
      }
      for (int64_t i = n; i < np; ++i) { ls[i] = 0; di[i] = 0; }
    };

    for (const HyperAttnSubproblem& sp : sched) {
      if (sp.kind == HyperAttnKind::Approx) {
        const int64_t nb = sp.num_blocks;
        const bool has_s = m > 0 && nb > 1;
        if (has_s) {
#pragma omp for schedule(static)
          for (int64_t bg = 0; bg < B * Hkv; ++bg) {
            SampleSet<A> ss = sample_set(bg);
            gather_samples<T, A>(p, pl, sp, bg / Hkv, bg % Hkv, ss, true);
          }
        }
        const A logw = std::log(static_cast<A>(sp.nk) / static_cast<A>(std::max<int64_t>(m, 1)));
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * Hkv * nb; ++task) {
          const int64_t j = task % nb, bg = task / nb, b = bg / Hkv, g = bg % Hkv;
          const int64_t q0 = block_begin(j, sp.nq, nb), q1 = block_begin(j + 1, sp.nq, nb);
          const int64_t k0 = block_begin(j, sp.nk, nb), k1 = block_begin(j + 1, sp.nk, nb);
          const int64_t nkb = k1 - k0, nkbp = round_up(nkb, kPadK);
          const int32_t* kperm = pl.k_perm + (b * Hkv + g) * pl.pk + sp.k_perm_offset;
          A* Kt = bkt.get(D * nkbp);
          A* Kr = bkr.get(nkbp * Dp);
          A* Vt = bvt.get(D * nkbp);
          A* bias = bbias.get(nkbp);
          A* dKb = bdk.get(nkbp * Dp);
          A* dVb = bdv.get(nkbp * Dp);
          gather_cols<T, A>(p.k, p.k_strides, b, g, kperm + k0, 0, nkb, D, Kt, nkbp);
          gather_rows<T, A>(p.k, p.k_strides, b, g, kperm + k0, 0, nkb, nkbp, D, Kr, Dp);
          gather_cols<T, A>(p.v, p.v_strides, b, g, kperm + k0, 0, nkb, D, Vt, nkbp);
          for (int64_t c = 0; c < nkbp; ++c) bias[c] = c < nkb ? A(0) : -std::numeric_limits<A>::infinity();
          std::fill(dKb, dKb + nkbp * Dp, A(0));
          std::fill(dVb, dVb + nkbp * Dp, A(0));
          SampleSet<A> ss = sample_set(bg);
          A* sbias = bsbias.get(mp);
          A* dKs = part + ((bg * nb + j) * 2) * mp * Dp;
          A* dVs = dKs + mp * Dp;
          if (has_s) {
            for (int64_t t = 0; t < mp; ++t)
              sbias[t] = (t < m && ss.blk[t] != j) ? logw : -std::numeric_limits<A>::infinity();
            std::fill(dKs, dKs + 2 * mp * Dp, A(0));
          }
          for (int64_t hh = 0; hh < G; ++hh) {
            const int64_t h = g * G + hh;
            const int32_t* qperm = pl.q_perm + (b * Hq + h) * pl.pq + sp.q_perm_offset;
            for (int64_t r0 = q0; r0 < q1; r0 += kTileQ) {
              const int64_t n = std::min(kTileQ, q1 - r0), np = round_up(n, 4);
              A *Q, *dO, *ls, *di;
              load_tile(b, h, qperm + r0, 0, n, np, Q, dO, ls, di);
              A* dQt = bdq.get(np * Dp);
              std::fill(dQt, dQt + np * Dp, A(0));
              A* P = bP.get(np * kChunk);
              A* dS = bdS.get(np * kChunk);
              A* Tb = bT.get(kChunk * np);
              auto run = [&](const Chunk<A>& ch, A* dKdst, A* dVdst) {
                p_ds_chunk(n, np, rows.data(), Q, dO, ls, di, ch, D, Dp, scale, P, dS);
                for (int64_t i = 0; i < np * kChunk; ++i) dS[i] *= scale;  // s folded once
                mm_pv(dS, kChunk, np, ch.C, ch.Kr + ch.off * Dp, Dp, Dp, dQt, Dp);
                transpose(dS, np, ch.C, A(1), Tb);
                mm_pv(Tb, np, ch.C, np, Q, Dp, Dp, dKdst + ch.off * Dp, Dp);
                transpose(P, np, ch.C, A(1), Tb);
                mm_pv(Tb, np, ch.C, np, dO, Dp, Dp, dVdst + ch.off * Dp, Dp);
              };
              Chunk<A> ch;
              ch.Kt = Kt; ch.Kr = Kr; ch.Vt = Vt; ch.ld = nkbp; ch.bias = bias;
              for (int64_t c0 = 0; c0 < nkbp; c0 += kChunk) {
                ch.off = c0;
                ch.C = std::min(kChunk, nkbp - c0);
                run(ch, dKb, dVb);
              }
              if (has_s) {
                Chunk<A> cs;
                cs.Kt = ss.Kt; cs.Kr = ss.Kr; cs.Vt = ss.Vt; cs.ld = mp; cs.bias = sbias;
                for (int64_t c0 = 0; c0 < mp; c0 += kChunk) {
                  cs.off = c0;
                  cs.C = std::min(kChunk, mp - c0);
                  run(cs, dKs, dVs);
                }
              }
              for (int64_t i = 0; i < n; ++i) add_rows(dq + ((b * Hq + h) * p.nq + rows[i]) * D, dQt + i * Dp, D);
            }
          }
          for (int64_t c = 0; c < nkb; ++c) {
            const int64_t krow = (b * Hkv + g) * p.nk + kperm[k0 + c];
            add_rows(dk + krow * D, dKb + c * Dp, D);
            add_rows(dv + krow * D, dVb + c * Dp, D);
          }
        }
        if (has_s) {
          // Slot partials: summed over query blocks in block order, scattered to keys in slot order.
#pragma omp for schedule(static)
          for (int64_t bg = 0; bg < B * Hkv; ++bg) {
            SampleSet<A> ss = sample_set(bg);
            for (int64_t t = 0; t < m; ++t) {
              const int64_t krow = bg * p.nk + ss.key[t];
              for (int64_t j = 0; j < nb; ++j) {
                const A* dKs = part + ((bg * nb + j) * 2) * mp * Dp + t * Dp;
                const A* dVs = dKs + mp * Dp;
                add_rows(dk + krow * D, dKs, D);
                add_rows(dv + krow * D, dVs, D);
              }
            }
          }
        }
      } else {
        const bool causal_piece = sp.kind == HyperAttnKind::ExactCausal;
        // Pass A: dQ, row owners.
        const int64_t ntiles = (sp.nq + kTileQ - 1) / kTileQ;
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * Hq * ntiles; ++task) {
          const int64_t ti = task % ntiles, bh = task / ntiles, b = bh / Hq, h = bh % Hq, g = h / G;
          const int64_t r0 = sp.q_begin + ti * kTileQ;
          const int64_t n = std::min(kTileQ, sp.q_begin + sp.nq - r0), np = round_up(n, 4);
          A *Q, *dO, *ls, *di;
          load_tile(b, h, nullptr, r0, n, np, Q, dO, ls, di);
          A* dQt = bdq.get(np * Dp);
          std::fill(dQt, dQt + np * Dp, A(0));
          A* P = bP.get(np * kChunk);
          A* dS = bdS.get(np * kChunk);
          A* Kt = bkt.get(D * kChunk);
          A* Kr = bkr.get(kChunk * Dp);
          A* Vt = bvt.get(D * kChunk);
          A* bias = bbias.get(kChunk);
          const int64_t kend = causal_piece ? std::min(sp.k_begin + sp.nk, r0 + n) : sp.k_begin + sp.nk;
          for (int64_t c0 = sp.k_begin; c0 < kend; c0 += kChunk) {
            const int64_t cn = std::min(kChunk, kend - c0), cp = round_up(cn, kPadK);
            gather_cols<T, A>(p.k, p.k_strides, b, g, nullptr, c0, cn, D, Kt, cp);
            gather_rows<T, A>(p.k, p.k_strides, b, g, nullptr, c0, cn, cp, D, Kr, Dp);
            gather_cols<T, A>(p.v, p.v_strides, b, g, nullptr, c0, cn, D, Vt, cp);
            for (int64_t c = 0; c < cp; ++c) bias[c] = c < cn ? A(0) : -std::numeric_limits<A>::infinity();
            Chunk<A> ch;
            ch.Kt = Kt; ch.Kr = Kr; ch.Vt = Vt; ch.ld = cp; ch.off = 0; ch.C = cp; ch.bias = bias;
            ch.causal_k0 = (causal_piece && c0 + cn - 1 > r0) ? c0 : -1;
            p_ds_chunk(n, np, rows.data(), Q, dO, ls, di, ch, D, Dp, scale, P, dS);
            for (int64_t i = 0; i < np * kChunk; ++i) dS[i] *= scale;
            mm_pv(dS, kChunk, np, cp, Kr, Dp, Dp, dQt, Dp);
          }
          for (int64_t i = 0; i < n; ++i) add_rows(dq + ((b * Hq + h) * p.nq + r0 + i) * D, dQt + i * Dp, D);
        }
        // Pass B: dK, dV, key owners (loop over the G heads of the group and the query rows).
        const int64_t nkt = (sp.nk + kTileK - 1) / kTileK;
#pragma omp for schedule(dynamic, 1)
        for (int64_t task = 0; task < B * Hkv * nkt; ++task) {
          const int64_t ti = task % nkt, bg = task / nkt, b = bg / Hkv, g = bg % Hkv;
          const int64_t c0 = sp.k_begin + ti * kTileK;
          const int64_t cn = std::min(kTileK, sp.k_begin + sp.nk - c0), cp = round_up(cn, kPadK);
          A* Kt = bkt.get(D * cp);
          A* Vt = bvt.get(D * cp);
          A* bias = bbias.get(cp);
          A* dKb = bdk.get(cp * Dp);
          A* dVb = bdv.get(cp * Dp);
          gather_cols<T, A>(p.k, p.k_strides, b, g, nullptr, c0, cn, D, Kt, cp);
          gather_cols<T, A>(p.v, p.v_strides, b, g, nullptr, c0, cn, D, Vt, cp);
          for (int64_t c = 0; c < cp; ++c) bias[c] = c < cn ? A(0) : -std::numeric_limits<A>::infinity();
          std::fill(dKb, dKb + cp * Dp, A(0));
          std::fill(dVb, dVb + cp * Dp, A(0));
          Chunk<A> ch;
          ch.Kt = Kt; ch.Vt = Vt; ch.ld = cp; ch.off = 0; ch.C = cp; ch.bias = bias;
          // Causal: rows before the tile's first key see none of it.
          const int64_t rbeg = causal_piece ? c0 : sp.q_begin;
          const int64_t rend = sp.q_begin + sp.nq;
          for (int64_t hh = 0; hh < G; ++hh) {
            const int64_t h = g * G + hh;
            for (int64_t r0 = rbeg; r0 < rend; r0 += kTileQ) {
              const int64_t n = std::min(kTileQ, rend - r0), np = round_up(n, 4);
              A *Q, *dO, *ls, *di;
              load_tile(b, h, nullptr, r0, n, np, Q, dO, ls, di);
              A* P = bP.get(np * kChunk);
              A* dS = bdS.get(np * kChunk);
              A* Tb = bT.get(kChunk * np);
              ch.causal_k0 = (causal_piece && c0 + cn - 1 > r0) ? c0 : -1;
              p_ds_chunk(n, np, rows.data(), Q, dO, ls, di, ch, D, Dp, scale, P, dS);
              transpose(dS, np, cp, scale, Tb);
              mm_pv(Tb, np, cp, np, Q, Dp, Dp, dKb, Dp);
              transpose(P, np, cp, A(1), Tb);
              mm_pv(Tb, np, cp, np, dO, Dp, Dp, dVb, Dp);
            }
          }
          for (int64_t c = 0; c < cn; ++c) {
            const int64_t krow = (b * Hkv + g) * p.nk + c0 + c;
            add_rows(dk + krow * D, dKb + c * Dp, D);
            add_rows(dv + krow * D, dVb + c * Dp, D);
          }
        }
      }
    }
    // Final casts.
#pragma omp for schedule(static)
    for (int64_t row = 0; row < rows_total; ++row) {
      const int64_t r = row % p.nq, bh = row / p.nq, b = bh / Hq, h = bh % Hq;
      T* dst = static_cast<T*>(gr.dq) + b * gr.dq_strides.b + h * gr.dq_strides.h + r * gr.dq_strides.n;
      for (int64_t d = 0; d < D; ++d) dst[d * gr.dq_strides.d] = store_from<T, A>(dq[row * D + d]);
    }
#pragma omp for schedule(static)
    for (int64_t row = 0; row < krows_total; ++row) {
      const int64_t r = row % p.nk, bg = row / p.nk, b = bg / Hkv, g = bg % Hkv;
      T* dst = static_cast<T*>(gr.dk) + b * gr.dk_strides.b + g * gr.dk_strides.h + r * gr.dk_strides.n;
      T* dst2 = static_cast<T*>(gr.dv) + b * gr.dv_strides.b + g * gr.dv_strides.h + r * gr.dv_strides.n;
      for (int64_t d = 0; d < D; ++d) {
        dst[d * gr.dk_strides.d] = store_from<T, A>(dk[row * D + d]);
        dst2[d * gr.dv_strides.d] = store_from<T, A>(dv[row * D + d]);
      }
    }
  }
  return Status::OK();
}

// ---- hashing and plan -------------------------------------------------------------------------------
// Bits of one gathered row: dot products with the transposed projection PT [r][Dp] (zero-padded), summed
// in vector lanes then across lanes in a fixed order; bit t iff float32(dot) > 0 (NaN and 0 give 0).
template <class A>
inline uint32_t hash_row(const A* x, int64_t Dp, const A* PT, int r) {
  typedef typename VT<A>::v V;
  constexpr int W = VT<A>::W;
  uint32_t bin = 0;
  for (int t = 0; t < r; ++t) {
    const A* pt = PT + t * Dp;
    V acc0{}, acc1{};
    for (int64_t d = 0; d < Dp; d += 2 * W) {
      acc0 = vfma(vload<V>(x + d), vload<V>(pt + d), acc0);
      acc1 = vfma(vload<V>(x + d + W), vload<V>(pt + d + W), acc1);
    }
    const V acc = acc0 + acc1;
    A s = 0;
    for (int w = 0; w < W; ++w) s += acc[w];
    if (static_cast<float>(s) > 0.0f) bin |= 1u << t;
  }
  return inverse_gray(bin);
}

template <class T, class A>
void hash_all(const void* x, const HyperAttnStrides& s, int64_t B, int64_t H, int64_t N, int64_t D, const float* proj,
              int r, int32_t* keys, int nt) {
  const int64_t Dp = pad_d(D);
  std::vector<A> PT(std::max<int64_t>(r, 1) * Dp, A(0));
  for (int t = 0; t < r; ++t)
    for (int64_t d = 0; d < D; ++d) PT[t * Dp + d] = static_cast<A>(proj[d * r + t]);
  const int nth = (double(B) * H * N * D < 1.0e6) ? 1 : nt;
  constexpr int64_t kRows = 256;
  const int64_t total = B * H * N, nblk = (total + kRows - 1) / kRows;
#pragma omp parallel num_threads(nth)
  {
    std::vector<A> buf(Dp, A(0));
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      for (int64_t row = blk * kRows; row < std::min(total, (blk + 1) * kRows); ++row) {
        const int64_t n = row % N, bh = row / N, b = bh / H, h = bh % H;
        const T* xr = row_ptr<T>(x, s, b, h, n);
        for (int64_t d = 0; d < D; ++d) buf[d] = load_as<T, A>(xr[d * s.d]);
        keys[row] = static_cast<int32_t>(hash_row<A>(buf.data(), Dp, PT.data(), r));
      }
    }
  }
}

// Stable counting sort of rows [first, first + n) by key: out[rank] = row index.
void counting_sort(const int32_t* keys, int64_t first, int64_t n, int r, std::vector<int64_t>& cnt, int32_t* out) {
  const int64_t nbins = int64_t(1) << r;
  cnt.assign(nbins + 1, 0);
  for (int64_t i = 0; i < n; ++i) cnt[keys[first + i] + 1] += 1;
  for (int64_t k = 0; k < nbins; ++k) cnt[k + 1] += cnt[k];
  for (int64_t i = 0; i < n; ++i) out[cnt[keys[first + i]]++] = static_cast<int32_t>(first + i);
}

template <class T, class A>
Status plan_t(const HyperAttnProblem& p, const HyperAttnPlanInputs& in, const HyperAttnPlan& pl, void* ws) {
  const std::vector<HyperAttnSubproblem> sched = get_schedule(p);
  bool any = false;
  for (const auto& sp : sched) any |= sp.kind == HyperAttnKind::Approx;
  if (!any) return Status::OK();
  const int nt = threads_for(p.num_threads, 4.0 * double(p.batch) * double(p.heads_q * p.nq + p.heads_kv * p.nk) *
                                                double(p.head_dim + 8));
  const int r = in.num_projs;
  int32_t* kq = static_cast<int32_t*>(ws);
  int32_t* kk = kq + p.batch * p.heads_q * p.nq;
  hash_all<T, A>(p.q, p.q_strides, p.batch, p.heads_q, p.nq, p.head_dim, in.proj, r, kq, nt);
  hash_all<T, A>(p.k, p.k_strides, p.batch, p.heads_kv, p.nk, p.head_dim, in.proj, r, kk, nt);
  const int64_t Hq = p.heads_q, Hkv = p.heads_kv, B = p.batch;
#pragma omp parallel num_threads(nt)
  {
    std::vector<int64_t> cnt;
    for (const auto& sp : sched) {
      if (sp.kind != HyperAttnKind::Approx) continue;
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t bh = 0; bh < B * Hq; ++bh)
        counting_sort(kq + bh * p.nq, sp.q_begin, sp.nq, r, cnt, pl.q_perm + bh * pl.pq + sp.q_perm_offset);
#pragma omp for schedule(dynamic, 1) nowait
      for (int64_t bg = 0; bg < B * Hkv; ++bg) {
        counting_sort(kk + bg * p.nk, sp.k_begin, sp.nk, r, cnt, pl.k_perm + bg * pl.pk + sp.k_perm_offset);
        const int32_t* words = in.sample_words + bg * pl.s + sp.sample_offset;
        int32_t* smp = pl.samples + bg * pl.s + sp.sample_offset;
        for (int64_t t = 0; t < p.config.sample_size; ++t) smp[t] = static_cast<int32_t>(sample_rank(words[t], sp.nk));
      }
    }
  }
  return Status::OK();
}

// ---- merge ------------------------------------------------------------------------------------------
template <class T, class A> Status merge_t(const HyperAttnMergeParams& p) {
  const int64_t rows = p.batch * p.heads * p.n, D = p.head_dim;
  const A* l1 = static_cast<const A*>(p.lse1);
  const A* l2 = static_cast<const A*>(p.lse2);
  A* lo = static_cast<A*>(p.lse);
#pragma omp parallel for schedule(static) num_threads(threads_for(p.num_threads, double(rows) * D * 4))
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = row % p.n, bh = row / p.n, b = bh / p.heads, h = bh % p.heads;
    const LseMerge<A> mg = lse_merge<A>(l1[row], l2[row]);
    const T* o1 = row_ptr<T>(p.out1, p.out1_strides, b, h, n);
    const T* o2 = row_ptr<T>(p.out2, p.out2_strides, b, h, n);
    T* o = static_cast<T*>(p.out) + b * p.out_strides.b + h * p.out_strides.h + n * p.out_strides.n;
    for (int64_t d = 0; d < D; ++d) {
      const A a = mg.c1 != A(0) ? mg.c1 * load_as<T, A>(o1[d * p.out1_strides.d]) : A(0);
      const A c = mg.c2 != A(0) ? mg.c2 * load_as<T, A>(o2[d * p.out2_strides.d]) : A(0);
      o[d * p.out_strides.d] = store_from<T, A>(a + c);
    }
    lo[row] = mg.lse;
  }
  return Status::OK();
}

}  // namespace

// ---- entry points (dtype dispatch) ------------------------------------------------------------------
#define FASTNORM_HA_DISPATCH(dtype, FN, ...)                                                 \
  switch (dtype) {                                                                          \
    case DType::Float32: return FN<float, float>(__VA_ARGS__);                              \
    case DType::Float64: return FN<double, double>(__VA_ARGS__);                            \
    case DType::Float16: return FN<f16_t, float>(__VA_ARGS__);                              \
    case DType::BFloat16: return FN<bf16_t, float>(__VA_ARGS__);                            \
    default: return unsupported(std::string("unsupported dtype ") + dtype_name(dtype));    \
  }

namespace {
template <class T, class A> Status hash_t(const HyperAttnHashParams& p) {
  hash_all<T, A>(p.x, p.x_strides, p.batch, p.heads, p.n, p.head_dim, p.proj, p.num_projs, p.keys,
                 threads_of(p.num_threads));
  return Status::OK();
}
}  // namespace

Status lsh_hash(const HyperAttnHashParams& p) { FASTNORM_HA_DISPATCH(p.dtype, hash_t, p) }
Status plan(const HyperAttnProblem& p, const HyperAttnPlanInputs& in, const HyperAttnPlan& pl, void* ws) {
  FASTNORM_HA_DISPATCH(p.dtype, plan_t, p, in, pl, ws)
}
Status forward(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnOutput& o, void* ws) {
  FASTNORM_HA_DISPATCH(p.dtype, forward_t, p, pl, o, ws)
}
Status backward(const HyperAttnProblem& p, const HyperAttnPlan& pl, const HyperAttnGrads& g, void* ws) {
  FASTNORM_HA_DISPATCH(p.dtype, backward_t, p, pl, g, ws)
}
Status merge(const HyperAttnMergeParams& p) { FASTNORM_HA_DISPATCH(p.dtype, merge_t, p) }

size_t plan_ws_bytes(const HyperAttnProblem& p) {
  return sizeof(int32_t) * static_cast<size_t>(p.batch * p.heads_q * p.nq + p.batch * p.heads_kv * p.nk);
}
size_t forward_ws_bytes(const HyperAttnProblem& p) {
  return p.dtype == DType::Float64 ? fwd_layout<double>(p).total : fwd_layout<float>(p).total;
}
size_t backward_ws_bytes(const HyperAttnProblem& p) {
  return p.dtype == DType::Float64 ? bwd_layout<double>(p).total : bwd_layout<float>(p).total;
}

}  // namespace FASTNORM_ISA
}  // namespace hyper_attention
}  // namespace fastnorm

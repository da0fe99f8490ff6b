// The Lion CUDA kernel's per-block and per-thread work (specs/lion.md §3.1, §3.5-3.7), written as FASTNORM_HD
// code so that g++ compiles it too: tests/cpp/test_lion_cuda_emulation.cpp runs it on the host for every
// block and thread of a launch and checks it bitwise against the CPU step. lion.cu wraps it in kernels.
//
// One launch = one LionArgs struct passed by value (a __grid_constant__ kernel parameter): a 256-byte
// header of call-wide scalars and device pointers, then per tensor its Depth pointers (param, grad,
// exp_avg[, master]), its numel and one int64 word holding the end of its chunk prefix (low 32 bits; a launch
// has < 2^31 chunks) and the tensor's SR slot (high 32 bits), so a launch holds exactly
// tensors_per_launch(Depth, space) tensors. Block b binary-searches the prefix for its tensor and chunk
// (block-uniform loads from the constant bank), then each of the 256 threads walks its share of the chunk:
// 16-byte vectors when every pointer of the tensor is 16-byte aligned (ILP vectors in flight per thread,
// loads before stores), element by element for unaligned tensors and for the tail of the last chunk.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/lion_math.h"
#include "fastnorm/lion.h"

// `#pragma unroll` for nvcc only (g++ would warn about an unknown pragma).
#if defined(__CUDACC__)
#define FASTNORM_LION_UNROLL _Pragma("unroll")
#else
#define FASTNORM_LION_UNROLL
#endif

namespace fastnorm {
namespace lion {
namespace cuda {
namespace kern {

using fastnorm::detail::Conv;
using fastnorm::lion::detail::OpmathOf;
using fastnorm::lion::detail::Scalars;

constexpr int kThreads = 256;  // threads per block
static_assert(kChunk % kThreads == 0, "a chunk splits evenly over the block");
// The cautious pass counts at most kChunk / kThreads elements per thread, bit-sliced over 8 ballots.
static_assert(kChunk / kThreads < 256, "per-thread cautious counts must fit in 8 bits");

// ---- kernel arguments --------------------------------------------------------------------------------
// Call-wide values, identical in every launch of a call apart from `counts` and `n_tensors`.
template <typename T>
struct LionHeader {
  Scalars<T> s;                                 // opmath scalars from the host lr (unused with lr_device)
  const float* found_inf;                       // nullable device pointers, read once per thread
  const float* grad_scale;
  const void* lr_device;
  const int64_t* sr_step_device;
  unsigned long long* counts;                   // cautious: workspace counts of this launch's first tensor
  double beta1, beta2, weight_decay, decay_ref;  // for the scalars of a device lr
  double cautious_min_frac;
  uint64_t sr_seed;
  int64_t sr_step;
  int64_t n_tensors;                            // tensors in this launch
  int32_t decay_lr_power;
  DType lr_dtype;
  bool maximize, cautious, propagate_nan;
};
static_assert(sizeof(LionHeader<float>) <= kArgHeaderBytes, "the Lion launch header must fit in 256 bytes");
static_assert(sizeof(LionHeader<double>) <= kArgHeaderBytes, "the Lion launch header must fit in 256 bytes");

template <typename T, int Depth, int Cap>
struct LionArgs {
  LionHeader<T> h;
  unsigned char pad_[kArgHeaderBytes - sizeof(LionHeader<T>)];
  void* ptr[Depth][Cap];        // param, grad, exp_avg[, master]
  int64_t numel[Cap];
  uint64_t end_slot[Cap];       // (slot << 32) | end of the tensor's chunks in the launch's prefix
};

// Tensors an argument struct of `space` bytes holds (the planner's formula, as a constant expression).
constexpr int capacity_for(int depth, size_t space) {
  return static_cast<int>((space - kArgHeaderBytes) / (static_cast<size_t>(depth) * 8 + 16));
}

// 32 KB kernel parameters need a CUDA >= 12.1 toolkit at build time (the host compiler emulates them freely).
#if !defined(__CUDACC__) || (defined(CUDART_VERSION) && CUDART_VERSION >= 12010)
#define FASTNORM_LION_LARGE_ARGS 1
#else
#define FASTNORM_LION_LARGE_ARGS 0
#endif

// The argument capacities of each depth: a small one, the 4 KB maximum and the 32 KB maximum. Each launch
// takes the smallest that holds its tensors, so small calls copy small argument blocks.
template <int Depth>
struct Caps {
  static constexpr int kTiny = 16;
  static constexpr int kSmall = capacity_for(Depth, kArgSpaceSmall);
  static constexpr int kLarge = capacity_for(Depth, kArgSpaceLarge);
};

// Calls f(std::integral_constant<int, Cap>{}) with the smallest capacity that holds n tensors (the 32 KB one
// only when `large`). Returns false when none does.
template <int Depth, typename F>
inline bool with_capacity(int64_t n, bool large, F&& f) {
  using C = Caps<Depth>;
  if (n <= C::kTiny) { f(std::integral_constant<int, C::kTiny>{}); return true; }
  if (n <= C::kSmall) { f(std::integral_constant<int, C::kSmall>{}); return true; }
#if FASTNORM_LION_LARGE_ARGS
  if (large && n <= C::kLarge) { f(std::integral_constant<int, C::kLarge>{}); return true; }
#else
  (void)large;
#endif
  return false;
}

// ---- memory access -----------------------------------------------------------------------------------
template <typename D, int N>
struct alignas(N * sizeof(D) < 16 ? N * sizeof(D) : 16) Pack {
  D d[N];
};

// Host emulation: a vector access the device could not make (misaligned) aborts the test.
FASTNORM_HD_INLINE void check_align(const void* ptr, size_t align) {
#if !defined(__CUDA_ARCH__)
  if (reinterpret_cast<uintptr_t>(ptr) % align != 0) std::abort();
#else
  (void)ptr;
  (void)align;
#endif
}

template <typename X>
FASTNORM_HD_INLINE X ld(const void* ptr) {
#if defined(__CUDA_ARCH__)
  return *static_cast<const X*>(ptr);
#else
  check_align(ptr, alignof(X));
  X x;
  std::memcpy(&x, ptr, sizeof(X));
  return x;
#endif
}
template <typename X>
FASTNORM_HD_INLINE void st(void* ptr, const X& x) {
#if defined(__CUDA_ARCH__)
  *static_cast<X*>(ptr) = x;
#else
  check_align(ptr, alignof(X));
  std::memcpy(ptr, &x, sizeof(X));
#endif
}

// ---- per-element context -----------------------------------------------------------------------------
template <typename T>
struct ElemCtx {
  Scalars<T> s;
  T gdiv;          // grad_scale as T, negated under maximize (has_div)
  T q;             // cautious scale of the tensor
  bool has_div;    // grad_scale given
  bool negate;     // maximize without grad_scale
  bool cautious;
  bool propagate_nan;
  uint32_t slot;
  int64_t sr_step;
  uint64_t sr_seed;
};

// One chunk of one tensor: elements [begin, begin + len) of the flat tensor.
template <typename P, typename S>
struct Chunk {
  P* p;
  const P* g;
  S* m;
  float* w;         // master (Depth 4) or nullptr
  int64_t begin;
  int64_t len;
  bool aligned;     // every pointer 16-byte aligned: vector path
};

template <typename P>
struct Tile {
  static constexpr int kVec = static_cast<int>(16 / sizeof(P));  // elements per 16-byte vector of P
  static constexpr int kIlp = sizeof(P) == 2 ? 2 : 4;             // vectors in flight per thread
  static constexpr int kScalarIlp = 4;                            // elements in flight, scalar path
};

template <typename T, typename P>
FASTNORM_HD_INLINE T scaled_grad(const ElemCtx<T>& c, P graw) {
  const T g = static_cast<T>(Conv<P>::load(graw));
  if (c.has_div) return fastnorm::lion::detail::scaled_grad(g, c.gdiv);
  return c.negate ? -g : g;
}

// The update of one element: x (weight as T), raw grad and momentum in, new param / momentum / master out.
template <typename P, typename S, bool kMaster, bool kSR, typename T>
FASTNORM_HD_INLINE void update_elem(const ElemCtx<T>& c, T x, P graw, S mraw, uint32_t r16, P& p_out, S& m_out,
                                    float& w_out) {
  namespace ld_ = fastnorm::lion::detail;
  const T gg = scaled_grad<T, P>(c, graw);
  const T mm = static_cast<T>(Conv<S>::load(mraw));
  const ld_::Update<T> u = ld_::lion_update_element<T>(x, gg, mm, c.s, c.cautious, c.q, c.propagate_nan);
  m_out = Conv<S>::store(u.m_new);
  if constexpr (kSR) {
    (void)w_out;
    p_out = P{ld_::bf16_round_stochastic(u.x2, r16)};
  } else {
    (void)r16;
    if constexpr (kMaster) w_out = static_cast<float>(u.x2);
    p_out = Conv<P>::store(u.x2);
  }
}

// The cautious mask of one element, recomputed exactly as update_elem does.
template <typename P, typename S, typename T>
FASTNORM_HD_INLINE bool keep_elem(const ElemCtx<T>& c, P graw, S mraw) {
  namespace ld_ = fastnorm::lion::detail;
  const T gg = scaled_grad<T, P>(c, graw);
  const T mm = static_cast<T>(Conv<S>::load(mraw));
  const T cc = ld_::interp(c.s.a1, c.s.b1, mm, gg);
  return ld_::cautious_keep(ld_::lion_sign(cc, c.propagate_nan), gg);
}

// ---- what one thread does in one chunk ---------------------------------------------------------------
// Element by element over [from, ch.len), elements from + tid, from + tid + 256, ..., kScalarIlp in flight.
template <typename P, typename S, bool kMaster, bool kSR, typename T>
FASTNORM_HD_INLINE void thread_update_scalar(const Chunk<P, S>& ch, int64_t from, int tid, const ElemCtx<T>& c) {
  constexpr int U = Tile<P>::kScalarIlp;
  for (int64_t e0 = from; e0 < ch.len; e0 += static_cast<int64_t>(kThreads) * U) {
    P g[U]{};
    S m[U]{};
    T x[U]{};
FASTNORM_LION_UNROLL
    for (int u = 0; u < U; ++u) {
      const int64_t e = ch.begin + e0 + static_cast<int64_t>(u) * kThreads + tid;
      if (e0 + static_cast<int64_t>(u) * kThreads + tid < ch.len) {
        g[u] = ld<P>(ch.g + e);
        m[u] = ld<S>(ch.m + e);
        if constexpr (kMaster) x[u] = static_cast<T>(ld<float>(ch.w + e));
        else x[u] = static_cast<T>(Conv<P>::load(ld<P>(ch.p + e)));
      }
    }
FASTNORM_LION_UNROLL
    for (int u = 0; u < U; ++u) {
      const int64_t e = ch.begin + e0 + static_cast<int64_t>(u) * kThreads + tid;
      if (e0 + static_cast<int64_t>(u) * kThreads + tid < ch.len) {
        uint32_t r16 = 0;
        if constexpr (kSR) {
          const auto r = fastnorm::lion::detail::sr_bits(static_cast<uint64_t>(e) >> 3, c.slot, c.sr_step, c.sr_seed);
          r16 = fastnorm::lion::detail::sr_r16(r, e);
        }
        P pn;
        S mn;
        float wn = 0.0f;
        update_elem<P, S, kMaster, kSR, T>(c, x[u], g[u], m[u], r16, pn, mn, wn);
        st<S>(ch.m + e, mn);
        if constexpr (kMaster) st<float>(ch.w + e, wn);
        st<P>(ch.p + e, pn);
      }
    }
  }
}

// All of this thread's work in chunk `ch` of the update pass.
template <typename P, typename S, bool kMaster, bool kSR, typename T>
FASTNORM_HD_INLINE void thread_update(const Chunk<P, S>& ch, int tid, const ElemCtx<T>& c) {
  constexpr int V = Tile<P>::kVec;
  constexpr int U = Tile<P>::kIlp;
  static_assert(!kSR || V == 8, "stochastic rounding runs on bf16 params: one Philox call per 8-element vector");
  if (!ch.aligned) {
    thread_update_scalar<P, S, kMaster, kSR, T>(ch, 0, tid, c);
    return;
  }
  const int64_t nvec = ch.len / V;
  for (int64_t v0 = 0; v0 < nvec; v0 += static_cast<int64_t>(kThreads) * U) {
    Pack<P, V> g[U];
    Pack<S, V> m[U];
    Pack<P, V> p[U];
    Pack<float, V> w[U];
FASTNORM_LION_UNROLL
    for (int u = 0; u < U; ++u) {
      const int64_t v = v0 + static_cast<int64_t>(u) * kThreads + tid;
      if (v < nvec) {
        const int64_t e = ch.begin + v * V;
        g[u] = ld<Pack<P, V>>(ch.g + e);
        m[u] = ld<Pack<S, V>>(ch.m + e);
        if constexpr (kMaster) w[u] = ld<Pack<float, V>>(ch.w + e);
        else p[u] = ld<Pack<P, V>>(ch.p + e);
      }
    }
FASTNORM_LION_UNROLL
    for (int u = 0; u < U; ++u) {
      const int64_t v = v0 + static_cast<int64_t>(u) * kThreads + tid;
      if (v < nvec) {
        const int64_t e = ch.begin + v * V;
        fastnorm::lion::detail::Philox4 r{{0u, 0u, 0u, 0u}};
        if constexpr (kSR) r = fastnorm::lion::detail::sr_bits(static_cast<uint64_t>(e) >> 3, c.slot, c.sr_step, c.sr_seed);
        Pack<P, V> pn;
        Pack<S, V> mn;
        Pack<float, V> wn;
FASTNORM_LION_UNROLL
        for (int k = 0; k < V; ++k) {
          T x;
          if constexpr (kMaster) x = static_cast<T>(w[u].d[k]);
          else x = static_cast<T>(Conv<P>::load(p[u].d[k]));
          const uint32_t r16 = kSR ? fastnorm::lion::detail::sr_r16(r, e + k) : 0u;
          update_elem<P, S, kMaster, kSR, T>(c, x, g[u].d[k], m[u].d[k], r16, pn.d[k], mn.d[k], wn.d[k]);
        }
        st<Pack<S, V>>(ch.m + e, mn);
        if constexpr (kMaster) st<Pack<float, V>>(ch.w + e, wn);
        st<Pack<P, V>>(ch.p + e, pn);
      }
    }
  }
  thread_update_scalar<P, S, kMaster, kSR, T>(ch, nvec * V, tid, c);  // the tail (< V elements)
}

// Cautious pass 1: how many elements of this thread's share of `ch` keep their sign (at most kChunk/kThreads).
template <typename P, typename S, typename T>
FASTNORM_HD_INLINE uint32_t thread_count(const Chunk<P, S>& ch, int tid, const ElemCtx<T>& c) {
  constexpr int V = Tile<P>::kVec;
  constexpr int U = Tile<P>::kIlp;
  uint32_t n = 0;
  int64_t from = 0;
  if (ch.aligned) {
    const int64_t nvec = ch.len / V;
    for (int64_t v0 = 0; v0 < nvec; v0 += static_cast<int64_t>(kThreads) * U) {
      Pack<P, V> g[U];
      Pack<S, V> m[U];
FASTNORM_LION_UNROLL
      for (int u = 0; u < U; ++u) {
        const int64_t v = v0 + static_cast<int64_t>(u) * kThreads + tid;
        if (v < nvec) {
          g[u] = ld<Pack<P, V>>(ch.g + ch.begin + v * V);
          m[u] = ld<Pack<S, V>>(ch.m + ch.begin + v * V);
        }
      }
FASTNORM_LION_UNROLL
      for (int u = 0; u < U; ++u) {
        if (v0 + static_cast<int64_t>(u) * kThreads + tid < nvec) {
FASTNORM_LION_UNROLL
          for (int k = 0; k < V; ++k) n += keep_elem<P, S, T>(c, g[u].d[k], m[u].d[k]) ? 1u : 0u;
        }
      }
    }
    from = nvec * V;
  }
  for (int64_t i = from + tid; i < ch.len; i += kThreads) {
    const int64_t e = ch.begin + i;
    n += keep_elem<P, S, T>(c, ld<P>(ch.g + e), ld<S>(ch.m + e)) ? 1u : 0u;
  }
  return n;
}

// ---- per block ---------------------------------------------------------------------------------------
// Which tensor (index in the launch) and which of its chunks block `b` owns: the first tensor whose chunk
// prefix end exceeds b (empty tensors have an empty range and are never chosen). Block-uniform.
struct BlockLoc {
  int64_t tensor;
  int64_t chunk;
};
template <typename T, int Depth, int Cap>
FASTNORM_HD_INLINE BlockLoc locate_block(const LionArgs<T, Depth, Cap>& a, int64_t b) {
  int64_t lo = 0, hi = a.h.n_tensors - 1;  // the launch's last tensor ends at its grid size
  while (lo < hi) {
    const int64_t mid = (lo + hi) >> 1;
    if (static_cast<int64_t>(static_cast<uint32_t>(a.end_slot[mid])) > b) hi = mid;
    else lo = mid + 1;
  }
  const int64_t start = lo == 0 ? 0 : static_cast<int64_t>(static_cast<uint32_t>(a.end_slot[lo - 1]));
  return BlockLoc{lo, b - start};
}

FASTNORM_HD_INLINE bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <typename P, typename S, typename T, int Depth, int Cap>
FASTNORM_HD_INLINE Chunk<P, S> make_chunk(const LionArgs<T, Depth, Cap>& a, const BlockLoc& loc) {
  Chunk<P, S> ch;
  ch.p = static_cast<P*>(a.ptr[0][loc.tensor]);
  ch.g = static_cast<const P*>(a.ptr[1][loc.tensor]);
  ch.m = static_cast<S*>(a.ptr[2][loc.tensor]);
  ch.w = Depth > 3 ? static_cast<float*>(a.ptr[Depth - 1][loc.tensor]) : nullptr;
  const int64_t numel = a.numel[loc.tensor];
  ch.begin = loc.chunk * kChunk;
  ch.len = numel - ch.begin < kChunk ? numel - ch.begin : kChunk;
  ch.aligned = aligned16(ch.p) && aligned16(ch.g) && aligned16(ch.m) && (Depth == 3 || aligned16(ch.w));
  return ch;
}

FASTNORM_HD_INLINE double read_lr(const void* lr, DType t) {
  switch (t) {
    case DType::Float64: return ld<double>(lr);
    case DType::Float16: return static_cast<double>(fastnorm::detail::f16_to_float(ld<uint16_t>(lr)));
    case DType::BFloat16: return static_cast<double>(fastnorm::detail::bf16_to_float(ld<uint16_t>(lr)));
    default: return static_cast<double>(ld<float>(lr));
  }
}

// The block prologue: false when found_inf is set (the block writes nothing), else the element context
// shared by the block (the cautious scale excepted).
template <typename T>
FASTNORM_HD_INLINE bool make_ctx(const LionHeader<T>& h, bool with_lr, ElemCtx<T>& c) {
  if (h.found_inf != nullptr && ld<float>(h.found_inf) != 0.0f) return false;
  c.s = h.s;
  if (with_lr && h.lr_device != nullptr)
    c.s = fastnorm::lion::detail::make_scalars<T>(read_lr(h.lr_device, h.lr_dtype), h.beta1, h.beta2,
                                                  h.weight_decay, h.decay_lr_power, h.decay_ref);
  c.has_div = h.grad_scale != nullptr;
  c.gdiv = T(1);
  if (c.has_div) {
    c.gdiv = static_cast<T>(ld<float>(h.grad_scale));
    if (h.maximize) c.gdiv = -c.gdiv;
  }
  c.negate = h.maximize && !c.has_div;
  c.cautious = h.cautious;
  c.propagate_nan = h.propagate_nan;
  c.q = T(1);
  c.slot = 0;
  c.sr_seed = h.sr_seed;
  c.sr_step = h.sr_step_device != nullptr ? ld<int64_t>(h.sr_step_device) : h.sr_step;
  return true;
}

// What thread `tid` of block `b` does in the update pass (pass 2 with cautious).
template <typename P, typename S, bool kMaster, bool kSR, int Depth, int Cap>
FASTNORM_HD_INLINE void block_update(const LionArgs<typename OpmathOf<P>::type, Depth, Cap>& a, int64_t b, int tid) {
  using T = typename OpmathOf<P>::type;
  static_assert(kMaster == (Depth == 4), "master weights are the fourth pointer");
  ElemCtx<T> c;
  if (!make_ctx(a.h, true, c)) return;
  const BlockLoc loc = locate_block(a, b);
  const Chunk<P, S> ch = make_chunk<P, S>(a, loc);
  c.slot = static_cast<uint32_t>(a.end_slot[loc.tensor] >> 32);
  if (c.cautious) {
    const uint64_t count = ld<unsigned long long>(a.h.counts + loc.tensor);
    c.q = static_cast<T>(fastnorm::lion::detail::cautious_scale(count, a.numel[loc.tensor], a.h.cautious_min_frac));
  }
  thread_update<P, S, kMaster, kSR, T>(ch, tid, c);
}

// What thread `tid` of block `b` counts in cautious pass 1 (the kernel sums over the block and adds the sum
// to counts[loc.tensor]). Returns false when found_inf is set (nothing to count).
template <typename P, typename S, int Depth, int Cap>
FASTNORM_HD_INLINE bool block_count(const LionArgs<typename OpmathOf<P>::type, Depth, Cap>& a, int64_t b, int tid,
                                    BlockLoc& loc, uint32_t& count) {
  using T = typename OpmathOf<P>::type;
  ElemCtx<T> c;
  if (!make_ctx(a.h, false, c)) return false;  // a1, b1 do not depend on lr
  loc = locate_block(a, b);
  count = thread_count<P, S, T>(make_chunk<P, S>(a, loc), tid, c);
  return true;
}

// ---- host: filling the arguments ---------------------------------------------------------------------
// The launch-independent header of a call (counts and n_tensors are set per launch).
template <typename T>
inline LionHeader<T> make_header(const LionStepParams& p) {
  LionHeader<T> h{};
  h.s = fastnorm::lion::detail::make_scalars<T>(p.lr, p.beta1, p.beta2, p.weight_decay, p.decay_lr_power, p.decay_ref);
  h.found_inf = p.found_inf;
  h.grad_scale = p.grad_scale;
  h.lr_device = p.lr_device;
  h.sr_step_device = p.sr_step_device;
  h.counts = nullptr;
  h.beta1 = p.beta1;
  h.beta2 = p.beta2;
  h.weight_decay = p.weight_decay;
  h.decay_ref = p.decay_ref;
  h.cautious_min_frac = p.cautious_min_frac;
  h.sr_seed = p.sr_seed;
  h.sr_step = p.sr_step;
  h.n_tensors = 0;
  h.decay_lr_power = p.decay_lr_power;
  h.lr_dtype = p.lr_dtype;
  h.maximize = p.maximize;
  h.cautious = p.cautious;
  h.propagate_nan = p.nan_policy == NanPolicy::Propagate;
  return h;
}

// Fills the arguments of launch `r` of the call. Returns false when the range does not fit (n_tensors >
// Cap) or its chunk count disagrees with r.n_chunks.
template <typename T, int Depth, int Cap>
inline bool fill_launch(LionArgs<T, Depth, Cap>& a, const LionStepParams& p, const LionHeader<T>& h,
                        const LaunchRange& r) {
  if (r.n_tensors < 1 || r.n_tensors > Cap) return false;
  a.h = h;
  a.h.n_tensors = r.n_tensors;
  a.h.counts = p.cautious ? static_cast<unsigned long long*>(p.workspace) + r.first_tensor : nullptr;
  std::memset(a.pad_, 0, sizeof(a.pad_));
  int64_t end = 0;
  for (int64_t i = 0; i < Cap; ++i) {
    if (i < r.n_tensors) {
      const LionTensor& t = p.tensors[r.first_tensor + i];
      a.ptr[0][i] = t.param;
      a.ptr[1][i] = const_cast<void*>(t.grad);
      a.ptr[2][i] = t.exp_avg;
      if (Depth > 3) a.ptr[Depth - 1][i] = t.master;
      a.numel[i] = t.numel;
      end += t.numel > 0 ? (t.numel + kChunk - 1) / kChunk : 0;
      if (end >= (int64_t(1) << 31)) return false;
      a.end_slot[i] = (static_cast<uint64_t>(t.slot) << 32) | static_cast<uint64_t>(end);
    } else {
      for (int d = 0; d < Depth; ++d) a.ptr[d][i] = nullptr;
      a.numel[i] = 0;
      a.end_slot[i] = static_cast<uint64_t>(end);
    }
  }
  return end == r.n_chunks;
}

}  // namespace kern
}  // namespace cuda
}  // namespace lion
}  // namespace fastnorm

// CPU kernel of the Lion step (specs/lion.md §3.1-3.7).
//
// Built twice (FASTNORM_ISA = baseline | avx2); lion.cpp validates arguments and picks the build. The AVX2
// build also has FMA, so fma_rn becomes a vector instruction; the baseline build calls libm's exact fma
// (same numbers, slower). The file is compiled with -ffp-contract=off: every rounding is the one
// detail/lion_math.h writes, which is what the CUDA kernel does too, so both agree bitwise.
//
// Plan: the call's tensors are cut into (tensor, begin, end) chunks of 16384 elements, spread over OpenMP
// threads with a static schedule (serial below 32768 elements in all). Each element is read and written
// exactly once (20 B/param in fp32): no temporaries. Cautious masking needs the per-tensor count before any
// write, so it runs a counting pass first; integer counts make the result independent of the thread count.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "fastnorm/detail/lion_math.h"
#include "lion_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

namespace fastnorm {
namespace lion {
namespace FASTNORM_ISA {
namespace {

using fastnorm::detail::load_as;
using fastnorm::detail::store_from;
using namespace fastnorm::lion::detail;

constexpr int64_t kChunkElems = 16384;
constexpr int64_t kSerialBelow = 32768;

struct Chunk {
  int64_t t, begin, end;
};

// Everything the element loops need besides the tensors.
template <typename T> struct Ctx {
  Scalars<T> sc;
  T gdiv;  // grad_scale (1 without one), negated under maximize
  bool propagate_nan;
  uint64_t seed;
  int64_t sr_step;
};

// Pass 1 of cautious masking: how many elements of [b, e) keep their step (s*g > 0), with c computed
// exactly as the update computes it.
template <typename P, typename S, typename T>
uint64_t count_keep(const LionTensor& t, int64_t b, int64_t e, const Ctx<T>& cx) {
  const P* g = static_cast<const P*>(t.grad);
  const S* m = static_cast<const S*>(t.exp_avg);
  uint64_t n = 0;
#pragma omp simd reduction(+ : n)
  for (int64_t i = b; i < e; ++i) {
    const T gg = scaled_grad(load_as<P, T>(g[i]), cx.gdiv);
    const T s = lion_sign(interp(cx.sc.a1, cx.sc.b1, load_as<S, T>(m[i]), gg), cx.propagate_nan);
    n += cautious_keep(s, gg) ? 1u : 0u;
  }
  return n;
}

// The update of elements [b, e) of one tensor. q: the tensor's cautious scale.
template <typename P, typename S, bool Master, bool Cautious, typename T>
void update(const LionTensor& t, int64_t b, int64_t e, const Ctx<T>& cx, T q) {
  P* p = static_cast<P*>(t.param);
  const P* g = static_cast<const P*>(t.grad);
  S* m = static_cast<S*>(t.exp_avg);
  float* w = static_cast<float*>(t.master);
#pragma omp simd
  for (int64_t i = b; i < e; ++i) {
    const T x = Master ? static_cast<T>(w[i]) : load_as<P, T>(p[i]);
    const T gg = scaled_grad(load_as<P, T>(g[i]), cx.gdiv);
    const Update<T> u = lion_update_element(x, gg, load_as<S, T>(m[i]), cx.sc, Cautious, q, cx.propagate_nan);
    m[i] = store_from<S, T>(u.m_new);
    if (Master) w[i] = static_cast<float>(u.x2);
    p[i] = store_from<P, T>(u.x2);
  }
}

// bf16 params with stochastic rounding: Philox runs once per 8 elements (one counter per group of 8).
template <typename S, bool Cautious>
void update_sr(const LionTensor& t, int64_t b, int64_t e, const Ctx<float>& cx, float q) {
  uint16_t* p = static_cast<uint16_t*>(t.param);
  const bf16_t* g = static_cast<const bf16_t*>(t.grad);
  S* m = static_cast<S*>(t.exp_avg);
  for (int64_t j0 = b; j0 < e;) {
    const int64_t j1 = std::min(e, (j0 | 7) + 1);  // the end of j0's group of 8
    const Philox4 r = sr_bits(static_cast<uint64_t>(j0) >> 3, t.slot, cx.sr_step, cx.seed);
    for (int64_t i = j0; i < j1; ++i) {
      const float x = fastnorm::detail::bf16_to_float(p[i]);
      const float gg = scaled_grad(load_as<bf16_t, float>(g[i]), cx.gdiv);
      const Update<float> u = lion_update_element(x, gg, load_as<S, float>(m[i]), cx.sc, Cautious, q, cx.propagate_nan);
      m[i] = store_from<S, float>(u.m_new);
      p[i] = bf16_round_stochastic(u.x2, sr_r16(r, i));
    }
    j0 = j1;
  }
}

template <typename P, typename S, bool Master>
Status run(const LionStepParams& prm, double lr) {
  using T = typename OpmathOf<P>::type;
  Ctx<T> cx;
  cx.sc = make_scalars<T>(lr, prm.beta1, prm.beta2, prm.weight_decay, prm.decay_lr_power, prm.decay_ref);
  cx.gdiv = prm.grad_scale ? static_cast<T>(*prm.grad_scale) : T(1);
  if (prm.maximize) cx.gdiv = -cx.gdiv;
  cx.propagate_nan = prm.nan_policy == NanPolicy::Propagate;
  cx.seed = prm.sr_seed;
  cx.sr_step = prm.sr_step_device ? *prm.sr_step_device : prm.sr_step;

  // The chunk list (the kernel's only allocation besides cautious counts).
  std::vector<Chunk> chunks;
  int64_t total = 0;
  for (int64_t t = 0; t < prm.n_tensors; ++t) {
    const int64_t n = prm.tensors[t].numel;
    total += n;
    for (int64_t b = 0; b < n; b += kChunkElems) chunks.push_back({t, b, std::min(n, b + kChunkElems)});
  }
  const int64_t nc = static_cast<int64_t>(chunks.size());
  const int nt = prm.num_threads > 0 ? prm.num_threads : omp_get_max_threads();
  const bool par = total >= kSerialBelow && nt > 1;

  std::vector<T> q;
  if (prm.cautious) {
    std::vector<uint64_t> counts(static_cast<size_t>(prm.n_tensors), 0);
#pragma omp parallel for schedule(static) num_threads(nt) if (par)
    for (int64_t c = 0; c < nc; ++c) {
      const Chunk& ch = chunks[c];
      const uint64_t k = count_keep<P, S, T>(prm.tensors[ch.t], ch.begin, ch.end, cx);
#pragma omp atomic
      counts[ch.t] += k;  // integer sums: exact in any order
    }
    q.resize(counts.size());
    for (size_t t = 0; t < counts.size(); ++t)
      q[t] = prm.tensors[t].numel > 0 ? static_cast<T>(cautious_scale(counts[t], prm.tensors[t].numel, prm.cautious_min_frac))
                                      : T(1);
  }

#pragma omp parallel for schedule(static) num_threads(nt) if (par)
  for (int64_t c = 0; c < nc; ++c) {
    const Chunk& ch = chunks[c];
    const LionTensor& t = prm.tensors[ch.t];
    if constexpr (std::is_same<P, bf16_t>::value && !Master) {
      if (prm.stochastic_rounding) {
        if (prm.cautious) update_sr<S, true>(t, ch.begin, ch.end, cx, q[ch.t]);
        else update_sr<S, false>(t, ch.begin, ch.end, cx, 1.0f);
        continue;
      }
    }
    if (prm.cautious) update<P, S, Master, true>(t, ch.begin, ch.end, cx, q[ch.t]);
    else update<P, S, Master, false>(t, ch.begin, ch.end, cx, T(1));
  }
  return Status::OK();
}

double read_lr(const void* ptr, DType dt) {
  switch (dt) {
    case DType::Float32: return *static_cast<const float*>(ptr);
    case DType::Float64: return *static_cast<const double*>(ptr);
    case DType::BFloat16: return fastnorm::detail::bf16_to_float(static_cast<const bf16_t*>(ptr)->bits);
    case DType::Float16: return fastnorm::detail::f16_to_float(static_cast<const f16_t*>(ptr)->bits);
    default: return std::nan("");
  }
}

}  // namespace

Status step(const LionStepParams& p) {
  if (p.n_tensors == 0) return Status::OK();
  if (p.found_inf != nullptr && *p.found_inf != 0.0f) return Status::OK();  // GradScaler: skip the step
  const double lr = p.lr_device ? read_lr(p.lr_device, p.lr_dtype) : p.lr;
  if (!(lr >= 0.0) || !std::isfinite(lr))
    return invalid_argument("lion_step_: lr must be finite and >= 0, got " + std::to_string(lr));
  const DType P = p.param_dtype, S = p.state_dtype;
  if (P == DType::Float32) return run<float, float, false>(p, lr);
  if (P == DType::Float64) return run<double, double, false>(p, lr);
  if (P == DType::BFloat16) {
    if (S == DType::BFloat16) return run<bf16_t, bf16_t, false>(p, lr);
    return p.has_master ? run<bf16_t, float, true>(p, lr) : run<bf16_t, float, false>(p, lr);
  }
  if (P == DType::Float16) {
    if (S == DType::Float16) return run<f16_t, f16_t, false>(p, lr);
    return p.has_master ? run<f16_t, float, true>(p, lr) : run<f16_t, float, false>(p, lr);
  }
  return unsupported("lion_step_: unsupported param dtype");
}

}  // namespace FASTNORM_ISA
}  // namespace lion
}  // namespace fastnorm

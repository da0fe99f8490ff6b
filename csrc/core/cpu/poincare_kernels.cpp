// Poincaré CPU kernels (the data movement around detail/poincare_math.h), built twice: FASTNORM_ISA = baseline
// | avx2 (csrc/core/CMakeLists.txt). poincare.cpp validates the params and picks the build at run time. No FMA
// contraction in either build (-ffp-contract=off): both give the same numbers, AVX2 only has wider lanes.
#include <omp.h>

#include <cstring>
#include <type_traits>
#include <vector>

#include "fastnorm/detail/poincare_math.h"
#include "fastnorm/poincare.h"
#include "poincare_kernels.h"

#ifndef FASTNORM_ISA
#error "FASTNORM_ISA must name the instruction set this file is built for"
#endif

namespace fastnorm {
namespace poincare {
namespace FASTNORM_ISA {
namespace {

using namespace ::fastnorm::poincare::detail;
using ::fastnorm::detail::load_as;
using ::fastnorm::detail::store_from;
using ::fastnorm::poincare::kernels::kBlock;
using ::fastnorm::poincare::kernels::kMidChunk;
using ::fastnorm::poincare::kernels::mid_chunks;
using ::fastnorm::poincare::kernels::mid_cpart_offset;
using ::fastnorm::poincare::kernels::read_scalar;
using ::fastnorm::poincare::kernels::write_scalar;

constexpr int kLanes = 8;  // lanes of the dot products (one AVX register of floats)

int threads_of(int n) { return n > 0 ? n : omp_get_max_threads(); }
// Below this many elements a parallel region costs more than it saves (thread wake-up on a loaded machine).
constexpr int64_t kParallelMin = 1 << 15;

// Scalars per vector ([outer, inner], any float dtype): read/write through a type switch (cold path).
template <class A> A load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float32: return A(static_cast<const float*>(p)[i]);
    case DType::Float64: return A(static_cast<const double*>(p)[i]);
    case DType::Float16: return A(load_as<f16_t, float>(static_cast<const f16_t*>(p)[i]));
    case DType::BFloat16: return A(load_as<bf16_t, float>(static_cast<const bf16_t*>(p)[i]));
    default: return A(0);
  }
}
template <class A> void store_any(void* p, DType t, int64_t i, A v) {
  switch (t) {
    case DType::Float32: static_cast<float*>(p)[i] = float(v); break;
    case DType::Float64: static_cast<double*>(p)[i] = double(v); break;
    case DType::Float16: static_cast<f16_t*>(p)[i] = store_from<f16_t, float>(float(v)); break;
    case DType::BFloat16: static_cast<bf16_t*>(p)[i] = store_from<bf16_t, float>(float(v)); break;
    default: break;
  }
}

// Offset of vector r = (o, i) in [outer, D, inner]: o*D*inner + i (no division for inner = 1).
inline int64_t row_offset(int64_t r, int64_t D, int64_t inner) {
  if (inner == 1) return r * D;
  const int64_t o = r / inner;
  return o * D * inner + (r - o * inner);
}

// One vector's rows: in place when possible, else gathered into `buf` (compute type, contiguous).
template <class T, class A> struct RowIO {
  static constexpr bool kDirect = std::is_same<T, A>::value;
  int64_t D, inner;
  A* buf;  // thread-local scratch of (slots) * D
  CIn<A> in(const void* base, int64_t off, int slot) const {
    const T* p = static_cast<const T*>(base) + off;
    if (kDirect && inner == 1) return CIn<A>{reinterpret_cast<const A*>(p)};
    A* b = buf + slot * D;
    for (int64_t d = 0; d < D; ++d) b[d] = load_as<T, A>(p[d * inner]);
    return CIn<A>{b};
  }
  COut<A> out(void* base, int64_t off, int slot) const {
    if (base == nullptr) return COut<A>{nullptr};
    if (kDirect && inner == 1) return COut<A>{reinterpret_cast<A*>(static_cast<T*>(base) + off)};
    return COut<A>{buf + slot * D};
  }
  void flush(void* base, int64_t off, int slot) const {
    if (base == nullptr || (kDirect && inner == 1)) return;
    T* p = static_cast<T*>(base) + off;
    const A* b = buf + slot * D;
    for (int64_t d = 0; d < D; ++d) p[d * inner] = store_from<T, A>(b[d]);
  }
};


template <class Op, class T, class A>
Status run_fwd(const RowOpParams& p) {
  const RowLayout& L = p.layout;
  const int64_t rows = L.rows(), D = L.D, inner = L.inner;
  const Ctx<A> k{make_curv(read_scalar<A>(p.c.ptr, p.c.dtype)), A(p.eps), p.project, D};
  const int64_t nblocks = (rows + kBlock - 1) / kBlock;
  constexpr int K = Op::Kf;
#pragma omp parallel num_threads(threads_of(p.num_threads)) if (L.numel() >= kParallelMin)
  {
    std::vector<A> buf(size_t(K + 1) * size_t(D));
    RowIO<T, A> io{D, inner, buf.data()};
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t r1 = (b + 1) * kBlock < rows ? (b + 1) * kBlock : rows;
      for (int64_t r = b * kBlock; r < r1; ++r) {
        const int64_t off = row_offset(r, D, inner);
        CIn<A> in[K];
        for (int s = 0; s < K; ++s) in[s] = io.in(p.in[s], off, s);
        const A rs = p.scalar ? load_any<A>(p.scalar, p.scalar_dtype, r) : A(0);
        if (Op::ScalarOut) {
          A v;
          Op::template fwd<A, kLanes>(k, in, rs, COut<A>{nullptr}, &v);
          store_any<A>(p.out, p.scalar_dtype, r, v);
        } else {
          const COut<A> out = io.out(p.out, off, K);
          Op::template fwd<A, kLanes>(k, in, rs, out, static_cast<A*>(nullptr));
          io.flush(p.out, off, K);
        }
      }
    }
  }
  return Status::OK();
}

template <class Op, class T, class A>
Status run_bwd(const RowOpParams& p) {
  const RowLayout& L = p.layout;
  const int64_t rows = L.rows(), D = L.D, inner = L.inner;
  const A cval = read_scalar<A>(p.c.ptr, p.c.dtype);
  const Ctx<A> k{make_curv(cval), A(p.eps), p.project, D};
  const int64_t nblocks = (rows + kBlock - 1) / kBlock;
  constexpr int K = Op::Kf, KB = Op::Kb;
  constexpr int NI = K;  // grads of the vector inputs
  double* part = static_cast<double*>(p.workspace);
  const bool need_c = p.grad_c != nullptr;
#pragma omp parallel num_threads(threads_of(p.num_threads)) if (L.numel() >= kParallelMin)
  {
    std::vector<A> buf(size_t(KB + NI) * size_t(D));
    RowIO<T, A> io{D, inner, buf.data()};
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b) {
      const int64_t r1 = (b + 1) * kBlock < rows ? (b + 1) * kBlock : rows;
      A acc = A(0);
      for (int64_t r = b * kBlock; r < r1; ++r) {
        const int64_t off = row_offset(r, D, inner);
        CIn<A> rows_[KB];
        for (int s = 0; s < K; ++s) rows_[s] = io.in(p.in[s], off, s);
        if (KB > K) rows_[K] = io.in(p.grad, off, K);
        const A rs = p.scalar ? load_any<A>(p.scalar, p.scalar_dtype, r) : A(0);
        const A gs = Op::ScalarOut ? load_any<A>(p.grad, p.scalar_dtype, r) : A(0);
        COut<A> gout[NI];
        for (int s = 0; s < NI; ++s) gout[s] = io.out(p.grad_in[s], off, KB + s);
        A gr = A(0);
        const A br = Op::template bwd<A, kLanes>(k, rows_, rs, gs, gout, &gr);
        for (int s = 0; s < NI; ++s) io.flush(p.grad_in[s], off, KB + s);
        if (p.grad_scalar) store_any<A>(p.grad_scalar, p.scalar_dtype, r, gr);
        acc += br;
      }
      if (need_c) part[b] = double(acc);
    }
  }
  if (need_c) {
    double s = 0;
    for (int64_t b = 0; b < nblocks; ++b) s += part[b];
    write_scalar(p.grad_c, p.c.dtype, s / (2.0 * double(cval)));
  }
  return Status::OK();
}

template <class Op, bool Bwd>
Status dispatch(const RowOpParams& p) {
  switch (p.dtype) {
    case DType::Float32: return Bwd ? run_bwd<Op, float, float>(p) : run_fwd<Op, float, float>(p);
    case DType::Float64: return Bwd ? run_bwd<Op, double, double>(p) : run_fwd<Op, double, double>(p);
    case DType::Float16: return Bwd ? run_bwd<Op, f16_t, float>(p) : run_fwd<Op, f16_t, float>(p);
    case DType::BFloat16: return Bwd ? run_bwd<Op, bf16_t, float>(p) : run_fwd<Op, bf16_t, float>(p);
    default: return unsupported("poincare: unsupported dtype");
  }
}

template <bool Bwd>
Status dispatch_op(RowOp op, const RowOpParams& p) {
  switch (op) {
    case RowOp::Project: return dispatch<ProjectOp, Bwd>(p);
    case RowOp::MobiusAdd: return dispatch<MobiusAddOp, Bwd>(p);
    case RowOp::MobiusScalarMul: return dispatch<ScalarMulOp, Bwd>(p);
    case RowOp::Expmap0: return dispatch<Expmap0Op, Bwd>(p);
    case RowOp::Logmap0: return dispatch<Logmap0Op, Bwd>(p);
    case RowOp::Expmap: return dispatch<ExpmapOp, Bwd>(p);
    case RowOp::Logmap: return dispatch<LogmapOp, Bwd>(p);
    case RowOp::Dist: return dispatch<DistOp, Bwd>(p);
    case RowOp::ConformalFactor: return dispatch<ConformalOp, Bwd>(p);
    case RowOp::Gyration: return dispatch<GyrationOp, Bwd>(p);
    case RowOp::Transp: return dispatch<TranspOp, Bwd>(p);
    case RowOp::Residual: return dispatch<ResidualOp, Bwd>(p);
  }
  return invalid_argument("poincare: unknown op");
}


template <class T, class A>
void mid_partials(const MidpointParams& p, const Curv<A>& cv, A* part, int nthreads) {
  const int64_t nch = mid_chunks(p), D = p.D, R = p.R, tasks = p.batch * nch;
  const T* x = static_cast<const T*>(p.x);
#pragma omp parallel num_threads(nthreads) if (p.batch * R * D >= kParallelMin)
  {
    std::vector<A> row(D);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / nch, ch = t - b * nch;
      const int64_t i0 = ch * kMidChunk, i1 = i0 + kMidChunk < R ? i0 + kMidChunk : R;
      A* V = part + t * (D + 1);
      for (int64_t d = 0; d <= D; ++d) V[d] = A(0);
      for (int64_t i = i0; i < i1; ++i) {
        const T* xr = x + (b * R + i) * D;
        for (int64_t d = 0; d < D; ++d) row[d] = load_as<T, A>(xr[d]);
        const CIn<A> in{row.data()};
        Gram<A, 1> G;
        gram<A, 1, 1, kLanes>(&in, D, G);
        const A w = p.weights ? load_any<A>(p.weights, p.w_dtype, b * R + i) : A(1);
        const A lam = conformal(G.g[0][0], cv).lam;
        const A wl = w * lam;
        for (int64_t d = 0; d < D; ++d) V[d] += wl * row[d];
        V[D] += w * (lam - A(1));
      }
    }
  }
}

// Sum the chunk partials of output b into V (D + 1 values: V, Q) in chunk order.
template <class A> void mid_sum(const A* part, int64_t b, int64_t nch, int64_t D, A* V) {
  for (int64_t d = 0; d <= D; ++d) V[d] = A(0);
  for (int64_t ch = 0; ch < nch; ++ch) {
    const A* P = part + (b * nch + ch) * (D + 1);
    for (int64_t d = 0; d <= D; ++d) V[d] += P[d];
  }
}

template <class T, class A>
Status mid_fwd(const MidpointParams& p) {
  const Curv<A> cv = make_curv(read_scalar<A>(p.c.ptr, p.c.dtype));
  const int nt = threads_of(p.num_threads);
  const int64_t nch = mid_chunks(p), D = p.D;
  A* part = static_cast<A*>(p.workspace);
  mid_partials<T, A>(p, cv, part, nt);
  T* out = static_cast<T*>(p.out);
#pragma omp parallel num_threads(nt) if (p.batch * D * nch >= kParallelMin)
  {
    std::vector<A> V(D + 1);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < p.batch; ++b) {
      mid_sum(part, b, nch, D, V.data());
      A VV = A(0);
      for (int64_t d = 0; d < D; ++d) VV += V[d] * V[d];
      const MidState<A> st = midpoint_state(VV, V[D], cv, A(p.eps), p.project);
      const A kappa = midpoint_kappa(st);
      for (int64_t d = 0; d < D; ++d) out[b * D + d] = store_from<T, A>(kappa * V[d]);
    }
  }
  return Status::OK();
}

template <class T, class A>
Status mid_bwd(const MidpointParams& p) {
  const A cval = read_scalar<A>(p.c.ptr, p.c.dtype);
  const Curv<A> cv = make_curv(cval);
  const int nt = threads_of(p.num_threads);
  const int64_t nch = mid_chunks(p), D = p.D, R = p.R, tasks = p.batch * nch;
  A* part = static_cast<A*>(p.workspace);
  // coefficient block per output after the partials: V[D], ag, aV, dQ, <g, m>
  A* coef = part + tasks * (D + 1);
  double* cpart = reinterpret_cast<double*>(static_cast<char*>(p.workspace) + mid_cpart_offset(p));
  mid_partials<T, A>(p, cv, part, nt);
  const T* g = static_cast<const T*>(p.grad);
#pragma omp parallel num_threads(nt) if (p.batch * D * nch >= kParallelMin)
  {
    std::vector<A> V(D + 1);
#pragma omp for schedule(static)
    for (int64_t b = 0; b < p.batch; ++b) {
      mid_sum(part, b, nch, D, V.data());
      A VV = A(0), gV = A(0);
      for (int64_t d = 0; d < D; ++d) {
        VV += V[d] * V[d];
        gV += load_as<T, A>(g[b * D + d]) * V[d];
      }
      const MidState<A> st = midpoint_state(VV, V[D], cv, A(p.eps), p.project);
      const MidFinal<A> f = midpoint_bwd_coefs(st, gV, VV, cv);
      A* C = coef + b * (D + 4);
      for (int64_t d = 0; d < D; ++d) C[d] = V[d];
      C[D] = f.ag; C[D + 1] = f.aV; C[D + 2] = f.dQ; C[D + 3] = f.kappa * gV;
    }
  }
  T* gx = static_cast<T*>(p.grad_x);
  const T* x = static_cast<const T*>(p.x);
#pragma omp parallel num_threads(nt) if (p.batch * R * D >= kParallelMin)
  {
    std::vector<A> row(D), gr(D);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t b = t / nch, ch = t - b * nch;
      const int64_t i0 = ch * kMidChunk, i1 = i0 + kMidChunk < R ? i0 + kMidChunk : R;
      const A* C = coef + b * (D + 4);
      const A ag = C[D], aV = C[D + 1], dQ = C[D + 2];
      for (int64_t d = 0; d < D; ++d) gr[d] = load_as<T, A>(g[b * D + d]);
      A acc = A(0);
      for (int64_t i = i0; i < i1; ++i) {
        const T* xr = x + (b * R + i) * D;
        for (int64_t d = 0; d < D; ++d) row[d] = load_as<T, A>(xr[d]);
        const CIn<A> in[3] = {CIn<A>{row.data()}, CIn<A>{gr.data()}, CIn<A>{C}};
        Gram<A, 3> G;
        gram<A, 3, 3, kLanes>(in, D, G);  // xx, <x, g>, <x, V> (plus unused gg, gV, VV)
        const A w = p.weights ? load_any<A>(p.weights, p.w_dtype, b * R + i) : A(1);
        const Lambda<A> lam = conformal(G.g[0][0], cv);
        const A dVx = ag * G.g[0][1] + aV * G.g[0][2];  // <dV, x_i>
        const A kx = (dVx + dQ) * lam.kx;
        if (gx) {
          T* o = gx + (b * R + i) * D;
          const A wl = w * lam.lam, wk = w * kx;
          for (int64_t d = 0; d < D; ++d) o[d] = store_from<T, A>(wl * (ag * gr[d] + aV * C[d]) + wk * row[d]);
        }
        if (p.grad_weights) store_any<A>(p.grad_weights, p.w_dtype, b * R + i, lam.lam * dVx + dQ * (lam.lam - A(1)));
        acc += w * (lam.lam * dVx + kx * G.g[0][0]);
      }
      if (p.grad_c) cpart[t] = double(acc);
    }
  }
  if (p.grad_c) {
    double s = 0;
    for (int64_t t = 0; t < tasks; ++t) s += cpart[t];
    for (int64_t b = 0; b < p.batch; ++b) s -= double(coef[b * (D + 4) + D + 3]);
    write_scalar(p.grad_c, p.c.dtype, s / (2.0 * double(cval)));
  }
  return Status::OK();
}


}  // namespace

Status row_fwd_k(RowOp op, const RowOpParams& p) { return dispatch_op<false>(op, p); }
Status row_bwd_k(RowOp op, const RowOpParams& p) { return dispatch_op<true>(op, p); }

Status midpoint_fwd_k(const MidpointParams& p) {
  switch (p.dtype) {
    case DType::Float32: return mid_fwd<float, float>(p);
    case DType::Float64: return mid_fwd<double, double>(p);
    case DType::Float16: return mid_fwd<f16_t, float>(p);
    case DType::BFloat16: return mid_fwd<bf16_t, float>(p);
    default: return unsupported("poincare.midpoint_fwd: unsupported dtype");
  }
}

Status midpoint_bwd_k(const MidpointParams& p) {
  switch (p.dtype) {
    case DType::Float32: return mid_bwd<float, float>(p);
    case DType::Float64: return mid_bwd<double, double>(p);
    case DType::Float16: return mid_bwd<f16_t, float>(p);
    case DType::BFloat16: return mid_bwd<bf16_t, float>(p);
    default: return unsupported("poincare.midpoint_bwd: unsupported dtype");
  }
}

}  // namespace FASTNORM_ISA
}  // namespace poincare
}  // namespace fastnorm

// Poincaré-ball core ops on CUDA (specs/poincare.md §2.4, §4). The per-vector math is the FASTNORM_HD code of
// detail/poincare_math.h over storage-type views (SIn/SOut), grid-stride over vectors: inner = 1 (rows): one warp
// per vector (warp mode L = 0 of the math: lanes split D, coalesced loads, xor-butterfly sums); inner > 1 (NCHW,
// dim = 1): one thread per vector looping over D (L = 1), neighbouring threads read neighbouring columns
// (coalesced). The Gram, z and write passes re-read the vector (L1/L2) instead of holding it in registers. The curvature gradient: per-thread brackets, a fixed shared-memory tree
// per block into the workspace, then a one-block finaliser summing the blocks in order (deterministic).
// c is read from device memory by every thread (no host sync) unless the binding passed a host value.
#include <cuda_runtime.h>

#include <cstdint>
#include <string>

#include "fastnorm/detail/dtype.h"
#include "fastnorm/detail/poincare_math.h"
#include "fastnorm/poincare.h"
#include "fastnorm/poincare_cuda.h"

namespace fastnorm {
namespace poincare {
namespace cuda {

namespace {

using namespace ::fastnorm::poincare::detail;
using ::fastnorm::detail::load_as;
using ::fastnorm::detail::store_from;

constexpr int kThreads = 128;
constexpr int64_t kMaxBlocks = 8192;  // fixed grid cap: the partial layout depends only on the sizes
constexpr int64_t kMidChunk = 256;    // points per midpoint task (one warp)

Status cuda_status(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return Status::OK();
  return Status(StatusCode::CudaError, std::string("poincare.") + what + ": " + cudaGetErrorString(e));
}

// Blocks of a row launch: one thread per vector (inner > 1) or one warp per vector (inner = 1).
int64_t grid_for(int64_t rows, int64_t inner) {
  const int64_t per_block = inner == 1 ? kThreads / 32 : kThreads;
  const int64_t b = (rows + per_block - 1) / per_block;
  return b < kMaxBlocks ? (b > 0 ? b : 1) : kMaxBlocks;
}

template <class A> __device__ __forceinline__ A load_any(const void* p, DType t, int64_t i) {
  switch (t) {
    case DType::Float32: return A(static_cast<const float*>(p)[i]);
    case DType::Float64: return A(static_cast<const double*>(p)[i]);
    case DType::Float16: return A(load_as<f16_t, float>(static_cast<const f16_t*>(p)[i]));
    case DType::BFloat16: return A(load_as<bf16_t, float>(static_cast<const bf16_t*>(p)[i]));
    default: return A(0);
  }
}
template <class A> __device__ __forceinline__ void store_any(void* p, DType t, int64_t i, A v) {
  switch (t) {
    case DType::Float32: static_cast<float*>(p)[i] = float(v); break;
    case DType::Float64: static_cast<double*>(p)[i] = double(v); break;
    case DType::Float16: static_cast<f16_t*>(p)[i] = store_from<f16_t, float>(float(v)); break;
    case DType::BFloat16: static_cast<bf16_t*>(p)[i] = store_from<bf16_t, float>(float(v)); break;
    default: break;
  }
}

// The curvature: a host value passed by value, or one element read from device memory.
struct CArg {
  const void* dptr;
  DType dtype;
  double host;
  bool on_host;
};
template <class A> __device__ __forceinline__ A read_c(const CArg& c) {
  return c.on_host ? A(c.host) : load_any<A>(c.dptr, c.dtype, 0);
}

// Kernel arguments (trivially copyable subset of RowOpParams).
struct RowArgs {
  int64_t rows, D, inner;
  const void* in[3];
  const void* scalar;
  DType scalar_dtype;
  void* out;
  const void* grad;
  void* grad_in[3];
  void* grad_scalar;
  double* partials;
  double eps;
  bool project, need_c;
  CArg c;
};

template <class Op, class T, class A>
__global__ void __launch_bounds__(kThreads) row_fwd_kernel(RowArgs a) {
  constexpr int K = Op::Kf;
  const Ctx<A> k{make_curv(read_c<A>(a.c)), A(a.eps), a.project, a.D};
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < a.rows; r += stride) {
    const int64_t o = r / a.inner, i = r - o * a.inner, off = o * a.D * a.inner + i;
    SIn<T, A> in[K];
    for (int s = 0; s < K; ++s) in[s] = SIn<T, A>{static_cast<const T*>(a.in[s]) + off, a.inner};
    const A rs = a.scalar ? load_any<A>(a.scalar, a.scalar_dtype, r) : A(0);
    if (Op::ScalarOut) {
      A v;
      Op::template fwd<A, 1>(k, in, rs, SOut<T, A>{nullptr, 0}, &v);
      store_any<A>(a.out, a.scalar_dtype, r, v);
    } else {
      Op::template fwd<A, 1>(k, in, rs, SOut<T, A>{static_cast<T*>(a.out) + off, a.inner}, static_cast<A*>(nullptr));
    }
  }
}

template <class Op, class T, class A>
__global__ void __launch_bounds__(kThreads) row_bwd_kernel(RowArgs a) {
  constexpr int K = Op::Kf, KB = Op::Kb;
  const Ctx<A> k{make_curv(read_c<A>(a.c)), A(a.eps), a.project, a.D};
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  A acc = A(0);
  for (int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; r < a.rows; r += stride) {
    const int64_t o = r / a.inner, i = r - o * a.inner, off = o * a.D * a.inner + i;
    SIn<T, A> rows[KB];
    for (int s = 0; s < K; ++s) rows[s] = SIn<T, A>{static_cast<const T*>(a.in[s]) + off, a.inner};
    if (KB > K) rows[K] = SIn<T, A>{static_cast<const T*>(a.grad) + off, a.inner};
    const A rs = a.scalar ? load_any<A>(a.scalar, a.scalar_dtype, r) : A(0);
    const A gs = Op::ScalarOut ? load_any<A>(a.grad, a.scalar_dtype, r) : A(0);
    SOut<T, A> gout[K];
    for (int s = 0; s < K; ++s)
      gout[s] = SOut<T, A>{a.grad_in[s] ? static_cast<T*>(a.grad_in[s]) + off : nullptr, a.inner};
    A gr = A(0);
    acc += Op::template bwd<A, 1>(k, rows, rs, gs, gout, &gr);
    if (a.grad_scalar) store_any<A>(a.grad_scalar, a.scalar_dtype, r, gr);
  }
  if (!a.need_c) return;
  __shared__ double red[kThreads];
  red[threadIdx.x] = double(acc);
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) a.partials[blockIdx.x] = red[0];
}

// inner = 1: one warp per vector (lane l handles d = l, l+32, ...: coalesced loads), grid-stride over vectors.
// Every lane computes the same scalars (xor-butterfly sums are bitwise equal across lanes); lane 0 writes the
// per-vector scalars and carries the curvature bracket.
template <class Op, class T, class A>
__global__ void __launch_bounds__(kThreads) row_fwd_warp_kernel(RowArgs a) {
  constexpr int K = Op::Kf;
  const Ctx<A> k{make_curv(read_c<A>(a.c)), A(a.eps), a.project, a.D};
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = int64_t(gridDim.x) * (blockDim.x >> 5);
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < a.rows; r += nwarps) {
    const int64_t off = r * a.D;
    SIn<T, A> in[K];
    for (int s = 0; s < K; ++s) in[s] = SIn<T, A>{static_cast<const T*>(a.in[s]) + off, 1};
    const A rs = a.scalar ? load_any<A>(a.scalar, a.scalar_dtype, r) : A(0);
    if (Op::ScalarOut) {
      A v;
      Op::template fwd<A, 0>(k, in, rs, SOut<T, A>{nullptr, 0}, &v);
      if (lane == 0) store_any<A>(a.out, a.scalar_dtype, r, v);
    } else {
      Op::template fwd<A, 0>(k, in, rs, SOut<T, A>{static_cast<T*>(a.out) + off, 1}, static_cast<A*>(nullptr));
    }
  }
}

template <class Op, class T, class A>
__global__ void __launch_bounds__(kThreads) row_bwd_warp_kernel(RowArgs a) {
  constexpr int K = Op::Kf, KB = Op::Kb;
  const Ctx<A> k{make_curv(read_c<A>(a.c)), A(a.eps), a.project, a.D};
  const int lane = threadIdx.x & 31;
  const int64_t nwarps = int64_t(gridDim.x) * (blockDim.x >> 5);
  A acc = A(0);
  for (int64_t r = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; r < a.rows; r += nwarps) {
    const int64_t off = r * a.D;
    SIn<T, A> rows[KB];
    for (int s = 0; s < K; ++s) rows[s] = SIn<T, A>{static_cast<const T*>(a.in[s]) + off, 1};
    if (KB > K) rows[K] = SIn<T, A>{static_cast<const T*>(a.grad) + off, 1};
    const A rs = a.scalar ? load_any<A>(a.scalar, a.scalar_dtype, r) : A(0);
    const A gs = Op::ScalarOut ? load_any<A>(a.grad, a.scalar_dtype, r) : A(0);
    SOut<T, A> gout[K];
    for (int s = 0; s < K; ++s)
      gout[s] = SOut<T, A>{a.grad_in[s] ? static_cast<T*>(a.grad_in[s]) + off : nullptr, 1};
    A gr = A(0);
    const A br = Op::template bwd<A, 0>(k, rows, rs, gs, gout, &gr);
    if (lane == 0) {
      acc += br;
      if (a.grad_scalar) store_any<A>(a.grad_scalar, a.scalar_dtype, r, gr);
    }
  }
  if (!a.need_c) return;
  __shared__ double red[kThreads];
  red[threadIdx.x] = double(acc);
  __syncthreads();
  for (int s = kThreads / 2; s > 0; s >>= 1) {
    if (int(threadIdx.x) < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) a.partials[blockIdx.x] = red[0];
}

// Sums n partials in a fixed order (strided per thread, then a fixed tree), subtracts `sub` partials (midpoint
// <g, m> terms) and writes (sum / (2c)) in c's dtype.
__global__ void __launch_bounds__(kThreads)
finalize_c_kernel(const double* partials, int64_t n, const double* sub, int64_t nsub, CArg c, void* grad_c) {
  __shared__ double red[kThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += partials[i];
  for (int64_t i = threadIdx.x; i < nsub; i += kThreads) s -= sub[i];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int k = kThreads / 2; k > 0; k >>= 1) {
    if (int(threadIdx.x) < k) red[threadIdx.x] += red[threadIdx.x + k];
    __syncthreads();
  }
  if (threadIdx.x == 0) store_any<double>(grad_c, c.dtype, 0, red[0] / (2.0 * read_c<double>(c)));
}

__global__ void zero_c_kernel(CArg c, void* grad_c) {
  if (threadIdx.x == 0 && blockIdx.x == 0) store_any<double>(grad_c, c.dtype, 0, 0.0);
}

double host_c(const Curvature& c) {
  switch (c.dtype) {
    case DType::Float32: return *static_cast<const float*>(c.ptr);
    case DType::Float64: return *static_cast<const double*>(c.ptr);
    case DType::Float16: return load_as<f16_t, float>(*static_cast<const f16_t*>(c.ptr));
    case DType::BFloat16: return load_as<bf16_t, float>(*static_cast<const bf16_t*>(c.ptr));
    default: return 0;
  }
}
CArg carg(const Curvature& c) { return CArg{c.ptr, c.dtype, c.on_host ? host_c(c) : 0.0, c.on_host}; }

RowArgs row_args(const RowOpParams& p) {
  RowArgs a;
  a.rows = p.layout.outer * p.layout.inner;
  a.D = p.layout.D;
  a.inner = p.layout.inner;
  for (int i = 0; i < 3; ++i) {
    a.in[i] = p.in[i];
    a.grad_in[i] = p.grad_in[i];
  }
  a.scalar = p.scalar;
  a.scalar_dtype = p.scalar_dtype;
  a.out = p.out;
  a.grad = p.grad;
  a.grad_scalar = p.grad_scalar;
  a.partials = static_cast<double*>(p.workspace);
  a.eps = p.eps;
  a.project = p.project;
  a.need_c = p.grad_c != nullptr;
  a.c = carg(p.c);
  return a;
}

template <class Op, class T, class A>
Status launch(const RowOpParams& p, bool bwd, cudaStream_t s) {
  RowArgs a = row_args(p);
  const int64_t grid = grid_for(a.rows, a.inner);
  const bool warp = a.inner == 1;
  if (!bwd) {
    if (warp) row_fwd_warp_kernel<Op, T, A><<<unsigned(grid), kThreads, 0, s>>>(a);
    else row_fwd_kernel<Op, T, A><<<unsigned(grid), kThreads, 0, s>>>(a);
    return cuda_status(cudaGetLastError(), "row_fwd");
  }
  if (warp) row_bwd_warp_kernel<Op, T, A><<<unsigned(grid), kThreads, 0, s>>>(a);
  else row_bwd_kernel<Op, T, A><<<unsigned(grid), kThreads, 0, s>>>(a);
  Status st = cuda_status(cudaGetLastError(), "row_bwd");
  if (!st.ok() || !a.need_c) return st;
  finalize_c_kernel<<<1, kThreads, 0, s>>>(a.partials, grid, nullptr, 0, a.c, p.grad_c);
  return cuda_status(cudaGetLastError(), "row_bwd finalize");
}

template <class Op>
Status dispatch(const RowOpParams& p, bool bwd, cudaStream_t s) {
  switch (p.dtype) {
    case DType::Float32: return launch<Op, float, float>(p, bwd, s);
    case DType::Float64: return launch<Op, double, double>(p, bwd, s);
    case DType::Float16: return launch<Op, f16_t, float>(p, bwd, s);
    case DType::BFloat16: return launch<Op, bf16_t, float>(p, bwd, s);
    default: return unsupported("poincare: unsupported dtype");
  }
}

Status dispatch_op(RowOp op, const RowOpParams& p, bool bwd, cudaStream_t s) {
  switch (op) {
    case RowOp::Project: return dispatch<ProjectOp>(p, bwd, s);
    case RowOp::MobiusAdd: return dispatch<MobiusAddOp>(p, bwd, s);
    case RowOp::MobiusScalarMul: return dispatch<ScalarMulOp>(p, bwd, s);
    case RowOp::Expmap0: return dispatch<Expmap0Op>(p, bwd, s);
    case RowOp::Logmap0: return dispatch<Logmap0Op>(p, bwd, s);
    case RowOp::Expmap: return dispatch<ExpmapOp>(p, bwd, s);
    case RowOp::Logmap: return dispatch<LogmapOp>(p, bwd, s);
    case RowOp::Dist: return dispatch<DistOp>(p, bwd, s);
    case RowOp::ConformalFactor: return dispatch<ConformalOp>(p, bwd, s);
    case RowOp::Gyration: return dispatch<GyrationOp>(p, bwd, s);
    case RowOp::Transp: return dispatch<TranspOp>(p, bwd, s);
    case RowOp::Residual: return dispatch<ResidualOp>(p, bwd, s);
  }
  return invalid_argument("poincare: unknown op");
}

}  // namespace

size_t row_workspace_bytes(RowOp, const RowOpParams& p) {
  if (p.grad_c == nullptr) return 0;
  return size_t(grid_for(p.layout.outer * p.layout.inner, p.layout.inner)) * sizeof(double);
}

Status row_fwd(RowOp op, const RowOpParams& p, cudaStream_t s) {
  Status st = validate(op, p, false);
  if (!st.ok()) return st;
  if (p.layout.outer * p.layout.inner == 0) return Status::OK();
  return dispatch_op(op, p, false, s);
}

Status row_bwd(RowOp op, const RowOpParams& p, cudaStream_t s) {
  RowOpParams q = p;
  q.workspace_bytes = p.grad_c ? cuda::row_workspace_bytes(op, p) : 0;  // the CPU validator checks CPU sizes
  if (p.grad_c && p.workspace_bytes < q.workspace_bytes) return invalid_argument("poincare.row_bwd: workspace too small");
  RowOpParams v = q;
  v.grad_c = nullptr;  // workspace checked above against the CUDA size
  Status st = validate(op, v, true);
  if (!st.ok()) return st;
  if (p.layout.outer * p.layout.inner == 0) {
    if (p.grad_c) {
      zero_c_kernel<<<1, 1, 0, s>>>(carg(p.c), p.grad_c);
      return cuda_status(cudaGetLastError(), "row_bwd");
    }
    return Status::OK();
  }
  return dispatch_op(op, q, true, s);
}

#define FASTNORM_POINCARE_CUDA_ROW_OP(name, id)                                                          \
  Status name##_fwd(const RowOpParams& p, cudaStream_t s) { return row_fwd(RowOp::id, p, s); }           \
  Status name##_bwd(const RowOpParams& p, cudaStream_t s) { return row_bwd(RowOp::id, p, s); }
FASTNORM_POINCARE_CUDA_ROW_OP(project, Project)
FASTNORM_POINCARE_CUDA_ROW_OP(mobius_add, MobiusAdd)
FASTNORM_POINCARE_CUDA_ROW_OP(mobius_scalar_mul, MobiusScalarMul)
FASTNORM_POINCARE_CUDA_ROW_OP(expmap0, Expmap0)
FASTNORM_POINCARE_CUDA_ROW_OP(logmap0, Logmap0)
FASTNORM_POINCARE_CUDA_ROW_OP(expmap, Expmap)
FASTNORM_POINCARE_CUDA_ROW_OP(logmap, Logmap)
FASTNORM_POINCARE_CUDA_ROW_OP(dist, Dist)
FASTNORM_POINCARE_CUDA_ROW_OP(conformal_factor, ConformalFactor)
FASTNORM_POINCARE_CUDA_ROW_OP(gyration, Gyration)
FASTNORM_POINCARE_CUDA_ROW_OP(transp, Transp)
FASTNORM_POINCARE_CUDA_ROW_OP(residual, Residual)
#undef FASTNORM_POINCARE_CUDA_ROW_OP

// ------------------------------------------------------------------------------------------ midpoint
// Workspace (compute type A, then doubles): partials [tasks][D + 1] (V, Q per task), per-output coefficients
// [batch][D + 4] (V, ag, aV, dQ, <g, m>) for the backward, then the double curvature partials [tasks] and
// <g, m> per output [batch].
namespace {

struct MidLayout {
  int64_t nch, tasks;
  size_t part, coef, cpart, gm, total;
};
MidLayout mid_layout(const MidpointParams& p, bool backward) {
  MidLayout l;
  l.nch = p.R == 0 ? 0 : (p.R + kMidChunk - 1) / kMidChunk;
  l.tasks = p.batch * l.nch;
  const size_t a = p.dtype == DType::Float64 ? sizeof(double) : sizeof(float);
  auto up = [](size_t b) { return (b + 255) / 256 * 256; };
  l.part = 0;
  l.coef = up(size_t(l.tasks) * size_t(p.D + 1) * a);
  l.cpart = l.coef + (backward ? up(size_t(p.batch) * size_t(p.D + 4) * a) : 0);
  l.gm = l.cpart + (backward ? up(size_t(l.tasks) * sizeof(double)) : 0);
  l.total = l.gm + (backward ? up(size_t(p.batch) * sizeof(double)) : 0);
  return l;
}

template <class A> __device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

struct MidArgs {
  int64_t batch, R, D, nch, tasks;
  const void* x;
  const void* w;
  DType w_dtype;
  void* out;
  const void* grad;
  void* grad_x;
  void* grad_w;
  char* ws;
  MidLayout l;
  double eps;
  bool project, need_c;
  CArg c;
};

// One warp per task: V[d] += w lambda x[d] (lane d mod 32), Q += w (lambda - 1).
template <class T, class A>
__global__ void __launch_bounds__(kThreads) mid_partials_kernel(MidArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t t = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (t >= a.tasks) return;
  const Curv<A> cv = make_curv(read_c<A>(a.c));
  const int64_t b = t / a.nch, ch = t - b * a.nch;
  const int64_t i0 = ch * kMidChunk, i1 = i0 + kMidChunk < a.R ? i0 + kMidChunk : a.R;
  A* V = reinterpret_cast<A*>(a.ws + a.l.part) + t * (a.D + 1);
  for (int64_t d = lane; d < a.D; d += 32) V[d] = A(0);
  A Q = A(0);
  const T* x = static_cast<const T*>(a.x);
  for (int64_t i = i0; i < i1; ++i) {
    const T* xr = x + (b * a.R + i) * a.D;
    A s = A(0);
    for (int64_t d = lane; d < a.D; d += 32) {
      const A v = load_as<T, A>(xr[d]);
      s += v * v;
    }
    s = warp_sum(s);
    const A w = a.w ? load_any<A>(a.w, a.w_dtype, b * a.R + i) : A(1);
    const A lam = conformal(s, cv).lam;
    for (int64_t d = lane; d < a.D; d += 32) V[d] += w * lam * load_as<T, A>(xr[d]);
    Q += w * (lam - A(1));
  }
  if (lane == 0) V[a.D] = Q;
}

// One warp per output: sum the chunk partials in order; forward writes m, backward the coefficients.
template <class T, class A, bool Bwd>
__global__ void __launch_bounds__(kThreads) mid_final_kernel(MidArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t b = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (b >= a.batch) return;
  const Curv<A> cv = make_curv(read_c<A>(a.c));
  const A* part = reinterpret_cast<const A*>(a.ws + a.l.part);
  A* C = reinterpret_cast<A*>(a.ws + a.l.coef) + b * (a.D + 4);
  A VV = A(0), gV = A(0), Q = A(0);
  const T* g = static_cast<const T*>(a.grad);
  for (int64_t d = lane; d <= a.D; d += 32) {
    A s = A(0);
    for (int64_t ch = 0; ch < a.nch; ++ch) s += part[(b * a.nch + ch) * (a.D + 1) + d];
    if (d == a.D) {
      Q = s;
    } else {
      VV += s * s;
      if (Bwd) {
        gV += load_as<T, A>(g[b * a.D + d]) * s;
        C[d] = s;
      } else {
        C[d] = s;  // scratch for the forward write below (the forward layout reserves no coef block: see host)
      }
    }
  }
  VV = warp_sum(VV);
  Q = warp_sum(Q);
  const MidState<A> st = midpoint_state(VV, Q, cv, A(a.eps), a.project);
  if (!Bwd) {
    const A kappa = midpoint_kappa(st);
    T* out = static_cast<T*>(a.out) + b * a.D;
    __syncwarp();
    for (int64_t d = lane; d < a.D; d += 32) out[d] = store_from<T, A>(kappa * C[d]);
    return;
  }
  gV = warp_sum(gV);
  const MidFinal<A> f = midpoint_bwd_coefs(st, gV, VV, cv);
  if (lane == 0) {
    C[a.D] = f.ag;
    C[a.D + 1] = f.aV;
    C[a.D + 2] = f.dQ;
    C[a.D + 3] = f.kappa * gV;
    reinterpret_cast<double*>(a.ws + a.l.gm)[b] = double(f.kappa * gV);
  }
}

// One warp per task: dx_i, dw_i and the task's curvature bracket.
template <class T, class A>
__global__ void __launch_bounds__(kThreads) mid_bwd_kernel(MidArgs a) {
  const int lane = threadIdx.x & 31;
  const int64_t t = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  if (t >= a.tasks) return;
  const Curv<A> cv = make_curv(read_c<A>(a.c));
  const int64_t b = t / a.nch, ch = t - b * a.nch;
  const int64_t i0 = ch * kMidChunk, i1 = i0 + kMidChunk < a.R ? i0 + kMidChunk : a.R;
  const A* C = reinterpret_cast<const A*>(a.ws + a.l.coef) + b * (a.D + 4);
  const A ag = C[a.D], aV = C[a.D + 1], dQ = C[a.D + 2];
  const T* x = static_cast<const T*>(a.x);
  const T* g = static_cast<const T*>(a.grad) + b * a.D;
  T* gx = static_cast<T*>(a.grad_x);
  A acc = A(0);
  for (int64_t i = i0; i < i1; ++i) {
    const T* xr = x + (b * a.R + i) * a.D;
    A xx = A(0), xg = A(0), xV = A(0);
    for (int64_t d = lane; d < a.D; d += 32) {
      const A v = load_as<T, A>(xr[d]);
      xx += v * v;
      xg += v * load_as<T, A>(g[d]);
      xV += v * C[d];
    }
    xx = warp_sum(xx);
    xg = warp_sum(xg);
    xV = warp_sum(xV);
    const A w = a.w ? load_any<A>(a.w, a.w_dtype, b * a.R + i) : A(1);
    const Lambda<A> lam = conformal(xx, cv);
    const A dVx = ag * xg + aV * xV;
    const A kx = (dVx + dQ) * lam.kx;
    if (gx) {
      T* o = gx + (b * a.R + i) * a.D;
      for (int64_t d = lane; d < a.D; d += 32)
        o[d] = store_from<T, A>(w * lam.lam * (ag * load_as<T, A>(g[d]) + aV * C[d]) + w * kx * load_as<T, A>(xr[d]));
    }
    if (a.grad_w && lane == 0) store_any<A>(a.grad_w, a.w_dtype, b * a.R + i, lam.lam * dVx + dQ * (lam.lam - A(1)));
    acc += w * (lam.lam * dVx + kx * xx);
  }
  if (a.need_c && lane == 0) reinterpret_cast<double*>(a.ws + a.l.cpart)[t] = double(acc);
}

MidArgs mid_args(const MidpointParams& p, bool backward) {
  MidArgs a;
  a.l = mid_layout(p, backward);
  a.batch = p.batch; a.R = p.R; a.D = p.D; a.nch = a.l.nch; a.tasks = a.l.tasks;
  a.x = p.x; a.w = p.weights; a.w_dtype = p.w_dtype; a.out = p.out; a.grad = p.grad;
  a.grad_x = p.grad_x; a.grad_w = p.grad_weights;
  a.ws = static_cast<char*>(p.workspace);
  a.eps = p.eps; a.project = p.project; a.need_c = p.grad_c != nullptr;
  a.c = carg(p.c);
  return a;
}

unsigned warps_grid(int64_t n) { return unsigned((n * 32 + kThreads - 1) / kThreads); }

template <class T, class A>
Status mid_run(const MidpointParams& p, bool bwd, cudaStream_t s) {
  MidArgs a = mid_args(p, bwd);
  mid_partials_kernel<T, A><<<warps_grid(a.tasks), kThreads, 0, s>>>(a);
  if (!bwd) {
    mid_final_kernel<T, A, false><<<warps_grid(a.batch), kThreads, 0, s>>>(a);
    return cuda_status(cudaGetLastError(), "midpoint_fwd");
  }
  mid_final_kernel<T, A, true><<<warps_grid(a.batch), kThreads, 0, s>>>(a);
  mid_bwd_kernel<T, A><<<warps_grid(a.tasks), kThreads, 0, s>>>(a);
  Status st = cuda_status(cudaGetLastError(), "midpoint_bwd");
  if (!st.ok() || !a.need_c) return st;
  finalize_c_kernel<<<1, kThreads, 0, s>>>(reinterpret_cast<const double*>(a.ws + a.l.cpart), a.tasks,
                                           reinterpret_cast<const double*>(a.ws + a.l.gm), a.batch, a.c, p.grad_c);
  return cuda_status(cudaGetLastError(), "midpoint_bwd finalize");
}

Status mid_dispatch(const MidpointParams& p, bool bwd, cudaStream_t s) {
  switch (p.dtype) {
    case DType::Float32: return mid_run<float, float>(p, bwd, s);
    case DType::Float64: return mid_run<double, double>(p, bwd, s);
    case DType::Float16: return mid_run<f16_t, float>(p, bwd, s);
    case DType::BFloat16: return mid_run<bf16_t, float>(p, bwd, s);
    default: return unsupported("poincare.midpoint: unsupported dtype");
  }
}

}  // namespace

size_t midpoint_workspace_bytes(const MidpointParams& p, bool backward) {
  // The forward also uses a coefficient block as scratch for the summed V.
  MidLayout l = mid_layout(p, true);
  return backward ? l.total : l.cpart;
}

Status midpoint_fwd(const MidpointParams& p, cudaStream_t s) {
  MidpointParams v = p;
  v.workspace_bytes = ::fastnorm::poincare::midpoint_workspace_bytes(p, false);  // CPU validator's size
  Status st = validate(v, false);
  if (!st.ok()) return st;
  if (p.workspace_bytes < cuda::midpoint_workspace_bytes(p, false))
    return invalid_argument("poincare.midpoint_fwd: workspace too small");
  if (p.batch * p.D == 0) return Status::OK();
  return mid_dispatch(p, false, s);
}

Status midpoint_bwd(const MidpointParams& p, cudaStream_t s) {
  MidpointParams v = p;
  v.workspace_bytes = ::fastnorm::poincare::midpoint_workspace_bytes(p, true);
  Status st = validate(v, true);
  if (!st.ok()) return st;
  if (p.workspace_bytes < cuda::midpoint_workspace_bytes(p, true))
    return invalid_argument("poincare.midpoint_bwd: workspace too small");
  if (p.batch * p.D == 0 || p.R == 0) {
    if (p.grad_c) {
      zero_c_kernel<<<1, 1, 0, s>>>(carg(p.c), p.grad_c);
      return cuda_status(cudaGetLastError(), "midpoint_bwd");
    }
    return Status::OK();
  }
  return mid_dispatch(p, true, s);
}

}  // namespace cuda
}  // namespace poincare
}  // namespace fastnorm

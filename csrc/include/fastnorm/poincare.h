// fastnorm poincare family: Poincaré-ball core ops (specs/poincare.md §2.4, §3.1-§3.4, §3.6, §3.9 residual).
// Torch-free public C++ API; CUDA twins (same names, trailing cudaStream_t) in poincare_cuda.h. The layers
// (FC, conv, midpoint BN) live in poincare_layers.h. All math is in detail/poincare_math.h.
//
// Conventions: c is the curvature magnitude (sectional curvature -c, ball radius 1/sqrt(c)). A vector tensor
// is seen as a contiguous RowLayout [outer, D, inner]: element (o, d, i) sits at (o*D + d)*inner + i, and the
// op acts on each of the outer*inner vectors of D elements (inner = 1: rows; inner > 1: NCHW with dim = 1).
// Compute type: float for f32/f16/bf16 storage, double for f64. Every backward returns the input grads asked
// for (null pointer = not needed) and, when grad_c is set, the curvature gradient of §3.6
//   dL/dc = (1/(2c)) * (sum_p <dp, p> - alpha * <g, out>)
// reduced deterministically (fixed blocks of rows, fixed-order sum; independent of the thread count).
//
// Every row op below (X_fwd / X_bwd) takes RowOpParams: which of in[], scalar, out, grad_in[] it reads and
// writes, and their shapes, are in the table above RowOpParams. Dtypes: vectors Float32, Float16, BFloat16 or
// Float64 (`dtype`), per-vector scalars and c any float type. Status of every entry point: Ok (also for empty
// tensors); Unsupported for a non-float dtype; InvalidArgument for negative sizes, eps outside (0, 1), a null
// c, input, out (forward), grad (backward) or r (mobius_scalar_mul), or, in a backward with grad_c, a workspace
// smaller than <op>_workspace_bytes(). The midpoint adds: an empty reduced dimension (R == 0 with outputs),
// grad_weights without weights, a workspace smaller than midpoint_workspace_bytes().
#pragma once
#include <cstddef>
#include <cstdint>

#include "fastnorm/common.h"

namespace fastnorm {
namespace poincare {

// Contiguous [outer, D, inner] view of a vector tensor (D = size of the vector dim).
struct RowLayout {
  int64_t outer = 0, D = 0, inner = 1;
  int64_t rows() const { return outer * inner; }      // number of vectors
  int64_t numel() const { return outer * D * inner; }
};

// The curvature magnitude c: one element of a float dtype, read on the host (on_host, or any CPU op) or by the
// CUDA kernels from device memory (no host sync). c <= 0 is not checked here (gives NaN), see spec §5.
struct Curvature {
  const void* ptr = nullptr;     // one element of `dtype` (required)
  DType dtype = DType::Float32;  // any float type
  bool on_host = true;           // CUDA only: ptr is host memory, read at launch (else device memory)
};

// Parameters of every row op (project ... transp, residual). Which slots an op uses:
//   op                 in[0] in[1] in[2] scalar   out         grad_in[...]          alpha (§3.6)
//   project            x     -     -     -        vector      dx                    1
//   mobius_add         x     y     -     -        vector      dx dy                 1
//   mobius_scalar_mul  x     -     -     r        vector      dx (+ grad_scalar dr) 1
//   expmap0            v     -     -     -        vector      dv                    1
//   logmap0            y     -     -     -        vector      dy                    1
//   expmap             x     v     -     -        vector      dx dv                 1
//   logmap             x     y     -     -        vector      dx dy                 1
//   dist               x     y     -     -        [outer,inner] dx dy               1
//   conformal_factor   x     -     -     -        [outer,inner] dx                  0
//   gyration           u     v     w     -        vector      du dv dw              1
//   transp             x     y     v     -        vector      dx dy dv              1
//   residual           a     b     -     -        vector      da db                 1
// Vector inputs, the vector output and their grads share `layout` and `dtype`; per-vector scalars (r, dist,
// conformal_factor and their grads) are [outer, inner] contiguous in `scalar_dtype`.
struct RowOpParams {
  RowLayout layout;
  DType dtype = DType::Float32;          // vector inputs, vector output, vector grads
  DType scalar_dtype = DType::Float32;   // r / dr (mobius_scalar_mul), the scalar output and its grad
  const void* in[3] = {nullptr, nullptr, nullptr};
  const void* scalar = nullptr;          // mobius_scalar_mul's r
  void* out = nullptr;                   // forward output
  const void* grad = nullptr;            // backward: upstream gradient (shape of out, dtype of out)
  void* grad_in[3] = {nullptr, nullptr, nullptr};  // backward: grads of in[i] (null = not needed)
  void* grad_scalar = nullptr;           // backward: grad of r (null = not needed)
  void* grad_c = nullptr;                // backward: one element of c.dtype (null = not needed)
  Curvature c;
  double eps = 4e-3;                     // projection eps: radius (1-eps)/sqrt(c) (per-dtype default §4)
  bool project = true;                   // project the output (ops with a `project` flag)
  void* workspace = nullptr;             // <op>_workspace_bytes(p) bytes (only needed with grad_c)
  size_t workspace_bytes = 0;            // bytes at workspace
  int num_threads = 0;                   // 0 = OpenMP default
};

// Weighted gyromidpoint (§3.4) over R points for each of `batch` outputs. x is contiguous [batch, R, D]
// (the binding moves reduce_dim and dim there), weights [batch, R] or null (all 1), out [batch, D].
struct MidpointParams {
  int64_t batch = 0, R = 0, D = 0;       // outputs, points per output, vector size
  DType dtype = DType::Float32;          // x, out, grad, dx
  DType w_dtype = DType::Float32;        // weights, dweights
  const void* x = nullptr;
  const void* weights = nullptr;
  void* out = nullptr;                   // forward
  const void* grad = nullptr;            // backward: [batch, D]
  void* grad_x = nullptr;                // backward: [batch, R, D] or null
  void* grad_weights = nullptr;          // backward: [batch, R] or null (needs weights)
  void* grad_c = nullptr;                // backward: one element of c.dtype, or null
  Curvature c;
  double eps = 4e-3;                     // projection eps, in (0, 1)
  bool project = true;                   // project the output
  void* workspace = nullptr;             // midpoint_workspace_bytes(p) bytes
  size_t workspace_bytes = 0;            // bytes at workspace
  int num_threads = 0;                   // 0 = OpenMP default
};

// Row-op identifiers (used by the generic entry points and the tests).
enum class RowOp : int32_t {
  Project = 0, MobiusAdd, MobiusScalarMul, Expmap0, Logmap0, Expmap, Logmap, Dist, ConformalFactor, Gyration,
  Transp, Residual,
};

// Checks a row op's (or the midpoint's) params (null pointers, negative sizes, dtypes, eps, workspace) without
// running anything; every entry point calls it first. Same Status codes as the ops.
FASTNORM_API Status validate(RowOp op, const RowOpParams& p, bool backward);
FASTNORM_API Status validate(const MidpointParams& p, bool backward);

// Generic CPU entry points: forward / backward of row op `op` (the named ones below forward to these).
FASTNORM_API Status row_fwd(RowOp op, const RowOpParams& p);
FASTNORM_API Status row_bwd(RowOp op, const RowOpParams& p);
// Workspace of a row op's backward on the CPU: one double per block of rows when grad_c is set, else 0.
FASTNORM_API size_t row_workspace_bytes(RowOp op, const RowOpParams& p);

// proj(x): rows with sqrt(c)|x| > 1-eps are scaled onto the radius (1-eps)/sqrt(c) (§3.1).
FASTNORM_API Status project_fwd(const RowOpParams& p);
FASTNORM_API Status project_bwd(const RowOpParams& p);
// x (+)_c y, Möbius addition (§3.2), then project.
FASTNORM_API Status mobius_add_fwd(const RowOpParams& p);
FASTNORM_API Status mobius_add_bwd(const RowOpParams& p);
// r (x)_c x = tanh(r artanh(sqrt(c)|x|)) x/(sqrt(c)|x|), r per vector (§3.1), then project.
FASTNORM_API Status mobius_scalar_mul_fwd(const RowOpParams& p);
FASTNORM_API Status mobius_scalar_mul_bwd(const RowOpParams& p);
// exp_0(v) = tanh(sqrt(c)|v|) v/(sqrt(c)|v|) (§3.1), then project.
FASTNORM_API Status expmap0_fwd(const RowOpParams& p);
FASTNORM_API Status expmap0_bwd(const RowOpParams& p);
// log_0(y) = artanh(sqrt(c)|y|) y/(sqrt(c)|y|) (§3.1).
FASTNORM_API Status logmap0_fwd(const RowOpParams& p);
FASTNORM_API Status logmap0_bwd(const RowOpParams& p);
// exp_x(v) = x (+) tanh(sqrt(c) lambda_x |v|/2) v/(sqrt(c)|v|) (§3.2), then project.
FASTNORM_API Status expmap_fwd(const RowOpParams& p);
FASTNORM_API Status expmap_bwd(const RowOpParams& p);
// log_x(y) = (2/lambda_x) log_0((-x) (+) y) (§3.2).
FASTNORM_API Status logmap_fwd(const RowOpParams& p);
FASTNORM_API Status logmap_bwd(const RowOpParams& p);
// d_c(x, y) = 2 artanh(sqrt(c)|(-x) (+) y|)/sqrt(c) (§3.2), one scalar per vector.
FASTNORM_API Status dist_fwd(const RowOpParams& p);
FASTNORM_API Status dist_bwd(const RowOpParams& p);
// lambda_x = 2/(1 - c|x|^2) (§3.1), one scalar per vector.
FASTNORM_API Status conformal_factor_fwd(const RowOpParams& p);
FASTNORM_API Status conformal_factor_bwd(const RowOpParams& p);
// gyr[u, v] w, closed form (§3.3).
FASTNORM_API Status gyration_fwd(const RowOpParams& p);
FASTNORM_API Status gyration_bwd(const RowOpParams& p);
// Parallel transport of v from T_x to T_y: gyr[y, -x] v * lambda_x/lambda_y (§3.3).
FASTNORM_API Status transp_fwd(const RowOpParams& p);
FASTNORM_API Status transp_bwd(const RowOpParams& p);
// log_0(proj(proj(exp_0(a)) (+) proj(exp_0(b)))) on tangent vectors (§3.9).
FASTNORM_API Status residual_fwd(const RowOpParams& p);
FASTNORM_API Status residual_bwd(const RowOpParams& p);

// Weighted gyromidpoint forward (out [batch, D]) / backward (grad_x [batch, R, D], grad_weights [batch, R],
// grad_c), §3.4; both need workspace of midpoint_workspace_bytes(p, backward) bytes.
FASTNORM_API Status midpoint_fwd(const MidpointParams& p);
FASTNORM_API Status midpoint_bwd(const MidpointParams& p);

// CPU workspace sizes (bytes) of the ops that reduce across rows: for a row op, what its backward needs when
// grad_c is set (0 otherwise; forwards need none). Never fail.
FASTNORM_API size_t project_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t mobius_add_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t mobius_scalar_mul_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t expmap0_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t logmap0_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t expmap_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t logmap_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t dist_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t conformal_factor_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t gyration_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t transp_workspace_bytes(const RowOpParams& p);
FASTNORM_API size_t residual_workspace_bytes(const RowOpParams& p);
// Midpoint: per-chunk partial sums of V, Q (forward and backward) plus the curvature partials.
FASTNORM_API size_t midpoint_workspace_bytes(const MidpointParams& p, bool backward);

}  // namespace poincare
}  // namespace fastnorm

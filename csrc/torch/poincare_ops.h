// The Poincaré core ops (specs/poincare.md §2.3) written once over a Backend (CPU or CUDA) that supplies the
// core entry points; poincare.cpp registers them for CPU (with the schemas), poincare_cuda.cpp for CUDA.
// Checks: every message names the op and the argument. Inputs are made contiguous once (a documented copy for
// non-contiguous input) and seen as RowLayout [outer, D, inner] around `dim`.
#pragma once
#include <cmath>
#include <tuple>
#include <vector>

#include "binding.h"
#include "fastnorm/poincare.h"
#include "fastnorm/detail/poincare_math.h"

namespace fastnorm {
namespace binding {
namespace poincare_ops {

using fastnorm::poincare::Curvature;
using fastnorm::poincare::MidpointParams;
using fastnorm::poincare::RowLayout;
using fastnorm::poincare::RowOp;
using fastnorm::poincare::RowOpParams;

inline int64_t norm_dim(const char* op, const Tensor& x, int64_t dim, const char* arg = "dim") {
  const int64_t nd = x.dim();
  if (nd < 1) fail(op, "x must have at least one dimension");
  if (dim < -nd || dim >= nd) fail(op, arg, " ", dim, " is out of range for a tensor of ", nd, " dimensions");
  return dim < 0 ? dim + nd : dim;
}

inline RowLayout layout_of(const Tensor& x, int64_t d) {
  RowLayout L;
  L.outer = 1;
  for (int64_t i = 0; i < d; ++i) L.outer *= x.size(i);
  L.D = x.size(d);
  L.inner = 1;
  for (int64_t i = d + 1; i < x.dim(); ++i) L.inner *= x.size(i);
  return L;
}

// c: one element of a float dtype, on x's device; a CPU c is also accepted for a CUDA x (read on the host)
// unless its gradient is asked for.
inline Curvature curvature(const char* op, const Tensor& c, const Tensor& x, bool need_c, Tensor& keep) {
  if (!is_float_dtype(c.scalar_type()))
    fail(op, "c must be a float tensor, got ", scalar_name(c.scalar_type()));
  if (c.numel() != 1) fail(op, "c must have exactly one element, got shape ", shape_str(c));
  Curvature cv;
  cv.dtype = *to_dtype(c.scalar_type());
  if (c.is_cuda() != x.is_cuda() || (c.is_cuda() && c.get_device_index() != x.get_device_index())) {
    if (!x.is_cuda() || c.is_cuda()) check_same_device(x, c, op, "c");
    if (need_c) fail(op, "c must be on x's device to compute its gradient (it is on the cpu)");
    cv.on_host = true;
  } else {
    cv.on_host = !c.is_cuda();
  }
  keep = torch::stable::contiguous(c);
  cv.ptr = keep.const_data_ptr();
  return cv;
}

inline void check_like(const char* op, const Tensor& x, const Tensor& t, const char* arg, const char* xname) {
  check_same_device(x, t, op, arg);
  if (t.scalar_type() != x.scalar_type())
    fail(op, arg, " has dtype ", scalar_name(t.scalar_type()), " but ", xname, " has ", scalar_name(x.scalar_type()));
  if (shape_of(t) != shape_of(x))
    fail(op, arg, " has shape ", shape_str(t), " but ", xname, " has shape ", shape_str(x),
         " (the Python wrapper broadcasts)");
}

inline std::vector<int64_t> reduced_shape(const Tensor& x, int64_t d, bool keepdim) {
  std::vector<int64_t> s;
  for (int64_t i = 0; i < x.dim(); ++i) {
    if (i != d) s.push_back(x.size(i));
    else if (keepdim) s.push_back(1);
  }
  return s;
}

inline bool is_scalar_out(RowOp op) { return op == RowOp::Dist || op == RowOp::ConformalFactor; }

inline double default_eps(const Tensor& x) {
  return fastnorm::poincare::detail::default_eps(*to_dtype(x.scalar_type()));
}

inline void check_eps(const char* op, double eps) {
  if (!(eps > 0 && eps < 1)) fail(op, "eps must lie in (0, 1), got ", eps);
}

template <class B>
struct Impl {
  static Tensor workspace(const Tensor& x, size_t bytes) {
    if (bytes == 0) return Tensor();
    return empty_like_shape(x, {static_cast<int64_t>(bytes)}, ScalarType::Byte);
  }

  // Shared argument handling of one row op call. names: the schema names of the vector inputs.
  struct Call {
    const char* op;
    RowOp id;
    std::vector<Tensor> in;  // contiguous
    int64_t d = 0;
    RowOpParams p;
    Tensor keep_c, keep_r;
    bool has_r = false;
  };

  static Call prepare(const char* op, RowOp id, const std::vector<Tensor>& ins, const std::vector<const char*>& names,
                      const Tensor& c, int64_t dim, bool need_c) {
    Call k;
    k.op = op;
    k.id = id;
    const Tensor& x = ins[0];
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, names[0]);
    k.d = norm_dim(op, x, dim);
    for (size_t i = 1; i < ins.size(); ++i) {
      float_dtype(ins[i], op, names[i]);
      check_like(op, x, ins[i], names[i], names[0]);
    }
    for (const Tensor& t : ins) k.in.push_back(torch::stable::contiguous(t));
    k.p.layout = layout_of(x, k.d);
    k.p.dtype = xd;
    k.p.scalar_dtype = xd;
    for (size_t i = 0; i < k.in.size(); ++i) k.p.in[i] = k.in[i].const_data_ptr();
    k.p.c = curvature(op, c, x, need_c, k.keep_c);
    k.p.eps = default_eps(x);
    return k;
  }

  // r of mobius_scalar_mul: x.shape with dim of size 1, float dtype, on x's device.
  static void set_r(Call& k, const Tensor& r) {
    const Tensor& x = k.in[0];
    check_same_device(x, r, k.op, "r");
    float_dtype(r, k.op, "r");
    std::vector<int64_t> want = reduced_shape(x, k.d, true);
    if (shape_of(r) != want)
      fail(k.op, "r has shape ", shape_str(r), " but must be x's shape with dim ", k.d, " of size 1 (",
           "the Python wrapper broadcasts)");
    k.keep_r = torch::stable::contiguous(r);
    k.p.scalar = k.keep_r.const_data_ptr();
    k.has_r = true;
    k.p.scalar_dtype = *to_dtype(r.scalar_type());
  }

  static Tensor forward(Call& k, bool keepdim = false) {
    const Tensor& x = k.in[0];
    Tensor out = is_scalar_out(k.id) ? empty_like_shape(x, reduced_shape(x, k.d, keepdim), x.scalar_type())
                                     : empty_like_shape(x, shape_of(x), x.scalar_type());
    k.p.out = out.numel() ? out.mutable_data_ptr() : nullptr;
    check_status(B::row_fwd(k.id, k.p, x), k.op);
    return out;
  }

  // Backward: grads of the vector inputs (need[i]), of r (need_r) and of c (need_c).
  static std::vector<Tensor> backward(Call& k, const Tensor& grad_in, const Tensor& c, const std::vector<bool>& need,
                                      bool need_r, bool need_c, bool keepdim = false) {
    const Tensor& x = k.in[0];
    std::vector<int64_t> gshape = is_scalar_out(k.id) ? reduced_shape(x, k.d, keepdim) : shape_of(x);
    check_same_device(x, grad_in, k.op, "grad");
    if (grad_in.scalar_type() != x.scalar_type())
      fail(k.op, "grad has dtype ", scalar_name(grad_in.scalar_type()), " but the output has ",
           scalar_name(x.scalar_type()));
    if (shape_of(grad_in) != gshape)
      fail(k.op, "grad has shape ", shape_str(grad_in), " but the output has ", gshape.size(), " dims of shape [",
           [&] { std::string s; for (size_t i = 0; i < gshape.size(); ++i) s += (i ? ", " : "") + std::to_string(gshape[i]); return s; }(), "]");
    Tensor grad = torch::stable::contiguous(grad_in);
    k.p.grad = grad.const_data_ptr();
    std::vector<Tensor> outs;
    for (size_t i = 0; i < k.in.size(); ++i) {
      if (need[i]) {
        outs.push_back(empty_like_shape(x, shape_of(x), x.scalar_type()));
        k.p.grad_in[i] = outs.back().numel() ? outs.back().mutable_data_ptr() : nullptr;
      } else {
        outs.push_back(unused_output(x, x.scalar_type()));
      }
    }
    if (k.has_r) {
      if (need_r) {
        outs.push_back(empty_like_shape(x, shape_of(k.keep_r), k.keep_r.scalar_type()));
        k.p.grad_scalar = outs.back().numel() ? outs.back().mutable_data_ptr() : nullptr;
      } else {
        outs.push_back(unused_output(x, k.keep_r.scalar_type()));
      }
    }
    Tensor dc;
    if (need_c) {
      dc = empty_like_shape(c, shape_of(c), c.scalar_type());
      k.p.grad_c = dc.mutable_data_ptr();
    } else {
      dc = unused_output(x, c.scalar_type());
    }
    Tensor ws = workspace(x, B::row_workspace_bytes(k.id, k.p));
    k.p.workspace = ws.defined() ? ws.mutable_data_ptr() : nullptr;
    k.p.workspace_bytes = ws.defined() ? static_cast<size_t>(ws.numel()) : 0;
    check_status(B::row_bwd(k.id, k.p, x), k.op);
    outs.push_back(dc);
    return outs;
  }

  // ---- the schema functions
  static Tensor project(Tensor x, Tensor c, int64_t dim, double eps) {
    Call k = prepare("poincare_project", RowOp::Project, {x}, {"x"}, c, dim, false);
    check_eps(k.op, eps);
    k.p.eps = eps;
    return forward(k);
  }
  static std::tuple<Tensor, Tensor> project_backward(Tensor g, Tensor x, Tensor c, int64_t dim, double eps, bool nx,
                                                      bool nc) {
    Call k = prepare("poincare_project_backward", RowOp::Project, {x}, {"x"}, c, dim, nc);
    check_eps(k.op, eps);
    k.p.eps = eps;
    auto o = backward(k, g, c, {nx}, false, nc);
    return {o[0], o[1]};
  }
  static Tensor mobius_add(Tensor x, Tensor y, Tensor c, int64_t dim, bool project) {
    Call k = prepare("poincare_mobius_add", RowOp::MobiusAdd, {x, y}, {"x", "y"}, c, dim, false);
    k.p.project = project;
    return forward(k);
  }
  static std::tuple<Tensor, Tensor, Tensor> mobius_add_backward(Tensor g, Tensor x, Tensor y, Tensor c, int64_t dim,
                                                                 bool project, bool nx, bool ny, bool nc) {
    Call k = prepare("poincare_mobius_add_backward", RowOp::MobiusAdd, {x, y}, {"x", "y"}, c, dim, nc);
    k.p.project = project;
    auto o = backward(k, g, c, {nx, ny}, false, nc);
    return {o[0], o[1], o[2]};
  }
  static Tensor mobius_scalar_mul(Tensor r, Tensor x, Tensor c, int64_t dim, bool project) {
    Call k = prepare("poincare_mobius_scalar_mul", RowOp::MobiusScalarMul, {x}, {"x"}, c, dim, false);
    set_r(k, r);
    k.p.project = project;
    return forward(k);
  }
  static std::tuple<Tensor, Tensor, Tensor> mobius_scalar_mul_backward(Tensor g, Tensor r, Tensor x, Tensor c,
                                                                        int64_t dim, bool project, bool nr, bool nx,
                                                                        bool nc) {
    Call k = prepare("poincare_mobius_scalar_mul_backward", RowOp::MobiusScalarMul, {x}, {"x"}, c, dim, nc);
    set_r(k, r);
    k.p.project = project;
    auto o = backward(k, g, c, {nx}, nr, nc);
    return {o[1], o[0], o[2]};
  }
  static Tensor expmap0(Tensor v, Tensor c, int64_t dim, bool project) {
    Call k = prepare("poincare_expmap0", RowOp::Expmap0, {v}, {"v"}, c, dim, false);
    k.p.project = project;
    return forward(k);
  }
  static std::tuple<Tensor, Tensor> expmap0_backward(Tensor g, Tensor v, Tensor c, int64_t dim, bool project, bool nv,
                                                      bool nc) {
    Call k = prepare("poincare_expmap0_backward", RowOp::Expmap0, {v}, {"v"}, c, dim, nc);
    k.p.project = project;
    auto o = backward(k, g, c, {nv}, false, nc);
    return {o[0], o[1]};
  }
  static Tensor logmap0(Tensor y, Tensor c, int64_t dim) {
    Call k = prepare("poincare_logmap0", RowOp::Logmap0, {y}, {"y"}, c, dim, false);
    return forward(k);
  }
  static std::tuple<Tensor, Tensor> logmap0_backward(Tensor g, Tensor y, Tensor c, int64_t dim, bool ny, bool nc) {
    Call k = prepare("poincare_logmap0_backward", RowOp::Logmap0, {y}, {"y"}, c, dim, nc);
    auto o = backward(k, g, c, {ny}, false, nc);
    return {o[0], o[1]};
  }
  static Tensor expmap(Tensor x, Tensor v, Tensor c, int64_t dim, bool project) {
    Call k = prepare("poincare_expmap", RowOp::Expmap, {x, v}, {"x", "v"}, c, dim, false);
    k.p.project = project;
    return forward(k);
  }
  static std::tuple<Tensor, Tensor, Tensor> expmap_backward(Tensor g, Tensor x, Tensor v, Tensor c, int64_t dim,
                                                             bool project, bool nx, bool nv, bool nc) {
    Call k = prepare("poincare_expmap_backward", RowOp::Expmap, {x, v}, {"x", "v"}, c, dim, nc);
    k.p.project = project;
    auto o = backward(k, g, c, {nx, nv}, false, nc);
    return {o[0], o[1], o[2]};
  }
  static Tensor logmap(Tensor x, Tensor y, Tensor c, int64_t dim) {
    Call k = prepare("poincare_logmap", RowOp::Logmap, {x, y}, {"x", "y"}, c, dim, false);
    return forward(k);
  }
  static std::tuple<Tensor, Tensor, Tensor> logmap_backward(Tensor g, Tensor x, Tensor y, Tensor c, int64_t dim,
                                                             bool nx, bool ny, bool nc) {
    Call k = prepare("poincare_logmap_backward", RowOp::Logmap, {x, y}, {"x", "y"}, c, dim, nc);
    auto o = backward(k, g, c, {nx, ny}, false, nc);
    return {o[0], o[1], o[2]};
  }
  static Tensor dist(Tensor x, Tensor y, Tensor c, int64_t dim, bool keepdim) {
    Call k = prepare("poincare_dist", RowOp::Dist, {x, y}, {"x", "y"}, c, dim, false);
    return forward(k, keepdim);
  }
  static std::tuple<Tensor, Tensor, Tensor> dist_backward(Tensor g, Tensor x, Tensor y, Tensor c, int64_t dim,
                                                           bool keepdim, bool nx, bool ny, bool nc) {
    Call k = prepare("poincare_dist_backward", RowOp::Dist, {x, y}, {"x", "y"}, c, dim, nc);
    auto o = backward(k, g, c, {nx, ny}, false, nc, keepdim);
    return {o[0], o[1], o[2]};
  }
  static Tensor conformal_factor(Tensor x, Tensor c, int64_t dim, bool keepdim) {
    Call k = prepare("poincare_conformal_factor", RowOp::ConformalFactor, {x}, {"x"}, c, dim, false);
    return forward(k, keepdim);
  }
  static std::tuple<Tensor, Tensor> conformal_factor_backward(Tensor g, Tensor x, Tensor c, int64_t dim, bool keepdim,
                                                               bool nx, bool nc) {
    Call k = prepare("poincare_conformal_factor_backward", RowOp::ConformalFactor, {x}, {"x"}, c, dim, nc);
    auto o = backward(k, g, c, {nx}, false, nc, keepdim);
    return {o[0], o[1]};
  }
  static Tensor gyration(Tensor u, Tensor v, Tensor w, Tensor c, int64_t dim) {
    Call k = prepare("poincare_gyration", RowOp::Gyration, {u, v, w}, {"u", "v", "w"}, c, dim, false);
    return forward(k);
  }
  static std::tuple<Tensor, Tensor, Tensor, Tensor> gyration_backward(Tensor g, Tensor u, Tensor v, Tensor w, Tensor c,
                                                                       int64_t dim, bool nu, bool nv, bool nw,
                                                                       bool nc) {
    Call k = prepare("poincare_gyration_backward", RowOp::Gyration, {u, v, w}, {"u", "v", "w"}, c, dim, nc);
    auto o = backward(k, g, c, {nu, nv, nw}, false, nc);
    return {o[0], o[1], o[2], o[3]};
  }
  static Tensor transp(Tensor x, Tensor y, Tensor v, Tensor c, int64_t dim) {
    Call k = prepare("poincare_transp", RowOp::Transp, {x, y, v}, {"x", "y", "v"}, c, dim, false);
    return forward(k);
  }
  static std::tuple<Tensor, Tensor, Tensor, Tensor> transp_backward(Tensor g, Tensor x, Tensor y, Tensor v, Tensor c,
                                                                     int64_t dim, bool nx, bool ny, bool nv, bool nc) {
    Call k = prepare("poincare_transp_backward", RowOp::Transp, {x, y, v}, {"x", "y", "v"}, c, dim, nc);
    auto o = backward(k, g, c, {nx, ny, nv}, false, nc);
    return {o[0], o[1], o[2], o[3]};
  }
  static Tensor residual(Tensor a, Tensor b, Tensor c, int64_t dim) {
    Call k = prepare("poincare_residual", RowOp::Residual, {a, b}, {"a", "b"}, c, dim, false);
    return forward(k);
  }
  static std::tuple<Tensor, Tensor, Tensor> residual_backward(Tensor g, Tensor a, Tensor b, Tensor c, int64_t dim,
                                                               bool na, bool nb, bool nc) {
    Call k = prepare("poincare_residual_backward", RowOp::Residual, {a, b}, {"a", "b"}, c, dim, nc);
    auto o = backward(k, g, c, {na, nb}, false, nc);
    return {o[0], o[1], o[2]};
  }

  // ---- midpoint: x is moved to [batch, R, D] (reduce_dim, then dim, last; one copy unless already there).
  struct Mid {
    const char* op;
    Tensor xm, wm, keep_c;
    std::vector<int64_t> perm;  // permutation applied to x
    int64_t rd = 0, d = 0;
    MidpointParams p;
  };
  static Mid mid_prepare(const char* op, const Tensor& x, const std::optional<Tensor>& weights, const Tensor& c,
                         int64_t reduce_dim, int64_t dim, bool need_c) {
    Mid m;
    m.op = op;
    check_device_kind(x, B::kCuda, op);
    const DType xd = float_dtype(x, op, "x");
    m.d = norm_dim(op, x, dim);
    m.rd = norm_dim(op, x, reduce_dim, "reduce_dim");
    if (m.rd == m.d) fail(op, "reduce_dim must differ from dim, both are ", m.d);
    const int64_t nd = x.dim();
    for (int64_t i = 0; i < nd; ++i)
      if (i != m.rd && i != m.d) m.perm.push_back(i);
    m.perm.push_back(m.rd);
    m.perm.push_back(m.d);
    int64_t batch = 1;
    for (int64_t i = 0; i + 2 < nd; ++i) batch *= x.size(m.perm[i]);
    m.xm = torch::stable::contiguous(permute(x, m.perm));
    m.p.batch = batch;
    m.p.R = x.size(m.rd);
    m.p.D = x.size(m.d);
    m.p.dtype = xd;
    m.p.x = m.xm.const_data_ptr();
    if (weights.has_value()) {
      const Tensor& w = *weights;
      check_same_device(x, w, op, "weights");
      m.p.w_dtype = float_dtype(w, op, "weights");
      if (shape_of(w) != reduced_shape(x, m.d, false))
        fail(op, "weights has shape ", shape_str(w), " but must be x's shape without dim (the Python wrapper "
             "broadcasts)");
      // weights live in x's shape without dim: drop dim from the permutation.
      std::vector<int64_t> wp;
      for (int64_t i = 0; i + 1 < nd; ++i) {
        const int64_t a = m.perm[i];
        wp.push_back(a < m.d ? a : a - 1);
      }
      m.wm = torch::stable::contiguous(permute(w, wp));
      m.p.weights = m.wm.const_data_ptr();
    }
    m.p.c = curvature(op, c, x, need_c, m.keep_c);
    m.p.eps = default_eps(x);
    return m;
  }
  // torch::stable has no permute: a strided view through as_strided-free means, i.e. transposes.
  static Tensor permute(const Tensor& x, const std::vector<int64_t>& perm) {
    Tensor t = x;
    std::vector<int64_t> cur(perm.size());
    for (size_t i = 0; i < cur.size(); ++i) cur[i] = static_cast<int64_t>(i);
    for (size_t i = 0; i < perm.size(); ++i) {
      size_t j = i;
      while (cur[j] != perm[i]) ++j;
      if (j != i) {
        t = torch::stable::transpose(t, static_cast<int64_t>(i), static_cast<int64_t>(j));
        std::swap(cur[i], cur[j]);
      }
    }
    return t;
  }
  static std::vector<int64_t> mid_out_shape(const Mid& m, const Tensor& x, bool keepdim) {
    std::vector<int64_t> s;
    for (int64_t i = 0; i < x.dim(); ++i) {
      if (i != m.rd) s.push_back(x.size(i));
      else if (keepdim) s.push_back(1);
    }
    return s;
  }
  // out of the kernel is [batch..., D] in permuted order; view it back to x's order without reduce_dim.
  static Tensor mid_unpermute(const Mid& m, const Tensor& o, const Tensor& x, bool keepdim) {
    std::vector<int64_t> pshape;  // permuted shape without the reduce dim
    std::vector<int64_t> axes;    // original axis (in x without reduce_dim numbering) of each permuted axis
    for (size_t i = 0; i < m.perm.size(); ++i) {
      if (m.perm[i] == m.rd) continue;
      pshape.push_back(x.size(m.perm[i]));
      axes.push_back(m.perm[i] < m.rd ? m.perm[i] : m.perm[i] - 1);
    }
    Tensor t = torch::stable::reshape(o, pshape);
    std::vector<int64_t> inv(axes.size());
    for (size_t i = 0; i < axes.size(); ++i) inv[axes[i]] = static_cast<int64_t>(i);
    t = torch::stable::contiguous(permute(t, inv));
    if (keepdim) t = torch::stable::unsqueeze(t, m.rd);
    return t;
  }
  static Tensor midpoint(Tensor x, std::optional<Tensor> weights, Tensor c, int64_t reduce_dim, int64_t dim,
                         bool keepdim, bool project) {
    Mid m = mid_prepare("poincare_midpoint", x, weights, c, reduce_dim, dim, false);
    m.p.project = project;
    if (m.p.R == 0 && m.p.batch * m.p.D > 0) fail(m.op, "the reduced dimension ", m.rd, " is empty");
    Tensor o = empty_like_shape(x, {m.p.batch, m.p.D}, x.scalar_type());
    m.p.out = o.numel() ? o.mutable_data_ptr() : nullptr;
    Tensor ws = workspace(x, B::midpoint_workspace_bytes(m.p, false));
    m.p.workspace = ws.defined() ? ws.mutable_data_ptr() : nullptr;
    m.p.workspace_bytes = ws.defined() ? static_cast<size_t>(ws.numel()) : 0;
    check_status(B::midpoint_fwd(m.p, x), m.op);
    return mid_unpermute(m, o, x, keepdim);
  }
  static std::tuple<Tensor, Tensor, Tensor> midpoint_backward(Tensor g, Tensor x, std::optional<Tensor> weights,
                                                              Tensor c, int64_t reduce_dim, int64_t dim, bool keepdim,
                                                              bool project, bool nx, bool nw, bool nc) {
    Mid m = mid_prepare("poincare_midpoint_backward", x, weights, c, reduce_dim, dim, nc);
    m.p.project = project;
    nw = nw && weights.has_value();
    if (m.p.R == 0 && m.p.batch * m.p.D > 0) fail(m.op, "the reduced dimension ", m.rd, " is empty");
    check_same_device(x, g, m.op, "grad");
    if (g.scalar_type() != x.scalar_type())
      fail(m.op, "grad has dtype ", scalar_name(g.scalar_type()), " but x has ", scalar_name(x.scalar_type()));
    if (shape_of(g) != mid_out_shape(m, x, keepdim)) fail(m.op, "grad has shape ", shape_str(g), " unlike the output");
    // grad in permuted [batch..., D] order
    Tensor gg = keepdim ? torch::stable::squeeze(g, m.rd) : g;
    std::vector<int64_t> gp;
    for (size_t i = 0; i < m.perm.size(); ++i)
      if (m.perm[i] != m.rd) gp.push_back(m.perm[i] < m.rd ? m.perm[i] : m.perm[i] - 1);
    Tensor gm = torch::stable::contiguous(permute(gg, gp));
    m.p.grad = gm.const_data_ptr();
    Tensor dxm = nx ? empty_like_shape(x, shape_of(m.xm), x.scalar_type()) : unused_output(x, x.scalar_type());
    m.p.grad_x = nx && dxm.numel() ? dxm.mutable_data_ptr() : nullptr;
    const ScalarType wt = weights.has_value() ? weights->scalar_type() : x.scalar_type();
    Tensor dwm = nw ? empty_like_shape(x, shape_of(m.wm), wt) : unused_output(x, wt);
    m.p.grad_weights = nw && dwm.numel() ? dwm.mutable_data_ptr() : nullptr;
    Tensor dc = nc ? empty_like_shape(c, shape_of(c), c.scalar_type()) : unused_output(x, c.scalar_type());
    m.p.grad_c = nc ? dc.mutable_data_ptr() : nullptr;
    Tensor ws = workspace(x, B::midpoint_workspace_bytes(m.p, true));
    m.p.workspace = ws.defined() ? ws.mutable_data_ptr() : nullptr;
    m.p.workspace_bytes = ws.defined() ? static_cast<size_t>(ws.numel()) : 0;
    check_status(B::midpoint_bwd(m.p, x), m.op);
    Tensor dx = dxm, dw = dwm;
    if (nx) {
      std::vector<int64_t> inv(m.perm.size());
      for (size_t i = 0; i < m.perm.size(); ++i) inv[m.perm[i]] = static_cast<int64_t>(i);
      dx = torch::stable::contiguous(permute(dxm, inv));
    }
    if (nw) {
      std::vector<int64_t> wp;
      for (size_t i = 0; i + 1 < m.perm.size(); ++i) wp.push_back(m.perm[i] < m.d ? m.perm[i] : m.perm[i] - 1);
      std::vector<int64_t> inv(wp.size());
      for (size_t i = 0; i < wp.size(); ++i) inv[wp[i]] = static_cast<int64_t>(i);
      dw = torch::stable::contiguous(permute(dwm, inv));
    }
    return {dx, dw, dc};
  }
};

#define FASTNORM_POINCARE_IMPL(m, B, name) \
  m.impl("poincare_" #name, TORCH_BOX(&fastnorm::binding::poincare_ops::Impl<B>::name))
#define FASTNORM_REGISTER_POINCARE_IMPLS(m, B)                                  \
  FASTNORM_POINCARE_IMPL(m, B, project);                                        \
  FASTNORM_POINCARE_IMPL(m, B, project_backward);                               \
  FASTNORM_POINCARE_IMPL(m, B, mobius_add);                                     \
  FASTNORM_POINCARE_IMPL(m, B, mobius_add_backward);                            \
  FASTNORM_POINCARE_IMPL(m, B, mobius_scalar_mul);                              \
  FASTNORM_POINCARE_IMPL(m, B, mobius_scalar_mul_backward);                     \
  FASTNORM_POINCARE_IMPL(m, B, expmap0);                                        \
  FASTNORM_POINCARE_IMPL(m, B, expmap0_backward);                               \
  FASTNORM_POINCARE_IMPL(m, B, logmap0);                                        \
  FASTNORM_POINCARE_IMPL(m, B, logmap0_backward);                               \
  FASTNORM_POINCARE_IMPL(m, B, expmap);                                         \
  FASTNORM_POINCARE_IMPL(m, B, expmap_backward);                                \
  FASTNORM_POINCARE_IMPL(m, B, logmap);                                         \
  FASTNORM_POINCARE_IMPL(m, B, logmap_backward);                                \
  FASTNORM_POINCARE_IMPL(m, B, dist);                                           \
  FASTNORM_POINCARE_IMPL(m, B, dist_backward);                                  \
  FASTNORM_POINCARE_IMPL(m, B, conformal_factor);                               \
  FASTNORM_POINCARE_IMPL(m, B, conformal_factor_backward);                      \
  FASTNORM_POINCARE_IMPL(m, B, gyration);                                       \
  FASTNORM_POINCARE_IMPL(m, B, gyration_backward);                              \
  FASTNORM_POINCARE_IMPL(m, B, transp);                                         \
  FASTNORM_POINCARE_IMPL(m, B, transp_backward);                                \
  FASTNORM_POINCARE_IMPL(m, B, midpoint);                                       \
  FASTNORM_POINCARE_IMPL(m, B, midpoint_backward);                              \
  FASTNORM_POINCARE_IMPL(m, B, residual);                                       \
  FASTNORM_POINCARE_IMPL(m, B, residual_backward)

}  // namespace poincare_ops
}  // namespace binding
}  // namespace fastnorm

"""Poincaré-ball core ops, functional API (specs/poincare.md §2.1, §3.1-§3.4, §3.9 residual); re-exported as
``fastnorm.poincare``.

``c`` is the curvature magnitude (sectional curvature -c, ball radius 1/sqrt(c)): a Python float (> 0, checked)
or a 0-dim / 1-element floating tensor (not value-checked: that would need a device sync; c <= 0 gives NaN),
which may require grad (learnable curvature; its gradient comes from the kernels, §3.6). ``dim`` is the vector
dimension, all others are batch dims. Point/vector arguments broadcast against each other (``dim`` refers to
the broadcast shape); the kernels then see contiguous tensors and autograd sums the grads back through the
broadcast. Every op has a hand-written CPU/CUDA forward and backward; the backward ops are not differentiable.
"""
import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..reference.poincare import default_eps

ops = torch.ops.fastnorm

Curv = Union[float, Tensor]

__all__ = ["project", "mobius_add", "mobius_scalar_mul", "expmap0", "logmap0", "expmap", "logmap", "dist",
           "conformal_factor", "gyration", "transp", "midpoint", "poincare_residual", "default_eps"]

_FLOATS = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"fastnorm.{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"fastnorm.{op}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}")
    if t.dim() < 1:
        raise ValueError(f"fastnorm.{op}: {name} must have at least one dimension")


def _curv(op: str, c: Curv, x: Tensor) -> Tensor:
    """c as a 0-dim tensor: a Python float is checked (> 0, finite) and passed as a CPU float64 scalar (read on
    the host, no device copy); a tensor is passed as it is (its gradient flows)."""
    if isinstance(c, Tensor):
        if not c.is_floating_point():
            raise TypeError(f"fastnorm.{op}: c must be a float or a floating tensor, got {c.dtype}")
        if c.numel() != 1:
            raise ValueError(f"fastnorm.{op}: c must have exactly one element, got shape {list(c.shape)}")
        return c
    if isinstance(c, bool) or not isinstance(c, (int, float)):
        raise TypeError(f"fastnorm.{op}: c must be a float or a tensor, got {type(c).__name__}")
    c = float(c)
    if not (c > 0) or not math.isfinite(c):
        raise ValueError(f"fastnorm.{op}: c must be a finite value > 0, got {c}")
    return torch.tensor(c, dtype=torch.float64)


def _dim(op: str, x: Tensor, dim: int, name: str = "dim") -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"fastnorm.{op}: {name} must be an int, got {type(dim).__name__}")
    nd = x.dim()
    if not -nd <= dim < nd:
        raise ValueError(f"fastnorm.{op}: {name} {dim} is out of range for a tensor of {nd} dimensions")
    return dim % nd


def _broadcast(op: str, names, *ts):
    for n, t in zip(names, ts):
        _check_tensor(op, n, t)
    dt, dev = ts[0].dtype, ts[0].device
    for n, t in zip(names[1:], ts[1:]):
        if t.dtype != dt:
            raise TypeError(f"fastnorm.{op}: {n} has dtype {t.dtype} but {names[0]} has {dt}")
        if t.device != dev:
            raise ValueError(f"fastnorm.{op}: {n} is on {t.device} but {names[0]} is on {dev}")
    try:
        return torch.broadcast_tensors(*ts)
    except RuntimeError:
        shapes = ", ".join(f"{n} {list(t.shape)}" for n, t in zip(names, ts))
        raise ValueError(f"fastnorm.{op}: shapes do not broadcast: {shapes}") from None


def _without_dim(op: str, name: str, t: Tensor, x: Tensor, d: int) -> Tensor:
    """t broadcast to x's shape without dim `d`."""
    shape = x.shape[:d] + x.shape[d + 1:]
    try:
        return t.expand(shape)
    except RuntimeError:
        raise ValueError(f"fastnorm.{op}: {name} of shape {list(t.shape)} does not broadcast to x's shape without "
                         f"dim, {list(shape)}") from None


# ---------------------------------------------------------------------------------------------- public API
def project(x: Tensor, c: Curv, *, dim: int = -1, eps: Optional[float] = None) -> Tensor:
    """Scale every vector with sqrt(c)|x| > 1 - eps onto the radius (1 - eps)/sqrt(c) (eps=None: §4 table)."""
    _check_tensor("poincare_project", "x", x)
    e = default_eps(x.dtype) if eps is None else float(eps)
    if not 0 < e < 1:
        raise ValueError(f"fastnorm.poincare_project: eps must lie in (0, 1), got {e}")
    return ops.poincare_project(x, _curv("poincare_project", c, x), _dim("poincare_project", x, dim), e)


def mobius_add(x: Tensor, y: Tensor, c: Curv, *, dim: int = -1, project: bool = True) -> Tensor:
    """Möbius addition x (+)_c y, projected onto the ball when ``project``."""
    x, y = _broadcast("poincare_mobius_add", ("x", "y"), x, y)
    return ops.poincare_mobius_add(x, y, _curv("poincare_mobius_add", c, x), _dim("poincare_mobius_add", x, dim),
                                   bool(project))


def mobius_scalar_mul(r: Union[float, Tensor], x: Tensor, c: Curv, *, dim: int = -1, project: bool = True) -> Tensor:
    """Möbius scalar multiplication r (x)_c x; r is a float or a tensor broadcastable to x's shape without dim."""
    op = "poincare_mobius_scalar_mul"
    _check_tensor(op, "x", x)
    d = _dim(op, x, dim)
    if isinstance(r, Tensor):
        if not r.is_floating_point():
            raise TypeError(f"fastnorm.{op}: r must be a float or a floating tensor, got {r.dtype}")
        if r.device != x.device:
            raise ValueError(f"fastnorm.{op}: r is on {r.device} but x is on {x.device}")
        rr = _without_dim(op, "r", r, x, d).unsqueeze(d)
    else:
        rdt = torch.float64 if x.dtype == torch.float64 else torch.float32
        rr = torch.full(x.shape[:d] + (1,) + x.shape[d + 1:], float(r), dtype=rdt, device=x.device)
    return ops.poincare_mobius_scalar_mul(rr, x, _curv(op, c, x), d, bool(project))


def expmap0(v: Tensor, c: Curv, *, dim: int = -1, project: bool = True) -> Tensor:
    """Exponential map at the origin (tangent vector -> ball point)."""
    _check_tensor("poincare_expmap0", "v", v)
    return ops.poincare_expmap0(v, _curv("poincare_expmap0", c, v), _dim("poincare_expmap0", v, dim), bool(project))


def logmap0(y: Tensor, c: Curv, *, dim: int = -1) -> Tensor:
    """Logarithmic map at the origin (ball point -> tangent vector)."""
    _check_tensor("poincare_logmap0", "y", y)
    return ops.poincare_logmap0(y, _curv("poincare_logmap0", c, y), _dim("poincare_logmap0", y, dim))


def expmap(x: Tensor, v: Tensor, c: Curv, *, dim: int = -1, project: bool = True) -> Tensor:
    """Exponential map at x of the tangent vector v."""
    x, v = _broadcast("poincare_expmap", ("x", "v"), x, v)
    return ops.poincare_expmap(x, v, _curv("poincare_expmap", c, x), _dim("poincare_expmap", x, dim), bool(project))


def logmap(x: Tensor, y: Tensor, c: Curv, *, dim: int = -1) -> Tensor:
    """Logarithmic map at x of the point y."""
    x, y = _broadcast("poincare_logmap", ("x", "y"), x, y)
    return ops.poincare_logmap(x, y, _curv("poincare_logmap", c, x), _dim("poincare_logmap", x, dim))


def dist(x: Tensor, y: Tensor, c: Curv, *, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Geodesic distance 2 artanh(sqrt(c)|(-x) (+) y|)/sqrt(c)."""
    x, y = _broadcast("poincare_dist", ("x", "y"), x, y)
    return ops.poincare_dist(x, y, _curv("poincare_dist", c, x), _dim("poincare_dist", x, dim), bool(keepdim))


def conformal_factor(x: Tensor, c: Curv, *, dim: int = -1, keepdim: bool = False) -> Tensor:
    """lambda_x = 2/(1 - c|x|^2)."""
    _check_tensor("poincare_conformal_factor", "x", x)
    return ops.poincare_conformal_factor(x, _curv("poincare_conformal_factor", c, x),
                                         _dim("poincare_conformal_factor", x, dim), bool(keepdim))


def gyration(u: Tensor, v: Tensor, w: Tensor, c: Curv, *, dim: int = -1) -> Tensor:
    """gyr[u, v] w in closed form (w may be any vector)."""
    u, v, w = _broadcast("poincare_gyration", ("u", "v", "w"), u, v, w)
    return ops.poincare_gyration(u, v, w, _curv("poincare_gyration", c, u), _dim("poincare_gyration", u, dim))


def transp(x: Tensor, y: Tensor, v: Tensor, c: Curv, *, dim: int = -1) -> Tensor:
    """Parallel transport of v from T_x to T_y."""
    x, y, v = _broadcast("poincare_transp", ("x", "y", "v"), x, y, v)
    return ops.poincare_transp(x, y, v, _curv("poincare_transp", c, x), _dim("poincare_transp", x, dim))


def midpoint(x: Tensor, c: Curv, weights: Optional[Tensor] = None, *, reduce_dim: Union[int, Sequence[int]] = 0,
             dim: int = -1, keepdim: bool = False, project: bool = True) -> Tensor:
    """Weighted gyromidpoint of the points along ``reduce_dim`` (an int or a tuple not containing ``dim``);
    ``weights`` broadcast to x's shape without ``dim`` (default: all 1). Equals geoopt's ``weighted_midpoint``
    and the Einstein midpoint in Klein coordinates (meaningful for non-negative weights)."""
    op = "poincare_midpoint"
    _check_tensor(op, "x", x)
    cc = _curv(op, c, x)
    d = _dim(op, x, dim)
    rds = (reduce_dim,) if isinstance(reduce_dim, int) else tuple(reduce_dim)
    if len(rds) == 0:
        raise ValueError(f"fastnorm.{op}: reduce_dim must name at least one dimension")
    rds = tuple(sorted({_dim(op, x, r, "reduce_dim") for r in rds}))
    if d in rds:
        raise ValueError(f"fastnorm.{op}: reduce_dim {reduce_dim} contains dim {dim}")
    for r in rds:
        if x.shape[r] == 0:
            raise ValueError(f"fastnorm.{op}: the reduced dimension {r} is empty")
    w = None
    if weights is not None:
        if not isinstance(weights, Tensor) or not weights.is_floating_point():
            raise TypeError(f"fastnorm.{op}: weights must be a floating tensor, got {weights.dtype}")
        if weights.device != x.device:
            raise ValueError(f"fastnorm.{op}: weights is on {weights.device} but x is on {x.device}")
        w = _without_dim(op, "weights", weights, x, d)
    if len(rds) == 1:
        return ops.poincare_midpoint(x, w, cc, rds[0], d, bool(keepdim), bool(project))
    # Several reduce dims: move them to the front and merge them into one (a copy unless already adjacent).
    k = len(rds)
    xm = x.movedim(rds, tuple(range(k))).flatten(0, k - 1)
    dm = d - sum(1 for r in rds if r < d) + 1
    wm = None
    if w is not None:
        wr = tuple(r if r < d else r - 1 for r in rds)
        wm = w.movedim(wr, tuple(range(k))).flatten(0, k - 1)
    out = ops.poincare_midpoint(xm, wm, cc, 0, dm, False, bool(project))
    if keepdim:
        for r in rds:
            out = out.unsqueeze(r)
    return out


def poincare_residual(a: Tensor, b: Tensor, c: Curv, *, dim: int = 1) -> Tensor:
    """log_0(proj(proj(exp_0(a)) (+) proj(exp_0(b)))) on tangent vectors (the Poincaré ResNet skip)."""
    a, b = _broadcast("poincare_residual", ("a", "b"), a, b)
    return ops.poincare_residual(a, b, _curv("poincare_residual", c, a), _dim("poincare_residual", a, dim))


# ---------------------------------------------------------------------------------------------- fake kernels
def _reduced(x, dim, keepdim):
    s = list(x.shape)
    if keepdim:
        s[dim] = 1
    else:
        del s[dim]
    return s


def _vec_fake(*ts):
    return torch.empty_like(ts[0], memory_format=torch.contiguous_format)


for _name, _nvec in (("project", 1), ("mobius_add", 2), ("expmap0", 1), ("logmap0", 1), ("expmap", 2),
                     ("logmap", 2), ("gyration", 3), ("transp", 3), ("residual", 2)):
    def _mk(nvec):
        def fake(*args):
            return _vec_fake(*args[:nvec])
        return fake
    torch.library.register_fake(f"fastnorm::poincare_{_name}")(_mk(_nvec))


@torch.library.register_fake("fastnorm::poincare_mobius_scalar_mul")
def _(r, x, c, dim, project):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.register_fake("fastnorm::poincare_dist")
def _(x, y, c, dim, keepdim):
    return x.new_empty(_reduced(x, dim, keepdim))


@torch.library.register_fake("fastnorm::poincare_conformal_factor")
def _(x, c, dim, keepdim):
    return x.new_empty(_reduced(x, dim, keepdim))


@torch.library.register_fake("fastnorm::poincare_midpoint")
def _(x, weights, c, reduce_dim, dim, keepdim, project):
    return x.new_empty(_reduced(x, reduce_dim % x.dim(), keepdim))


# Backward ops: (grad, *forward args, *need flags) -> one grad per tensor input (empty [0] when not needed).
# _SPECS: op -> (positions of the tensor inputs in the forward args, number of forward args).
_SPECS = {
    "project": ((0, 1), 4),
    "mobius_add": ((0, 1, 2), 5),
    "mobius_scalar_mul": ((0, 1, 2), 5),
    "expmap0": ((0, 1), 4),
    "logmap0": ((0, 1), 3),
    "expmap": ((0, 1, 2), 5),
    "logmap": ((0, 1, 2), 4),
    "dist": ((0, 1, 2), 5),
    "conformal_factor": ((0, 1), 4),
    "gyration": ((0, 1, 2, 3), 5),
    "transp": ((0, 1, 2, 3), 5),
    "midpoint": ((0, 1, 2), 7),
    "residual": ((0, 1, 2), 4),
}


def _bwd_fake_factory(name):
    pos, nargs = _SPECS[name]

    def fake(grad, *args):
        fwd, needs = args[:nargs], args[nargs:]
        needs = tuple(needs) + (True,) * (len(pos) - len(needs))
        ref = fwd[pos[0]] if name != "mobius_scalar_mul" else fwd[1]
        outs = []
        for p, need in zip(pos, needs):
            t = fwd[p]
            if t is None or not need:
                dt = t.dtype if t is not None else ref.dtype
                outs.append(ref.new_empty((0,), dtype=dt))
            else:
                outs.append(t.new_empty(t.shape))
        return tuple(outs)
    return fake


for _name in _SPECS:
    torch.library.register_fake(f"fastnorm::poincare_{_name}_backward")(_bwd_fake_factory(_name))


# ---------------------------------------------------------------------------------------------- autograd
def _autograd_factory(name):
    pos, nargs = _SPECS[name]
    bwd_op = getattr(ops, f"poincare_{name}_backward")

    def setup(ctx, inputs, output):
        ctx.fwd_args = tuple(None if isinstance(a, Tensor) else a for a in inputs)
        ctx.save_for_backward(*[inputs[p] for p in pos])

    def backward(ctx, grad):
        saved = ctx.saved_tensors
        args = list(ctx.fwd_args)
        for p, t in zip(pos, saved):
            args[p] = t
        needs = [bool(ctx.needs_input_grad[p]) and saved[i] is not None for i, p in enumerate(pos)]
        if not any(needs):
            return (None,) * nargs
        grads = bwd_op(grad.contiguous(), *args, *needs)
        out = [None] * nargs
        for i, p in enumerate(pos):
            if needs[i]:
                g = grads[i]
                t = saved[i]
                out[p] = g.reshape(t.shape) if g.shape != t.shape else g
        return tuple(out)
    return setup, backward


def _no_double_backward_factory(name):
    def fn(ctx, *grads):
        raise RuntimeError(f"fastnorm.poincare_{name}: double backward is not supported (the backward op has no "
                           f"gradient)")
    return fn


for _name in _SPECS:
    _setup, _backward = _autograd_factory(_name)
    torch.library.register_autograd(f"fastnorm::poincare_{_name}", _backward, setup_context=_setup)
    torch.library.register_autograd(f"fastnorm::poincare_{_name}_backward", _no_double_backward_factory(_name),
                                    setup_context=lambda ctx, inputs, output: None)
from .poincare_layers import beta_concat_ratio, poincare_conv2d, poincare_linear, poincare_midpoint_batch_norm  # noqa: E402,F401,E501  (layers: ops/poincare_layers.py)

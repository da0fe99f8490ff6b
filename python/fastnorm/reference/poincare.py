"""Plain-PyTorch reference of the Poincaré-ball core ops (specs/poincare.md §3.1-§3.4, §3.9 residual, §3.10).

Elementwise torch ops and autograd only, float64 capable, with the constants of §4; the honest "plain
autograd" baseline of the benchmarks and the float64 oracle of the tests. Same names and signatures as the
functional API (``fastnorm.poincare``); ``c`` is a Python float or a 0-dim/1-element tensor. Functions that
project also take ``eps`` (None: the per-dtype table of §4, ``default_eps``) so that a float64 run of the
reference can use the float32 radius when it is the oracle of a float32 op.
"""
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

NU = 1e-15            # norm floor
DEN_FLOOR = 1e-15     # floors of the Möbius / gyration denominators and of 1 - c|x|^2
TANH_MAX = 15.0       # tanh argument clamp
ARTANH_MAX = 1 - 1e-7  # artanh argument clamp
Q_FLOOR = 1e-10       # midpoint: sign-preserving floor of |Q|

_EPS = {torch.float64: 1e-5, torch.float32: 4e-3, torch.float16: 4e-3, torch.bfloat16: 1e-2}


def default_eps(dtype: torch.dtype) -> float:
    """Projection eps of §4: the radius is (1 - eps)/sqrt(c)."""
    return _EPS[dtype]


def _c(c, like: Tensor) -> Tensor:
    if isinstance(c, Tensor):
        return c.reshape(()).to(like.dtype)
    return torch.tensor(float(c), dtype=like.dtype, device=like.device)


def _eps(eps, x: Tensor) -> float:
    return default_eps(x.dtype) if eps is None else float(eps)


def _sqnorm(x: Tensor, dim: int) -> Tensor:
    return (x * x).sum(dim, keepdim=True)


def _norm(x: Tensor, dim: int) -> Tensor:
    return _sqnorm(x, dim).clamp_min(NU * NU).sqrt()


def _artanh(x: Tensor) -> Tensor:
    x = x.clamp(max=ARTANH_MAX)
    return 0.5 * (torch.log1p(x) - torch.log1p(-x))


def project(x: Tensor, c, *, dim: int = -1, eps: Optional[float] = None) -> Tensor:
    """Scale vectors with sqrt(c)|x| > 1 - eps onto the radius (1 - eps)/sqrt(c)."""
    cc = _c(c, x)
    maxnorm = (1 - _eps(eps, x)) / cc.sqrt()
    n = _norm(x, dim)
    return torch.where(n > maxnorm, x / n * maxnorm, x)


def mobius_add(x: Tensor, y: Tensor, c, *, dim: int = -1, project: bool = True, eps: Optional[float] = None) -> Tensor:
    cc = _c(c, x)
    x, y = torch.broadcast_tensors(x, y)
    x2, y2, xy = _sqnorm(x, dim), _sqnorm(y, dim), (x * y).sum(dim, keepdim=True)
    num = (1 + 2 * cc * xy + cc * y2) * x + (1 - cc * x2) * y
    den = (1 + 2 * cc * xy + cc * cc * x2 * y2).clamp_min(DEN_FLOOR)
    z = num / den
    return _project(z, cc, dim, eps) if project else z


def _project(x, cc, dim, eps):
    return globals()["project"](x, cc, dim=dim, eps=eps)


def mobius_scalar_mul(r, x: Tensor, c, *, dim: int = -1, project: bool = True, eps: Optional[float] = None) -> Tensor:
    cc = _c(c, x)
    sc = cc.sqrt()
    if isinstance(r, Tensor):
        r = _without_dim(r, x, dim)
    n = _norm(x, dim)
    t = torch.tanh((r * _artanh(sc * n)).clamp(-TANH_MAX, TANH_MAX))
    y = t * x / (n * sc)
    return _project(y, cc, dim, eps) if project else y


def expmap0(v: Tensor, c, *, dim: int = -1, project: bool = True, eps: Optional[float] = None) -> Tensor:
    cc = _c(c, v)
    sc = cc.sqrt()
    n = _norm(v, dim)
    y = torch.tanh((sc * n).clamp(max=TANH_MAX)) * v / (sc * n)
    return _project(y, cc, dim, eps) if project else y


def logmap0(y: Tensor, c, *, dim: int = -1) -> Tensor:
    cc = _c(c, y)
    sc = cc.sqrt()
    n = _norm(y, dim)
    return _artanh(sc * n) * y / (sc * n)


def conformal_factor(x: Tensor, c, *, dim: int = -1, keepdim: bool = False) -> Tensor:
    cc = _c(c, x)
    lam = 2 / (1 - cc * _sqnorm(x, dim)).clamp_min(DEN_FLOOR)
    return lam if keepdim else lam.squeeze(dim)


def expmap(x: Tensor, v: Tensor, c, *, dim: int = -1, project: bool = True, eps: Optional[float] = None) -> Tensor:
    cc = _c(c, x)
    sc = cc.sqrt()
    x, v = torch.broadcast_tensors(x, v)
    lam = conformal_factor(x, cc, dim=dim, keepdim=True)
    n = _norm(v, dim)
    h = torch.tanh((sc * lam * n / 2).clamp(max=TANH_MAX)) * v / (sc * n)
    return mobius_add(x, h, cc, dim=dim, project=project, eps=eps)


def logmap(x: Tensor, y: Tensor, c, *, dim: int = -1) -> Tensor:
    cc = _c(c, x)
    x, y = torch.broadcast_tensors(x, y)
    z = mobius_add(-x, y, cc, dim=dim, project=False)
    return (1 - cc * _sqnorm(x, dim)).clamp_min(DEN_FLOOR) * logmap0(z, cc, dim=dim)


def dist(x: Tensor, y: Tensor, c, *, dim: int = -1, keepdim: bool = False) -> Tensor:
    cc = _c(c, x)
    sc = cc.sqrt()
    z = mobius_add(-x, y, cc, dim=dim, project=False)
    d = 2 * _artanh(sc * _norm(z, dim)) / sc
    return d if keepdim else d.squeeze(dim)


def gyration(u: Tensor, v: Tensor, w: Tensor, c, *, dim: int = -1) -> Tensor:
    """gyr[u, v] w in closed form (never four Möbius additions)."""
    cc = _c(c, u)
    u, v, w = torch.broadcast_tensors(u, v, w)
    c2 = cc * cc
    uu, vv = _sqnorm(u, dim), _sqnorm(v, dim)
    uv, uw, vw = (u * v).sum(dim, keepdim=True), (u * w).sum(dim, keepdim=True), (v * w).sum(dim, keepdim=True)
    a = -c2 * uw * vv + cc * vw + 2 * c2 * uv * vw
    b = -c2 * vw * uu - cc * uw
    d = (1 + 2 * cc * uv + c2 * uu * vv).clamp_min(DEN_FLOOR)
    return w + 2 * (a * u + b * v) / d


def transp(x: Tensor, y: Tensor, v: Tensor, c, *, dim: int = -1) -> Tensor:
    """Parallel transport of v from T_x to T_y: gyr[y, -x] v * lambda_x / lambda_y."""
    cc = _c(c, x)
    x, y, v = torch.broadcast_tensors(x, y, v)
    rho = (1 - cc * _sqnorm(y, dim)).clamp_min(DEN_FLOOR) / (1 - cc * _sqnorm(x, dim)).clamp_min(DEN_FLOOR)
    return gyration(y, -x, v, cc, dim=dim) * rho


def _without_dim(t: Tensor, x: Tensor, dim: int) -> Tensor:
    """t broadcast to x's shape without `dim`, then given a size-1 `dim` (so it broadcasts against x)."""
    dim = dim % x.dim()
    shape = x.shape[:dim] + x.shape[dim + 1:]
    return t.expand(shape).unsqueeze(dim)


def _merge_reduce(x: Tensor, reduce_dim, dim: int):
    nd = x.dim()
    dim = dim % nd
    rd = (reduce_dim,) if isinstance(reduce_dim, int) else tuple(reduce_dim)
    rd = tuple(sorted(r % nd for r in rd))
    return rd, dim


def midpoint(x: Tensor, c, weights: Optional[Tensor] = None, *, reduce_dim: Union[int, Sequence[int]] = 0,
             dim: int = -1, keepdim: bool = False, project: bool = True, eps: Optional[float] = None) -> Tensor:
    """Weighted gyromidpoint (= geoopt weighted_midpoint, Einstein midpoint in Klein coordinates)."""
    cc = _c(c, x)
    rd, vd = _merge_reduce(x, reduce_dim, dim)
    lam = conformal_factor(x, cc, dim=vd, keepdim=True)
    if weights is None:
        w = torch.ones((), dtype=x.dtype, device=x.device)
    else:
        w = _without_dim(weights, x, vd)
    V = (w * lam * x).sum(rd, keepdim=True)
    Q = (w * (lam - 1)).sum(rd, keepdim=True)
    Q = torch.where(Q >= 0, Q.clamp_min(Q_FLOOR), Q.clamp_max(-Q_FLOOR))
    t = V / Q
    sigma = (1 - cc * _sqnorm(t, vd)).clamp_min(0).sqrt()
    m = t / (1 + sigma)
    if project:
        m = _project(m, cc, vd, eps)
    if not keepdim:
        for r in reversed(rd):
            m = m.squeeze(r)
    return m


def residual(a: Tensor, b: Tensor, c, *, dim: int = 1, eps: Optional[float] = None) -> Tensor:
    """log_0(proj(proj(exp_0(a)) (+) proj(exp_0(b)))) on tangent vectors."""
    cc = _c(c, a)
    xa = expmap0(a, cc, dim=dim, eps=eps)
    xb = expmap0(b, cc, dim=dim, eps=eps)
    return logmap0(mobius_add(xa, xb, cc, dim=dim, eps=eps), cc, dim=dim)


poincare_residual = residual

__all__ = ["default_eps", "project", "mobius_add", "mobius_scalar_mul", "expmap0", "logmap0", "expmap", "logmap",
           "dist", "conformal_factor", "gyration", "transp", "midpoint", "residual", "poincare_residual"]

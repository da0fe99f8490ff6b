"""Plain-PyTorch reference of the Poincaré layers (specs/poincare.md §3.5, §3.7, §3.8, §3.10).

Elementwise torch ops and autograd only (float64 capable), structured like the anchors (the official Poincaré
ResNet code) so that it is the honest "plain autograd" baseline: conv = β-scale → ``F.unfold`` → exp0 → FC →
project → log0; batch norm = exp0, midpoint, d², log_m, transport, rescale, exp_μ, log0 (the textbook
composite, not the closed form of the kernels). ``buggy_lambda=True`` reproduces the official FC's conformal
factor 2·(1 − c‖x‖²) (the kernels use the correct 2/(1 − c‖x‖²)). Functions that project take ``eps``
(None: the per-dtype table of §4) so that a float64 run can use a float32 op's radius.
"""
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from . import poincare as P

IntPair = Union[int, Tuple[int, int]]


def beta_concat_ratio(n_in: int, n_out: int) -> float:
    """B(n_out/2, ½) / B(n_in/2, ½)."""
    def lbeta(a):
        return math.lgamma(a) + math.lgamma(0.5) - math.lgamma(a + 0.5)
    return math.exp(lbeta(0.5 * n_out) - lbeta(0.5 * n_in))


def poincare_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], c, *, tangent_input: bool = False,
                    tangent_output: bool = False, project: bool = True, buggy_lambda: bool = False,
                    eps: Optional[float] = None) -> Tensor:
    """HNN++ FC (§3.5): v_k = 2ζ_k·asinh(λ√c⟨x, z_k⟩ch_k/ζ_k − (λ − 1)sh_k)/√c, y = w/(1 + sqrt(1 + ‖w‖²))/√c with
    w = sinh(√c v) (evaluated max-rescaled, as the kernels, so that it does not overflow)."""
    cc = P._c(c, x)
    sc = cc.sqrt()
    if tangent_input:
        x = P.expmap0(x, cc, dim=-1, eps=eps)
    x2 = (x * x).sum(-1, keepdim=True)
    if buggy_lambda:
        lam = 2 * (1 - cc * x2)
    else:
        lam = 2 / (1 - cc * x2).clamp_min(P.DEN_FLOOR)
    w = weight.to(x.dtype)
    zeta = w.norm(dim=-1).clamp_min(P.NU)
    r = bias.to(x.dtype) if bias is not None else torch.zeros_like(zeta)
    ch, sh = torch.cosh(2 * sc * r), torch.sinh(2 * sc * r)
    a = x @ w.t()
    t = lam * sc * a * ch / zeta - (lam - 1) * sh
    s = 2 * zeta * torch.asinh(t)
    mx = s.abs().amax(-1, keepdim=True)
    u = (torch.exp(s - mx) - torch.exp(-s - mx)) / 2
    e = torch.exp(-mx)
    y = u / (sc * (e + (e * e + (u * u).sum(-1, keepdim=True)).sqrt()))
    if project:
        y = P.project(y, cc, dim=-1, eps=eps)
    if tangent_output:
        y = P.logmap0(y, cc, dim=-1)
    return y


def _pair(v: IntPair) -> Tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def poincare_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], c, *, stride: IntPair = 1,
                    padding: IntPair = 0, dilation: IntPair = 1, buggy_lambda: bool = False,
                    eps: Optional[float] = None) -> Tensor:
    """β-scale → unfold → exp0 → FC → project → log0 on tangent NCHW maps (§3.7)."""
    cc = P._c(c, x)
    B, cin, H, W = x.shape
    cout, _, kh, kw = weight.shape
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    n = cin * kh * kw
    beta = beta_concat_ratio(cin, n)
    cols = F.unfold(beta * x, (kh, kw), dilation=dilation, padding=padding, stride=stride)  # [B, n, L]
    ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    v = cols.transpose(1, 2)  # [B, L, n]
    xb = P.expmap0(v, cc, dim=-1, eps=eps)
    y = poincare_linear(xb, weight.reshape(cout, n), bias, cc, project=True, buggy_lambda=buggy_lambda, eps=eps)
    out = P.logmap0(y, cc, dim=-1)
    return out.transpose(1, 2).reshape(B, cout, ho, wo)


def poincare_midpoint_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, c, running_mean: Optional[Tensor] = None,
                                 running_var: Optional[Tensor] = None, *, training: bool = True,
                                 momentum: Optional[float] = 0.1, eps: float = 1e-6, dim: int = 1,
                                 num_batches_tracked: Optional[Tensor] = None,
                                 proj_eps: Optional[float] = None) -> Tensor:
    """Textbook midpoint batch norm (§3.8): out = log0(exp_μ(sc·P_{m→μ}(log_m x))), sc = sqrt(γ/(σ² + eps))."""
    cc = P._c(c, x)
    dim = dim % x.dim()
    C = x.shape[dim]
    rows = x.movedim(dim, -1).reshape(-1, C)
    N = rows.shape[0]
    xb = P.expmap0(rows, cc, dim=-1, eps=proj_eps)
    mu = P.expmap0(bias.to(x.dtype), cc, dim=-1, eps=proj_eps)
    use_batch = training or running_mean is None
    if use_batch:
        if N == 1:
            raise ValueError("fastnorm.poincare_midpoint_batch_norm: expected more than 1 value per channel when "
                             "training")
        m = P.midpoint(xb, cc, reduce_dim=0, dim=-1, eps=proj_eps)
        d = P.dist(m.expand_as(xb), xb, cc, dim=-1)
        var = (d * d).mean()
    else:
        m = P.project(running_mean.to(x.dtype), cc, dim=-1, eps=proj_eps)
        var = running_var.to(x.dtype).reshape(())
    sc = (weight.to(x.dtype).reshape(()) / (var + eps)).sqrt()
    v = P.logmap(m.expand_as(xb), xb, cc, dim=-1)
    pv = P.transp(m.expand_as(xb), mu.expand_as(xb), v, cc, dim=-1)
    y = P.expmap(mu.expand_as(xb), sc * pv, cc, dim=-1, eps=proj_eps)
    out = P.logmap0(y, cc, dim=-1)
    if training and running_mean is not None:
        with torch.no_grad():
            k = momentum if momentum is not None else 1.0 / float(num_batches_tracked)
            bn_running_update_(running_mean, running_var, m.detach(), var.detach(), cc.detach(), k, N)
    shape = list(x.movedim(dim, -1).shape)
    return out.reshape(shape).movedim(-1, dim)


def bn_running_update_(running_mean: Tensor, running_var: Tensor, mean: Tensor, var: Tensor, c, momentum: float,
                       count: int) -> None:
    """running_mean ← proj(rm ⊕ (k ⊗ ((−rm) ⊕ m))) (= exp_rm(k·log_rm(m))), running_var ← (1−k)·rv + k·σ²·N/(N−1)."""
    cc = P._c(c, running_mean.double())
    rm = P.project(running_mean.double(), cc, dim=-1, eps=P.default_eps(running_mean.dtype))
    z = P.mobius_add(-rm, mean.double(), cc, dim=-1, project=False)
    step = P.mobius_scalar_mul(float(momentum), z, cc, dim=-1, project=False)
    new = P.mobius_add(rm, step, cc, dim=-1, eps=P.default_eps(running_mean.dtype))
    running_mean.copy_(new.to(running_mean.dtype))
    nv = (1 - momentum) * running_var.double() + momentum * var.double() * count / (count - 1)
    running_var.copy_(nv.to(running_var.dtype).reshape(running_var.shape))


poincare_residual = P.residual

__all__ = ["beta_concat_ratio", "poincare_linear", "poincare_conv2d", "poincare_midpoint_batch_norm",
           "bn_running_update_", "poincare_residual"]

"""Poincaré layers, functional API (specs/poincare.md §2.1, §3.5, §3.7, §3.8); re-exported by
``fastnorm.ops.poincare`` and ``fastnorm.poincare``.

Every function is one custom op with hand-written CPU/CUDA forward and backward kernels (curvature gradient
included, §3.6). Nothing output-sized is saved for backward: the backward recomputes the pre-activations in
chunks (FC, conv) or row by row (batch norm). ``c`` is a Python float (> 0, checked) or a one-element floating
tensor (not value-checked; may require grad).

**HNN++ FC with the conformal factor fixed.** The official Poincaré ResNet code computes the conformal factor
of the FC input as ``2 * (1 - c‖x‖²)``; the correct factor is ``λ = 2 / (1 - c‖x‖²)`` (HypLL issue #42 / PR #43).
fastnorm uses the correct one, which makes ``½·I`` weights with zero bias the exact identity on the ball;
``fastnorm.reference.poincare_layers.poincare_linear(..., buggy_lambda=True)`` reproduces the official numbers.
"""
import math
from typing import Optional, Tuple, Union

import torch
from torch import Tensor

from .poincare import _check_tensor, _curv

ops = torch.ops.fastnorm

Curv = Union[float, Tensor]
IntPair = Union[int, Tuple[int, int]]

__all__ = ["poincare_linear", "poincare_conv2d", "poincare_midpoint_batch_norm", "beta_concat_ratio"]


def beta_concat_ratio(n_in: int, n_out: int) -> float:
    """β of the β-concatenation: B(n_out/2, ½) / B(n_in/2, ½) (computed in double via lgamma)."""
    for name, v in (("n_in", n_in), ("n_out", n_out)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"fastnorm.beta_concat_ratio: {name} must be an int >= 1, got {v!r}")
    a, b = 0.5 * n_out, 0.5 * n_in
    return math.exp((math.lgamma(a) - math.lgamma(a + 0.5)) - (math.lgamma(b) - math.lgamma(b + 0.5)))


def _curv_on(op: str, c: Curv, x: Tensor) -> Tensor:
    """c for a layer op: a float becomes a CPU float64 scalar (read on the host); a tensor that requires grad is
    moved to x's device (its gradient is computed there)."""
    cc = _curv(op, c, x)
    if cc.device != x.device and (cc.requires_grad or cc.dim() != 0):
        cc = cc.to(x.device)
    return cc


def _pair(op: str, name: str, v: IntPair, lo: int) -> Tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    if (not isinstance(v, (tuple, list)) or len(v) != 2
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in v)):
        raise TypeError(f"fastnorm.{op}: {name} must be an int or a pair of ints, got {v!r}")
    if v[0] < lo or v[1] < lo:
        raise ValueError(f"fastnorm.{op}: {name} must be >= {lo}, got {tuple(v)}")
    return int(v[0]), int(v[1])


def _check_param(op: str, name: str, p: Optional[Tensor], x: Tensor) -> None:
    if p is None:
        return
    if not isinstance(p, Tensor):
        raise TypeError(f"fastnorm.{op}: {name} must be a Tensor, got {type(p).__name__}")
    if p.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        raise TypeError(f"fastnorm.{op}: {name} must be float32, float16, bfloat16 or float64, got {p.dtype}")
    if p.device != x.device:
        raise ValueError(f"fastnorm.{op}: {name} is on {p.device} but x is on {x.device}")


# ------------------------------------------------------------------------------------------ public API
def poincare_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor], c: Curv, *, tangent_input: bool = False,
                    tangent_output: bool = False, project: bool = True) -> Tensor:
    """HNN++ Poincaré FC (§3.5) over x's last dim: weight [m, n] (``nn.Linear`` layout), bias [m] or None.

    ``tangent_input``: x are tangent vectors at 0 (exp0 is fused; ball points are never materialised);
    ``tangent_output``: returns log0 of the output points. ``project``: project the output onto the ball.
    """
    op = "poincare_linear"
    _check_tensor(op, "x", x)
    _check_param(op, "weight", weight, x)
    _check_param(op, "bias", bias, x)
    return ops.poincare_linear(x, weight, bias, _curv_on(op, c, x), bool(tangent_input), bool(tangent_output),
                               bool(project))


def poincare_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], c: Curv, *, stride: IntPair = 1,
                    padding: IntPair = 0, dilation: IntPair = 1) -> Tensor:
    """Poincaré conv2d (§3.7) on tangent NCHW maps: β-concatenation of each (zero-padded) window, exp0, Poincaré
    FC with weight.view(C_out, -1) and bias, project, log0 — fused, no unfolded tensor is stored."""
    op = "poincare_conv2d"
    _check_tensor(op, "x", x)
    if x.dim() != 4:
        raise ValueError(f"fastnorm.{op}: x must be 4-D [B, C_in, H, W], got shape {list(x.shape)}")
    _check_param(op, "weight", weight, x)
    _check_param(op, "bias", bias, x)
    sh, sw = _pair(op, "stride", stride, 1)
    ph, pw = _pair(op, "padding", padding, 0)
    dh, dw = _pair(op, "dilation", dilation, 1)
    return ops.poincare_conv2d(x, weight, bias, _curv_on(op, c, x), sh, sw, ph, pw, dh, dw)


def poincare_midpoint_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, c: Curv,
                                 running_mean: Optional[Tensor] = None, running_var: Optional[Tensor] = None, *,
                                 training: bool = True, momentum: Optional[float] = 0.1, eps: float = 1e-6,
                                 dim: int = 1, num_batches_tracked: Optional[Tensor] = None) -> Tensor:
    """Midpoint batch norm (§3.8) on tangent vectors along ``dim`` (statistics over all other dims, joint over
    channels): weight γ (one element, the target Fréchet variance), bias β [C] (the target mean, tangent at 0).

    ``training`` (or no running buffers): batch statistics, and the buffers (when given) are updated in place
    without grad — running_mean along the geodesic towards the batch midpoint, running_var by the unbiased EMA —
    exactly like ``F.batch_norm``. ``momentum=None``: cumulative average with factor 1/num_batches_tracked (the
    caller increments it first, as ``nn.BatchNorm2d`` does). Eval with buffers uses them.
    """
    op = "poincare_midpoint_batch_norm"
    _check_tensor(op, "x", x)
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"fastnorm.{op}: dim {dim!r} is out of range for x of rank {x.dim()}")
    dim = dim % x.dim()
    eps = float(eps)
    if not eps > 0 or not math.isfinite(eps):
        raise ValueError(f"fastnorm.{op}: eps must be a finite value > 0, got {eps}")
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"fastnorm.{op}: running_mean and running_var must be given together")
    if momentum is not None:
        momentum = float(momentum)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"fastnorm.{op}: momentum must be in [0, 1], got {momentum}")
    _check_param(op, "weight", weight, x)
    _check_param(op, "bias", bias, x)
    cc = _curv_on(op, c, x)
    use_batch = bool(training) or running_mean is None
    count = x.numel() // max(x.shape[dim], 1)
    if use_batch and count == 1:
        raise ValueError(f"fastnorm.{op}: expected more than 1 value per channel when training, got input shape "
                         f"{list(x.shape)}")
    out, mean, var = ops.poincare_midpoint_batch_norm(
        x, weight, bias, cc, None if use_batch else running_mean, None if use_batch else running_var, use_batch, dim,
        eps)
    if training and running_mean is not None:
        if momentum is None:
            if num_batches_tracked is None:
                raise ValueError(f"fastnorm.{op}: momentum=None (cumulative average) needs num_batches_tracked")
            # the cumulative factor is data (a counter): read once, as torch's BatchNorm does
            k = 1.0 / float(num_batches_tracked)
        else:
            k = momentum
        with torch.no_grad():
            ops.poincare_bn_running_update_(running_mean, running_var, mean, var, cc.detach(), k, count)
    return out


# ------------------------------------------------------------------------------------------ fake kernels
def _conv_out(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@torch.library.register_fake("fastnorm::poincare_linear")
def _(x, weight, bias, c, tangent_input, tangent_output, project):
    return x.new_empty(tuple(x.shape[:-1]) + (weight.shape[0],))


@torch.library.register_fake("fastnorm::poincare_conv2d")
def _(x, weight, bias, c, sh, sw, ph, pw, dh, dw):
    ho = _conv_out(x.shape[2], weight.shape[2], sh, ph, dh)
    wo = _conv_out(x.shape[3], weight.shape[3], sw, pw, dw)
    return x.new_empty((x.shape[0], weight.shape[0], ho, wo))


def _stats_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


@torch.library.register_fake("fastnorm::poincare_midpoint_batch_norm")
def _(x, weight, bias, c, running_mean, running_var, use_batch_stats, dim, eps):
    return (x.new_empty(x.shape), x.new_empty((x.shape[dim],), dtype=_stats_dtype(x)),
            x.new_empty((), dtype=_stats_dtype(x)))


def _grads_fake(x, weight, bias, c, need_x, need_weight, need_bias, need_c):
    def mk(t, need, ref_dtype):
        if t is None or not need:
            return x.new_empty((0,), dtype=t.dtype if t is not None else ref_dtype)
        return t.new_empty(t.shape)
    return (mk(x, need_x, x.dtype), mk(weight, need_weight, weight.dtype), mk(bias, need_bias, weight.dtype),
            c.new_empty(c.shape) if need_c else x.new_empty((0,), dtype=c.dtype))


@torch.library.register_fake("fastnorm::poincare_linear_backward")
def _(grad, x, weight, bias, c, tangent_input, tangent_output, project, need_x=True, need_weight=True,
      need_bias=True, need_c=True):
    return _grads_fake(x, weight, bias, c, need_x, need_weight, need_bias, need_c)


@torch.library.register_fake("fastnorm::poincare_conv2d_backward")
def _(grad, x, weight, bias, c, sh, sw, ph, pw, dh, dw, need_x=True, need_weight=True, need_bias=True,
      need_c=True):
    return _grads_fake(x, weight, bias, c, need_x, need_weight, need_bias, need_c)


@torch.library.register_fake("fastnorm::poincare_midpoint_batch_norm_backward")
def _(grad, x, weight, bias, c, mean, var, use_batch_stats, dim, eps, need_x=True, need_weight=True,
      need_bias=True, need_c=True):
    return _grads_fake(x, weight, bias, c, need_x, need_weight, need_bias, need_c)


@torch.library.register_fake("fastnorm::poincare_bn_running_update_")
def _(running_mean, running_var, mean, var, c, momentum, count):
    return None


# ------------------------------------------------------------------------------------------ autograd
def _linear_setup(ctx, inputs, output):
    x, weight, bias, c, ti, to, proj = inputs
    ctx.flags = (ti, to, proj)
    ctx.save_for_backward(x, weight, bias, c)


def _linear_backward(ctx, grad):
    x, weight, bias, c = ctx.saved_tensors
    need = ctx.needs_input_grad
    nx, nw, nb, nc = bool(need[0]), bool(need[1]), bool(need[2]) and bias is not None, bool(need[3])
    if not (nx or nw or nb or nc):
        return (None,) * 7
    dx, dw, db, dc = ops.poincare_linear_backward(grad.contiguous(), x, weight, bias, c, *ctx.flags, nx, nw, nb, nc)
    return (dx if nx else None, dw if nw else None, db if nb else None, dc if nc else None, None, None, None)


def _conv_setup(ctx, inputs, output):
    x, weight, bias, c = inputs[:4]
    ctx.geom = tuple(inputs[4:])
    ctx.save_for_backward(x, weight, bias, c)


def _conv_backward(ctx, grad):
    x, weight, bias, c = ctx.saved_tensors
    need = ctx.needs_input_grad
    nx, nw, nb, nc = bool(need[0]), bool(need[1]), bool(need[2]) and bias is not None, bool(need[3])
    if not (nx or nw or nb or nc):
        return (None,) * 10
    dx, dw, db, dc = ops.poincare_conv2d_backward(grad.contiguous(), x, weight, bias, c, *ctx.geom, nx, nw, nb, nc)
    return (dx if nx else None, dw if nw else None, db if nb else None, dc if nc else None) + (None,) * 6


def _bn_setup(ctx, inputs, output):
    x, weight, bias, c, _rm, _rv, use_batch, dim, eps = inputs
    out, mean, var = output
    ctx.mark_non_differentiable(mean, var)
    ctx.args = (use_batch, dim, eps)
    ctx.save_for_backward(x, weight, bias, c, mean, var)


def _bn_backward(ctx, grad, _gmean, _gvar):
    x, weight, bias, c, mean, var = ctx.saved_tensors
    need = ctx.needs_input_grad
    nx, nw, nb, nc = (bool(n) for n in need[:4])
    if not (nx or nw or nb or nc):
        return (None,) * 9
    dx, dw, db, dc = ops.poincare_midpoint_batch_norm_backward(grad.contiguous(), x, weight, bias, c, mean, var,
                                                               *ctx.args, nx, nw, nb, nc)
    return (dx if nx else None, dw if nw else None, db if nb else None, dc if nc else None) + (None,) * 5


torch.library.register_autograd("fastnorm::poincare_linear", _linear_backward, setup_context=_linear_setup)
torch.library.register_autograd("fastnorm::poincare_conv2d", _conv_backward, setup_context=_conv_setup)
torch.library.register_autograd("fastnorm::poincare_midpoint_batch_norm", _bn_backward, setup_context=_bn_setup)


def _no_double_backward(name):
    def fn(ctx, *grads):
        raise RuntimeError(f"fastnorm.{name}: double backward is not supported (the backward op has no gradient)")
    return fn


for _name in ("poincare_linear", "poincare_conv2d", "poincare_midpoint_batch_norm"):
    torch.library.register_autograd(f"fastnorm::{_name}_backward", _no_double_backward(_name),
                                    setup_context=lambda ctx, inputs, output: None)

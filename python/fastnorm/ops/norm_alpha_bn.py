"""Test-time alpha-BN, functional API (specs/norm.md §2.1, §3.8): ``alpha_batch_norm`` with its fake
kernel and autograd. ``alpha_source`` weights the source (running) statistics: 1 is eval BatchNorm,
0 normalises with the batch statistics (test-time normalisation). The buffers are never written.
"""
import math
from typing import Optional

import torch
from torch import Tensor

from ._common import check_eps, check_tensor, stats_dtype

ops = torch.ops.fastnorm


def _check_alpha(op: str, alpha_source) -> float:
    a = float(alpha_source)
    if not (0.0 <= a <= 1.0) or math.isnan(a):
        raise ValueError(f"fastnorm.{op}: alpha_source must be in [0, 1], got {a}")
    return a


def alpha_batch_norm(input: Tensor, running_mean: Tensor, running_var: Tensor, weight: Optional[Tensor] = None,
                     bias: Optional[Tensor] = None, *, alpha_source: float, eps: float = 1e-5,
                     unbiased_batch_var: bool = False) -> Tensor:
    """``mu = a*running_mean + (1-a)*mean_b``, ``var = a*running_var + (1-a)*var_b`` per channel (dim 1),
    ``y = weight * (x - mu) / sqrt(var + eps) + bias``; the batch variance is biased unless
    ``unbiased_batch_var``. NCHW and channels_last inputs keep their memory format.
    """
    op = "alpha_batch_norm"
    check_tensor(op, "input", input)
    if input.dim() < 2:
        raise ValueError(f"fastnorm.{op}: input must have shape (N, C, *), got {list(input.shape)}")
    c = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if t is None:
            if name.startswith("running"):
                raise ValueError(f"fastnorm.{op}: {name} is required (a BatchNorm without running statistics "
                                 f"cannot be used for alpha-BN)")
            continue
        check_tensor(op, name, t)
        if tuple(t.shape) != (c,):
            raise ValueError(f"fastnorm.{op}: {name} has shape {list(t.shape)} but input has {c} channels")
    a = _check_alpha(op, alpha_source)
    y, _, _ = ops.alpha_batch_norm(input, running_mean, running_var, weight, bias, a, check_eps(op, eps),
                                   bool(unbiased_batch_var))
    return y


def _like(x: Tensor) -> Tensor:
    """An output laid out as the kernel lays it out: channels_last stays, anything else is contiguous."""
    if not x.is_contiguous() and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
        return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


@torch.library.register_fake("fastnorm::alpha_batch_norm")
def _(x, running_mean, running_var, weight, bias, alpha_source, eps, unbiased_batch_var=False):
    c = x.shape[1]
    return _like(x), x.new_empty((c,), dtype=stats_dtype(x.dtype)), x.new_empty((c,), dtype=stats_dtype(x.dtype))


@torch.library.register_fake("fastnorm::alpha_batch_norm_backward")
def _(dy, x, mean, rstd, weight, alpha_source, unbiased_batch_var, need_dx=True, need_dweight=True,
      need_dbias=True):
    c = x.shape[1]
    wd = weight.dtype if weight is not None else stats_dtype(x.dtype)
    dx = _like(x) if need_dx else x.new_empty((0,))
    dw = x.new_empty((c,) if (need_dweight and weight is not None) else (0,), dtype=wd)
    db = x.new_empty((c,) if need_dbias else (0,), dtype=wd)
    return dx, dw, db


_DEFAULTS = (None, None, None, None, None, None, None, False)


def _setup(ctx, inputs, output):
    inputs = tuple(inputs) + _DEFAULTS[len(inputs):]
    x, _rm, _rv, weight, bias, alpha_source, _eps, unbiased = inputs
    ctx.alpha, ctx.unbiased = alpha_source, unbiased
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.save_for_backward(x, output[1], output[2], weight)


def _backward(ctx, dy, _dmean, _drstd):
    x, mean, rstd, weight = ctx.saved_tensors
    need = tuple(ctx.needs_input_grad) + (False,) * 8
    need_w = need[3] and weight is not None
    need_b = need[4] and ctx.bias_dtype is not None
    dx, dw, db = ops.alpha_batch_norm_backward(dy, x, mean, rstd, weight, ctx.alpha, ctx.unbiased, need[0], need_w,
                                               need_b)
    if need_b and db.dtype != ctx.bias_dtype:
        db = db.to(ctx.bias_dtype)
    return (dx if need[0] else None, None, None, dw if need_w else None, db if need_b else None, None, None, None)


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastnorm.alpha_batch_norm: double backward is not supported (the backward op has no gradient)")


torch.library.register_autograd("fastnorm::alpha_batch_norm", _backward, setup_context=_setup)
torch.library.register_autograd("fastnorm::alpha_batch_norm_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)

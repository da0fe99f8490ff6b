"""Unified Normalization (UN1d) and channel_affine, functional API (specs/norm.md §2.1, §3.7, §3.11).

Training runs through a ``torch.autograd.Function`` over ``torch.ops.fastnorm.unified_norm`` and
``unified_norm_backward``: the forward copies the new running_var / buffer_x2 / skip_counter into the
buffers passed in, the backward copies the new ema_gz / buffer_gz (the official module also updates its
backward state inside backward). That path runs under ``torch.compiler.disable`` (a documented graph
break: state written in backward cannot be traced). Eval is ``y = a*x + beta`` with
``a = weight/sqrt(running_var + eps)`` through ``channel_affine`` and compiles with ``fullgraph=True``.
"""
from typing import Optional

import torch
from torch import Tensor

from ._common import check_eps, check_tensor, stats_dtype  # noqa: F401  (check_eps used by nn)

ops = torch.ops.fastnorm


def _check_state(op: str, t: Tensor, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastnorm.{op}: {name} must be a Tensor, got {type(t).__name__}")


def _state_dtype(running_var: Tensor) -> torch.dtype:
    return torch.promote_types(running_var.dtype, torch.float32)


class _UnifiedNormFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_var, ema_gz, buffer_x2, buffer_gz, skip_counter, pad_mask,
                iteration, warmup_iters, outlier_filtration, eps, momentum, compensation_start):
        y, var, rho, skip, new_rv, new_bx, new_cnt = ops.unified_norm(
            x, pad_mask, weight, bias, running_var, buffer_x2, skip_counter, iteration, warmup_iters,
            outlier_filtration, eps, momentum, compensation_start)
        with torch.no_grad():
            running_var.copy_(new_rv)
            buffer_x2.copy_(new_bx)
            skip_counter.copy_(new_cnt.view(skip_counter.shape))
        ctx.save_for_backward(x, var, rho, skip, weight)
        # The backward state is updated in place by backward, like the official module's buffers.
        ctx.state = (ema_gz, buffer_gz)
        ctx.args = (iteration, warmup_iters, eps, momentum)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, var, rho, skip, weight = ctx.saved_tensors
        ema_gz, buffer_gz = ctx.state
        iteration, warmup_iters, eps, momentum = ctx.args
        dx, dw, db, new_ema, new_bg = ops.unified_norm_backward(
            dy, x, var, rho, skip, weight, ema_gz, buffer_gz, iteration, warmup_iters, eps, momentum)
        with torch.no_grad():
            ema_gz.copy_(new_ema)
            buffer_gz.copy_(new_bg)
        return (dx if ctx.needs_input_grad[0] else None, dw if ctx.needs_input_grad[1] else None,
                db if ctx.needs_input_grad[2] else None) + (None,) * 12


@torch.compiler.disable
def _unified_norm_train(x, weight, bias, running_var, ema_gz, buffer_x2, buffer_gz, skip_counter, pad_mask,
                        iteration, warmup_iters, outlier_filtration, eps, momentum, compensation_start):
    return _UnifiedNormFn.apply(x, weight, bias, running_var, ema_gz, buffer_x2, buffer_gz, skip_counter, pad_mask,
                                iteration, warmup_iters, outlier_filtration, eps, momentum, compensation_start)


def unified_norm(input: Tensor, weight: Tensor, bias: Tensor, running_var: Tensor, ema_gz: Tensor,
                 buffer_x2: Tensor, buffer_gz: Tensor, skip_counter: Tensor, *, training: bool, iteration: int,
                 pad_mask: Optional[Tensor] = None, warmup_iters: int = 4000, outlier_filtration: bool = False,
                 eps: float = 1e-5, momentum: float = 0.9, compensation_start: int = 1000) -> Tensor:
    """Unified Normalization of ``input`` (B, N, C) or (N, C) over tokens, per channel (specs/norm.md §3.7).

    ``pad_mask`` (B, N) bool, True = pad (for (N, C) input: (N,) or (1, N)). ``iteration`` is t (>= 1; the
    module increments its counter before the call). Training updates ``running_var``, ``buffer_x2`` and
    ``skip_counter`` in the forward and ``ema_gz``, ``buffer_gz`` in the backward, in place; window sizes
    are the buffers' first dims. Eval: ``weight * input / sqrt(running_var + eps) + bias``.
    """
    op = "unified_norm"
    check_tensor(op, "input", input)
    for name, t in (("weight", weight), ("bias", bias), ("running_var", running_var), ("ema_gz", ema_gz),
                    ("buffer_x2", buffer_x2), ("buffer_gz", buffer_gz), ("skip_counter", skip_counter)):
        _check_state(op, t, name)
    if input.dim() not in (2, 3):
        raise ValueError(f"fastnorm.{op}: input must be (B, N, C) or (N, C), got shape {list(input.shape)}")
    eps = check_eps(op, eps)
    momentum = float(momentum)
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"fastnorm.{op}: momentum must be in [0, 1], got {momentum}")
    if not training:
        if weight.shape != (input.shape[-1],) or bias.shape != weight.shape or running_var.shape != weight.shape:
            raise ValueError(f"fastnorm.{op}: weight, bias and running_var must have shape [{input.shape[-1]}], "
                             f"got {list(weight.shape)}, {list(bias.shape)}, {list(running_var.shape)}")
        sd = stats_dtype(input.dtype) if input.dtype == torch.float64 else torch.float32
        scale = weight.to(sd) / torch.sqrt(running_var.to(sd) + eps)
        return channel_affine(input, scale, bias.to(sd), -1)
    iteration = int(iteration)
    if iteration < 1:
        raise ValueError(f"fastnorm.{op}: iteration must be >= 1, got {iteration}")
    if pad_mask is not None:
        if not isinstance(pad_mask, torch.Tensor) or pad_mask.dtype != torch.bool:
            raise TypeError(f"fastnorm.{op}: pad_mask must be a bool Tensor")
        if input.dim() == 2 and pad_mask.dim() == 2 and pad_mask.shape[0] == 1:
            pad_mask = pad_mask[0]
        if tuple(pad_mask.shape) != tuple(input.shape[:-1]):
            raise ValueError(f"fastnorm.{op}: pad_mask has shape {list(pad_mask.shape)} but input has shape "
                             f"{list(input.shape)} (expected {list(input.shape[:-1])})")
    return _unified_norm_train(input, weight, bias, running_var, ema_gz, buffer_x2, buffer_gz, skip_counter,
                               pad_mask, iteration, int(warmup_iters), bool(outlier_filtration), eps, momentum,
                               int(compensation_start))


def channel_affine(input: Tensor, scale: Tensor, shift: Tensor, channel_dim: int = 1) -> Tensor:
    """``y = input * scale[c] + shift[c]`` with ``c`` the index along ``channel_dim`` (float32 math,
    float64 for float64 input; output in input's dtype). Differentiable in all three tensors."""
    check_tensor("channel_affine", "input", input)
    check_tensor("channel_affine", "scale", scale)
    check_tensor("channel_affine", "shift", shift)
    return ops.channel_affine(input, scale, shift, int(channel_dim))


# ---- fake kernels ---------------------------------------------------------------------------------------
@torch.library.register_fake("fastnorm::unified_norm")
def _(x, pad_mask, weight, bias, running_var, buffer_x2, skip_counter, iteration, warmup_iters,
      outlier_filtration, eps, momentum, compensation_start):
    c = x.shape[-1]
    sd = stats_dtype(x.dtype)
    return (torch.empty_like(x, memory_format=torch.contiguous_format), x.new_empty((c,), dtype=sd),
            x.new_empty((c,), dtype=sd), x.new_empty((), dtype=torch.bool),
            running_var.new_empty((c,)), buffer_x2.new_empty(buffer_x2.shape),
            x.new_empty((1,), dtype=torch.int64))


@torch.library.register_fake("fastnorm::unified_norm_backward")
def _(dy, x, var, rho, skip, weight, ema_gz, buffer_gz, iteration, warmup_iters, eps, momentum):
    c = x.shape[-1]
    return (torch.empty_like(x, memory_format=torch.contiguous_format), weight.new_empty((c,)),
            weight.new_empty((c,)), ema_gz.new_empty((c,)), buffer_gz.new_empty(buffer_gz.shape))


@torch.library.register_fake("fastnorm::channel_affine")
def _(x, scale, shift, channel_dim):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _ca_setup(ctx, inputs, output):
    x, scale, shift, channel_dim = inputs
    ctx.channel_dim = channel_dim % x.dim()
    ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, scale)


def _ca_backward(ctx, dy):
    x, scale = ctx.saved_tensors
    cd = ctx.channel_dim
    dims = [d for d in range(dy.dim()) if d != cd]
    dx = dscale = dshift = None
    if ctx.needs_input_grad[0]:
        dx = channel_affine(dy, scale, torch.zeros_like(scale), cd)
    acc = torch.promote_types(dy.dtype, torch.float32)
    if ctx.needs_input_grad[1]:
        dscale = (dy.to(acc) * x.to(acc)).sum(dims).to(scale.dtype)
    if ctx.needs_input_grad[2]:
        dshift = dy.to(acc).sum(dims).to(scale.dtype)
    return dx, dscale, dshift, None


torch.library.register_autograd("fastnorm::channel_affine", _ca_backward, setup_context=_ca_setup)

"""PowerNorm (MaskPowerNorm), functional API (specs/norm.md §2.1, §3.6, §3.11).

Training runs a ``torch.autograd.Function`` over ``torch.ops.fastnorm.power_norm`` / ``power_norm_backward``:
the forward copies ``new_running_phi`` into ``running_phi`` and the backward copies ``new_ema_gz`` into
``ema_gz`` (PowerNorm updates its state inside backward, as the official code). That path is wrapped in
``torch.compiler.disable`` -- a documented graph break. Eval calls ``power_norm_eval``, which has a fake
kernel and an autograd formula, so it compiles with ``fullgraph=True``.
"""
from typing import Optional

import torch
from torch import Tensor

from ._common import check_eps, check_tensor, stats_dtype

ops = torch.ops.fastnorm
_QUIRKS = {"official": 0, "paper": 1}


def quirks_code(op: str, quirks: str) -> int:
    if quirks not in _QUIRKS:
        raise ValueError(f"fastnorm.{op}: quirks must be 'official' or 'paper', got {quirks!r}")
    return _QUIRKS[quirks]


def _check_unit(op: str, name: str, v: float) -> float:
    v = float(v)
    if not (0.0 <= v <= 1.0):
        raise ValueError(f"fastnorm.{op}: {name} must be in [0, 1], got {v}")
    return v


def check_group_num(op: str, group_num: int, c: int) -> int:
    group_num = int(group_num)
    if group_num < 1 or c % group_num != 0:
        raise ValueError(f"fastnorm.{op}: group_num {group_num} must be >= 1 and divide the channel count {c}")
    return group_num


def _affine(x: Tensor, weight: Optional[Tensor], bias: Optional[Tensor]):
    c = x.shape[-1]
    acc = stats_dtype(x.dtype)
    w = torch.ones(c, dtype=acc, device=x.device) if weight is None else weight
    b = torch.zeros(c, dtype=acc, device=x.device) if bias is None else bias
    return w, b


class _PowerNormFn(torch.autograd.Function):
    """Training step: forward updates running_phi, backward updates ema_gz (both in place)."""

    @staticmethod
    def forward(ctx, x, weight, bias, running_phi, ema_gz, pad_mask, iteration, warmup_iters, eps, alpha_fwd,
                alpha_bkw, group_num, group_eps, batch_first, quirks):
        y, grs, x2, denom, new_phi = ops.power_norm(x, pad_mask, weight, bias, running_phi, iteration,
                                                    warmup_iters, eps, alpha_fwd, group_num, group_eps,
                                                    batch_first, quirks)
        with torch.no_grad():
            running_phi.copy_(new_phi)
        ctx.save_for_backward(x, pad_mask, grs, x2, denom, weight)
        # nu is read when backward runs (after any earlier backward updated it), as the official code does,
        # so it is kept by reference rather than saved (saving would trip the version check).
        ctx.ema_gz = ema_gz
        ctx.cfg = (eps, alpha_bkw, group_num, batch_first, quirks)
        ctx.bias_dtype = bias.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        x, pad_mask, grs, x2, denom, weight = ctx.saved_tensors
        eps, alpha_bkw, group_num, batch_first, quirks = ctx.cfg
        dx, dw, db, new_nu = ops.power_norm_backward(dy, x, pad_mask, grs, x2, denom, weight, ctx.ema_gz, eps,
                                                     alpha_bkw, group_num, batch_first, quirks)
        with torch.no_grad():
            ctx.ema_gz.copy_(new_nu)
        need = ctx.needs_input_grad
        return (dx if need[0] else None, dw if need[1] else None,
                db.to(ctx.bias_dtype) if need[2] else None) + (None,) * 12


@torch.compiler.disable
def _train(x, weight, bias, running_phi, ema_gz, pad_mask, *args):
    return _PowerNormFn.apply(x, weight, bias, running_phi, ema_gz, pad_mask, *args)


def power_norm(input: Tensor, weight: Optional[Tensor], bias: Optional[Tensor], running_phi: Tensor,
               ema_gz: Tensor, *, training: bool, iteration: int, pad_mask: Optional[Tensor] = None,
               eps: float = 1e-5, alpha_fwd: float = 0.9, alpha_bkw: float = 0.9, warmup_iters: int = 10000,
               group_num: int = 1, group_eps: float = 1e-5, batch_first: bool = False,
               quirks: str = "official") -> Tensor:
    """PowerNorm (Shen et al. 2020) with GroupScaling, as the official ``MaskPowerNorm`` (specs/norm.md §3.6).

    ``input`` is (T, B, C), (B, T, C) with ``batch_first``, or (B, C) (T = 1); ``pad_mask`` (B, T) bool, True =
    pad. Training (``iteration`` = t >= 1, the module's incremented step count) updates ``running_phi`` in the
    forward and ``ema_gz`` in the backward, in place. Eval uses ``running_phi`` and changes nothing.
    ``weight``/``bias`` None mean 1 and 0. ``quirks="paper"`` switches Q1-Q4 of §3.6.
    """
    op = "power_norm"
    check_tensor(op, "input", input)
    if input.dim() not in (2, 3):
        raise ValueError(f"fastnorm.{op}: input must be 2-D (B, C) or 3-D ((T, B, C), or (B, T, C) with "
                         f"batch_first), got shape {list(input.shape)}")
    eps = check_eps(op, eps)
    group_eps = float(group_eps)
    if not (group_eps > 0) or group_eps == float("inf"):
        raise ValueError(f"fastnorm.{op}: group_eps must be a finite value > 0, got {group_eps}")
    group_num = check_group_num(op, group_num, input.shape[-1])
    q = quirks_code(op, quirks)
    w, b = _affine(input, weight, bias)
    if not training:
        return ops.power_norm_eval(input, w, b, running_phi, eps, group_num, group_eps)
    iteration = int(iteration)
    if iteration < 1:
        raise ValueError(f"fastnorm.{op}: iteration must be >= 1, got {iteration}")
    return _train(input, w, b, running_phi, ema_gz, pad_mask, iteration, int(warmup_iters), eps,
                  _check_unit(op, "alpha_fwd", alpha_fwd), _check_unit(op, "alpha_bkw", alpha_bkw), group_num,
                  group_eps, bool(batch_first), q)


# ---- fake (meta) kernels ----------------------------------------------------------------------------------
def _channel(x, like=None):
    if like is not None:
        return torch.empty(like.shape, dtype=like.dtype, device=x.device)
    return x.new_empty((x.shape[-1],), dtype=stats_dtype(x.dtype))


@torch.library.register_fake("fastnorm::power_norm")
def _(x, pad_mask, weight, bias, running_phi, iteration, warmup_iters, eps, alpha_fwd, group_num, group_eps,
      batch_first, quirks):
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    grs = x.new_empty(tuple(x.shape[:-1]) + (group_num,), dtype=stats_dtype(x.dtype))
    return y, grs, _channel(x), _channel(x), _channel(x, running_phi)


@torch.library.register_fake("fastnorm::power_norm_backward")
def _(dy, x, pad_mask, group_rstd, x2, denom, weight, ema_gz, eps, alpha_bkw, group_num, batch_first, quirks):
    dx = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    return dx, _channel(x, weight), _channel(x, weight), _channel(x, ema_gz)


@torch.library.register_fake("fastnorm::power_norm_eval")
def _(x, weight, bias, running_phi, eps, group_num, group_eps):
    return torch.empty(x.shape, dtype=x.dtype, device=x.device)


# ---- autograd of eval (exact: running_phi is a constant there) --------------------------------------------
def _eval_setup(ctx, inputs, output):
    x, weight, bias, running_phi, eps, group_num, group_eps = inputs
    ctx.cfg = (eps, group_num, group_eps, bias.dtype)
    ctx.save_for_backward(x, weight, running_phi)


def _eval_backward(ctx, dy):
    x, weight, running_phi = ctx.saved_tensors
    eps, group_num, group_eps, bias_dtype = ctx.cfg
    c = x.shape[-1]
    acc = stats_dtype(x.dtype)
    x2d = x.reshape(-1, c)
    grs = (x2d.to(acc).reshape(-1, group_num, c // group_num).square().mean(-1) + group_eps).rsqrt()
    denom = (running_phi.reshape(c).to(acc) + eps).sqrt()
    zero = torch.zeros(c, dtype=acc, device=x.device)
    # alpha_bkw = 1 removes the nu term and quirks = 1 divides by denom: the exact gradient of eval.
    dx, dw, db, _ = ops.power_norm_backward(dy.reshape(-1, c), x2d, None, grs, denom, denom, weight, zero, eps,
                                            1.0, group_num, False, 1)
    need = ctx.needs_input_grad
    return (dx.reshape(x.shape) if need[0] else None, dw if need[1] else None,
            db.to(bias_dtype) if need[2] else None, None, None, None, None)


torch.library.register_autograd("fastnorm::power_norm_eval", _eval_backward, setup_context=_eval_setup)


def _not_differentiable(ctx, *grads):
    raise RuntimeError("fastnorm.power_norm: the op alone is not differentiable (its backward needs ema_gz and "
                       "updates it); use fastnorm.power_norm(..., training=True) or fastnorm.nn.PowerNorm")


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastnorm.power_norm: double backward is not supported (the backward op has no gradient)")


torch.library.register_autograd("fastnorm::power_norm", _not_differentiable,
                                setup_context=lambda ctx, inputs, output: None)
torch.library.register_autograd("fastnorm::power_norm_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)

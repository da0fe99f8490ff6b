"""EvoNorm B0 / S0, functional API (specs/norm.md §2.1, §3.9).

``evonorm_b0`` and ``evonorm_s0`` check their arguments, resolve the defaults that differ between timm and
TensorFlow (``semantics``), call ``torch.ops.fastnorm.evonorm_*`` and, for B0 in training, copy the
returned running variance into ``running_var`` (in place, as ``F.batch_norm`` does). Fake kernels and
autograd formulas are registered here; the backward calls ``torch.ops.fastnorm.evonorm_*_backward``.
The output keeps the input's memory format (NCHW or channels_last).
"""
from typing import Optional

import torch
from torch import Tensor

from ._common import check_eps, check_tensor, stats_dtype

ops = torch.ops.fastnorm
_SEMANTICS = {"timm": 0, "tf": 1}


def semantics_code(op: str, semantics: str) -> int:
    if semantics not in _SEMANTICS:
        raise ValueError(f"fastnorm.{op}: semantics must be 'timm' or 'tf', got {semantics!r}")
    return _SEMANTICS[semantics]


def default_b0_eps(semantics: str) -> float:
    """timm's EvoNorm2dB0 uses 1e-3, the TensorFlow reference 1e-5."""
    return 1e-3 if semantics == "timm" else 1e-5


def resolve_groups(op: str, num_channels: int, groups: int = 32, group_size: Optional[int] = None,
                   semantics: str = "timm", check: bool = True) -> int:
    """S0's group count: ``group_size`` (when given) overrides ``groups``; timm requires that the count
    divides the channels, TensorFlow lowers it until it does (C = 48 with 32 groups gives 24).
    ``check=False`` (apply_act=False, where no group statistic is computed) skips timm's divisibility error,
    as timm only raises when the statistic is computed."""
    semantics_code(op, semantics)
    if group_size:
        group_size = int(group_size)
        if group_size < 1 or num_channels % group_size != 0:
            raise ValueError(f"fastnorm.{op}: group_size ({group_size}) must divide the number of channels "
                             f"({num_channels})")
        return num_channels // group_size
    groups = int(groups)
    if groups < 1:
        raise ValueError(f"fastnorm.{op}: groups must be >= 1, got {groups}")
    if semantics == "tf":
        groups = min(groups, max(num_channels, 1))
        while num_channels % groups != 0:
            groups -= 1
        return groups
    if check and num_channels % groups != 0:
        raise ValueError(f"fastnorm.{op}: groups ({groups}) must divide the number of channels ({num_channels}); "
                         f"semantics='tf' lowers the group count instead")
    return groups


def _check_input(op: str, x) -> None:
    check_tensor(op, "input", x)
    if x.dim() != 4:
        raise ValueError(f"fastnorm.{op}: input must be 4-D [B, C, H, W], got shape {list(x.shape)}")


def _check_param(op: str, name: str, p, c: int) -> None:
    check_tensor(op, name, p)
    if p.dim() != 1 or p.shape[0] != c:
        raise ValueError(f"fastnorm.{op}: {name} has shape {list(p.shape)} but input has {c} channels")


def _affine(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """apply_act=False: EvoNorm is then only the per-channel affine y = weight*x + bias (no normalisation)."""
    shape = (1, -1, 1, 1)
    return x * weight.to(x.dtype).view(shape) + bias.to(x.dtype).view(shape)


def evonorm_b0(input: Tensor, weight: Tensor, bias: Tensor, v: Optional[Tensor], running_var: Optional[Tensor], *,
               training: bool, momentum: float = 0.1, eps: Optional[float] = None,
               semantics: str = "timm") -> Tensor:
    """EvoNorm-B0: ``y = x / max(sqrt(var_c + eps), v*x + instance_std(x)) * weight + bias``.

    ``var_c`` is the batch variance over (B, H, W) in training (and ``running_var`` is updated in place:
    ``(1 - momentum) * running_var + momentum * var_c * k``, k = n/(n-1) for ``semantics="timm"``, 1 for
    ``"tf"``), else ``running_var``. ``eps=None``: 1e-3 (timm) or 1e-5 (tf). ``v=None`` means
    ``apply_act=False``: only the affine, running_var untouched. At max ties the gradient is split in half
    (timm) or sent to the batch term (tf).
    """
    op = "evonorm_b0"
    _check_input(op, input)
    code = semantics_code(op, semantics)
    c = input.shape[1]
    _check_param(op, "weight", weight, c)
    _check_param(op, "bias", bias, c)
    if v is None:
        return _affine(input, weight, bias)
    _check_param(op, "v", v, c)
    if running_var is None:
        raise ValueError(f"fastnorm.{op}: running_var is required when v is given")
    _check_param(op, "running_var", running_var, c)
    momentum = float(momentum)
    if not (0.0 <= momentum <= 1.0):
        raise ValueError(f"fastnorm.{op}: momentum must be in [0, 1], got {momentum}")
    eps = default_b0_eps(semantics) if eps is None else check_eps(op, eps)
    y, _, _, new_rv = ops.evonorm_b0(input, weight, bias, v, running_var, bool(training), momentum, eps, code)
    if training:
        with torch.no_grad():
            running_var.copy_(new_rv)
    return y


def evonorm_s0(input: Tensor, weight: Tensor, bias: Tensor, v: Optional[Tensor], *, groups: int = 32,
               group_size: Optional[int] = None, eps: Optional[float] = None, semantics: str = "timm") -> Tensor:
    """EvoNorm-S0: ``y = x * sigmoid(v*x) / group_std(x) * weight + bias`` (no running state).

    ``group_size`` overrides ``groups``; ``semantics="tf"`` lowers ``groups`` until it divides C, timm's
    raises. ``eps=None`` means 1e-5. ``v=None`` means ``apply_act=False``: only the affine.
    """
    op = "evonorm_s0"
    _check_input(op, input)
    c = input.shape[1]
    _check_param(op, "weight", weight, c)
    _check_param(op, "bias", bias, c)
    g = resolve_groups(op, c, groups, group_size, semantics, check=v is not None)
    if v is None:
        return _affine(input, weight, bias)
    _check_param(op, "v", v, c)
    eps = 1e-5 if eps is None else check_eps(op, eps)
    y, _, _ = ops.evonorm_s0(input, weight, bias, v, g, eps)
    return y


# ---- fake (meta) kernels ------------------------------------------------------------------------------
def _is_nhwc(x: Tensor) -> bool:
    """The C++ binding's channels_last test (strides of size-1 dims ignored)."""
    b, c, h, w = x.shape
    s = x.stride()
    return ((c == 1 or s[1] == 1) and (w == 1 or s[3] == c) and (h == 1 or s[2] == w * c)
            and (b == 1 or s[0] == h * w * c))


def empty_4d(x: Tensor, dtype: Optional[torch.dtype] = None) -> Tensor:
    """A tensor laid out as the kernels write their output: channels_last when x is (and is not also
    NCHW-contiguous), else NCHW-contiguous."""
    fmt = torch.channels_last if (not x.is_contiguous() and _is_nhwc(x)) else torch.contiguous_format
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device, memory_format=fmt)


@torch.library.register_fake("fastnorm::evonorm_b0")
def _(x, weight, bias, v, running_var, training, momentum, eps, semantics):
    st = stats_dtype(x.dtype)
    c = x.shape[1]
    new_rv = running_var.new_empty((c,) if training else (0,))
    return empty_4d(x), x.new_empty((c,), dtype=st), x.new_empty((x.shape[0], c), dtype=st), new_rv


@torch.library.register_fake("fastnorm::evonorm_b0_backward")
def _(dy, x, weight, v, left_var, inst_std, training, eps, semantics):
    c = x.shape[1]
    return empty_4d(x), weight.new_empty((c,)), weight.new_empty((c,)), weight.new_empty((c,))


@torch.library.register_fake("fastnorm::evonorm_s0")
def _(x, weight, bias, v, groups, eps):
    st = stats_dtype(x.dtype)
    return empty_4d(x), x.new_empty((x.shape[0], groups), dtype=st), x.new_empty((x.shape[0], groups), dtype=st)


@torch.library.register_fake("fastnorm::evonorm_s0_backward")
def _(dy, x, weight, v, group_mean, group_rstd, groups):
    c = x.shape[1]
    return empty_4d(x), weight.new_empty((c,)), weight.new_empty((c,)), weight.new_empty((c,))


# ---- autograd ----------------------------------------------------------------------------------------
def _b0_setup(ctx, inputs, output):
    x, weight, _bias, v, _rv, training, _mom, eps, semantics = inputs
    _, left_var, inst_std, _ = output
    ctx.training, ctx.eps, ctx.semantics = bool(training), float(eps), int(semantics)
    ctx.save_for_backward(x, weight, v, left_var, inst_std)


def _b0_backward(ctx, dy, _dlv, _dis, _drv):
    x, weight, v, left_var, inst_std = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dw, db, dv = ops.evonorm_b0_backward(dy, x, weight, v, left_var, inst_std, ctx.training, ctx.eps,
                                             ctx.semantics)
    # running_var is a buffer: no gradient flows into it (as in timm, where it is not a Parameter).
    return (dx if need[0] else None, dw if need[1] else None, db if need[2] else None, dv if need[3] else None,
            None, None, None, None, None)


def _s0_setup(ctx, inputs, output):
    x, weight, _bias, v, groups, _eps = inputs
    _, gmean, grstd = output
    ctx.groups = int(groups)
    ctx.save_for_backward(x, weight, v, gmean, grstd)


def _s0_backward(ctx, dy, _dm, _dr):
    x, weight, v, gmean, grstd = ctx.saved_tensors
    need = ctx.needs_input_grad
    dx, dw, db, dv = ops.evonorm_s0_backward(dy, x, weight, v, gmean, grstd, ctx.groups)
    return (dx if need[0] else None, dw if need[1] else None, db if need[2] else None, dv if need[3] else None,
            None, None)


torch.library.register_autograd("fastnorm::evonorm_b0", _b0_backward, setup_context=_b0_setup)
torch.library.register_autograd("fastnorm::evonorm_s0", _s0_backward, setup_context=_s0_setup)


def _no_double_backward(op):
    def backward(ctx, *grads):
        raise RuntimeError(f"fastnorm.{op}: double backward is not supported (the backward op has no gradient)")
    return backward


for _op in ("evonorm_b0", "evonorm_s0"):
    torch.library.register_autograd(f"fastnorm::{_op}_backward", _no_double_backward(_op),
                                    setup_context=lambda ctx, inputs, output: None)

"""Norm family, functional API (specs/norm.md §2.1): LayerNorm, RMSNorm and their fused residual-add forms.

Each public function checks its arguments, flattens the normalised dims into one row dimension (a view
when the layout allows), and calls ``torch.ops.fastnorm.<op>``. Fake (meta) kernels and autograd formulas
are registered here; the backward calls ``torch.ops.fastnorm.<op>_backward``.
"""
from typing import Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ._common import (as_rows, check_eps, check_tensor, dtype_code, flat_param, normalized_numel, stats_dtype,
                      CODE_DTYPE, trailing_shape)

_CASTING = {"llama": 0, "gemma": 1, "none": 2}
ShapeLike = Union[int, Sequence[int], torch.Size]
ops = torch.ops.fastnorm


def _casting_code(op: str, casting: str) -> int:
    if casting not in _CASTING:
        raise ValueError(f"fastnorm.{op}: casting must be one of 'llama', 'gemma', 'none', got {casting!r}")
    return _CASTING[casting]


def default_rms_eps(dtype: torch.dtype) -> float:
    """torch's RMSNorm rule for eps=None: machine epsilon of the accumulation type (specs/norm.md §3.2)."""
    return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps


def _check_memory_efficient(op: str, memory_efficient: bool) -> None:
    if memory_efficient:
        raise NotImplementedError(f"fastnorm.{op}: memory_efficient=True is not implemented yet (specs/norm.md §3.4)")


def _prepare(op, input, normalized_shape, weight, bias):
    check_tensor(op, "input", input)
    n = normalized_numel(op, input, normalized_shape)
    shape = trailing_shape(input, normalized_shape)
    k = len(shape)
    return as_rows(input, k), flat_param(op, "weight", weight, shape, n), flat_param(op, "bias", bias, shape, n), k


# ---- public functions ---------------------------------------------------------------------------------
def layer_norm(input: Tensor, normalized_shape: ShapeLike, weight: Optional[Tensor] = None,
               bias: Optional[Tensor] = None, eps: float = 1e-5, *, out_dtype: Optional[torch.dtype] = None,
               memory_efficient: bool = False) -> Tensor:
    """LayerNorm over the trailing ``normalized_shape`` dims, as ``torch.nn.functional.layer_norm``.

    ``out_dtype`` sets the output dtype (default: input's). Statistics accumulate in float32 (float64 for
    float64 input); the output is rounded once.
    """
    _check_memory_efficient("layer_norm", memory_efficient)
    x, w, b, _ = _prepare("layer_norm", input, normalized_shape, weight, bias)
    y, _, _ = ops.layer_norm(x, w, b, check_eps("layer_norm", eps), dtype_code("layer_norm", out_dtype))
    return y if y.shape == input.shape else y.view(input.shape)


def rms_norm(input: Tensor, normalized_shape: ShapeLike, weight: Optional[Tensor] = None,
             eps: Optional[float] = 1e-6, *, bias: Optional[Tensor] = None, offset: float = 0.0,
             casting: str = "gemma", out_dtype: Optional[torch.dtype] = None,
             memory_efficient: bool = False) -> Tensor:
    """RMSNorm: ``x * rsqrt(mean(x^2) + eps) * (weight + offset) (+ bias)``.

    ``eps=None`` follows torch's kernels (machine epsilon of the accumulation type). ``offset=1`` gives
    Gemma's ``(1 + w)``, formed in float32. ``casting`` picks the rounding convention for 16-bit inputs:
    ``"gemma"`` (= torch.nn.RMSNorm, one rounding), ``"llama"`` (= HF LlamaRMSNorm), ``"none"`` (fastest).
    """
    _check_memory_efficient("rms_norm", memory_efficient)
    x, w, b, _ = _prepare("rms_norm", input, normalized_shape, weight, bias)
    eps = default_rms_eps(input.dtype) if eps is None else check_eps("rms_norm", eps)
    y, _ = ops.rms_norm(x, w, eps, b, float(offset), _casting_code("rms_norm", casting),
                        dtype_code("rms_norm", out_dtype))
    return y if y.shape == input.shape else y.view(input.shape)


def _check_residual(op, input, residual):
    if residual is None:
        return
    check_tensor(op, "residual", residual)
    if residual.shape != input.shape:
        raise ValueError(f"fastnorm.{op}: residual has shape {list(residual.shape)} but input has shape "
                         f"{list(input.shape)}")


def add_layer_norm(input: Tensor, residual: Optional[Tensor], normalized_shape: ShapeLike,
                   weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5, *,
                   residual_in_fp32: bool = False, out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """Fused ``s = input + residual; y = layer_norm(s)``. Returns ``(y, s)``.

    ``s`` is summed in float32 and stored in float32 when ``residual_in_fp32`` or the residual is float32,
    else in input's dtype; the norm is applied to the stored ``s``. ``residual=None`` means ``s = input``.
    """
    _check_residual("add_layer_norm", input, residual)
    x, w, b, k = _prepare("add_layer_norm", input, normalized_shape, weight, bias)
    r = None if residual is None else as_rows(residual, k)
    y, s, _, _ = ops.add_layer_norm(x, r, w, b, check_eps("add_layer_norm", eps), bool(residual_in_fp32),
                                    dtype_code("add_layer_norm", out_dtype))
    if y.shape == input.shape:
        return y, s
    return y.view(input.shape), s.view(input.shape)


def add_rms_norm(input: Tensor, residual: Optional[Tensor], normalized_shape: ShapeLike,
                 weight: Optional[Tensor] = None, eps: Optional[float] = 1e-6, *, bias: Optional[Tensor] = None,
                 offset: float = 0.0, casting: str = "gemma", residual_in_fp32: bool = False,
                 out_dtype: Optional[torch.dtype] = None) -> Tuple[Tensor, Tensor]:
    """Fused ``s = input + residual; y = rms_norm(s)``. Returns ``(y, s)`` (see :func:`add_layer_norm`)."""
    _check_residual("add_rms_norm", input, residual)
    x, w, b, k = _prepare("add_rms_norm", input, normalized_shape, weight, bias)
    r = None if residual is None else as_rows(residual, k)
    eps = default_rms_eps(input.dtype) if eps is None else check_eps("add_rms_norm", eps)
    y, s, _ = ops.add_rms_norm(x, r, w, eps, b, float(offset), _casting_code("add_rms_norm", casting),
                               bool(residual_in_fp32), dtype_code("add_rms_norm", out_dtype))
    if y.shape == input.shape:
        return y, s
    return y.view(input.shape), s.view(input.shape)


# ---- fake (meta) kernels: the same output shapes and dtypes as the C++ ops ------------------------------
def _promote(a: torch.dtype, b: torch.dtype) -> torch.dtype:
    if a == b:
        return a
    return torch.float64 if torch.float64 in (a, b) else torch.float32


def _out(x, code, default):
    return torch.empty(x.shape, dtype=CODE_DTYPE.get(code, default), device=x.device)


def _stats(x):
    return x.new_empty(x.shape[:-1], dtype=stats_dtype(x.dtype))


def _residual_dtype(x, residual, residual_in_fp32):
    if x.dtype == torch.float64:
        return torch.float64
    if residual_in_fp32 or (residual is not None and residual.dtype == torch.float32):
        return torch.float32
    return x.dtype


def _rms_out_default(normed_dtype, weight, casting):
    return _promote(normed_dtype, weight.dtype) if casting == 0 and weight is not None else normed_dtype


def _grad_like(t, need, dtype=None):
    dtype = t.dtype if dtype is None else dtype
    return t.new_empty(t.shape if need else (0,), dtype=dtype)


def _wgrad(x, weight, need):
    dtype = weight.dtype if weight is not None else stats_dtype(x.dtype)
    return x.new_empty((x.shape[-1],) if need else (0,), dtype=dtype)


@torch.library.register_fake("fastnorm::layer_norm")
def _(x, weight, bias, eps, out_dtype=-1):
    return _out(x, out_dtype, x.dtype), _stats(x), _stats(x)


@torch.library.register_fake("fastnorm::rms_norm")
def _(x, weight, eps, bias=None, offset=0.0, casting=1, out_dtype=-1):
    return _out(x, out_dtype, _rms_out_default(x.dtype, weight, casting)), _stats(x)


@torch.library.register_fake("fastnorm::add_layer_norm")
def _(x, residual, weight, bias, eps, residual_in_fp32=False, out_dtype=-1):
    s = torch.empty(x.shape, dtype=_residual_dtype(x, residual, residual_in_fp32), device=x.device)
    return _out(x, out_dtype, x.dtype), s, _stats(x), _stats(x)


@torch.library.register_fake("fastnorm::add_rms_norm")
def _(x, residual, weight, eps, bias=None, offset=0.0, casting=1, residual_in_fp32=False, out_dtype=-1):
    rd = _residual_dtype(x, residual, residual_in_fp32)
    s = torch.empty(x.shape, dtype=rd, device=x.device)
    return _out(x, out_dtype, _rms_out_default(x.dtype, weight, casting)), s, _stats(x)


@torch.library.register_fake("fastnorm::layer_norm_backward")
def _(dy, x, mean, rstd, weight, bias, need_dx=True, need_dweight=True, need_dbias=True):
    return (_grad_like(x, need_dx), _wgrad(x, weight, need_dweight and weight is not None),
            _wgrad(x, weight, need_dbias and bias is not None))


@torch.library.register_fake("fastnorm::rms_norm_backward")
def _(dy, x, rstd, weight, bias=None, offset=0.0, casting=1, need_dx=True, need_dweight=True, need_dbias=True):
    return (_grad_like(x, need_dx), _wgrad(x, weight, need_dweight and weight is not None),
            _wgrad(x, weight, need_dbias and bias is not None))


@torch.library.register_fake("fastnorm::add_layer_norm_backward")
def _(dy, dresidual_out, residual_out, mean, rstd, weight, bias, need_dweight=True, need_dbias=True):
    s = residual_out
    return (_grad_like(s, True), _wgrad(s, weight, need_dweight and weight is not None),
            _wgrad(s, weight, need_dbias and bias is not None))


@torch.library.register_fake("fastnorm::add_rms_norm_backward")
def _(dy, dresidual_out, residual_out, rstd, weight, bias=None, offset=0.0, casting=1, need_dweight=True,
      need_dbias=True):
    s = residual_out
    return (_grad_like(s, True), _wgrad(s, weight, need_dweight and weight is not None),
            _wgrad(s, weight, need_dbias and bias is not None))


# ---- autograd ----------------------------------------------------------------------------------------
def _opt(t, needed):
    return t if needed else None


def _needs(ctx):
    """needs_input_grad padded with False: the dispatcher drops trailing arguments left at their default."""
    return tuple(ctx.needs_input_grad) + (False,) * 10


def _with_defaults(inputs, defaults):
    """The op's inputs with trailing defaults restored (the dispatcher may have dropped them)."""
    inputs = tuple(inputs)
    return inputs + tuple(defaults[len(inputs):])


_RMS_DEFAULTS = (None, None, None, None, 0.0, 1, -1)              # x, w, eps, bias, offset, casting, out_dtype
_ADD_RMS_DEFAULTS = (None, None, None, None, None, 0.0, 1, False, -1)


def _ln_setup(ctx, inputs, output):
    x, weight, bias = inputs[0], inputs[1], inputs[2]
    _, mean, rstd = output
    ctx.save_for_backward(x, mean, rstd, weight, bias)


def _ln_backward(ctx, dy, _dmean, _drstd):
    x, mean, rstd, weight, bias = ctx.saved_tensors
    need = _needs(ctx)
    dx, dw, db = ops.layer_norm_backward(dy, x, mean, rstd, weight, bias, need[0], need[1], need[2])
    return _opt(dx, need[0]), _opt(dw, need[1] and weight is not None), _opt(db, need[2] and bias is not None), \
        None, None


def _rms_setup(ctx, inputs, output):
    x, weight, _eps, bias, offset, casting = _with_defaults(inputs, _RMS_DEFAULTS)[:6]
    ctx.offset, ctx.casting = offset, casting
    ctx.save_for_backward(x, output[1], weight, bias)


def _rms_backward(ctx, dy, _drstd):
    x, rstd, weight, bias = ctx.saved_tensors
    need = _needs(ctx)
    dx, dw, db = ops.rms_norm_backward(dy, x, rstd, weight, bias, ctx.offset, ctx.casting, need[0], need[1], need[3])
    return (_opt(dx, need[0]), _opt(dw, need[1] and weight is not None), None,
            _opt(db, need[3] and bias is not None), None, None, None)


def _add_ln_setup(ctx, inputs, output):
    x, residual, weight, bias = inputs[:4]
    _, s, mean, rstd = output
    ctx.x_dtype = x.dtype
    ctx.r_dtype = None if residual is None else residual.dtype
    ctx.save_for_backward(s, mean, rstd, weight, bias)


def _add_ln_backward(ctx, dy, ds_out, _dmean, _drstd):
    s, mean, rstd, weight, bias = ctx.saved_tensors
    need = _needs(ctx)
    ds, dw, db = ops.add_layer_norm_backward(dy, ds_out, s, mean, rstd, weight, bias, need[2], need[3])
    dx = ds.to(ctx.x_dtype) if need[0] else None
    dr = ds.to(ctx.r_dtype) if (need[1] and ctx.r_dtype is not None) else None
    return dx, dr, _opt(dw, need[2] and weight is not None), _opt(db, need[3] and bias is not None), None, None, None


def _add_rms_setup(ctx, inputs, output):
    x, residual, weight, _eps, bias, offset, casting = _with_defaults(inputs, _ADD_RMS_DEFAULTS)[:7]
    ctx.offset, ctx.casting = offset, casting
    ctx.x_dtype = x.dtype
    ctx.r_dtype = None if residual is None else residual.dtype
    _, s, rstd = output
    ctx.save_for_backward(s, rstd, weight, bias)


def _add_rms_backward(ctx, dy, ds_out, _drstd):
    s, rstd, weight, bias = ctx.saved_tensors
    need = _needs(ctx)
    ds, dw, db = ops.add_rms_norm_backward(dy, ds_out, s, rstd, weight, bias, ctx.offset, ctx.casting, need[2],
                                           need[4])
    dx = ds.to(ctx.x_dtype) if need[0] else None
    dr = ds.to(ctx.r_dtype) if (need[1] and ctx.r_dtype is not None) else None
    return (dx, dr, _opt(dw, need[2] and weight is not None), None, _opt(db, need[4] and bias is not None),
            None, None, None, None)


torch.library.register_autograd("fastnorm::layer_norm", _ln_backward, setup_context=_ln_setup)
torch.library.register_autograd("fastnorm::rms_norm", _rms_backward, setup_context=_rms_setup)
torch.library.register_autograd("fastnorm::add_layer_norm", _add_ln_backward, setup_context=_add_ln_setup)
torch.library.register_autograd("fastnorm::add_rms_norm", _add_rms_backward, setup_context=_add_rms_setup)


def _no_double_backward(op):
    def backward(ctx, *grads):
        raise RuntimeError(f"fastnorm.{op}: double backward is not supported (the backward op has no gradient)")
    return backward


for _op in ("layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm"):
    torch.library.register_autograd(f"fastnorm::{_op}_backward", _no_double_backward(_op),
                                    setup_context=lambda ctx, inputs, output: None)

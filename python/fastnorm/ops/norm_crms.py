"""CRMSNorm, functional API (specs/norm.md §2.1, §3.5): ``crms_norm`` with its fake kernel and autograd.

The input holds the first d-1 coordinates of a zero-mean vector of d elements (the last one is -sum(x)),
so ``crms_norm(x_full[..., :-1]) == rms_norm(x_full)[..., :-1]`` for zero-mean ``x_full``.
"""
from typing import Optional

import torch
from torch import Tensor

from ._common import CODE_DTYPE, check_eps, check_tensor, dtype_code, stats_dtype

ops = torch.ops.fastnorm


def _check_param(name: str, p: Optional[Tensor], n: int) -> None:
    if p is None:
        return
    check_tensor("crms_norm", name, p)
    if tuple(p.shape) != (n,):
        raise ValueError(f"fastnorm.crms_norm: {name} has shape {list(p.shape)} but x's last dimension is {n}")


def crms_norm(input: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5, *,
              out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """Compressed RMSNorm over the last dim of ``input`` (n = d-1 stored coordinates):
    ``y = weight * x * (( sum(x^2) + sum(x)^2 ) / d + eps)^(-1/2) + bias``.

    Statistics accumulate in float32 (float64 for float64 input); the output is rounded once to
    ``out_dtype`` (default: input's dtype).
    """
    check_tensor("crms_norm", "input", input)
    if input.dim() < 1:
        raise ValueError("fastnorm.crms_norm: input must have at least one dimension")
    n = input.shape[-1]
    _check_param("weight", weight, n)
    _check_param("bias", bias, n)
    y, _ = ops.crms_norm(input, weight, bias, check_eps("crms_norm", eps), dtype_code("crms_norm", out_dtype))
    return y


@torch.library.register_fake("fastnorm::crms_norm")
def _(x, weight, bias, eps, out_dtype=-1):
    y = torch.empty(x.shape, dtype=CODE_DTYPE.get(out_dtype, x.dtype), device=x.device)
    return y, x.new_empty(x.shape[:-1], dtype=stats_dtype(x.dtype))


def _wgrad(x, weight, need):
    dtype = weight.dtype if weight is not None else stats_dtype(x.dtype)
    return x.new_empty((x.shape[-1],) if need else (0,), dtype=dtype)


@torch.library.register_fake("fastnorm::crms_norm_backward")
def _(dy, x, rstd, weight, bias, need_dx=True, need_dweight=True, need_dbias=True):
    return (x.new_empty(x.shape if need_dx else (0,)), _wgrad(x, weight, need_dweight and weight is not None),
            _wgrad(x, weight, need_dbias and bias is not None))


def _setup(ctx, inputs, output):
    x, weight, bias = inputs[0], inputs[1], inputs[2]
    ctx.save_for_backward(x, output[1], weight, bias)


def _backward(ctx, dy, _drstd):
    x, rstd, weight, bias = ctx.saved_tensors
    need = tuple(ctx.needs_input_grad) + (False,) * 5
    need_w, need_b = need[1] and weight is not None, need[2] and bias is not None
    dx, dw, db = ops.crms_norm_backward(dy, x, rstd, weight, bias, need[0], need_w, need_b)
    return dx if need[0] else None, dw if need_w else None, db if need_b else None, None, None


def _no_double_backward(ctx, *grads):
    raise RuntimeError("fastnorm.crms_norm: double backward is not supported (the backward op has no gradient)")


torch.library.register_autograd("fastnorm::crms_norm", _backward, setup_context=_setup)
torch.library.register_autograd("fastnorm::crms_norm_backward", _no_double_backward,
                                setup_context=lambda ctx, inputs, output: None)

"""Plain-PyTorch reference of the norm family, written from the formulas of specs/norm.md §3.

Each function computes in the accumulation type (float32, or float64 for float64 input) and rounds where
the spec says, so it is both the float64 golden reference (call it on float64 tensors) and the unfused
baseline for benchmarks. Nothing here calls fastnorm kernels.
"""
from typing import Optional

import torch
from torch import Tensor


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def layer_norm(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5,
               out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """LayerNorm over the last dim: two-pass biased variance, eps inside the root."""
    a = _acc(x)
    xf = x.to(a)
    mean = xf.mean(-1, keepdim=True)
    var = (xf - mean).square().mean(-1, keepdim=True)
    y = (xf - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        y = y * weight.to(a)
    if bias is not None:
        y = y + bias.to(a)
    return y.to(out_dtype or x.dtype)


def rms_norm(x: Tensor, weight: Optional[Tensor] = None, eps: float = 1e-6, bias: Optional[Tensor] = None,
             offset: float = 0.0, casting: str = "gemma", out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """RMSNorm with the rounding points of ``casting`` (gemma / llama / none)."""
    a = _acc(x)
    xf = x.to(a)
    r = torch.rsqrt(xf.square().mean(-1, keepdim=True) + eps)
    g = None if weight is None else weight.to(a) + offset
    if casting == "gemma":
        y = xf * r
        out = out_dtype or x.dtype
    elif casting == "llama":
        y = (xf * r).to(x.dtype).to(a)
        out = out_dtype or (torch.promote_types(x.dtype, weight.dtype) if weight is not None else x.dtype)
    elif casting == "none":
        r = r.to(x.dtype).to(a)
        y = (xf * r).to(x.dtype).to(a)
        g = None if g is None else g.to(x.dtype).to(a)
        out = out_dtype or x.dtype
    else:
        raise ValueError(f"unknown casting {casting!r}")
    if g is not None:
        y = y * g
    if bias is not None:
        y = y + bias.to(a)
    return y.to(out)


def residual_sum(x: Tensor, residual: Optional[Tensor], residual_in_fp32: bool = False) -> Tensor:
    """s = x + residual summed in float32 (float64 for float64 x) and stored in the residual dtype rule."""
    if x.dtype == torch.float64:
        rd = torch.float64
    elif residual_in_fp32 or (residual is not None and residual.dtype == torch.float32):
        rd = torch.float32
    else:
        rd = x.dtype
    a = _acc(x)
    s = x.to(a) if residual is None else x.to(a) + residual.to(a)
    return s.to(rd)


def add_layer_norm(x, residual, weight=None, bias=None, eps=1e-5, residual_in_fp32=False, out_dtype=None):
    s = residual_sum(x, residual, residual_in_fp32)
    return layer_norm(s, weight, bias, eps, out_dtype or x.dtype), s


def add_rms_norm(x, residual, weight=None, eps=1e-6, bias=None, offset=0.0, casting="gemma",
                 residual_in_fp32=False, out_dtype=None):
    s = residual_sum(x, residual, residual_in_fp32)
    if out_dtype is None:  # the output follows x's dtype, not the stored sum's
        out_dtype = torch.promote_types(x.dtype, weight.dtype) if (casting == "llama" and weight is not None) \
            else x.dtype
    y = rms_norm(s, weight, eps, bias, offset, casting, out_dtype)
    return y, s


class LayerNorm(torch.nn.Module):
    """Reference module (the plain-PyTorch baseline in benchmarks)."""

    def __init__(self, n: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n, device=device, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.zeros(n, device=device, dtype=dtype))
        self.eps = eps

    def forward(self, x):
        return layer_norm(x, self.weight, self.bias, self.eps)


class RMSNorm(torch.nn.Module):
    def __init__(self, n: int, eps: float = 1e-6, casting: str = "gemma", device=None, dtype=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(n, device=device, dtype=dtype))
        self.eps, self.casting = eps, casting

    def forward(self, x):
        return rms_norm(x, self.weight, self.eps, casting=self.casting)

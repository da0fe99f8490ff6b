"""Plain-PyTorch reference of CRMSNorm (specs/norm.md §3.5), written from the formula (the official
``CRMSNorm`` of the Pre-CRMSNorm paper computes the same): float64 golden reference on float64 input, the
unfused baseline in benchmarks. Nothing here calls fastnorm kernels.
"""
from typing import Optional

import torch
from torch import Tensor


def crms_norm(x: Tensor, weight: Optional[Tensor] = None, bias: Optional[Tensor] = None, eps: float = 1e-5,
              out_dtype: Optional[torch.dtype] = None) -> Tensor:
    """y = weight * x * ((sum(x^2) + sum(x)^2) / d + eps)^(-1/2) + bias, d = x.shape[-1] + 1."""
    a = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(a)
    s = xf.sum(-1, keepdim=True)
    q = xf.square().sum(-1, keepdim=True) + s.square()
    y = xf * torch.rsqrt(q / (x.shape[-1] + 1) + eps)
    if weight is not None:
        y = y * weight.to(a)
    if bias is not None:
        y = y + bias.to(a)
    return y.to(out_dtype or x.dtype)


class CRMSNorm(torch.nn.Module):
    """Reference module: ``CRMSNorm(compressed_dim, eps=1e-5, elementwise_affine=False)``."""

    def __init__(self, compressed_dim: int, eps: float = 1e-5, elementwise_affine: bool = False, device=None,
                 dtype=None):
        super().__init__()
        self.compressed_dim, self.eps = compressed_dim, eps
        if elementwise_affine:
            self.weight = torch.nn.Parameter(torch.ones(compressed_dim, device=device, dtype=dtype))
            self.bias = torch.nn.Parameter(torch.zeros(compressed_dim, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        return crms_norm(x, self.weight, self.bias, self.eps)

"""``CRMSNorm`` module (specs/norm.md §2.2, §3.5): the norm of Pre-CRMSNorm transformers, whose residual
stream keeps d-1 coordinates of a zero-mean d-vector. Same constructor and state_dict keys as the official
``CRMSNorm`` (``weight``, ``bias`` only with ``elementwise_affine=True``).
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ops.norm_crms import crms_norm


class CRMSNorm(torch.nn.Module):
    def __init__(self, compressed_dim: int, eps: float = 1e-5, elementwise_affine: bool = False, device=None,
                 dtype=None):
        super().__init__()
        self.compressed_dim = int(compressed_dim)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        if elementwise_affine:
            self.weight = torch.nn.Parameter(torch.ones(self.compressed_dim, device=device, dtype=dtype))
            self.bias = torch.nn.Parameter(torch.zeros(self.compressed_dim, device=device, dtype=dtype))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor) -> Tensor:
        return crms_norm(x, self.weight, self.bias, self.eps)

    def fused_add(self, x: Tensor, residual: Optional[Tensor], *, residual_in_fp32: bool = False
                  ) -> Tuple[Tensor, Tensor]:
        """``(crms_norm(s), s)`` with ``s = x + residual`` summed in float32 (composite, not one kernel)."""
        s = _residual_sum(x, residual, residual_in_fp32)
        return crms_norm(s, self.weight, self.bias, self.eps, out_dtype=x.dtype), s

    def extra_repr(self) -> str:
        return f"{self.compressed_dim}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


def _residual_sum(x: Tensor, residual: Optional[Tensor], residual_in_fp32: bool) -> Tensor:
    """The add & norm sum rule of specs/norm.md §3.3: fp32 sum, stored in fp32 when asked or when the
    residual is fp32, else in x's dtype (float64 stays float64)."""
    if x.dtype == torch.float64:
        rd = torch.float64
    elif residual_in_fp32 or (residual is not None and residual.dtype == torch.float32):
        rd = torch.float32
    else:
        rd = x.dtype
    acc = torch.float64 if x.dtype == torch.float64 else torch.float32
    s = x.to(acc) if residual is None else x.to(acc) + residual.to(acc)
    return s.to(rd)

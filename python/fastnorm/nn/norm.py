"""Norm modules (specs/norm.md §2.2). ``LayerNorm`` and ``RMSNorm`` subclass torch's, so constructor
arguments, attributes, ``reset_parameters`` and state_dict keys are the same; only ``forward`` differs.
Every module also offers ``fused_add(x, residual)`` -> ``(y, residual_out)``.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ops import norm as F


class LayerNorm(torch.nn.LayerNorm):
    """Drop-in for :class:`torch.nn.LayerNorm` running fastnorm's fused kernels."""

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True, bias: bool = True,
                 device=None, dtype=None, *, memory_efficient: bool = False):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)
        F._check_memory_efficient("nn.LayerNorm", memory_efficient)
        self.memory_efficient = memory_efficient

    def forward(self, input: Tensor) -> Tensor:
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def fused_add(self, x: Tensor, residual: Optional[Tensor], *, residual_in_fp32: bool = False
                  ) -> Tuple[Tensor, Tensor]:
        return F.add_layer_norm(x, residual, self.normalized_shape, self.weight, self.bias, self.eps,
                                residual_in_fp32=residual_in_fp32)


class RMSNorm(torch.nn.RMSNorm):
    """Drop-in for :class:`torch.nn.RMSNorm` (``eps=None`` follows torch's kernels), plus an optional bias,
    Gemma's offset (``offset=1`` gives ``(1 + w)``, the weight then starts at 0) and the casting mode."""

    def __init__(self, normalized_shape, eps: Optional[float] = None, elementwise_affine: bool = True, device=None,
                 dtype=None, *, bias: bool = False, offset: float = 0.0, casting: str = "gemma",
                 memory_efficient: bool = False):
        self.offset = float(offset)
        super().__init__(normalized_shape, eps, elementwise_affine, device, dtype)
        F._casting_code("nn.RMSNorm", casting)
        F._check_memory_efficient("nn.RMSNorm", memory_efficient)
        self.casting = casting
        self.memory_efficient = memory_efficient
        if bias:
            self.bias = torch.nn.Parameter(torch.zeros(self.normalized_shape, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)

    def reset_parameters(self) -> None:
        if self.weight is not None:
            torch.nn.init.constant_(self.weight, 1.0 - self.offset)  # gamma_eff starts at 1
        if getattr(self, "bias", None) is not None:
            torch.nn.init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return F.rms_norm(input, self.normalized_shape, self.weight, self.eps, bias=self.bias,
                          offset=self.offset if self.weight is not None else 0.0, casting=self.casting)

    def fused_add(self, x: Tensor, residual: Optional[Tensor], *, residual_in_fp32: bool = False
                  ) -> Tuple[Tensor, Tensor]:
        return F.add_rms_norm(x, residual, self.normalized_shape, self.weight, self.eps, bias=self.bias,
                              offset=self.offset if self.weight is not None else 0.0, casting=self.casting,
                              residual_in_fp32=residual_in_fp32)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.offset:
            s += f", offset={self.offset}"
        return s + f", casting={self.casting!r}"


class LlamaRMSNorm(torch.nn.Module):
    """Drop-in for Hugging Face's ``LlamaRMSNorm`` (keeps ``variance_epsilon``; casting ``llama``)."""

    def __init__(self, hidden_size: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, device=device, dtype=dtype))
        self.variance_epsilon = eps

    def forward(self, hidden_states: Tensor) -> Tensor:
        return F.rms_norm(hidden_states, self.weight.shape, self.weight, self.variance_epsilon, casting="llama")

    def fused_add(self, x: Tensor, residual: Optional[Tensor], *, residual_in_fp32: bool = False
                  ) -> Tuple[Tensor, Tensor]:
        return F.add_rms_norm(x, residual, self.weight.shape, self.weight, self.variance_epsilon, casting="llama",
                              residual_in_fp32=residual_in_fp32)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


class FusedAddLayerNorm(LayerNorm):
    """LayerNorm with the residual add fused in: ``forward(x, residual=None) -> (y, residual_out)``."""

    def __init__(self, *args, residual_in_fp32: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        return self.fused_add(x, residual, residual_in_fp32=self.residual_in_fp32)


class FusedAddRMSNorm(RMSNorm):
    """RMSNorm with the residual add fused in: ``forward(x, residual=None) -> (y, residual_out)``."""

    def __init__(self, *args, residual_in_fp32: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, x: Tensor, residual: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        return self.fused_add(x, residual, residual_in_fp32=self.residual_in_fp32)

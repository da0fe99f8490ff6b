"""Test-time alpha-BN (specs/norm.md §2.2, §2.3, §3.8): ``AlphaBatchNorm2d`` and ``convert_alpha_bn``.

``AlphaBatchNorm2d.from_bn(bn, alpha)`` shares ``bn``'s Parameters and buffers (same storages, same
state_dict keys as ``BatchNorm2d``) and normalises with ``alpha * source + (1 - alpha) * batch``
statistics in train and eval mode alike; the running statistics are never updated.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ops.norm_alpha_bn import _check_alpha, alpha_batch_norm
from .norm_crms import _residual_sum


class AlphaBatchNorm2d(torch.nn.BatchNorm2d):
    def __init__(self, num_features: int, alpha: float = 1.0, eps: float = 1e-5, momentum: Optional[float] = 0.1,
                 affine: bool = True, device=None, dtype=None, *, unbiased_batch_var: bool = False):
        super().__init__(num_features, eps, momentum, affine, True, device, dtype)
        self.alpha = _check_alpha("nn.AlphaBatchNorm2d", alpha)
        self.unbiased_batch_var = bool(unbiased_batch_var)

    @classmethod
    def from_bn(cls, bn: torch.nn.modules.batchnorm._BatchNorm, alpha: float, *,
                unbiased_batch_var: bool = False) -> "AlphaBatchNorm2d":
        """A module that shares ``bn``'s weight, bias and buffers (no copies); eps from ``bn``."""
        if not isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            raise TypeError(f"fastnorm.nn.AlphaBatchNorm2d.from_bn: expected a BatchNorm module, got "
                            f"{type(bn).__name__}")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError("fastnorm.nn.AlphaBatchNorm2d.from_bn: the BatchNorm has no running statistics "
                             "(track_running_stats=False); alpha-BN needs source statistics")
        m = cls(bn.num_features, alpha, bn.eps, bn.momentum, bn.affine, device="meta",
                unbiased_batch_var=unbiased_batch_var)
        # Re-point every tensor at bn's: Parameters and buffers are shared, not copied.
        m.weight, m.bias = bn.weight, bn.bias
        m.running_mean, m.running_var = bn.running_mean, bn.running_var
        m.num_batches_tracked = bn.num_batches_tracked
        m.train(bn.training)
        return m

    def forward(self, input: Tensor) -> Tensor:
        return alpha_batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                                alpha_source=self.alpha, eps=self.eps, unbiased_batch_var=self.unbiased_batch_var)

    def fused_add(self, x: Tensor, residual: Optional[Tensor], *, residual_in_fp32: bool = False
                  ) -> Tuple[Tensor, Tensor]:
        """``(alpha_bn(s), s)`` with ``s = x + residual`` summed in float32 (composite, not one kernel)."""
        s = _residual_sum(x, residual, residual_in_fp32)
        return self.forward(s), s

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}"


def convert_alpha_bn(model: torch.nn.Module, alpha: float, *, types=(torch.nn.BatchNorm2d,)) -> torch.nn.Module:
    """Replaces, in place, every submodule that is an instance of ``types`` by an ``AlphaBatchNorm2d``
    sharing its tensors (``alpha`` = weight of the source statistics). Returns the model (the new module
    when ``model`` itself matches). Raises on a matching BatchNorm without running statistics."""
    _check_alpha("convert_alpha_bn", alpha)
    types = tuple(types)

    def convert(m):
        if isinstance(m, AlphaBatchNorm2d) or not isinstance(m, types):
            return None
        if getattr(m, "running_mean", None) is None or getattr(m, "running_var", None) is None:
            raise ValueError(f"fastnorm.convert_alpha_bn: {type(m).__name__} has no running statistics "
                             f"(track_running_stats=False); alpha-BN needs source statistics")
        return AlphaBatchNorm2d.from_bn(m, alpha)

    root = convert(model)
    if root is not None:
        return root
    for name, mod in list(model.named_modules()):
        for child_name, child in list(mod.named_children()):
            new = convert(child)
            if new is not None:
                setattr(mod, child_name, new)
    return model

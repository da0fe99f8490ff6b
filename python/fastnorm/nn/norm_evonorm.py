"""EvoNorm modules (specs/norm.md §2.2, §3.9): drop-ins for timm's ``EvoNorm2dB0`` / ``EvoNorm2dS0`` with the
same constructor arguments, initialisation and state_dict keys (``weight``, ``bias``, ``v``, B0 also
``running_var``). ``semantics="tf"`` follows the TensorFlow reference instead (eps, running variance
without Bessel, S0 group lowering, max-tie gradient); TF's names ``gamma``/``beta``/``v``/``moving_variance``
map one to one onto these keys.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ops import norm_evonorm as F
from .norm_crms import _residual_sum


class _FusedAdd:
    def fused_add(self, x: Tensor, residual: Optional[Tensor], *, residual_in_fp32: bool = False
                  ) -> Tuple[Tensor, Tensor]:
        """``(evonorm(s), s)`` with ``s = x + residual`` summed in float32 (composite, not one kernel), the
        add & norm rule every fastnorm norm module shares (specs/norm.md §2.2, §3.3)."""
        s = _residual_sum(x, residual, residual_in_fp32)
        return self.forward(s), s


class EvoNorm2dB0(_FusedAdd, torch.nn.Module):
    """EvoNorm-B0 on [B, C, H, W] input (NCHW or channels_last). In training the batch variance is used
    and ``running_var`` is updated; in eval ``running_var`` is used. ``eps=None``: 1e-3 (timm) / 1e-5 (tf).
    ``apply_act=False`` drops the normalisation (and ``v``): y = weight*x + bias."""

    def __init__(self, num_features: int, apply_act: bool = True, momentum: float = 0.1, eps: Optional[float] = None,
                 *, semantics: str = "timm", device=None, dtype=None):
        super().__init__()
        F.semantics_code("nn.EvoNorm2dB0", semantics)
        dd = {"device": device, "dtype": dtype}
        self.apply_act = apply_act
        self.momentum = float(momentum)
        self.eps = F.default_b0_eps(semantics) if eps is None else float(eps)
        self.semantics = semantics
        self.weight = torch.nn.Parameter(torch.empty(num_features, **dd))
        self.bias = torch.nn.Parameter(torch.empty(num_features, **dd))
        if apply_act:
            self.v = torch.nn.Parameter(torch.empty(num_features, **dd))
        else:
            self.register_parameter("v", None)
        self.register_buffer("running_var", torch.ones(num_features, **dd))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.ones_(self.weight)
        torch.nn.init.zeros_(self.bias)
        if self.v is not None:
            torch.nn.init.ones_(self.v)

    def forward(self, x: Tensor) -> Tensor:
        return F.evonorm_b0(x, self.weight, self.bias, self.v, self.running_var, training=self.training,
                            momentum=self.momentum, eps=self.eps, semantics=self.semantics)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, apply_act={self.apply_act}, momentum={self.momentum}, eps={self.eps}, "
                f"semantics={self.semantics!r}")


class EvoNorm2dS0(_FusedAdd, torch.nn.Module):
    """EvoNorm-S0 on [B, C, H, W] input: y = x * sigmoid(v*x) / group_std(x) * weight + bias. ``group_size``
    overrides ``groups``; with ``semantics="tf"`` a group count that does not divide C is lowered until it
    does (timm raises). ``apply_act=False`` drops the normalisation (and ``v``)."""

    def __init__(self, num_features: int, groups: int = 32, group_size: Optional[int] = None, apply_act: bool = True,
                 eps: Optional[float] = None, *, semantics: str = "timm", device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.apply_act = apply_act
        self.groups = F.resolve_groups("nn.EvoNorm2dS0", num_features, groups, group_size, semantics,
                                         check=apply_act)
        self.eps = 1e-5 if eps is None else float(eps)
        self.semantics = semantics
        self.weight = torch.nn.Parameter(torch.empty(num_features, **dd))
        self.bias = torch.nn.Parameter(torch.empty(num_features, **dd))
        if apply_act:
            self.v = torch.nn.Parameter(torch.empty(num_features, **dd))
        else:
            self.register_parameter("v", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.ones_(self.weight)
        torch.nn.init.zeros_(self.bias)
        if self.v is not None:
            torch.nn.init.ones_(self.v)

    def forward(self, x: Tensor) -> Tensor:
        # groups is already resolved: pass it as timm semantics so the functional only checks it.
        return F.evonorm_s0(x, self.weight, self.bias, self.v, groups=self.groups, eps=self.eps)

    def extra_repr(self) -> str:
        return (f"{self.weight.shape[0]}, groups={self.groups}, apply_act={self.apply_act}, eps={self.eps}, "
                f"semantics={self.semantics!r}")

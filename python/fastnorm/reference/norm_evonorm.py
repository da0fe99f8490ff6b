"""Plain-PyTorch references of EvoNorm B0 / S0 (specs/norm.md §3.9), written from the paper's formulas and the
behaviour described in the spec (timm's and TensorFlow's conventions), not from either code base.

They follow timm's rounding points (statistics in float32 or float64, then cast to the input dtype; the
element-wise formula in the input dtype) and are the always-available parity targets of the tests and the
baselines of the benchmarks. Nothing here calls fastnorm kernels.
"""
from typing import Optional

import torch
from torch import Tensor

_SHAPE = (1, -1, 1, 1)


def _acc(x: Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _std(x: Tensor, dims, eps: float) -> Tensor:
    """sqrt(biased variance over dims + eps), computed in the accumulation type, cast back to x's dtype."""
    return x.to(_acc(x)).var(dim=dims, unbiased=False, keepdim=True).add(eps).sqrt().to(x.dtype)


def group_std(x: Tensor, groups: int, eps: float) -> Tensor:
    """Per sample and group of C/groups channels, broadcast back to x's shape."""
    b, c, h, w = x.shape
    if c % groups != 0:
        raise ValueError(f"groups ({groups}) must divide the number of channels ({c})")
    std = _std(x.reshape(b, groups, c // groups, h, w), (2, 3, 4), eps)
    return std.expand(b, groups, c // groups, h, w).reshape(b, c, h, w)


def _max(left: Tensor, right: Tensor, semantics: str) -> Tensor:
    """max(L, R) with the tie gradient of each framework: torch.maximum splits it in half (timm); TF's
    maximum sends it to the first argument (L). NaN propagates from either side."""
    if semantics == "timm":
        return torch.maximum(left, right)
    return torch.where((right > left) | right.isnan(), right, left)


def evonorm_b0(x: Tensor, weight: Tensor, bias: Tensor, v: Optional[Tensor], running_var: Optional[Tensor], *,
               training: bool, momentum: float = 0.1, eps: float = 1e-3, semantics: str = "timm") -> Tensor:
    """EvoNorm-B0; updates ``running_var`` in place when training (Bessel-corrected for timm, not for tf)."""
    if v is not None:
        if training:
            var = x.to(_acc(x)).var(dim=(0, 2, 3), unbiased=False)
            n = x.numel() / x.shape[1]
            k = n / (n - 1) if semantics == "timm" else 1.0
            with torch.no_grad():
                running_var.copy_(running_var * (1 - momentum) + var.detach() * momentum * k)
        else:
            var = running_var
        left = var.add(eps).sqrt().to(x.dtype).view(_SHAPE).expand_as(x)
        right = x * v.to(x.dtype).view(_SHAPE) + _std(x, (2, 3), eps).expand_as(x)
        x = x / _max(left, right, semantics)
    return x * weight.to(x.dtype).view(_SHAPE) + bias.to(x.dtype).view(_SHAPE)


def evonorm_s0(x: Tensor, weight: Tensor, bias: Tensor, v: Optional[Tensor], *, groups: int,
               eps: float = 1e-5) -> Tensor:
    """EvoNorm-S0 with an already resolved group count."""
    if v is not None:
        x = x * (x * v.to(x.dtype).view(_SHAPE)).sigmoid() / group_std(x, groups, eps)
    return x * weight.to(x.dtype).view(_SHAPE) + bias.to(x.dtype).view(_SHAPE)


def tf_groups(num_channels: int, groups: int) -> int:
    """TensorFlow's rule: lower the group count until it divides the channels."""
    g = min(groups, num_channels)
    while num_channels % g != 0:
        g -= 1
    return g


class EvoNorm2dB0(torch.nn.Module):
    """Reference module with timm's constructor, init and state_dict keys."""

    def __init__(self, num_features: int, apply_act: bool = True, momentum: float = 0.1, eps: Optional[float] = None,
                 *, semantics: str = "timm", device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        self.apply_act, self.momentum, self.semantics = apply_act, momentum, semantics
        self.eps = (1e-3 if semantics == "timm" else 1e-5) if eps is None else eps
        self.weight = torch.nn.Parameter(torch.ones(num_features, **dd))
        self.bias = torch.nn.Parameter(torch.zeros(num_features, **dd))
        self.v = torch.nn.Parameter(torch.ones(num_features, **dd)) if apply_act else None
        self.register_buffer("running_var", torch.ones(num_features, **dd))

    def forward(self, x: Tensor) -> Tensor:
        return evonorm_b0(x, self.weight, self.bias, self.v, self.running_var, training=self.training,
                          momentum=self.momentum, eps=self.eps, semantics=self.semantics)


class EvoNorm2dS0(torch.nn.Module):
    """Reference module with timm's constructor, init and state_dict keys (``semantics="tf"`` lowers groups)."""

    def __init__(self, num_features: int, groups: int = 32, group_size: Optional[int] = None, apply_act: bool = True,
                 eps: Optional[float] = None, *, semantics: str = "timm", device=None, dtype=None):
        super().__init__()
        dd = {"device": device, "dtype": dtype}
        if group_size:
            assert num_features % group_size == 0
            groups = num_features // group_size
        elif semantics == "tf":
            groups = tf_groups(num_features, groups)
        self.groups, self.apply_act, self.semantics = groups, apply_act, semantics
        self.eps = 1e-5 if eps is None else eps
        self.weight = torch.nn.Parameter(torch.ones(num_features, **dd))
        self.bias = torch.nn.Parameter(torch.zeros(num_features, **dd))
        self.v = torch.nn.Parameter(torch.ones(num_features, **dd)) if apply_act else None

    def forward(self, x: Tensor) -> Tensor:
        return evonorm_s0(x, self.weight, self.bias, self.v, groups=self.groups, eps=self.eps)

"""Poincaré-ball modules and the Poincaré ResNet (specs/poincare.md §2.2, §3.9).

Tangent (log0) coordinates are the representation between layers, as in the official Poincaré ResNet: conv,
batch norm and the residual take and return tangent NCHW maps, so ReLU, pooling and zero padding stay plain
torch. Every module owns its curvature: a 0-dim buffer ``c`` (fixed), or with ``learn_c=True`` a parameter
``c_raw`` with c = softplus(c_raw), initialised to softplus⁻¹(c). Weights and biases are Euclidean parameters
(any torch optimizer). ``impl="reference"`` runs the same parameters and buffers through the plain-PyTorch
reference (``fastnorm.reference.poincare_layers``), the tests' oracle and the benchmarks' baseline.
"""
import math
from typing import Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import poincare as P
from ..ops import poincare_layers as L
from ..reference import poincare as RP
from ..reference import poincare_layers as RL
from . import init as pinit

__all__ = ["PoincareLinear", "PoincareConv2d", "PoincareBatchNorm2d", "PoincareResidualBlock", "PoincareResNet",
           "poincare_resnet20", "poincare_resnet32"]

_IMPLS = ("fastnorm", "reference")
_INITS = ("identity", "unfold_eye", "normal")


def _softplus_inv(c: float) -> float:
    # log(expm1(c)), stable for large c
    return c + math.log(-math.expm1(-c))


class _Curved(nn.Module):
    """Shared curvature handling and the impl switch."""

    def _setup(self, name: str, c: float, learn_c: bool, impl: str, device, dtype) -> None:
        if impl not in _IMPLS:
            raise ValueError(f"fastnorm.nn.{name}: impl must be one of {list(_IMPLS)}, got {impl!r}")
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not (float(c) > 0) or not math.isfinite(c):
            raise ValueError(f"fastnorm.nn.{name}: c must be a finite float > 0, got {c!r}")
        self.impl = impl
        self.learn_c = bool(learn_c)
        dtype = dtype if dtype is not None else torch.get_default_dtype()
        if self.learn_c:
            self.c_raw = nn.Parameter(torch.tensor(_softplus_inv(float(c)), dtype=dtype, device=device))
        else:
            self.register_buffer("c", torch.tensor(float(c), dtype=dtype, device=device))

    def curvature(self) -> Tensor:
        """The curvature magnitude c as a 0-dim tensor (differentiable when learn_c)."""
        return F.softplus(self.c_raw) if self.learn_c else self.c

    def _curv_repr(self) -> str:
        return f"c={float(self.curvature().detach()):.4g}, learn_c={self.learn_c}, impl={self.impl!r}"


def _check_init(name: str, init: str) -> str:
    if init not in _INITS:
        raise ValueError(f"fastnorm.nn.{name}: init must be one of {list(_INITS)}, got {init!r}")
    return init


def _init_weight(weight: Tensor, init: str) -> None:
    if init == "normal":
        pinit.poincare_normal_(weight)
    else:
        pinit.poincare_identity_(weight, mode="center" if init == "identity" else "unfold_eye")


class PoincareLinear(_Curved):
    """HNN++ Poincaré FC (λ fixed, §3.5) with ``nn.Linear``'s weight [out, in] / bias [out] (loadable from it).

    ``io="tangent"``: tangent vectors in, log0 of the output out (the official layout between layers);
    ``io="ball"``: ball points in and out. ``init``: "identity" (½·I: the exact identity for io="ball", n = m),
    "unfold_eye" (same for 2-D), "normal" (HNN++). Bias init 0.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, io: str = "tangent",
                 init: str = "identity", project: bool = True, c: float = 0.1, learn_c: bool = False,
                 impl: str = "fastnorm", device=None, dtype=None) -> None:
        super().__init__()
        if io not in ("tangent", "ball"):
            raise ValueError(f"fastnorm.nn.PoincareLinear: io must be 'tangent' or 'ball', got {io!r}")
        self._setup("PoincareLinear", c, learn_c, impl, device, dtype)
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.io, self.init, self.project = io, _check_init("PoincareLinear", init), bool(project)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features, **fk))
        self.bias = nn.Parameter(torch.empty(self.out_features, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_weight(self.weight, self.init)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        t = self.io == "tangent"
        fn = L.poincare_linear if self.impl == "fastnorm" else RL.poincare_linear
        return fn(x, self.weight, self.bias, self.curvature(), tangent_input=t, tangent_output=t,
                  project=self.project)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"io={self.io!r}, {self._curv_repr()}")


def _pair(name: str, arg: str, v, lo: int) -> Tuple[int, int]:
    if isinstance(v, int) and not isinstance(v, bool):
        v = (v, v)
    v = tuple(v)
    if len(v) != 2 or any(int(i) < lo for i in v):
        raise ValueError(f"fastnorm.nn.{name}: {arg} must be an int or pair >= {lo}, got {v}")
    return int(v[0]), int(v[1])


class PoincareConv2d(_Curved):
    """Poincaré conv2d (§3.7) with ``nn.Conv2d``'s weight/bias shapes (groups = 1, zero padding); tangent NCHW
    in and out. ``init``: "identity" (centre tap ½), "unfold_eye" (the official ½·eye over the unfolded
    index), "normal"."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, *, init: str = "identity", c: float = 0.1, learn_c: bool = False,
                 impl: str = "fastnorm", device=None, dtype=None) -> None:
        super().__init__()
        self._setup("PoincareConv2d", c, learn_c, impl, device, dtype)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size = _pair("PoincareConv2d", "kernel_size", kernel_size, 1)
        self.stride = _pair("PoincareConv2d", "stride", stride, 1)
        self.padding = _pair("PoincareConv2d", "padding", padding, 0)
        self.dilation = _pair("PoincareConv2d", "dilation", dilation, 1)
        self.init = _check_init("PoincareConv2d", init)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(self.out_channels, self.in_channels, *self.kernel_size, **fk))
        self.bias = nn.Parameter(torch.empty(self.out_channels, **fk)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _init_weight(self.weight, self.init)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        fn = L.poincare_conv2d if self.impl == "fastnorm" else RL.poincare_conv2d
        return fn(x, self.weight, self.bias, self.curvature(), stride=self.stride, padding=self.padding,
                  dilation=self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}, "
                f"{self._curv_repr()}")


class PoincareBatchNorm2d(_Curved):
    """Midpoint batch norm (§3.8) on tangent NCHW maps; statistics joint over channels (one mean point, one
    scalar Fréchet variance). ``weight`` γ [] (target variance, init 1), ``bias`` β [C] (target mean as a
    tangent vector at 0, init 0). Training updates ``running_mean`` (geodesic EMA towards the batch midpoint)
    and ``running_var`` (unbiased EMA); eval uses them. ``track_running_stats=False`` uses batch statistics in
    eval too — the official code's behaviour (its buffers are never updated or read)."""

    def __init__(self, num_features: int, eps: float = 1e-6, momentum: Optional[float] = 0.1,
                 track_running_stats: bool = True, *, c: float = 0.1, learn_c: bool = False, impl: str = "fastnorm",
                 device=None, dtype=None) -> None:
        super().__init__()
        self._setup("PoincareBatchNorm2d", c, learn_c, impl, device, dtype)
        if not (float(eps) > 0):
            raise ValueError(f"fastnorm.nn.PoincareBatchNorm2d: eps must be > 0, got {eps}")
        if momentum is not None and not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"fastnorm.nn.PoincareBatchNorm2d: momentum must be in [0, 1] or None, got {momentum}")
        self.num_features, self.eps, self.momentum = int(num_features), float(eps), momentum
        self.track_running_stats = bool(track_running_stats)
        fk = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.ones((), **fk))
        self.bias = nn.Parameter(torch.zeros(self.num_features, **fk))
        if self.track_running_stats:
            self.register_buffer("running_mean", torch.zeros(self.num_features, **fk))
            self.register_buffer("running_var", torch.ones((), **fk))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)

    def reset_running_stats(self) -> None:
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"fastnorm.nn.PoincareBatchNorm2d: expected 4-D input [B, C, H, W], got shape "
                             f"{list(x.shape)}")
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
        fn = L.poincare_midpoint_batch_norm if self.impl == "fastnorm" else RL.poincare_midpoint_batch_norm
        return fn(x, self.weight, self.bias, self.curvature(), self.running_mean, self.running_var,
                  training=self.training, momentum=self.momentum, eps=self.eps, dim=1,
                  num_batches_tracked=self.num_batches_tracked)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"track_running_stats={self.track_running_stats}, {self._curv_repr()}")


class PoincareResidualBlock(_Curved):
    """conv3×3(stride) → BN → ReLU → conv3×3 → BN, plus the shortcut (x, or a Poincaré 1×1 conv with the block's
    stride when the stride or the width changes), joined by ``poincare_residual`` (f(x) ⊕ x for
    ``skip_order="fr"``, x ⊕ f(x) for ``"rf"``), then ReLU (§3.9)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, *, skip_order: str = "fr",
                 track_running_stats: bool = True, conv_init: str = "identity", c: float = 0.1,
                 learn_c: bool = False, impl: str = "fastnorm", device=None, dtype=None) -> None:
        super().__init__()
        if skip_order not in ("fr", "rf"):
            raise ValueError(f"fastnorm.nn.PoincareResidualBlock: skip_order must be 'fr' or 'rf', got {skip_order!r}")
        self._setup("PoincareResidualBlock", c, learn_c, impl, device, dtype)
        self.skip_order = skip_order
        k = {"c": c, "learn_c": learn_c, "impl": impl, "device": device, "dtype": dtype}
        self.conv1 = PoincareConv2d(in_channels, out_channels, 3, stride=stride, padding=1, init=conv_init, **k)
        self.bn1 = PoincareBatchNorm2d(out_channels, track_running_stats=track_running_stats, **k)
        self.conv2 = PoincareConv2d(out_channels, out_channels, 3, stride=1, padding=1, init=conv_init, **k)
        self.bn2 = PoincareBatchNorm2d(out_channels, track_running_stats=track_running_stats, **k)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = PoincareConv2d(in_channels, out_channels, 1, stride=stride, init=conv_init, **k)
        else:
            self.shortcut = None

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        s = x if self.shortcut is None else self.shortcut(x)
        a, b = (h, s) if self.skip_order == "fr" else (s, h)
        fn = P.poincare_residual if self.impl == "fastnorm" else RP.residual
        return F.relu(fn(a, b, self.curvature(), dim=1))


class PoincareResNet(nn.Module):
    """Poincaré ResNet (§3.9): stem conv3×3 → BN → ReLU, three stages of (depth − 2)/6 residual blocks with
    widths w₁, w₂, w₃ (stride 2 at the start of stages 2 and 3), global mean of the tangent map over H, W (any
    input size), ``PoincareLinear(w₃, num_classes, io="tangent")`` whose log0 outputs are the logits."""

    def __init__(self, depth: int = 20, widths: Sequence[int] = (16, 32, 64), num_classes: int = 10,
                 in_channels: int = 3, *, skip_order: str = "fr", track_running_stats: bool = True,
                 conv_init: str = "identity", c: float = 0.1, learn_c: bool = False, impl: str = "fastnorm",
                 device=None, dtype=None) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6 != 0:
            raise ValueError(f"fastnorm.nn.PoincareResNet: depth must be 6n+2 with n >= 1 (8, 14, 20, 32, ...), "
                             f"got {depth!r}")
        widths = tuple(int(w) for w in widths)
        if len(widths) != 3:
            raise ValueError(f"fastnorm.nn.PoincareResNet: widths must have three entries, got {widths}")
        n = (depth - 2) // 6
        k = {"c": c, "learn_c": learn_c, "impl": impl, "device": device, "dtype": dtype}
        self.depth, self.widths = depth, widths
        self.stem = PoincareConv2d(in_channels, widths[0], 3, padding=1, init=conv_init, **k)
        self.stem_bn = PoincareBatchNorm2d(widths[0], track_running_stats=track_running_stats, **k)
        stages = []
        cin = widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(PoincareResidualBlock(cin, w, stride, skip_order=skip_order,
                                                    track_running_stats=track_running_stats, conv_init=conv_init,
                                                    **k))
                cin = w
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.ModuleList(stages)
        self.fc = PoincareLinear(widths[2], num_classes, io="tangent", **k)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError(f"fastnorm.nn.PoincareResNet: expected 4-D input [B, C, H, W], got shape {list(x.shape)}")
        h = F.relu(self.stem_bn(self.stem(x)))
        for stage in self.stages:
            h = stage(h)
        return self.fc(h.mean(dim=(2, 3)))


def poincare_resnet20(**kw) -> PoincareResNet:
    """Poincaré ResNet-20 (three stages of 3 blocks)."""
    return PoincareResNet(depth=20, **kw)


def poincare_resnet32(**kw) -> PoincareResNet:
    """Poincaré ResNet-32 (three stages of 5 blocks)."""
    return PoincareResNet(depth=32, **kw)

"""Weight initialisation functions of fastnorm's layers (``fastnorm.nn.init``).

Poincaré layers (specs/poincare.md §2.2): ``poincare_identity_`` and ``poincare_normal_``.
"""
import math

import torch
from torch import Tensor

__all__ = ["poincare_identity_", "poincare_normal_"]

_MODES = ("center", "unfold_eye")


def _fans(op: str, weight: Tensor):
    if not isinstance(weight, Tensor):
        raise TypeError(f"fastnorm.nn.init.{op}: weight must be a Tensor, got {type(weight).__name__}")
    if weight.dim() not in (2, 4):
        raise ValueError(f"fastnorm.nn.init.{op}: weight must be 2-D [out, in] or 4-D [out, in, kh, kw], got shape "
                         f"{list(weight.shape)}")
    m = weight.shape[0]
    n = math.prod(weight.shape[1:])
    return n, m


def poincare_normal_(weight: Tensor) -> Tensor:
    """HNN++ init: N(0, std = (2·n·m)^(-1/2)), n = in·kh·kw, m = out. In place; returns weight."""
    n, m = _fans("poincare_normal_", weight)
    std = (2.0 * max(n, 1) * max(m, 1)) ** -0.5
    with torch.no_grad():
        return weight.normal_(0.0, std)


def poincare_identity_(weight: Tensor, *, mode: str = "center") -> Tensor:
    """Identity init of a Poincaré FC/conv weight. In place; returns weight.

    2-D: ½·eye(out, in) — with the corrected conformal factor the Poincaré FC with zero bias is then exactly the
    identity on the ball (n = m). 4-D ``"center"``: W[o, o, kh//2, kw//2] = ½ for o < min(in, out), else 0.
    4-D ``"unfold_eye"``: W.view(out, -1) = ½·eye (the official code's choice: output j reads channel j//(kh·kw)
    at window offset j mod kh·kw). Rows that have no identity partner (o ≥ in, or o ≥ in·kh·kw for
    ``unfold_eye``) are filled by ``poincare_normal_``.
    """
    if mode not in _MODES:
        raise ValueError(f"fastnorm.nn.init.poincare_identity_: mode must be one of {list(_MODES)}, got {mode!r}")
    n, m = _fans("poincare_identity_", weight)
    with torch.no_grad():
        normal = poincare_normal_(torch.empty_like(weight))
        weight.zero_()
        if weight.dim() == 2 or mode == "unfold_eye":
            w2 = weight.view(m, n)
            k = min(m, n)
            w2[:k, :k] += 0.5 * torch.eye(k, dtype=weight.dtype, device=weight.device)
            if m > n:
                weight.view(m, n)[n:] = normal.view(m, n)[n:]
        else:
            cin = weight.shape[1]
            k = min(m, cin)
            idx = torch.arange(k, device=weight.device)
            weight[idx, idx, weight.shape[2] // 2, weight.shape[3] // 2] = 0.5
            if m > cin:
                weight[cin:] = normal[cin:]
    return weight

"""``UnifiedNorm`` (alias ``UN1d``): Unified Normalization with the official module's state_dict, and
``fold_into_linear`` (specs/norm.md §2.2, §2.3, §3.7)."""
from typing import Tuple, Union

import torch
from torch import Tensor

from ..ops import norm_unified as F


class UnifiedNorm(torch.nn.Module):
    """Unified Normalization over (B, N, C) or (N, C) inputs, reproducing the official ``UN1d``.

    ``window_size`` is an int or a (forward, backward) pair (the lengths of ``buffer_x2`` and
    ``buffer_gz``). ``iters`` counts training calls (int64 buffer); a Python int mirror is kept so the
    forward never reads a device value (re-read once after ``load_state_dict``). Training updates the
    forward state in forward and ``ema_gz``/``buffer_gz`` in backward, like the official module (so
    activation checkpointing or a second backward update the state twice, as there); that path is a
    graph break under ``torch.compile``. Eval is ``weight * x / sqrt(running_var + eps) + bias`` and
    compiles with ``fullgraph=True``.
    """

    def __init__(self, channels: int, window_size: Union[int, Tuple[int, int]] = 4, warmup_iters: int = 4000,
                 outlier_filtration: bool = False, eps: float = 1e-5, momentum: float = 0.9, *,
                 compensation_start: int = 1000, device=None, dtype=None):
        super().__init__()
        if isinstance(window_size, int):
            lf = lb = window_size
        else:
            lf, lb = (int(w) for w in window_size)
        if lf < 1 or lb < 1:
            raise ValueError(f"fastnorm.UnifiedNorm: window sizes must be >= 1, got {window_size}")
        if not 0.0 <= float(momentum) <= 1.0:
            raise ValueError(f"fastnorm.UnifiedNorm: momentum must be in [0, 1], got {momentum}")
        F.check_eps("UnifiedNorm", eps)
        self.channels = int(channels)
        self.window_size = (lf, lb)
        self.warmup_iters = int(warmup_iters)
        self.outlier_filtration = bool(outlier_filtration)
        self.eps = float(eps)
        self.momentum = float(momentum)
        self.compensation_start = int(compensation_start)
        fk = {"device": device, "dtype": dtype}
        self.weight = torch.nn.Parameter(torch.ones(channels, **fk))
        self.bias = torch.nn.Parameter(torch.zeros(channels, **fk))
        self.register_buffer("running_var", torch.ones(channels, **fk))
        self.register_buffer("ema_gz", torch.zeros(channels, **fk))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.int64, device=device))
        self.register_buffer("buffer_x2", torch.ones(lf, channels, **fk))
        self.register_buffer("buffer_gz", torch.zeros(lb, channels, **fk))
        self.register_buffer("skip_counter", torch.zeros(1, dtype=torch.int64, device=device))
        self._iters = 0
        self.register_load_state_dict_post_hook(UnifiedNorm._reread_iters)

    @staticmethod
    def _reread_iters(module, incompatible_keys) -> None:
        module._iters = int(module.iters.item())  # one host read, at load time only

    def extra_repr(self) -> str:
        return (f"{self.channels}, window_size={self.window_size}, warmup_iters={self.warmup_iters}, "
                f"outlier_filtration={self.outlier_filtration}, eps={self.eps}, momentum={self.momentum}, "
                f"compensation_start={self.compensation_start}")

    def forward(self, x: Tensor, pad_mask: Tensor = None) -> Tensor:
        if self.training:
            self._iters += 1
            with torch.no_grad():
                self.iters.add_(1)
        return F.unified_norm(x, self.weight, self.bias, self.running_var, self.ema_gz, self.buffer_x2,
                              self.buffer_gz, self.skip_counter, training=self.training, iteration=self._iters,
                              pad_mask=pad_mask, warmup_iters=self.warmup_iters,
                              outlier_filtration=self.outlier_filtration, eps=self.eps, momentum=self.momentum,
                              compensation_start=self.compensation_start)

    def fused_add(self, x: Tensor, residual: Tensor, *, residual_in_fp32: bool = False,
                  pad_mask: Tensor = None) -> Tuple[Tensor, Tensor]:
        """``s = x + residual`` (summed in float32 and kept in float32 with ``residual_in_fp32`` or a float32
        residual, else in x's dtype), then ``(self(s), s)``; unfused for UN (its statistics span the batch)."""
        if residual is None:
            s = x.clone()
        else:
            wide = residual_in_fp32 or residual.dtype == torch.float32
            dt = torch.float64 if x.dtype == torch.float64 else (torch.float32 if wide else x.dtype)
            s = (x.float() + residual.float()).to(dt) if x.dtype != torch.float64 else x + residual
        return self(s, pad_mask), s


UN1d = UnifiedNorm


@torch.no_grad()
def fold_into_linear(norm: UnifiedNorm, linear: torch.nn.Linear, *, where: str = "after") -> torch.nn.Linear:
    """Folds an eval-mode ``UnifiedNorm`` (``y = a*x + beta``, ``a = weight/sqrt(running_var + eps)``) into
    ``linear`` and returns a new ``nn.Linear``. ``where="after"``: the norm feeds the Linear
    (``W' = W diag(a)``, ``b' = W beta + b``); ``"before"``: the Linear feeds the norm
    (``W' = diag(a) W``, ``b' = a*b + beta``). Folding is computed in float64 and stored in the Linear's dtype."""
    if not isinstance(norm, UnifiedNorm):
        raise TypeError(f"fastnorm.fold_into_linear: norm must be a fastnorm.nn.UnifiedNorm, got {type(norm).__name__}")
    if not isinstance(linear, torch.nn.Linear):
        raise TypeError(f"fastnorm.fold_into_linear: linear must be a torch.nn.Linear, got {type(linear).__name__}")
    if norm.training:
        raise ValueError("fastnorm.fold_into_linear: norm must be in eval mode (call norm.eval()); in training "
                         "mode it uses batch statistics and cannot be folded")
    if where not in ("after", "before"):
        raise ValueError(f"fastnorm.fold_into_linear: where must be 'after' or 'before', got {where!r}")
    c = norm.channels
    w = linear.weight.double()
    b = linear.bias.double() if linear.bias is not None else torch.zeros(w.shape[0], dtype=torch.float64,
                                                                          device=w.device)
    a = norm.weight.double() / torch.sqrt(norm.running_var.double() + norm.eps)
    beta = norm.bias.double()
    if where == "after":
        if linear.in_features != c:
            raise ValueError(f"fastnorm.fold_into_linear: linear.in_features is {linear.in_features} but the norm "
                             f"has {c} channels")
        nw, nb = w * a, w @ beta + b
    else:
        if linear.out_features != c:
            raise ValueError(f"fastnorm.fold_into_linear: linear.out_features is {linear.out_features} but the "
                             f"norm has {c} channels")
        nw, nb = a[:, None] * w, a * b + beta
    out = torch.nn.Linear(linear.in_features, linear.out_features, bias=True, device=linear.weight.device,
                          dtype=linear.weight.dtype)
    out.weight.copy_(nw)
    out.bias.copy_(nb)
    return out

"""``PowerNorm`` (alias ``MaskPowerNorm``), specs/norm.md §2.2, §3.6: loads the official MaskPowerNorm's
checkpoints (keys weight, bias, running_phi [1, C, 1, 1], ema_gz [1, C, 1, 1], iters [1] int64).

The step count lives in the ``iters`` buffer and in a Python int mirror, so a training step never reads
the device; the mirror is re-read once after ``load_state_dict``. Write the step count through
``load_state_dict`` (not by editing ``iters`` in place) so the two stay equal.
"""
from typing import Optional, Tuple

import torch
from torch import Tensor

from ..ops import norm_power as F


class PowerNorm(torch.nn.Module):
    """PowerNorm with GroupScaling over (T, B, C) (or (B, T, C) with ``batch_first``, or (B, C)) inputs.

    Training: quadratic mean over non-pad tokens during warmup (t <= warmup_iters), running_phi after;
    running_phi updated in forward, ema_gz in backward. The training path is a graph break under
    ``torch.compile``; eval compiles with ``fullgraph=True``. ``affine=False`` drops weight and bias
    (the official module ignored the flag).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, alpha_fwd: float = 0.9, alpha_bkw: float = 0.9,
                 affine: bool = True, warmup_iters: int = 10000, group_num: int = 1, *, group_eps: float = 1e-5,
                 batch_first: bool = False, quirks: str = "official", device=None, dtype=None):
        super().__init__()
        op = "nn.PowerNorm"
        F.check_group_num(op, group_num, num_features)
        F.quirks_code(op, quirks)
        for name, v in (("alpha_fwd", alpha_fwd), ("alpha_bkw", alpha_bkw)):
            F._check_unit(op, name, v)
        kw = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps, self.group_eps = float(eps), float(group_eps)
        self.afwd, self.abkw = float(alpha_fwd), float(alpha_bkw)
        self.affine = affine
        self.warmup_iters = int(warmup_iters)
        self.group_num = int(group_num)
        self.batch_first = bool(batch_first)
        self.quirks = quirks
        if affine:
            self.weight = torch.nn.Parameter(torch.ones(num_features, **kw))
            self.bias = torch.nn.Parameter(torch.zeros(num_features, **kw))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.register_buffer("running_phi", torch.ones(1, num_features, 1, 1, **kw))
        self.register_buffer("ema_gz", torch.zeros(1, num_features, 1, 1, **kw))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.long, device=device))
        self._iters = 0
        self.register_load_state_dict_post_hook(PowerNorm._reread_iters)

    @staticmethod
    def _reread_iters(module, incompatible_keys) -> None:
        module._iters = int(module.iters.item())  # once per load: the only device read

    def reset_running_stats(self) -> None:
        self.running_phi.fill_(1.0)
        self.ema_gz.zero_()
        self.iters.zero_()
        self._iters = 0

    def forward(self, x: Tensor, pad_mask: Optional[Tensor] = None) -> Tensor:
        if self.training:
            return self._train_step(x, pad_mask)
        return F.power_norm(x, self.weight, self.bias, self.running_phi, self.ema_gz, training=False, iteration=1,
                            eps=self.eps, group_num=self.group_num, group_eps=self.group_eps)

    @torch.compiler.disable
    def _train_step(self, x: Tensor, pad_mask: Optional[Tensor]) -> Tensor:
        self._iters += 1
        self.iters.fill_(self._iters)
        return F.power_norm(x, self.weight, self.bias, self.running_phi, self.ema_gz, training=True,
                            iteration=self._iters, pad_mask=pad_mask, eps=self.eps, alpha_fwd=self.afwd,
                            alpha_bkw=self.abkw, warmup_iters=self.warmup_iters, group_num=self.group_num,
                            group_eps=self.group_eps, batch_first=self.batch_first, quirks=self.quirks)

    def fused_add(self, x: Tensor, residual: Optional[Tensor], *, residual_in_fp32: bool = False,
                  pad_mask: Optional[Tensor] = None) -> Tuple[Tensor, Tensor]:
        """``s = x + residual`` (fp32 sum; stored in fp32 with ``residual_in_fp32`` or an fp32 residual, else
        in x's dtype), then ``y = self(s)`` in x's dtype. Returns ``(y, s)``. Not fused: PowerNorm's batch
        statistic needs every token before any output."""
        if residual is None:
            s = x.float() if residual_in_fp32 and x.dtype != torch.float64 else x
        else:
            wide = residual_in_fp32 or residual.dtype == torch.float32
            sd = x.dtype if x.dtype == torch.float64 else (torch.float32 if wide else x.dtype)
            s = (x.to(torch.promote_types(x.dtype, residual.dtype)) + residual).to(sd)
        return self(s.to(x.dtype), pad_mask), s

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, alpha_fwd={self.afwd}, alpha_bkw={self.abkw}, "
                f"affine={self.affine}, warmup_iters={self.warmup_iters}, group_num={self.group_num}, "
                f"batch_first={self.batch_first}, quirks={self.quirks!r}")


MaskPowerNorm = PowerNorm

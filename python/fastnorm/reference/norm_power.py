"""Plain-PyTorch replica of the official MaskPowerNorm (specs/norm.md §3.6), written from the spec's math,
in both readings: ``quirks="official"`` (the released code, Q1-Q4 as it behaves) and ``quirks="paper"``.

Structure follows the official module: GroupScaling by autograd, then an autograd.Function that normalises
with the quadratic mean of the non-pad tokens (warmup) or running_phi, updates running_phi in forward and
ema_gz in backward, and returns the approximate gradient. It keeps the official state_dict keys. Extras
the official module lacks: ``batch_first`` and ``quirks``. Like the official module it always applies weight
and bias, and reads iters from the device each step (it syncs; it is a reference, not a kernel).
"""
from typing import Optional

import torch
from torch import Tensor


def group_scaling(x: Tensor, group_num: int, eps: float = 1e-5) -> Tensor:
    """x / sqrt(mean over each group of C/G channels of x^2 + eps), per token; exact autograd gradient."""
    T, B, C = x.shape
    cg = C // group_num
    g = x.reshape(T, B, group_num, cg)
    moment2 = torch.repeat_interleave((g * g).mean(dim=3, keepdim=True), repeats=cg, dim=-1).reshape(T, B, C)
    return x / torch.sqrt(moment2 + eps)


class _PowerFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, running_phi, eps, afwd, abkw, ema_gz, warmup_iters, current_iter, mask_x,
                valid, paper):
        # x: (T, B, C) after GroupScaling; mask_x: (n_V, C) its non-pad tokens; valid: (T, B) bool.
        C = x.shape[-1]
        t = int(current_iter.item())
        q = (mask_x * mask_x).mean(dim=0)                     # quadratic mean over V (NaN if V is empty)
        phi = running_phi.reshape(C)
        if t <= warmup_iters:
            denom = torch.sqrt(q + eps)
        else:
            denom = torch.sqrt(phi + eps)
        z = x / denom
        if paper:
            if t <= warmup_iters:
                new_phi = phi * (t - 1) / t + q / t
            else:
                new_phi = afwd * phi + (1 - afwd) * q
        else:
            new_phi = phi
            if t < warmup_iters:
                new_phi = new_phi * (t - 1) / t + q / t
            new_phi = afwd * new_phi + (1 - afwd) * q
        running_phi.copy_(new_phi.reshape(running_phi.shape))
        ctx.save_for_backward(z, q, denom, weight, valid)
        ctx.ema_gz, ctx.eps, ctx.abkw, ctx.paper = ema_gz, eps, abkw, paper
        return weight * z + bias

    @staticmethod
    def backward(ctx, dy):
        z, q, denom, weight, valid = ctx.saved_tensors
        ema_gz, C = ctx.ema_gz, z.shape[-1]
        nu = ema_gz.reshape(C)
        g = dy * weight
        gh = g - (1 - ctx.abkw) * nu * z
        if ctx.paper:
            stat = (gh * z)[valid].mean(dim=0)                   # Q4: over non-pad tokens
            gx = gh / denom                                     # Q1: the forward's divisor
        else:
            stat = (gh * z).mean(dim=(0, 1))                    # over all T*B tokens, pads included
            gx = gh / torch.sqrt(q + ctx.eps)                   # batch statistic even after warmup
        ema_gz.add_(stat.reshape(ema_gz.shape))
        return (gx, (dy * z).sum(dim=(0, 1)), dy.sum(dim=(0, 1))) + (None,) * 10


class MaskPowerNormRef(torch.nn.Module):
    """Reference MaskPowerNorm: same constructor and state_dict as the official module (plus extras)."""

    def __init__(self, num_features, eps=1e-5, alpha_fwd=0.9, alpha_bkw=0.9, affine=True, warmup_iters=10000,
                 group_num=1, *, group_eps=1e-5, batch_first=False, quirks="official", device=None, dtype=None):
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.num_features, self.eps, self.group_eps = num_features, eps, group_eps
        self.afwd, self.abkw, self.affine = alpha_fwd, alpha_bkw, affine
        self.warmup_iters, self.group_num = warmup_iters, group_num
        self.batch_first, self.paper = batch_first, quirks == "paper"
        self.weight = torch.nn.Parameter(torch.ones(num_features, **kw))
        self.bias = torch.nn.Parameter(torch.zeros(num_features, **kw))
        self.register_buffer("running_phi", torch.ones(1, num_features, 1, 1, **kw))
        self.register_buffer("ema_gz", torch.zeros(1, num_features, 1, 1, **kw))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.long, device=device))

    def forward(self, x: Tensor, pad_mask: Optional[Tensor] = None) -> Tensor:
        two_d = x.dim() == 2
        if two_d:
            x = x.unsqueeze(0) if not self.batch_first else x.unsqueeze(1)
        if self.batch_first:
            x = x.transpose(0, 1)
        T, B, C = x.shape
        x = group_scaling(x, self.group_num, self.group_eps)
        if pad_mask is None:
            valid = torch.ones(T, B, dtype=torch.bool, device=x.device)
        else:
            valid = (~pad_mask).transpose(0, 1)
        mask_x = x[valid, :].reshape(-1, C)
        if self.training:
            self.iters.copy_(self.iters + 1)
            y = _PowerFunction.apply(x, self.weight, self.bias, self.running_phi, self.eps, self.afwd, self.abkw,
                                     self.ema_gz, self.warmup_iters, self.iters, mask_x, valid, self.paper)
        else:
            y = x / torch.sqrt(self.running_phi.reshape(C) + self.eps) * 1.0
            y = self.weight * y + self.bias
        if self.batch_first:
            y = y.transpose(0, 1)
        if two_d:
            y = y.squeeze(0) if not self.batch_first else y.squeeze(1)
        return y.contiguous()

"""Plain-PyTorch replica of the official Unified Normalization module ``UN1d`` (Yang et al., ACM MM 2022;
hikvision-research/Unified-Normalization), written from the math of specs/norm.md §3.7 (not copied).

It keeps the official structure: buffers updated in place in forward (running_var, buffer_x2,
skip_counter) and in a custom backward (ema_gz, buffer_gz), host-side Python control flow (the official
code branches on Python values; this replica reads ``skip`` on the host, fastnorm never does), and
every quirk listed in §8: dweight uses rho*z although the forward used z, the backward subtracts the
*updated* ema_gz, the outlier test uses one global unbiased variance, gz averages over pads, momentum
weights the old value, a window of 1 forces skip. Works in the module's dtype (float64 for replays).
"""
from typing import Tuple, Union

import torch
from torch import Tensor


class _UNFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, module, var, rho, skip, t):
        z = x / torch.sqrt(var + module.eps)
        ctx.save_for_backward(z, var, rho, weight)
        ctx.module, ctx.skip, ctx.t = module, skip, t
        return weight * z + bias

    @staticmethod
    def backward(ctx, dy):
        z, var, rho, weight = ctx.saved_tensors
        m, skip, t = ctx.module, ctx.skip, ctx.t
        lb = m.buffer_gz.shape[0]
        g = dy * weight * rho
        gz = (g * z).mean(dim=(0, 1))  # every position, pads included
        with torch.no_grad():
            m.buffer_gz[t % lb].copy_(m.ema_gz if skip else gz)
            if t <= lb or t < m.warmup_iters or skip:
                mean_gz = gz
            else:
                mean_gz = m.buffer_gz.mean(dim=0)
            m.ema_gz.mul_(m.momentum).add_((1 - m.momentum) * mean_gz)
            sub = mean_gz if skip else m.ema_gz
        gh = g - sub * z
        dx = gh / torch.sqrt(var + m.eps)
        dw = (dy * rho * z).sum(dim=(0, 1))
        db = dy.sum(dim=(0, 1))
        return dx, dw, db, None, None, None, None, None


class UN1d(torch.nn.Module):
    """Reference UN1d; forward(x, pad_mask=None) with x (B, N, C) or (N, C), pad_mask (B, N) True = pad."""

    def __init__(self, channels: int, window_size: Union[int, Tuple[int, int]] = 4, warmup_iters: int = 4000,
                 outlier_filtration: bool = False, eps: float = 1e-5, momentum: float = 0.9,
                 compensation_start: int = 1000):
        super().__init__()
        lf, lb = (window_size, window_size) if isinstance(window_size, int) else window_size
        self.channels, self.warmup_iters, self.outlier_filtration = channels, warmup_iters, outlier_filtration
        self.eps, self.momentum, self.compensation_start = eps, momentum, compensation_start
        self.weight = torch.nn.Parameter(torch.ones(channels))
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))
        self.register_buffer("ema_gz", torch.zeros(channels))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.int64))
        self.register_buffer("buffer_x2", torch.ones(lf, channels))
        self.register_buffer("buffer_gz", torch.zeros(lb, channels))
        self.register_buffer("skip_counter", torch.zeros(1, dtype=torch.int64))

    def forward(self, x: Tensor, pad_mask: Tensor = None) -> Tensor:
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(0)
            if pad_mask is not None:
                pad_mask = pad_mask.reshape(1, -1)
        if not self.training:
            y = self.weight * x / torch.sqrt(self.running_var + self.eps) + self.bias
            return y[0] if squeeze else y
        self.iters += 1
        t = int(self.iters.item())
        lf = self.buffer_x2.shape[0]
        with torch.no_grad():
            xs = x.detach()
            if pad_mask is not None:
                xs = xs[~pad_mask]  # valid tokens only
            q = (xs.reshape(-1, x.shape[-1]) ** 2).mean(dim=0)
            v = torch.sqrt(self.buffer_x2).var()  # unbiased, all Lf*C entries, before insertion
            self.buffer_x2[t % lf].copy_(q)
            skip = lf <= 1
            if self.outlier_filtration and t >= self.warmup_iters:
                am = self.buffer_x2.mean(dim=0)
                gm = torch.exp(torch.log(self.buffer_x2).mean(dim=0))
                if bool(((am - gm) > v * lf).any()):
                    self.buffer_x2[t % lf].copy_(self.running_var)
                    skip = True
                    self.skip_counter += 1
            if t <= lf or t < self.warmup_iters or skip:
                var = q
            else:
                var = torch.exp(torch.log(self.buffer_x2).mean(dim=0))
            if t <= max(self.compensation_start, self.warmup_iters) or skip:
                rho = torch.ones_like(var)
            else:
                rho = (torch.sqrt(var + self.eps) / torch.sqrt(self.running_var + self.eps)).clamp(1 / 5, 5)
            self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var)
        y = _UNFunction.apply(x, self.weight, self.bias, self, var, rho, skip, t)
        return y[0] if squeeze else y

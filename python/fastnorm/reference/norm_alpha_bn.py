"""Plain-PyTorch reference of test-time alpha-BN (specs/norm.md §3.8): the float64 golden reference on
float64 input and the unfused baseline in benchmarks (autograd gives its backward). Nothing here calls
fastnorm kernels.
"""
from typing import Optional

import torch
from torch import Tensor


def alpha_batch_norm(x: Tensor, running_mean: Tensor, running_var: Tensor, weight: Optional[Tensor] = None,
                     bias: Optional[Tensor] = None, alpha_source: float = 1.0, eps: float = 1e-5,
                     unbiased_batch_var: bool = False) -> Tensor:
    """mu = a*rm + (1-a)*mean_b, var = a*rv + (1-a)*var_b (per channel, dim 1); y = w*(x-mu)/sqrt(var+eps) + b."""
    a = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(a)
    dims = [0] + list(range(2, x.dim()))
    shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
    mu_b = xf.mean(dims)
    var_b = xf.var(dims, correction=1 if unbiased_batch_var else 0)
    al = float(alpha_source)
    if al == 1:  # the batch statistics drop out (also when they are NaN, e.g. an empty batch)
        mu, var = running_mean.to(a), running_var.to(a)
    elif al == 0:
        mu, var = mu_b, var_b
    else:
        mu = al * running_mean.to(a) + (1 - al) * mu_b
        var = al * running_var.to(a) + (1 - al) * var_b
    y = (xf - mu.view(shape)) * torch.rsqrt(var.view(shape) + eps)
    if weight is not None:
        y = y * weight.to(a).view(shape)
    if bias is not None:
        y = y + bias.to(a).view(shape)
    return y.to(x.dtype)


class AlphaBatchNorm2d(torch.nn.Module):
    """Reference module with BatchNorm2d's parameters and buffers; applies alpha-BN in train and eval."""

    def __init__(self, num_features: int, alpha: float, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.weight = torch.nn.Parameter(torch.ones(num_features, **kw))
        self.bias = torch.nn.Parameter(torch.zeros(num_features, **kw))
        self.register_buffer("running_mean", torch.zeros(num_features, **kw))
        self.register_buffer("running_var", torch.ones(num_features, **kw))
        self.alpha, self.eps = alpha, eps

    def forward(self, x: Tensor) -> Tensor:
        return alpha_batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, self.alpha, self.eps)

"""Mix-LN (Li, Yin & Liu, ICLR 2025; specs/norm.md §3.10): Post-LN in the first layers, Pre-LN in the rest.

``mixln_layer_types`` picks the layer types from explicit arguments (the official code reads environment
variables, some forks hard-code the post count); ``MixLNBlock`` is a Llama-style decoder layer of either type
whose residual adds are fused into the norms through ``fused_add``.
"""
import math
import operator
from typing import List

import torch
from torch import Tensor

from .norm import LayerNorm, LlamaRMSNorm

_LAYER_TYPES = ("pre", "post")
_NORMS = ("rms", "layer")


def mixln_layer_types(L: int, alpha: float = 0.25) -> List[str]:
    """``["post"] * k + ["pre"] * (L - k)`` with ``k = floor(alpha * L + 1e-9)`` (L = 12 gives 3 post layers).

    The 1e-9 guards binary rounding: 0.29 * 100 is 28.999999999999996 in binary floating point, yet 29 post
    layers are meant.
    """
    try:
        n = operator.index(L) if not isinstance(L, bool) else -1
    except TypeError:
        n = -1
    if n < 0:
        raise ValueError(f"fastnorm.mixln_layer_types: L must be an int >= 0, got {L!r}")
    L = n
    alpha = float(alpha)
    if not (0.0 <= alpha <= 1.0):
        raise ValueError(f"fastnorm.mixln_layer_types: alpha must be in [0, 1], got {alpha}")
    k = min(L, math.floor(alpha * L + 1e-9))
    return ["post"] * k + ["pre"] * (L - k)


def _first(out):
    # HF attention modules return (hidden, weights, ...); plain modules return the tensor.
    return out[0] if isinstance(out, (tuple, list)) else out


class MixLNBlock(torch.nn.Module):
    """A Llama decoder layer of Mix-LN type ``"pre"`` or ``"post"``.

    ``"pre"``:  ``n1 = input_layernorm(h); a = self_attn(n1, ...)``;
    ``(n2, s) = post_attention_layernorm.fused_add(a, h)``; ``out = s + mlp(n2)``.
    ``"post"``: ``(h1, _) = post_attention_layernorm.fused_add(self_attn(h, ...), h)``;
    ``(out, _) = post_feedforward_layernorm.fused_add(mlp(h1), h1)``.

    ``norm="rms"`` builds :class:`LlamaRMSNorm` norms, ``norm="layer"`` :class:`LayerNorm` ones. Extra
    positional and keyword arguments of ``forward`` go to ``self_attn``; a tuple result contributes its first
    element. The model's final norm is not part of the block.
    """

    def __init__(self, layer_type: str, hidden_size: int, self_attn: torch.nn.Module, mlp: torch.nn.Module, *,
                 norm: str = "rms", eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        if layer_type not in _LAYER_TYPES:
            raise ValueError(f"fastnorm.MixLNBlock: layer_type must be 'pre' or 'post', got {layer_type!r}")
        if norm not in _NORMS:
            raise ValueError(f"fastnorm.MixLNBlock: norm must be 'rms' or 'layer', got {norm!r}")
        for name, mod in (("self_attn", self_attn), ("mlp", mlp)):
            if not isinstance(mod, torch.nn.Module):
                raise TypeError(f"fastnorm.MixLNBlock: {name} must be a torch.nn.Module, got {type(mod).__name__}")
        self.layer_type = layer_type
        self.norm_kind = norm
        self.hidden_size = int(hidden_size)
        self.self_attn = self_attn
        self.mlp = mlp

        def make():
            if norm == "rms":
                return LlamaRMSNorm(self.hidden_size, eps=eps, device=device, dtype=dtype)
            return LayerNorm(self.hidden_size, eps=eps, device=device, dtype=dtype)

        # Names (and so state_dict keys) follow the Mix-LN Llama code.
        if layer_type == "pre":
            self.input_layernorm = make()
            self.post_attention_layernorm = make()
        else:
            self.post_attention_layernorm = make()
            self.post_feedforward_layernorm = make()

    def forward(self, hidden_states: Tensor, *args, **kwargs) -> Tensor:
        h = hidden_states
        if self.layer_type == "pre":
            a = _first(self.self_attn(self.input_layernorm(h), *args, **kwargs))
            n2, s = self.post_attention_layernorm.fused_add(a, h)
            return s + self.mlp(n2)
        a = _first(self.self_attn(h, *args, **kwargs))
        h1, _ = self.post_attention_layernorm.fused_add(a, h)
        out, _ = self.post_feedforward_layernorm.fused_add(self.mlp(h1), h1)
        return out

    def extra_repr(self) -> str:
        return f"layer_type={self.layer_type!r}, hidden_size={self.hidden_size}, norm={self.norm_kind!r}"

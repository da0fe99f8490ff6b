"""Minimal in-repo LoRA (Hu et al., arXiv 2106.09685) with PEFT's conventions, used by ``examples/sara_finetune.py``
and ``bench/python/bench_sara_finetune.py`` when ``peft`` is not installed (specs/sara.md §2.5, §7 B5).

y = base(x) + (dropout(x)·Aᵀ·Bᵀ)·(α/r), A [r, in] Kaiming-uniform (a = √5), B [out, r] zeros, the base layer frozen.
Same autograd structure as PEFT's ``lora.Linear`` (the base F.linear plus two small matmuls).
"""
from __future__ import annotations

import math
import re
from typing import List, Optional, Union

import torch
from torch import nn

__all__ = ["LoRALinear", "apply_lora", "lora_parameters"]


class LoRALinear(nn.Module):
    def __init__(self, base_layer: nn.Linear, r: int = 8, lora_alpha: float = 8.0, lora_dropout: float = 0.0):
        super().__init__()
        if not isinstance(base_layer, nn.Linear):
            raise TypeError(f"fastnorm.reference.lora.LoRALinear: base_layer must be nn.Linear, got "
                            f"{type(base_layer).__name__}")
        if not (isinstance(r, int) and r >= 1):
            raise ValueError(f"fastnorm.reference.lora.LoRALinear: r must be an int >= 1, got {r!r}")
        self.base_layer = base_layer
        self.r = r
        self.scaling = float(lora_alpha) / r
        w = base_layer.weight
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, device=w.device, dtype=w.dtype)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, device=w.device, dtype=w.dtype)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B.weight)
        self.dropout = nn.Dropout(lora_dropout) if lora_dropout > 0 else nn.Identity()
        base_layer.weight.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling

    @torch.no_grad()
    def merge_and_unload(self) -> nn.Linear:
        self.base_layer.weight += (self.lora_B.weight @ self.lora_A.weight) * self.scaling
        return self.base_layer


def _matches(rule, name: str) -> bool:
    if rule is None:
        return False
    if isinstance(rule, str):
        return re.fullmatch(rule, name) is not None
    return any(name == k or name.endswith("." + k) for k in rule)


def apply_lora(model: nn.Module, target_modules: Union[str, List[str]], r: int = 8, lora_alpha: float = 8.0,
               lora_dropout: float = 0.0, modules_to_save: Optional[Union[str, List[str]]] = None) -> nn.Module:
    """Freeze ``model``, wrap the matching nn.Linear layers (PEFT rules) in place, make ``modules_to_save`` trainable."""
    for p in model.parameters():
        p.requires_grad_(False)
    for name, m in list(model.named_modules()):
        if name and _matches(target_modules, name):
            if not isinstance(m, nn.Linear):
                raise TypeError(f"fastnorm.reference.lora.apply_lora: {name!r} is {type(m).__name__}, not nn.Linear")
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, LoRALinear(m, r, lora_alpha, lora_dropout))
    for name, m in model.named_modules():
        if name and _matches(modules_to_save, name):
            for p in m.parameters():
                p.requires_grad_(True)
    return model


def lora_parameters(model: nn.Module) -> List[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]

"""fastnorm modules: drop-in replacements for torch.nn layers backed by fastnorm kernels."""
from .norm import FusedAddLayerNorm, FusedAddRMSNorm, LayerNorm, LlamaRMSNorm, RMSNorm

__all__ = ["LayerNorm", "RMSNorm", "LlamaRMSNorm", "FusedAddLayerNorm", "FusedAddRMSNorm"]

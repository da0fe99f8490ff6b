"""fastnorm modules: drop-in replacements for torch.nn layers backed by fastnorm kernels."""
from .norm import FusedAddLayerNorm, FusedAddRMSNorm, LayerNorm, LlamaRMSNorm, RMSNorm
from .norm_crms import CRMSNorm
from .norm_power import MaskPowerNorm, PowerNorm
from .norm_unified import UN1d, UnifiedNorm, fold_into_linear
from .norm_alpha_bn import AlphaBatchNorm2d
from .norm_evonorm import EvoNorm2dB0, EvoNorm2dS0
from .norm_mixln import MixLNBlock, mixln_layer_types
from .norm_patch import patch
from .hyper_attention import HyperAttention, patch_attention
from .sara import SaRAConv2d, SaRALayer, SaRALinear, SaRAVectorDelta

__all__ = [
    "LayerNorm", "RMSNorm", "LlamaRMSNorm", "FusedAddLayerNorm", "FusedAddRMSNorm", "CRMSNorm", "PowerNorm",
    "MaskPowerNorm", "UnifiedNorm", "UN1d", "fold_into_linear", "AlphaBatchNorm2d", "EvoNorm2dB0", "EvoNorm2dS0",
    "MixLNBlock", "mixln_layer_types", "patch",
    "HyperAttention", "patch_attention",
]
from . import init  # noqa: E402,F401  (fastnorm.nn.init: poincare_identity_, poincare_normal_)
from .poincare import PoincareBatchNorm2d, PoincareConv2d, PoincareLinear, PoincareResidualBlock, PoincareResNet, poincare_resnet20, poincare_resnet32  # noqa: E402,F401,E501
__all__ += ["PoincareLinear", "PoincareConv2d", "PoincareBatchNorm2d", "PoincareResidualBlock", "PoincareResNet", "poincare_resnet20", "poincare_resnet32", "init"]  # noqa: E501
__all__ += ["SaRALayer", "SaRALinear", "SaRAConv2d", "SaRAVectorDelta"]  # noqa: E402
from .hyper_attention import hf_attention_forward, patch_hf_attention  # noqa: E402,F401  (transformers integration)
__all__ += ["hf_attention_forward", "patch_hf_attention"]

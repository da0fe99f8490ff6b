"""fastnorm modules: drop-in replacements for torch.nn layers backed by fastnorm kernels."""
from .norm import FusedAddLayerNorm, FusedAddRMSNorm, LayerNorm, LlamaRMSNorm, RMSNorm
from .norm_unified import UN1d, UnifiedNorm, fold_into_linear  # noqa: F401
from .norm_mixln import MixLNBlock, mixln_layer_types  # noqa: F401
from .norm_patch import patch  # noqa: F401
from .norm_crms import CRMSNorm  # noqa: F401
from .norm_alpha_bn import AlphaBatchNorm2d  # noqa: F401

__all__ = ["LayerNorm", "RMSNorm", "LlamaRMSNorm", "FusedAddLayerNorm", "FusedAddRMSNorm"]
__all__ += ["MixLNBlock", "mixln_layer_types", "patch"]
__all__ += ["CRMSNorm", "AlphaBatchNorm2d"]
from .norm_power import MaskPowerNorm, PowerNorm
__all__ += ["PowerNorm", "MaskPowerNorm"]
from .norm_evonorm import EvoNorm2dB0, EvoNorm2dS0  # noqa: F401,E402
__all__ += ["EvoNorm2dB0", "EvoNorm2dS0"]

"""fastnorm: hand-written C++/CUDA kernels exposed as ``torch.ops.fastnorm.*``.

Importing the package loads ``fastnorm._C`` (op schemas and CPU kernels) and, when torch was built with
CUDA, ``fastnorm._C_cuda`` (CUDA kernels) if it was compiled in.
"""
import torch  # noqa: F401  (torch must be loaded before the extension libraries)

from . import _build
from ._build import __version__

_build.load_extensions()

# Functional ops, one module per family (and per norm op).
from .ops.norm import add_layer_norm, add_rms_norm, layer_norm, rms_norm  # noqa: E402
from .ops.norm_crms import crms_norm  # noqa: E402
from .ops.norm_power import power_norm  # noqa: E402
from .ops.norm_unified import channel_affine, unified_norm  # noqa: E402
from .ops.norm_alpha_bn import alpha_batch_norm  # noqa: E402
from .ops.norm_evonorm import evonorm_b0, evonorm_s0  # noqa: E402
from .ops.lion import lion_step_  # noqa: E402
from .ops.hyper_attention import hyper_attention, hyper_attention_merge  # noqa: E402
from .ops import poincare  # noqa: E402  (fastnorm.poincare: the Poincaré-ball functional API)
from .ops.sara import sara_conv2d, sara_linear, sara_merge  # noqa: E402
from . import nn, optim, reference  # noqa: E402
from . import sara  # noqa: E402  (fastnorm.sara: SaRA, SaRAConfig, model-level functions)
# Model utilities of the norm family.
from .nn.norm_crms_surgery import PreLNSpec, pre_ln_to_pre_crmsnorm, pre_ln_to_pre_rmsnorm  # noqa: E402
from .nn.norm_unified import fold_into_linear  # noqa: E402
from .nn.norm_alpha_bn import convert_alpha_bn  # noqa: E402
from .nn.norm_mixln import mixln_layer_types  # noqa: E402
from .nn.norm_patch import patch  # noqa: E402

__all__ = [
    "__version__",
    # norm
    "layer_norm", "rms_norm", "add_layer_norm", "add_rms_norm", "crms_norm", "power_norm", "unified_norm",
    "channel_affine", "alpha_batch_norm", "evonorm_b0", "evonorm_s0",
    "PreLNSpec", "pre_ln_to_pre_rmsnorm", "pre_ln_to_pre_crmsnorm", "fold_into_linear", "convert_alpha_bn",
    "mixln_layer_types", "patch",
    # lion
    "lion_step_",
    # hyper_attention, poincare, sara
    "hyper_attention", "hyper_attention_merge", "poincare", "sara", "sara_linear", "sara_conv2d", "sara_merge",
    # subpackages
    "nn", "optim", "reference",
]

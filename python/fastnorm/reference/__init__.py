"""Plain-PyTorch references of every fastnorm op (tests and benchmarks compare against them)."""
from . import norm
from . import lion
from . import norm_unified
from . import norm_crms, norm_alpha_bn  # noqa: F401
from . import norm_power
from . import norm_evonorm  # noqa: F401
from . import hyper_attention  # noqa: F401  (a submodule, as for every family)
from . import poincare  # noqa: F401
from . import lora  # noqa: F401
from . import poincare_layers  # noqa: F401

__all__ = ["norm"]
from . import sara  # noqa: F401

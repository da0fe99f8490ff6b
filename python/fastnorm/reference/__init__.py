"""Plain-PyTorch references of every fastnorm op (tests and benchmarks compare against them)."""
from . import norm
from . import lion
from . import norm_unified

__all__ = ["norm"]

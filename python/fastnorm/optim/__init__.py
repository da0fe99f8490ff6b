"""torch.optim.Optimizer subclasses built on fastnorm's fused ops."""
from .lion import Lion

__all__ = ["Lion"]

"""torch.optim.Optimizer subclasses built on fastnorm's fused ops."""
from .lion import Lion
from .sara import SaRA

__all__ = ["Lion", "SaRA"]

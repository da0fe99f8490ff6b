"""Helpers shared by the functional ops of every family: dtype codes, argument checks, row flattening."""
import math
from typing import Optional, Sequence, Union

import torch

# fastnorm::DType codes (csrc/include/fastnorm/common.h); -1 means "the op's default".
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}
CODE_DTYPE = {v: k for k, v in DTYPE_CODE.items()}
FLOAT_DTYPES = tuple(DTYPE_CODE)


def dtype_code(op: str, dtype: Optional[torch.dtype]) -> int:
    if dtype is None:
        return -1
    if dtype not in DTYPE_CODE:
        raise TypeError(f"fastnorm.{op}: out_dtype must be one of float32, float16, bfloat16, float64, got {dtype}")
    return DTYPE_CODE[dtype]


def stats_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-row statistics are float32, float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_tensor(op: str, name: str, t) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"fastnorm.{op}: {name} must be a Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"fastnorm.{op}: {name} must be float32, float16, bfloat16 or float64, got {t.dtype}")


def check_eps(op: str, eps: float) -> float:
    eps = float(eps)
    if not (eps > 0) or not math.isfinite(eps):
        raise ValueError(f"fastnorm.{op}: eps must be a finite value > 0, got {eps}")
    return eps


def normalized_numel(op: str, x: torch.Tensor, normalized_shape: Union[int, Sequence[int], torch.Size]) -> int:
    """Checks that normalized_shape is x's trailing shape; returns the number of elements it covers."""
    shape = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    if len(shape) == 0:
        raise ValueError(f"fastnorm.{op}: normalized_shape must have at least one dimension")
    if tuple(x.shape[x.dim() - len(shape):]) != shape or len(shape) > x.dim():
        raise ValueError(
            f"fastnorm.{op}: normalized_shape {list(shape)} is not the trailing shape of input {list(x.shape)}")
    return math.prod(shape)


def as_rows(x: torch.Tensor, k: int) -> torch.Tensor:
    """Collapses the k normalised trailing dims into one (a view where the layout allows)."""
    return x if k == 1 else x.flatten(x.dim() - k)


def flat_param(op: str, name: str, p: Optional[torch.Tensor], shape: tuple, n: int) -> Optional[torch.Tensor]:
    """weight/bias must have exactly normalized_shape; returned flattened to [n]."""
    if p is None:
        return None
    check_tensor(op, name, p)
    if tuple(p.shape) != tuple(shape):
        what = f"x's last dimension is {shape[0]}" if len(shape) == 1 else f"normalized_shape is {list(shape)}"
        raise ValueError(f"fastnorm.{op}: {name} has shape {list(p.shape)} but {what}")
    return p if p.dim() == 1 else p.reshape(n)


def trailing_shape(x: torch.Tensor, normalized_shape) -> tuple:
    """The trailing dims of x that normalized_shape names."""
    k = 1 if isinstance(normalized_shape, int) else len(tuple(normalized_shape))
    return tuple(x.shape[x.dim() - k:])

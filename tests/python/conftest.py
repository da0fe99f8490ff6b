"""Shared test helpers and the `cuda` marker (skipped without a GPU)."""
import os

import pytest
import torch

import fastnorm  # noqa: F401  (loads the ops)

HAS_CUDA = torch.cuda.is_available() and fastnorm._build.loaded["_C_cuda"]


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device and fastnorm._C_cuda")
    skip_large = pytest.mark.skip(reason="set FASTNORM_LARGE_TESTS=1 to run")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip_cuda)
        if "large" in item.keywords and os.environ.get("FASTNORM_LARGE_TESTS") != "1":
            item.add_marker(skip_large)


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Normwise relative error ||out - ref|| / ||ref|| in float64 (DESIGN.md §4)."""
    out, ref = out.double(), ref.double()
    den = ref.norm().item()
    num = (out - ref).norm().item()
    return num / den if den > 0 else num


def tol(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 1e-2}[dtype]


def poison_cuda_allocator(nbytes: int = 64 << 20) -> None:
    """Fill a large block with NaN and free it, so the caching allocator hands NaN memory to the next op:
    an output element a kernel forgets to write then shows up as NaN."""
    if torch.cuda.is_available():
        t = torch.full((nbytes // 4,), float("nan"), device="cuda")
        del t


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance in units in the last place between same-dtype float tensors (0 for equal values)."""
    assert a.dtype == b.dtype
    int_t = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}[a.dtype]

    def ordered(t):
        i = t.contiguous().view(int_t).to(torch.int64)
        sign_bit = 1 << (torch.finfo(t.dtype).bits - 1)
        return torch.where(i < 0, -(i + sign_bit), i)

    return (ordered(a) - ordered(b)).abs()

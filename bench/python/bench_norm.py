"""Benchmarks of the norm family (specs/norm.md §7), fastnorm against its baselines on the same inputs in the
same run: torch native (F.layer_norm / F.rms_norm, and x + r before them for add & norm) and the
plain-PyTorch reference (fastnorm.reference.norm). Peers (Apex, Liger, flash-attn) are added when importable.

Run:  python -m pytest bench/python/bench_norm.py --benchmark-json=out.json
      python bench/python/summarize.py out.json     # ratio table (baseline time / fastnorm time)
Each case records: group (op/pass/dtype/shape), impl, median seconds, bytes moved and GB/s; the `copy`
case measures dst.copy_(src) in the same run for the fraction of copy bandwidth.
"""
import pytest
import torch
import torch.nn.functional as F

import fastnorm
from fastnorm.reference import norm as ref

from conftest import interleaved, pick, run

CPU_SHAPES = pick([(4096, 1024), (4096, 4096)], [(4096, 768), (4096, 1024), (4096, 4096)])
GPU_SHAPES = [(m, n) for m in (4096, 16384) for n in (1024, 4096, 8192, 16384)] + \
    [(4096, 32768), (4096, 65536), (8192, 4095), (8192, 12289)]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _fns(op, impl, n):
    """(forward function of (x, r, w, b)) for op and implementation."""
    shape = (n,)
    table = {
        ("layer_norm", "fastnorm"): lambda x, r, w, b: fastnorm.layer_norm(x, shape, w, b),
        ("layer_norm", "torch"): lambda x, r, w, b: F.layer_norm(x, shape, w, b),
        ("layer_norm", "reference"): lambda x, r, w, b: ref.layer_norm(x, w, b),
        ("rms_norm", "fastnorm"): lambda x, r, w, b: fastnorm.rms_norm(x, shape, w, 1e-6),
        ("rms_norm", "torch"): lambda x, r, w, b: F.rms_norm(x, shape, w, 1e-6),
        ("rms_norm", "reference"): lambda x, r, w, b: ref.rms_norm(x, w, 1e-6),
        ("add_rms_norm", "fastnorm"): lambda x, r, w, b: fastnorm.add_rms_norm(x, r, shape, w, 1e-6),
        ("add_rms_norm", "torch"): lambda x, r, w, b: (lambda s: (F.rms_norm(s, shape, w, 1e-6), s))(x + r),
        ("add_rms_norm", "reference"): lambda x, r, w, b: ref.add_rms_norm(x, r, w, 1e-6),
        ("add_layer_norm", "fastnorm"): lambda x, r, w, b: fastnorm.add_layer_norm(x, r, shape, w, b),
        ("add_layer_norm", "torch"): lambda x, r, w, b: (lambda s: (F.layer_norm(s, shape, w, b), s))(x + r),
        ("add_layer_norm", "reference"): lambda x, r, w, b: ref.add_layer_norm(x, r, w, b),
    }
    return table[(op, impl)]


def _bytes(op, pas, m, n, elt):
    """Bytes a perfect kernel moves (specs/norm.md §7): forward reads x and writes y; backward reads x and dy
    and writes dx; add & norm adds the residual read and residual_out write (and its gradient)."""
    fwd, bwd = 2 * m * n * elt, 3 * m * n * elt
    extra = 2 * m * n * elt if op.startswith("add") else 0
    return {"forward": fwd + extra, "forward+backward": fwd + bwd + 2 * extra}[pas]


def _inputs(device, dtype_name, m, n):
    dtype = DTYPES[dtype_name]
    g = torch.Generator(device="cpu").manual_seed(0)
    mk = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32).to(dtype).to(device)  # noqa: E731
    # rotate inputs on the GPU so that their total exceeds L2 (50 MB on H100)
    copies = max(1, (200 << 20) // (m * n * dtype.itemsize)) if device == "cuda" else 1
    return [mk(m, n) for _ in range(min(copies, 4))], mk(m, n), mk(n), mk(n), mk(m, n)


def _step(op, impl, pas, n, xs, r, w, b, dy):
    """One call of the case (forward, or forward + backward) for one implementation."""
    fn = _fns(op, impl, n)
    state = {"i": 0}
    if pas == "forward":
        def step():
            with torch.no_grad():
                fn(xs[state["i"] % len(xs)], r, w, b)
            state["i"] += 1
        return step
    leaves = [[t.clone().requires_grad_() for t in (x, r, w, b)] for x in xs]

    def step():
        x_, r_, w_, b_ = leaves[state["i"] % len(leaves)]
        out = fn(x_, r_, w_, b_)
        y = out[0] if isinstance(out, tuple) else out
        y.backward(dy)
        state["i"] += 1
        for t in (x_, r_, w_, b_):
            t.grad = None
    return step


def _extra(op, pas, dtype_name, device, m, n, impl=None):
    e = {"op": op, "pass": pas, "dtype": dtype_name, "device": device, "M": m, "N": n,
         "bytes": _bytes(op, pas, m, n, DTYPES[dtype_name].itemsize)}
    if impl:
        e["impl"] = impl
    return e


def _case(benchmark, device, op, impl, pas, dtype_name, m, n):
    xs, r, w, b, dy = _inputs(device, dtype_name, m, n)
    benchmark.group = f"{op} {pas} {dtype_name} {device} {m}x{n}"
    run(benchmark, _step(op, impl, pas, n, xs, r, w, b, dy), device, rounds=20 if device == "cuda" else 7,
        extra=_extra(op, pas, dtype_name, device, m, n, impl))


IMPLS = ["fastnorm", "torch", "reference"]


@pytest.mark.parametrize("pas", ["forward", "forward+backward"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "add_rms_norm"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cpu(benchmark, pas, op, dtype_name, shape):
    """fastnorm, torch and the reference, interleaved round by round (median of 9)."""
    m, n = shape
    xs, r, w, b, dy = _inputs("cpu", dtype_name, m, n)
    benchmark.group = f"{op} {pas} {dtype_name} cpu {m}x{n}"
    medians = interleaved(benchmark, {impl: _step(op, impl, pas, n, xs, r, w, b, dy) for impl in IMPLS},
                          extra=_extra(op, pas, dtype_name, "cpu", m, n))
    benchmark.extra_info["GB/s"] = benchmark.extra_info["bytes"] / medians["fastnorm"] / 1e9


@pytest.mark.cuda
@pytest.mark.parametrize("impl", ["fastnorm", "torch"])
@pytest.mark.parametrize("pas", ["forward", "forward+backward"])
@pytest.mark.parametrize("op", ["layer_norm", "rms_norm", "add_rms_norm"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_cuda(benchmark, impl, pas, op, shape):
    _case(benchmark, "cuda", op, impl, pas, "bfloat16", *shape)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_copy_bandwidth(benchmark, device):
    """dst.copy_(src) on 256 MiB (CPU) / 1 GiB (GPU): the memory roofline of this run (bytes = 2 * size)."""
    size = (256 << 20) if device == "cpu" else (1 << 30)
    src = torch.empty(size // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    benchmark.group = f"copy {device}"
    run(benchmark, lambda: dst.copy_(src), device, rounds=10,
        extra={"op": "copy", "impl": "torch", "pass": "copy", "device": device, "bytes": 2 * size})

"""Benchmarks of Unified Normalization (specs/norm.md §7): fastnorm.nn.UnifiedNorm against the plain-PyTorch
replica of the official UN1d (fastnorm.reference.norm_unified.UN1d) on the same inputs, interleaved round by
round; CPU case (B, N, C) = (32, 128, 768), f32 and bf16, training forward and forward+backward, eval forward.
Peak memory: bytes saved for backward (saved_tensors_hooks) and the peak RSS growth of one training
forward+backward in a fresh subprocess.

Run:  python -m pytest bench/python/bench_norm_unified.py --benchmark-json=out.json
"""
import json
import os
import subprocess
import sys

import pytest
import torch

import fastnorm
from fastnorm.reference.norm_unified import UN1d as RefUN1d

from conftest import interleaved

SHAPE = (32, 128, 768)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
KW = dict(window_size=4, warmup_iters=4, outlier_filtration=True, compensation_start=8)


def _module(impl, c, dtype):
    m = fastnorm.nn.UnifiedNorm(c, **KW) if impl == "fastnorm" else RefUN1d(c, **KW)
    return m.to(dtype)


def _step(impl, pas, dtype, x, dy, mask):
    m = _module(impl, x.shape[-1], dtype)
    if pas == "eval":
        m.eval()

        def run():
            with torch.no_grad():
                m(x)
        return run
    leaf = x.clone().requires_grad_()

    def run():
        if pas == "forward":
            with torch.no_grad():
                m(x, mask)
            return
        leaf.grad = None
        m.weight.grad = m.bias.grad = None
        m(leaf, mask).backward(dy)
    return run


def _inputs(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(SHAPE, generator=g).to(dtype)
    dy = torch.randn(SHAPE, generator=g).to(dtype)
    mask = torch.rand(SHAPE[:2], generator=g) < 0.1
    return x, dy, mask


@pytest.mark.parametrize("pas", ["forward", "forward+backward", "eval"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_cpu(benchmark, pas, dtype_name):
    dtype = DTYPES[dtype_name]
    x, dy, mask = _inputs(dtype)
    b, n, c = SHAPE
    elt = dtype.itemsize
    nbytes = {"forward": 2, "eval": 2, "forward+backward": 5}[pas] * b * n * c * elt
    benchmark.group = f"unified_norm {pas} {dtype_name} cpu {b}x{n}x{c}"
    med = interleaved(benchmark, {impl: _step(impl, pas, dtype, x, dy, mask) for impl in ("fastnorm", "reference")},
                      rounds=9, extra={"op": "unified_norm", "pass": pas, "dtype": dtype_name, "device": "cpu",
                                       "M": b * n, "N": c, "bytes": nbytes})
    benchmark.extra_info["ratio reference/fastnorm"] = med["reference"] / med["fastnorm"]
    benchmark.extra_info["GB/s"] = nbytes / med["fastnorm"] / 1e9
    benchmark.extra_info["threads"] = torch.get_num_threads()


_PEAK_SCRIPT = r"""
import ctypes, gc, json, sys, torch, fastnorm
from fastnorm.reference.norm_unified import UN1d
impl, dtype = sys.argv[1], getattr(torch, sys.argv[2])
kw = dict(window_size=4, warmup_iters=4, outlier_filtration=True, compensation_start=8)
g = torch.Generator().manual_seed(0)
x = torch.randn(32, 128, 768, generator=g).to(dtype).requires_grad_()
dy = torch.randn(32, 128, 768, generator=g).to(dtype)
m = (fastnorm.nn.UnifiedNorm(768, **kw) if impl == "fastnorm" else UN1d(768, **kw)).to(dtype)
for _ in range(2):
    m(x).backward(dy); x.grad = None; m.weight.grad = m.bias.grad = None
def kb(key):
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1])
gc.collect(); ctypes.CDLL("libc.so.6").malloc_trim(0)
open("/proc/self/clear_refs", "w").write("5")
before = kb("VmRSS")
m(x).backward(dy)
print(json.dumps({"peak_growth_bytes": (kb("VmHWM") - before) * 1024}))
"""


def _saved_bytes(impl, dtype):
    x, dy, _ = _inputs(dtype)
    m = _module(impl, SHAPE[-1], dtype)
    total = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: total.append(t.numel() * t.element_size()) or t,
                                                  lambda t: t):
        y = m(x.requires_grad_())
    y.backward(dy)
    return sum(total)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("dtype_name", list(DTYPES))
def test_cpu_peak_memory(benchmark, dtype_name):
    res = {}
    for impl in ("fastnorm", "reference"):
        out = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, impl, dtype_name], capture_output=True, text=True,
                             check=True)
        res[impl] = {"peak_rss_growth_bytes": json.loads(out.stdout.strip().splitlines()[-1])["peak_growth_bytes"],
                     "saved_for_backward_bytes": _saved_bytes(impl, DTYPES[dtype_name])}
    benchmark.group = f"unified_norm peak memory {dtype_name} cpu"
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    b, n, c = SHAPE
    benchmark.extra_info.update({"op": "unified_norm_peak_memory", "pass": "forward+backward", "dtype": dtype_name,
                                 "device": "cpu", "M": b * n, "N": c, "x_bytes": b * n * c * DTYPES[dtype_name].itemsize,
                                 "memory": res, "median_s": {"fastnorm": 0.0}})

"""Benchmarks of test-time alpha-BN (specs/norm.md §7): fastnorm.alpha_batch_norm against the plain-PyTorch
reference module (fastnorm.reference.norm_alpha_bn) and F.batch_norm (training=True, on cloned buffers: the
a = 0 case, and the nearest torch native op), interleaved round by round on the same inputs, NCHW and
channels_last; plus the peak memory of one forward+backward (bytes saved for backward, peak RSS growth in
a fresh subprocess).

Run:  python -m pytest bench/python/bench_norm_alpha_bn.py --benchmark-json=out.json
Ratios (baseline time / fastnorm time) are in extra_info['ratio'].
"""
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastnorm
from fastnorm.reference import norm_alpha_bn as ref

from conftest import interleaved, pick

SHAPES = pick([(16, 256, 14, 14)], [(16, 64, 56, 56), (16, 256, 14, 14)])
ALPHA = 0.3


def _fn(impl, c):
    rm, rv = torch.zeros(c), torch.ones(c)
    if impl == "fastnorm":
        return lambda x, w, b: fastnorm.alpha_batch_norm(x, rm, rv, w, b, alpha_source=ALPHA)
    if impl == "reference":
        return lambda x, w, b: ref.alpha_batch_norm(x, rm, rv, w, b, ALPHA)
    rm2, rv2 = rm.clone(), rv.clone()
    return lambda x, w, b: F.batch_norm(x, rm2, rv2, w, b, training=True)


def _step(impl, pas, x, w, b, dy):
    fn = _fn(impl, x.shape[1])
    if pas == "forward":
        def step():
            with torch.no_grad():
                fn(x, w, b)
        return step
    leaves = [t.clone().requires_grad_() for t in (x, w, b)]

    def step():
        fn(*leaves).backward(dy)
        for t in leaves:
            t.grad = None
    return step


@pytest.mark.parametrize("pas", ["forward", "forward+backward"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu(benchmark, pas, layout, shape):
    g = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, generator=g).contiguous(memory_format=fmt)
    dy = torch.randn(shape, generator=g).contiguous(memory_format=fmt)
    c = shape[1]
    w, b = torch.randn(c, generator=g), torch.randn(c, generator=g)
    benchmark.group = f"alpha_batch_norm {pas} float32 {layout} cpu {'x'.join(map(str, shape))}"
    impls = ["fastnorm", "reference", "torch_batch_norm"]
    numel = x.numel()
    med = interleaved(benchmark, {i: _step(i, pas, x, w, b, dy) for i in impls}, rounds=9,
                      extra={"op": "alpha_batch_norm", "pass": pas, "layout": layout, "device": "cpu",
                             "shape": list(shape), "bytes": (2 if pas == "forward" else 5) * numel * 4})
    benchmark.extra_info["ratio"] = {k: med[k] / med["fastnorm"] for k in impls}
    benchmark.extra_info["GB/s"] = benchmark.extra_info["bytes"] / med["fastnorm"] / 1e9


_PEAK = r"""
import json, sys, torch, fastnorm
from fastnorm.reference import norm_alpha_bn as ref
impl, shape, cl = sys.argv[1], [int(s) for s in sys.argv[2].split("x")], sys.argv[3] == "1"
fmt = torch.channels_last if cl else torch.contiguous_format
c = shape[1]
rm, rv, w, b = torch.zeros(c), torch.ones(c), torch.ones(c).requires_grad_(), torch.zeros(c).requires_grad_()
fn = (lambda t: fastnorm.alpha_batch_norm(t, rm, rv, w, b, alpha_source=0.3)) if impl == "fastnorm" else \
    (lambda t: ref.alpha_batch_norm(t, rm, rv, w, b, 0.3))
x = torch.randn(shape).contiguous(memory_format=fmt).requires_grad_()
dy = torch.randn(shape).contiguous(memory_format=fmt)
small = torch.randn([2, c, 2, 2]).requires_grad_(); fn(small).sum().backward()  # load kernels
saved = []
def pack(t):
    saved.append(t.numel() * t.element_size()); return t
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
open("/proc/self/clear_refs", "w").write("5")  # reset the peak-RSS mark (VmHWM) to the current RSS
before = status("VmRSS:")
with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    y = fn(x)
y.backward(dy)
print(json.dumps({"rss_growth_bytes": status("VmHWM:") - before, "saved_bytes": sum(saved)}))
"""


def peak(impl, shape, cl):
    out = subprocess.run([sys.executable, "-c", _PEAK, impl, "x".join(map(str, shape)), "1" if cl else "0"],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_peak_memory(benchmark, layout, shape):
    res = {impl: peak(impl, shape, layout == "channels_last") for impl in ("fastnorm", "reference")}
    benchmark.group = f"alpha_batch_norm peak memory float32 {layout} cpu {'x'.join(map(str, shape))}"
    benchmark.extra_info.update({"op": "alpha_batch_norm", "pass": "peak_memory", "shape": list(shape), **res})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert res["fastnorm"]["saved_bytes"] < res["reference"]["saved_bytes"]
    assert res["fastnorm"]["rss_growth_bytes"] < res["reference"]["rss_growth_bytes"]

"""Benchmarks of CRMSNorm (specs/norm.md §7): fastnorm.crms_norm against the plain-PyTorch reference module
(fastnorm.reference.norm_crms.CRMSNorm) and against fastnorm.rms_norm of the same width (the spec asks
crms_norm to be at least as fast), interleaved round by round on the same inputs; plus the peak memory of
one forward+backward (bytes saved for backward, and the peak RSS growth in a fresh subprocess).

Run:  python -m pytest bench/python/bench_norm_crms.py --benchmark-json=out.json
Ratios (baseline time / fastnorm time) are in extra_info['ratio'].
"""
import json
import subprocess
import sys

import pytest
import torch

import fastnorm
from fastnorm.reference import norm_crms as ref

from conftest import interleaved, pick

M = 4096
NS = pick([1023, 4095], [767, 1023, 4095])
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _fn(impl, n):
    module = ref.CRMSNorm(n)
    return {
        "fastnorm": lambda x: fastnorm.crms_norm(x),
        "reference": lambda x: module(x),
        "rms_norm": lambda x: fastnorm.rms_norm(x, (n,), None, 1e-5),
    }[impl]


def _step(impl, pas, x, dy):
    fn = _fn(impl, x.shape[-1])
    if pas == "forward":
        def step():
            with torch.no_grad():
                fn(x)
        return step
    leaf = x.clone().requires_grad_()

    def step():
        fn(leaf).backward(dy)
        leaf.grad = None
    return step


@pytest.mark.parametrize("pas", ["forward", "forward+backward"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("n", NS)
def test_cpu(benchmark, pas, dtype_name, n):
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(M, n, generator=g).to(dtype)
    dy = torch.randn(M, n, generator=g).to(dtype)
    benchmark.group = f"crms_norm {pas} {dtype_name} cpu {M}x{n}"
    impls = ["fastnorm", "reference", "rms_norm"]
    elt = dtype.itemsize
    med = interleaved(benchmark, {i: _step(i, pas, x, dy) for i in impls}, rounds=9,
                      extra={"op": "crms_norm", "pass": pas, "dtype": dtype_name, "device": "cpu", "M": M, "N": n,
                             "bytes": (2 if pas == "forward" else 5) * M * n * elt})
    benchmark.extra_info["ratio"] = {k: med[k] / med["fastnorm"] for k in impls}
    benchmark.extra_info["GB/s"] = benchmark.extra_info["bytes"] / med["fastnorm"] / 1e9


_PEAK = r"""
import json, sys, torch, fastnorm
from fastnorm.reference import norm_crms as ref
impl, n, m = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(1)
x = torch.randn(m, n).requires_grad_(); dy = torch.randn(m, n)
fn = (lambda t: fastnorm.crms_norm(t)) if impl == "fastnorm" else ref.CRMSNorm(n)
small = torch.randn(4, n).requires_grad_(); fn(small).backward(torch.ones(4, n))  # load kernels, warm allocator
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


def peak(impl, n, m=M):
    out = subprocess.run([sys.executable, "-c", _PEAK, impl, str(n), str(m)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("n", NS)
def test_peak_memory(benchmark, n):
    """Peak memory of one float32 forward+backward, fastnorm vs the reference module (fresh subprocesses)."""
    res = {impl: peak(impl, n) for impl in ("fastnorm", "reference")}
    benchmark.group = f"crms_norm peak memory float32 cpu {M}x{n}"
    benchmark.extra_info.update({"op": "crms_norm", "pass": "peak_memory", "M": M, "N": n, **res})
    benchmark.pedantic(lambda: None, rounds=1, iterations=1)
    assert res["fastnorm"]["saved_bytes"] < res["reference"]["saved_bytes"]
    assert res["fastnorm"]["rss_growth_bytes"] < res["reference"]["rss_growth_bytes"]

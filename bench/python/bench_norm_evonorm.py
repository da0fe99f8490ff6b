"""Benchmarks of EvoNorm B0 / S0 on the CPU (specs/norm.md §7): fastnorm's modules against the plain-PyTorch
reference replicas (fastnorm.reference.norm_evonorm) and timm's modules when they can be imported (`import timm`,
or FASTNORM_TIMM_EVO_NORM pointing at a copy of timm/layers/evo_norm.py), on the same inputs in the same run.

Run:  python -m pytest bench/python/bench_norm_evonorm.py --benchmark-json=out.json
      python bench/python/summarize.py out.json
Cases: (16, 64, 56, 56) and (16, 256, 14, 14), float32, NCHW and channels_last, B0 in training and S0
(32 groups), forward and forward+backward, interleaved round by round (median of 9). Memory: bytes saved
for backward (saved_tensors_hooks) and the peak RSS growth of one forward+backward.
"""
import gc
import importlib.util
import os
import sys
import types

import pytest
import torch

import fastnorm
from fastnorm.reference import norm_evonorm as ref

from bench_lion import _peak_growth_bytes
from conftest import interleaved, pick

SHAPES = pick([(16, 256, 14, 14)], [(16, 64, 56, 56), (16, 256, 14, 14)])
FMTS = ["nchw", "channels_last"]


def _timm_evo():
    try:
        from timm.layers import evo_norm
        return evo_norm
    except Exception:
        pass
    path = os.environ.get("FASTNORM_TIMM_EVO_NORM")
    if not path or not os.path.exists(path):
        return None
    pkg = types.ModuleType("_timm_evo_bench")
    pkg.__path__ = []
    act = types.ModuleType("_timm_evo_bench.create_act")
    act.create_act_layer = lambda *a, **k: torch.nn.Identity()
    trace = types.ModuleType("_timm_evo_bench.trace_utils")

    def _assert(cond, msg=""):
        assert cond, msg
    trace._assert = _assert
    sys.modules.update({"_timm_evo_bench": pkg, "_timm_evo_bench.create_act": act,
                        "_timm_evo_bench.trace_utils": trace})
    spec = importlib.util.spec_from_file_location("_timm_evo_bench.evo_norm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


TIMM = _timm_evo()


def _modules(kind, c):
    kw = {"groups": 32} if kind == "EvoNorm2dS0" else {}
    mods = {"fastnorm": getattr(fastnorm.nn, kind)(c, **kw), "reference": getattr(ref, kind)(c, **kw)}
    if TIMM is not None:
        mods["timm"] = getattr(TIMM, kind)(c, **kw)
    return mods


def _input(shape, fmt):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    return x.to(memory_format=torch.channels_last) if fmt == "channels_last" else x


def _step(module, x, dy, pas):
    if pas == "forward":
        def step():
            with torch.no_grad():
                module(x)
        return step
    xg = x.clone().requires_grad_()

    def step():
        module(xg).backward(dy)
        xg.grad = None
        for p in module.parameters():
            p.grad = None
    return step


def _saved_bytes(module, x, dy):
    """Bytes of the distinct tensors autograd saves for backward in one forward."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.dtype, tuple(t.shape))] = t.numel() * t.element_size()
        return t
    xg = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(xg)
    y.backward(dy)
    return sum(seen.values())


@pytest.mark.parametrize("pas", ["forward", "forward+backward"])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kind", ["EvoNorm2dB0", "EvoNorm2dS0"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu(benchmark, pas, fmt, kind, shape):
    x = _input(shape, fmt)
    dy = _input(shape, fmt)
    mods = _modules(kind, shape[1])
    medians = interleaved(benchmark, {k: _step(m, x, dy, pas) for k, m in mods.items()}, rounds=9,
                          extra={"op": kind, "pass": pas, "dtype": "float32", "device": "cpu", "format": fmt,
                                 "M": shape[0], "N": shape[1] * shape[2] * shape[3],
                                 "bytes": x.numel() * 4 * (2 if pas == "forward" else 5)})
    benchmark.group = f"{kind} {pas} float32 cpu {fmt} {'x'.join(map(str, shape))}"
    benchmark.extra_info["ratio"] = {k: v / medians["fastnorm"] for k, v in medians.items() if k != "fastnorm"}
    benchmark.extra_info["GB/s"] = benchmark.extra_info["bytes"] / medians["fastnorm"] / 1e9
    if pas == "forward+backward":
        benchmark.extra_info["saved_bytes"] = {k: _saved_bytes(m, x, dy) for k, m in mods.items()}
        growth = {}
        for k, m in mods.items():
            f = _step(m, x, dy, pas)
            f()
            growth[k] = max(_peak_growth_bytes(f) for _ in range(2))
            gc.collect()
        benchmark.extra_info["peak_growth_bytes"] = growth

"""PowerNorm benchmarks (specs/norm.md §7): fastnorm.nn.PowerNorm vs the plain-PyTorch replica of the official
MaskPowerNorm (fastnorm.reference.norm_power), forward+backward of one training step on the CPU, interleaved
round by round; plus peak memory (bytes saved for backward, peak RSS growth of one step).

    PYTHONPATH=... python -m pytest bench/python/bench_norm_power.py --benchmark-only -q
"""
import gc
import os

import pytest
import torch

from fastnorm.nn import PowerNorm
from fastnorm.reference.norm_power import MaskPowerNormRef

from conftest import interleaved, pick

CPU_SHAPES = pick([(128, 32, 512)], [(128, 32, 512), (128, 32, 1024)])  # (T, B, C)
IMPLS = {"fastnorm": PowerNorm, "reference": MaskPowerNormRef}


def _inputs(T, B, C, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, C, generator=g)
    dy = torch.randn(T, B, C, generator=g)
    lengths = torch.randint(T // 2, T + 1, (B,), generator=g)
    mask = torch.arange(T)[None, :] >= lengths[:, None]  # (B, T) True = pad, right padding
    return x, dy, mask


def _step(module, x, dy, mask):
    xi = x.detach().requires_grad_()

    def step():
        xi.grad = None
        module.zero_grad(set_to_none=True)
        module(xi, mask).backward(dy)
    return step


def _modules(C, phase, group_num):
    # warmup: batch statistics (t <= W); after: running_phi (t > W), the steady state of training
    W = 10 ** 9 if phase == "warmup" else 0
    return {k: cls(C, warmup_iters=W, group_num=group_num) for k, cls in IMPLS.items()}


@pytest.mark.parametrize("group_num", [1, 4])
@pytest.mark.parametrize("phase", ["warmup", "after"])
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu(benchmark, shape, phase, group_num):
    """fwd+bwd of one training step, fp32, fastnorm vs the reference (median of 9 interleaved rounds)."""
    T, B, C = shape
    x, dy, mask = _inputs(T, B, C)
    mods = _modules(C, phase, group_num)
    benchmark.group = f"power_norm forward+backward float32 cpu {T}x{B}x{C} {phase} G={group_num}"
    elt = 4
    nbytes = 2 * T * B * C * elt + 3 * T * B * C * elt  # forward read x, write y; backward read x, dy, write dx
    medians = interleaved(benchmark, {k: _step(m, x, dy, mask) for k, m in mods.items()},
                          extra={"op": "power_norm", "pass": "forward+backward", "dtype": "float32",
                                 "device": "cpu", "M": T * B, "N": C, "bytes": nbytes, "phase": phase,
                                 "group_num": group_num})
    benchmark.extra_info["ratio_reference_over_fastnorm"] = medians["reference"] / medians["fastnorm"]
    benchmark.extra_info["GB/s"] = nbytes / medians["fastnorm"] / 1e9


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _peak_growth_bytes(step):
    """VmHWM - VmRSS across one call of step (freed heap trimmed and VmHWM reset first)."""
    gc.collect()
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    step()
    return (_status_kb("VmHWM") - before) * 1024


def _saved_bytes(module, x, mask):
    saved = []

    def pack(t):
        saved.append(t)
        return t
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    xi = x.detach().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(xi, mask)
    seen, total = set(), 0
    for t in saved:
        if t is None:
            continue
        key = t.untyped_storage().data_ptr()
        if key in params or key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    del y
    return total


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_cpu_peak_memory(benchmark, shape):
    """Bytes saved for backward (autograd.Function saves and their storages) and the peak RSS growth of one
    fwd+bwd step (max over 3 steps after 2 warm-ups), per implementation, as fractions of x's bytes.
    The reference's GroupScaling is traced by autograd, so some of its temporaries are saved implicitly;
    saved_tensors_hooks sees those too."""
    T, B, C = shape
    x, dy, mask = _inputs(T, B, C)
    xbytes = x.numel() * x.element_size()
    mods = _modules(C, "after", 1)
    saved, growth = {}, {}
    for k, m in mods.items():
        saved[k] = _saved_bytes(m, x, mask)
        f = _step(m, x, dy, mask)
        f()
        f()
        growth[k] = max(_peak_growth_bytes(f) for _ in range(3))
    benchmark.group = f"power_norm peak memory cpu {T}x{B}x{C}"
    benchmark.pedantic(_step(mods["fastnorm"], x, dy, mask), rounds=1, warmup_rounds=1, iterations=1)
    benchmark.extra_info.update({"op": "power_norm_peak_memory", "pass": "forward+backward (1 round)",
                                 "dtype": "float32", "device": "cpu", "M": T * B, "N": C, "x_bytes": xbytes,
                                 "median_s": {"fastnorm": benchmark.stats.stats.median},
                                 "saved_bytes": saved, "saved_frac": {k: v / xbytes for k, v in saved.items()},
                                 "peak_growth_bytes": growth,
                                 "peak_growth_frac": {k: v / xbytes for k, v in growth.items()}})

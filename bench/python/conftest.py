"""Benchmark plumbing shared by bench_<family>.py: device selection, timing, byte accounting.

Timing: CPU benchmarks use pytest-benchmark's timer (median over rounds); CUDA benchmarks time each round
with CUDA events after warm-up and report those (pytest-benchmark's own timer would include launch
latency only). Inputs larger than L2 are rotated between rounds on the GPU.
"""
import pytest
import torch

import fastnorm  # noqa: F401

HAS_CUDA = torch.cuda.is_available() and fastnorm._build.loaded["_C_cuda"]


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device and fastnorm._C_cuda")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device")


def run(benchmark, fn, device, *, rounds, warmup=2, extra=None):
    """Times fn; on CUDA with events. Stores the median seconds in extra_info['median_s']."""
    extra = extra or {}
    if device == "cuda":
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []

        def timed():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)

        benchmark.pedantic(timed, rounds=rounds, warmup_rounds=0, iterations=1)
        median = sorted(times)[len(times) // 2]
    else:
        benchmark.pedantic(fn, rounds=rounds, warmup_rounds=warmup, iterations=1)
        median = benchmark.stats.stats.median
    benchmark.extra_info.update(extra)
    benchmark.extra_info["median_s"] = median
    if "bytes" in extra:
        benchmark.extra_info["GB/s"] = extra["bytes"] / median / 1e9
    return median


def interleaved(benchmark, fns, *, rounds=9, warmup=1, extra=None):
    """CPU side-by-side timing: each round runs every implementation once, in turn, so that machine noise
    (other processes, page-fault storms, frequency changes) hits all of them alike. Records each one's
    median seconds in extra_info['median_s'][impl]; pytest-benchmark's own stats time the first (fastnorm)."""
    import time
    times = {k: [] for k in fns}
    for _ in range(warmup):
        for f in fns.values():
            f()
    names = list(fns)

    def one_round():
        for k in names:
            t0 = time.perf_counter()
            fns[k]()
            times[k].append(time.perf_counter() - t0)

    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update(extra or {})
    benchmark.extra_info["median_s"] = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return benchmark.extra_info["median_s"]

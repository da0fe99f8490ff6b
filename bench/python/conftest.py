"""Benchmark plumbing shared by bench_<family>.py: device selection, timing, byte accounting.

Timing: CPU benchmarks use pytest-benchmark's timer (median over rounds); CUDA benchmarks time each round
with CUDA events after warm-up and report those (pytest-benchmark's own timer would include launch
latency only). Inputs larger than L2 are rotated between rounds on the GPU.

Modes (docs/benchmarks.md): `--bench-mode=quick|full` or FASTNORM_BENCH_MODE (default full, the spec's sizes).
quick (what `make bench` runs) caps the CPU rounds at QUICK_ROUNDS and lets each bench file shrink its slowest cases
through pick(quick_value, full_value); GPU cases are the same in both modes. The mode, the load average at the
start, the torch version and the command line are written into the pytest-benchmark JSON (key "fastnorm_run"),
where bench/update_results.py reads them for the header line of each generated table.
"""
import os
import platform
import shlex
import sys
import time

import pytest
import torch

import fastnorm  # noqa: F401

HAS_CUDA = torch.cuda.is_available() and fastnorm._build.loaded["_C_cuda"]
MODE = os.environ.get("FASTNORM_BENCH_MODE", "full")
QUICK = MODE == "quick"
QUICK_ROUNDS = 5  # median of 5 interleaved rounds in quick mode (full: each bench's own count, 7-20)
_START = {}


def pick(quick, full):
    """The quick-mode value or the full-mode (spec) value of a benchmark parameter, by the run's mode."""
    return quick if QUICK else full


def rounds_for(rounds):
    """CPU rounds in this mode: quick caps them at QUICK_ROUNDS."""
    return min(rounds, QUICK_ROUNDS) if QUICK else rounds


def pytest_addoption(parser):
    parser.addoption("--bench-mode", choices=["quick", "full"], default=None,
                     help="quick: fewer rounds and smaller/fewer cases; full: the spec's sizes "
                          "(default: $FASTNORM_BENCH_MODE or full)")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def pytest_sessionstart(session):
    _START["loadavg"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    _START["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def pytest_benchmark_update_json(config, benchmarks, output_json):
    """Run metadata for the generated tables' header lines (bench/update_results.py)."""
    output_json["fastnorm_run"] = {
        "mode": MODE, "start": _START.get("time"), "loadavg_start": _START.get("loadavg"),
        "cpu_model": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "cuda_device": torch.cuda.get_device_name() if HAS_CUDA else None,
        "command": os.environ.get("FASTNORM_BENCH_COMMAND")
        or "python -m pytest " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "driver": os.environ.get("FASTNORM_BENCH_DRIVER"),
    }


def pytest_collection_modifyitems(config, items):
    skip = pytest.mark.skip(reason="needs a CUDA device and fastnorm._C_cuda")
    for item in items:
        if "cuda" in item.keywords and not HAS_CUDA:
            item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA device")
    global MODE, QUICK
    if config.getoption("--bench-mode"):
        MODE = config.getoption("--bench-mode")
        QUICK = MODE == "quick"
        os.environ["FASTNORM_BENCH_MODE"] = MODE  # subprocesses and modules that read the environment


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
        benchmark.pedantic(fn, rounds=rounds_for(rounds), warmup_rounds=warmup, iterations=1)
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
    rounds = rounds_for(rounds)
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

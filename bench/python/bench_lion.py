"""Benchmarks of the Lion optimizer step (specs/lion.md §7), fastnorm against its baselines on the same inputs in
the same run: lion-pytorch eager (`lion_pytorch.Lion`) and foreach (`lion_pytorch.foreach.Lion`), timm's Lion
(foreach), torch.optim.AdamW(foreach=True) and AdamW(fused=True), the plain-PyTorch reference
(fastnorm.reference.lion, float64 textbook formulas), fastnorm's bare op `fastnorm.lion_step_` and
`fastnorm.optim.Lion.step()`. Peers that are not installed are left out.

Run:  OMP_NUM_THREADS=2 python -m pytest bench/python/bench_lion.py --benchmark-json=out.json
      python bench/python/summarize.py out.json     # ratio table (baseline time / fastnorm time)

Cases
  CPU  B4: 50M fp32 params as 200 x [500, 500] and as 4 x [5000, 2500], 2 threads. All implementations run
       round by round (interleaved, median of 7 after warm-ups) so that machine noise hits them alike; the
       reference runs separately (it is ~30x slower). The copy bandwidth of this process (dst.copy_(src) on
       1 GiB fp32 buffers, copy GB/s = 2*bytes/t) is measured in the same module, and each case records
       fastnorm's GB/s at the spec's bytes table (fp32: 20 B/param) and its efficiency = GB/s / copy GB/s.
       Peak memory: VmHWM growth over VmRSS during one steady-state step (VmHWM reset through
       /proc/self/clear_refs), fastnorm against lion-pytorch.
  CUDA (marker `cuda`, skipped without a GPU and fastnorm._C_cuda): B1 (one 268,435,456-element tensor) and B2
       (the Llama-1B shape list) in fp32, bf16 params + fp32 state and all-bf16; B3 (1000 x 1024 fp32, launch
       bound) with a 256 MB L2 flush before each step and the number of kernel launches from torch.profiler.
       CUDA events, 5 warm-ups, 20 timed runs, median. Cases that do not fit the free memory are skipped.

Every record has extra_info: op "lion_step", pass "step", dtype, device, M (tensors), N (params / tensors),
bytes (fastnorm's bytes per step by the spec table), median_s (per implementation on CPU), ratio
(baseline time / fastnorm time), GB/s, copy_GB/s and efficiency.
"""
import gc
import os
import statistics
import time

import pytest
import torch

import fastnorm
import fastnorm.optim
from conftest import QUICK, interleaved

torch.set_num_threads(2)  # B4 runs on 2 threads (also set OMP_NUM_THREADS=2); the GPU cases do not depend on it

LR, BETAS, WD = 1e-4, (0.9, 0.99), 0.1
CPU_CASES = {
    "200x500x500": [(500, 500)] * 200,
    "4x5000x2500": [(5000, 2500)] * 4,
}
# spec §7 B2: a Llama-style 1B model, 146 tensors, 1,235,814,400 params (tied embedding counted once)
LLAMA_1B = [(128256, 2048)] + 16 * [(2048, 2048), (512, 2048), (512, 2048), (2048, 2048),
                                    (8192, 2048), (8192, 2048), (2048, 8192), (2048,), (2048,)] + [(2048,)]
GPU_CASES = {"B1": [(268435456,)], "B2": LLAMA_1B}
# (param dtype, fastnorm state dtype); peers keep their state in the param dtype
CONFIGS = {
    "fp32": (torch.float32, torch.float32),
    "bf16+fp32state": (torch.bfloat16, torch.float32),
    "bf16": (torch.bfloat16, torch.bfloat16),
}


def _numel(shapes):
    n = 0
    for s in shapes:
        k = 1
        for d in s:
            k *= d
        n += k
    return n


def _lion_bytes(pdt, sdt):
    """fastnorm's bytes per param (spec §7 table): 3|P| + 2|S| (read p, g, m; write p, m)."""
    return 3 * pdt.itemsize + 2 * sdt.itemsize


# ---- inputs and implementations ---------------------------------------------------------------------------
def _inputs(shapes, dtype, device, seed=0):
    """Params (plain leaf tensors, shared by every implementation: each keeps its own state) and their grads,
    attached as .grad so that optimizer classes see them."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    params, grads = [], []
    for s in shapes:
        if device == "cpu":
            p = torch.randn(s, generator=g, dtype=torch.float32).to(dtype)
            gr = torch.randn(s, generator=g, dtype=torch.float32).to(dtype)
        else:  # generate on the device: B2 has 1.2B elements
            p = torch.randn(s, dtype=torch.float32, device=device).to(dtype)
            gr = torch.randn(s, dtype=torch.float32, device=device).to(dtype)
        p.grad = gr
        params.append(p)
        grads.append(gr)
    return params, grads


def _optional(modname, attr):
    try:
        mod = __import__(modname, fromlist=[attr])
        return getattr(mod, attr)
    except Exception:  # not installed, or broken in this environment
        return None


def _make_impl(name, params, grads, sdt):
    """A zero-argument step of implementation `name` on (params, grads), or None when unavailable."""
    if name == "fastnorm":  # the bare op
        exp_avgs = [torch.zeros_like(p, dtype=sdt) for p in params]

        def step():
            fastnorm.lion_step_(params, grads, exp_avgs, lr=LR, betas=BETAS, weight_decay=WD)
        return step
    if name == "fastnorm.optim":
        opt = fastnorm.optim.Lion(params, lr=LR, betas=BETAS, weight_decay=WD, state_dtype=sdt)
        return opt.step
    if name == "lion_pytorch":
        cls = _optional("lion_pytorch", "Lion")
        return cls and cls(params, lr=LR, betas=BETAS, weight_decay=WD).step
    if name == "lion_pytorch.foreach":
        cls = _optional("lion_pytorch.foreach", "Lion")
        return cls and cls(params, lr=LR, betas=BETAS, weight_decay=WD).step
    if name == "timm":
        cls = _optional("timm.optim", "Lion")
        return cls and cls(params, lr=LR, betas=BETAS, weight_decay=WD, foreach=True).step
    if name in ("adamw.foreach", "adamw.fused"):
        kw = {"foreach": True} if name == "adamw.foreach" else {"fused": True}
        try:
            opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, **kw)
            opt.step()  # fused may be unsupported for this device/dtype: find out here
        except (RuntimeError, ValueError):
            return None
        return opt.step
    if name == "reference":  # plain PyTorch, float64 textbook formulas (out of place), state carried along
        ref = _optional("fastnorm.reference.lion", "lion_step")
        if ref is None:
            return None
        state = {"m": [torch.zeros_like(p, dtype=sdt) for p in params]}

        def step():
            res = ref(params, grads, state["m"], lr=LR, betas=BETAS, weight_decay=WD, precision="float64")
            with torch.no_grad():
                for dst, src in zip(params, res.params):
                    dst.copy_(src)
                for dst, src in zip(state["m"], res.exp_avgs):
                    dst.copy_(src)
        return step
    raise KeyError(name)


CPU_IMPLS = ["fastnorm", "fastnorm.optim", "lion_pytorch", "lion_pytorch.foreach", "timm", "adamw.foreach",
             "adamw.fused"]
GPU_IMPLS = CPU_IMPLS


def _extra(case, shapes, pdt, sdt, device, cfg):
    n = _numel(shapes)
    return {"op": "lion_step", "pass": "step", "dtype": cfg, "device": device, "case": case, "M": len(shapes),
            "N": n // len(shapes), "params": n, "bytes_per_param": _lion_bytes(pdt, sdt),
            "bytes": n * _lion_bytes(pdt, sdt), "lr": LR, "weight_decay": WD}


# ---- CPU ----------------------------------------------------------------------------------------------------
COPY_BYTES = 1 << 30


def _copy_gbps(device, size=COPY_BYTES, reps=7):
    """dst.copy_(src) on `size`-byte fp32 buffers: median of reps after a warm-up; GB/s = 2*size/t."""
    src = torch.empty(size // 4, dtype=torch.float32, device=device).normal_()
    dst = torch.empty_like(src)
    times = []
    for i in range(reps + 1):
        if device == "cuda":
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            dst.copy_(src)
            b.record()
            b.synchronize()
            t = a.elapsed_time(b) / 1e3
        else:
            t0 = time.perf_counter()
            dst.copy_(src)
            t = time.perf_counter() - t0
        if i:
            times.append(t)
    del src, dst
    return 2 * size / statistics.median(times) / 1e9


@pytest.fixture(scope="module")
def cpu_copy():
    return _copy_gbps("cpu")


def test_cpu_copy_bandwidth(benchmark, cpu_copy):
    """Records the copy bandwidth (1 GiB fp32, dst.copy_(src)) for summarize.py; the CPU step cases also time the
    same copy in every one of their rounds and compute their efficiency from that."""
    size = COPY_BYTES
    src = torch.empty(size // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    benchmark.group = "lion copy cpu"
    benchmark.pedantic(lambda: dst.copy_(src), rounds=5, warmup_rounds=1, iterations=1)
    med = benchmark.stats.stats.median
    benchmark.extra_info.update({"op": "copy", "impl": "torch", "pass": "copy", "device": "cpu", "bytes": 2 * size,
                                 "median_s": med, "GB/s": 2 * size / med / 1e9, "module_copy_GB/s": cpu_copy,
                                 "threads": torch.get_num_threads()})


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_cpu_step(benchmark, case, cpu_copy):
    """B4: every implementation interleaved round by round on the same params and grads (median of 7)."""
    shapes = CPU_CASES[case]
    pdt, sdt = CONFIGS["fp32"]
    params, grads = _inputs(shapes, pdt, "cpu")
    fns = {}
    for name in CPU_IMPLS:
        f = _make_impl(name, params, grads, sdt)
        if f is not None:
            fns[name] = f
    # the copy runs in every round too, so that it sees the same machine state as the steps (this VM's memory
    # bandwidth drifts by 2x with its neighbours' load); it is taken out of median_s afterwards
    src = torch.empty(COPY_BYTES // 4, dtype=torch.float32).normal_()
    dst = torch.empty_like(src)
    fns["copy"] = lambda: dst.copy_(src)
    fns, times = _recording(fns)
    extra = _extra(case, shapes, pdt, sdt, "cpu", "fp32")
    benchmark.group = f"lion fp32 cpu {case}"
    med = interleaved(benchmark, fns, rounds=7, warmup=2, extra=extra)
    benchmark.extra_info["times_s"] = {k: v[-7:] for k, v in times.items()}  # every timed round, in order
    t_copy = med.pop("copy")
    benchmark.extra_info["copy_median_s"] = t_copy
    benchmark.extra_info["module_copy_GB/s"] = cpu_copy
    _finish(benchmark, med, 2 * COPY_BYTES / t_copy / 1e9)
    del fns, src, dst
    gc.collect()


@pytest.mark.parametrize("case", list(CPU_CASES))
def test_cpu_reference(benchmark, case):
    """The plain float64 reference against the bare op. One timed call (the reference takes 10-20 s a step on
    2 cores, and its cost does not depend on the state's values); the bare op is warmed up first."""
    shapes = CPU_CASES[case]
    pdt, sdt = CONFIGS["fp32"]
    params, grads = _inputs(shapes, pdt, "cpu")
    fns = {"fastnorm": _make_impl("fastnorm", params, grads, sdt),
           "reference": _make_impl("reference", params, grads, sdt)}
    if fns["reference"] is None:
        pytest.skip("fastnorm.reference.lion not available")
    if QUICK:
        pytest.skip("quick mode: the float64 reference step (10-20 s) runs in full mode only")
    fns["fastnorm"]()
    fns["fastnorm"]()
    benchmark.group = f"lion fp32 cpu {case} reference"
    extra = _extra(case, shapes, pdt, sdt, "cpu", "fp32")
    extra["pass"] = "step (1 round, vs reference)"  # its own row in summarize.py, not merged with test_cpu_step
    med = interleaved(benchmark, fns, rounds=1, warmup=0, extra=extra)
    _finish(benchmark, med, None)


def _recording(fns):
    """Wraps each step so that every call's seconds are kept (interleaved() keeps only medians)."""
    times = {k: [] for k in fns}

    def wrap(k, f):
        def g():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
        return g
    return {k: wrap(k, f) for k, f in fns.items()}, times


def _finish(benchmark, med, copy_gbps):
    e = benchmark.extra_info
    e["ratio"] = {k: v / med["fastnorm"] for k, v in med.items() if k != "fastnorm"}
    e["GB/s"] = e["bytes"] / med["fastnorm"] / 1e9
    if "fastnorm.optim" in med:
        e["GB/s optim"] = e["bytes"] / med["fastnorm.optim"] / 1e9
    if copy_gbps:
        e["copy_GB/s"] = copy_gbps
        e["efficiency"] = e["GB/s"] / copy_gbps
        if "fastnorm.optim" in med:
            e["efficiency optim"] = e["GB/s optim"] / copy_gbps
    e["threads"] = torch.get_num_threads()


def _status_kb(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _malloc_trim():
    """Hands freed heap memory back to the OS (glibc), so that a step's temporaries must fault in fresh pages and
    show in VmHWM instead of silently reusing what the previous step freed."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _peak_growth_bytes(step):
    """VmHWM - VmRSS across one call of step (freed heap trimmed and VmHWM reset to the current RSS first)."""
    gc.collect()
    _malloc_trim()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_kb("VmRSS")
    step()
    return (_status_kb("VmHWM") - before) * 1024


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc/self/clear_refs")
@pytest.mark.parametrize("case", list(CPU_CASES))
def test_cpu_peak_memory(benchmark, case):
    """Peak RSS growth of a steady-state step (max over 3 steps after 2 warm-ups), per implementation, as a
    fraction of the param bytes. The spec target is <= 1 % (no temporaries the size of the params)."""
    shapes = CPU_CASES[case]
    pdt, sdt = CONFIGS["fp32"]
    params, grads = _inputs(shapes, pdt, "cpu")
    pbytes = _numel(shapes) * pdt.itemsize
    growth = {}
    for name in ["fastnorm", "fastnorm.optim", "lion_pytorch", "lion_pytorch.foreach"]:
        f = _make_impl(name, params, grads, sdt)
        if f is None:
            continue
        f()
        f()
        growth[name] = max(_peak_growth_bytes(f) for _ in range(3))
        del f
        gc.collect()
    benchmark.group = f"lion peak memory cpu {case}"
    op = _make_impl("fastnorm", params, grads, sdt)
    benchmark.pedantic(op, rounds=1, warmup_rounds=1, iterations=1)
    # op/pass/dtype/M/N/median_s keep the record readable by summarize.py
    benchmark.extra_info.update({"op": "lion_peak_memory", "pass": "step (1 round)", "dtype": "fp32", "device": "cpu",
                                 "M": len(shapes), "N": _numel(shapes) // len(shapes), "bytes": _numel(shapes) * 20,
                                 "median_s": {"fastnorm": benchmark.stats.stats.median}, "case": case,
                                 "param_bytes": pbytes,
                                 "peak_growth_bytes": growth,
                                 "peak_growth_frac": {k: v / pbytes for k, v in growth.items()}})


# ---- CUDA ---------------------------------------------------------------------------------------------------
def _cuda_time(benchmark, fn, *, pre=None, warmup=5, runs=20):
    """CUDA-event time of fn (pre, e.g. an L2 flush, runs before each call outside the events); median seconds."""
    for _ in range(warmup):
        if pre:
            pre()
        fn()
    torch.cuda.synchronize()
    times = []

    def timed():
        if pre:
            pre()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) / 1e3)

    benchmark.pedantic(timed, rounds=runs, warmup_rounds=0, iterations=1)
    return statistics.median(times)


@pytest.fixture(scope="module")
def cuda_copy():
    return _copy_gbps("cuda")


def _state_factor(name, pdt, sdt):
    """Rough peak bytes per param beyond the shared params and grads (state plus foreach temporaries)."""
    e = pdt.itemsize
    return {"fastnorm": sdt.itemsize, "fastnorm.optim": sdt.itemsize, "lion_pytorch": e + 1,
            "lion_pytorch.foreach": 3 * e, "timm": 3 * e, "adamw.foreach": 4 * e, "adamw.fused": 2 * e,
            "reference": 0}[name]


def _cuda_env():
    free, total = torch.cuda.mem_get_info()
    return {"card": torch.cuda.get_device_name(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "free_bytes": free}


@pytest.mark.cuda
@pytest.mark.parametrize("impl", GPU_IMPLS)
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("case", list(GPU_CASES))
def test_cuda_step(benchmark, case, cfg, impl, cuda_copy):
    """B1/B2: one implementation per test (params built on the device, freed afterwards)."""
    pdt, sdt = CONFIGS[cfg]
    if impl not in ("fastnorm", "fastnorm.optim") and sdt != pdt:
        pytest.skip("peers keep state in the param dtype (compare at equal state precision)")
    shapes = GPU_CASES[case]
    n = _numel(shapes)
    gc.collect()
    torch.cuda.empty_cache()
    need = n * (2 * pdt.itemsize + _state_factor(impl, pdt, sdt)) * 1.1
    free = torch.cuda.mem_get_info()[0]
    if need > free:
        pytest.skip(f"needs ~{need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
    params, grads = _inputs(shapes, pdt, "cuda")
    fn = _make_impl(impl, params, grads, sdt)
    if fn is None:
        pytest.skip(f"{impl} not available for {cfg} on cuda")
    benchmark.group = f"lion {cfg} cuda {case}"
    med = _cuda_time(benchmark, fn)
    e = _extra(case, shapes, pdt, sdt, "cuda", cfg)
    e.update(_cuda_env())
    e.update({"impl": impl, "median_s": med, "GB/s": e["bytes"] / med / 1e9, "copy_GB/s": cuda_copy,
              "efficiency": e["bytes"] / med / 1e9 / cuda_copy})
    benchmark.extra_info.update(e)
    del fn, params, grads
    gc.collect()
    torch.cuda.empty_cache()


def _count_launches(fn):
    """Kernel launches of one call of fn, from torch.profiler (CUDA kernels; memcpy/memset listed apart)."""
    from torch.profiler import ProfilerActivity, profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = other = 0
    for ev in prof.events():
        if ev.device_type != torch.autograd.DeviceType.CUDA:
            continue
        if "memcpy" in ev.name.lower() or "memset" in ev.name.lower():
            other += 1
        else:
            kernels += 1
    return kernels, other


@pytest.mark.cuda
@pytest.mark.parametrize("impl", GPU_IMPLS)
def test_cuda_launch_bound(benchmark, impl):
    """B3: 1000 x 1024 fp32, 256 MB written before each timed step (L2 flush); launch count of one step."""
    shapes = [(1024,)] * 1000
    pdt, sdt = CONFIGS["fp32"]
    params, grads = _inputs(shapes, pdt, "cuda")
    fn = _make_impl(impl, params, grads, sdt)
    if fn is None:
        pytest.skip(f"{impl} not available on cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    benchmark.group = "lion fp32 cuda B3 1000x1024"
    med = _cuda_time(benchmark, fn, pre=flush.zero_)
    kernels, other = _count_launches(fn)
    e = _extra("B3", shapes, pdt, sdt, "cuda", "fp32")
    e.update(_cuda_env())
    e.update({"impl": impl, "median_s": med, "GB/s": e["bytes"] / med / 1e9, "launches": kernels,
              "memcpy_memset": other})
    benchmark.extra_info.update(e)

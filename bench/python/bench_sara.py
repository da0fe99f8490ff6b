"""Benchmarks of the SaRA masked weight gradient (specs/sara.md §7 B1, B2, B3), fastnorm against its baselines on the
same inputs in the same run.

Run:  OMP_NUM_THREADS=2 python -m pytest bench/python/bench_sara.py --benchmark-json=out.json
      python bench/python/summarize.py out.json
      python bench/python/bench_sara.py --calibrate     # writes bench/results/sara_crossover_<device>.json

Cases
  B1 CPU (fp32, 2 threads): Linear wgrad, shapes cols->rows@N 320->320@4096, 320->2560@4096, 1280->10240@256,
     768->1280@308, 1536->1536@512 at densities {0.1, 1, 5}% (random unique indices; --calibrate sweeps the full
     spec list). Compared, interleaved round by round: the official-equivalent dense+gather
     ``mm(dY.t(), X).view(-1).index_select(0, idx).float()``, ``torch.sparse.sampled_addmm`` with a prebuilt CSR
     pattern (where it runs on CPU), fastnorm ``sara_sddmm`` (the kernel) and the full sddmm backward of
     ``sara_linear`` through autograd. ratio = dense time / sddmm time (> 1: fastnorm faster); PASS/FAIL of
     target T1 (density <= 5%).
  Peak memory (T1): the transient peak of one backward (running sum of torch.profiler memory events with
     profile_memory=True) on the sddmm and the dense path; the sddmm path must stay below the dense path by at
     least one dense weight, and never allocate rows*cols*sizeof(w).
  B2 CPU: Conv2d wgrad (B=1, H halved): (1, 320->320, 32, 3x3), (1, 640->640, 16, 3x3), (1, 320->1280, 16, 1x1),
     depthwise (1, 320, 32, 3x3) at 1% and 5%, against convolution_backward weight-grad + gather.
  B3 CPU: sara_adamw_step_ against torch.optim.AdamW (foreach) on the gathered k-vector + an index_copy_
     write-through, k = 1e5 and 1e6.
  CUDA (marker ``cuda``; skipped without a GPU): B1 GPU shapes in fp32/bf16 with CUDA events, same comparison,
     and max_memory_allocated growth of the backward.
Every record has extra_info: case, device, threads, dtype, density, median_s per implementation, ratio, and for
memory cases peak bytes per path.
"""
import json
import os
import sys
import time

import pytest
import torch

import fastnorm  # noqa: F401
from fastnorm.ops import sara as S

sys.path.insert(0, os.path.dirname(__file__))
from conftest import HAS_CUDA, interleaved, pick  # noqa: E402

THREADS = int(os.environ.get("OMP_NUM_THREADS", "2"))
torch.set_num_threads(THREADS)

CPU_SHAPES = [(320, 320, 4096), (320, 2560, 4096), (1280, 10240, 256), (768, 1280, 308), (1536, 1536, 512)]
GPU_SHAPES = [(320, 320, 16384), (320, 2560, 16384), (1280, 10240, 1024), (768, 1280, 308), (4096, 4096, 8192)]
DENSITIES = [0.001, 0.01, 0.05]
CPU_DENSITIES = pick([0.001, 0.05], DENSITIES)  # quick: both ends of the T1 range
CALIBRATE_DENSITIES = [0.001, 0.005, 0.01, 0.02, 0.05, 0.058, 0.1, 0.2]


def _case(cols, rows, n, density, device="cpu", dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = max(1, int(density * rows * cols))
    idx = torch.randperm(rows * cols, generator=g)[:k].sort().values.to(torch.int32)
    x = torch.randn(n, cols, generator=g).to(dtype)
    dy = torch.randn(n, rows, generator=g).to(dtype)
    return x.to(device), dy.to(device), idx.to(device)


def _impls(x, dy, idx, rows, cols):
    rp = S.sara_row_ptr(idx, rows, cols)
    ilong = idx.long()
    impls = {
        "fastnorm_sddmm": lambda: torch.ops.fastnorm.sara_sddmm(dy, x, idx, rp, cols, False),
        "dense_gather": lambda: torch.mm(dy.t(), x).view(-1).index_select(0, ilong).float(),
    }
    try:  # torch.sparse.sampled_addmm with a prebuilt CSR pattern (CPU support depends on the build)
        crow = rp.long()
        col = (ilong % cols)
        pattern = torch.sparse_csr_tensor(crow, col, torch.zeros(idx.numel(), dtype=x.dtype, device=x.device),
                                          (rows, cols))
        xt = x.contiguous()
        dyt = dy.t().contiguous()
        torch.sparse.sampled_addmm(pattern, dyt, xt, beta=0.0)
        impls["sampled_addmm"] = lambda: torch.sparse.sampled_addmm(pattern, dyt, xt, beta=0.0).values()
    except (RuntimeError, NotImplementedError):
        pass
    return impls


def _t1(density, ratio):
    return "PASS" if ratio > 1.0 else "FAIL" if density <= 0.05 else "n/a"


@pytest.mark.parametrize("density", CPU_DENSITIES)
@pytest.mark.parametrize("shape", CPU_SHAPES, ids=lambda s: f"{s[0]}to{s[1]}@{s[2]}")
def test_b1_linear_wgrad_cpu(benchmark, shape, density):
    cols, rows, n = shape
    x, dy, idx = _case(cols, rows, n, density)
    impls = _impls(x, dy, idx, rows, cols)
    rounds = 7 if rows * cols * n < 2e9 else 5
    med = interleaved(benchmark, impls, rounds=rounds, warmup=1,
                      extra=dict(case="B1", op="sara_sddmm", device="cpu", threads=THREADS, dtype="float32",
                                 density=density, k=int(idx.numel()), shape=f"{cols}->{rows}@{n}"))
    ratio = med["dense_gather"] / med["fastnorm_sddmm"]
    benchmark.extra_info["ratio"] = ratio
    benchmark.extra_info["T1"] = _t1(density, ratio)
    print(f"\nB1 {cols}->{rows}@{n} d={density:.3%}: sddmm {med['fastnorm_sddmm'] * 1e3:.2f} ms, dense+gather "
          f"{med['dense_gather'] * 1e3:.2f} ms, ratio {ratio:.2f} [{benchmark.extra_info['T1']}]" +
          (f", sampled_addmm {med['sampled_addmm'] * 1e3:.2f} ms" if "sampled_addmm" in med else ""))


def _profiled_peak(fn):
    """Transient peak of fn: the maximum running sum of the profiler's signed CPU memory events."""
    with torch.profiler.profile(profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.cpu_memory_usage != 0), key=lambda e: e.time_range.start)
    run = peak = biggest = 0
    for e in events:
        run += e.cpu_memory_usage
        peak = max(peak, run)
        biggest = max(biggest, e.cpu_memory_usage)
    return peak, biggest


@pytest.mark.parametrize("shape", [(1536, 1536, 512), (1280, 10240, 256)], ids=lambda s: f"{s[0]}to{s[1]}@{s[2]}")
def test_b1_backward_peak_memory_cpu(benchmark, shape):
    cols, rows, n = shape
    x, dy, idx = _case(cols, rows, n, 0.05)
    w = torch.randn(rows, cols)
    dense_w = rows * cols * 4
    res = {}
    for path in ("sddmm", "dense"):
        d = torch.zeros(idx.numel(), requires_grad=True)
        y = S.sara_linear(x, w, None, d, idx, None, path)
        res[path] = _profiled_peak(lambda: torch.autograd.grad(y, d, dy))
    benchmark.pedantic(lambda: None, rounds=1)
    benchmark.extra_info.update(dict(case="B1-memory", device="cpu", threads=THREADS, dtype="float32", density=0.05,
                                     shape=f"{cols}->{rows}@{n}", dense_weight_bytes=dense_w,
                                     peak_sddmm=res["sddmm"][0], peak_dense=res["dense"][0],
                                     largest_alloc_sddmm=res["sddmm"][1]))
    ok = res["sddmm"][1] < dense_w and res["sddmm"][0] <= res["dense"][0] - dense_w
    benchmark.extra_info["T1_memory"] = "PASS" if ok else "FAIL"
    print(f"\nB1-mem {cols}->{rows}@{n}: backward peak sddmm {res['sddmm'][0] / 2**20:.2f} MiB (largest allocation "
          f"{res['sddmm'][1] / 2**20:.2f} MiB), dense {res['dense'][0] / 2**20:.2f} MiB, dense weight "
          f"{dense_w / 2**20:.2f} MiB [{benchmark.extra_info['T1_memory']}]")
    assert res["sddmm"][1] < dense_w


CONV_CASES = [(1, 320, 320, 32, 3, 1), (1, 640, 640, 16, 3, 1), (1, 320, 1280, 16, 1, 1), (1, 320, 320, 32, 3, 320)]


@pytest.mark.parametrize("density", pick([0.05], [0.01, 0.05]))
@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: f"B{c[0]}_{c[1]}to{c[2]}_{c[3]}px_k{c[4]}_g{c[5]}")
def test_b2_conv_wgrad_cpu(benchmark, case, density):
    B, C, O, H, kk, G = case
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, C, H, H, generator=g)
    wshape = [O, C // G, kk, kk]
    w = torch.randn(wshape, generator=g)
    pad = kk // 2
    y = torch.nn.functional.conv2d(x, w, None, 1, pad, 1, G)
    dy = torch.randn(y.shape, generator=g)
    numel = w.numel()
    idx = torch.randperm(numel, generator=g)[:max(1, int(density * numel))].sort().values.to(torch.int32)
    ilong = idx.long()

    def dense():
        _, dw, _ = torch.ops.aten.convolution_backward(dy, x, w, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], G,
                                                       [False, True, False])
        return dw.reshape(-1).index_select(0, ilong).float()

    impls = {"fastnorm_sddmm": lambda: torch.ops.fastnorm.sara_conv2d_sddmm(dy, x, idx, None, wshape, [1, 1],
                                                                             [pad, pad], [1, 1], G, False),
             "dense_gather": dense}
    med = interleaved(benchmark, impls, rounds=5, warmup=1,
                      extra=dict(case="B2", op="sara_conv2d_sddmm", device="cpu", threads=THREADS, dtype="float32",
                                 density=density, k=int(idx.numel())))
    ratio = med["dense_gather"] / med["fastnorm_sddmm"]
    benchmark.extra_info["ratio"] = ratio
    benchmark.extra_info["T1"] = _t1(density, ratio)
    print(f"\nB2 {case} d={density:.1%}: sddmm {med['fastnorm_sddmm'] * 1e3:.2f} ms, dense+gather "
          f"{med['dense_gather'] * 1e3:.2f} ms, ratio {ratio:.2f} [{benchmark.extra_info['T1']}]")


@pytest.mark.parametrize("k", [100_000, 1_000_000])
def test_b3_adamw_cpu(benchmark, k):
    g = torch.Generator().manual_seed(2)
    w = torch.randn(4 * k, generator=g)
    idx = torch.randperm(4 * k, generator=g)[:k].sort().values.to(torch.int32)
    base = w[idx.long()].clone()
    d = [torch.zeros(k), torch.zeros(k), torch.zeros(k)]
    grad = torch.randn(k, generator=g)
    p = torch.zeros(k, requires_grad=True)
    p.grad = grad.clone()
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.01, foreach=True)
    w2 = w.clone()
    ilong = idx.long()

    def torch_step():
        opt.step()
        with torch.no_grad():
            w2.index_copy_(0, ilong, base + p)

    step = [0]

    def fn_step():
        step[0] += 1
        S.sara_adamw_step_([d[0]], [d[1]], [d[2]], [grad], [w], [idx], [base], lr=1e-3, beta1=0.9, beta2=0.999,
                           eps=1e-8, weight_decay=0.01, bias_correction1=1 - 0.9 ** step[0],
                           bias_correction2=1 - 0.999 ** step[0])

    med = interleaved(benchmark, {"fastnorm_adamw": fn_step, "torch_adamw_foreach+index_copy": torch_step}, rounds=9,
                      extra=dict(case="B3", op="sara_adamw_step_", device="cpu", threads=THREADS, dtype="float32", k=k))
    ratio = med["torch_adamw_foreach+index_copy"] / med["fastnorm_adamw"]
    benchmark.extra_info["ratio"] = ratio
    print(f"\nB3 k={k}: fastnorm {med['fastnorm_adamw'] * 1e3:.3f} ms, torch AdamW+index_copy "
          f"{med['torch_adamw_foreach+index_copy'] * 1e3:.3f} ms, ratio {ratio:.2f}")


# ---- CUDA -----------------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("density", DENSITIES)
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"{s[0]}to{s[1]}@{s[2]}")
def test_b1_linear_wgrad_cuda(benchmark, shape, density, dtype):
    cols, rows, n = shape
    x, dy, idx = _case(cols, rows, n, density, "cuda", dtype)
    rp = S.sara_row_ptr(idx, rows, cols)
    ilong = idx.long()
    impls = {"fastnorm_sddmm": lambda: torch.ops.fastnorm.sara_sddmm(dy, x, idx, rp, cols, False),
             "fastnorm_sddmm_det": lambda: torch.ops.fastnorm.sara_sddmm(dy, x, idx, rp, cols, True),
             "dense_gather": lambda: torch.mm(dy.t(), x).view(-1).index_select(0, ilong).float()}
    med = {}
    for name, f in impls.items():
        for _ in range(3):
            f()
        torch.cuda.synchronize()
        ts = []
        for _ in range(10):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            f()
            b.record()
            b.synchronize()
            ts.append(a.elapsed_time(b) / 1e3)
        med[name] = sorted(ts)[len(ts) // 2]
    benchmark.pedantic(impls["fastnorm_sddmm"], rounds=3, iterations=1)
    ratio = med["dense_gather"] / med["fastnorm_sddmm"]
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    impls["fastnorm_sddmm"]()
    torch.cuda.synchronize()
    growth = torch.cuda.max_memory_allocated() - base
    benchmark.extra_info.update(dict(case="B1", device=torch.cuda.get_device_name(), dtype=str(dtype),
                                     density=density, median_s=med, ratio=ratio, T1=_t1(density, ratio),
                                     peak_growth_bytes=growth, dense_weight_bytes=rows * cols * x.element_size()))
    print(f"\nB1-cuda {cols}->{rows}@{n} {dtype} d={density:.3%}: sddmm {med['fastnorm_sddmm'] * 1e6:.1f} us "
          f"(det {med['fastnorm_sddmm_det'] * 1e6:.1f} us), dense+gather {med['dense_gather'] * 1e6:.1f} us, "
          f"ratio {ratio:.2f} [{_t1(density, ratio)}]; peak growth {growth / 2**20:.2f} MiB")


# ---- calibration ------------------------------------------------------------------------------------------------------
def calibrate(device: str = "cpu") -> dict:
    """d* per (device, dtype, shape): the density where sddmm and dense+gather take equal time, by log-density
    interpolation over CALIBRATE_DENSITIES; written to bench/results/sara_crossover_<device>.json."""
    shapes = CPU_SHAPES if device == "cpu" else GPU_SHAPES
    out = {"device": device if device == "cpu" else torch.cuda.get_device_name(), "threads": THREADS, "results": []}
    import math
    for cols, rows, n in shapes:
        pts = []
        for dens in CALIBRATE_DENSITIES:
            x, dy, idx = _case(cols, rows, n, dens, device)
            impls = _impls(x, dy, idx, rows, cols)
            ts = {}
            for name in ("fastnorm_sddmm", "dense_gather"):
                f = impls[name]
                f()
                vals = []
                for _ in range(5):
                    if device == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    f()
                    if device == "cuda":
                        torch.cuda.synchronize()
                    vals.append(time.perf_counter() - t0)
                ts[name] = sorted(vals)[2]
            pts.append((dens, ts["dense_gather"] / ts["fastnorm_sddmm"]))
        dstar = None
        for (d0, r0), (d1, r1) in zip(pts, pts[1:]):
            if r0 >= 1.0 > r1:
                t = (math.log(r0)) / (math.log(r0) - math.log(r1))
                dstar = math.exp(math.log(d0) + t * (math.log(d1) - math.log(d0)))
                break
        if dstar is None:
            dstar = pts[-1][0] if pts[-1][1] >= 1.0 else pts[0][0]
        out["results"].append({"shape": f"{cols}->{rows}@{n}", "dtype": "float32", "ratios": pts, "d_star": dstar})
        print(f"{cols}->{rows}@{n}: d* = {dstar:.4f}  " + "  ".join(f"{d:.3%}:{r:.2f}" for d, r in pts))
    path = os.path.join(os.path.dirname(__file__), "..", "results", f"sara_crossover_{device}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    if "--calibrate" in sys.argv:
        calibrate("cuda" if "--cuda" in sys.argv and HAS_CUDA else "cpu")
    else:
        print(__doc__)

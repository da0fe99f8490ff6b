"""Benchmarks of the Poincaré layers and the Poincaré ResNet training step (specs/poincare.md §7, targets T1, T3).

Baselines in the same run, on the same inputs and parameters: the plain-PyTorch reference (``impl="reference"``,
autograd through elementwise torch ops, structured like the official code), torch's ``nn.Linear``/``nn.Conv2d``
and a Euclidean ResNet-20 of the same widths (context only). CPU timings are interleaved round by round
(median of the rounds); CUDA timings use events. Peak memory of one fwd+bwd: CPU = peak of the running sum of
torch.profiler allocation events (profile_memory=True) inside the window (x, params, upstream grad allocated
before it; the output counts); CUDA = max_memory_allocated delta.

Run:  python -m pytest bench/python/bench_poincare_resnet.py --benchmark-json=out.json [-k resnet]
Cases: PoincareLinear [32768, 256→256], [4096, 512→10]; PoincareConv2d [32,16,32,32] 3×3 16→16 pad 1,
[32,32,16,16] 3×3 32→32, [32,16,32,32] 1×1 s2 16→32; PoincareBatchNorm2d [32,32,16,16]; training step
(zero_grad, fwd, cross-entropy, bwd, Adam) of PoincareResNet(depth=20) widths (8,16,32) and (16,32,64), batch 32,
32×32×3, c = 0.1, fp32. Each case records times, ratios (baseline / fastnorm), peak bytes and GEMM TFLOP/s.
"""
import pytest
import torch
import torch.nn.functional as F

import fastnorm  # noqa: F401
from fastnorm.nn import PoincareBatchNorm2d, PoincareConv2d, PoincareLinear, PoincareResNet

from conftest import interleaved, pick


def cpu_peak_bytes(fn):
    """Peak of the running sum of CPU allocation events inside fn (torch.profiler, profile_memory=True)."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    # the raw allocation events (the aggregated profiler events attribute most of them to ops)
    evs = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                 key=lambda e: e.start_ns())
    total = peak = 0
    for e in evs:
        total += e.nbytes()
        peak = max(peak, total)
    assert evs, "no allocation events recorded"
    return peak


def cuda_peak_bytes(fn):
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def peak_bytes(fn, device):
    return cuda_peak_bytes(fn) if device == "cuda" else cpu_peak_bytes(fn)


def _env(device):
    info = {"device": device, "threads": torch.get_num_threads()}
    if device == "cuda":
        info["card"] = torch.cuda.get_device_name()
    return info


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]

LINEAR_CASES = [(32768, 256, 256), (4096, 512, 10)]
CONV_CASES = [((32, 16, 32, 32), 16, 3, 1, 1), ((32, 32, 16, 16), 32, 3, 1, 1), ((32, 16, 32, 32), 32, 1, 2, 0)]


def _layer_case(benchmark, device, mod, eu, x, flops):
    torch.manual_seed(0)
    x = x.to(device).requires_grad_()
    g = torch.randn_like(eu(x).detach())
    mods = {"fastnorm": mod, "euclidean": eu}
    if hasattr(mod, "impl"):
        import copy
        r = copy.deepcopy(mod)
        r.impl = "reference"
        mods["reference"] = r

    def step(m):
        def f():
            x.grad = None
            m(x).backward(g)
            if device == "cuda":
                torch.cuda.synchronize()
        return f
    fns = {k: step(m) for k, m in mods.items()}
    extra = _env(device)
    extra["peak_bytes"] = {k: peak_bytes(f, device) for k, f in fns.items()}
    extra["peak_ratio_vs_euclidean"] = extra["peak_bytes"]["fastnorm"] / max(extra["peak_bytes"]["euclidean"], 1)
    # interleaved on both devices (each f synchronises on CUDA)
    times = interleaved(benchmark, fns, rounds=20, warmup=2, extra=extra)
    benchmark.extra_info["median_s"] = times
    benchmark.extra_info.update(extra)
    benchmark.extra_info["ratio_reference_over_fastnorm"] = times.get("reference", 0) / times["fastnorm"]
    benchmark.extra_info["ratio_euclidean_over_fastnorm"] = times["euclidean"] / times["fastnorm"]
    benchmark.extra_info["gemm_tflops_fastnorm"] = flops / times["fastnorm"] / 1e12


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("rows,n,m", LINEAR_CASES)
def test_poincare_linear_fwd_bwd(benchmark, device, rows, n, m):
    mod = PoincareLinear(n, m, init="normal").to(device)
    eu = torch.nn.Linear(n, m).to(device)
    _layer_case(benchmark, device, mod, eu, torch.randn(rows, n) * 0.05, 8 * rows * n * m)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("shape,cout,k,stride,pad", CONV_CASES)
def test_poincare_conv2d_fwd_bwd(benchmark, device, shape, cout, k, stride, pad):
    mod = PoincareConv2d(shape[1], cout, k, stride=stride, padding=pad).to(device)
    eu = torch.nn.Conv2d(shape[1], cout, k, stride=stride, padding=pad).to(device)
    ho = (shape[2] + 2 * pad - k) // stride + 1
    rows = shape[0] * ho * ho
    _layer_case(benchmark, device, mod, eu, torch.randn(shape) * 0.2, 8 * rows * shape[1] * k * k * cout)


@pytest.mark.parametrize("device", DEVICES)
def test_poincare_batchnorm_fwd_bwd(benchmark, device):
    mod = PoincareBatchNorm2d(32).to(device)
    eu = torch.nn.BatchNorm2d(32).to(device)
    _layer_case(benchmark, device, mod, eu, torch.randn(32, 32, 16, 16) * 0.3, 0)


class EuclideanBlock(torch.nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = torch.nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = torch.nn.BatchNorm2d(cout)
        self.c2 = torch.nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = torch.nn.BatchNorm2d(cout)
        self.sc = (torch.nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None)

    def forward(self, x):
        h = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(h + (x if self.sc is None else self.sc(x)))


def euclidean_resnet(depth, widths, num_classes=10, in_channels=3):
    n = (depth - 2) // 6
    layers = [torch.nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), torch.nn.BatchNorm2d(widths[0]),
              torch.nn.ReLU()]
    cin = widths[0]
    for i, w in enumerate(widths):
        for j in range(n):
            layers.append(EuclideanBlock(cin, w, 2 if i > 0 and j == 0 else 1))
            cin = w
    layers += [torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(cin, num_classes)]
    return torch.nn.Sequential(*layers)


# quick mode: widths (4, 8, 16) at batch 8 on the CPU (the reference step at the spec's widths takes minutes on 2
# cores); full mode and CUDA: the spec's widths (8, 16, 32) and (16, 32, 64) at batch 32
RESNET_WIDTHS = pick([(4, 8, 16)], [(8, 16, 32), (16, 32, 64)])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("widths", RESNET_WIDTHS)
def test_poincare_resnet20_train_step(benchmark, device, widths):
    torch.manual_seed(0)
    net = PoincareResNet(depth=20, widths=widths, c=0.1).to(device)
    ref = PoincareResNet(depth=20, widths=widths, c=0.1, impl="reference").to(device)
    ref.load_state_dict(net.state_dict())
    eu = euclidean_resnet(20, widths).to(device)
    batch = pick(8, 32) if device == "cpu" else 32
    x = torch.randn(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    models = {"fastnorm": net, "reference": ref, "euclidean": eu}
    opts = {k: torch.optim.Adam(m.parameters(), lr=1e-3) for k, m in models.items()}

    def step(k):
        m, opt = models[k], opts[k]

        def f():
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(m(x), y).backward()
            opt.step()
            if device == "cuda":
                torch.cuda.synchronize()
        return f
    fns = {k: step(k) for k in models}
    for f in fns.values():  # optimizer state allocated before the memory window
        f()

    def fwd_bwd(k):
        def f():
            F.cross_entropy(models[k](x), y).backward()
        return f
    extra = _env(device)
    extra.update({"widths": list(widths), "batch": batch})
    extra["peak_bytes_fwd_bwd"] = {k: peak_bytes(fwd_bwd(k), device) for k in models}
    extra["peak_ratio_fastnorm_over_reference"] = (extra["peak_bytes_fwd_bwd"]["fastnorm"]
                                                   / extra["peak_bytes_fwd_bwd"]["reference"])
    times = interleaved(benchmark, fns, rounds=pick(3, 5) if device == "cpu" else 20, warmup=1, extra=extra)
    benchmark.extra_info["speedup_vs_reference"] = times["reference"] / times["fastnorm"]
    benchmark.extra_info["slowdown_vs_euclidean"] = times["fastnorm"] / times["euclidean"]

"""``python -m fastnorm``: the build, then a self-check and speed table of every op on every device.

For each registered op, dtype and available device it runs one representative shape forward + backward,
and prints the normwise relative error ||out - ref|| / ||ref|| of the output and of the input gradient
against the float64 reference (fastnorm.reference), and the speed ratio baseline time / fastnorm time, where
the baseline is torch native when torch has the op (F.layer_norm, F.rms_norm, x + r then the native norm)
and the plain-PyTorch reference otherwise. Runs in well under a minute on a 2-core CPU.
"""
import argparse
import time

import torch
import torch.nn.functional as F

import fastnorm
from fastnorm.reference import norm as ref

# op name -> (fastnorm forward, baseline forward, float64 reference forward); each takes (x, r, w, b)
# and returns the tensor whose gradient is checked.
CASES = {
    "layer_norm": (
        lambda x, r, w, b: fastnorm.layer_norm(x, x.shape[-1:], w, b),
        lambda x, r, w, b: F.layer_norm(x, x.shape[-1:], w, b),
        lambda x, r, w, b: ref.layer_norm(x, w, b),
        "F.layer_norm"),
    "rms_norm": (
        lambda x, r, w, b: fastnorm.rms_norm(x, x.shape[-1:], w, 1e-6),
        lambda x, r, w, b: F.rms_norm(x, x.shape[-1:], w, 1e-6),
        lambda x, r, w, b: ref.rms_norm(x, w, 1e-6),
        "F.rms_norm"),
    "add_layer_norm": (
        lambda x, r, w, b: fastnorm.add_layer_norm(x, r, x.shape[-1:], w, b)[0],
        lambda x, r, w, b: F.layer_norm(x + r, x.shape[-1:], w, b),
        lambda x, r, w, b: ref.add_layer_norm(x, r, w, b)[0],
        "x + r; F.layer_norm"),
    "add_rms_norm": (
        lambda x, r, w, b: fastnorm.add_rms_norm(x, r, x.shape[-1:], w, 1e-6)[0],
        lambda x, r, w, b: F.rms_norm(x + r, x.shape[-1:], w, 1e-6),
        lambda x, r, w, b: ref.add_rms_norm(x, r, w, 1e-6)[0],
        "x + r; F.rms_norm"),
}


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time(fn, device, reps):
    fn()
    _sync(device)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm().clamp_min(1e-300)).item()


def run_case(name, dtype, device, shape, reps):
    fast, base, golden, _ = CASES[name]
    g = torch.Generator().manual_seed(0)
    mk = lambda s: torch.randn(s, generator=g, dtype=torch.float64).to(dtype).to(device)  # noqa: E731
    x, r, w, b, dy = mk(shape), mk(shape), mk(shape[-1:]), mk(shape[-1:]), mk(shape)

    def fwd_bwd(fn, inputs):
        leaves = [t.detach().requires_grad_() for t in inputs]
        out = fn(*leaves)
        out.backward(dy.to(out.dtype))
        return out.detach(), leaves[0].grad

    y, dx = fwd_bwd(fast, (x, r, w, b))
    y64, dx64 = fwd_bwd(golden, tuple(t.double() for t in (x, r, w, b)))
    err_y, err_dx = _rel(y, y64), _rel(dx, dx64)
    t_fast = _time(lambda: fwd_bwd(fast, (x, r, w, b)), device, reps)
    t_base = _time(lambda: fwd_bwd(base, (x, r, w, b)), device, reps)
    return err_y, err_dx, t_base / t_fast, t_fast


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastnorm", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ops", nargs="*", default=list(CASES))
    args = p.parse_args(argv)

    print("fastnorm build")
    for k, v in fastnorm._build.info().items():
        print(f"  {k:22s} {v}")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available() and fastnorm._build.loaded["_C_cuda"]:
        devices.append(torch.device("cuda"))
    shape = (args.rows, args.cols)
    print(f"\nforward + backward, shape {list(shape)}; err = ||out - ref|| / ||ref|| vs the float64 reference;"
          f" speed = baseline time / fastnorm time (median of {args.reps})")
    header = f"{'op':16s} {'device':6s} {'dtype':9s} {'err(y)':>9s} {'err(dx)':>9s} {'speed':>7s} {'ms':>8s}  baseline"
    print(header)
    print("-" * len(header))
    worst = 0.0
    for name in args.ops:
        for device in devices:
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                ey, edx, speed, t = run_case(name, dtype, device, shape, args.reps)
                bound = 1e-5 if dtype == torch.float32 else 1e-2
                worst = max(worst, ey / bound, edx / bound)
                flag = "" if max(ey, edx) < bound else "  <-- above the DESIGN.md §4 bound"
                print(f"{name:16s} {device.type:6s} {str(dtype)[6:]:9s} {ey:9.2e} {edx:9.2e} {speed:6.2f}x "
                      f"{t * 1e3:8.2f}  {CASES[name][3]}{flag}")
    print("\nall errors within bounds" if worst < 1 else "\nSOME ERRORS ABOVE BOUNDS")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())

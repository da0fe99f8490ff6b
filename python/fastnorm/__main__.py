"""``python -m fastnorm``: the build, then a self-check and speed table of every op on every device.

For each registered op, dtype and available device it runs one representative shape forward + backward,
and prints the normwise relative error ||out - ref|| / ||ref|| of the output and of the input gradient
against the float64 reference (fastnorm.reference), and the speed ratio baseline time / fastnorm time, where
the baseline is torch native when torch has the op (F.layer_norm, F.rms_norm, x + r then the native norm)
and the plain-PyTorch reference otherwise. Then the seed normalisations (CRMSNorm, α-BN, EvoNorm B0/S0, PowerNorm,
UN) as modules in training mode, one forward + backward from identical state, against their plain-PyTorch
reference modules (float64 for the error, float32 for the speed). Then the Lion step (an optimizer update, no backward): the error of
the updated params against the float64 reference and the speed against lion-pytorch's eager step (or the same
per-tensor torch algorithm when lion-pytorch is not installed). Runs in well under a minute on a 2-core CPU.
"""
import argparse
import time

import torch
import torch.nn.functional as F

import fastnorm
from fastnorm.reference import lion as lion_ref
from fastnorm.reference import norm_alpha_bn, norm_crms, norm_evonorm, norm_power, norm_unified
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


# op -> (fastnorm module factory, reference module factory, input shape). Both factories take no argument and
# the reference gets the fastnorm module's state_dict, so they start from identical parameters and buffers.
SEED_CASES = {
    "crms_norm": (lambda: fastnorm.nn.CRMSNorm(1023, elementwise_affine=True),
                  lambda: norm_crms.CRMSNorm(1023, elementwise_affine=True), (2048, 1023)),
    "alpha_batch_norm": (lambda: fastnorm.nn.AlphaBatchNorm2d(64, alpha=0.3),
                         lambda: norm_alpha_bn.AlphaBatchNorm2d(64, alpha=0.3), (16, 64, 28, 28)),
    "evonorm_b0": (lambda: fastnorm.nn.EvoNorm2dB0(64), lambda: norm_evonorm.EvoNorm2dB0(64), (16, 64, 28, 28)),
    "evonorm_s0": (lambda: fastnorm.nn.EvoNorm2dS0(64, groups=8), lambda: norm_evonorm.EvoNorm2dS0(64, groups=8),
                   (16, 64, 28, 28)),
    "power_norm": (lambda: fastnorm.nn.PowerNorm(512, warmup_iters=10),
                   lambda: norm_power.MaskPowerNormRef(512, warmup_iters=10), (128, 32, 512)),
    "unified_norm": (lambda: fastnorm.nn.UnifiedNorm(768), lambda: norm_unified.UN1d(768), (32, 128, 768)),
}


def run_seed(name, device, reps):
    """One training-mode forward + backward of the fastnorm module and of its reference from the same state:
    errors of y and dx against the float64 reference, speed = reference time / fastnorm time (float32)."""
    make_fast, make_ref, shape = SEED_CASES[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    dy = torch.randn(shape, generator=g, dtype=torch.float64)
    base = make_fast()
    with torch.no_grad():  # a non-trivial affine
        for prm in base.parameters():
            prm.add_(0.1 * torch.randn(prm.shape, generator=g, dtype=torch.float64).to(prm.dtype))
    state = {k: v.clone() for k, v in base.state_dict().items()}

    def fresh(factory, dtype):
        m = factory().to(device)
        missing = m.load_state_dict(state, strict=False).missing_keys  # extras (num_batches_tracked) are fine
        assert not missing, f"{name}: the reference module lacks {missing}"
        return m.to(dtype if dtype != torch.float64 else torch.float64).train()

    def fwd_bwd(m, dtype):
        xi = x.to(dtype).to(device).clone().requires_grad_()  # a fresh leaf each call
        y = m(xi)
        y.backward(dy.to(dtype).to(device))
        return y.detach(), xi.grad

    y, dx = fwd_bwd(fresh(make_fast, torch.float32), torch.float32)
    y64, dx64 = fwd_bwd(fresh(make_ref, torch.float64), torch.float64)
    fast_m, ref_m = fresh(make_fast, torch.float32), fresh(make_ref, torch.float32)
    t_fast = _time(lambda: fwd_bwd(fast_m, torch.float32), device, reps)
    t_ref = _time(lambda: fwd_bwd(ref_m, torch.float32), device, reps)
    return _rel(y, y64), _rel(dx, dx64), t_ref / t_fast, t_fast


def _lion_eager(ps, gs, ms, lr, wd, betas):
    """lion-pytorch's eager update (one tensor at a time, 3+ passes over memory per tensor)."""
    b1, b2 = betas
    for p, g, m in zip(ps, gs, ms):
        p.mul_(1 - lr * wd)
        update = m.clone().mul_(b1).add(g, alpha=1 - b1).sign_()
        p.add_(update, alpha=-lr)
        m.mul_(b2).add_(g, alpha=1 - b2)


def run_lion(dtype, device, numel, reps):
    """One Lion step on 16 tensors of numel/16 params: error of p vs float64, speed vs the eager peer."""
    g = torch.Generator().manual_seed(0)
    mk = lambda dt: [torch.randn(numel // 16, generator=g, dtype=torch.float64).to(dt).to(device)  # noqa: E731
                     for _ in range(16)]
    ps, gs = mk(dtype), mk(dtype)
    ms = [m.mul_(0.1) for m in mk(torch.float32)]
    kw = dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.1)
    golden = lion_ref.lion_step(ps, gs, ms, precision="float64", **kw).params
    fp, fm = [p.clone() for p in ps], [m.clone() for m in ms]
    fastnorm.lion_step_(fp, gs, fm, **kw)
    err = _rel(torch.cat([p.flatten() for p in fp]), torch.cat([q.flatten() for q in golden]))
    try:
        from lion_pytorch import Lion as PeerLion
        peer_ps = [p.clone() for p in ps]
        peer = PeerLion(peer_ps, **kw)
        for p, grad in zip(peer_ps, gs):
            p.grad = grad
        base, base_name = peer.step, "lion_pytorch.Lion"  # state in the param dtype
    except ImportError:
        pms = [m.to(dtype) for m in ms]
        base = lambda: _lion_eager(ps_b, gs, pms, 1e-4, 0.1, (0.9, 0.99))  # noqa: E731
        ps_b, base_name = [p.clone() for p in ps], "eager torch loop"
    t_fast = _time(lambda: fastnorm.lion_step_(fp, gs, fm, **kw), device, reps)
    t_base = _time(base, device, reps)
    return err, t_base / t_fast, t_fast, base_name


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m fastnorm", description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=2048)
    p.add_argument("--cols", type=int, default=1024)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--ops", nargs="*", default=list(CASES))
    p.add_argument("--seed", action=argparse.BooleanOptionalAction, default=True,
                   help="include the seed normalisations (CRMSNorm, alpha-BN, EvoNorm, PowerNorm, UN)")
    p.add_argument("--lion", action=argparse.BooleanOptionalAction, default=True, help="include the Lion step")
    p.add_argument("--lion-params", type=int, default=1 << 22)
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
    if args.seed:
        print("\nseed normalisations, training mode, float32; err vs the float64 reference module; speed = plain-PyTorch"
              " reference module time / fastnorm time")
        header = f"{'op':16s} {'device':6s} {'shape':18s} {'err(y)':>9s} {'err(dx)':>9s} {'speed':>7s} {'ms':>8s}"
        print(header)
        print("-" * len(header))
        for name in SEED_CASES:
            for device in devices:
                ey, edx, speed, t = run_seed(name, device, args.reps)
                # PowerNorm/UN backwards are the papers' approximations in both implementations: the reference
                # module reproduces them, so the same 1e-5 float32 bound applies.
                worst = max(worst, ey / 1e-5, edx / 1e-5)
                flag = "" if max(ey, edx) < 1e-5 else "  <-- above the DESIGN.md §4 bound"
                shape = "x".join(map(str, SEED_CASES[name][2]))
                print(f"{name:16s} {device.type:6s} {shape:18s} {ey:9.2e} {edx:9.2e} {speed:6.2f}x {t * 1e3:8.2f}{flag}")
    if args.lion:
        numel = args.lion_params
        print(f"\nlion_step_, {numel} params in 16 tensors, float32 momentum; err = ||p - p_ref|| / ||p_ref|| after"
              " one step vs the float64 reference")
        header = f"{'op':16s} {'device':6s} {'dtype':9s} {'err(p)':>9s} {'speed':>7s} {'ms':>8s}  baseline"
        print(header)
        print("-" * len(header))
        for device in devices:
            for dtype in (torch.float32, torch.bfloat16):
                err, speed, t, base_name = run_lion(dtype, device, numel, args.reps)
                # bf16 params round the update to the bf16 grid: the bound is the 16-bit one.
                bound = 1e-5 if dtype == torch.float32 else 1e-2
                worst = max(worst, err / bound)
                flag = "" if err < bound else "  <-- above the bound"
                print(f"{'lion_step_':16s} {device.type:6s} {str(dtype)[6:]:9s} {err:9.2e} {speed:6.2f}x "
                      f"{t * 1e3:8.2f}  {base_name}{flag}")
    print("\nall errors within bounds" if worst < 1 else "\nSOME ERRORS ABOVE BOUNDS")
    return 0 if worst < 1 else 1


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmarks of the Poincaré-ball core ops (specs/poincare.md §7, core-op cases), fwd+bwd, fastnorm against
geoopt's PoincareBall (learnable curvature, so its c gradient is computed too) and the plain-PyTorch reference
(fastnorm.reference.poincare, autograd), on the same inputs in the same run.

Run:  OMP_NUM_THREADS=2 python -m pytest bench/python/bench_poincare.py --benchmark-json=out.json
      FASTNORM_BENCH_ROUNDS=20 (default 20; median of the rounds, interleaved implementations)
      FASTNORM_BENCH_QUICK=1 runs only the target case (1M x 64 fp32) of every op.
      --bench-mode=quick (make bench) runs only the target case, at 262144 points, and a smaller midpoint.

Cases (CPU): every core op at 1M points x D = 64 fp32 (target T2: >= 3x faster than geoopt), D in {16, 256}
(262144 points) and fp16/bf16 at D = 64 (report); midpoint on [1024, 1024, 64] reducing dim 1. c is a 0-dim
fp32 tensor with requires_grad=True. extra_info: op, D, N, dtype, threads, bytes (spec §7 accounting: a row op
with k vector inputs moves (k+1)*N*D*b forward and (1+2k)*N*D*b backward), median_s per implementation,
ratio_geoopt / ratio_reference (baseline time / fastnorm time) and fastnorm's GB/s.
"""
import os

import pytest
import torch

import fastnorm
from fastnorm import poincare as P
from fastnorm.reference import poincare as R
from conftest import QUICK as MODE_QUICK, interleaved, pick

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
ROUNDS = int(os.environ.get("FASTNORM_BENCH_ROUNDS", "20"))
QUICK = os.environ.get("FASTNORM_BENCH_QUICK") == "1" or MODE_QUICK
# quick mode (make bench): the target case only, at 262144 points (64 MiB per fp32 input, still far beyond the
# caches) and a [256, 1024, 64] midpoint; full mode: the spec's 1M points and [1024, 1024, 64]
N_TARGET = pick(1 << 18, 1 << 20)
MID_B = pick(256, 1024)
# Baselines to run (comma list; default both). The reference is ~as slow as geoopt: on a loaded machine
# FASTNORM_BENCH_BASELINES=geoopt keeps the run short.
BASELINES = set(os.environ.get("FASTNORM_BENCH_BASELINES", "geoopt,reference").split(","))

try:
    import geoopt
except ImportError:  # the peer is optional
    geoopt = None

C0 = 0.5

# op -> (number of vector inputs, fastnorm fn, reference fn, geoopt fn(ball, *ins) or None); fns take (*ins, c)
OPS = {
    "project": (1, lambda x, c: P.project(x, c), lambda x, c: R.project(x, c), lambda b, x: b.projx(x)),
    "mobius_add": (2, lambda x, y, c: P.mobius_add(x, y, c), lambda x, y, c: R.mobius_add(x, y, c),
                   lambda b, x, y: b.mobius_add(x, y)),
    "mobius_scalar_mul": (1, lambda x, c: P.mobius_scalar_mul(0.7, x, c), lambda x, c: R.mobius_scalar_mul(0.7, x, c),
                          lambda b, x: b.mobius_scalar_mul(torch.tensor(0.7), x)),
    "expmap0": (1, lambda v, c: P.expmap0(v, c), lambda v, c: R.expmap0(v, c), lambda b, v: b.expmap0(v)),
    "logmap0": (1, lambda y, c: P.logmap0(y, c), lambda y, c: R.logmap0(y, c), lambda b, y: b.logmap0(y)),
    "expmap": (2, lambda x, v, c: P.expmap(x, v, c), lambda x, v, c: R.expmap(x, v, c),
               lambda b, x, v: b.expmap(x, v)),
    "logmap": (2, lambda x, y, c: P.logmap(x, y, c), lambda x, y, c: R.logmap(x, y, c),
               lambda b, x, y: b.logmap(x, y)),
    "dist": (2, lambda x, y, c: P.dist(x, y, c), lambda x, y, c: R.dist(x, y, c), lambda b, x, y: b.dist(x, y)),
    "conformal_factor": (1, lambda x, c: P.conformal_factor(x, c), lambda x, c: R.conformal_factor(x, c),
                         lambda b, x: b.lambda_x(x)),
    "gyration": (3, lambda u, v, w, c: P.gyration(u, v, w, c), lambda u, v, w, c: R.gyration(u, v, w, c),
                 lambda b, u, v, w: b.gyration(u, v, w)),
    "transp": (3, lambda x, y, v, c: P.transp(x, y, v, c), lambda x, y, v, c: R.transp(x, y, v, c),
               lambda b, x, y, v: b.transp(x, y, v)),
    "residual": (2, lambda a, b, c: P.poincare_residual(a, b, c, dim=-1),
                 lambda a, b, c: R.residual(a, b, c, dim=-1), None),
}


def _points(n, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(n, d, generator=g)
    v = v / v.norm(dim=-1, keepdim=True) * torch.rand(n, 1, generator=g) * 0.9 / C0 ** 0.5
    return v.to(dtype)


def _fwd_bwd(fn, ins, c, gout):
    def run():
        for t in ins:
            t.grad = None
        c.grad = None
        out = fn(*ins, c)
        out.backward(gout)
    return run


def _cases():
    cases = [(op, 64, N_TARGET, torch.float32) for op in OPS]
    if not QUICK:
        cases += [(op, d, 1 << 18, torch.float32) for op in OPS for d in (16, 256)]
        cases += [(op, 64, 1 << 20, dt) for op in OPS for dt in (torch.float16, torch.bfloat16)]
    return cases


@pytest.mark.parametrize("op,D,N,dtype", _cases(), ids=lambda v: str(v).replace("torch.", ""))
def test_core_op_fwd_bwd(benchmark, op, D, N, dtype):
    k, ffn, rfn, gfn = OPS[op]
    ins = [_points(N, D, dtype, s).requires_grad_() for s in range(k)]
    out_shape = (N,) if op in ("dist", "conformal_factor") else (N, D)
    gout = torch.randn(out_shape, generator=torch.Generator().manual_seed(9)).to(dtype)
    c = torch.tensor(C0, requires_grad=True)
    fns = {"fastnorm": _fwd_bwd(ffn, ins, c, gout)}
    if geoopt is not None and gfn is not None and dtype == torch.float32 and "geoopt" in BASELINES:
        ball = geoopt.PoincareBall(c=C0, learnable=True)
        gins = [t.detach().clone().requires_grad_() for t in ins]

        def g_run():
            for t in gins:
                t.grad = None
            ball.isp_c.grad = None
            gfn(ball, *gins).backward(gout)
        fns["geoopt"] = g_run
    if "reference" in BASELINES:
        rins = [t.detach().clone().requires_grad_() for t in ins]
        fns["reference"] = _fwd_bwd(rfn, rins, c, gout)
    vec_out = 0 if op in ("dist", "conformal_factor") else 1
    b = dtype.itemsize
    nbytes = (k + vec_out) * N * D * b + (vec_out + 2 * k) * N * D * b
    med = interleaved(benchmark, fns, rounds=ROUNDS, warmup=1,
                      extra={"op": op, "pass": "fwd+bwd", "D": D, "N": N, "dtype": str(dtype).replace("torch.", ""),
                             "threads": torch.get_num_threads(), "bytes": nbytes})
    benchmark.extra_info["GB/s"] = nbytes / med["fastnorm"] / 1e9
    for base in ("geoopt", "reference"):
        if base in med:
            benchmark.extra_info[f"ratio_{base}"] = med[base] / med["fastnorm"]


@pytest.mark.parametrize("weighted", [False, True])
def test_midpoint_fwd_bwd(benchmark, weighted):
    x = _points(MID_B * 1024, 64, torch.float32, 0).view(MID_B, 1024, 64).requires_grad_()
    w = torch.rand(MID_B, 1024) if weighted else None
    gout = torch.randn(MID_B, 64)
    c = torch.tensor(C0, requires_grad=True)

    def f_run():
        x.grad = None
        c.grad = None
        P.midpoint(x, c, w, reduce_dim=1).backward(gout)
    fns = {"fastnorm": f_run}
    if geoopt is not None and "geoopt" in BASELINES:
        ball = geoopt.PoincareBall(c=C0, learnable=True)
        xg = x.detach().clone().requires_grad_()

        def g_run():
            xg.grad = None
            ball.isp_c.grad = None
            ball.weighted_midpoint(xg, w, reducedim=[1]).backward(gout)
        fns["geoopt"] = g_run
    if "reference" in BASELINES:
        xr = x.detach().clone().requires_grad_()

        def r_run():
            xr.grad = None
            c.grad = None
            R.midpoint(xr, c, w, reduce_dim=1).backward(gout)
        fns["reference"] = r_run
    nbytes = 3 * x.numel() * 4
    med = interleaved(benchmark, fns, rounds=ROUNDS, warmup=1,
                      extra={"op": "midpoint", "pass": "fwd+bwd", "shape": [MID_B, 1024, 64], "weighted": weighted,
                             "threads": torch.get_num_threads(), "bytes": nbytes})
    benchmark.extra_info["GB/s"] = nbytes / med["fastnorm"] / 1e9
    for base in ("geoopt", "reference"):
        if base in med:
            benchmark.extra_info[f"ratio_{base}"] = med[base] / med["fastnorm"]

"""Poincaré-ball core ops (specs/poincare.md §6 for project ... midpoint, residual): geoopt parity, reference
parity per dtype, gradcheck incl. the curvature, opcheck, torch.compile, zero / boundary inputs, geometry,
errors, CUDA vs CPU."""
import math

import pytest
import torch

import fastnorm
from fastnorm import poincare as P
from fastnorm.reference import poincare as R

from conftest import HAS_CUDA  # noqa: F401

F64 = torch.float64
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def ball_points(shape, c, dtype=F64, rmax=0.95, gen=None, dim=-1):
    """Points with sqrt(c)|x| ~ U[0, rmax] along `dim`."""
    g = gen or torch.Generator().manual_seed(0)
    v = torch.randn(shape, generator=g, dtype=F64)
    v = v / v.norm(dim=dim, keepdim=True).clamp_min(1e-12)
    rs = list(shape)
    rs[dim] = 1
    r = torch.rand(rs, generator=g, dtype=F64) * rmax
    return (v * r / math.sqrt(c)).to(dtype)


def tangents(shape, scale=0.5, dtype=F64, seed=1):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64) * scale).to(dtype)


def ctensor(c, dtype=F64, grad=False):
    return torch.tensor(c, dtype=dtype, requires_grad=grad)


# Every op as (name, fastnorm callable, reference callable, input builder). Inputs: list of tensors; the
# callables take (*inputs, c).
def _cases(c, shape=(40, 16), dtype=F64, dim=-1, npts=5):
    g = torch.Generator().manual_seed(3)
    x = ball_points(shape, c, dtype, gen=g, dim=dim)
    y = ball_points(shape, c, dtype, gen=g, dim=dim)
    v = tangents(shape, 0.7 / math.sqrt(c), dtype)
    w = tangents(shape, 1.0, dtype, seed=5)
    rs = list(shape)
    del rs[dim % len(shape)]
    r = tangents(rs, 1.0, dtype, seed=7)
    big = (x * 3).to(dtype)
    mshape = (npts,) + tuple(shape)
    xm = ball_points(mshape, c, dtype, gen=g, dim=dim)
    wm = torch.rand(mshape[:dim % len(mshape)] + mshape[dim % len(mshape) + 1:] if dim != -1 else mshape[:-1],
                    generator=g, dtype=F64).to(dtype) + 0.1
    d = dim
    return {
        "project": (lambda a, c: P.project(a, c, dim=d), lambda a, c, eps=None: R.project(a, c, dim=d, eps=eps), [big]),
        "mobius_add": (lambda a, b, c: P.mobius_add(a, b, c, dim=d),
                       lambda a, b, c, eps=None: R.mobius_add(a, b, c, dim=d, eps=eps), [x, y]),
        "mobius_add_noproj": (lambda a, b, c: P.mobius_add(a, b, c, dim=d, project=False),
                              lambda a, b, c, eps=None: R.mobius_add(a, b, c, dim=d, project=False), [x, y]),
        "mobius_scalar_mul": (lambda rr, a, c: P.mobius_scalar_mul(rr, a, c, dim=d),
                              lambda rr, a, c, eps=None: R.mobius_scalar_mul(rr, a, c, dim=d, eps=eps), [r, x]),
        "expmap0": (lambda a, c: P.expmap0(a, c, dim=d), lambda a, c, eps=None: R.expmap0(a, c, dim=d, eps=eps), [v]),
        "expmap0_noproj": (lambda a, c: P.expmap0(a, c, dim=d, project=False),
                           lambda a, c, eps=None: R.expmap0(a, c, dim=d, project=False), [v]),
        "logmap0": (lambda a, c: P.logmap0(a, c, dim=d), lambda a, c, eps=None: R.logmap0(a, c, dim=d), [x]),
        "expmap": (lambda a, b, c: P.expmap(a, b, c, dim=d), lambda a, b, c, eps=None: R.expmap(a, b, c, dim=d, eps=eps),
                   [x, v]),
        "logmap": (lambda a, b, c: P.logmap(a, b, c, dim=d), lambda a, b, c, eps=None: R.logmap(a, b, c, dim=d), [x, y]),
        "dist": (lambda a, b, c: P.dist(a, b, c, dim=d), lambda a, b, c, eps=None: R.dist(a, b, c, dim=d), [x, y]),
        "dist_keepdim": (lambda a, b, c: P.dist(a, b, c, dim=d, keepdim=True),
                         lambda a, b, c, eps=None: R.dist(a, b, c, dim=d, keepdim=True), [x, y]),
        "conformal_factor": (lambda a, c: P.conformal_factor(a, c, dim=d),
                             lambda a, c, eps=None: R.conformal_factor(a, c, dim=d), [x]),
        "gyration": (lambda a, b, e, c: P.gyration(a, b, e, c, dim=d),
                     lambda a, b, e, c, eps=None: R.gyration(a, b, e, c, dim=d), [x, y, w]),
        "transp": (lambda a, b, e, c: P.transp(a, b, e, c, dim=d),
                   lambda a, b, e, c, eps=None: R.transp(a, b, e, c, dim=d), [x, y, w]),
        "midpoint": (lambda a, c: P.midpoint(a, c, reduce_dim=0, dim=d),
                     lambda a, c, eps=None: R.midpoint(a, c, reduce_dim=0, dim=d, eps=eps), [xm]),
        "midpoint_weighted": (lambda a, ww, c: P.midpoint(a, c, ww, reduce_dim=0, dim=d),
                              lambda a, ww, c, eps=None: R.midpoint(a, c, ww, reduce_dim=0, dim=d, eps=eps), [xm, wm]),
        "residual": (lambda a, b, c: P.poincare_residual(a, b, c, dim=d),
                     lambda a, b, c, eps=None: R.residual(a, b, c, dim=d, eps=eps), [v * 0.5, w * 0.5]),
    }


OPS = list(_cases(1.0).keys())


# ---------------------------------------------------------------------------------------------- geoopt
@pytest.mark.parametrize("c", [0.1, 1.0, 2.5])
@pytest.mark.parametrize("D", [2, 16, 64])
def test_geoopt_parity(c, D):
    geoopt = pytest.importorskip("geoopt")
    n = 1000
    g = torch.Generator().manual_seed(11)
    x = ball_points((n, D), c, gen=g)
    y = ball_points((n, D), c, gen=g)
    v = tangents((n, D), 0.3)
    r = tangents((n,), 1.0)
    wts = torch.rand(10, 100, generator=g, dtype=F64)
    pairs = {
        "projx": (lambda b, t: b.projx(t[0] * 3), lambda cc, t: P.project(t[0] * 3, cc, eps=1e-5), [x]),
        "mobius_add": (lambda b, t: b.mobius_add(t[0], t[1]), lambda cc, t: P.mobius_add(t[0], t[1], cc), [x, y]),
        "mobius_scalar_mul": (lambda b, t: b.mobius_scalar_mul(t[0].unsqueeze(-1), t[1]),
                              lambda cc, t: P.mobius_scalar_mul(t[0], t[1], cc), [r, x]),
        "expmap0": (lambda b, t: b.expmap0(t[0]), lambda cc, t: P.expmap0(t[0], cc), [v]),
        "logmap0": (lambda b, t: b.logmap0(t[0]), lambda cc, t: P.logmap0(t[0], cc), [x]),
        "expmap": (lambda b, t: b.expmap(t[0], t[1]), lambda cc, t: P.expmap(t[0], t[1], cc), [x, v]),
        "logmap": (lambda b, t: b.logmap(t[0], t[1]), lambda cc, t: P.logmap(t[0], t[1], cc), [x, y]),
        "dist": (lambda b, t: b.dist(t[0], t[1]), lambda cc, t: P.dist(t[0], t[1], cc), [x, y]),
        "lambda_x": (lambda b, t: b.lambda_x(t[0]), lambda cc, t: P.conformal_factor(t[0], cc), [x]),
        "gyration": (lambda b, t: b.gyration(t[0], t[1], t[2]), lambda cc, t: P.gyration(t[0], t[1], t[2], cc),
                     [x, y, v]),
        "transp": (lambda b, t: b.transp(t[0], t[1], t[2]), lambda cc, t: P.transp(t[0], t[1], t[2], cc), [x, y, v]),
        "weighted_midpoint": (lambda b, t: b.weighted_midpoint(t[0], t[1], reducedim=[1]),
                              lambda cc, t: P.midpoint(t[0], cc, t[1], reduce_dim=1),
                              [x.view(10, 100, D), wts]),
    }
    for name, (gfn, ffn, ins) in pairs.items():
        ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=F64), learnable=True)
        a = [t.clone().requires_grad_() for t in ins]
        ref = gfn(ball, a)
        gout = torch.randn(ref.shape, generator=torch.Generator().manual_seed(2), dtype=F64)
        ref_grads = torch.autograd.grad(ref, a + [ball.isp_c], gout)
        # geoopt stores c = softplus(isp_c): dL/dc = dL/disp_c / sigmoid(isp_c)
        ref_dc = ref_grads[-1] / torch.sigmoid(ball.isp_c.detach())
        b = [t.clone().requires_grad_() for t in ins]
        cc = ctensor(c, grad=True)
        out = ffn(cc, b)
        grads = torch.autograd.grad(out, b + [cc], gout)
        scale = 1 + ref.abs().max().item()
        assert (out - ref).abs().max().item() <= 1e-10 * scale, name
        for gi, (g1, g2) in enumerate(zip(grads[:-1], ref_grads[:-1])):
            gs = 1 + g2.abs().max().item()
            assert (g1 - g2).abs().max().item() <= 1e-10 * gs, (name, gi)
        assert abs(grads[-1].item() - ref_dc.item()) <= 1e-9 * (1 + abs(ref_dc.item())), (name, "c")


# ---------------------------------------------------------------------------------------------- reference
def _tol(dtype, near_boundary=False):
    return {torch.float64: 1e-12, torch.float32: 1e-4 if near_boundary else 1e-5, torch.float16: 1e-2,
            torch.bfloat16: 5e-2}[dtype]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
def test_reference_parity(op, dtype):
    c = 0.8
    fn, ref, ins = _cases(c, dtype=dtype)[op]
    a = [t.clone().requires_grad_() for t in ins]
    out = fn(*a, c)
    assert out.dtype == dtype
    b = [t.detach().double().requires_grad_() for t in ins]
    eps = R.default_eps(dtype)
    expect = ref(*b, c, eps=eps)
    gout = torch.randn(expect.shape, generator=torch.Generator().manual_seed(4), dtype=F64)
    tol = _tol(dtype)
    scale = 1 + expect.abs().max().item()
    assert (out.double() - expect).abs().max().item() <= tol * scale, "value"
    grads = torch.autograd.grad(out, a, gout.to(dtype))
    ref_grads = torch.autograd.grad(expect, b, gout)
    gtol = {torch.float64: 1e-11, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}[dtype]
    for g1, g2 in zip(grads, ref_grads):
        assert g1.dtype == dtype
        assert (g1.double() - g2).abs().max().item() <= gtol * (1 + g2.abs().max().item())


# ---------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["rows", "nchw"])
def test_gradcheck(op, layout):
    c = 0.6
    if layout == "rows":
        fn, _, ins = _cases(c, shape=(4, 5), npts=3)[op]
    else:
        fn, _, ins = _cases(c, shape=(2, 3, 3, 2), dim=1, npts=2)[op]
    a = [t.clone().requires_grad_() for t in ins]
    cc = ctensor(c, grad=True)
    assert torch.autograd.gradcheck(lambda *t: fn(*t), (*a, cc), eps=1e-6, atol=1e-7, rtol=1e-5)


def test_double_backward_raises():
    x = ball_points((4, 3), 1.0).requires_grad_()
    y = P.expmap0(x, 1.0)
    (g,) = torch.autograd.grad(y.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


# ---------------------------------------------------------------------------------------------- curvature
@pytest.mark.parametrize("op", OPS)
def test_curvature_identity(op):
    """dL/dc = (1/(2c)) (sum_p <dp, p> - alpha <g, out>) (§3.6), alpha = 0 for lambda, and 0-weight for r/w."""
    c = 1.3
    fn, _, ins = _cases(c, shape=(30, 8))[op]
    a = [t.clone().requires_grad_() for t in ins]
    cc = ctensor(c, grad=True)
    out = fn(*a, cc)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=F64)
    grads = torch.autograd.grad(out, a + [cc], gout)
    scale_free = {"mobius_scalar_mul": [0], "midpoint_weighted": [1]}.get(op, [])
    s = sum((g * t).sum() for i, (g, t) in enumerate(zip(grads[:-1], a)) if i not in scale_free)
    alpha = 0.0 if op == "conformal_factor" else 1.0
    expect = (s - alpha * (gout * out.detach()).sum()) / (2 * c)
    assert abs(grads[-1].item() - expect.item()) <= 1e-10 * (1 + abs(expect.item()))


def test_learnable_c_trains():
    torch.manual_seed(0)
    c_raw = torch.nn.Parameter(torch.tensor(0.0))
    w = torch.nn.Parameter(torch.randn(8, 8) * 0.1)
    opt = torch.optim.Adam([c_raw, w], lr=0.05)
    x = torch.randn(64, 8)
    target = torch.randn(64, 8) * 0.3
    cs = []
    for _ in range(50):
        c = torch.nn.functional.softplus(c_raw)
        h = P.expmap0(x @ w, c)
        out = P.logmap0(P.mobius_add(h, P.expmap0(target.flip(0), c), c), c)
        loss = ((out - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        assert torch.isfinite(c_raw.grad).all()
        opt.step()
        cs.append(c.item())
    assert all(math.isfinite(v) for v in cs) and abs(cs[-1] - cs[0]) > 1e-3


# ---------------------------------------------------------------------------------------------- zeros
def _grads(fn, ins, c=0.9):
    a = [t.clone().requires_grad_() for t in ins]
    cc = ctensor(c, grad=True)
    out = fn(*a, cc)
    gout = torch.ones_like(out)
    return out, torch.autograd.grad(out, a + [cc], gout)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_zero_vectors(dtype):
    z = torch.zeros(3, 5, dtype=dtype)
    x = ball_points((3, 5), 0.9, dtype)
    for fn in (lambda a, c: P.expmap0(a, c), lambda a, c: P.logmap0(a, c), lambda a, c: P.project(a, c)):
        out, (gx, gc) = _grads(fn, [z])
        assert torch.equal(out, z) and torch.equal(gx, torch.ones_like(z)) and torch.isfinite(gc)
    checks = [
        (lambda a, b, c: P.mobius_add(a, b, c), [z, x]),
        (lambda a, b, c: P.mobius_add(a, b, c), [x, z]),
        (lambda a, c: P.mobius_scalar_mul(0.7, a, c), [z]),
        (lambda a, b, c: P.expmap(a, b, c), [x, z]),
        (lambda a, b, c: P.dist(a, b, c), [x, x]),
        (lambda a, b, c: P.logmap(a, b, c), [x, x]),
        (lambda a, c: P.midpoint(a, c), [x.expand(4, 3, 5).contiguous()]),
        (lambda a, b, c: P.poincare_residual(a, b, c, dim=-1), [z, z]),
        (lambda a, b, e, c: P.gyration(a, b, e, c), [z, z, x]),
        (lambda a, b, e, c: P.transp(a, b, e, c), [z, z, x]),
    ]
    for fn, ins in checks:
        out, grads = _grads(fn, ins)
        assert torch.isfinite(out).all() and all(torch.isfinite(g).all() for g in grads)
    assert torch.equal(P.mobius_add(z, x, 0.9), x) or (P.mobius_add(z, x, 0.9) - x).abs().max() < 1e-6
    assert (P.expmap(x, z, 0.9) - x).abs().max() <= 1e-6
    assert P.dist(x, x, 0.9).abs().max() == 0
    _, (gx, gy, _) = _grads(lambda a, b, c: P.dist(a, b, c), [x, x])
    assert gx.abs().max() == 0 and gy.abs().max() == 0
    assert P.logmap(x, x, 0.9).abs().max() <= 1e-6


def test_logmap_smooth_at_equal_points():
    x = ball_points((4, 6), 0.9)
    d = tangents((4, 6), 1.0)
    _, g0 = _grads(lambda a, b, c: P.logmap(a, b, c), [x, x])
    _, g1 = _grads(lambda a, b, c: P.logmap(a, b, c), [x, x + 1e-7 * d])
    for a, b in zip(g0, g1):
        assert (a - b).abs().max() <= 1e-5 * (1 + b.abs().max())


# ---------------------------------------------------------------------------------------------- boundary
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("radius", [0.99, 0.996, 0.999, 1.0, 1.5, 1e3])
def test_near_boundary(dtype, radius):
    c = 0.5
    u = tangents((6, 9), 1.0)
    u = u / u.norm(dim=-1, keepdim=True)
    x = (u * radius / math.sqrt(c)).to(dtype)
    y = ball_points((6, 9), c, dtype)
    eps = R.default_eps(dtype)
    maxr = (1 - eps)
    for fn, ins, projected in [
        (lambda a, cc: P.project(a, cc), [x], True),
        (lambda a, b, cc: P.mobius_add(a, b, cc), [x, y], True),
        (lambda a, b, cc: P.mobius_add(a, b, cc), [y, x], True),
        (lambda a, cc: P.expmap0(a * 4, cc), [x], True),
        (lambda a, b, cc: P.expmap(a, b, cc), [y, x], True),
        (lambda a, cc: P.mobius_scalar_mul(2.0, a, cc), [x], True),
        (lambda a, cc: P.logmap0(a, cc), [x], False),
        (lambda a, b, cc: P.logmap(a, b, cc), [y, x], False),
        (lambda a, b, cc: P.dist(a, b, cc), [x, y], False),
        (lambda a, cc: P.conformal_factor(a, cc), [x], False),
        (lambda a, b, cc: P.poincare_residual(a, b, cc, dim=-1), [x * 4, x * 4], False),
        (lambda a, cc: P.midpoint(a.view(2, 3, 9), cc, reduce_dim=0), [x], True),
    ]:
        a = [t.clone().requires_grad_() for t in ins]
        cc = ctensor(c, grad=True)
        out = fn(*a, cc)
        if dtype == torch.float16 and fn.__code__.co_names[-1:] == ("conformal_factor",):
            assert (torch.isfinite(out) | (1 - c * x.double().pow(2).sum(-1) < 2 / 65504)).all()  # lambda > fp16 max
            continue
        assert torch.isfinite(out).all()
        grads = torch.autograd.grad(out.float().sum(), a + [cc])
        assert all(torch.isfinite(g).all() for g in grads)
        if projected:
            nrm = out.double().norm(dim=-1) * math.sqrt(c)
            ulp = torch.finfo(dtype).eps
            assert (nrm <= maxr * (1 + 2 * ulp) + 1e-12).all()


def test_eps_override():
    x = ball_points((5, 4), 1.0) * 10
    y = P.project(x, 1.0, eps=0.1)
    assert torch.allclose(y.norm(dim=-1), torch.full((5,), 0.9, dtype=F64))
    with pytest.raises(ValueError, match="eps"):
        P.project(x, 1.0, eps=1.5)


# ---------------------------------------------------------------------------------------------- geometry
def test_geometry():
    c = 0.7
    x = ball_points((50, 6), c)
    y = ball_points((50, 6), c, gen=torch.Generator().manual_seed(8))
    v = tangents((50, 6), 0.4)
    assert (P.logmap0(P.expmap0(v, c), c) - v).abs().max() < 1e-10
    assert (P.expmap(x, P.logmap(x, y, c), c) - y).abs().max() < 1e-9
    pv = P.transp(x, y, v, c)
    lhs = P.conformal_factor(x, c) * v.norm(dim=-1)
    rhs = P.conformal_factor(y, c) * pv.norm(dim=-1)
    assert (lhs - rhs).abs().max() < 1e-10 * lhs.abs().max()
    w = tangents((50, 6), 2.0, seed=4)
    g1 = P.gyration(x, y, P.gyration(y, x, w, c), c)
    assert (g1 - w).abs().max() < 1e-10
    assert (P.gyration(x, y, w, c).norm(dim=-1) - w.norm(dim=-1)).abs().max() < 1e-10
    # midpoint = Einstein midpoint in Klein coordinates; invariant to scaling the weights
    pts = ball_points((7, 3, 6), c)
    wts = torch.rand(7, 3, dtype=F64)
    m = P.midpoint(pts, c, wts, project=False)
    k = 2 * pts / (1 + c * (pts * pts).sum(-1, keepdim=True))
    gam = 1 / (1 - c * (k * k).sum(-1, keepdim=True)).sqrt()
    km = (wts.unsqueeze(-1) * gam * k).sum(0) / (wts.unsqueeze(-1) * gam).sum(0)
    m_klein = km / (1 + (1 - c * (km * km).sum(-1, keepdim=True)).sqrt())
    assert (m - m_klein).abs().max() < 1e-12
    assert (P.midpoint(pts, c, wts * 3.7, project=False) - m).abs().max() < 1e-12


def test_midpoint_reduce_tuple_and_keepdim():
    c = 1.0
    x = ball_points((3, 4, 5, 6), c)
    out = P.midpoint(x, c, reduce_dim=(0, 2), keepdim=True)
    ref = R.midpoint(x, c, reduce_dim=(0, 2), keepdim=True)
    assert out.shape == ref.shape == (1, 4, 1, 6)
    assert (out - ref).abs().max() < 1e-12
    out = P.midpoint(x, c, reduce_dim=2, dim=1)
    ref = R.midpoint(x, c, reduce_dim=2, dim=1)
    assert out.shape == (3, 4, 6) and (out - ref).abs().max() < 1e-12
    a = x[:2, :3, :2, :3].clone().requires_grad_()
    gw = torch.rand(2, 2, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t, w_: P.midpoint(t, c, w_, reduce_dim=(0, 2), dim=1), (a, gw))


# ---------------------------------------------------------------------------------------------- API behaviour
def test_broadcasting():
    c = 0.9
    x = ball_points((1, 6), c).requires_grad_()
    y = ball_points((5, 6), c, gen=torch.Generator().manual_seed(2)).requires_grad_()
    out = P.mobius_add(x, y, c)
    assert out.shape == (5, 6)
    ref = R.mobius_add(x.detach(), y.detach(), c)
    assert (out - ref).abs().max() < 1e-13
    out.sum().backward()
    assert x.grad.shape == (1, 6)
    xr = x.detach().clone().requires_grad_()
    R.mobius_add(xr, y.detach(), c).sum().backward()
    assert (x.grad - xr.grad).abs().max() < 1e-12
    r = torch.tensor(0.5, dtype=F64, requires_grad=True)
    out = P.mobius_scalar_mul(r, y, c)
    out.sum().backward()
    assert r.grad.shape == ()


@pytest.mark.parametrize("op", OPS)
def test_empty(op):
    fn, _, ins = _cases(1.0, shape=(0, 4))[op] if "midpoint" not in op else _cases(1.0, shape=(0, 4))[op]
    a = [t.clone().requires_grad_() for t in ins]
    cc = ctensor(1.0, grad=True)
    out = fn(*a, cc)
    assert out.numel() == 0
    grads = torch.autograd.grad(out.sum(), a + [cc], allow_unused=True)
    assert grads[-1] is None or grads[-1].item() == 0


def test_noncontiguous_and_nan_rows_and_determinism():
    c = 0.5
    x = ball_points((8, 12), c)
    y = ball_points((8, 12), c, gen=torch.Generator().manual_seed(5))
    xt = x.t().contiguous().t()  # non-contiguous, same values
    assert torch.equal(P.mobius_add(xt, y, c), P.mobius_add(x, y, c))
    assert torch.equal(P.expmap0(x[:, ::2], c), P.expmap0(x[:, ::2].contiguous(), c))
    xn = x.clone()
    xn[3, 2] = float("nan")
    out = P.mobius_add(xn, y, c)
    assert torch.isnan(out[3]).all() and torch.isfinite(out[torch.arange(8) != 3]).all()
    assert torch.isnan(P.midpoint(xn.view(2, 4, 12), c)).any()
    big = ball_points((3000, 16), c)
    cc = ctensor(c, grad=True)
    b1 = big.clone().requires_grad_()
    P.dist(b1, big.flip(0), cc).sum().backward()
    g1 = cc.grad.clone()
    cc.grad = None
    b2 = big.clone().requires_grad_()
    nthreads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        P.dist(b2, big.flip(0), cc).sum().backward()
    finally:
        torch.set_num_threads(nthreads)
    assert torch.equal(g1, cc.grad) and torch.equal(b1.grad, b2.grad)


def test_saved_tensors_are_inputs_only():
    """Row ops save only their inputs and c (nothing output-sized, §4)."""
    c = torch.tensor(0.5, dtype=F64, requires_grad=True)
    x = ball_points((16, 8), 0.5).requires_grad_()
    y = ball_points((16, 8), 0.5, gen=torch.Generator().manual_seed(3)).requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = P.transp(x, y, P.mobius_add(x, y, c), c)
    ptrs = {t.data_ptr() for t in saved}
    assert out.data_ptr() not in ptrs
    assert len(saved) == 3 + 4  # mobius_add: x, y, c; transp: x, y, v (= the mobius_add output, its input), c
    assert all(t.shape in ((16, 8), ()) for t in saved)


def test_errors():
    x = ball_points((4, 3), 1.0)
    with pytest.raises(ValueError, match=r"fastnorm.poincare_expmap0: c must be a finite value > 0"):
        P.expmap0(x, 0.0)
    with pytest.raises(ValueError, match=r"c must be a finite value > 0"):
        P.mobius_add(x, x, -1.0)
    with pytest.raises(ValueError, match=r"fastnorm.poincare_logmap0: c must have exactly one element"):
        P.logmap0(x, torch.ones(2))
    with pytest.raises(ValueError, match=r"fastnorm.poincare_mobius_add: shapes do not broadcast"):
        P.mobius_add(x, torch.zeros(4, 5, dtype=F64), 1.0)
    with pytest.raises(ValueError, match=r"fastnorm.poincare_dist: dim 2 is out of range"):
        P.dist(x, x, 1.0, dim=2)
    with pytest.raises(TypeError, match=r"fastnorm.poincare_expmap: v has dtype"):
        P.expmap(x, x.float(), 1.0)
    with pytest.raises(TypeError, match=r"fastnorm.poincare_project: x must be float32"):
        P.project(torch.zeros(3, 3, dtype=torch.int64), 1.0)
    with pytest.raises(ValueError, match=r"reduce_dim .* contains dim"):
        P.midpoint(x, 1.0, reduce_dim=1, dim=1)
    with pytest.raises(ValueError, match=r"reduced dimension 0 is empty"):
        P.midpoint(torch.zeros(0, 3, dtype=F64), 1.0)
    # the raw ops check too
    with pytest.raises(RuntimeError, match=r"fastnorm.poincare_mobius_add: y has shape \[4, 5\]"):
        torch.ops.fastnorm.poincare_mobius_add(x, torch.zeros(4, 5, dtype=F64), torch.tensor(1.0), -1, True)
    with pytest.raises(RuntimeError, match=r"fastnorm.poincare_project: eps must lie in \(0, 1\)"):
        torch.ops.fastnorm.poincare_project(x, torch.tensor(1.0), -1, 0.0)
    with pytest.raises(RuntimeError, match=r"fastnorm.poincare_logmap0: dim 5 is out of range"):
        torch.ops.fastnorm.poincare_logmap0(x, torch.tensor(1.0), 5)
    with pytest.raises(RuntimeError, match=r"fastnorm.poincare_midpoint: reduce_dim must differ from dim"):
        torch.ops.fastnorm.poincare_midpoint(x, None, torch.tensor(1.0), 1, 1, False, True)
    # tensor c <= 0 is not value-checked: NaN
    assert torch.isnan(P.expmap0(x + 1, torch.tensor(-1.0))).all()


# ---------------------------------------------------------------------------------------------- opcheck / compile
def _raw_cases():
    c = torch.tensor(0.8, dtype=F64, requires_grad=True)
    x = ball_points((5, 4), 0.8).requires_grad_()
    y = ball_points((5, 4), 0.8, gen=torch.Generator().manual_seed(3)).requires_grad_()
    v = tangents((5, 4), 0.5).requires_grad_()
    r = tangents((5, 1), 1.0).requires_grad_()
    xm = ball_points((3, 5, 4), 0.8).requires_grad_()
    wm = torch.rand(3, 5, dtype=F64, requires_grad=True)
    f = torch.ops.fastnorm
    return [
        (f.poincare_project, (x * 3, c, -1, 1e-5)),
        (f.poincare_mobius_add, (x, y, c, -1, True)),
        (f.poincare_mobius_scalar_mul, (r, x, c, 1, True)),
        (f.poincare_expmap0, (v, c, -1, True)),
        (f.poincare_logmap0, (x, c, -1)),
        (f.poincare_expmap, (x, v, c, -1, True)),
        (f.poincare_logmap, (x, y, c, -1)),
        (f.poincare_dist, (x, y, c, -1, False)),
        (f.poincare_conformal_factor, (x, c, 0, True)),
        (f.poincare_gyration, (x, y, v, c, -1)),
        (f.poincare_transp, (x, y, v, c, -1)),
        (f.poincare_midpoint, (xm, wm, c, 0, -1, False, True)),
        (f.poincare_midpoint, (xm, None, c, 1, 2, True, False)),
        (f.poincare_residual, (v, v.detach().flip(0), c, 1)),
    ]


@pytest.mark.parametrize("i", range(14))
def test_opcheck(i):
    op, args = _raw_cases()[i]
    torch.library.opcheck(op, args)


def test_compile_fullgraph():
    c = torch.tensor(0.7, dtype=torch.float32, requires_grad=True)

    def f(x, y, v):
        a = P.mobius_add(x, y, c)
        b = P.expmap(a, v, c)
        d = P.dist(b, x, c)
        m = P.midpoint(b.view(2, 3, 8), c, reduce_dim=0)
        return d.sum() + P.logmap0(m, 0.7).sum() + P.poincare_residual(v, v, c, dim=-1).sum()

    x = ball_points((6, 8), 0.7, torch.float32).requires_grad_()
    y = ball_points((6, 8), 0.7, torch.float32, gen=torch.Generator().manual_seed(4))
    v = tangents((6, 8), 0.3, torch.float32).requires_grad_()
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = cf(x, y, v)
    out.backward()
    gx, gc = x.grad.clone(), c.grad.clone()
    x.grad = None
    c.grad = None
    v.grad = None
    ref = f(x, y, v)
    ref.backward()
    assert torch.allclose(out, ref) and torch.allclose(gx, x.grad) and torch.allclose(gc, c.grad)


def test_exported_names():
    for name in ["project", "mobius_add", "mobius_scalar_mul", "expmap0", "logmap0", "expmap", "logmap", "dist",
                 "conformal_factor", "gyration", "transp", "midpoint", "poincare_residual"]:
        assert callable(getattr(fastnorm.poincare, name))


# ---------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("layout", ["rows", "nchw"])
def test_cuda_matches_cpu(op, dtype, layout):
    from conftest import poison_cuda_allocator
    c = 0.8
    if layout == "rows":
        fn, _, ins = _cases(c, shape=(300, 67), dtype=dtype)[op]
    else:
        fn, _, ins = _cases(c, shape=(3, 19, 5, 7), dtype=dtype, dim=1)[op]
    a = [t.clone().requires_grad_() for t in ins]
    cc = ctensor(c, torch.float32, grad=True)
    out = fn(*a, cc)
    gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(4)).to(dtype)
    grads = torch.autograd.grad(out, a + [cc], gout)
    poison_cuda_allocator()
    ad = [t.detach().cuda().requires_grad_() for t in ins]
    ccd = cc.detach().cuda().requires_grad_()
    outd = fn(*ad, ccd)
    gradsd = torch.autograd.grad(outd, ad + [ccd], gout.cuda())
    tol = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    assert (outd.cpu().double() - out.double()).abs().max().item() <= tol * (1 + out.double().abs().max().item())
    for g1, g2 in zip(gradsd, grads):
        assert (g1.cpu().double() - g2.double()).abs().max().item() <= 10 * tol * (1 + g2.double().abs().max().item())


@pytest.mark.cuda
def test_cuda_no_host_sync():
    c = 0.8
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for op in OPS:
            fn, _, ins = _cases(c, shape=(64, 16))[op]
            a = [t.cuda().float().requires_grad_() for t in ins]
            cc = torch.tensor(c, device="cuda", requires_grad=True)
            out = fn(*a, cc)
            torch.autograd.grad(out.sum(), a + [cc])
            out = fn(*a, 0.8)  # a float c is a CPU scalar read on the host: still no sync
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.cuda
@pytest.mark.slow
def test_cuda_int64_indexing():
    n = (1 << 31) // 64 + 5
    x = torch.full((n, 64), 0.01, device="cuda", dtype=torch.float16)
    y = P.expmap0(x, 1.0)
    assert torch.isfinite(y[-1]).all() and (y[-1].float() - y[0].float()).abs().max() == 0

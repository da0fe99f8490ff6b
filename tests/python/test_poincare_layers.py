"""Tests of the Poincaré layers: FC, conv2d, midpoint batch norm, modules, init, ResNet (specs/poincare.md §6)."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fastnorm
from fastnorm.nn import (PoincareBatchNorm2d, PoincareConv2d, PoincareLinear, PoincareResidualBlock, PoincareResNet,
                         poincare_resnet20, poincare_resnet32)
from fastnorm.nn.init import poincare_identity_, poincare_normal_
from fastnorm.ops import poincare_layers as L
from fastnorm.reference import poincare as RP
from fastnorm.reference import poincare_layers as RL

from conftest import HAS_CUDA

D64 = torch.float64
LAYER_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}
EPS_OF = {torch.float64: 1e-5, torch.float32: 4e-3, torch.float16: 4e-3, torch.bfloat16: 1e-2}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def c_scale(g, out, c):
    """Scale of ∂c: it is a difference of sums (§3.6), so compare it relative to the size of ⟨g, out⟩/(2c)."""
    return (g.double() * out.double()).abs().sum().item() / (2 * float(c))


def rel_max(out, ref):
    """max |out − ref| relative to max |ref| (§4's layer tolerance)."""
    out, ref = out.double(), ref.double()
    den = ref.abs().max().item()
    return (out - ref).abs().max().item() / (den if den > 0 else 1.0)


def ball_points(shape, c, rmax=0.9, dtype=D64, gen=None):
    v = torch.randn(shape, dtype=D64, generator=gen)
    r = torch.rand(shape[:-1] + (1,), dtype=D64, generator=gen) * rmax / math.sqrt(c)
    return (v / v.norm(dim=-1, keepdim=True) * r).to(dtype)


def lin_args(n=6, m=5, rows=7, c=0.7, bias=True, dtype=D64, ball=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = ball_points((rows, n), c, gen=g) if ball else torch.randn(rows, n, dtype=D64, generator=g) * 0.3
    w = torch.randn(m, n, dtype=D64, generator=g) * 0.5
    b = torch.randn(m, dtype=D64, generator=g) * 0.3 if bias else None
    return x.to(dtype), w.to(dtype), (b.to(dtype) if b is not None else None)


# ---------------------------------------------------------------------------------------------- FC
@pytest.mark.parametrize("ti,to", [(False, False), (True, True), (True, False), (False, True)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradcheck(ti, to, bias):
    x, w, b = lin_args(bias=bias, ball=not ti)
    w = w * 0.5  # keep the outputs off the projection radius, where log0 is steep for finite differences
    c = torch.tensor(0.7, dtype=D64, requires_grad=True)
    ins = [x.requires_grad_(), w.requires_grad_()] + ([b.requires_grad_()] if bias else [])

    def f(x, w, *rest):
        bb = rest[0] if bias else None
        return L.poincare_linear(x, w, bb, rest[-1], tangent_input=ti, tangent_output=to)
    # central differences near the strongly curved log0 of outputs close to the boundary: rtol 1e-4 (the
    # analytic grads equal float64 autograd of the reference to ~1e-12, test_linear_vs_reference)
    assert torch.autograd.gradcheck(f, (*ins, c), eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("ti,to,proj", [(False, False, True), (True, True, True), (False, False, False)])
def test_linear_vs_reference(dtype, ti, to, proj):
    x, w, b = lin_args(n=33, m=17, rows=40, ball=not ti)
    c = torch.tensor(0.5, dtype=D64, requires_grad=True)
    xd, wd, bd = (t.to(dtype).requires_grad_() for t in (x, w, b))
    y = L.poincare_linear(xd, wd, bd, c, tangent_input=ti, tangent_output=to, project=proj)
    assert y.dtype == dtype and y.shape == (40, 17)
    xr, wr, br = (t.to(dtype).double().requires_grad_() for t in (x, w, b))
    cr = c.detach().clone().requires_grad_()
    yr = RL.poincare_linear(xr, wr, br, cr, tangent_input=ti, tangent_output=to, project=proj, eps=EPS_OF[dtype])
    assert rel_max(y, yr) < LAYER_TOL[dtype]
    g = torch.randn(yr.shape, dtype=D64).to(dtype)
    grads = torch.autograd.grad(y, (xd, wd, bd, c), g)
    refs = torch.autograd.grad(yr, (xr, wr, br, cr), g.double())
    for name, a, r in zip("xwb", grads, refs):
        assert torch.isfinite(a).all(), name
        assert rel_max(a, r) < LAYER_TOL[dtype] * (3 if dtype in (torch.float16, torch.bfloat16) else 1), name
    assert abs(grads[3].item() - refs[3].item()) < LAYER_TOL[dtype] * 3 * c_scale(g, yr, c)


def test_linear_curvature_identity_and_float_c():
    # ∂c equals the §3.6 identity (1/(2c))(⟨∂x, x⟩ + ⟨∂r, r⟩ − ⟨g, out⟩) and a float c gives the same values.
    x, w, b = lin_args()
    c = torch.tensor(0.7, dtype=D64, requires_grad=True)
    xx, bb = x.clone().requires_grad_(), b.clone().requires_grad_()
    y = L.poincare_linear(xx, w, bb, c)
    g = torch.randn_like(y)
    dx, db, dc = torch.autograd.grad(y, (xx, bb, c), g)
    ident = ((dx * x).sum() + (db * b).sum() - (g * y).sum()) / (2 * 0.7)
    assert abs(dc.item() - ident.item()) < 1e-12 * (1 + abs(ident.item()))
    assert torch.equal(L.poincare_linear(x, w, b, 0.7), y.detach())


def test_linear_large_z_finite():
    # ‖z_k‖ large: sinh overflows fp32 without the max-rescaled form (§8 pitfall 15)
    x = torch.full((3, 4), 0.2)
    w = torch.randn(5, 4) * 1e3
    w.requires_grad_()
    for dt in (torch.float32, torch.float16):
        y = L.poincare_linear(x.to(dt), w.to(dt), None, 1.0)
        assert torch.isfinite(y).all()
        assert (y.float().norm(dim=-1) <= 1.0).all()
        y.float().sum().backward()
        assert torch.isfinite(w.grad).all()
        w.grad = None


def test_linear_zero_inputs():
    w = torch.randn(6, 4, dtype=D64)
    w[2] = 0  # zero weight rows are legal (ζ clamp, ζ-free ∂a)
    x = torch.zeros(3, 4, dtype=D64, requires_grad=True)
    wq = w.clone().requires_grad_()
    c = torch.tensor(1.0, dtype=D64, requires_grad=True)
    for ti in (False, True):
        y = L.poincare_linear(x, wq, None, c, tangent_input=ti, tangent_output=ti)
        assert torch.isfinite(y).all()
        gs = torch.autograd.grad(y.sum(), (x, wq, c))
        for gg in gs:
            assert torch.isfinite(gg).all() and gg.abs().max() < 1e6


def test_linear_empty_and_noncontiguous():
    x, w, b = lin_args(n=6, m=5, rows=8)
    xe = torch.zeros(0, 6, dtype=D64, requires_grad=True)
    wq = w.clone().requires_grad_()
    c = torch.tensor(0.7, dtype=D64, requires_grad=True)
    y = L.poincare_linear(xe, wq, b, c)
    assert y.shape == (0, 5)
    dw, dc = torch.autograd.grad(y.sum(), (wq, c))
    assert (dw == 0).all() and dc.item() == 0
    xt = x.t().contiguous().t()
    xnc = torch.cat([x, x], 1)[:, ::2]
    assert not xnc.is_contiguous()
    assert torch.equal(L.poincare_linear(xnc, w, b, 0.7), L.poincare_linear(xnc.contiguous(), w, b, 0.7))
    assert torch.equal(L.poincare_linear(xt, w, b, 0.7), L.poincare_linear(x, w, b, 0.7))
    x3 = ball_points((2, 3, 6), 0.7)
    assert torch.equal(L.poincare_linear(x3, w, b, 0.7).reshape(6, 5), L.poincare_linear(x3.reshape(6, 6), w, b, 0.7))


def test_linear_deterministic_and_chunked():
    # bitwise equal across runs and thread counts (fixed-block reductions)
    x, w, b = lin_args(n=64, m=48, rows=3000, dtype=torch.float32)
    x.requires_grad_()
    w.requires_grad_()
    c = torch.tensor(0.3, requires_grad=True)
    res = []
    nt = torch.get_num_threads()
    for threads in (nt, 1, nt):
        torch.set_num_threads(threads)
        y = L.poincare_linear(x, w, b, c)
        res.append((y,) + torch.autograd.grad(y.square().sum(), (x, w, c)))
    torch.set_num_threads(nt)
    for r in res[1:]:
        for a, b2 in zip(res[0], r):
            assert torch.equal(a, b2)


# ---------------------------------------------------------------------------------------------- conv
CONV_CASES = [  # (B, Cin, H, W, Cout, k, stride, pad, dil)
    (2, 3, 7, 5, 4, 3, 1, 0, 1),
    (2, 3, 7, 5, 4, 3, 2, 1, 1),
    (1, 2, 7, 7, 3, 3, 1, 1, 2),
    (2, 4, 5, 6, 2, 1, 2, 0, 1),
    (1, 2, 5, 5, 5, 3, 2, 1, 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_gradcheck(case):
    B, ci, H, W, co, k, s, p, d = case
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(B, ci, H, W, dtype=D64, generator=g) * 0.5).requires_grad_()
    w = (torch.randn(co, ci, k, k, dtype=D64, generator=g) * 0.4).requires_grad_()
    b = (torch.randn(co, dtype=D64, generator=g) * 0.2).requires_grad_()
    c = torch.tensor(0.6, dtype=D64, requires_grad=True)
    f = lambda x, w, b, c: L.poincare_conv2d(x, w, b, c, stride=s, padding=p, dilation=d)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b, c), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_conv_vs_reference(case, dtype):
    B, ci, H, W, co, k, s, p, d = case
    g = torch.Generator().manual_seed(2)
    x = torch.randn(B, ci, H, W, dtype=D64, generator=g).to(dtype)
    w = (torch.randn(co, ci, k, k, dtype=D64, generator=g) * 0.4).to(dtype)
    b = (torch.randn(co, dtype=D64, generator=g) * 0.2).to(dtype)
    c = torch.tensor(0.6, dtype=D64, requires_grad=True)
    xd, wd, bd = (t.clone().requires_grad_() for t in (x, w, b))
    y = L.poincare_conv2d(xd, wd, bd, c, stride=s, padding=p, dilation=d)
    ho = (H + 2 * p - d * (k - 1) - 1) // s + 1
    wo = (W + 2 * p - d * (k - 1) - 1) // s + 1
    assert y.shape == (B, co, ho, wo) and y.dtype == dtype
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    cr = c.detach().clone().requires_grad_()
    yr = RL.poincare_conv2d(xr, wr, br, cr, stride=s, padding=p, dilation=d, eps=EPS_OF[dtype])
    assert rel_max(y, yr) < LAYER_TOL[dtype]
    gg = torch.randn(yr.shape, dtype=D64).to(dtype)
    grads = torch.autograd.grad(y, (xd, wd, bd, c), gg)
    refs = torch.autograd.grad(yr, (xr, wr, br, cr), gg.double())
    for name, a, r in zip("xwb", grads, refs):
        assert rel_max(a, r) < LAYER_TOL[dtype] * (3 if dtype == torch.bfloat16 else 1), name
    assert abs(grads[3].item() - refs[3].item()) < LAYER_TOL[dtype] * 3 * c_scale(gg, yr, c)


def test_conv_beta_and_chunks():
    assert abs(L.beta_concat_ratio(8, 72) - 0.324) < 1e-3
    assert L.beta_concat_ratio(5, 5) == 1.0
    assert abs(L.beta_concat_ratio(8, 72) - RL.beta_concat_ratio(8, 72)) < 1e-14
    with pytest.raises(ValueError, match="beta_concat_ratio: n_in"):
        L.beta_concat_ratio(0, 3)
    # many pixel tiles (large batch, tiny output channels) equal the reference
    x = torch.randn(16, 3, 9, 9, dtype=D64)
    w = torch.randn(2, 3, 3, 3, dtype=D64) * 0.3
    y = L.poincare_conv2d(x, w, None, 0.5, padding=1)
    assert rel_max(y, RL.poincare_conv2d(x, w, None, 0.5, padding=1)) < 1e-12


def test_conv_zero_input_and_empty():
    w = (torch.randn(3, 2, 3, 3, dtype=D64) * 0.3).requires_grad_()
    x = torch.zeros(2, 2, 5, 5, dtype=D64, requires_grad=True)
    c = torch.tensor(1.0, dtype=D64, requires_grad=True)
    y = L.poincare_conv2d(x, w, None, c, padding=1)
    assert torch.isfinite(y).all()
    for gg in torch.autograd.grad(y.sum(), (x, w, c)):
        assert torch.isfinite(gg).all()
    xe = torch.zeros(0, 2, 5, 5, dtype=D64, requires_grad=True)
    ye = L.poincare_conv2d(xe, w, None, c, padding=1)
    assert ye.shape == (0, 3, 5, 5)
    dw, dc = torch.autograd.grad(ye.sum(), (w, c))
    assert (dw == 0).all() and dc.item() == 0


def test_conv_noncontiguous():
    x = torch.randn(2, 5, 6, 3, dtype=D64).permute(0, 3, 1, 2)
    w = torch.randn(4, 3, 3, 3, dtype=D64) * 0.3
    assert not x.is_contiguous()
    assert torch.equal(L.poincare_conv2d(x, w, None, 0.5), L.poincare_conv2d(x.contiguous(), w, None, 0.5))


# ---------------------------------------------------------------------------------------------- batch norm
def bn_args(shape=(4, 3, 2, 3), seed=3, dtype=D64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=D64, generator=g) * 0.6
    gam = torch.tensor(0.8, dtype=D64)
    beta = torch.randn(shape[1], dtype=D64, generator=g) * 0.2
    rm = torch.randn(shape[1], dtype=D64, generator=g) * 0.2
    rv = torch.tensor(0.5, dtype=D64)
    return x.to(dtype), gam.to(dtype), beta.to(dtype), rm.to(dtype), rv.to(dtype)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dim,shape", [(1, (4, 3, 2, 3)), (-1, (5, 4))])
def test_bn_gradcheck(training, dim, shape):
    x, gam, beta, rm, rv = bn_args(shape)
    c = torch.tensor(0.7, dtype=D64, requires_grad=True)
    f = lambda x, gam, beta, c: L.poincare_midpoint_batch_norm(  # noqa: E731
        x, gam, beta, c, None if training else rm, None if training else rv, training=training, dim=dim)
    ins = (x.requires_grad_(), gam.requires_grad_(), beta.requires_grad_(), c)
    assert torch.autograd.gradcheck(f, ins, eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
def test_bn_vs_reference(training, dtype):
    x, gam, beta, rm, rv = bn_args((6, 5, 3, 3))
    c = torch.tensor(0.7, dtype=D64, requires_grad=True)
    xd, gd, bd = (t.to(dtype).requires_grad_() for t in (x, gam, beta))
    y = L.poincare_midpoint_batch_norm(xd, gd, bd, c, rm.clone(), rv.clone(), training=training)
    xr, gr, br = (t.to(dtype).double().requires_grad_() for t in (x, gam, beta))
    cr = c.detach().clone().requires_grad_()
    yr = RL.poincare_midpoint_batch_norm(xr, gr, br, cr, rm.clone(), rv.clone(), training=training,
                                         proj_eps=EPS_OF[dtype])
    assert rel_max(y, yr) < LAYER_TOL[dtype]
    g = torch.randn(yr.shape, dtype=D64).to(dtype)
    grads = torch.autograd.grad(y, (xd, gd, bd, c), g)
    refs = torch.autograd.grad(yr, (xr, gr, br, cr), g.double())
    for name, a, r in zip(["x", "gamma", "beta"], grads, refs):
        assert rel_max(a, r) < LAYER_TOL[dtype] * (3 if dtype == torch.float16 else 1), name
    assert abs(grads[3].item() - refs[3].item()) < LAYER_TOL[dtype] * 3 * c_scale(g, yr, c)


def test_bn_running_stats():
    x, gam, beta, rm0, rv0 = bn_args((8, 3, 2, 2))
    c = 0.7
    rm, rv = rm0.clone(), rv0.clone()
    out = L.poincare_midpoint_batch_norm(x, gam, beta, c, rm, rv, training=True, momentum=0.3)
    rmr, rvr = rm0.clone(), rv0.clone()
    RL.poincare_midpoint_batch_norm(x, gam, beta, c, rmr, rvr, training=True, momentum=0.3)
    assert torch.allclose(rm, rmr, atol=1e-12) and torch.allclose(rv, rvr, atol=1e-12)
    # running_mean moves along the geodesic towards the batch midpoint, running_var by the unbiased EMA
    xb = RP.expmap0(x.movedim(1, -1).reshape(-1, 3), c)
    m = RP.midpoint(xb, c, reduce_dim=0)
    d = RP.dist(m.expand_as(xb), xb, c)
    var = (d * d).mean()
    N = xb.shape[0]
    assert abs(rv.item() - (0.7 * rv0.item() + 0.3 * var.item() * N / (N - 1))) < 1e-12
    geo = RP.expmap(rm0, 0.3 * RP.logmap(rm0, m, c), c)
    assert torch.allclose(rm, geo, atol=1e-10)
    # momentum = 1 jumps to the batch midpoint
    rm1, rv1 = rm0.clone(), rv0.clone()
    L.poincare_midpoint_batch_norm(x, gam, beta, c, rm1, rv1, training=True, momentum=1.0)
    assert torch.allclose(rm1, m, atol=1e-10)
    # eval uses the running stats: eval of a batch = eval of each sample alone
    ev = L.poincare_midpoint_batch_norm(x, gam, beta, c, rm, rv, training=False)
    one = torch.cat([L.poincare_midpoint_batch_norm(x[i:i + 1], gam, beta, c, rm, rv, training=False)
                     for i in range(x.shape[0])])
    assert torch.allclose(ev, one, atol=1e-13)
    assert not torch.allclose(ev, out)
    # no buffers: batch statistics in eval too (the official behaviour)
    assert torch.allclose(L.poincare_midpoint_batch_norm(x, gam, beta, c, training=False), out, atol=1e-14)


def test_bn_module_buffers_and_cumulative():
    torch.manual_seed(0)
    bn = PoincareBatchNorm2d(4, momentum=None, dtype=D64)
    assert set(bn.state_dict()) == {"weight", "bias", "running_mean", "running_var", "num_batches_tracked", "c"}
    assert bn.weight.shape == () and bn.running_var.shape == ()
    xs = [torch.randn(3, 4, 2, 2, dtype=D64) * 0.5 for _ in range(3)]
    for x in xs:
        bn(x)
    assert bn.num_batches_tracked.item() == 3
    # cumulative average: the running var is the plain mean of the unbiased batch variances
    vs = []
    for x in xs:
        rm, rv = torch.zeros(4, dtype=D64), torch.ones((), dtype=D64)
        L.poincare_midpoint_batch_norm(x, bn.weight, bn.bias, 0.1, rm, rv, training=True, momentum=1.0)
        vs.append(rv.item())
    assert abs(bn.running_var.item() - sum(vs) / 3) < 1e-12
    bn.eval()
    y = bn(xs[0])
    ref = RL.poincare_midpoint_batch_norm(xs[0], bn.weight, bn.bias, 0.1, bn.running_mean, bn.running_var,
                                          training=False)
    assert torch.allclose(y, ref, atol=1e-13)
    # track_running_stats=False reproduces batch-stat eval
    bn2 = PoincareBatchNorm2d(4, track_running_stats=False, dtype=D64).eval()
    assert bn2.running_mean is None
    assert torch.allclose(bn2(xs[0]), L.poincare_midpoint_batch_norm(xs[0], bn2.weight, bn2.bias, 0.1), atol=1e-14)


def test_bn_equal_rows_and_errors():
    x = torch.full((3, 2, 2, 2), 0.3, dtype=D64, requires_grad=True)
    gam = torch.tensor(1.0, dtype=D64, requires_grad=True)
    beta = torch.zeros(2, dtype=D64, requires_grad=True)
    c = torch.tensor(0.5, dtype=D64, requires_grad=True)
    y = L.poincare_midpoint_batch_norm(x, gam, beta, c)
    assert torch.allclose(y, torch.zeros_like(y), atol=1e-12)  # σ² = 0: out = log0(μ) = β
    for g in torch.autograd.grad(y.sum(), (x, gam, beta, c)):
        assert torch.isfinite(g).all()
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        L.poincare_midpoint_batch_norm(torch.randn(1, 3, 1, 1), torch.ones(()), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="eps must be"):
        L.poincare_midpoint_batch_norm(torch.randn(2, 3), torch.ones(()), torch.zeros(3), 0.1, eps=0.0)
    with pytest.raises(ValueError, match="momentum must be in"):
        L.poincare_midpoint_batch_norm(torch.randn(2, 3), torch.ones(()), torch.zeros(3), 0.1, torch.zeros(3),
                                       torch.ones(()), momentum=1.5)
    with pytest.raises(RuntimeError, match="bias has shape \\[4\\] but x has 3 channels"):
        L.poincare_midpoint_batch_norm(torch.randn(2, 3), torch.ones(()), torch.zeros(4), 0.1)
    with pytest.raises(RuntimeError, match="weight \\(γ\\) must have one element"):
        L.poincare_midpoint_batch_norm(torch.randn(2, 3), torch.ones(3), torch.zeros(3), 0.1)
    with pytest.raises(ValueError, match="expected 4-D input"):
        PoincareBatchNorm2d(3)(torch.randn(2, 3))


# ---------------------------------------------------------------------------------------------- errors
def test_layer_errors():
    x = torch.randn(2, 8, 5, 5)
    with pytest.raises(RuntimeError, match="fastnorm.poincare_conv2d: weight has 16 input channels but x has 8"):
        L.poincare_conv2d(x, torch.randn(4, 16, 3, 3), None, 0.1)
    with pytest.raises(ValueError, match="poincare_conv2d: x must be 4-D"):
        L.poincare_conv2d(torch.randn(8, 5, 5), torch.randn(4, 8, 3, 3), None, 0.1)
    with pytest.raises(ValueError, match="poincare_conv2d: stride must be >= 1"):
        L.poincare_conv2d(x, torch.randn(4, 8, 3, 3), None, 0.1, stride=0)
    with pytest.raises(ValueError, match="poincare_conv2d: padding must be >= 0"):
        L.poincare_conv2d(x, torch.randn(4, 8, 3, 3), None, 0.1, padding=-1)
    with pytest.raises(RuntimeError, match="poincare_conv2d: kernel 7x7 .* larger than the padded input"):
        L.poincare_conv2d(x, torch.randn(4, 8, 7, 7), None, 0.1)
    with pytest.raises(RuntimeError, match="poincare_linear: weight has 3 input features but x's last dimension is 4"):
        L.poincare_linear(torch.randn(2, 4), torch.randn(5, 3), None, 0.1)
    with pytest.raises(RuntimeError, match="poincare_linear: bias has shape \\[4\\]"):
        L.poincare_linear(torch.randn(2, 4), torch.randn(5, 4), torch.zeros(4), 0.1)
    with pytest.raises(RuntimeError, match="poincare_linear: weight must be float32 \\(x's dtype\\) or float32, got float64|weight must be"):
        L.poincare_linear(torch.randn(2, 4), torch.randn(5, 4, dtype=D64), None, 0.1)
    with pytest.raises(ValueError, match="c must be a finite value > 0"):
        L.poincare_linear(torch.randn(2, 4), torch.randn(5, 4), None, -1.0)
    with pytest.raises(ValueError, match="c must have exactly one element"):
        L.poincare_linear(torch.randn(2, 4), torch.randn(5, 4), None, torch.ones(2))
    with pytest.raises(TypeError, match="x must be float32, float16, bfloat16 or float64"):
        L.poincare_linear(torch.ones(2, 4, dtype=torch.int64), torch.randn(5, 4), None, 0.1)
    x2 = torch.randn(3, 4, dtype=D64, requires_grad=True)
    y = L.poincare_linear(x2, torch.randn(5, 4, dtype=D64), None, 0.1)
    (gx,) = torch.autograd.grad(y.sum(), x2, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        gx.sum().backward()


def test_module_errors():
    with pytest.raises(ValueError, match="depth must be 6n\\+2"):
        PoincareResNet(depth=21)
    with pytest.raises(ValueError, match="io must be"):
        PoincareLinear(3, 3, io="points")
    with pytest.raises(ValueError, match="init must be one of"):
        PoincareConv2d(3, 3, 3, init="xavier")
    with pytest.raises(ValueError, match="skip_order must be"):
        PoincareResidualBlock(3, 3, skip_order="ff")
    with pytest.raises(ValueError, match="impl must be one of"):
        PoincareLinear(3, 3, impl="geoopt")
    with pytest.raises(ValueError, match="c must be a finite float > 0"):
        PoincareLinear(3, 3, c=0.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        poincare_identity_(torch.empty(3, 3), mode="diag")


# ---------------------------------------------------------------------------------------------- init, modules
@pytest.mark.parametrize("c", [0.1, 1.0])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_identity_init(c, dtype, tol):
    lin = PoincareLinear(8, 8, io="ball", c=c, dtype=dtype)
    x = ball_points((20, 8), c, rmax=0.95).to(dtype)
    assert (lin(x) - x).abs().max().item() < tol
    # the official conformal factor 2(1 − c‖x‖²) shrinks the norms
    yb = RL.poincare_linear(x.double(), lin.weight.double(), lin.bias.double(), c, buggy_lambda=True)
    far = x.double().norm(dim=-1) * math.sqrt(c) > 0.2
    assert far.sum() > 10 and (yb.norm(dim=-1)[far] < x.double().norm(dim=-1)[far] - 1e-6).all()


def test_init_modes():
    w = poincare_identity_(torch.empty(6, 4, 3, 3))
    assert torch.equal(w[:4, :, 1, 1], 0.5 * torch.eye(4)) and w[:4].abs().sum() == 2.0
    assert w[4:].abs().sum() > 0  # rows without an identity partner: normal
    w = poincare_identity_(torch.empty(4, 2, 3, 3), mode="unfold_eye")
    assert torch.equal(w.view(4, -1)[:, :4], 0.5 * torch.eye(4)) and w.abs().sum() == 2.0
    w = poincare_identity_(torch.empty(3, 5))
    assert torch.equal(w, 0.5 * torch.eye(3, 5))
    w = poincare_normal_(torch.empty(400, 300))
    assert abs(w.std().item() - (2 * 300 * 400) ** -0.5) < 2e-4
    for init in ("identity", "unfold_eye", "normal"):
        conv = PoincareConv2d(3, 5, 3, padding=1, init=init)
        assert torch.isfinite(conv(torch.randn(2, 3, 6, 6))).all()


def test_modules_state_dict_and_reference_equal():
    lin = PoincareLinear(5, 4, learn_c=True)
    assert set(lin.state_dict()) == {"weight", "bias", "c_raw"}
    assert abs(lin.curvature().item() - 0.1) < 1e-7
    ref = torch.nn.Linear(5, 4)
    lin2 = PoincareLinear(5, 4)
    missing = lin2.load_state_dict(ref.state_dict(), strict=False)
    assert torch.equal(lin2.weight, ref.weight) and list(missing.missing_keys) == ["c"]
    conv = PoincareConv2d(3, 4, 3, stride=2, padding=1)
    assert set(conv.state_dict()) == {"weight", "bias", "c"} and conv.weight.shape == (4, 3, 3, 3)
    blk = PoincareResidualBlock(4, 8, 2, dtype=D64)
    keys = {k.split(".")[0] for k in blk.state_dict()}
    assert keys == {"conv1", "bn1", "conv2", "bn2", "shortcut", "c"}
    blk_ref = PoincareResidualBlock(4, 8, 2, impl="reference", dtype=D64)
    blk_ref.load_state_dict(blk.state_dict())
    x = torch.randn(2, 4, 6, 6, dtype=D64) * 0.5
    y, yr = blk(x), blk_ref(x)
    assert torch.allclose(y, yr, atol=1e-12)
    y.square().sum().backward()
    yr.square().sum().backward()
    for (n, p), q in zip(blk.named_parameters(), blk_ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-10, rtol=1e-8), n
    assert torch.allclose(blk.bn1.running_mean, blk_ref.bn1.running_mean, atol=1e-12)


def test_learn_c_trains():
    torch.manual_seed(0)
    lin = PoincareLinear(6, 3, learn_c=True, init="normal")
    opt = torch.optim.Adam(lin.parameters(), lr=1e-2)
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    cs = []
    for _ in range(50):
        loss = F.cross_entropy(lin(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        cs.append(lin.curvature().item())
    assert all(math.isfinite(v) for v in cs) and abs(cs[-1] - cs[0]) > 1e-4


@pytest.mark.parametrize("depth", [8, 20, 32])
def test_resnet_shapes(depth):
    net = PoincareResNet(depth=depth, widths=(4, 8, 8), num_classes=7)
    nblocks = (depth - 2) // 6
    assert len(net.stages) == 3 and all(len(s) == nblocks for s in net.stages)
    assert "stages.2.0.shortcut.weight" in net.state_dict() and "fc.weight" in net.state_dict()
    if depth == 8:
        assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)
        net1 = PoincareResNet(depth=8, widths=(4, 8, 8), in_channels=1)
        assert net1(torch.randn(1, 1, 8, 8)).shape == (1, 10)  # batch size 1 trains (BN over H·W)
        assert net1.eval()(torch.randn(1, 1, 8, 8)).shape == (1, 10)
    assert isinstance(poincare_resnet20(), PoincareResNet) and poincare_resnet32().depth == 32


def test_resnet_reference_equal_and_saved_tensors():
    torch.manual_seed(0)
    net = PoincareResNet(depth=8, widths=(4, 6, 8), in_channels=2, dtype=D64)
    ref = PoincareResNet(depth=8, widths=(4, 6, 8), in_channels=2, impl="reference", dtype=D64)
    ref.load_state_dict(net.state_dict())
    x = torch.randn(3, 2, 8, 8, dtype=D64)
    saved = []

    def pack(t):
        saved.append(t)
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = net(x)
    yr = ref(x)
    assert torch.allclose(y, yr, atol=1e-12)
    y.sum().backward()
    yr.sum().backward()
    for (n, p), q in zip(net.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, atol=1e-9, rtol=1e-7), n
    # what the fastnorm layers save: their inputs, params, c and O(C) statistics; relu/mean save their own
    # tensors (plain torch). No saved tensor is larger than the largest activation.
    act = 3 * 4 * 8 * 8
    assert max(t.numel() for t in saved) <= act


# ---------------------------------------------------------------------------------------------- opcheck, compile
def _opcheck_cases():
    x, w, b = lin_args(n=5, m=4, rows=3)
    c = torch.tensor(0.5, dtype=D64, requires_grad=True)
    xc = torch.randn(2, 3, 5, 4, dtype=D64) * 0.5
    wc = torch.randn(4, 3, 3, 3, dtype=D64) * 0.3
    xb, gam, beta, rm, rv = bn_args((3, 3, 2, 2))
    return [
        (torch.ops.fastnorm.poincare_linear, (x.requires_grad_(), w.requires_grad_(), b, c, False, False, True)),
        (torch.ops.fastnorm.poincare_linear, (x, w, None, c, True, True, True)),
        (torch.ops.fastnorm.poincare_conv2d, (xc.requires_grad_(), wc.requires_grad_(), None, c, 2, 1, 1, 0, 1, 1)),
        (torch.ops.fastnorm.poincare_midpoint_batch_norm,
         (xb.requires_grad_(), gam.requires_grad_(), beta.requires_grad_(), c, None, None, True, 1, 1e-6)),
        (torch.ops.fastnorm.poincare_midpoint_batch_norm, (xb, gam, beta, c, rm, rv, False, 1, 1e-6)),
        (torch.ops.fastnorm.poincare_bn_running_update_,
         (rm.clone(), rv.clone(), torch.zeros(3, dtype=D64), torch.tensor(0.3, dtype=D64), c.detach(), 0.1, 12)),
    ]


@pytest.mark.parametrize("i", range(6))
def test_opcheck(i):
    op, args = _opcheck_cases()[i]
    torch.library.opcheck(op, args)


def test_compile_fullgraph():
    torch._dynamo.reset()
    conv = PoincareConv2d(2, 4, 3, padding=1, learn_c=True)
    bn = PoincareBatchNorm2d(4)
    lin = PoincareLinear(4, 3)

    def f(x):
        h = F.relu(bn(conv(x)))
        return lin(h.mean(dim=(2, 3)))
    x = torch.randn(3, 2, 5, 5)
    ref = f(x)
    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    out = cf(x)
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    assert conv.c_raw.grad is not None and torch.isfinite(conv.weight.grad).all()


# ---------------------------------------------------------------------------------------------- memory (§6.13)
def _cpu_peak(fn):
    """Peak of the running sum of CPU allocation events (torch.profiler, profile_memory=True) inside fn."""
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


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_layer_memory_vs_euclidean(kind):
    torch.manual_seed(0)
    if kind == "linear":
        x = torch.randn(4096, 256) * 0.05
        mod, eu = PoincareLinear(256, 256), torch.nn.Linear(256, 256)
    else:
        x = torch.randn(8, 16, 32, 32) * 0.2
        mod, eu = PoincareConv2d(16, 16, 3, padding=1), torch.nn.Conv2d(16, 16, 3, padding=1)
    x.requires_grad_()
    g = torch.randn_like(eu(x).detach())

    def step(m):
        def run():
            y = m(x)
            y.backward(g)
        return run
    for m in (mod, eu):  # warm-up
        step(m)()
    peak_p = _cpu_peak(step(mod))
    peak_e = _cpu_peak(step(eu))
    assert peak_p <= 1.5 * peak_e, (peak_p, peak_e)


@pytest.mark.slow
def test_resnet_memory_vs_reference():
    # §6.13(c) at reduced size (batch 4, 16×16; the 8×32×32 case is in bench_poincare_resnet.py)
    torch.manual_seed(0)
    net = PoincareResNet(depth=8, widths=(8, 16, 32))
    ref = PoincareResNet(depth=8, widths=(8, 16, 32), impl="reference")
    ref.load_state_dict(net.state_dict())
    x = torch.randn(4, 3, 16, 16)
    y = torch.randint(0, 10, (4,))

    def step(m):
        return lambda: F.cross_entropy(m(x), y).backward()
    for m in (net, ref):
        step(m)()
    peak_f, peak_r = _cpu_peak(step(net)), _cpu_peak(step(ref))
    assert peak_f <= 0.5 * peak_r, (peak_f, peak_r)


# ---------------------------------------------------------------------------------------------- CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_vs_cpu(dtype):
    torch.manual_seed(0)
    x, w, b = lin_args(n=33, m=17, rows=50, dtype=dtype)
    c = torch.tensor(0.5, requires_grad=True)
    for ti in (False, True):
        outs = []
        for dev in ("cpu", "cuda"):
            xd, wd, bd = (t.to(dev).requires_grad_() for t in (x, w, b))
            cd = c.detach().to(dev).requires_grad_()
            y = L.poincare_linear(xd, wd, bd, cd, tangent_input=ti, tangent_output=ti)
            outs.append((y,) + torch.autograd.grad(y.float().square().sum(), (xd, wd, bd, cd)))
        for a, r in zip(*outs):
            assert rel_max(a.cpu(), r) < LAYER_TOL[dtype] * 3
    xc = torch.randn(3, 4, 9, 7).to(dtype)
    wc = (torch.randn(5, 4, 3, 3) * 0.3).to(dtype)
    res = []
    for dev in ("cpu", "cuda"):
        xd, wd = xc.to(dev).requires_grad_(), wc.to(dev).requires_grad_()
        cd = c.detach().to(dev).requires_grad_()
        y = L.poincare_conv2d(xd, wd, None, cd, stride=2, padding=1)
        res.append((y,) + torch.autograd.grad(y.float().square().sum(), (xd, wd, cd)))
    for a, r in zip(*res):
        assert rel_max(a.cpu(), r) < LAYER_TOL[dtype] * 3
    xb = torch.randn(4, 5, 3, 3).to(dtype)
    res = []
    for dev in ("cpu", "cuda"):
        bn = PoincareBatchNorm2d(5, learn_c=True).to(dev)
        xd = xb.to(dev).requires_grad_()
        y = bn(xd)
        res.append((y, bn.running_mean, bn.running_var) +
                   torch.autograd.grad(y.float().square().sum(), (xd, bn.weight, bn.bias, bn.c_raw)))
    for a, r in zip(*res):
        assert rel_max(a.cpu(), r) < LAYER_TOL[dtype] * 3


@pytest.mark.cuda
def test_cuda_resnet_no_sync():
    net = PoincareResNet(depth=8, widths=(8, 16, 32)).cuda()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x, y = torch.randn(8, 3, 32, 32, device="cuda"), torch.randint(0, 10, (8,), device="cuda")
    F.cross_entropy(net(x), y).backward()  # warm-up (allocations, lazy init)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.isfinite(loss).item()


# ---------------------------------------------------------------------------------------------- example
@pytest.mark.slow
def test_example_smoke():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, os.path.join(root, "examples", "poincare_resnet_digits.py"), "--depth", "8",
                          "--epochs", "3"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    acc = float(out.stdout.strip().splitlines()[-1].split()[-1])
    assert acc >= 0.5 and "nan" not in out.stdout

"""Tests of EvoNorm B0 / S0 (specs/norm.md §3.9, §6 test 14): parity with the plain-PyTorch reference replicas
(and with timm when it can be imported), float64 gradcheck, the max-tie rule, tf semantics, opcheck,
torch.compile, errors, empty tensors and CUDA against CPU."""
import copy
import importlib.util
import os
import sys
import types

import pytest
import torch

import fastnorm
from fastnorm.ops import norm_evonorm as evo_ops
from fastnorm.reference import norm_evonorm as ref

from conftest import poison_cuda_allocator, rel_err, tol

FMTS = ["nchw", "cl"]


def make(shape, dtype=torch.float32, seed=0, scale=1.0, shift=0.0, fmt="nchw", device="cpu"):
    g = torch.Generator().manual_seed(seed)
    t = (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).to(device)
    return t.to(memory_format=torch.channels_last) if fmt == "cl" else t.contiguous()


def randomize(module, seed):
    """Random affine, v and running_var (so a parity test does not pass by the init's symmetry)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            r = torch.rand(t.shape, generator=g, dtype=torch.float64)
            t.copy_((0.5 + r) if name in ("weight", "running_var") else (r - 0.5) if name == "bias" else (0.2 + r))
    return module


def pair(kind, *args, dtype=torch.float32, seed=1, **kwargs):
    cls_f = getattr(fastnorm.nn, kind)
    cls_r = getattr(ref, kind)
    f = randomize(cls_f(*args, **kwargs).to(dtype), seed)
    r = cls_r(*args, **kwargs).to(dtype)
    r.load_state_dict(f.state_dict())
    return f, r


def run(module, x, seed=5):
    """Forward + backward with a fixed random upstream gradient; returns (y, dx, {param: grad})."""
    x = x.detach().clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    y = module(x)
    dy = make(y.shape, y.dtype, seed)
    y.backward(dy)
    return y.detach(), x.grad, {n.replace("_orig_mod.", ""): p.grad for n, p in module.named_parameters()}


def assert_close(a, b, dtype, what):
    err = rel_err(a, b)
    assert err < tol(dtype), f"{what}: relative error {err:.3g}"


# ---- parity with the reference replicas ---------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("semantics", ["timm", "tf"])
def test_b0_matches_reference(dtype, fmt, training, semantics):
    f, r = pair("EvoNorm2dB0", 24, semantics=semantics, dtype=dtype)
    f.train(training)
    r.train(training)
    x = make((3, 24, 7, 9), dtype, 2, scale=2.0, shift=0.5, fmt=fmt)
    yf, dxf, gf = run(f, x)
    yr, dxr, gr = run(r, x)
    assert yf.is_contiguous(memory_format=torch.channels_last) == (fmt == "cl")
    assert_close(yf, yr, dtype, "y")
    assert_close(dxf, dxr, dtype, "dx")
    for n in ("weight", "bias", "v"):
        assert_close(gf[n], gr[n], dtype, "d" + n)
    assert_close(f.running_var, r.running_var, dtype, "running_var")
    if not training:
        assert torch.equal(f.running_var, r.running_var)  # eval leaves it alone


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("cfg", [dict(groups=8), dict(groups=32), dict(group_size=4), dict(groups=1)])
def test_s0_matches_reference(dtype, fmt, cfg):
    f, r = pair("EvoNorm2dS0", 32, dtype=dtype, **cfg)
    assert f.groups == r.groups
    x = make((2, 32, 5, 6), dtype, 3, scale=1.5, shift=-0.3, fmt=fmt)
    yf, dxf, gf = run(f, x)
    yr, dxr, gr = run(r, x)
    assert yf.is_contiguous(memory_format=torch.channels_last) == (fmt == "cl")
    assert_close(yf, yr, dtype, "y")
    assert_close(dxf, dxr, dtype, "dx")
    for n in ("weight", "bias", "v"):
        assert_close(gf[n], gr[n], dtype, "d" + n)


@pytest.mark.parametrize("kind", ["EvoNorm2dB0", "EvoNorm2dS0"])
def test_apply_act_false_is_affine_only(kind):
    f, r = pair(kind, 16, apply_act=False)
    assert f.v is None and "v" not in f.state_dict()
    x = make((2, 16, 4, 4), seed=4, fmt="cl")
    yf, dxf, gf = run(f, x)
    yr, dxr, gr = run(r, x)
    expect = x * f.weight.detach().view(1, -1, 1, 1) + f.bias.detach().view(1, -1, 1, 1)
    torch.testing.assert_close(yf, expect)
    torch.testing.assert_close(yf, yr)
    torch.testing.assert_close(dxf, dxr)
    if kind == "EvoNorm2dB0":
        assert torch.equal(f.running_var, r.running_var)  # no normalisation, no running update


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("fmt", FMTS)
def test_16bit_against_float64(dtype, fmt):
    x = make((2, 16, 6, 6), dtype, 6, fmt=fmt)
    for kind in ("EvoNorm2dB0", "EvoNorm2dS0"):
        kw = dict(groups=4) if kind == "EvoNorm2dS0" else {}
        f = randomize(getattr(fastnorm.nn, kind)(16, **kw), 7)  # float32 parameters with 16-bit input
        r = getattr(ref, kind)(16, **kw).double()
        r.load_state_dict(f.state_dict())
        yf, dxf, gf = run(f, x)
        yr, dxr, gr = run(r, x.double())
        assert yf.dtype == dtype and gf["weight"].dtype == torch.float32
        assert_close(yf, yr, dtype, kind + " y")
        assert_close(dxf, dxr, dtype, kind + " dx")
        assert_close(gf["v"], gr["v"], dtype, kind + " dv")


# ---- running variance and the tf conventions --------------------------------------------------------
@pytest.mark.parametrize("semantics", ["timm", "tf"])
def test_b0_running_var_bessel(semantics):
    m = fastnorm.nn.EvoNorm2dB0(8, momentum=0.25, semantics=semantics).double()
    x = make((4, 8, 3, 5), torch.float64, 8)
    m(x)
    n = 4 * 3 * 5
    var = x.var(dim=(0, 2, 3), unbiased=False)
    k = n / (n - 1) if semantics == "timm" else 1.0
    torch.testing.assert_close(m.running_var, 0.75 * torch.ones(8, dtype=torch.float64) + 0.25 * var * k,
                               rtol=1e-12, atol=0)


def test_tf_defaults_and_group_lowering():
    assert fastnorm.nn.EvoNorm2dB0(8).eps == 1e-3
    assert fastnorm.nn.EvoNorm2dB0(8, semantics="tf").eps == 1e-5
    assert fastnorm.nn.EvoNorm2dS0(8, groups=4).eps == 1e-5
    assert fastnorm.nn.EvoNorm2dS0(48, semantics="tf").groups == 24
    assert fastnorm.nn.EvoNorm2dS0(48, group_size=8, semantics="tf").groups == 6
    assert fastnorm.nn.EvoNorm2dS0(64, group_size=16).groups == 4
    with pytest.raises(ValueError, match=r"fastnorm.nn.EvoNorm2dS0: groups \(32\) must divide the number of "
                                         r"channels \(48\)"):
        fastnorm.nn.EvoNorm2dS0(48)
    # tf with 24 groups equals the reference with 24 groups, and differs from eps 1e-3.
    x = make((2, 48, 4, 4), seed=9)
    f, r = pair("EvoNorm2dS0", 48, semantics="tf")
    torch.testing.assert_close(f(x), r(x))
    b_tf, b_ref = pair("EvoNorm2dB0", 48, semantics="tf")
    b_ref.eps = 1e-5
    torch.testing.assert_close(b_tf(x), b_ref(x))
    b_timm_eps = ref.EvoNorm2dB0(48, semantics="tf", eps=1e-3)
    b_timm_eps.load_state_dict(b_tf.state_dict())
    assert not torch.allclose(b_tf.eval()(x * 0.01), b_timm_eps.eval()(x * 0.01))


@pytest.mark.parametrize("training", [True, False])
def test_tie_rule(training):
    """B = 1 and v = 0 make R = S_bc equal L_c = sqrt(var_c + eps) everywhere (in eval once running_var holds
    that variance). timm splits the gradient at ties in half, tf gives it all to L."""
    x = make((1, 6, 5, 4), torch.float64, 10, shift=0.3)
    dy = make(x.shape, torch.float64, 11)
    w = make((6,), torch.float64, 12).abs() + 0.5
    b = make((6,), torch.float64, 13)
    v = torch.zeros(6, dtype=torch.float64)
    rv = torch.ones(6, dtype=torch.float64)
    eps = 1e-3
    _, lv, istd, _ = torch.ops.fastnorm.evonorm_b0(x, w, b, v, rv.clone(), True, 0.1, eps, 0)
    assert torch.equal((lv + eps).sqrt().expand(1, 6), istd)  # exact ties
    rv = lv.clone()
    grads = {}
    for sem in ("timm", "tf"):
        xx, vv, ww = x.clone().requires_grad_(), v.clone().requires_grad_(), w.clone().requires_grad_()
        y = fastnorm.evonorm_b0(xx, ww, b, vv, rv.clone(), training=training, eps=eps, semantics=sem)
        y.backward(dy)
        grads[sem] = (xx.grad, vv.grad)
    # Closed form: D = S = L, e = -dy*w*x/D^2; dv = p * sum e*x; the S term (x - m)/(HW S) * p * sum e.
    d = istd.view(1, 6, 1, 1)
    u = dy * w.view(1, 6, 1, 1)
    e = -u * x / d**2
    hw = 20
    dev = (x - x.mean(dim=(2, 3), keepdim=True)) / (hw * d)
    for sem, p in (("timm", 0.5), ("tf", 0.0)):
        dx, dv = grads[sem]
        torch.testing.assert_close(dv, p * (e * x).sum(dim=(0, 2, 3)), rtol=1e-10, atol=1e-12)
        s_term = dev * p * e.sum(dim=(2, 3), keepdim=True)
        l_term = dev * (1 - p) * e.sum(dim=(2, 3), keepdim=True) if training else 0  # B = 1: mu_c = m_bc, n = HW
        torch.testing.assert_close(dx, u / d + s_term + l_term, rtol=1e-10, atol=1e-12)
    assert not torch.allclose(grads["timm"][1], grads["tf"][1])


# ---- gradcheck, opcheck, compile --------------------------------------------------------------------
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("fmt", FMTS)
def test_b0_gradcheck(training, fmt):
    x = make((2, 3, 4, 3), torch.float64, 14, fmt=fmt).requires_grad_()
    w = (make((3,), torch.float64, 15).abs() + 0.5).requires_grad_()
    b = make((3,), torch.float64, 16).requires_grad_()
    v = make((3,), torch.float64, 17).requires_grad_()
    rv = make((3,), torch.float64, 18).abs() + 0.5

    def f(x, w, b, v):
        return fastnorm.evonorm_b0(x, w, b, v, rv.clone(), training=training)

    assert torch.autograd.gradcheck(f, (x, w, b, v))


@pytest.mark.parametrize("fmt", FMTS)
def test_s0_gradcheck(fmt):
    x = make((2, 4, 2, 3), torch.float64, 19, fmt=fmt).requires_grad_()
    w = make((4,), torch.float64, 20).requires_grad_()
    b = make((4,), torch.float64, 21).requires_grad_()
    v = make((4,), torch.float64, 22).requires_grad_()
    assert torch.autograd.gradcheck(lambda *a: fastnorm.evonorm_s0(*a, groups=2), (x, w, b, v))


def _opcheck_cases():
    x = make((2, 4, 3, 5), seed=23)
    xc = make((2, 4, 3, 5), seed=23, fmt="cl")
    w, b, v = make((4,), seed=24), make((4,), seed=25), make((4,), seed=26)
    rv = make((4,), seed=27).abs() + 0.5
    dy = make((2, 4, 3, 5), seed=28)
    ops = torch.ops.fastnorm
    cases = []
    wg, bg, vg = (t.clone().requires_grad_() for t in (w, b, v))  # the forward ops also get an autograd check
    for xx in (x, xc):
        for training in (True, False):
            cases.append((ops.evonorm_b0.default, (xx, wg, bg, vg, rv, training, 0.1, 1e-3, 0)))
            _, lv, istd, _ = ops.evonorm_b0(xx, w, b, v, rv, training, 0.1, 1e-3, 1)
            cases.append((ops.evonorm_b0_backward.default, (dy, xx, w, v, lv, istd, training, 1e-3, 1)))
        cases.append((ops.evonorm_s0.default, (xx, wg, bg, vg, 2, 1e-5)))
        _, gm, gr = ops.evonorm_s0(xx, w, b, v, 2, 1e-5)
        cases.append((ops.evonorm_s0_backward.default, (dy, xx, w, v, gm, gr, 2)))
    return cases


@pytest.mark.parametrize("case", range(12))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("kind", ["EvoNorm2dB0", "EvoNorm2dS0"])
@pytest.mark.parametrize("training", [True, False])
def test_compile_fullgraph(kind, training):
    torch._dynamo.reset()
    kw = dict(groups=4) if kind == "EvoNorm2dS0" else {}
    eager = randomize(getattr(fastnorm.nn, kind)(16, **kw), 29).train(training)
    comp = getattr(fastnorm.nn, kind)(16, **kw).train(training)
    comp.load_state_dict(eager.state_dict())
    cm = torch.compile(comp, fullgraph=True, backend="aot_eager")
    x = make((2, 16, 5, 5), seed=30, fmt="cl")
    ye, dxe, ge = run(eager, x)
    yc, dxc, gc = run(cm, x)
    torch.testing.assert_close(yc, ye, rtol=0, atol=0)
    torch.testing.assert_close(dxc, dxe, rtol=0, atol=0)
    for n in ge:
        torch.testing.assert_close(gc[n], ge[n], rtol=0, atol=0)
    if kind == "EvoNorm2dB0":
        torch.testing.assert_close(comp.running_var, eager.running_var, rtol=0, atol=0)
        assert training == (not torch.equal(comp.running_var, randomize(fastnorm.nn.EvoNorm2dB0(16), 29).running_var))


def test_deterministic_and_dy_untouched():
    f = randomize(fastnorm.nn.EvoNorm2dS0(32, groups=8), 31)
    b0 = randomize(fastnorm.nn.EvoNorm2dB0(32), 32)
    for m in (f, b0):
        x = make((4, 32, 9, 9), seed=33, fmt="cl")
        dy = make(x.shape, seed=34)
        dy0 = dy.clone()
        outs = []
        for _ in range(2):
            xx = x.clone().requires_grad_()
            m.zero_grad()
            m(xx).backward(dy)
            outs.append([xx.grad] + [p.grad.clone() for p in m.parameters()])
        for a, b in zip(*outs):
            assert torch.equal(a, b)
        assert torch.equal(dy, dy0)


# ---- errors and edge cases --------------------------------------------------------------------------
def test_errors():
    x = make((2, 8, 3, 3))
    w, b, v, rv = torch.ones(8), torch.zeros(8), torch.ones(8), torch.ones(8)
    with pytest.raises(ValueError, match=r"fastnorm.evonorm_b0: input must be 4-D \[B, C, H, W\], got shape \[2, 8, 9\]"):
        fastnorm.evonorm_b0(x.view(2, 8, 9), w, b, v, rv, training=True)
    with pytest.raises(ValueError, match=r"fastnorm.evonorm_b0: weight has shape \[7\] but input has 8 channels"):
        fastnorm.evonorm_b0(x, torch.ones(7), b, v, rv, training=True)
    with pytest.raises(ValueError, match=r"fastnorm.evonorm_b0: running_var has shape \[4\]"):
        fastnorm.evonorm_b0(x, w, b, v, torch.ones(4), training=True)
    with pytest.raises(ValueError, match=r"fastnorm.evonorm_b0: momentum must be in \[0, 1\], got 1.5"):
        fastnorm.evonorm_b0(x, w, b, v, rv, training=True, momentum=1.5)
    with pytest.raises(ValueError, match=r"fastnorm.evonorm_b0: eps must be a finite value > 0, got 0.0"):
        fastnorm.evonorm_b0(x, w, b, v, rv, training=True, eps=0.0)
    with pytest.raises(ValueError, match=r"fastnorm.evonorm_b0: semantics must be 'timm' or 'tf', got 'paper'"):
        fastnorm.evonorm_b0(x, w, b, v, rv, training=True, semantics="paper")
    with pytest.raises(TypeError, match=r"fastnorm.evonorm_s0: input must be float32, float16, bfloat16 or float64"):
        fastnorm.evonorm_s0(x.to(torch.int32), w, b, v, groups=4)
    with pytest.raises(ValueError, match=r"fastnorm.evonorm_s0: groups \(3\) must divide the number of channels \(8\)"):
        fastnorm.evonorm_s0(x, w, b, v, groups=3)
    with pytest.raises(ValueError, match=r"fastnorm.evonorm_s0: group_size \(3\) must divide"):
        fastnorm.evonorm_s0(x, w, b, v, group_size=3)
    with pytest.raises(ValueError, match=r"fastnorm.evonorm_s0: groups must be >= 1, got 0"):
        fastnorm.evonorm_s0(x, w, b, v, groups=0)
    # The ops check on their own too (torch.ops callers bypass the Python checks).
    ops = torch.ops.fastnorm
    with pytest.raises(RuntimeError, match=r"fastnorm.evonorm_b0: semantics must be 0 \(timm\) or 1 \(tf\), got 2"):
        ops.evonorm_b0(x, w, b, v, rv, True, 0.1, 1e-3, 2)
    with pytest.raises(RuntimeError, match=r"fastnorm.evonorm_b0: weight is float64 but x is float32"):
        ops.evonorm_b0(x, w.double(), b.double(), v.double(), rv, True, 0.1, 1e-3, 0)
    with pytest.raises(RuntimeError, match=r"fastnorm.evonorm_b0: v dtype bfloat16 differs from weight dtype float32"):
        ops.evonorm_b0(x, w, b, v.bfloat16(), rv, True, 0.1, 1e-3, 0)
    with pytest.raises(RuntimeError, match=r"fastnorm.evonorm_b0: x must be 4-D"):
        ops.evonorm_b0(x[0], w, b, v, rv, True, 0.1, 1e-3, 0)
    with pytest.raises(RuntimeError, match=r"fastnorm.evonorm_b0: momentum must be in \[0, 1\], got -0.5"):
        ops.evonorm_b0(x, w, b, v, rv, True, -0.5, 1e-3, 0)
    with pytest.raises(RuntimeError, match=r"fastnorm.evonorm_s0: groups \(5\) must divide the number of channels \(8\)"):
        ops.evonorm_s0(x, w, b, v, 5, 1e-5)
    with pytest.raises(RuntimeError, match=r"fastnorm.evonorm_s0: eps must be a finite value > 0, got nan"):
        ops.evonorm_s0(x, w, b, v, 4, float("nan"))
    with pytest.raises(RuntimeError, match=r"fastnorm.evonorm_s0_backward: group_rstd has 3 elements, expected 8"):
        ops.evonorm_s0_backward(x, x, w, v, torch.zeros(8), torch.zeros(3), 4)
    with pytest.raises(RuntimeError, match=r"fastnorm.evonorm_b0_backward: dy has shape \[2, 8, 3, 2\]"):
        ops.evonorm_b0_backward(x[..., :2], x, w, v, torch.ones(8), torch.ones(2, 8), True, 1e-3, 0)
    with pytest.raises(ValueError, match=r"fastnorm.nn.EvoNorm2dB0: semantics must be 'timm' or 'tf'"):
        fastnorm.nn.EvoNorm2dB0(8, semantics="TF")


@pytest.mark.parametrize("shape", [(0, 8, 3, 3), (2, 8, 0, 3), (2, 0, 3, 3)])
@pytest.mark.parametrize("fmt", FMTS)
def test_empty(shape, fmt):
    c = shape[1]
    x = torch.randn(shape).to(memory_format=torch.channels_last if fmt == "cl" else torch.contiguous_format)
    for training in (False, True):
        m = fastnorm.nn.EvoNorm2dB0(c).train(training)
        xx = x.clone().requires_grad_()
        y = m(xx)
        assert y.shape == x.shape
        y.sum().backward()
        assert xx.grad.shape == x.shape
        assert torch.equal(m.weight.grad, torch.zeros(c)) and torch.equal(m.v.grad, torch.zeros(c))
    m = fastnorm.nn.EvoNorm2dS0(c, groups=4) if c else fastnorm.nn.EvoNorm2dS0(0, groups=1)
    xx = x.clone().requires_grad_()
    y = m(xx)
    assert y.shape == x.shape
    y.sum().backward()
    assert torch.equal(m.bias.grad, torch.zeros(c))


def test_nan_stays_in_its_statistic():
    x = make((3, 8, 4, 4), seed=35)
    x[1, 2, 0, 0] = float("nan")
    s0 = fastnorm.nn.EvoNorm2dS0(8, groups=4)(x)  # group (b=1, channels 2..3)
    bad = torch.zeros_like(s0, dtype=torch.bool)
    bad[1, 2:4] = True
    assert s0[bad].isnan().all() and not s0[~bad].isnan().any()
    b0 = fastnorm.nn.EvoNorm2dB0(8).eval()(x)  # eval: only the instance statistic (b=1, c=2) sees it
    bad = torch.zeros_like(b0, dtype=torch.bool)
    bad[1, 2] = True
    assert b0[bad].isnan().all() and not b0[~bad].isnan().any()


def test_state_dict_keys_and_init():
    b0 = fastnorm.nn.EvoNorm2dB0(5)
    assert list(b0.state_dict()) == ["weight", "bias", "v", "running_var"]
    assert torch.equal(b0.v, torch.ones(5)) and torch.equal(b0.running_var, torch.ones(5))
    assert torch.equal(b0.weight, torch.ones(5)) and torch.equal(b0.bias, torch.zeros(5))
    s0 = fastnorm.nn.EvoNorm2dS0(8, groups=2)
    assert list(s0.state_dict()) == ["weight", "bias", "v"]
    assert list(fastnorm.nn.EvoNorm2dB0(5, apply_act=False).state_dict()) == ["weight", "bias", "running_var"]


# ---- timm, when it can be imported ------------------------------------------------------------------
def _load_timm_evo():
    """timm's evo_norm module: `import timm` when it works, else the file named by FASTNORM_TIMM_EVO_NORM
    (a copy of timm/layers/evo_norm.py, e.g. unpacked from the wheel) with its two helpers stubbed."""
    try:
        from timm.layers import evo_norm
        return evo_norm
    except Exception:
        pass
    path = os.environ.get("FASTNORM_TIMM_EVO_NORM")
    if not path or not os.path.exists(path):
        pytest.skip("timm is not importable (set FASTNORM_TIMM_EVO_NORM to timm/layers/evo_norm.py)")
    pkg = types.ModuleType("_timm_evo_pkg")
    pkg.__path__ = []
    act = types.ModuleType("_timm_evo_pkg.create_act")
    act.create_act_layer = lambda *a, **k: torch.nn.Identity()
    trace = types.ModuleType("_timm_evo_pkg.trace_utils")

    def _assert(cond, msg=""):
        assert cond, msg
    trace._assert = _assert
    sys.modules.update({"_timm_evo_pkg": pkg, "_timm_evo_pkg.create_act": act, "_timm_evo_pkg.trace_utils": trace})
    spec = importlib.util.spec_from_file_location("_timm_evo_pkg.evo_norm", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("kind", ["EvoNorm2dB0", "EvoNorm2dS0"])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("training", [True, False])
def test_timm_parity(kind, fmt, training):
    timm_evo = _load_timm_evo()
    kw = dict(groups=8) if kind == "EvoNorm2dS0" else {}
    f = randomize(getattr(fastnorm.nn, kind)(32, **kw), 36).train(training)
    t = getattr(timm_evo, kind)(32, **kw).train(training)
    t.load_state_dict(f.state_dict())
    x = make((3, 32, 6, 5), seed=37, fmt=fmt)
    yf, dxf, gf = run(f, x)
    yt, dxt, gt = run(t, x)
    assert_close(yf, yt, torch.float32, "y")
    assert_close(dxf, dxt, torch.float32, "dx")
    for n in gf:
        assert_close(gf[n], gt[n], torch.float32, "d" + n)
    if kind == "EvoNorm2dB0":
        assert_close(f.running_var, t.running_var, torch.float32, "running_var")


# ---- CUDA against CPU -------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("kind", ["EvoNorm2dB0", "EvoNorm2dS0"])
@pytest.mark.parametrize("training", [True, False])
def test_cuda_matches_cpu(dtype, fmt, kind, training):
    poison_cuda_allocator()
    kw = dict(groups=8) if kind == "EvoNorm2dS0" else {}
    cpu = randomize(getattr(fastnorm.nn, kind)(64, **kw), 38).train(training)
    gpu = getattr(fastnorm.nn, kind)(64, **kw).cuda().train(training)
    gpu.load_state_dict(cpu.state_dict())
    x = make((4, 64, 13, 11), dtype, 39, fmt=fmt)
    yc, dxc, gc = run(cpu, x)
    yg, dxg, gg = run(gpu, x.cuda())
    assert yg.is_contiguous(memory_format=torch.channels_last) == (fmt == "cl")
    t = 1e-5 if dtype == torch.float32 else tol(dtype)
    assert_close(yg.cpu(), yc, dtype if dtype != torch.float32 else torch.float32, "y")
    assert rel_err(dxg.cpu(), dxc) < t
    for n in gc:
        assert rel_err(gg[n].cpu(), gc[n]) < max(t, 1e-4)
    if kind == "EvoNorm2dB0":
        assert rel_err(gpu.running_var.cpu(), cpu.running_var) < 1e-5


@pytest.mark.parametrize("kind", ["EvoNorm2dB0", "EvoNorm2dS0"])
def test_fused_add(kind):
    # Every norm module has fused_add (specs/norm.md §2.2): (norm(x + residual), x + residual).
    torch.manual_seed(3)
    make_mod = lambda: getattr(fastnorm.nn, kind)(8, **({"groups": 4} if kind == "EvoNorm2dS0" else {}))
    mod = make_mod()
    with torch.no_grad():
        mod.weight.uniform_(0.5, 1.5), mod.bias.uniform_(-0.5, 0.5), mod.v.uniform_(0.5, 1.5)
    plain_mod = copy.deepcopy(mod)  # B0 in training updates running_var: compare two modules in the same state
    x, r = torch.randn(2, 8, 5, 5), torch.randn(2, 8, 5, 5)
    y, s = mod.fused_add(x, r)
    assert torch.equal(s, x + r)
    assert torch.equal(y, plain_mod(x + r))
    assert all(torch.equal(a, b) for a, b in zip(mod.buffers(), plain_mod.buffers()))
    xb, rb = x.bfloat16(), r.bfloat16()
    modb = make_mod().bfloat16()
    yf, sf = modb.fused_add(xb, rb, residual_in_fp32=True)
    assert sf.dtype == torch.float32 and torch.equal(sf, xb.float() + rb.float())

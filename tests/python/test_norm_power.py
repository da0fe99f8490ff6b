"""PowerNorm / MaskPowerNorm (specs/norm.md §3.6, §6 tests 11 and 16): replay against the plain-PyTorch replica
of the official module in both quirk modes, per-quirk differences, eval, state_dict, opcheck, errors, edge
cases, memory, compile and CUDA-vs-CPU."""
import pytest
import torch

import fastnorm
from fastnorm.nn import MaskPowerNorm, PowerNorm
from fastnorm.reference.norm_power import MaskPowerNormRef

from conftest import HAS_CUDA, poison_cuda_allocator, rel_err, tol

ops = torch.ops.fastnorm


def gen(seed):
    return torch.Generator().manual_seed(seed)


def make_pair(C, dtype, group_num, quirks, batch_first=False, W=10, afwd=0.8, abkw=0.7, seed=0):
    kw = dict(alpha_fwd=afwd, alpha_bkw=abkw, warmup_iters=W, group_num=group_num, batch_first=batch_first,
              quirks=quirks, dtype=dtype)
    fast, ref = PowerNorm(C, **kw), MaskPowerNormRef(C, **kw)
    g = gen(seed)
    with torch.no_grad():
        w = 1 + 0.3 * torch.randn(C, generator=g, dtype=torch.float64)
        b = 0.2 * torch.randn(C, generator=g, dtype=torch.float64)
        for m in (fast, ref):
            m.weight.copy_(w)
            m.bias.copy_(b)
    return fast, ref


def random_mask(B, T, g):
    """(B, T) True = pad, at least one valid token overall."""
    m = torch.rand(B, T, generator=g) < 0.3
    m[0, 0] = False
    return m


def step_inputs(shape, dtype, g):
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2 + 0.5).to(dtype)
    dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x, dy


def one_step(m, x, dy, mask):
    xi = x.clone().requires_grad_()
    m.zero_grad(set_to_none=True)
    y = m(xi, mask)
    y.backward(dy)
    return y.detach(), xi.grad, m.weight.grad, m.bias.grad


def check_close(name, step, a, b, dtype):
    assert a.shape == b.shape, (name, step, a.shape, b.shape)
    err = rel_err(a, b)
    assert err < tol(dtype), f"{name} at step {step}: rel err {err:.3g}"


LAYOUTS = ["tbc", "btc", "2d"]


@pytest.mark.parametrize("quirks", ["official", "paper"])
@pytest.mark.parametrize("group_num", [1, 4])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_replay_30_steps(dtype, layout, group_num, quirks):
    T, B, C, W = 5, 3, 8, 10
    fast, ref = make_pair(C, dtype, group_num, quirks, batch_first=(layout == "btc"), W=W)
    g = gen(1)
    for step in range(1, 31):  # crosses t = 9, 10, 11
        if layout == "2d":
            shape, mask = (B, C), random_mask(B, 1, g)
        else:
            shape = (B, T, C) if layout == "btc" else (T, B, C)
            mask = random_mask(B, T, g)
        if step % 7 == 3:
            mask = None
        x, dy = step_inputs(shape, dtype, g)
        got, want = one_step(fast, x, dy, mask), one_step(ref, x, dy, mask)
        for name, a, b in zip(("y", "dx", "dweight", "dbias"), got, want):
            check_close(name, step, a, b, dtype)
        check_close("running_phi", step, fast.running_phi, ref.running_phi, dtype)
        check_close("ema_gz", step, fast.ema_gz, ref.ema_gz, dtype)
        assert fast.iters.item() == ref.iters.item() == step
        assert fast.iters.dtype == torch.int64


# ---- each quirk differs exactly where §3.6 says -----------------------------------------------------------
def fn_step(x, dy, phi0, nu0, t, quirks, mask=None, W=10, group_num=1):
    """One functional training step from the given state; returns (y, dx, dw, db, new phi, new nu)."""
    C = x.shape[-1]
    w = torch.linspace(0.5, 1.5, C, dtype=x.dtype).requires_grad_()
    b = torch.linspace(-0.2, 0.2, C, dtype=x.dtype).requires_grad_()
    phi, nu = phi0.clone(), nu0.clone()
    xi = x.clone().requires_grad_()
    y = fastnorm.power_norm(xi, w, b, phi, nu, training=True, iteration=t, pad_mask=mask, warmup_iters=W,
                            alpha_fwd=0.8, alpha_bkw=0.7, group_num=group_num, quirks=quirks)
    y.backward(dy)
    return y.detach(), xi.grad, w.grad, b.grad, phi, nu


def state(C, g):
    phi0 = (0.5 + torch.rand(1, C, 1, 1, generator=g, dtype=torch.float64))
    nu0 = 0.3 * torch.randn(1, C, 1, 1, generator=g, dtype=torch.float64)
    return phi0, nu0


def batch_q(x, mask, group_num=1):
    T, B, C = x.shape
    xt = fastnorm.reference.norm_power.group_scaling(x, group_num)
    valid = torch.ones(T, B, dtype=torch.bool) if mask is None else (~mask).T
    return (xt[valid] ** 2).mean(0)


def test_quirk_q1_backward_divisor_after_warmup():
    g = gen(5)
    x, dy = step_inputs((4, 3, 6), torch.float64, g)
    phi0, nu0 = state(6, g)
    # during warmup the two divisors coincide: everything equal
    a, p = fn_step(x, dy, phi0, nu0, 5, "official"), fn_step(x, dy, phi0, nu0, 5, "paper")
    torch.testing.assert_close(a[1], p[1], rtol=0, atol=0)
    # after warmup: same forward, different dx; the ratio of dxt is sqrt(phi + eps) / sqrt(q + eps)
    a, p = fn_step(x, dy, phi0, nu0, 11, "official"), fn_step(x, dy, phi0, nu0, 11, "paper")
    torch.testing.assert_close(a[0], p[0], rtol=0, atol=0)
    for i in (2, 3, 5):
        torch.testing.assert_close(a[i], p[i], rtol=1e-12, atol=1e-12)
    assert (a[1] - p[1]).abs().max() > 1e-3
    # with group_num = C (GroupScaling's factor per single channel) dx = rho * (dxt - xt * mean(dxt*xt)) reduces
    # to a per-channel scale of the same shape in both modes; check official's divisor directly instead:
    q = batch_q(x, None)
    eps = 1e-5
    w = torch.linspace(0.5, 1.5, 6, dtype=torch.float64)
    xt = fastnorm.reference.norm_power.group_scaling(x, 1)
    z = xt / (phi0.reshape(6) + eps).sqrt()
    gh = dy * w - 0.3 * nu0.reshape(6) * z
    for div, got in (((q + eps).sqrt(), a[1]), ((phi0.reshape(6) + eps).sqrt(), p[1])):
        xr = x.clone().requires_grad_()
        (fastnorm.reference.norm_power.group_scaling(xr, 1) * (gh / div).detach()).sum().backward()
        torch.testing.assert_close(got, xr.grad, rtol=1e-10, atol=1e-12)


def test_quirk_q2_cumulative_and_ema_during_warmup():
    g = gen(6)
    x, dy = step_inputs((4, 3, 6), torch.float64, g)
    phi0, nu0 = state(6, g)
    t = 4
    a, p = fn_step(x, dy, phi0, nu0, t, "official"), fn_step(x, dy, phi0, nu0, t, "paper")
    for i in range(4):  # forward output and gradients equal
        torch.testing.assert_close(a[i], p[i], rtol=0, atol=0)
    torch.testing.assert_close(a[5], p[5], rtol=0, atol=0)
    q = batch_q(x, None).reshape(1, 6, 1, 1)
    cum = phi0 * (t - 1) / t + q / t
    torch.testing.assert_close(p[4], cum, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(a[4], 0.8 * cum + 0.2 * q, rtol=1e-12, atol=1e-14)


def test_quirk_q3_step_w_bound():
    g = gen(7)
    x, dy = step_inputs((4, 3, 6), torch.float64, g)
    phi0, nu0 = state(6, g)
    W = 10
    q = batch_q(x, None).reshape(1, 6, 1, 1)
    a, p = fn_step(x, dy, phi0, nu0, W, "official", W=W), fn_step(x, dy, phi0, nu0, W, "paper", W=W)
    torch.testing.assert_close(a[0], p[0], rtol=0, atol=0)  # both use batch statistics at t = W
    torch.testing.assert_close(a[4], 0.8 * phi0 + 0.2 * q, rtol=1e-12, atol=1e-14)  # EMA only at t = W
    torch.testing.assert_close(p[4], phi0 * (W - 1) / W + q / W, rtol=1e-12, atol=1e-14)  # cumulative at t = W
    a, p = fn_step(x, dy, phi0, nu0, W + 1, "official", W=W), fn_step(x, dy, phi0, nu0, W + 1, "paper", W=W)
    torch.testing.assert_close(a[4], p[4], rtol=0, atol=0)  # both EMA after W
    torch.testing.assert_close(a[0], p[0], rtol=0, atol=0)


def test_quirk_q4_nu_average_over_valid_tokens():
    g = gen(8)
    T, B, C = 4, 3, 6
    x, dy = step_inputs((T, B, C), torch.float64, g)
    phi0, nu0 = state(C, g)
    mask = torch.zeros(B, T, dtype=torch.bool)
    mask[1, 2:] = True
    mask[2, 3] = True
    a, p = fn_step(x, dy, phi0, nu0, 3, "official", mask), fn_step(x, dy, phi0, nu0, 3, "paper", mask)
    for i in range(4):  # y and the gradients equal (dx uses the old nu); phi differs by Q2 only at t < W
        torch.testing.assert_close(a[i], p[i], rtol=0, atol=0)
    xt = fastnorm.reference.norm_power.group_scaling(x, 1)
    q = batch_q(x, mask)
    z = xt / (q + 1e-5).sqrt()
    w = torch.linspace(0.5, 1.5, C, dtype=torch.float64)
    ghz = (dy * w - 0.3 * nu0.reshape(C) * z) * z
    valid = (~mask).T
    torch.testing.assert_close(a[5].reshape(C), nu0.reshape(C) + ghz.mean((0, 1)), rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(p[5].reshape(C), nu0.reshape(C) + ghz[valid].mean(0), rtol=1e-12, atol=1e-13)
    # without pads the two coincide
    a, p = fn_step(x, dy, phi0, nu0, 3, "official"), fn_step(x, dy, phi0, nu0, 3, "paper")
    torch.testing.assert_close(a[5], p[5], rtol=1e-13, atol=1e-15)


# ---- eval, state_dict, module ----------------------------------------------------------------------------
@pytest.mark.parametrize("group_num", [1, 4])
def test_eval_formula_and_no_state_change(group_num):
    C = 8
    fast, _ = make_pair(C, torch.float64, group_num, "official", W=2)
    g = gen(9)
    for _ in range(4):
        x, dy = step_inputs((5, 3, C), torch.float64, g)
        one_step(fast, x, dy, None)
    fast.eval()
    before = {k: v.clone() for k, v in fast.state_dict().items()}
    x = torch.randn(5, 3, C, generator=g, dtype=torch.float64)
    y = fast(x)
    xt = fastnorm.reference.norm_power.group_scaling(x, group_num)
    want = fast.weight * xt / (fast.running_phi.reshape(C) + 1e-5).sqrt() + fast.bias
    torch.testing.assert_close(y, want.detach(), rtol=1e-12, atol=1e-12)
    for k, v in fast.state_dict().items():
        assert torch.equal(v, before[k]), k
    # eval is differentiable exactly (running_phi constant)
    w = fast.weight.detach().clone().requires_grad_()
    b = fast.bias.detach().clone().requires_grad_()
    xr = x[:2, :2].clone().requires_grad_()
    f = lambda xx, ww, bb: fastnorm.power_norm(xx, ww, bb, fast.running_phi, fast.ema_gz, training=False,
                                               iteration=1, group_num=group_num)
    assert torch.autograd.gradcheck(f, (xr, w, b))


def test_state_dict_keys_and_official_checkpoint_load():
    C = 8
    fast = PowerNorm(C, warmup_iters=3, group_num=2)
    assert MaskPowerNorm is PowerNorm
    sd = fast.state_dict()
    assert list(sd) == ["weight", "bias", "running_phi", "ema_gz", "iters"]
    assert sd["running_phi"].shape == (1, C, 1, 1) and sd["ema_gz"].shape == (1, C, 1, 1)
    assert sd["iters"].shape == (1,) and sd["iters"].dtype == torch.int64
    # a "checkpoint" of the official module after 5 steps continues identically in fastnorm
    _, ref = make_pair(C, torch.float64, 2, "official", W=3)
    g = gen(10)
    for _ in range(5):
        x, dy = step_inputs((4, 2, C), torch.float64, g)
        one_step(ref, x, dy, None)
    fast = PowerNorm(C, alpha_fwd=0.8, alpha_bkw=0.7, warmup_iters=3, group_num=2, dtype=torch.float64)
    fast.load_state_dict(ref.state_dict())
    assert fast._iters == 5
    for _ in range(2):
        x, dy = step_inputs((4, 2, C), torch.float64, g)
        for a, b in zip(one_step(fast, x, dy, None), one_step(ref, x, dy, None)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fast.running_phi, ref.running_phi, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(fast.ema_gz, ref.ema_gz, rtol=1e-10, atol=1e-12)
    assert fast.iters.item() == 7


def test_affine_false_and_fused_add():
    C = 8
    m = PowerNorm(C, affine=False, warmup_iters=5)
    assert m.weight is None and "weight" not in m.state_dict()
    x = torch.randn(4, 3, C, generator=gen(11))
    y = m(x)
    xt = fastnorm.reference.norm_power.group_scaling(x, 1)
    torch.testing.assert_close(y, xt / (xt.square().mean((0, 1)) + 1e-5).sqrt(), rtol=1e-5, atol=1e-6)
    r = torch.randn(4, 3, C, generator=gen(12))
    m2 = PowerNorm(C, affine=False, warmup_iters=5)
    y2, s = m2.fused_add(x, r)
    torch.testing.assert_close(s, x + r)
    m3 = PowerNorm(C, affine=False, warmup_iters=5)
    torch.testing.assert_close(y2, m3(x + r))


def test_16bit_forward_backward_close_to_float64():
    C = 16
    for dtype in (torch.bfloat16, torch.float16):
        fast = PowerNorm(C, warmup_iters=10, group_num=4)
        ref = MaskPowerNormRef(C, warmup_iters=10, group_num=4, dtype=torch.float64)
        x, dy = step_inputs((6, 4, C), dtype, gen(13))
        mask = random_mask(4, 6, gen(14))
        got = one_step(fast, x, dy, mask)
        want = one_step(ref, x.double(), dy.double(), mask)
        assert got[0].dtype == dtype and got[1].dtype == dtype and got[2].dtype == torch.float32
        for a, b in zip(got, want):
            assert rel_err(a, b) < 1e-2
        assert rel_err(fast.running_phi, ref.running_phi) < 1e-5
        assert rel_err(fast.ema_gz, ref.ema_gz) < 1e-4


def test_determinism_and_threads():
    C = 64
    x, dy = step_inputs((64, 16, C), torch.float32, gen(15))
    outs = []
    nthreads = torch.get_num_threads()
    try:
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            m = PowerNorm(C, warmup_iters=10, group_num=4)
            outs.append(one_step(m, x, dy, random_mask(16, 64, gen(16))) + (m.running_phi.clone(), m.ema_gz.clone()))
    finally:
        torch.set_num_threads(nthreads)
    for o in outs[1:]:
        for a, b in zip(outs[0], o):
            assert torch.equal(a, b)


# ---- ops: opcheck, errors, edge cases ---------------------------------------------------------------------
def op_args(dtype=torch.float32, G=2, quirks=0, mask=True):
    g = gen(17)
    T, B, C = 4, 3, 8
    x = torch.randn(T, B, C, generator=g, dtype=torch.float64).to(dtype)
    m = random_mask(B, T, g) if mask else None
    w = torch.rand(C, generator=g, dtype=torch.float64).to(dtype) + 0.5
    b = torch.randn(C, generator=g, dtype=torch.float64).to(dtype)
    phi = (torch.rand(1, C, 1, 1, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return x, m, w, b, phi


@pytest.mark.parametrize("t, quirks", [(3, 0), (11, 1)])
def test_opcheck(t, quirks):
    x, m, w, b, phi = op_args(quirks=quirks)
    args = (x, m, w, b, phi, t, 10, 1e-5, 0.9, 2, 1e-5, False, quirks)
    torch.library.opcheck(ops.power_norm, args)
    y, grs, x2, denom, nphi = ops.power_norm(*args)
    dy = torch.randn_like(y)
    nu = torch.randn(1, 8, 1, 1)
    torch.library.opcheck(ops.power_norm_backward, (dy, x, m, grs, x2, denom, w, nu, 1e-5, 0.9, 2, False, quirks))
    xr, wr, br = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
    torch.library.opcheck(ops.power_norm_eval, (xr, wr, br, phi, 1e-5, 2, 1e-5))


def test_op_does_not_modify_inputs_and_returns_new_state():
    x, m, w, b, phi = op_args()
    phi0 = phi.clone()
    y, grs, x2, denom, nphi = ops.power_norm(x, m, w, b, phi, 3, 10, 1e-5, 0.9, 2, 1e-5, False, 0)
    assert torch.equal(phi, phi0)
    assert nphi.shape == phi.shape and nphi.dtype == phi.dtype
    assert grs.shape == (4, 3, 2) and x2.shape == (8,) and denom.shape == (8,)


def test_errors():
    x, m, w, b, phi = op_args()
    nu = torch.zeros(1, 8, 1, 1)

    def run(**kw):
        a = dict(training=True, iteration=1, pad_mask=m)
        a.update(kw)
        return fastnorm.power_norm(a.pop("x", x), a.pop("w", w), a.pop("b", b), a.pop("phi", phi), nu, **a)

    with pytest.raises(ValueError, match=r"fastnorm.nn.PowerNorm: group_num 3 must be >= 1 and divide.* 8"):
        PowerNorm(8, group_num=3)
    with pytest.raises(ValueError, match=r"fastnorm.power_norm: group_num 3 .*divide the channel count 8"):
        run(group_num=3)
    with pytest.raises(RuntimeError, match=r"fastnorm.power_norm: group_num 3 does not divide the channel count 8"):
        ops.power_norm(x, m, w, b, phi, 1, 10, 1e-5, 0.9, 3, 1e-5, False, 0)
    with pytest.raises(ValueError, match=r"fastnorm.power_norm: quirks must be 'official' or 'paper'"):
        run(quirks="nope")
    with pytest.raises(RuntimeError, match=r"fastnorm.power_norm: quirks must be 0 \(official\) or 1 \(paper\), got 2"):
        ops.power_norm(x, m, w, b, phi, 1, 10, 1e-5, 0.9, 1, 1e-5, False, 2)
    with pytest.raises(ValueError, match=r"fastnorm.power_norm: eps must be a finite value > 0"):
        run(eps=0.0)
    with pytest.raises(ValueError, match=r"fastnorm.power_norm: alpha_fwd must be in \[0, 1\]"):
        run(alpha_fwd=1.5)
    with pytest.raises(ValueError, match=r"fastnorm.power_norm: iteration must be >= 1"):
        run(iteration=0)
    with pytest.raises(RuntimeError, match=r"fastnorm.power_norm: pad_mask has shape \[4, 3\] but must be \(B, T\)"):
        run(pad_mask=m.T.contiguous())
    with pytest.raises(RuntimeError, match=r"fastnorm.power_norm: pad_mask must be bool"):
        run(pad_mask=m.float())
    with pytest.raises(ValueError, match=r"fastnorm.power_norm: input must be 2-D .* got shape \[4, 3, 8, 1\]"):
        run(x=x.unsqueeze(-1))
    with pytest.raises(RuntimeError, match=r"fastnorm.power_norm: weight has shape \[7\] .* x has 8 channels"):
        run(w=w[:7])
    with pytest.raises(RuntimeError, match=r"fastnorm.power_norm: running_phi has shape \[1, 9, 1, 1\]"):
        run(phi=torch.ones(1, 9, 1, 1))
    with pytest.raises(TypeError, match=r"fastnorm.power_norm: input must be float32"):
        run(x=x.long())
    with pytest.raises(RuntimeError, match=r"fastnorm.power_norm: weight is float64 but x is not"):
        run(w=w.double())
    with pytest.raises(RuntimeError, match=r"fastnorm.power_norm: the op alone is not differentiable"):
        ops.power_norm(x.requires_grad_(), m, w, b, phi, 1, 10, 1e-5, 0.9, 1, 1e-5, False, 0)[0].sum().backward()


def test_empty_tensors():
    C = 8
    m = PowerNorm(C, warmup_iters=10, group_num=2)
    x = torch.randn(0, 3, C, requires_grad=True)
    y = m(x)
    assert y.shape == (0, 3, C)
    y.sum().backward()
    assert x.grad.shape == (0, 3, C)
    assert torch.equal(m.weight.grad, torch.zeros(C)) and torch.equal(m.bias.grad, torch.zeros(C))
    assert torch.isnan(m.running_phi).all()  # the quadratic mean over no tokens is NaN, as the official code
    e = PowerNorm(0)
    assert e(torch.randn(4, 3, 0)).shape == (4, 3, 0)
    e.eval()
    assert e(torch.randn(4, 3, 0)).shape == (4, 3, 0)


def test_all_pad_gives_nan_and_nan_stays_in_its_channel():
    x, _, w, b, phi = op_args()
    allpad = torch.ones(3, 4, dtype=torch.bool)
    y, _, x2, _, _ = ops.power_norm(x, allpad, w, b, phi, 1, 10, 1e-5, 0.9, 1, 1e-5, False, 0)
    assert torch.isnan(x2).all() and torch.isnan(y).all()
    x = x.clone()
    x[1, 1, 3] = float("nan")
    y, _, x2, _, _ = ops.power_norm(x, None, w, b, phi, 1, 10, 1e-5, 0.9, 4, 1e-5, False, 0)
    # GroupScaling spreads the NaN over its group (channels 2, 3) of that token, q over those channels
    assert torch.isnan(x2).tolist() == [False, False, True, True, False, False, False, False]


def test_saved_for_backward_memory():
    T, B, C, G = 16, 8, 32, 4
    m = PowerNorm(C, warmup_iters=10, group_num=G)
    x = torch.randn(T, B, C, requires_grad=True)
    mask = random_mask(B, T, gen(18))
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x, mask)
    params = {p.untyped_storage().data_ptr() for p in m.parameters()}
    total = sum(t.numel() * t.element_size() for t in saved
                if t is not None and t.untyped_storage().data_ptr() not in params)
    # x + group_rstd (T*B*G fp32) + x2, denom (C fp32 each) + the mask (B*T bools)
    assert total == x.numel() * 4 + T * B * G * 4 + 2 * C * 4 + B * T
    y.sum().backward()


# ---- compile --------------------------------------------------------------------------------------------
def test_compile_eval_fullgraph_and_train_graph_break():
    torch._dynamo.reset()
    C = 16
    m = PowerNorm(C, warmup_iters=2, group_num=4)
    g = gen(19)
    for _ in range(3):
        x, dy = step_inputs((5, 3, C), torch.float32, g)
        one_step(m, x, dy, None)
    m.eval()
    x = torch.randn(5, 3, C, generator=g)
    cm = torch.compile(m, fullgraph=True)
    torch.testing.assert_close(cm(x), m(x), rtol=0, atol=0)
    # training under compile: the step is a graph break, results equal eager
    a, b = PowerNorm(C, warmup_iters=2), PowerNorm(C, warmup_iters=2)
    ca = torch.compile(a)
    for _ in range(3):
        x, dy = step_inputs((5, 3, C), torch.float32, g)
        for got, want in zip(one_step(ca, x, dy, None), one_step(b, x, dy, None)):
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(a.ema_gz, b.ema_gz, rtol=0, atol=0)
    assert a._iters == 3 and a.iters.item() == 3


# ---- CUDA -----------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("quirks", ["official", "paper"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("group_num", [1, 4])  # K = 96 (lanes loop) and 24 (idle lanes)
def test_cuda_matches_cpu(dtype, quirks, layout, group_num):
    T, B, C = 33, 7, 96
    # f64 runs keep f64 state, so one float32 rounding of phi cannot exceed the f64 tolerance
    kw = dict(warmup_iters=3, group_num=group_num, quirks=quirks, batch_first=(layout == "btc"),
              dtype=torch.float64 if dtype == torch.float64 else torch.float32)
    cpu, gpu = PowerNorm(C, **kw), PowerNorm(C, **kw).cuda()
    g = gen(20)
    for step in range(6):
        if layout == "2d":
            shape, mask = (B, C), random_mask(B, 1, g)
        else:
            shape = (B, T, C) if layout == "btc" else (T, B, C)
            mask = random_mask(B, T, g)
        x, dy = step_inputs(shape, dtype, g)
        poison_cuda_allocator()
        got = one_step(gpu, x.cuda(), dy.cuda(), mask.cuda())
        want = one_step(cpu, x, dy, mask)
        t = 1e-2 if dtype == torch.bfloat16 else tol(dtype) * 10
        for a, b in zip(got, want):
            assert rel_err(a.cpu(), b) < t
        assert rel_err(gpu.running_phi.cpu(), cpu.running_phi) < 1e-5
        assert rel_err(gpu.ema_gz.cpu(), cpu.ema_gz) < 1e-4
    gpu.eval()
    cpu.eval()
    x = torch.randn(shape, generator=g).to(dtype)
    assert rel_err(gpu(x.cuda()).cpu(), cpu(x)) < (1e-2 if dtype == torch.bfloat16 else 1e-5)


@pytest.mark.cuda
def test_cuda_opcheck_and_empty():
    x, m, w, b, phi = op_args()
    x, m, w, b, phi = (t.cuda() for t in (x, m, w, b, phi))
    args = (x, m, w, b, phi, 3, 10, 1e-5, 0.9, 2, 1e-5, False, 0)
    torch.library.opcheck(ops.power_norm, args)
    y, grs, x2, denom, _ = ops.power_norm(*args)
    nu = torch.zeros(1, 8, 1, 1, device="cuda")
    torch.library.opcheck(ops.power_norm_backward,
                          (torch.randn_like(y), x, m, grs, x2, denom, w, nu, 1e-5, 0.9, 2, False, 0))
    torch.library.opcheck(ops.power_norm_eval, (x, w, b, phi, 1e-5, 2, 1e-5))
    e = PowerNorm(8).cuda()
    assert e(torch.randn(0, 3, 8, device="cuda")).shape == (0, 3, 8)

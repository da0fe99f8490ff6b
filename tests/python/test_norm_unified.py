"""Tests of Unified Normalization (UN1d) and channel_affine (specs/norm.md §3.7, §6 tests 2, 8, 9, 12, 16)."""
import pytest
import torch

import fastnorm
from fastnorm.reference.norm_unified import UN1d as RefUN1d

from conftest import rel_err

ops = torch.ops.fastnorm


def make(shape, dtype=torch.float64, seed=0, scale=1.0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype).to(device)


def pair(c, dtype, seed=1, **kw):
    """A fastnorm module and the reference replica with the same random affine parameters."""
    fn = fastnorm.nn.UnifiedNorm(c, **kw).to(dtype)
    rk = dict(kw)
    rk.pop("compensation_start", None)
    ref = RefUN1d(c, compensation_start=kw.get("compensation_start", 1000), **rk).to(dtype)
    with torch.no_grad():
        w, b = make((c,), dtype, seed) * 0.3 + 1.0, make((c,), dtype, seed + 1) * 0.2
        for m in (fn, ref):
            m.weight.copy_(w)
            m.bias.copy_(b)
    return fn, ref


BUFFERS = ["running_var", "ema_gz", "buffer_x2", "buffer_gz"]


def step(m, x, dy, mask):
    xi = x.clone().requires_grad_()
    m.weight.grad = m.bias.grad = None
    y = m(xi, mask)
    y.backward(dy)
    return y.detach(), xi.grad, m.weight.grad.clone(), m.bias.grad.clone()


def check_close(a, b, tol, what):
    assert a.shape == b.shape, what
    e = rel_err(a, b)
    assert e < tol, f"{what}: rel err {e}"


def replay(dtype, steps=40, shape=(3, 5, 16), spike_at=(), masks=True, seed=0, **kw):
    c = shape[-1]
    fn, ref = pair(c, dtype, **kw)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    g = torch.Generator().manual_seed(seed)
    skips = []
    for t in range(1, steps + 1):
        x = torch.randn(shape, generator=g, dtype=torch.float64) * (1.0 + 0.3 * torch.rand(c, generator=g,
                                                                                           dtype=torch.float64))
        if t in spike_at:
            x[..., 0] *= 200.0  # a spike in one channel: am - gm far above v * Lf
        x = x.to(dtype)
        dy = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
        mask = None
        if masks and len(shape) == 3:
            mask = torch.rand(shape[:2], generator=g) < 0.3
            mask[:, 0] = False  # at least one valid token per sequence
        elif masks:
            mask = torch.rand(shape[:1], generator=g) < 0.3
            mask[0] = False
        before = fn.skip_counter.item()
        out_f = step(fn, x, dy, mask)
        out_r = step(ref, x, dy, mask)
        skips.append(fn.skip_counter.item() > before)
        for name, a, b in zip(("y", "dx", "dweight", "dbias"), out_f, out_r):
            check_close(a, b, tol, f"step {t} {name}")
        for name in BUFFERS:
            check_close(getattr(fn, name), getattr(ref, name), tol, f"step {t} {name}")
        assert fn.iters.item() == ref.iters.item() == t
        assert fn.skip_counter.item() == ref.skip_counter.item(), f"step {t} skip_counter"
    return fn, ref, skips


# ---- 12. replay against the reference replica --------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("window", [4, (3, 5), 1])
def test_replay(dtype, window):
    replay(dtype, window_size=window, warmup_iters=6, compensation_start=10)


def test_replay_2d_input():
    replay(torch.float64, shape=(7, 12), window_size=(3, 5), warmup_iters=6, compensation_start=10)


def test_replay_outlier_filtration_skip_path():
    fn, ref, skips = replay(torch.float64, spike_at=(15, 27), window_size=4, warmup_iters=6,
                            compensation_start=10, outlier_filtration=True)
    assert skips[14] and skips[26], "the spike batches must take the skip path"
    assert fn.skip_counter.item() >= 2


def test_replay_outlier_filtration_f32():
    replay(torch.float32, spike_at=(15,), window_size=(3, 5), warmup_iters=6, compensation_start=10,
           outlier_filtration=True, masks=False)


def test_skip_path_details():
    """At a skipped step: buffer_x2's slot holds the old running_var, rho = 1, var = q, skip_counter + 1,
    buffer_gz's slot holds the old ema_gz and the backward subtracts mean_gz = gz."""
    c, t, lf, lb = 6, 9, 4, 3
    x = make((2, 5, c), seed=3)
    x[..., 2] *= 300.0
    w, b = make((c,), seed=4) + 1.0, make((c,), seed=5)
    rv = make((c,), seed=6).abs() + 0.5
    bx = make((lf, c), seed=7).abs() + 0.5
    cnt = torch.tensor([5])
    y, var, rho, skip, new_rv, new_bx, new_cnt = ops.unified_norm(x, None, w, b, rv, bx, cnt, t, 6, True, 1e-5,
                                                                  0.9, 2)
    assert skip.item() is True and skip.dtype == torch.bool
    assert new_cnt.item() == 6
    assert torch.equal(new_bx[t % lf], rv)
    mask = torch.arange(lf) != t % lf
    assert torch.equal(new_bx[mask], bx[mask])
    q = (x * x).mean(dim=(0, 1))
    assert rel_err(var, q) < 1e-14
    assert torch.equal(rho, torch.ones(c, dtype=torch.float64))
    assert rel_err(new_rv, 0.9 * rv + 0.1 * q) < 1e-14
    dy = make(x.shape, seed=8)
    ema, bg = make((c,), seed=9), make((lb, c), seed=10)
    dx, dw, db, new_ema, new_bg = ops.unified_norm_backward(dy, x, var, rho, skip, w, ema, bg, t, 6, 1e-5, 0.9)
    z = x / torch.sqrt(var + 1e-5)
    gz = (dy * w * z).mean(dim=(0, 1))
    assert torch.equal(new_bg[t % lb], ema)
    assert rel_err(new_ema, 0.9 * ema + 0.1 * gz) < 1e-13
    assert rel_err(dx, (dy * w - gz * z) / torch.sqrt(var + 1e-5)) < 1e-13
    assert rel_err(dw, (dy * z).sum((0, 1))) < 1e-13
    # The same step without the spike is not skipped and uses the geometric window mean.
    x2 = make((2, 5, c), seed=3)
    _, var2, rho2, skip2, _, nb2, cnt2 = ops.unified_norm(x2, None, w, b, rv, bx, cnt, t, 6, True, 1e-5, 0.9, 2)
    assert skip2.item() is False and cnt2.item() == 5
    assert rel_err(var2, torch.exp(torch.log(nb2).mean(0))) < 1e-14
    r = (torch.sqrt(var2 + 1e-5) / torch.sqrt(rv + 1e-5)).clamp(0.2, 5)
    assert rel_err(rho2, r) < 1e-14


def test_rho_clamp_and_start():
    c = 4
    x = make((2, 3, c), seed=11) * 30.0  # var ~ 900 vs running_var 1: rho clamps at 5
    w, b = torch.ones(c, dtype=torch.float64), torch.zeros(c, dtype=torch.float64)
    rv, cnt = torch.ones(c, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    bx = torch.full((2, c), 1e4, dtype=torch.float64)  # geometric window mean >> running_var
    for t, S, expect in [(10, 10, 1.0), (11, 10, 5.0), (11, 20, 1.0)]:
        _, var, rho, *_ = ops.unified_norm(x, None, w, b, rv, bx, cnt, t, 0, False, 1e-5, 0.9, S)
        assert torch.all(rho == expect), (t, S, rho)
    _, var, rho, *_ = ops.unified_norm(x / 3000, None, w, b, rv, bx * 1e-4, cnt, 11, 0, False, 1e-5, 0.9, 1)
    assert torch.all(rho == 0.2)


# ---- eval, fold_into_linear, state_dict, compile --------------------------------------------------------
def test_eval_and_state_untouched():
    fn, ref = pair(16, torch.float64, window_size=4, warmup_iters=2, compensation_start=3)
    replay_x = make((3, 5, 16), seed=12)
    for _ in range(5):
        fn(replay_x.requires_grad_()).sum().backward()
        ref(replay_x).sum().backward()
    fn.eval(), ref.eval()
    state = {k: v.clone() for k, v in fn.state_dict().items()}
    x = make((2, 7, 16), seed=13)
    check_close(fn(x), ref(x), 1e-10, "eval y")
    for k, v in fn.state_dict().items():
        assert torch.equal(v, state[k]), k
    y32 = fn.float()(x.float())
    check_close(y32, ref(x), 1e-5, "eval f32")


def test_state_dict_keys_and_iters_mirror():
    m = fastnorm.nn.UN1d(8, window_size=(3, 5))
    sd = m.state_dict()
    assert list(sd) == ["weight", "bias", "running_var", "ema_gz", "iters", "buffer_x2", "buffer_gz", "skip_counter"]
    assert sd["buffer_x2"].shape == (3, 8) and sd["buffer_gz"].shape == (5, 8)
    assert sd["iters"].dtype == sd["skip_counter"].dtype == torch.int64 and sd["iters"].shape == (1,)
    assert set(sd) == set(RefUN1d(8, window_size=(3, 5)).state_dict())
    sd["iters"] = torch.tensor([41])
    m2 = fastnorm.nn.UnifiedNorm(8, window_size=(3, 5))
    m2.load_state_dict(sd)
    assert m2._iters == 41
    m2(make((2, 3, 8), torch.float32, seed=14))
    assert m2._iters == 42 and m2.iters.item() == 42


@pytest.mark.parametrize("where", ["after", "before"])
def test_fold_into_linear(where):
    c = 24
    un = fastnorm.nn.UnifiedNorm(c, window_size=2, warmup_iters=1)
    with torch.no_grad():
        un.weight.copy_(make((c,), torch.float32, 15) + 1)
        un.bias.copy_(make((c,), torch.float32, 16))
        un.running_var.copy_(make((c,), torch.float32, 17).abs() + 0.3)
    un.eval()
    lin = torch.nn.Linear(c, 10) if where == "after" else torch.nn.Linear(12, c)
    folded = fastnorm.fold_into_linear(un, lin, where=where)
    assert isinstance(folded, torch.nn.Linear) and folded is not lin
    x = make((4, 6, lin.in_features), torch.float32, 18)
    with torch.no_grad():
        expect = lin(un(x)) if where == "after" else un(lin(x))
        got = folded(x)
    assert rel_err(got, expect) < 1e-6
    un.train()
    with pytest.raises(ValueError, match="fastnorm.fold_into_linear: norm must be in eval mode"):
        fastnorm.fold_into_linear(un, lin, where=where)
    un.eval()
    with pytest.raises(ValueError, match="where must be 'after' or 'before'"):
        fastnorm.fold_into_linear(un, lin, where="middle")
    with pytest.raises(ValueError, match="in_features is 7"):
        fastnorm.fold_into_linear(un, torch.nn.Linear(7, c), where="after")
    with pytest.raises(TypeError, match="norm must be a fastnorm.nn.UnifiedNorm"):
        fastnorm.fold_into_linear(torch.nn.LayerNorm(c), lin)


def test_compile_eval_fullgraph():
    torch._dynamo.reset()
    m = fastnorm.nn.UnifiedNorm(32).eval()
    with torch.no_grad():
        m.running_var.uniform_(0.5, 2.0)
    x = make((2, 5, 32), torch.float32, 19)
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    assert torch.equal(cm(x), m(x))


def test_compile_training_graph_break_equals_eager():
    """Training under torch.compile runs the state-updating Function eagerly (graph break) and matches eager."""
    torch._dynamo.reset()
    a, b = fastnorm.nn.UnifiedNorm(16, window_size=2, warmup_iters=1, compensation_start=2), None
    b = fastnorm.nn.UnifiedNorm(16, window_size=2, warmup_iters=1, compensation_start=2)
    cb = torch.compile(b, backend="eager")
    for i in range(4):
        x = make((2, 5, 16), torch.float32, 40 + i)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        (a(xa) * x).sum().backward()
        (cb(xb) * x).sum().backward()
        assert torch.equal(xa.grad, xb.grad)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_fused_add():
    m = fastnorm.nn.UnifiedNorm(8, window_size=2)
    ref = fastnorm.nn.UnifiedNorm(8, window_size=2)
    x, r = make((2, 3, 8), torch.bfloat16, 41), make((2, 3, 8), torch.float32, 42)
    y, s = m.fused_add(x, r)
    assert s.dtype == torch.float32 and torch.equal(s, x.float() + r)
    assert torch.equal(y, ref(x.float() + r))
    y2, s2 = m.fused_add(x, r.bfloat16())
    assert s2.dtype == torch.bfloat16


# ---- channel_affine ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cd", [1, -1, 0])
def test_channel_affine_gradcheck(cd):
    x = make((3, 4, 5), seed=20).requires_grad_()
    c = x.shape[cd]
    s, h = make((c,), seed=21).requires_grad_(), make((c,), seed=22).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, s, h: fastnorm.channel_affine(x, s, h, cd), (x, s, h))
    shape = [1] * 3
    shape[cd] = c
    assert rel_err(fastnorm.channel_affine(x, s, h, cd), x * s.view(shape) + h.view(shape)) < 1e-15


def test_channel_affine_dtypes_and_layouts():
    x = make((4, 6, 8), torch.bfloat16, 23)
    s, h = make((6,), torch.float32, 24), make((6,), torch.float32, 25)
    y = fastnorm.channel_affine(x, s, h, 1)
    assert y.dtype == torch.bfloat16
    expect = (x.float() * s.view(1, 6, 1) + h.view(1, 6, 1)).bfloat16()
    assert torch.equal(y, expect)
    xt = make((8, 6, 4), torch.float32, 26).transpose(0, 2)  # non-contiguous: one copy
    assert torch.equal(fastnorm.channel_affine(xt, s, h, 1), xt * s.view(1, 6, 1) + h.view(1, 6, 1))


def _opcheck_cases():
    c = 8
    x = make((2, 5, c), torch.float32, 27)
    w, b = make((c,), torch.float32, 28) + 1, make((c,), torch.float32, 29)
    rv, bx, cnt = torch.ones(c), torch.rand(4, c) + 0.5, torch.zeros(1, dtype=torch.long)
    mask = torch.zeros(2, 5, dtype=torch.bool)
    mask[1, 3:] = True
    _, var, rho, skip, *_ = ops.unified_norm(x, mask, w, b, rv, bx, cnt, 7, 3, True, 1e-5, 0.9, 5)
    dy = make(x.shape, torch.float32, 30)
    return [
        (ops.unified_norm.default, (x, mask, w, b, rv, bx, cnt, 7, 3, True, 1e-5, 0.9, 5)),
        (ops.unified_norm.default, (x.double(), None, w.double(), b.double(), rv.double(), bx.double(), cnt, 2, 3,
                                    False, 1e-5, 0.9, 5)),
        (ops.unified_norm_backward.default, (dy, x, var, rho, skip, w, torch.zeros(c), torch.zeros(3, c), 7, 3,
                                             1e-5, 0.9)),
        (ops.channel_affine.default, (x.clone().requires_grad_(), w.clone().requires_grad_(),
                                      b.clone().requires_grad_(), -1)),
        (ops.channel_affine.default, (x.bfloat16().transpose(1, 2), w, b, 1)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


# ---- errors and edge cases (§5) -------------------------------------------------------------------------
def _args(c=8, dtype=torch.float32):
    return dict(x=make((2, 3, c), dtype, 31), w=torch.ones(c, dtype=dtype), b=torch.zeros(c, dtype=dtype),
                rv=torch.ones(c, dtype=dtype), bx=torch.ones(4, c, dtype=dtype), cnt=torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("mutate,match", [
    (lambda a: a.update(x=a["x"].int()), "fastnorm.unified_norm: x must be float32, float16, bfloat16 or float64"),
    (lambda a: a.update(w=torch.ones(7)), r"fastnorm.unified_norm: weight has shape \[7\] but x's last dimension is 8"),
    (lambda a: a.update(rv=torch.ones(9)), r"fastnorm.unified_norm: running_var has shape \[9\]"),
    (lambda a: a.update(bx=torch.ones(4, 3)), r"fastnorm.unified_norm: buffer_x2 has shape \[4, 3\]"),
    (lambda a: a.update(bx=torch.ones(0, 8)), "fastnorm.unified_norm: window sizes must be >= 1"),
    (lambda a: a.update(bx=torch.ones(4, 8, dtype=torch.float64)), "fastnorm.unified_norm: buffer_x2 is float64"),
    (lambda a: a.update(cnt=torch.zeros(1)), "fastnorm.unified_norm: skip_counter must be an int64"),
    (lambda a: a.update(x=make((2, 3, 4, 8), torch.float32)), r"fastnorm.unified_norm: x must be \(B, N, C\)"),
])
def test_op_errors(mutate, match):
    a = _args()
    mutate(a)
    with pytest.raises(RuntimeError, match=match):
        ops.unified_norm(a["x"], None, a["w"], a["b"], a["rv"], a["bx"], a["cnt"], 1, 0, False, 1e-5, 0.9, 0)


def test_op_scalar_errors():
    a = _args()
    call = lambda **k: ops.unified_norm(a["x"], k.get("mask"), a["w"], a["b"], a["rv"], a["bx"], a["cnt"],  # noqa
                                        k.get("t", 1), 0, False, k.get("eps", 1e-5), k.get("m", 0.9), 0)
    with pytest.raises(RuntimeError, match="fastnorm.unified_norm: iteration must be >= 1, got 0"):
        call(t=0)
    with pytest.raises(RuntimeError, match="fastnorm.unified_norm: eps must be a finite value > 0"):
        call(eps=0.0)
    with pytest.raises(RuntimeError, match="fastnorm.unified_norm: momentum must be in"):
        call(m=1.5)
    with pytest.raises(RuntimeError, match="fastnorm.unified_norm: pad_mask must be bool"):
        call(mask=torch.zeros(2, 3))
    with pytest.raises(RuntimeError, match=r"fastnorm.unified_norm: pad_mask has shape \[3, 2\]"):
        call(mask=torch.zeros(3, 2, dtype=torch.bool))
    with pytest.raises(RuntimeError, match="fastnorm.channel_affine: channel_dim 3 is out of range"):
        ops.channel_affine(a["x"], a["w"], a["b"], 3)
    with pytest.raises(RuntimeError, match=r"fastnorm.channel_affine: scale has shape \[8\] but x has 3 channels"):
        ops.channel_affine(a["x"], a["w"], a["b"], 1)
    with pytest.raises(RuntimeError, match="fastnorm.unified_norm_backward: dy has shape"):
        ops.unified_norm_backward(a["x"][:1], a["x"], a["rv"], a["rv"], torch.tensor(False), a["w"], a["rv"],
                                  a["bx"], 1, 0, 1e-5, 0.9)


def test_python_errors():
    with pytest.raises(ValueError, match="fastnorm.UnifiedNorm: window sizes must be >= 1"):
        fastnorm.nn.UnifiedNorm(8, window_size=(0, 3))
    with pytest.raises(ValueError, match="fastnorm.UnifiedNorm: momentum must be in"):
        fastnorm.nn.UnifiedNorm(8, momentum=2.0)
    m = fastnorm.nn.UnifiedNorm(8)
    with pytest.raises(ValueError, match="fastnorm.unified_norm: pad_mask has shape"):
        m(make((2, 3, 8), torch.float32), torch.zeros(3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="fastnorm.unified_norm: input must be float32"):
        m(torch.ones(2, 3, 8, dtype=torch.int32))


@pytest.mark.parametrize("shape", [(0, 5, 8), (2, 0, 8), (2, 3, 0)])
def test_empty(shape):
    m = fastnorm.nn.UnifiedNorm(shape[-1], window_size=2, warmup_iters=0)
    x = torch.zeros(shape, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    assert torch.all(m.weight.grad == 0) and torch.all(m.bias.grad == 0)
    m.eval()
    assert m(x).shape == x.shape


def test_nan_stays_in_its_channel():
    m = fastnorm.nn.UnifiedNorm(4, window_size=2)
    x = make((2, 3, 4), torch.float32, 32)
    x[0, 1, 2] = float("nan")
    y = m(x)
    assert torch.isnan(y[..., 2]).all() and not torch.isnan(y[..., [0, 1, 3]]).any()


# ---- 16. memory saved for backward ----------------------------------------------------------------------
def test_saved_bytes():
    c = 64
    m = fastnorm.nn.UnifiedNorm(c)
    x = make((4, 32, c), torch.float32, 33).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    assert sum(saved) <= x.numel() * 4 + 4 * c * 8 + 8
    y.sum().backward()


def test_no_state_change_without_training_call():
    m = fastnorm.nn.UnifiedNorm(8, window_size=3)
    x = make((2, 3, 8), torch.float32, 34, scale=2.0)
    with torch.no_grad():
        m(x)
    assert m.iters.item() == 1 and m.ema_gz.abs().sum() == 0  # forward state moved, backward state did not
    assert not torch.equal(m.running_var, torch.ones(8))


# ---- CUDA vs CPU ----------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    from conftest import poison_cuda_allocator
    c = 96
    cpu = fastnorm.nn.UnifiedNorm(c, window_size=(3, 4), warmup_iters=4, outlier_filtration=True,
                                  compensation_start=6)
    gpu = fastnorm.nn.UnifiedNorm(c, window_size=(3, 4), warmup_iters=4, outlier_filtration=True,
                                  compensation_start=6).cuda()
    if dtype == torch.float64:
        cpu, gpu = cpu.double(), gpu.double()
    tol = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    g = torch.Generator().manual_seed(35)
    for t in range(1, 16):
        x = torch.randn(4, 33, c, generator=g)
        if t == 9:
            x[..., 5] *= 300
        x = x.to(dtype)
        dy = torch.randn(x.shape, generator=g).to(dtype)
        mask = torch.rand(4, 33, generator=g) < 0.2
        poison_cuda_allocator()
        xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
        torch.cuda.set_sync_debug_mode("error")  # the training step must not synchronise
        try:
            yg = gpu(xg, mask.cuda())
            yg.backward(dy.cuda())
        finally:
            torch.cuda.set_sync_debug_mode("default")
        yc = cpu(xc, mask)
        yc.backward(dy)
        assert rel_err(yg.cpu(), yc) < tol and rel_err(xg.grad.cpu(), xc.grad) < tol
        for name in BUFFERS + ["skip_counter"]:
            assert rel_err(getattr(gpu, name).cpu().double(), getattr(cpu, name).double()) < tol, name
        for p in ("weight", "bias"):
            assert rel_err(getattr(gpu, p).grad.cpu(), getattr(cpu, p).grad) < tol
            getattr(gpu, p).grad = getattr(cpu, p).grad = None
    assert cpu.skip_counter.item() >= 1
    gpu.eval(), cpu.eval()
    x = torch.randn(3, 7, c).to(dtype)
    assert rel_err(gpu(x.cuda()).cpu(), cpu(x)) < tol
    s, h = torch.randn(7), torch.randn(7)
    assert rel_err(fastnorm.channel_affine(x.cuda(), s.cuda(), h.cuda(), 1).cpu(),
                   fastnorm.channel_affine(x, s, h, 1)) < tol

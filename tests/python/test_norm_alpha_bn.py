"""Tests of test-time alpha-BN (specs/norm.md §3.8, §6 items 2, 8, 9, 13)."""
import pytest
import torch
import torch.nn.functional as F

import fastnorm
from fastnorm.reference import norm_alpha_bn as ref

from conftest import poison_cuda_allocator, rel_err, tol

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
CL = torch.channels_last


def make(shape, dtype, seed=0, device="cpu", scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).to(device)


def stats(c, dtype=torch.float32, seed=100):
    rm = make((c,), dtype, seed, shift=0.5)
    rv = make((c,), torch.float64, seed + 1).abs().to(dtype) + 0.5
    return rm, rv


def fmt(x, layout):
    return x.contiguous(memory_format=CL) if layout == "cl" else x


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("unbiased", [False, True])
def test_forward(dtype, alpha, layout, unbiased):
    c = 12
    x = fmt(make((4, c, 7, 5), dtype, 1, scale=2.0, shift=1.0), layout)
    w, b = make((c,), dtype, 2), make((c,), dtype, 3)
    rm, rv = stats(c)
    y = fastnorm.alpha_batch_norm(x, rm, rv, w, b, alpha_source=alpha, unbiased_batch_var=unbiased)
    assert y.dtype == dtype and y.shape == x.shape
    assert y.is_contiguous(memory_format=CL if layout == "cl" else torch.contiguous_format)
    expect = ref.alpha_batch_norm(x.double(), rm, rv, w.double(), b.double(), alpha, 1e-5, unbiased)
    assert rel_err(y, expect) < tol(dtype)


@pytest.mark.parametrize("shape", [(3, 5), (3, 5, 11), (2, 4, 3, 3, 2), (16, 64, 56, 56)])
def test_other_ranks_and_large_planes(shape):
    x = make(shape, torch.float32, 4, shift=3.0)
    rm, rv = stats(shape[1])
    for a in (0.0, 0.6):
        y = fastnorm.alpha_batch_norm(x, rm, rv, alpha_source=a)
        assert rel_err(y, ref.alpha_batch_norm(x.double(), rm, rv, alpha_source=a)) < 1e-5


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_endpoints_equal_batch_norm(layout):
    c = 16
    x = fmt(make((6, c, 9, 9), torch.float32, 5, shift=0.7), layout)
    w, b = make((c,), torch.float32, 6), make((c,), torch.float32, 7)
    rm, rv = stats(c)
    y1 = fastnorm.alpha_batch_norm(x, rm, rv, w, b, alpha_source=1.0)
    e1 = F.batch_norm(x, rm, rv, w, b, training=False)
    assert (y1 - e1).abs().max().item() < 2e-6
    y0 = fastnorm.alpha_batch_norm(x, rm, rv, w, b, alpha_source=0.0)
    rm2, rv2 = rm.clone(), rv.clone()  # F.batch_norm(training=True) would update them
    e0 = F.batch_norm(x, rm2, rv2, w, b, training=True)
    assert (y0 - e0).abs().max().item() < 1e-5
    # the buffers passed in are never written
    assert torch.equal(rm, stats(c)[0]) and torch.equal(rv, stats(c)[1])


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("unbiased", [False, True])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_gradcheck(alpha, unbiased, layout):
    c = 3
    x = fmt(make((3, c, 2, 3), torch.float64, 8, shift=0.4), layout).requires_grad_()
    w = make((c,), torch.float64, 9).requires_grad_()
    b = make((c,), torch.float64, 10).requires_grad_()
    rm, rv = stats(c, torch.float64)
    fn = lambda x, w, b: fastnorm.alpha_batch_norm(x, rm, rv, w, b, alpha_source=alpha, eps=1e-3,  # noqa: E731
                                                    unbiased_batch_var=unbiased)
    assert torch.autograd.gradcheck(fn, (x, w, b))


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_backward_against_reference(dtype, layout, alpha):
    c = 10
    x = fmt(make((5, c, 6, 7), dtype, 11, shift=0.5), layout)
    dy = fmt(make((5, c, 6, 7), dtype, 12), layout)
    w, b = make((c,), dtype, 13), make((c,), dtype, 14)
    rm, rv = stats(c)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    y = fastnorm.alpha_batch_norm(xs, rm, rv, ws, bs, alpha_source=alpha, unbiased_batch_var=True)
    y.backward(dy)
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    ref.alpha_batch_norm(xr, rm, rv, wr, br, alpha, 1e-5, True).backward(dy.double())
    t = tol(dtype) if dtype != torch.float32 else 2e-5
    for got, want in ((xs.grad, xr.grad), (ws.grad, wr.grad), (bs.grad, br.grad)):
        assert got.dtype == dtype
        assert rel_err(got, want) < t
    assert xs.grad.is_contiguous(memory_format=CL if layout == "cl" else torch.contiguous_format)


def test_mixed_layouts_and_strided_input():
    c = 6
    x = make((3, c, 5, 4), torch.float32, 15)
    rm, rv = stats(c)
    base = fastnorm.alpha_batch_norm(x, rm, rv, alpha_source=0.5)
    t = x.transpose(2, 3).contiguous().transpose(2, 3)  # neither NCHW- nor NHWC-contiguous: one copy
    assert torch.equal(fastnorm.alpha_batch_norm(t, rm, rv, alpha_source=0.5), base)
    xs = x.contiguous(memory_format=CL).requires_grad_()
    y = fastnorm.alpha_batch_norm(xs, rm, rv, alpha_source=0.5)
    y.backward(torch.ones_like(x))  # a contiguous dy for a channels_last x
    xr = x.clone().requires_grad_()
    fastnorm.alpha_batch_norm(xr, rm, rv, alpha_source=0.5).backward(torch.ones_like(x))
    assert torch.allclose(xs.grad, xr.grad, atol=1e-6)


def test_deterministic_and_thread_independent():
    c = 32
    x, dy = make((8, c, 20, 20), torch.float32, 16), make((8, c, 20, 20), torch.float32, 17)
    w, b = make((c,), torch.float32, 18), make((c,), torch.float32, 19)
    rm, rv = stats(c)

    def run(layout):
        xs, ws, bs = fmt(x, layout).clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()
        y = fastnorm.alpha_batch_norm(xs, rm, rv, ws, bs, alpha_source=0.3)
        y.backward(fmt(dy, layout))
        return y.detach(), xs.grad, ws.grad, bs.grad

    for layout in ("nchw", "cl"):
        first, second = run(layout), run(layout)
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            single = run(layout)
        finally:
            torch.set_num_threads(threads)
        for a, b_, c_ in zip(first, second, single):
            assert torch.equal(a, b_) and torch.equal(a, c_)


# ---- errors and edge cases ------------------------------------------------------------------------------
def test_bad_inputs():
    c = 4
    x = make((2, c, 3, 3), torch.float32, 20)
    rm, rv = stats(c)
    f = fastnorm.alpha_batch_norm
    with pytest.raises(ValueError, match=r"fastnorm.alpha_batch_norm: alpha_source must be in \[0, 1\], got 1.5"):
        f(x, rm, rv, alpha_source=1.5)
    with pytest.raises(ValueError, match=r"alpha_source must be in \[0, 1\], got nan"):
        f(x, rm, rv, alpha_source=float("nan"))
    with pytest.raises(ValueError, match=r"fastnorm.alpha_batch_norm: running_var has shape \[5\] but input has 4"):
        f(x, rm, torch.ones(5), alpha_source=0.5)
    with pytest.raises(ValueError, match=r"fastnorm.alpha_batch_norm: weight has shape \[2\]"):
        f(x, rm, rv, torch.ones(2), alpha_source=0.5)
    with pytest.raises(ValueError, match="fastnorm.alpha_batch_norm: running_mean is required"):
        f(x, None, rv, alpha_source=0.5)
    with pytest.raises(ValueError, match=r"fastnorm.alpha_batch_norm: input must have shape \(N, C, \*\)"):
        f(torch.ones(4), rm, rv, alpha_source=0.5)
    with pytest.raises(ValueError, match="fastnorm.alpha_batch_norm: eps must be a finite value > 0, got -1.0"):
        f(x, rm, rv, alpha_source=0.5, eps=-1.0)
    with pytest.raises(TypeError, match="fastnorm.alpha_batch_norm: input must be float32"):
        f(x.to(torch.int32), rm, rv, alpha_source=0.5)
    with pytest.raises(TypeError, match="fastnorm.alpha_batch_norm: running_mean must be float32"):
        f(x, rm.to(torch.int64), rv, alpha_source=0.5)


def test_bad_inputs_at_the_op_level():
    c = 4
    x = make((2, c, 3), torch.float32, 21)
    rm, rv = stats(c)
    op = torch.ops.fastnorm.alpha_batch_norm
    with pytest.raises(RuntimeError, match=r"fastnorm.alpha_batch_norm: alpha_source must be in \[0, 1\], got -0.1"):
        op(x, rm, rv, None, None, -0.1, 1e-5)
    with pytest.raises(RuntimeError, match=r"fastnorm.alpha_batch_norm: running_mean has shape \[3\] but x has 4"):
        op(x, rm[:3], rv, None, None, 0.5, 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.alpha_batch_norm: running_var dtype float64 differs"):
        op(x, rm, rv.double(), None, None, 0.5, 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.alpha_batch_norm: weight is float64 but x is float32"):
        op(x, rm, rv, torch.ones(c, dtype=torch.float64), None, 0.5, 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.alpha_batch_norm: eps must be a finite value > 0"):
        op(x, rm, rv, None, None, 0.5, float("nan"))
    with pytest.raises(RuntimeError, match=r"fastnorm.alpha_batch_norm: x must have shape \(N, C, \*\)"):
        op(torch.ones(3), torch.ones(3), torch.ones(3), None, None, 0.5, 1e-5)
    y, mean, rstd = op(x, rm, rv, None, None, 0.5, 1e-5)
    bop = torch.ops.fastnorm.alpha_batch_norm_backward
    with pytest.raises(RuntimeError, match=r"fastnorm.alpha_batch_norm_backward: dy has shape \[2, 4\]"):
        bop(torch.ones(2, 4), x, mean, rstd, None, 0.5, False)
    with pytest.raises(RuntimeError, match="fastnorm.alpha_batch_norm_backward: mean has 3 elements"):
        bop(y, x, mean[:3], rstd, None, 0.5, False)


@pytest.mark.cuda
def test_mixed_devices_rejected():
    x = torch.randn(2, 4, 3, device="cuda")
    with pytest.raises(RuntimeError, match="fastnorm.alpha_batch_norm: running_mean is on cpu"):
        fastnorm.alpha_batch_norm(x, torch.zeros(4), torch.ones(4), alpha_source=0.5)


def test_empty_tensors():
    rm, rv = stats(3)
    w, b = torch.ones(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    for shape in [(0, 3, 4, 4), (2, 3, 0, 4)]:
        x = torch.empty(shape, requires_grad=True)
        for a in (0.0, 0.5, 1.0):
            y = fastnorm.alpha_batch_norm(x, rm, rv, w, b, alpha_source=a)
            assert y.shape == shape
            y.sum().backward()
            assert x.grad.shape == shape and torch.equal(w.grad, torch.zeros(3)) and torch.equal(b.grad, torch.zeros(3))
            w.grad = b.grad = x.grad = None
    _, mean, rstd = torch.ops.fastnorm.alpha_batch_norm(torch.empty(0, 3, 2), rm, rv, None, None, 0.5, 1e-5)
    assert torch.isnan(mean).all() and torch.isnan(rstd).all()  # no batch: NaN batch statistics
    _, mean, rstd = torch.ops.fastnorm.alpha_batch_norm(torch.empty(0, 3, 2), rm, rv, None, None, 1.0, 1e-5)
    assert torch.equal(mean, rm)  # a = 1 never looks at the batch
    y = fastnorm.alpha_batch_norm(torch.empty(2, 0, 3), torch.empty(0), torch.empty(0), alpha_source=0.5)
    assert y.shape == (2, 0, 3)


def test_nan_stays_in_its_channel():
    x = make((3, 5, 4, 4), torch.float32, 22)
    x[1, 2, 0, 3] = float("nan")
    rm, rv = stats(5)
    for layout in ("nchw", "cl"):
        xs = fmt(x, layout).clone().requires_grad_()
        y = fastnorm.alpha_batch_norm(xs, rm, rv, alpha_source=0.5)
        others = [0, 1, 3, 4]
        assert torch.isnan(y[:, 2]).all() and not torch.isnan(y[:, others]).any()
        y.sum().backward()
        assert torch.isnan(xs.grad[:, 2]).all() and not torch.isnan(xs.grad[:, others]).any()


# ---- opcheck, compile ----------------------------------------------------------------------------------
def _opcheck_cases():
    c = 5
    x = make((3, c, 4, 2), torch.float32, 23).requires_grad_()
    xcl = make((3, c, 4, 2), torch.bfloat16, 24).contiguous(memory_format=CL).requires_grad_()
    w, b = make((c,), torch.float32, 25).requires_grad_(), make((c,), torch.float32, 26).requires_grad_()
    rm, rv = stats(c)
    y, mean, rstd = torch.ops.fastnorm.alpha_batch_norm(x.detach(), rm, rv, w.detach(), b.detach(), 0.3, 1e-5)
    return [
        (torch.ops.fastnorm.alpha_batch_norm.default, (x, rm, rv, w, b, 0.3, 1e-5, True)),
        (torch.ops.fastnorm.alpha_batch_norm.default, (xcl, rm, rv, w, None, 0.0, 1e-5)),
        (torch.ops.fastnorm.alpha_batch_norm.default, (x, rm, rv, None, None, 1.0, 1e-3)),
        (torch.ops.fastnorm.alpha_batch_norm_backward.default,
         (torch.ones_like(y), x.detach(), mean, rstd, w.detach(), 0.3, False, True, True, False)),
    ]


@pytest.mark.parametrize("case", range(4))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_compile_fullgraph(layout):
    torch._dynamo.reset()
    c = 8
    bn = torch.nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.running_mean.copy_(stats(c)[0])
        bn.running_var.copy_(stats(c)[1])
    m = torch.nn.Sequential(torch.nn.Conv2d(3, c, 3), fastnorm.nn.AlphaBatchNorm2d.from_bn(bn, 0.4), torch.nn.ReLU())
    x = fmt(make((2, 3, 9, 9), torch.float32, 27), layout).requires_grad_()
    cm = torch.compile(m, fullgraph=True, backend="aot_eager")
    y1, y2 = m(x), cm(x)
    assert torch.equal(y1, y2)
    g1 = torch.autograd.grad(y1.sum(), [x] + list(m.parameters()))
    g2 = torch.autograd.grad(y2.sum(), [x] + list(m.parameters()))
    for a, b in zip(g1, g2):
        assert torch.equal(a, b)


# ---- modules and conversion (spec §6 item 13) -------------------------------------------------------------
def small_cnn():
    torch.manual_seed(3)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                            torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3), torch.nn.BatchNorm2d(16, eps=1e-3)),
                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 4))
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.copy_(torch.randn(mod.num_features))
                mod.running_var.copy_(torch.rand(mod.num_features) + 0.5)
                mod.weight.copy_(torch.randn(mod.num_features))
                mod.bias.copy_(torch.randn(mod.num_features))
    return m


def test_from_bn_shares_tensors():
    bn = small_cnn()[1]
    a = fastnorm.nn.AlphaBatchNorm2d.from_bn(bn, 0.25)
    for name in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"):
        assert getattr(a, name) is getattr(bn, name)
    assert list(a.state_dict()) == list(bn.state_dict()) and a.eps == bn.eps and a.alpha == 0.25
    x = make((4, 8, 5, 5), torch.float32, 28)
    expect = ref.alpha_batch_norm(x.double(), bn.running_mean, bn.running_var, bn.weight.detach().double(),
                                  bn.bias.detach().double(), 0.25, bn.eps)
    assert rel_err(a(x), expect) < 1e-5
    with pytest.raises(ValueError, match="from_bn: the BatchNorm has no running statistics"):
        fastnorm.nn.AlphaBatchNorm2d.from_bn(torch.nn.BatchNorm2d(3, track_running_stats=False), 0.5)
    with pytest.raises(ValueError, match=r"alpha_source must be in \[0, 1\]"):
        fastnorm.nn.AlphaBatchNorm2d.from_bn(bn, 2.0)


@pytest.mark.parametrize("layout", ["nchw", "cl"])
def test_convert_alpha_bn(layout):
    model = small_cnn()
    keys = list(model.state_dict())
    ptrs = {k: v.data_ptr() for k, v in model.state_dict().items()}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = fmt(make((6, 3, 8, 8), torch.float32, 29), layout)
    reference = small_cnn()  # the same weights: the expected output with reference alpha-BN layers
    reference[1] = ref.AlphaBatchNorm2d(8, 0.3)
    reference[3][1] = ref.AlphaBatchNorm2d(16, 0.3, eps=1e-3)
    reference.load_state_dict({k: v for k, v in before.items() if "num_batches" not in k}, strict=False)
    out = fastnorm.convert_alpha_bn(model, 0.3)
    assert out is model
    assert isinstance(model[1], fastnorm.nn.AlphaBatchNorm2d) and isinstance(model[3][1], fastnorm.nn.AlphaBatchNorm2d)
    assert model[3][1].eps == 1e-3
    assert list(model.state_dict()) == keys
    assert {k: v.data_ptr() for k, v in model.state_dict().items()} == ptrs
    for mode in ("train", "eval"):
        getattr(model, mode)()
        y = model(x)
        assert rel_err(y, reference(x)) < 1e-5
        y.sum().backward()
    for k, v in model.state_dict().items():  # running statistics (and counters) unchanged
        assert torch.equal(v, before[k])
    with pytest.raises(ValueError, match="fastnorm.convert_alpha_bn: BatchNorm2d has no running statistics"):
        fastnorm.convert_alpha_bn(torch.nn.Sequential(torch.nn.BatchNorm2d(3, track_running_stats=False)), 0.5)
    bn1d = torch.nn.Sequential(torch.nn.BatchNorm1d(4))
    assert isinstance(fastnorm.convert_alpha_bn(bn1d, 0.5)[0], torch.nn.BatchNorm1d)  # not in types: untouched
    conv1d = fastnorm.convert_alpha_bn(bn1d, 0.5, types=(torch.nn.BatchNorm1d,))
    assert isinstance(conv1d[0], fastnorm.nn.AlphaBatchNorm2d)
    xb = make((5, 4, 3), torch.float32, 30)
    assert rel_err(conv1d(xb), ref.alpha_batch_norm(xb.double(), torch.zeros(4), torch.ones(4),
                                                   torch.ones(4), torch.zeros(4), 0.5)) < 1e-5


# ---- CUDA: the GPU kernels against the CPU kernels ------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("layout", ["nchw", "cl"])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("shape", [(4, 24, 9, 7), (3, 1030, 2, 2), (64, 3, 1, 1)])
def test_cuda_matches_cpu(dtype, layout, alpha, shape):
    c = shape[1]
    x, dy = fmt(make(shape, dtype, 31, shift=0.5), layout), fmt(make(shape, dtype, 32), layout)
    w, b = make((c,), dtype, 33), make((c,), dtype, 34)
    rm, rv = stats(c)

    def run(device):
        xs, ws, bs = (t.to(device).requires_grad_() for t in (x, w, b))
        poison_cuda_allocator()
        y = fastnorm.alpha_batch_norm(xs, rm.to(device), rv.to(device), ws, bs, alpha_source=alpha,
                                      unbiased_batch_var=True)
        y.backward(dy.to(device))
        return [y.detach().cpu(), xs.grad.cpu(), ws.grad.cpu(), bs.grad.cpu()]

    cpu, gpu = run("cpu"), run("cuda")
    for cc, g in zip(cpu, gpu):
        assert not torch.isnan(g).any()
        assert rel_err(g, cc) < (1e-5 if dtype in (torch.float32, torch.float64) else 1e-2)
    for a, b_ in zip(run("cuda"), gpu):
        assert torch.equal(a, b_)  # reproducible


@pytest.mark.cuda
def test_cuda_opcheck_and_empty():
    for op, args in _opcheck_cases():
        moved = tuple(a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                      for a in args)
        torch.library.opcheck(op, moved)
    x = torch.empty(0, 3, 4, 4, device="cuda", requires_grad=True)
    w = torch.ones(3, device="cuda", requires_grad=True)
    fastnorm.alpha_batch_norm(x, torch.zeros(3, device="cuda"), torch.ones(3, device="cuda"), w,
                              alpha_source=0.5).sum().backward()
    assert torch.equal(w.grad.cpu(), torch.zeros(3))

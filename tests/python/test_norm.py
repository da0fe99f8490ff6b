"""Tests of the norm family (specs/norm.md §6): LayerNorm, RMSNorm, add & norm."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import fastnorm
from fastnorm.reference import norm as ref

from conftest import poison_cuda_allocator, rel_err, tol, ulp_distance

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
NS = [1, 7, 127, 768, 4095, 8192, 65536]


def rows_for(n):
    return max(2, min(64, 200_000 // n))


def make(shape, dtype, seed=0, device="cpu", scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).to(device)


# ---- 1. forward against the float64 reference -------------------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", NS)
def test_layer_norm_forward(dtype, n):
    m = rows_for(n)
    x = make((m, n), dtype, 1, shift=3.0)  # a mean far from 0 exercises the two-pass variance
    w, b = make((n,), dtype, 2), make((n,), dtype, 3)
    y = fastnorm.layer_norm(x, (n,), w, b)
    expect = ref.layer_norm(x.double(), w.double(), b.double())
    assert y.dtype == dtype and y.shape == x.shape
    if n == 1:
        assert torch.equal(y, b.expand_as(y).to(dtype))  # (x - mean) = 0: y = beta exactly
    else:
        assert rel_err(y, expect) < tol(dtype)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", NS)
def test_rms_norm_forward(dtype, n):
    m = rows_for(n)
    x = make((m, n), dtype, 4)
    w = make((n,), dtype, 5)
    y = fastnorm.rms_norm(x, (n,), w, 1e-6)
    expect = ref.rms_norm(x.double(), w.double(), 1e-6)
    assert y.dtype == dtype
    assert rel_err(y, expect) < tol(dtype)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3, 5)])
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_leading_dims_and_affine(lead, affine):
    n = 96
    x = make(lead + (n,), torch.float32, 6)
    w = make((n,), torch.float32, 7) if affine != "none" else None
    b = make((n,), torch.float32, 8) if affine == "both" else None
    y = fastnorm.layer_norm(x, (n,), w, b)
    assert y.shape == x.shape
    assert rel_err(y, ref.layer_norm(x.double(), None if w is None else w.double(),
                                     None if b is None else b.double())) < 1e-5
    y = fastnorm.rms_norm(x, (n,), w, 1e-5, bias=b)
    assert rel_err(y, ref.rms_norm(x.double(), None if w is None else w.double(), 1e-5,
                                   None if b is None else b.double())) < 1e-5


def test_multi_dim_normalized_shape():
    x = make((4, 6, 8, 5), torch.float32, 9)
    w, b = make((8, 5), torch.float32, 10), make((8, 5), torch.float32, 11)
    y = fastnorm.layer_norm(x, (8, 5), w, b)
    assert rel_err(y, F.layer_norm(x.double(), (8, 5), w.double(), b.double())) < 1e-5


@pytest.mark.parametrize("xdt", [torch.bfloat16, torch.float16])
def test_low_precision_input_with_float32_weight(xdt):
    n = 1000
    x, w, b = make((33, n), xdt, 12), make((n,), torch.float32, 13), make((n,), torch.float32, 14)
    y = fastnorm.layer_norm(x, (n,), w, b)
    assert y.dtype == xdt
    assert rel_err(y, ref.layer_norm(x.double(), w.double(), b.double())) < 1e-2
    y = fastnorm.rms_norm(x, (n,), w)
    assert y.dtype == xdt
    assert rel_err(y, ref.rms_norm(x.double(), w.double())) < 1e-2
    # llama promotes with the weight's dtype, as HF does
    assert fastnorm.rms_norm(x, (n,), w, casting="llama").dtype == torch.float32


@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_out_dtype(out_dtype):
    x, w = make((17, 300), torch.bfloat16, 15), make((300,), torch.float32, 16)
    y = fastnorm.layer_norm(x, (300,), w, out_dtype=out_dtype)
    assert y.dtype == out_dtype
    expect = ref.layer_norm(x.double(), w.double())
    assert rel_err(y, expect) < (1e-5 if out_dtype == torch.float32 else 1e-2)
    y = fastnorm.rms_norm(x, (300,), w, out_dtype=out_dtype)
    assert y.dtype == out_dtype


def test_forward_within_one_ulp_of_correctly_rounded():
    # 16-bit outputs: LN and gemma RMS compute in fp32 and round once, so y is within 1 ulp of the float64
    # result rounded to the dtype.
    for dtype in (torch.bfloat16, torch.float16):
        x, w, b = make((64, 1024), dtype, 17), make((1024,), dtype, 18), make((1024,), dtype, 19)
        # (no bias here: gamma*xhat + beta can cancel to a value whose 16-bit ulp is below fp32's error)
        y = fastnorm.layer_norm(x, (1024,), w)
        assert ulp_distance(y, ref.layer_norm(x.double(), w.double()).to(dtype)).max() <= 1
        y = fastnorm.rms_norm(x, (1024,), w)
        assert ulp_distance(y, ref.rms_norm(x.double(), w.double()).to(dtype)).max() <= 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shift", [0.0, 2.0, 100.0])
def test_error_never_worse_than_torch(dtype, shift):
    # ||ours - ref|| <= 1.1 ||torch - ref|| + 1 ulp * ||ref||, normwise as every gate of DESIGN.md §4.
    # (Per element the two differ by a few ulps either way: different but equally valid rounding orders.)
    x, w, b = make((128, 1000), dtype, 17, shift=shift), make((1000,), dtype, 18), make((1000,), dtype, 19)
    cases = [(fastnorm.layer_norm(x, (1000,), w, b), F.layer_norm(x, (1000,), w, b),
              ref.layer_norm(x.double(), w.double(), b.double())),
             (fastnorm.rms_norm(x, (1000,), w, 1e-6), F.rms_norm(x, (1000,), w, 1e-6),
              ref.rms_norm(x.double(), w.double(), 1e-6))]
    for ours, theirs, exact in cases:
        assert rel_err(ours, exact) <= 1.1 * rel_err(theirs, exact) + torch.finfo(dtype).eps


# ---- 2. gradients --------------------------------------------------------------------------------
def _leaf(t):
    return t.detach().double().requires_grad_()


def test_layer_norm_gradcheck():
    x, w, b = _leaf(make((2, 3, 11), torch.float64, 20)), _leaf(make((11,), torch.float64, 21)), \
        _leaf(make((11,), torch.float64, 22))
    assert torch.autograd.gradcheck(lambda x, w, b: fastnorm.layer_norm(x, (11,), w, b), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: fastnorm.layer_norm(x, (11,)), (x,))


@pytest.mark.parametrize("casting", ["gemma", "llama", "none"])
@pytest.mark.parametrize("offset", [0.0, 1.0])
def test_rms_norm_gradcheck(casting, offset):
    x, w, b = _leaf(make((4, 19), torch.float64, 23)), _leaf(make((19,), torch.float64, 24)), \
        _leaf(make((19,), torch.float64, 25))
    f = lambda x, w, b: fastnorm.rms_norm(x, (19,), w, 1e-5, bias=b, offset=offset, casting=casting)  # noqa: E731
    assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize("op", ["layer", "rms"])
def test_add_norm_gradcheck(op):
    x, r = _leaf(make((4, 13), torch.float64, 26)), _leaf(make((4, 13), torch.float64, 27))
    w, b = _leaf(make((13,), torch.float64, 28)), _leaf(make((13,), torch.float64, 29))
    if op == "layer":
        f = lambda x, r, w, b: fastnorm.add_layer_norm(x, r, (13,), w, b)  # noqa: E731
    else:
        f = lambda x, r, w, b: fastnorm.add_rms_norm(x, r, (13,), w, bias=b, offset=0.5)  # noqa: E731
    # both outputs (y and residual_out) enter the loss
    assert torch.autograd.gradcheck(f, (x, r, w, b))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("op", ["layer", "rms"])
def test_backward_against_reference(dtype, op):
    n = 777
    x, w, b = make((70, n), dtype, 30), make((n,), dtype, 31), make((n,), dtype, 32)
    dy = make((70, n), dtype, 33)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    xr, wr, br = (_leaf(t) for t in (x, w, b))
    if op == "layer":
        fastnorm.layer_norm(xs, (n,), ws, bs).backward(dy)
        ref.layer_norm(xr, wr, br).backward(dy.double())
    else:
        fastnorm.rms_norm(xs, (n,), ws, bias=bs).backward(dy)
        ref.rms_norm(xr, wr, 1e-6, br).backward(dy.double())
    for got, exp in ((xs.grad, xr.grad), (ws.grad, wr.grad), (bs.grad, br.grad)):
        assert got.dtype == dtype
        assert rel_err(got, exp) < (1e-5 if dtype == torch.float32 else 1e-2)


def test_weight_grads_large_m_float32():
    # dweight/dbias summed over 65536 rows stay within 1e-4 of float64 (specs/norm.md §4)
    m, n = 65536, 64
    x, w, b, dy = make((m, n), torch.float32, 34), make((n,), torch.float32, 35), make((n,), torch.float32, 36), \
        make((m, n), torch.float32, 37)
    _, dw, db = torch.ops.fastnorm.layer_norm_backward(dy, x, *torch.ops.fastnorm.layer_norm(x, w, b, 1e-5)[1:], w, b)
    wr, br = _leaf(w), _leaf(b)
    ref.layer_norm(x.double(), wr, br).backward(dy.double())
    assert rel_err(dw, wr.grad) < 1e-4 and rel_err(db, br.grad) < 1e-4


# ---- 3. strided rows --------------------------------------------------------------------------------
def _ops_run(fn):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()}


def test_strided_rows_without_copy():
    base = make((64, 2048), torch.float32, 38)
    x = base[:, 100:1124]  # row stride 2048, stride(-1) == 1
    w, b = make((1024,), torch.float32, 39), make((1024,), torch.float32, 40)
    keys = _ops_run(lambda: fastnorm.layer_norm(x, (1024,), w, b))
    assert not any(k in keys for k in ("aten::contiguous", "aten::clone", "aten::copy_")), keys
    assert rel_err(fastnorm.layer_norm(x, (1024,), w, b), ref.layer_norm(x.double(), w.double(), b.double())) < 1e-5
    # a QKV split: q of a fused [B, T, 3, H] projection
    qkv = make((2, 9, 3, 256), torch.float32, 41)
    q = qkv[:, :, 0, :]
    keys = _ops_run(lambda: fastnorm.rms_norm(q, (256,), w[:256]))
    assert not any(k in keys for k in ("aten::contiguous", "aten::clone", "aten::copy_")), keys
    assert rel_err(fastnorm.rms_norm(q, (256,), w[:256]), ref.rms_norm(q.double(), w[:256].double())) < 1e-5


def test_non_unit_inner_stride_and_misaligned_views():
    x = make((300, 40), torch.float32, 42).t()  # stride(-1) = 40: copied once, still correct
    w = make((300,), torch.float32, 43)
    assert rel_err(fastnorm.layer_norm(x, (300,), w), ref.layer_norm(x.double(), w.double())) < 1e-5
    for dtype in (torch.bfloat16, torch.float32):
        flat = make((20 * 129 + 1,), dtype, 44)
        xm = flat[1:].view(20, 129)  # data pointer offset by one element
        wm = make((130,), dtype, 45)[1:]
        assert rel_err(fastnorm.rms_norm(xm, (129,), wm), ref.rms_norm(xm.double(), wm.double())) < tol(dtype)
    # expanded dy in backward (stride 0 rows)
    x = make((8, 32), torch.float32, 46).requires_grad_()
    fastnorm.layer_norm(x, (32,)).backward(torch.ones(32).expand(8, 32))
    xr = _leaf(x)
    ref.layer_norm(xr).backward(torch.ones(8, 32, dtype=torch.float64))
    assert rel_err(x.grad, xr.grad) < 1e-5 or xr.grad.abs().max() < 1e-12


# ---- 4. casting conventions ------------------------------------------------------------------------
def _hf_llama_rmsnorm(x, w, eps):
    # Hugging Face LlamaRMSNorm.forward, written out
    h = x.to(torch.float32)
    var = h.pow(2).mean(-1, keepdim=True)
    h = h * torch.rsqrt(var + eps)
    return w * h.to(x.dtype)


def _agree(a, b):
    d = ulp_distance(a, b)
    return (d == 0).float().mean().item(), d.max().item()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_casting_gemma_equals_torch(dtype):
    n = 2048
    x, w = make((64, n), dtype, 47), make((n,), dtype, 48)
    frac, worst = _agree(fastnorm.rms_norm(x, (n,), w, 1e-6), F.rms_norm(x, (n,), w, 1e-6))
    assert frac >= 0.999 and worst <= 1
    m = torch.nn.RMSNorm(n, dtype=dtype)
    with torch.no_grad():
        m.weight.copy_(w)
    frac, worst = _agree(fastnorm.nn.RMSNorm(n, dtype=dtype).requires_grad_(False).load_state_dict(m.state_dict())
                         and fastnorm.rms_norm(x, (n,), w, None), m(x))
    assert frac >= 0.999 and worst <= 1


@pytest.mark.parametrize("wdt", [torch.bfloat16, torch.float32])
def test_casting_llama_equals_hf(wdt):
    n = 1536
    x, w = make((64, n), torch.bfloat16, 49), make((n,), wdt, 50)
    got, exp = fastnorm.rms_norm(x, (n,), w, 1e-6, casting="llama"), _hf_llama_rmsnorm(x, w, 1e-6)
    assert got.dtype == exp.dtype
    frac, worst = _agree(got, exp)
    assert frac >= 0.999 and worst <= 1
    mod = fastnorm.nn.LlamaRMSNorm(n, eps=1e-6).to(wdt)
    with torch.no_grad():
        mod.weight.copy_(w)
    assert torch.equal(mod(x), got)


def test_gemma_offset_formed_in_float32():
    # bf16(1 + w) != 1 + w for these w: the offset must be added in fp32 (Liger PR #1462)
    n = 512
    x = make((16, n), torch.bfloat16, 51)
    w = (torch.full((n,), 2.0 ** -9) * torch.arange(1, n + 1).remainder(7)).to(torch.bfloat16)
    got = fastnorm.rms_norm(x, (n,), w, 1e-6, offset=1.0)
    exact = ref.rms_norm(x.double(), w.double(), 1e-6, offset=1.0)
    bf16_first = ref.rms_norm(x.double(), (w + 1).double(), 1e-6)  # (1 + w) rounded to bf16 first
    assert rel_err(got, exact) < rel_err(bf16_first.to(torch.bfloat16), exact)
    assert ulp_distance(got, exact.to(torch.bfloat16)).max() <= 1


def test_casting_none_rounds_like_reference():
    x, w = make((32, 640), torch.bfloat16, 52), make((640,), torch.bfloat16, 53)
    got = fastnorm.rms_norm(x, (640,), w, casting="none")
    exp = ref.rms_norm(x, w, 1e-6, casting="none")
    frac, worst = _agree(got, exp)
    assert frac >= 0.999 and worst <= 1


@pytest.mark.parametrize("dtype", FLOATS)
def test_rmsnorm_eps_none_matches_torch(dtype):
    n = 256
    x = make((8, n), dtype, 54, scale=1e-4)  # tiny values make eps visible
    mine, theirs = fastnorm.nn.RMSNorm(n, dtype=dtype), torch.nn.RMSNorm(n, dtype=dtype)
    assert mine.eps is None and theirs.eps is None
    y1, y2 = mine(x), theirs(x)
    assert rel_err(y1, y2) < tol(dtype) * 10


# ---- 5. add & norm -------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["layer", "rms"])
@pytest.mark.parametrize("case", ["same", "fp32_residual", "residual_in_fp32", "none"])
def test_add_norm_forward(op, case):
    n = 1000
    x = make((40, n), torch.bfloat16, 55)
    r = None if case == "none" else make((40, n), torch.float32 if case == "fp32_residual" else torch.bfloat16, 56)
    w, b = make((n,), torch.bfloat16, 57), make((n,), torch.bfloat16, 58)
    fp32 = case == "residual_in_fp32"
    if op == "layer":
        y, s = fastnorm.add_layer_norm(x, r, (n,), w, b, residual_in_fp32=fp32)
        ye, se = ref.add_layer_norm(x, r, w, b, residual_in_fp32=fp32)
        yd = ref.layer_norm(se.double(), w.double(), b.double())
    else:
        y, s = fastnorm.add_rms_norm(x, r, (n,), w, bias=b, residual_in_fp32=fp32)
        ye, se = ref.add_rms_norm(x, r, w, bias=b, residual_in_fp32=fp32)
        yd = ref.rms_norm(se.double(), w.double(), 1e-6, b.double())
    assert s.dtype == se.dtype and torch.equal(s, se)  # the stored sum is exact: one fp32 add, one rounding
    assert y.dtype == torch.bfloat16
    assert rel_err(y, yd) < 1e-2
    if r is None:
        assert s.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("op", ["layer", "rms"])
@pytest.mark.parametrize("use_residual_grad", [True, False])
def test_add_norm_backward(op, use_residual_grad):
    n = 257
    x, r = make((30, n), torch.float32, 59), make((30, n), torch.float32, 60)
    w = make((n,), torch.float32, 61)
    dy, ds = make((30, n), torch.float32, 62), make((30, n), torch.float32, 63)
    leaves = [t.clone().requires_grad_() for t in (x, r, w)]
    refs = [_leaf(t) for t in (x, r, w)]
    f = fastnorm.add_layer_norm if op == "layer" else fastnorm.add_rms_norm
    rf = ref.add_layer_norm if op == "layer" else ref.add_rms_norm
    y, s = f(leaves[0], leaves[1], (n,), leaves[2])
    ye, se = rf(refs[0], refs[1], refs[2])
    if use_residual_grad:
        torch.autograd.backward([y, s], [dy, ds])
        torch.autograd.backward([ye, se], [dy.double(), ds.double()])
    else:
        y.backward(dy)
        ye.backward(dy.double())
    for a, e in zip(leaves, refs):
        assert rel_err(a.grad, e.grad) < 1e-5


# ---- 6. determinism and inputs left alone --------------------------------------------------------
@pytest.mark.parametrize("op", ["layer", "rms"])
def test_backward_deterministic_and_thread_independent(op):
    n = 3000
    x, w, b, dy = make((500, n), torch.float32, 64), make((n,), torch.float32, 65), make((n,), torch.float32, 66), \
        make((500, n), torch.float32, 67)
    dy_before = dy.clone()

    def grads():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = fastnorm.layer_norm(xs, (n,), ws, bs) if op == "layer" else fastnorm.rms_norm(xs, (n,), ws, bias=bs)
        y.backward(dy)
        return xs.grad, ws.grad, bs.grad

    first, second = grads(), grads()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        single = grads()
    finally:
        torch.set_num_threads(threads)
    for a, b_, c in zip(first, second, single):
        assert torch.equal(a, b_) and torch.equal(a, c)
    assert torch.equal(dy, dy_before)


# ---- 7. errors and edge cases ---------------------------------------------------------------------
def test_bad_inputs():
    x, w = torch.randn(4, 8), torch.randn(8)
    with pytest.raises(ValueError, match=r"fastnorm.layer_norm: weight has shape \[7\] but x's last dimension is 8"):
        fastnorm.layer_norm(x, (8,), torch.randn(7))
    with pytest.raises(ValueError, match="fastnorm.layer_norm: normalized_shape"):
        fastnorm.layer_norm(x, (4,))
    with pytest.raises(ValueError, match="fastnorm.rms_norm: eps must be"):
        fastnorm.rms_norm(x, (8,), w, 0.0)
    with pytest.raises(ValueError, match="fastnorm.layer_norm: eps must be"):
        fastnorm.layer_norm(x, (8,), w, None, -1e-5)
    with pytest.raises(ValueError, match="fastnorm.rms_norm: eps must be"):
        fastnorm.rms_norm(x, (8,), w, float("nan"))
    with pytest.raises(TypeError, match="fastnorm.layer_norm: input must be float"):
        fastnorm.layer_norm(torch.ones(4, 8, dtype=torch.int64), (8,))
    with pytest.raises(TypeError, match="fastnorm.rms_norm: weight must be float"):
        fastnorm.rms_norm(x, (8,), torch.ones(8, dtype=torch.int32))
    with pytest.raises(ValueError, match="fastnorm.rms_norm: casting"):
        fastnorm.rms_norm(x, (8,), w, casting="fast")
    with pytest.raises(RuntimeError, match="fastnorm.rms_norm: offset"):
        fastnorm.rms_norm(x, (8,), w, offset=float("inf"))
    with pytest.raises(ValueError, match="fastnorm.add_layer_norm: residual has shape"):
        fastnorm.add_layer_norm(x, torch.randn(4, 9), (8,), w)
    with pytest.raises(TypeError, match="fastnorm.layer_norm: input must be float"):
        fastnorm.layer_norm(torch.randn(4, 8, dtype=torch.complex64), (8,))
    with pytest.raises(NotImplementedError, match="memory_efficient"):
        fastnorm.layer_norm(x, (8,), memory_efficient=True)


def test_bad_inputs_at_the_op_level():
    # torch.ops users get the C++ checks, each naming the op and the argument
    x, w = torch.randn(4, 8), torch.randn(8)
    with pytest.raises(RuntimeError, match=r"fastnorm.layer_norm: weight has shape \[9\]"):
        torch.ops.fastnorm.layer_norm(x, torch.randn(9), None, 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.layer_norm: eps must be"):
        torch.ops.fastnorm.layer_norm(x, w, None, 0.0)
    with pytest.raises(RuntimeError, match="fastnorm.rms_norm: casting must be"):
        torch.ops.fastnorm.rms_norm(x, w, 1e-6, None, 0.0, 7)
    with pytest.raises(RuntimeError, match="fastnorm.rms_norm: offset 1 needs a weight"):
        torch.ops.fastnorm.rms_norm(x, None, 1e-6, None, 1.0)
    with pytest.raises(RuntimeError, match="fastnorm.layer_norm: x must be float"):
        torch.ops.fastnorm.layer_norm(torch.ones(4, 8, dtype=torch.int32), None, None, 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.layer_norm: weight is float64 but x is float32"):
        torch.ops.fastnorm.layer_norm(x, w.double(), None, 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.layer_norm: bias dtype"):
        torch.ops.fastnorm.layer_norm(x, w, w.half(), 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.add_rms_norm: residual must be"):
        torch.ops.fastnorm.add_rms_norm(x.half(), x.bfloat16(), None, 1e-6)
    y, mean, rstd = torch.ops.fastnorm.layer_norm(x, w, None, 1e-5)
    with pytest.raises(RuntimeError, match=r"fastnorm.layer_norm_backward: dy has shape \[4, 7\]"):
        torch.ops.fastnorm.layer_norm_backward(torch.randn(4, 7), x, mean, rstd, w, None)
    with pytest.raises(RuntimeError, match="fastnorm.layer_norm_backward: rstd has 3 elements"):
        torch.ops.fastnorm.layer_norm_backward(y, x, mean, rstd[:3], w, None)
    with pytest.raises(RuntimeError, match="fastnorm.layer_norm: out_dtype"):
        torch.ops.fastnorm.layer_norm(x, w, None, 1e-5, 5)


@pytest.mark.cuda
def test_mixed_devices_rejected():
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(RuntimeError, match="fastnorm.layer_norm: weight is on cpu"):
        fastnorm.layer_norm(x, (8,), torch.randn(8))


@pytest.mark.parametrize("op", ["layer", "rms"])
def test_empty_tensors(op):
    w = torch.randn(16, requires_grad=True)
    x = torch.randn(0, 16, requires_grad=True)
    y = fastnorm.layer_norm(x, (16,), w) if op == "layer" else fastnorm.rms_norm(x, (16,), w)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert x.grad.shape == (0, 16) and torch.equal(w.grad, torch.zeros(16))
    x0 = torch.randn(3, 0)
    y0 = fastnorm.layer_norm(x0, (0,)) if op == "layer" else fastnorm.rms_norm(x0, (0,))
    assert y0.shape == (3, 0)
    stats = torch.ops.fastnorm.layer_norm(x0, None, None, 1e-5)[2] if op == "layer" else \
        torch.ops.fastnorm.rms_norm(x0, None, 1e-6)[1]
    assert stats.shape == (3,) and (torch.isnan(stats).all() or op == "rms")


@pytest.mark.parametrize("op", ["layer", "rms"])
def test_nan_stays_in_its_row(op):
    x = make((6, 50), torch.float32, 68)
    x[2, 7] = float("nan")
    x[4, 1] = float("inf")
    f = (lambda t: fastnorm.layer_norm(t, (50,))) if op == "layer" else (lambda t: fastnorm.rms_norm(t, (50,)))
    y = f(x)
    assert torch.isnan(y[2]).all()
    assert not torch.isfinite(y[4]).all()
    clean = [0, 1, 3, 5]
    assert torch.isfinite(y[clean]).all()
    assert torch.equal(y[clean], f(x[clean]))


# ---- 8. opcheck, compile, fuzzing --------------------------------------------------------------------
def _opcheck_cases():
    x = make((3, 5, 24), torch.float32, 69).requires_grad_()
    r = make((3, 5, 24), torch.float32, 70).requires_grad_()
    w, b = make((24,), torch.float32, 71).requires_grad_(), make((24,), torch.float32, 72).requires_grad_()
    o = torch.ops.fastnorm
    y, mean, rstd = o.layer_norm(x, w, b, 1e-5)
    _, rs = o.rms_norm(x, w, 1e-6)
    _, s, m2, r2 = o.add_layer_norm(x, r, w, b, 1e-5)
    _, s3, r3 = o.add_rms_norm(x, r, w, 1e-6)
    dy = torch.randn_like(y)
    d = lambda t: t.detach()  # noqa: E731
    return [
        (o.layer_norm.default, (x, w, b, 1e-5)),
        (o.layer_norm.default, (x.bfloat16(), None, None, 1e-5, 0)),
        (o.rms_norm.default, (x, w, 1e-6, b, 1.0, 0)),
        (o.rms_norm.default, (x.bfloat16(), w, 1e-6, None, 0.0, 2)),
        (o.add_layer_norm.default, (x, r, w, b, 1e-5, True)),
        (o.add_rms_norm.default, (x, None, w, 1e-6)),
        (o.layer_norm_backward.default, (dy, d(x), d(mean), d(rstd), d(w), d(b))),
        (o.rms_norm_backward.default, (dy, d(x), d(rs), d(w), None, 0.0, 1, True, True, False)),
        (o.add_layer_norm_backward.default, (dy, dy, d(s), d(m2), d(r2), d(w), d(b))),
        (o.add_rms_norm_backward.default, (dy, None, d(s3), d(r3), d(w))),
    ]


@pytest.mark.parametrize("case", range(10))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


def test_compile_fullgraph_inductor():
    torch._dynamo.reset()
    n = 64
    m = torch.nn.Sequential(fastnorm.nn.LayerNorm(n), torch.nn.Linear(n, n), fastnorm.nn.RMSNorm(n))
    x = make((4, 7, n), torch.float32, 73).requires_grad_()
    cm = torch.compile(m, fullgraph=True)
    y1, y2 = m(x), cm(x)
    assert torch.allclose(y1, y2, atol=1e-6)
    g1 = torch.autograd.grad(y1.sum(), x)[0]
    g2 = torch.autograd.grad(y2.sum(), x)[0]
    assert torch.allclose(g1, g2, atol=1e-5)


@pytest.mark.parametrize("op", ["add_layer", "add_rms", "rms_llama"])
def test_compile_fullgraph_fused(op):
    torch._dynamo.reset()
    n = 48
    w = make((n,), torch.float32, 74)

    def f(x, r):
        if op == "add_layer":
            return fastnorm.add_layer_norm(x, r, (n,), w)
        if op == "add_rms":
            return fastnorm.add_rms_norm(x, r, (n,), w, residual_in_fp32=True)
        return fastnorm.rms_norm(x, (n,), w, casting="llama"), r

    x, r = make((5, n), torch.bfloat16, 75), make((5, n), torch.bfloat16, 76)
    eager = f(x, r)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")(x, r)
    for a, b in zip(eager, compiled):
        assert torch.equal(a, b)


@settings(max_examples=40, deadline=None)
@given(lead=st.lists(st.integers(0, 5), min_size=0, max_size=3), n=st.integers(1, 300),
       dtype=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64]),
       pad=st.integers(0, 9), op=st.sampled_from(["layer", "rms"]))
def test_fuzz_shapes_strides_dtypes(lead, n, dtype, pad, op):
    base = make(tuple(lead) + (n + pad,), dtype, 77)
    x = base[..., pad:]  # rows strided by n + pad, possibly misaligned
    w = make((n,), dtype if dtype != torch.float64 else torch.float64, 78)
    if op == "layer":
        y, e = fastnorm.layer_norm(x, (n,), w), ref.layer_norm(x.double(), w.double())
    else:
        y, e = fastnorm.rms_norm(x, (n,), w), ref.rms_norm(x.double(), w.double())
    assert y.shape == x.shape and y.dtype == dtype
    if x.numel() and n > 1:
        assert rel_err(y, e) < tol(dtype) * 2


# ---- 9. modules --------------------------------------------------------------------------------------
def test_modules_are_drop_in():
    n = 40
    tl, fl = torch.nn.LayerNorm(n), fastnorm.nn.LayerNorm(n)
    assert set(tl.state_dict()) == set(fl.state_dict()) == {"weight", "bias"}
    torch.nn.init.normal_(tl.weight)
    fl.load_state_dict(tl.state_dict())
    x = make((3, n), torch.float32, 79)
    assert torch.allclose(fl(x), tl(x), atol=1e-6)
    tr, fr = torch.nn.RMSNorm(n, eps=1e-6), fastnorm.nn.RMSNorm(n, eps=1e-6)
    assert set(tr.state_dict()) == set(fr.state_dict()) == {"weight"}
    assert set(fastnorm.nn.LlamaRMSNorm(n).state_dict()) == {"weight"}
    assert set(fastnorm.nn.RMSNorm(n, bias=True).state_dict()) == {"weight", "bias"}
    assert isinstance(fl, torch.nn.LayerNorm) and isinstance(fr, torch.nn.RMSNorm)
    g = fastnorm.nn.RMSNorm(n, offset=1.0)
    assert torch.equal(g.weight, torch.zeros(n))  # gamma_eff starts at 1
    assert torch.allclose(g(x), fastnorm.nn.RMSNorm(n)(x))


def test_fused_add_modules():
    n = 32
    x, r = make((4, n), torch.float32, 80), make((4, n), torch.float32, 81)
    for mod, base in ((fastnorm.nn.FusedAddLayerNorm(n), fastnorm.nn.LayerNorm(n)),
                      (fastnorm.nn.FusedAddRMSNorm(n), fastnorm.nn.RMSNorm(n))):
        y, s = mod(x, r)
        assert torch.equal(s, x + r)
        assert torch.allclose(y, base(x + r), atol=1e-6)
        y2, s2 = base.fused_add(x, r)
        assert torch.equal(y, y2) and torch.equal(s, s2)


# ---- 10. memory saved for backward ------------------------------------------------------------------
@pytest.mark.parametrize("op", ["layer", "rms"])
def test_saved_bytes(op):
    m, n = 64, 512
    x = make((m, n), torch.bfloat16, 82).requires_grad_()
    w = make((n,), torch.bfloat16, 83).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fastnorm.layer_norm(x, (n,), w) if op == "layer" else fastnorm.rms_norm(x, (n,), w)
    params = {w.untyped_storage().data_ptr()}
    total = sum(t.numel() * t.element_size() for t in saved
                if t is not None and t.untyped_storage().data_ptr() not in params)
    stats = 8 * m if op == "layer" else 4 * m
    assert total == x.numel() * x.element_size() + stats
    y.sum().backward()


def test_double_backward_is_a_clear_error():
    x = make((3, 8), torch.float64, 84).requires_grad_()
    y = fastnorm.layer_norm(x, (8,))
    (g,) = torch.autograd.grad((y * y).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="fastnorm.layer_norm: double backward"):
        g.sum().backward()


# ---- 11. CUDA: the GPU kernels against the CPU kernels and the reference ---------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n", [1, 7, 127, 1024, 4095, 8192, 12288, 65536])
@pytest.mark.parametrize("op", ["layer", "rms", "add_layer", "add_rms"])
def test_cuda_matches_cpu(dtype, n, op):
    m = rows_for(n)
    x, r = make((m, n), dtype, 85), make((m, n), dtype, 86)
    w, b = make((n,), dtype, 87), make((n,), dtype, 88)
    dy = make((m, n), dtype, 89)

    def run(device):
        xs, rs, ws, bs = (t.to(device).requires_grad_() for t in (x, r, w, b))
        poison_cuda_allocator()
        if op == "layer":
            outs = (fastnorm.layer_norm(xs, (n,), ws, bs),)
        elif op == "rms":
            outs = (fastnorm.rms_norm(xs, (n,), ws, bias=bs),)
        elif op == "add_layer":
            outs = fastnorm.add_layer_norm(xs, rs, (n,), ws, bs)
        else:
            outs = fastnorm.add_rms_norm(xs, rs, (n,), ws, bias=bs, offset=0.5)
        torch.autograd.backward(list(outs), [dy.to(device)] * len(outs))
        return [o.detach().cpu() for o in outs] + [t.grad.cpu() for t in (xs, ws, bs)] + \
            ([rs.grad.cpu()] if op.startswith("add") else [])

    cpu, gpu = run("cpu"), run("cuda")
    for c, g in zip(cpu, gpu):
        assert not torch.isnan(g).any()
        assert rel_err(g, c) < (1e-5 if dtype == torch.float32 else 1e-2)
    if n > 1:
        y_ref = {"layer": lambda: ref.layer_norm(x.double(), w.double(), b.double()),
                 "rms": lambda: ref.rms_norm(x.double(), w.double(), 1e-6, b.double())}.get(op)
        if y_ref is not None:
            assert rel_err(gpu[0], y_ref()) < tol(dtype)


@pytest.mark.cuda
def test_cuda_strided_deterministic_and_opcheck():
    base = make((256, 3000), torch.bfloat16, 90, device="cuda")
    x = base[:, 1:2049]  # misaligned, strided
    w = make((2048,), torch.float32, 91, device="cuda").requires_grad_()
    dy = make((256, 2048), torch.bfloat16, 92, device="cuda")
    grads = []
    for _ in range(2):
        xs = x.clone().requires_grad_()
        fastnorm.rms_norm(xs, (2048,), w).backward(dy)
        grads.append((xs.grad.clone(), w.grad.clone()))
        w.grad = None
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    assert rel_err(fastnorm.rms_norm(x, (2048,), w), ref.rms_norm(x.double(), w.double())) < 1e-2
    for op, args in _opcheck_cases():
        moved = tuple(a.cuda() if isinstance(a, torch.Tensor) else a for a in args)
        torch.library.opcheck(op, moved)


@pytest.mark.cuda
@pytest.mark.large
def test_cuda_more_than_2_31_elements():
    m, n = 65537, 32768  # 2^31 + 32768 elements
    x = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    y = fastnorm.rms_norm(x, (n,))
    last = x[-1:].double()
    assert rel_err(y[-1:], ref.rms_norm(last)) < 1e-2

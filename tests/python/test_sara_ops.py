"""SaRA ops (specs/sara.md §2.4, §3.1-§3.5, §4, §5; tests of §6 items 1-8, 10 (op level), 17, 18).

Every kernel is compared with fastnorm.reference.sara (plain PyTorch, float64): selection with nonzero, the masked
weight gradient as dense dW then gather, scatter through dense indexing, spmm through a dense S. CUDA tests carry
@pytest.mark.cuda and compare the CUDA kernels with the CPU kernels (they skip without a GPU).
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F

import fastnorm
from fastnorm.ops import sara as S
from fastnorm.reference import sara as R
from conftest import HAS_CUDA, ulp_distance

ops = torch.ops.fastnorm
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64, torch.float16: torch.int16,
            torch.bfloat16: torch.int16}


def bits(t):
    return t.contiguous().view(INT_VIEW[t.dtype]) if t.dtype in INT_VIEW else t


def assert_bitwise(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


def rand_indices(numel, k, gen=None, dtype=torch.int32):
    k = min(k, numel)
    return torch.randperm(numel, generator=gen)[:k].sort().values.to(dtype)


def special_weight(dtype, shape=(23, 31), seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(shape, generator=g, dtype=torch.float64) * 0.01).to(dtype)
    flat = w.view(-1)
    flat[:8] = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), -float("nan"),
                             torch.finfo(dtype).tiny / 4, -torch.finfo(dtype).tiny / 2], dtype=torch.float64).to(dtype)
    return w


# ---- 1. threshold selection ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("theta", [3e-3, 1e-2, 1e-30, 1e9])
def test_threshold_selection_matches_nonzero(dtype, theta):
    w = special_weight(dtype)
    th_w = torch.tensor(theta, dtype=torch.float64).to(dtype)
    w.view(-1)[10] = th_w  # |w| == θ_w is not selected
    w.view(-1)[11] = -th_w
    idx, base = S.select_threshold(w, theta)
    expect = torch.nonzero(w.reshape(-1).abs() < th_w).reshape(-1)
    assert idx.dtype == torch.int32
    assert torch.equal(idx.long(), expect)
    assert_bitwise(base, w.reshape(-1)[expect])
    assert 10 not in idx.tolist() and 11 not in idx.tolist()
    nan_pos = torch.nonzero(w.reshape(-1).isnan()).reshape(-1).tolist()
    assert not set(nan_pos) & set(idx.tolist())


@pytest.mark.parametrize("shape", [(0,), (1,), (0, 5), (1, 1)])
def test_selection_empty_and_single(shape):
    w = torch.full(shape, 1e-4)
    idx, base = S.select_threshold(w, 1e-3)
    assert idx.numel() == w.numel() and base.numel() == w.numel()
    idx, base = S.select_threshold(w, 1e-5)
    assert idx.numel() == 0 and base.numel() == 0 and idx.dtype == torch.int32


def test_selection_noncontiguous_weight():
    w = torch.randn(8, 3, 3, 3).to(memory_format=torch.channels_last) * 0.01
    idx, base = S.select_threshold(w, 5e-3)
    assert torch.equal(idx, R.select_threshold(w, 5e-3))
    assert_bitwise(base, w.reshape(-1)[idx.long()])


@pytest.mark.parametrize("dtype", DTYPES)
def test_abs_histogram_matches_reference(dtype):
    w = special_weight(dtype, (67, 45))
    nb = R.key_bits(dtype)
    for shift, mask, prefix in [(nb - 8, 0, 0), (nb - 16, 0xFF << (nb - 8), 0x3B << (nb - 8))]:
        h = torch.zeros(256, dtype=torch.int64)
        h[3] = 5  # the op adds into hist
        S.sara_abs_histogram_(w, h, shift, mask, prefix)
        r = torch.zeros(256, dtype=torch.int64)
        r[3] = 5
        R.sara_abs_histogram_(w, r, shift, mask, prefix)
        assert torch.equal(h, r)
    h = torch.zeros(256, dtype=torch.int64)
    S.sara_abs_histogram_(w, h, nb - 8, 0, 0)
    assert int(h.sum()) == int((~w.isnan()).sum())  # NaN never counted


# ---- 2. exact-k selection ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [1, 17, 300, 713])
def test_exact_k_selection(dtype, k):
    g = torch.Generator().manual_seed(k)
    w = (torch.randn(31, 23, generator=g) * 0.01).to(dtype)
    w.view(-1)[::7] = w.view(-1)[5]  # many ties
    w.view(-1)[3] = float("nan")
    k = min(k, w.numel() - 1)
    idx, base = S.select_topk_smallest(w, k)
    assert idx.numel() == k
    assert torch.equal(idx, R.select_k(w, k))  # ties to the lowest flat index
    sel = torch.zeros(w.numel(), dtype=torch.bool)
    sel[idx.long()] = True
    a = w.reshape(-1).abs().double()
    assert not sel[3]
    if k < w.numel() - 1:
        assert a[sel].max() <= a[~sel & ~a.isnan()].min()
    assert_bitwise(base, w.reshape(-1)[idx.long()])


def test_radix_select_global_streams_over_weights():
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(s, generator=g) for s in [(40, 30), (7,), (5, 5, 3, 3)]]
    ws[1][:] = ws[0].view(-1)[0]  # ties across weights
    k = 333
    kstar, below = S.radix_select(ws, k)
    rk, rb = R.radix_select_key(ws, k)
    assert (kstar, below) == (rk, rb)
    # Spread the equal-key quota in module order: exactly k entries in total.
    quota, total = k - below, 0
    for w in ws:
        idx, _ = S.sara_select(w, kstar, kstar, quota)
        n_eq = int((R.abs_key(w.reshape(-1))[idx.long()] == kstar).sum())
        quota -= n_eq
        total += idx.numel()
    assert total == k


def test_exact_k_too_large_raises():
    w = torch.randn(3, 4)
    with pytest.raises(ValueError, match="k"):
        S.select_topk_smallest(w, 13)
    with pytest.raises(ValueError, match="k"):
        S.radix_select([w], 0)


def test_select_eq_quota_first_in_flat_order():
    w = torch.tensor([1.0, 2.0, -1.0, 3.0, 1.0, 0.5, 1.0])
    key = S.abs_key_of(1.0, torch.float32)
    idx, base = S.sara_select(w, key, key, 2)
    assert idx.tolist() == [0, 2, 5]
    assert base.tolist() == [1.0, -1.0, 0.5]
    idx, _ = S.sara_select(w, key, -1, 5)  # key_eq < 0: no equal keys
    assert idx.tolist() == [5]


def test_threshold_must_be_positive():
    with pytest.raises(ValueError, match="threshold"):
        S.select_threshold(torch.randn(3), -1e-3)
    with pytest.raises(ValueError, match="threshold"):
        S.select_threshold(torch.randn(3), 0.0)


# ---- 3. index dtypes, scatter --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("alpha", [1.0, 0.37, 0.0])
def test_scatter_set_and_add_bit_exact(dtype, alpha):
    w = special_weight(dtype, (19, 11), seed=2)
    idx, base = S.select_threshold(w, 5e-3)
    dd = torch.float64 if dtype == torch.float64 else torch.float32
    delta = torch.randn(idx.numel(), dtype=dd) * 3e-3
    w1 = w.clone()
    S.sara_scatter_(w1, idx, base, delta, alpha)
    expect = w.clone().reshape(-1)
    expect[idx.long()] = (base.to(dd) + alpha * delta).to(dtype) if alpha != 0 else base
    assert_bitwise(w1.reshape(-1), expect)
    untouched = torch.ones(w.numel(), dtype=torch.bool)
    untouched[idx.long()] = False
    assert torch.equal(bits(w1.reshape(-1)[untouched]), bits(w.reshape(-1)[untouched]))
    # Restore: alpha = 0 writes base back bitwise.
    S.sara_scatter_(w1, idx, base, delta, 0.0)
    assert_bitwise(w1, w)
    # Add mode (base None): RN(weight[idx] + alpha*delta).
    w2 = w.clone()
    S.sara_scatter_(w2, idx.long(), None, delta, alpha)
    expect = w.clone().reshape(-1)
    if alpha != 0:
        expect[idx.long()] = (w.reshape(-1)[idx.long()].to(dd) + alpha * delta).to(dtype)
    assert_bitwise(w2.reshape(-1), expect)


def test_scatter_strided_weight():
    w = torch.randn(6, 4, 3, 3).to(memory_format=torch.channels_last)
    idx = rand_indices(w.numel(), 50)
    base = w.reshape(-1)[idx.long()].clone()
    delta = torch.randn(50)
    w1 = w.clone(memory_format=torch.channels_last)
    S.sara_scatter_(w1, idx, base, delta, 1.0)
    w2 = w.contiguous()
    R.sara_scatter_(w2, idx, base, delta, 1.0)
    assert torch.equal(w1, w2)


def test_int32_and_int64_paths_agree():
    g = torch.Generator().manual_seed(3)
    rows, cols, n = 37, 29, 50
    i32 = rand_indices(rows * cols, 120, g)
    i64 = i32.long()
    go, x = torch.randn(n, rows, generator=g), torch.randn(n, cols, generator=g)
    assert_bitwise(S.sara_sddmm(go, x, i32), S.sara_sddmm(go, x, i64))
    assert torch.equal(S.sara_row_ptr(i32, rows, cols), S.sara_row_ptr(i64, rows, cols))
    vals = torch.randn(120, generator=g)
    d = torch.randn(cols, 5, generator=g)
    assert_bitwise(S.sara_spmm(i32, vals, None, rows, cols, d), S.sara_spmm(i64, vals, None, rows, cols, d))
    w = torch.randn(rows, cols, generator=g)
    w1, w2 = w.clone(), w.clone()
    S.sara_scatter_(w1, i32, None, vals, 1.0)
    S.sara_scatter_(w2, i64, None, vals, 1.0)
    assert_bitwise(w1, w2)


def test_row_ptr_matches_reference():
    for rows, cols, k in [(1, 1, 1), (7, 64, 0), (129, 7, 300), (64, 129, 8256)]:
        idx = rand_indices(rows * cols, k)
        assert torch.equal(S.sara_row_ptr(idx, rows, cols), R.sara_row_ptr(idx, rows, cols))


# ---- 4. sddmm vs the float64 reference -----------------------------------------------------------------------------
def _sddmm_bound(go, x, idx, cols):
    B = (go.double().abs().t() @ x.double().abs()).reshape(-1)
    return B[idx.long()] if idx.numel() else B[:0]


def _check_sddmm(go, x, idx, cols, dtype):
    out = S.sara_sddmm(go, x, idx, None, cols)
    ref = R.sara_sddmm(go, x, idx, None, cols).double()
    assert out.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert out.shape == (idx.numel(),)
    B = _sddmm_bound(go, x, idx, cols)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    assert torch.all((out.double() - ref).abs() <= rtol * B + 1e-300), (out, ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 3, 17, 1000])
@pytest.mark.parametrize("rows,cols", [(1, 1), (7, 64), (64, 7), (129, 129)])
def test_sddmm_matches_reference(dtype, n, rows, cols):
    g = torch.Generator().manual_seed(n * 1000 + rows + cols)
    go = torch.randn(n, rows, generator=g).to(dtype)
    x = torch.randn(n, cols, generator=g).to(dtype)
    numel = rows * cols
    for k in sorted({0, 1, max(1, numel // 1000), max(1, numel // 20), numel}):
        _check_sddmm(go, x, rand_indices(numel, k, g), cols, dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sddmm_row_strided_inputs(dtype):
    g = torch.Generator().manual_seed(5)
    big_go = torch.randn(40, 100, generator=g).to(dtype)
    big_x = torch.randn(200, 80, generator=g).to(dtype)
    go = big_go[:, 3:50]           # row stride 100
    x = big_x[::5, 10:70]          # row stride 400
    xt = torch.randn(60, 40, generator=g).to(dtype).t()  # column-major
    idx = rand_indices(47 * 60, 300, g)
    _check_sddmm(go, x, idx, 60, dtype)
    _check_sddmm(go, xt, idx, 60, dtype)


def test_sddmm_large_k_panel_and_panel_free_paths():
    g = torch.Generator().manual_seed(6)
    # rows < 32 forces the panel-free path (cap below 16 columns of panel); large k the panel path.
    for rows, cols, n, k in [(8, 2000, 300, 40), (300, 500, 700, 40000)]:
        go, x = torch.randn(n, rows, generator=g), torch.randn(n, cols, generator=g)
        _check_sddmm(go, x, rand_indices(rows * cols, k, g), cols, torch.float32)


def test_sddmm_nan_poisons_only_affected_entries():
    g = torch.Generator().manual_seed(7)
    go, x = torch.randn(33, 10, generator=g), torch.randn(33, 12, generator=g)
    go[5, 3] = float("nan")
    idx = torch.arange(120, dtype=torch.int32)
    out = S.sara_sddmm(go, x, idx)
    rows_of = idx // 12
    assert torch.all(out[rows_of == 3].isnan())
    assert not torch.any(out[rows_of != 3].isnan())


@pytest.mark.parametrize("threads", [1, 2, 4])
def test_sddmm_bitwise_across_thread_counts(threads):
    g = torch.Generator().manual_seed(8)
    go, x = torch.randn(1000, 129, generator=g), torch.randn(1000, 64, generator=g)
    idx = rand_indices(129 * 64, 900, g)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = S.sara_sddmm(go, x, idx)
        conv_ref = S.sara_conv2d_sddmm(torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(1)),
                                       torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(2)),
                                       torch.arange(0, 216, 3, dtype=torch.int32), None, [6, 4, 3, 3])
        torch.set_num_threads(threads)
        assert_bitwise(S.sara_sddmm(go, x, idx), ref)
        conv = S.sara_conv2d_sddmm(torch.randn(2, 6, 5, 5, generator=torch.Generator().manual_seed(1)),
                                   torch.randn(2, 4, 7, 7, generator=torch.Generator().manual_seed(2)),
                                   torch.arange(0, 216, 3, dtype=torch.int32), None, [6, 4, 3, 3])
        assert_bitwise(conv, conv_ref)
    finally:
        torch.set_num_threads(old)


# ---- 5. conv2d sddmm vs convolution_backward + gather --------------------------------------------------------------
CONV_CASES = [
    # (B, C, O, H, W, kh, kw, stride, padding, dilation, groups)
    (2, 4, 6, 9, 8, 3, 3, (1, 1), (0, 0), (1, 1), 1),
    (1, 4, 6, 9, 7, 3, 3, (2, 2), (1, 1), (1, 1), 2),
    (2, 3, 5, 8, 11, 1, 3, (1, 2), (1, 2), (2, 1), 1),
    (2, 6, 6, 7, 9, 3, 3, (1, 1), (1, 1), (2, 2), 6),   # depthwise
    (1, 8, 4, 5, 5, 1, 1, (1, 1), (0, 0), (1, 1), 2),
    (3, 2, 4, 6, 6, 3, 3, (2, 1), (1, 2), (1, 1), 1),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_conv2d_sddmm_matches_reference(case, dtype, channels_last):
    B, C, O, H, W, kh, kw, st, pd, dl, G = case
    g = torch.Generator().manual_seed(hash(case) % 1000)
    x = torch.randn(B, C, H, W, generator=g).to(dtype)
    wshape = [O, C // G, kh, kw]
    y = F.conv2d(x.double(), torch.zeros(wshape, dtype=torch.float64), None, st, pd, dl, G)
    go = torch.randn(y.shape, generator=g).to(dtype)
    if channels_last:
        x, go = x.to(memory_format=torch.channels_last), go.to(memory_format=torch.channels_last)
    numel = math.prod(wshape)
    for k in sorted({0, 1, max(1, numel // 20), numel}):
        idx = rand_indices(numel, k, g)
        out = S.sara_conv2d_sddmm(go, x, idx, None, wshape, st, pd, dl, G)
        ref = R.sara_conv2d_sddmm(go, x, idx, None, wshape, st, pd, dl, G).double()
        _, Bw, _ = torch.ops.aten.convolution_backward(go.double().abs(), x.double().abs(),
                                                       torch.zeros(wshape, dtype=torch.float64), None, list(st),
                                                       list(pd), list(dl), False, [0, 0], G, [False, True, False])
        bound = Bw.reshape(-1)[idx.long()]
        rtol = 1e-12 if dtype == torch.float64 else 1e-5
        assert torch.all((out.double() - ref).abs() <= rtol * bound + 1e-300)


def test_conv2d_sddmm_output_size_mismatch_raises():
    x = torch.randn(1, 2, 8, 8)
    go = torch.randn(1, 3, 5, 5)  # a 3x3 kernel with no padding gives 6x6
    with pytest.raises(RuntimeError, match=r"fastnorm\.sara_conv2d_sddmm: argument 'grad_out'.*6x6"):
        S.sara_conv2d_sddmm(go, x, torch.arange(3, dtype=torch.int32), None, [3, 2, 3, 3])


# ---- 6. gradients of the composites ---------------------------------------------------------------------------------
def _linear_case(dtype=torch.float64, rows=9, cols=13, lead=(3, 4), density=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    w0 = (torch.randn(rows, cols, generator=g, dtype=torch.float64) * 0.1).to(dtype)
    idx = rand_indices(rows * cols, max(1, int(density * rows * cols)), g)
    base = w0.reshape(-1)[idx.long()].clone()
    x = torch.randn(*lead, cols, generator=g, dtype=torch.float64).to(dtype)
    b = torch.randn(rows, generator=g, dtype=torch.float64).to(dtype)
    return w0, idx, base, x, b


@pytest.mark.parametrize("wgrad", ["sddmm", "dense", "auto"])
def test_sara_linear_gradcheck(wgrad):
    w0, idx, base, x, b = _linear_case()
    rp = S.sara_row_ptr(idx, *w0.shape)

    def f(x, b, delta):
        w = w0.clone()
        S.sara_scatter_(w, idx, base, delta.detach(), 1.0)  # the weight holds W_eff, as between steps
        return S.sara_linear(x, w, b, delta, idx, rp, wgrad)

    delta = (torch.randn(idx.numel(), dtype=torch.float64) * 1e-2).requires_grad_()
    assert torch.autograd.gradcheck(f, (x.requires_grad_(), b.requires_grad_(), delta))
    assert torch.autograd.gradcheck(f, (x, b, delta), fast_mode=True)


GRADCHECK_CONV_CASES = [
    # small versions of CONV_CASES (gradcheck evaluates the op once per input element)
    (1, 4, 4, 5, 4, 3, 3, (1, 1), (0, 0), (1, 1), 1),
    (1, 4, 4, 5, 5, 3, 3, (2, 2), (1, 1), (1, 1), 2),
    (1, 2, 3, 5, 6, 1, 3, (1, 2), (1, 2), (2, 1), 1),
    (2, 3, 3, 4, 5, 3, 3, (1, 1), (1, 1), (2, 2), 3),   # depthwise
]


@pytest.mark.parametrize("wgrad", ["sddmm", "dense"])
@pytest.mark.parametrize("case", GRADCHECK_CONV_CASES)
def test_sara_conv2d_gradcheck(wgrad, case):
    B, C, O, H, W, kh, kw, st, pd, dl, G = case
    g = torch.Generator().manual_seed(11)
    w0 = torch.randn(O, C // G, kh, kw, generator=g, dtype=torch.float64) * 0.1
    idx = rand_indices(w0.numel(), max(1, w0.numel() // 3), g)
    base = w0.reshape(-1)[idx.long()].clone()
    x = torch.randn(B, C, H, W, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(O, generator=g, dtype=torch.float64, requires_grad=True)

    def f(x, b, delta):
        w = w0.clone()
        S.sara_scatter_(w, idx, base, delta.detach(), 1.0)
        return S.sara_conv2d(x, w, b, delta, idx, None, st, pd, dl, G, wgrad)

    delta = (torch.randn(idx.numel(), dtype=torch.float64) * 1e-2).requires_grad_()
    assert torch.autograd.gradcheck(f, (x, b, delta))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_sparse_gradient_equals_dense_gathered(dtype):
    """The issue's headline test: dδ == (dense dW)[idx] (float64 exactly to rounding; others within §4)."""
    for seed, (rows, cols, lead) in enumerate([(7, 64, (5,)), (129, 33, (2, 17)), (64, 129, (40,))]):
        w0, idx, base, x, b = _linear_case(dtype, rows, cols, lead, density=0.05, seed=seed)
        x.requires_grad_()
        delta = torch.zeros(idx.numel(), dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                            requires_grad=True)
        y = S.sara_linear(x, w0, b, delta, idx, None, "sddmm")
        gy = torch.randn_like(y)
        (gd,) = torch.autograd.grad(y, delta, gy)
        dw = gy.double().reshape(-1, rows).t() @ x.detach().double().reshape(-1, cols)
        ref = dw.reshape(-1)[idx.long()]
        bound = (gy.double().abs().reshape(-1, rows).t() @ x.detach().double().abs().reshape(-1, cols)).reshape(-1)[idx.long()]
        rtol = 1e-12 if dtype == torch.float64 else 1e-5
        assert torch.all((gd.double() - ref).abs() <= rtol * bound + 1e-300)


def test_paths_agree_and_weight_gets_no_grad():
    w0, idx, base, x, b = _linear_case(torch.float32, 40, 50, (30,), density=0.05)
    w0.requires_grad_(False)
    outs = {}
    for wgrad in ["sddmm", "dense", "auto"]:
        xx = x.clone().requires_grad_()
        bb = b.clone().requires_grad_()
        d = torch.zeros(idx.numel(), requires_grad=True)
        y = S.sara_linear(xx, w0, bb, d, idx, None, wgrad)
        y.square().sum().backward()
        outs[wgrad] = (xx.grad, bb.grad, d.grad)
    for w in ["dense", "auto"]:
        for a, r in zip(outs[w], outs["sddmm"]):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)


def test_double_backward_raises():
    w0, idx, base, x, b = _linear_case()
    x.requires_grad_()
    d = torch.zeros(idx.numel(), dtype=torch.float64, requires_grad=True)
    y = S.sara_linear(x, w0, b, d, idx)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(y.sum(), d, create_graph=True)


def test_sara_merge_forward_and_grad():
    w = torch.randn(17)
    idx = torch.tensor([1, 4, 9], dtype=torch.int32)
    base = w[idx.long()].clone()
    d = torch.randn(3, requires_grad=True)
    out = S.sara_merge(w, idx, base, d, 0.5)
    expect = w.clone()
    expect[idx.long()] = base + 0.5 * d.detach()
    assert torch.equal(out, expect)
    assert torch.equal(w[idx.long()], base)  # a copy: the input is not modified
    g = torch.randn(17)
    out.backward(g)
    assert torch.equal(d.grad, 0.5 * g[idx.long()])


# ---- 7. wgrad choice -----------------------------------------------------------------------------------------------------
def test_resolve_wgrad_rules(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.delenv("FASTNORM_SARA_WGRAD", raising=False)
    assert S.resolve_wgrad("auto", 10, 100, cpu, torch.float32) == "sddmm"
    assert S.resolve_wgrad("auto", 30, 100, cpu, torch.float32) == "dense"
    assert S.resolve_wgrad("dense", 1, 100, cpu, torch.float32) == "dense"
    monkeypatch.setitem(S.WGRAD_CROSSOVER, ("cpu", None, None), 0.5)  # mocked crossover
    assert S.resolve_wgrad("auto", 30, 100, cpu, torch.float32) == "sddmm"
    monkeypatch.setenv("FASTNORM_SARA_WGRAD", "dense")
    assert S.resolve_wgrad("auto", 1, 100, cpu, torch.float32) == "dense"
    assert S.resolve_wgrad("sddmm", 1, 100, cpu, torch.float32) == "sddmm"  # the op argument wins
    monkeypatch.setenv("FASTNORM_SARA_WGRAD", "bogus")
    with pytest.raises(ValueError, match="FASTNORM_SARA_WGRAD"):
        S.resolve_wgrad("auto", 1, 100, cpu, torch.float32)
    with pytest.raises(ValueError, match="wgrad"):
        S.resolve_wgrad("sparse", 1, 100, cpu, torch.float32)
    monkeypatch.delenv("FASTNORM_SARA_WGRAD")
    # A dense dW above 1 GiB always takes the sddmm path.
    assert S.resolve_wgrad("auto", 10 ** 9, 2 ** 28 + 1, cpu, torch.float32) == "sddmm"


def test_auto_follows_crossover_through_backward(monkeypatch):
    """With the crossover mocked to 0, auto must take the dense path: the profiler shows the dense mm."""
    w0, idx, base, x, b = _linear_case(torch.float32, 64, 96, (50,), density=0.02)
    monkeypatch.delenv("FASTNORM_SARA_WGRAD", raising=False)

    def kernels(crossover):
        monkeypatch.setitem(S.WGRAD_CROSSOVER, ("cpu", None, None), crossover)
        d = torch.zeros(idx.numel(), requires_grad=True)
        y = S.sara_linear(x, w0, None, d, idx)
        with torch.profiler.profile() as prof:
            y.sum().backward()
        return {e.key for e in prof.key_averages()}

    assert "fastnorm::sara_sddmm" in kernels(0.5)
    assert "fastnorm::sara_sddmm" not in kernels(0.0)


# ---- 8. no dense dW on the sddmm path ----------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_sddmm_backward_never_allocates_dense_dw(kind):
    g = torch.Generator().manual_seed(12)
    if kind == "linear":
        rows, cols = 256, 384
        w = torch.randn(rows, cols, generator=g)
        x = torch.randn(64, cols, generator=g)
        idx = rand_indices(w.numel(), w.numel() // 20, g)
        fn = lambda d: S.sara_linear(x, w, None, d, idx, None, "sddmm")  # noqa: E731
    else:
        w = torch.randn(64, 64, 3, 3, generator=g)
        x = torch.randn(2, 64, 12, 12, generator=g)
        idx = rand_indices(w.numel(), w.numel() // 20, g)
        fn = lambda d: S.sara_conv2d(x, w, None, d, idx, None, (1, 1), (1, 1), (1, 1), 1, "sddmm")  # noqa: E731
    dense_bytes = w.numel() * w.element_size()
    d = torch.zeros(idx.numel(), requires_grad=True)
    y = fn(d)
    gy = torch.randn_like(y)
    with torch.profiler.profile(profile_memory=True) as prof:
        torch.autograd.grad(y, d, gy)
    allocs = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert allocs, "the profiler recorded no allocation"
    assert max(allocs) < dense_bytes, (max(allocs), dense_bytes)
    # Control: the dense path does allocate dW.
    y = fn(d)
    with torch.profiler.profile(profile_memory=True) as prof:
        if kind == "linear":
            S.sara_linear_backward(gy, x, w, idx, None, torch.float32, "dense", (False, False, True))
        else:
            S.sara_conv2d_backward(gy, x, w, idx, None, (1, 1), (1, 1), (1, 1), 1, torch.float32, "dense",
                                   (False, False, True))
    assert max(e.cpu_memory_usage for e in prof.events()) >= dense_bytes


# ---- 10. fused AdamW (op level) --------------------------------------------------------------------------------------
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_adamw_step_matches_torch_adamw(wdtype):
    g = torch.Generator().manual_seed(13)
    ddt = torch.float64 if wdtype == torch.float64 else torch.float32
    sizes = [(11, 7), (5,), (40, 30)]
    weights = [torch.randn(s, generator=g).to(wdtype) for s in sizes]
    idxs = [rand_indices(w.numel(), max(1, w.numel() // 3), g, dtype) for w, dtype in
            zip(weights, [torch.int32, torch.int64, torch.int32])]
    bases = [w.reshape(-1)[i.long()].clone() for w, i in zip(weights, idxs)]
    deltas = [torch.zeros(i.numel(), dtype=ddt) for i in idxs]
    m = [torch.zeros_like(d) for d in deltas]
    v = [torch.zeros_like(d) for d in deltas]
    ref_params = [torch.zeros_like(d, requires_grad=True) for d in deltas]
    lr, betas, eps, wd = 1e-2, (0.9, 0.999), 1e-8, 0.05
    opt = torch.optim.AdamW(ref_params, lr=lr, betas=betas, eps=eps, weight_decay=wd, foreach=False)
    for step in range(1, 11):
        grads = [torch.randn(d.shape, generator=g, dtype=ddt) for d in deltas]
        for p, gr in zip(ref_params, grads):
            p.grad = gr.clone()
        opt.step()
        S.sara_adamw_step_(deltas, m, v, grads, weights, idxs, bases, lr=lr, beta1=betas[0], beta2=betas[1], eps=eps,
                           weight_decay=wd, bias_correction1=1 - betas[0] ** step,
                           bias_correction2=1 - betas[1] ** step)
        # torch's CPU sqrt is not always correctly rounded (1 ulp off on some inputs) while the kernel's is, so the
        # per-step difference is a few ulp of the update, which is large in ulps of δ only when δ is near 0.
        eps32 = torch.finfo(ddt).eps
        for d, p, mm, vv in zip(deltas, ref_params, m, v):
            st = opt.state[p]
            ref = p.detach()
            assert torch.all((d - ref).abs() <= 4 * step * eps32 * (ref.abs() + lr)), (d - ref).abs().max()
            assert int(ulp_distance(mm, st["exp_avg"]).max()) <= 2 * step
            assert int(ulp_distance(vv, st["exp_avg_sq"]).max()) <= 2 * step
    # Write-through: weight[idx] == RN_w(base + δ) bitwise, the rest unchanged.
    for w, i, b, d in zip(weights, idxs, bases, deltas):
        assert_bitwise(w.reshape(-1)[i.long()], (b.to(ddt) + d).to(wdtype))


def test_adamw_step_absolute_decay_matches_reference():
    g = torch.Generator().manual_seed(14)
    w = torch.randn(20, 30, generator=g)
    idx = rand_indices(600, 100, g)
    base = w.reshape(-1)[idx.long()].clone()
    args = dict(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.3, bias_correction1=0.2,
                bias_correction2=0.01, decay_absolute=True, alpha=0.7)
    state = [torch.randn(100, generator=g) * 1e-2, torch.randn(100, generator=g) * 1e-2,
             torch.rand(100, generator=g) * 1e-4]
    grad = torch.randn(100, generator=g)
    s1 = [t.clone() for t in state]
    s2 = [t.clone() for t in state]
    w1, w2 = w.clone(), w.clone()
    S.sara_adamw_step_([s1[0]], [s1[1]], [s1[2]], [grad], [w1], [idx], [base], **args)
    R.sara_adamw_step_([s2[0]], [s2[1]], [s2[2]], [grad], [w2], [idx], [base], **args)
    # Same op order as the reference; only torch's sqrt rounding differs (a few ulp of the update).
    for a, b in zip(s1[1:], s2[1:]):
        assert int(ulp_distance(a, b).max()) <= 2
    assert torch.all((s1[0] - s2[0]).abs() <= 8 * torch.finfo(torch.float32).eps * (s2[0].abs() + args["lr"]))
    torch.testing.assert_close(w1, w2, rtol=1e-6, atol=1e-8)


# ---- spmm ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("transpose", [False, True])
def test_spmm_matches_dense(dtype, transpose):
    g = torch.Generator().manual_seed(15)
    for rows, cols, k, l in [(1, 1, 1, 1), (30, 50, 0, 4), (64, 129, 400, 12), (129, 7, 903, 3)]:
        idx = rand_indices(rows * cols, k, g)
        vals = torch.randn(idx.numel(), generator=g, dtype=dtype)
        D = torch.randn(rows if transpose else cols, l, generator=g, dtype=dtype)
        rp = S.sara_row_ptr(idx, rows, cols)
        out = S.sara_spmm(idx, vals, rp, rows, cols, D, transpose)
        ref = R.sara_spmm(idx, vals, None, rows, cols, D, transpose)
        torch.testing.assert_close(out, ref, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-6)
        if threads_ok := torch.get_num_threads() > 1:  # noqa: F841  deterministic for any thread count
            old = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                assert_bitwise(S.sara_spmm(idx, vals, rp, rows, cols, D, transpose), out)
            finally:
                torch.set_num_threads(old)


# ---- opcheck -----------------------------------------------------------------------------------------------------------
def _opcheck_samples():
    g = torch.Generator().manual_seed(16)
    w = torch.randn(9, 11, generator=g) * 0.01
    idx = rand_indices(99, 20, g)
    base = w.reshape(-1)[idx.long()].clone()
    d = torch.randn(20, generator=g)
    go, x = torch.randn(6, 9, generator=g), torch.randn(6, 11, generator=g)
    rp = S.sara_row_ptr(idx, 9, 11)
    xc, wc = torch.randn(2, 4, 7, 7, generator=g), torch.randn(6, 2, 3, 3, generator=g)
    ic = rand_indices(wc.numel(), 30, g)
    goc = torch.randn(2, 6, 4, 7, generator=g)
    return [
        (ops.sara_abs_histogram_.default, (w, torch.zeros(256, dtype=torch.int64), 24, 0, 0)),
        (ops.sara_select.default, (w, S.abs_key_of(5e-3, torch.float32), -1, 0)),
        (ops.sara_row_ptr.default, (idx, 9, 11)),
        (ops.sara_scatter_.default, (w.clone(), idx, base, d, 0.5)),
        (ops.sara_scatter_.default, (w.clone(), idx, None, d, 1.0)),
        (ops.sara_sddmm.default, (go, x, idx, rp, 11, False)),
        (ops.sara_conv2d_sddmm.default, (goc, xc, ic, None, [6, 2, 3, 3], [2, 1], [1, 1], [1, 1], 2, False)),
        (ops.sara_adamw_step_.default, ([torch.zeros(20)], [torch.zeros(20)], [torch.zeros(20)], [d], [w.clone()],
                                        [idx], [base], 1e-3, 0.9, 0.999, 1e-8, 0.01, 0.1, 0.001, False, 1.0)),
        (ops.sara_spmm.default, (idx, d, rp, 9, 11, torch.randn(11, 3, generator=g), False, False)),
        (ops.sara_spmm.default, (idx, d, None, 9, 11, torch.randn(9, 3, generator=g), True, False)),
    ]


@pytest.mark.parametrize("i", range(10))
def test_opcheck_kernels(i):
    op, args = _opcheck_samples()[i]
    tests = ["test_schema", "test_autograd_registration", "test_faketensor"]
    if op is not ops.sara_select.default:  # data-dependent output size: no AOT dispatch
        tests.append("test_aot_dispatch_dynamic")
    torch.library.opcheck(op, args, test_utils=tests)


def test_opcheck_composites():
    w0, idx, base, x, b = _linear_case(torch.float64)
    d = torch.zeros(idx.numel(), dtype=torch.float64, requires_grad=True)
    rp = S.sara_row_ptr(idx, *w0.shape)
    torch.library.opcheck(ops.sara_linear.default, (x.requires_grad_(), w0, b.requires_grad_(), d, idx, rp, "sddmm"))
    torch.library.opcheck(ops.sara_linear.default, (x, w0, None, d, idx, None, "dense"))
    xc = torch.randn(2, 4, 7, 7, dtype=torch.float64, requires_grad=True)
    wc = torch.randn(6, 2, 3, 3, dtype=torch.float64)
    ic = rand_indices(wc.numel(), 30)
    dc = torch.zeros(30, dtype=torch.float64, requires_grad=True)
    torch.library.opcheck(ops.sara_conv2d.default, (xc, wc, None, dc, ic, None, [2, 1], [1, 1], [1, 1], 2, "sddmm"))
    wm = torch.randn(17, dtype=torch.float64)
    im = torch.tensor([1, 4, 9], dtype=torch.int32)
    torch.library.opcheck(ops.sara_merge.default, (wm, im, wm[im.long()].clone(), torch.randn(3, dtype=torch.float64,
                                                                                             requires_grad=True), 0.5))


def test_torch_compile_fullgraph_matches_eager():
    w0, idx, base, x, b = _linear_case(torch.float32, 24, 40, (8,), density=0.05)
    rp = S.sara_row_ptr(idx, *w0.shape)

    def f(x, d):
        return S.sara_linear(x, w0, b, d, idx, rp, "sddmm").square().sum()

    d1 = torch.zeros(idx.numel(), requires_grad=True)
    d2 = torch.zeros(idx.numel(), requires_grad=True)
    f(x, d1).backward()
    torch.compile(f, fullgraph=True, backend="aot_eager")(x, d2).backward()
    torch.testing.assert_close(d1.grad, d2.grad)


# ---- 17. bad inputs ------------------------------------------------------------------------------------------------------
def _bad_cases():
    w = torch.randn(5, 6)
    idx = torch.tensor([1, 3, 7], dtype=torch.int32)
    d = torch.zeros(3)
    go, x = torch.randn(4, 5), torch.randn(4, 6)
    return [
        ("indices out of range", lambda: ops.sara_sddmm(go, x, torch.tensor([1, 30], dtype=torch.int32), None, 6, False),
         r"fastnorm\.sara_sddmm: argument 'indices' must be flat indices in \[0, 30\), got 30"),
        ("indices unsorted", lambda: ops.sara_scatter_(w.clone(), torch.tensor([3, 1, 7], dtype=torch.int32), None, d,
                                                       1.0),
         r"fastnorm\.sara_scatter_: argument 'indices' must be sorted and unique, got 1 at position 1 after 3"),
        ("indices duplicate", lambda: ops.sara_row_ptr(torch.tensor([3, 3], dtype=torch.int32), 5, 6),
         r"fastnorm\.sara_row_ptr: argument 'indices' must be sorted and unique"),
        ("negative index", lambda: ops.sara_spmm(torch.tensor([-1], dtype=torch.int32), torch.zeros(1), None, 5, 6,
                                                 torch.zeros(6, 2), False, False),
         r"fastnorm\.sara_spmm: argument 'indices' must be flat indices"),
        ("float indices", lambda: ops.sara_sddmm(go, x, idx.float(), None, 6, False),
         r"fastnorm\.sara_sddmm: argument 'indices' must be int32 or int64, got float32"),
        ("dtype mismatch", lambda: ops.sara_sddmm(go, x.double(), idx, None, 6, False),
         r"fastnorm\.sara_sddmm: argument 'input' must have grad_out's dtype float32, got float64"),
        ("int weight", lambda: ops.sara_select(torch.ones(3, dtype=torch.int32), 5, -1, 0),
         r"fastnorm\.sara_select: argument 'weight' must be float16, bfloat16, float32 or float64, got int32"),
        ("N mismatch", lambda: ops.sara_sddmm(go, torch.randn(3, 6), idx, None, 6, False),
         r"fastnorm\.sara_sddmm: argument 'input' must have grad_out's N = 4"),
        ("cols mismatch", lambda: ops.sara_sddmm(go, x, idx, None, 7, False),
         r"fastnorm\.sara_sddmm: argument 'input' must have cols = 7"),
        ("grad_out 3-D", lambda: ops.sara_sddmm(go[None], x, idx, None, 6, False),
         r"fastnorm\.sara_sddmm: argument 'grad_out' must be 2-D"),
        ("delta length", lambda: ops.sara_scatter_(w.clone(), idx, None, torch.zeros(4), 1.0),
         r"fastnorm\.sara_scatter_: argument 'delta' must have shape \[3\]"),
        ("base dtype", lambda: ops.sara_scatter_(w.clone(), idx, torch.zeros(3, dtype=torch.float64), d, 1.0),
         r"fastnorm\.sara_scatter_: argument 'base' must have the weight's dtype float32, got float64"),
        ("row_ptr wrong", lambda: ops.sara_sddmm(go, x, idx, torch.zeros(6, dtype=torch.int32), None and 0 or 6, False),
         r"fastnorm\.sara_sddmm: argument 'row_ptr' must be the CSR row offsets"),
        ("row_ptr shape", lambda: ops.sara_sddmm(go, x, idx, torch.zeros(5, dtype=torch.int32), 6, False),
         r"fastnorm\.sara_sddmm: argument 'row_ptr' must have shape \[6\]"),
        ("hist shape", lambda: ops.sara_abs_histogram_(w, torch.zeros(255, dtype=torch.int64), 24, 0, 0),
         r"fastnorm\.sara_abs_histogram_: argument 'hist' must be a contiguous int64 tensor of shape \[256\]"),
        ("bad shift", lambda: ops.sara_abs_histogram_(w, torch.zeros(256, dtype=torch.int64), 28, 0, 0),
         r"fastnorm\.sara_abs_histogram_: argument 'shift' must be a multiple of 8"),
        ("negative key", lambda: ops.sara_select(w, -1, -1, 0),
         r"fastnorm\.sara_select: argument 'key_lt' must be >= 0, got -1"),
        ("conv groups", lambda: ops.sara_conv2d_sddmm(torch.randn(1, 4, 3, 3), torch.randn(1, 3, 5, 5), idx, None,
                                                      [4, 1, 3, 3], [1, 1], [0, 0], [1, 1], 3, False),
         r"fastnorm\.sara_conv2d_sddmm: argument 'groups' must divide"),
        ("conv stride", lambda: ops.sara_conv2d_sddmm(torch.randn(1, 4, 3, 3), torch.randn(1, 2, 5, 5), idx, None,
                                                      [4, 2, 3, 3], [0, 1], [0, 0], [1, 1], 1, False),
         r"fastnorm\.sara_conv2d_sddmm: argument 'stride' must be >= 1"),
        ("adamw lengths", lambda: ops.sara_adamw_step_([d], [d.clone()], [], [d], [w], [idx], [w.reshape(-1)[:3]],
                                                       1e-3, 0.9, 0.999, 1e-8, 0.0, 0.1, 0.1, False, 1.0),
         r"fastnorm\.sara_adamw_step_: argument 'deltas' and the other lists must have equal lengths"),
        ("adamw beta", lambda: ops.sara_adamw_step_([d], [d.clone()], [d.clone()], [d], [w.clone()], [idx],
                                                    [w.reshape(-1)[:3].clone()], 1e-3, 1.0, 0.999, 1e-8, 0.0, 0.1, 0.1,
                                                    False, 1.0),
         r"fastnorm\.sara_adamw_step_: argument 'beta1' must be in \[0, 1\)"),
        ("adamw delta dtype", lambda: ops.sara_adamw_step_([d.half()], [d.half()], [d.half()], [d.half()], [w.clone()],
                                                           [idx], [w.reshape(-1)[:3].clone()], 1e-3, 0.9, 0.999, 1e-8,
                                                           0.0, 0.1, 0.1, False, 1.0),
         r"fastnorm\.sara_adamw_step_: argument 'deltas\[0\]' must be float32 or float64, got float16"),
        ("spmm dense rows", lambda: ops.sara_spmm(idx, d, None, 5, 6, torch.zeros(5, 2), False, False),
         r"fastnorm\.sara_spmm: argument 'dense' must be 2-D with 6 \(cols\) rows"),
        ("composite wgrad", lambda: S.sara_linear(x, w, None, d, idx, None, "fast"),
         r"fastnorm\.sara_linear: argument 'wgrad' must be one of"),
        ("composite delta", lambda: S.sara_linear(x, w, None, torch.zeros(4), idx),
         r"fastnorm\.sara_linear: argument 'delta' must have shape \[3\]"),
    ]


@pytest.mark.parametrize("i", range(len(_bad_cases())))
def test_bad_inputs_raise_clear_errors(i):
    name, fn, pattern = _bad_cases()[i]
    with pytest.raises((RuntimeError, ValueError), match=pattern):
        fn()


# ---- empty masks -----------------------------------------------------------------------------------------------------------
def test_empty_mask_everywhere():
    e = torch.zeros(0, dtype=torch.int32)
    w = torch.randn(5, 6)
    go, x = torch.randn(4, 5), torch.randn(4, 6)
    assert S.sara_sddmm(go, x, e).shape == (0,)
    assert S.sara_conv2d_sddmm(torch.randn(1, 2, 3, 3), torch.randn(1, 2, 5, 5), e, None, [2, 2, 3, 3]).shape == (0,)
    assert torch.equal(S.sara_row_ptr(e, 5, 6), torch.zeros(6, dtype=torch.int32))
    w1 = w.clone()
    S.sara_scatter_(w1, e, torch.zeros(0), torch.zeros(0), 1.0)
    assert torch.equal(w1, w)
    assert torch.equal(S.sara_spmm(e, torch.zeros(0), None, 5, 6, torch.randn(6, 3)), torch.zeros(5, 3))
    S.sara_adamw_step_([torch.zeros(0)], [torch.zeros(0)], [torch.zeros(0)], [torch.zeros(0)], [w1], [e],
                       [torch.zeros(0)], lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1,
                       bias_correction1=0.1, bias_correction2=0.001)
    assert torch.equal(w1, w)
    d = torch.zeros(0, requires_grad=True)
    xx = x.clone().requires_grad_()
    y = S.sara_linear(xx, w, None, d, e)
    y.sum().backward()
    assert d.grad.shape == (0,) and xx.grad is not None
    # N = 0: zeros
    assert torch.equal(S.sara_sddmm(torch.zeros(0, 5), torch.zeros(0, 6), torch.tensor([2, 7], dtype=torch.int32)),
                       torch.zeros(2))


# ---- CUDA vs CPU (skipped without a GPU) ---------------------------------------------------------------------------------
cuda = pytest.mark.cuda


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_selection_histogram_scatter_match_cpu(dtype):
    w = special_weight(dtype, (301, 257), seed=20)
    wc = w.cuda()
    for theta in [3e-3, 1e-2]:
        i1, b1 = S.select_threshold(w, theta)
        i2, b2 = S.select_threshold(wc, theta)
        assert torch.equal(i2.cpu(), i1) and torch.equal(bits(b2.cpu()), bits(b1))
    nb = R.key_bits(dtype)
    h1 = torch.zeros(256, dtype=torch.int64)
    h2 = torch.zeros(256, dtype=torch.int64, device="cuda")
    S.sara_abs_histogram_(w, h1, nb - 8, 0, 0)
    S.sara_abs_histogram_(wc, h2, nb - 8, 0, 0)
    assert torch.equal(h2.cpu(), h1)
    k = 5000
    i1, _ = S.select_topk_smallest(w, k)
    i2, _ = S.select_topk_smallest(wc, k)
    assert torch.equal(i2.cpu(), i1)
    assert torch.equal(S.sara_row_ptr(i2, 301, 257).cpu(), S.sara_row_ptr(i1, 301, 257))
    dd = torch.float64 if dtype == torch.float64 else torch.float32
    delta = torch.randn(k, dtype=dd)
    base = w.reshape(-1)[i1.long()].clone()
    w1, w2 = w.clone(), wc.clone()
    S.sara_scatter_(w1, i1, base, delta, 0.3)
    S.sara_scatter_(w2, i2, base.cuda(), delta.cuda(), 0.3)
    assert torch.equal(bits(w2.cpu()), bits(w1))


@cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,cols,n", [(7, 64, 3), (129, 129, 1000), (320, 2560, 333), (1, 1, 17)])
def test_cuda_sddmm_matches_cpu(dtype, rows, cols, n):
    from conftest import poison_cuda_allocator
    g = torch.Generator().manual_seed(rows + cols + n)
    go = torch.randn(n, rows, generator=g).to(dtype)
    x = torch.randn(n, cols, generator=g).to(dtype)
    for k in sorted({1, max(1, rows * cols // 1000), max(1, rows * cols // 20), rows * cols}):
        idx = rand_indices(rows * cols, k, g)
        rp = S.sara_row_ptr(idx, rows, cols)
        ref = R.sara_sddmm(go, x, idx, None, cols).double()
        poison_cuda_allocator()
        for det in (False, True):
            out = S.sara_sddmm(go.cuda(), x.cuda(), idx.cuda(), rp.cuda(), cols, det).cpu()
            B = _sddmm_bound(go, x, idx, cols)
            rtol = 1e-12 if dtype == torch.float64 else 1e-5
            assert torch.all((out.double() - ref).abs() <= rtol * B + 1e-300)
        a = S.sara_sddmm(go.cuda(), x.cuda(), idx.cuda(), rp.cuda(), cols, True)
        b = S.sara_sddmm(go.cuda(), x.cuda(), idx.cuda(), rp.cuda(), cols, True)
        assert torch.equal(a, b)  # deterministic mode is bitwise reproducible


@cuda
@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_conv2d_sddmm_matches_cpu(case, dtype):
    B, C, O, H, W, kh, kw, st, pd, dl, G = case
    g = torch.Generator().manual_seed(21)
    x = torch.randn(B, C, H, W, generator=g).to(dtype)
    wshape = [O, C // G, kh, kw]
    y = F.conv2d(x.double(), torch.zeros(wshape, dtype=torch.float64), None, st, pd, dl, G)
    go = torch.randn(y.shape, generator=g).to(dtype)
    idx = rand_indices(math.prod(wshape), max(1, math.prod(wshape) // 10), g)
    rp = S.sara_row_ptr(idx, O, math.prod(wshape[1:]))
    cpu = S.sara_conv2d_sddmm(go, x, idx, None, wshape, st, pd, dl, G)
    for det in (False, True):
        out = S.sara_conv2d_sddmm(go.cuda(), x.cuda(), idx.cuda(), rp.cuda(), wshape, st, pd, dl, G, det).cpu()
        torch.testing.assert_close(out, cpu, rtol=1e-5, atol=1e-4)


@cuda
@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_cuda_adamw_and_spmm_match_cpu(wdtype):
    g = torch.Generator().manual_seed(22)
    w = torch.randn(100, 70, generator=g).to(wdtype)
    idx = rand_indices(7000, 900, g)
    base = w.reshape(-1)[idx.long()].clone()
    state = [torch.randn(900, generator=g) * 1e-2 for _ in range(2)] + [torch.rand(900, generator=g) * 1e-3]
    grad = torch.randn(900, generator=g)
    args = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, bias_correction1=0.3,
                bias_correction2=0.002)
    c = [t.clone() for t in state]
    d = [t.cuda() for t in state]
    w1, w2 = w.clone(), w.cuda()
    S.sara_adamw_step_([c[0]], [c[1]], [c[2]], [grad], [w1], [idx], [base], **args)
    S.sara_adamw_step_([d[0]], [d[1]], [d[2]], [grad.cuda()], [w2], [idx.cuda()], [base.cuda()], **args)
    for a, b in zip(c, d):
        assert torch.equal(a, b.cpu())  # same FASTNORM_HD element math, no FMA contraction: bitwise
    assert torch.equal(bits(w1), bits(w2.cpu()))
    vals = torch.randn(900, generator=g)
    rp = S.sara_row_ptr(idx, 100, 70)
    for tr in (False, True):
        D = torch.randn(100 if tr else 70, 12, generator=g)
        ref = S.sara_spmm(idx, vals, rp, 100, 70, D, tr)
        for det in (False, True):
            out = S.sara_spmm(idx.cuda(), vals.cuda(), rp.cuda(), 100, 70, D.cuda(), tr, det).cpu()
            torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


@cuda
def test_cuda_linear_backward_no_dense_dw_and_sync_free():
    w = torch.randn(1024, 1536, device="cuda")
    idx = rand_indices(w.numel(), w.numel() // 20).cuda()
    rp = S.sara_row_ptr(idx, 1024, 1536)
    x = torch.randn(512, 1536, device="cuda")
    d = torch.zeros(idx.numel(), device="cuda", requires_grad=True)
    y = S.sara_linear(x, w, None, d, idx, rp, "sddmm")
    gy = torch.randn_like(y)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.set_sync_debug_mode("error")
    try:
        torch.autograd.grad(y, d, gy)
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert torch.cuda.max_memory_allocated() - base < w.numel() * w.element_size()

"""Tests of CRMSNorm and the Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm conversions (specs/norm.md §3.5, §6)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import fastnorm
from fastnorm.reference import norm_crms as ref

from conftest import poison_cuda_allocator, rel_err, tol

FLOATS = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def make(shape, dtype, seed=0, device="cpu", scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale + shift).to(dtype).to(device)


def rows_for(n):
    return max(2, min(64, 200_000 // max(n, 1)))


def d64(t):
    return None if t is None else t.double()


# ---- forward and backward against the float64 reference ---------------------------------------------
@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [1, 7, 127, 767, 1023, 4095, 8192])
def test_forward(dtype, n):
    m = rows_for(n)
    x = make((m, n), dtype, 1, shift=0.5)  # a nonzero sum exercises the s^2 term
    w, b = make((n,), dtype, 2), make((n,), dtype, 3)
    y = fastnorm.crms_norm(x, w, b)
    assert y.dtype == dtype and y.shape == x.shape
    assert rel_err(y, ref.crms_norm(x.double(), w.double(), b.double())) < tol(dtype)
    y0 = fastnorm.crms_norm(x)
    assert rel_err(y0, ref.crms_norm(x.double())) < tol(dtype)


@pytest.mark.parametrize("lead", [(), (3,), (2, 3, 5)])
@pytest.mark.parametrize("affine", ["none", "weight", "both"])
def test_leading_dims_and_affine(lead, affine):
    n = 95
    x = make(lead + (n,), torch.float32, 4)
    w = make((n,), torch.float32, 5) if affine != "none" else None
    b = make((n,), torch.float32, 6) if affine == "both" else None
    y = fastnorm.crms_norm(x, w, b, 1e-4)
    assert y.shape == x.shape
    assert rel_err(y, ref.crms_norm(x.double(), d64(w), d64(b), 1e-4)) < 1e-5


@pytest.mark.parametrize("xdt", [torch.bfloat16, torch.float16])
def test_low_precision_input_with_float32_weight_and_out_dtype(xdt):
    n = 1000
    x, w = make((16, n), xdt, 7), make((n,), torch.float32, 8)
    y = fastnorm.crms_norm(x, w)
    assert y.dtype == xdt
    assert rel_err(y, ref.crms_norm(x.double(), w.double())) < 1e-2
    y32 = fastnorm.crms_norm(x, w, out_dtype=torch.float32)
    assert y32.dtype == torch.float32
    assert rel_err(y32, ref.crms_norm(x.double(), w.double())) < 1e-5


# ---- the identity: crms_norm(x_full[:-1]) == rms_norm(x_full)[:-1] for zero-mean x_full -------------
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("d", [2, 8, 768, 1024])
def test_identity_with_rms_norm(dtype, d):
    full = make((37, d), torch.float64, 9, scale=2.0)
    full = (full - full.mean(-1, keepdim=True)).to(dtype)
    eps = 1e-5
    y = fastnorm.crms_norm(full[:, :-1], eps=eps)
    expect = fastnorm.rms_norm(full, (d,), eps=eps)[:, :-1]
    torch_rms = F.rms_norm(full, (d,), eps=eps)[:, :-1]
    bound = 1e-12 if dtype == torch.float64 else 2e-6
    assert (y - expect).abs().max().item() <= bound
    assert (y - torch_rms).abs().max().item() <= bound


def test_gradcheck():
    for affine in (False, True):
        x = make((5, 9), torch.float64, 10, shift=0.3).requires_grad_()
        w = make((9,), torch.float64, 11).requires_grad_() if affine else None
        b = make((9,), torch.float64, 12).requires_grad_() if affine else None
        inputs = (x, w, b) if affine else (x,)
        fn = (lambda x, w, b: fastnorm.crms_norm(x, w, b, 1e-3)) if affine else \
            (lambda x: fastnorm.crms_norm(x, eps=1e-3))
        assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("n", [7, 767, 4095])
def test_backward_against_reference(dtype, n):
    m = rows_for(n)
    x, w, b, dy = make((m, n), dtype, 13, shift=0.2), make((n,), dtype, 14), make((n,), dtype, 15), \
        make((m, n), dtype, 16)
    xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
    fastnorm.crms_norm(xs, ws, bs).backward(dy)
    xr, wr, br = (t.double().requires_grad_() for t in (x, w, b))
    ref.crms_norm(xr, wr, br).backward(dy.double())
    t = tol(dtype) if dtype != torch.float32 else 1e-5
    for got, want in ((xs.grad, xr.grad), (ws.grad, wr.grad), (bs.grad, br.grad)):
        assert got.dtype == dtype
        assert rel_err(got, want) < t


def test_backward_needs_only_some_inputs():
    n = 33
    x, w = make((6, n), torch.float32, 17).requires_grad_(), make((n,), torch.float32, 18)
    fastnorm.crms_norm(x, w).sum().backward()
    xr = x.detach().double().requires_grad_()
    ref.crms_norm(xr, w.double()).sum().backward()
    assert rel_err(x.grad, xr.grad) < 1e-5
    x2 = x.detach()
    w2 = w.clone().requires_grad_()
    b2 = torch.zeros(n).requires_grad_()
    fastnorm.crms_norm(x2, w2, b2).sum().backward()
    assert w2.grad is not None and torch.equal(b2.grad, torch.full((n,), 6.0))


def test_backward_deterministic_and_thread_independent():
    n = 3001
    x, w, b, dy = make((400, n), torch.float32, 19), make((n,), torch.float32, 20), make((n,), torch.float32, 21), \
        make((400, n), torch.float32, 22)
    dy_before = dy.clone()

    def grads():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        fastnorm.crms_norm(xs, ws, bs).backward(dy)
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


def test_strided_rows_without_copy():
    base = make((64, 2000), torch.float32, 23)
    x = base[:, 100:1123]
    with torch.profiler.profile() as prof:
        y = fastnorm.crms_norm(x)
    names = {e.name for e in prof.events()}
    assert not any(k in names for k in ("aten::contiguous", "aten::clone", "aten::copy_"))
    assert torch.equal(y, fastnorm.crms_norm(x.contiguous()))
    misaligned = make((8, 130), torch.bfloat16, 24)[:, 1:128]
    assert torch.equal(fastnorm.crms_norm(misaligned), fastnorm.crms_norm(misaligned.contiguous()))
    t = make((40, 12), torch.float32, 25).t()  # stride(-1) != 1: one copy, same result
    assert torch.equal(fastnorm.crms_norm(t), fastnorm.crms_norm(t.contiguous()))


# ---- errors and edge cases ------------------------------------------------------------------------------
def test_bad_inputs():
    x = make((4, 8), torch.float32, 26)
    with pytest.raises(ValueError, match=r"fastnorm.crms_norm: weight has shape \[7\] but x's last dimension is 8"):
        fastnorm.crms_norm(x, torch.ones(7))
    with pytest.raises(ValueError, match=r"fastnorm.crms_norm: bias has shape \[8, 1\]"):
        fastnorm.crms_norm(x, None, torch.ones(8, 1))
    with pytest.raises(ValueError, match="fastnorm.crms_norm: eps must be a finite value > 0, got 0.0"):
        fastnorm.crms_norm(x, eps=0.0)
    with pytest.raises(ValueError, match="fastnorm.crms_norm: eps must be a finite value > 0, got inf"):
        fastnorm.crms_norm(x, eps=float("inf"))
    with pytest.raises(TypeError, match="fastnorm.crms_norm: input must be float32, float16, bfloat16 or float64"):
        fastnorm.crms_norm(torch.ones(3, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="fastnorm.crms_norm: input must be"):
        fastnorm.crms_norm(torch.ones(3, 4, dtype=torch.complex64))
    with pytest.raises(TypeError, match="fastnorm.crms_norm: out_dtype must be one of"):
        fastnorm.crms_norm(x, out_dtype=torch.int64)
    with pytest.raises(ValueError, match="fastnorm.crms_norm: input must have at least one dimension"):
        fastnorm.crms_norm(torch.tensor(1.0))


def test_bad_inputs_at_the_op_level():
    op = torch.ops.fastnorm.crms_norm
    x = make((4, 8), torch.float32, 27)
    with pytest.raises(RuntimeError, match=r"fastnorm.crms_norm: weight has shape \[3\] but x's last dimension is 8"):
        op(x, torch.ones(3), None, 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.crms_norm: eps must be a finite value > 0"):
        op(x, None, None, -1.0)
    with pytest.raises(RuntimeError, match="fastnorm.crms_norm: weight is float64 but x is float32"):
        op(x, torch.ones(8, dtype=torch.float64), None, 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.crms_norm: x must be float32, float16, bfloat16 or float64"):
        op(torch.ones(2, 3, dtype=torch.int64), None, None, 1e-5)
    with pytest.raises(RuntimeError, match="fastnorm.crms_norm: out_dtype must be a float dtype code"):
        op(x, None, None, 1e-5, 7)
    y, rstd = op(x, None, None, 1e-5)
    bop = torch.ops.fastnorm.crms_norm_backward
    with pytest.raises(RuntimeError, match=r"fastnorm.crms_norm_backward: dy has shape \[4, 7\]"):
        bop(torch.ones(4, 7), x, rstd, None, None)
    with pytest.raises(RuntimeError, match="fastnorm.crms_norm_backward: rstd has 3 elements but x has 4 rows"):
        bop(y, x, rstd[:3], None, None)
    with pytest.raises(RuntimeError, match="fastnorm.crms_norm_backward: rstd must be float32"):
        bop(y, x, rstd.double(), None, None)


@pytest.mark.cuda
def test_mixed_devices_rejected():
    x = torch.randn(4, 8, device="cuda")
    with pytest.raises(RuntimeError, match="fastnorm.crms_norm: weight is on cpu"):
        fastnorm.crms_norm(x, torch.randn(8))


def test_empty_tensors():
    x = torch.empty(0, 16, requires_grad=True)
    w = torch.ones(16, requires_grad=True)
    b = torch.zeros(16, requires_grad=True)
    y = fastnorm.crms_norm(x, w, b)
    assert y.shape == (0, 16)
    y.sum().backward()
    assert x.grad.shape == (0, 16) and torch.equal(w.grad, torch.zeros(16)) and torch.equal(b.grad, torch.zeros(16))
    # N = 0: d = 1, the row is the single coordinate 0; y is empty and rstd = eps^(-1/2).
    y, rstd = torch.ops.fastnorm.crms_norm(torch.empty(3, 0), None, None, 0.25)
    assert y.shape == (3, 0) and torch.equal(rstd, torch.full((3,), 2.0))


def test_nan_stays_in_its_row():
    x = make((6, 50), torch.float32, 28)
    x[2, 7] = float("nan")
    x.requires_grad_()
    y = fastnorm.crms_norm(x)
    assert torch.isnan(y[2]).all() and not torch.isnan(y[[0, 1, 3, 4, 5]]).any()
    y.sum().backward()
    assert torch.isnan(x.grad[2]).all() and not torch.isnan(x.grad[[0, 1, 3, 4, 5]]).any()


# ---- opcheck, compile, memory, module -------------------------------------------------------------------
def _opcheck_cases():
    x = make((6, 37), torch.float32, 29).requires_grad_()
    xb = make((2, 3, 40), torch.bfloat16, 30).requires_grad_()
    w, b = make((37,), torch.float32, 31).requires_grad_(), make((37,), torch.float32, 32).requires_grad_()
    wb = make((40,), torch.float32, 33).requires_grad_()
    y, rstd = torch.ops.fastnorm.crms_norm(x.detach(), w.detach(), b.detach(), 1e-5)
    return [
        (torch.ops.fastnorm.crms_norm.default, (x, w, b, 1e-5)),
        (torch.ops.fastnorm.crms_norm.default, (x, None, None, 1e-5, 3 - 3)),
        (torch.ops.fastnorm.crms_norm.default, (xb, wb, None, 1e-6, 0)),
        (torch.ops.fastnorm.crms_norm_backward.default, (torch.ones_like(y), x.detach(), rstd, w.detach(),
                                                         b.detach(), True, True, False)),
    ]


@pytest.mark.parametrize("case", range(4))
def test_opcheck(case):
    op, args = _opcheck_cases()[case]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_fullgraph(backend):
    torch._dynamo.reset()
    n = 63
    m = torch.nn.Sequential(torch.nn.Linear(n, n), fastnorm.nn.CRMSNorm(n, elementwise_affine=True),
                            torch.nn.Linear(n, 5))
    x = make((4, 7, n), torch.float32, 34).requires_grad_()
    cm = torch.compile(m, fullgraph=True, backend=backend)
    y1, y2 = m(x), cm(x)
    assert torch.allclose(y1, y2, atol=1e-6, rtol=1e-6)
    g1 = torch.autograd.grad(y1.sum(), [x] + list(m.parameters()))
    g2 = torch.autograd.grad(y2.sum(), [x] + list(m.parameters()))
    for a, b in zip(g1, g2):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-5)


def test_compile_functional_equal_to_eager_bitwise():
    torch._dynamo.reset()
    x = make((5, 48), torch.bfloat16, 35)
    w = make((48,), torch.float32, 36)
    f = lambda x: fastnorm.crms_norm(x, w, None, 1e-6)  # noqa: E731
    assert torch.equal(f(x), torch.compile(f, fullgraph=True, backend="aot_eager")(x))


def test_saved_bytes():
    m, n = 64, 511
    x = make((m, n), torch.bfloat16, 37).requires_grad_()
    w = make((n,), torch.bfloat16, 38).requires_grad_()
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fastnorm.crms_norm(x, w)
    params = {w.untyped_storage().data_ptr()}
    total = sum(t.numel() * t.element_size() for t in saved
                if t is not None and t.untyped_storage().data_ptr() not in params)
    assert total == x.numel() * x.element_size() + 4 * m
    y.sum().backward()


@settings(max_examples=30, deadline=None)
@given(lead=st.lists(st.integers(1, 4), max_size=3), n=st.integers(1, 300),
       dtype=st.sampled_from(FLOATS), pad=st.integers(0, 3), affine=st.booleans())
def test_fuzz_shapes_strides_dtypes(lead, n, dtype, pad, affine):
    base = make(tuple(lead) + (n + pad,), dtype, n + pad, shift=0.3)
    x = base[..., pad:]  # strided, possibly misaligned rows
    w = make((n,), dtype, 1) if affine else None
    y = fastnorm.crms_norm(x, w)
    assert y.shape == x.shape and y.is_contiguous()
    assert torch.equal(y, fastnorm.crms_norm(x.contiguous(), w))
    assert rel_err(y, ref.crms_norm(x.double(), d64(w))) < tol(dtype)


def test_double_backward_is_a_clear_error():
    x = make((3, 8), torch.float64, 39).requires_grad_()
    (g,) = torch.autograd.grad((fastnorm.crms_norm(x) ** 2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="fastnorm.crms_norm: double backward"):
        g.sum().backward()


def test_module():
    m = fastnorm.nn.CRMSNorm(15)
    assert list(m.state_dict()) == [] and m.weight is None
    r = ref.CRMSNorm(15)
    x = make((3, 15), torch.float32, 40)
    assert rel_err(m(x), r(x.double())) < 1e-6
    ma = fastnorm.nn.CRMSNorm(15, eps=1e-6, elementwise_affine=True)
    assert sorted(ma.state_dict()) == ["bias", "weight"]
    ra = ref.CRMSNorm(15, eps=1e-6, elementwise_affine=True)
    ra.load_state_dict(ma.state_dict())
    assert rel_err(ma(x), ra(x)) < 1e-6
    res = make((3, 15), torch.float32, 41)
    y, s = ma.fused_add(x, res)
    assert torch.equal(s, x + res) and torch.equal(y, ma(x + res))


# ---- spec §6 test 10: Pre-LN -> Pre-RMSNorm / Pre-CRMSNorm conversion -------------------------------------
class Block(torch.nn.Module):
    def __init__(self, d, heads, hidden):
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(d)
        self.q, self.k, self.v = (torch.nn.Linear(d, d) for _ in range(3))
        self.o = torch.nn.Linear(d, d)
        self.ln2 = torch.nn.LayerNorm(d)
        self.fc1 = torch.nn.Linear(d, hidden)
        self.fc2 = torch.nn.Linear(hidden, d)

    def forward(self, x):
        h = self.ln1(x)
        b, t, _ = h.shape
        q, k, v = (lin(h).view(b, t, self.heads, -1).transpose(1, 2) for lin in (self.q, self.k, self.v))
        a = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, -1) @ v
        x = x + self.o(a.transpose(1, 2).reshape(b, t, -1))  # stream width from the writer, not hard-coded
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class TinyViT(torch.nn.Module):
    def __init__(self, vocab=50, d=24, t=9, blocks=2, classes=7):
        super().__init__()
        self.tok = torch.nn.Embedding(vocab, d)
        self.pos = torch.nn.Parameter(torch.randn(t + 1, d))
        self.cls = torch.nn.Parameter(torch.randn(1, 1, d))
        self.blocks = torch.nn.ModuleList(Block(d, 4, 2 * d) for _ in range(blocks))
        self.ln_f = torch.nn.LayerNorm(d)
        self.head = torch.nn.Linear(d, classes)

    def forward(self, ids):
        x = self.tok(ids)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln_f(x[:, 0]))


def tiny_vit(dtype, seed=0):
    torch.manual_seed(seed)
    m = TinyViT().to(dtype)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, torch.nn.LayerNorm):  # random affine, so the folds matter
                mod.weight.copy_(1 + 0.5 * torch.randn_like(mod.weight))
                mod.bias.copy_(0.5 * torch.randn_like(mod.bias))
    return m.eval()


def vit_spec(blocks=2):
    writers = ["tok", "pos", "cls"]
    norms = {"ln_f": ["head"]}
    for i in range(blocks):
        writers += [f"blocks.{i}.o", f"blocks.{i}.fc2"]
        norms[f"blocks.{i}.ln1"] = [f"blocks.{i}.q", f"blocks.{i}.k", f"blocks.{i}.v"]
        norms[f"blocks.{i}.ln2"] = [f"blocks.{i}.fc1"]
    return fastnorm.PreLNSpec(writers=writers, norms=norms)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("target", ["rms", "rms_fold", "crms"])
def test_pre_ln_conversion(dtype, target):
    model = tiny_vit(dtype)
    ids = torch.randint(0, 50, (5, 9), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expect = model(ids)
        if target == "crms":
            conv = fastnorm.pre_ln_to_pre_crmsnorm(model, vit_spec())
            assert isinstance(conv.ln_f, fastnorm.nn.CRMSNorm) and conv.tok.weight.shape == (50, 23)
            assert conv.blocks[0].q.in_features == 23 and conv.blocks[1].fc2.out_features == 23
            assert conv.pos.shape == (10, 23) and conv.cls.shape == (1, 1, 23)
        else:
            conv = fastnorm.pre_ln_to_pre_rmsnorm(model, vit_spec(), fold_affine=target == "rms_fold")
            assert isinstance(conv.blocks[0].ln1, fastnorm.nn.RMSNorm)
            assert (conv.blocks[0].ln1.weight is None) == (target == "rms_fold")
        assert conv is model
        got = conv(ids)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in conv.modules())
    if dtype == torch.float64:
        assert (got - expect).abs().max().item() < 1e-10
    else:
        assert rel_err(got, expect) < 1e-4


def test_pre_ln_conversion_refuses_an_unlisted_stream_reader():
    class Probed(TinyViT):
        def __init__(self):
            super().__init__()
            self.probe = torch.nn.Linear(24, 3)  # reads the raw stream, not through a norm

        def forward(self, ids):
            return super().forward(ids), self.probe(self.tok(ids))

    for convert in (fastnorm.pre_ln_to_pre_crmsnorm,
                    lambda m, s: fastnorm.pre_ln_to_pre_rmsnorm(m, s, fold_affine=True)):
        m = Probed().double()
        before = {k: v.clone() for k, v in m.state_dict().items()}
        with pytest.raises(ValueError, match=r"'probe' \(nn.Linear with in_features=24\) reads the residual stream"):
            convert(m, vit_spec())
        assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())  # refused before any change


def test_pre_ln_conversion_refuses_incomplete_specs():
    spec = vit_spec()
    m = tiny_vit(torch.float64)
    bad = fastnorm.PreLNSpec(writers=[w for w in spec.writers if w != "cls"], norms=spec.norms)
    with pytest.raises(ValueError, match="fastnorm.pre_ln_to_pre_crmsnorm: Parameter 'cls' has last dim 24"):
        fastnorm.pre_ln_to_pre_crmsnorm(m, bad)
    bad = fastnorm.PreLNSpec(writers=spec.writers, norms={k: v for k, v in spec.norms.items() if k != "ln_f"})
    with pytest.raises(ValueError, match="'ln_f' is a LayerNorm of width 24 that is not listed"):
        fastnorm.pre_ln_to_pre_rmsnorm(m, bad)
    bad = fastnorm.PreLNSpec(writers=spec.writers + ["blocks.0.fc1"], norms=spec.norms)
    with pytest.raises(ValueError, match="writer 'blocks.0.fc1' must be"):
        fastnorm.pre_ln_to_pre_rmsnorm(m, bad)
    with pytest.raises(ValueError, match="'nope.w' is not in the model"):
        fastnorm.pre_ln_to_pre_rmsnorm(m, fastnorm.PreLNSpec(writers=["nope.w"], norms=spec.norms))


# ---- CUDA: the GPU kernels against the CPU kernels ------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("n", [1, 7, 767, 1023, 4095, 12289])
def test_cuda_matches_cpu(dtype, n):
    m = rows_for(n)
    x, w, b, dy = make((m, n), dtype, 42, shift=0.3), make((n,), dtype, 43), make((n,), dtype, 44), \
        make((m, n), dtype, 45)

    def run(device):
        xs, ws, bs = (t.to(device).requires_grad_() for t in (x, w, b))
        poison_cuda_allocator()
        y = fastnorm.crms_norm(xs, ws, bs)
        y.backward(dy.to(device))
        return [y.detach().cpu(), xs.grad.cpu(), ws.grad.cpu(), bs.grad.cpu()]

    cpu, gpu = run("cpu"), run("cuda")
    for c, g in zip(cpu, gpu):
        assert not torch.isnan(g).any()
        assert rel_err(g, c) < (1e-5 if dtype in (torch.float32, torch.float64) else 1e-2)
    assert rel_err(gpu[0], ref.crms_norm(x.double(), w.double(), b.double())) < tol(dtype)
    assert torch.equal(run("cuda")[2], gpu[2])  # dweight reproducible


@pytest.mark.cuda
def test_cuda_strided_empty_and_opcheck():
    base = make((64, 3000), torch.bfloat16, 46, device="cuda")
    x = base[:, 1:2048]
    assert torch.equal(fastnorm.crms_norm(x).cpu(), fastnorm.crms_norm(x.cpu()))
    xe = torch.empty(0, 16, device="cuda", requires_grad=True)
    w = torch.ones(16, device="cuda", requires_grad=True)
    fastnorm.crms_norm(xe, w).sum().backward()
    assert torch.equal(w.grad.cpu(), torch.zeros(16))
    for op, args in _opcheck_cases():
        moved = tuple(a.detach().cuda().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                      for a in args)
        torch.library.opcheck(op, moved)

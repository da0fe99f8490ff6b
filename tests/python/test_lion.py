"""Tests of the lion_step_ op (specs/lion.md §6, op-level items; the optimizer's are in test_lion_optim.py)."""
import math
import os

import pytest
import torch
from hypothesis import given, settings, strategies as st

import fastnorm
from fastnorm.reference import lion as ref

from conftest import HAS_CUDA, poison_cuda_allocator, ulp_distance

# (param dtype, state dtype, master weights)
CONFIGS = {
    "fp32": (torch.float32, torch.float32, False),
    "fp64": (torch.float64, torch.float64, False),
    "bf16/fp32": (torch.bfloat16, torch.float32, False),
    "fp16/fp32": (torch.float16, torch.float32, False),
    "bf16/bf16": (torch.bfloat16, torch.bfloat16, False),
    "fp16/fp16": (torch.float16, torch.float16, False),
    "bf16+master": (torch.bfloat16, torch.float32, True),
    "fp16+master": (torch.float16, torch.float32, True),
}
NUMELS = [0, 1, 7, 1023, 32769, 65537, 300000]


def make(shapes, pdt, sdt, master, device="cpu", seed=0, m_scale=0.1):
    """Fresh random params, grads, exp_avgs (and masters) of the given shapes."""
    gen = torch.Generator().manual_seed(seed)
    ps, gs, ms, ws = [], [], [], []
    for shape in shapes:
        w = torch.randn(shape, generator=gen, dtype=torch.float64)
        ps.append(w.to(pdt).to(device))
        gs.append(torch.randn(shape, generator=gen, dtype=torch.float64).to(pdt).to(device))
        ms.append((m_scale * torch.randn(shape, generator=gen, dtype=torch.float64)).to(sdt).to(device))
        ws.append(w.to(torch.float32).to(device))
    return ps, gs, ms, (ws if master else None)


def clone_all(*lists):
    return [None if l is None else [t.clone() for t in l] for l in lists]


def bits_equal(a, b):
    """Bitwise equality with NaN == NaN."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    both_nan = torch.isnan(a) & torch.isnan(b)
    return bool(((a == b) | both_nan).all()) and bool((torch.signbit(a) == torch.signbit(b))[~both_nan].all())


def run_both(ps, gs, ms, ws, **kw):
    """Steps the op in place and returns the exact-T reference's prediction from the same inputs."""
    expect = ref.lion_step(ps, gs, ms, master_params=ws, precision="exact", **kw)
    fastnorm.lion_step_(ps, gs, ms, master_params=ws, **kw)
    return expect


def assert_matches(ps, ms, ws, expect):
    for i, (p, e) in enumerate(zip(ps, expect.params)):
        assert bits_equal(p, e), f"params[{i}] differs in {int((p != e).sum())} elements"
    for i, (m, e) in enumerate(zip(ms, expect.exp_avgs)):
        assert bits_equal(m, e), f"exp_avgs[{i}] differs"
    if ws is not None:
        for i, (w, e) in enumerate(zip(ws, expect.master_params)):
            assert bits_equal(w, e), f"master_params[{i}] differs"


# ---- 1. opcheck --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", ["fp32", "bf16/fp32", "bf16+master"])
@pytest.mark.parametrize("extras", ["plain", "tensors", "cautious_sr"])
def test_opcheck(cfg, extras):
    pdt, sdt, master = CONFIGS[cfg]
    ps, gs, ms, ws = make([(5, 3), (17,)], pdt, sdt, master)
    kw = {}
    if extras == "tensors":
        kw = dict(lr_tensor=torch.tensor(1e-3), grad_scale=torch.tensor(2.0), found_inf=torch.tensor(0.0),
                  sr_step=torch.tensor(3))
    elif extras == "cautious_sr":
        kw = dict(cautious=True, stochastic_rounding=(pdt == torch.bfloat16 and not master), sr_seed=7)
    if master:
        torch.library.opcheck(torch.ops.fastnorm.lion_step_.master, (ps, gs, ms, ws, 1e-3, 0.9, 0.99, 0.1), kw)
    else:
        torch.library.opcheck(torch.ops.fastnorm.lion_step_.default, (ps, gs, ms, 1e-3, 0.9, 0.99, 0.1), kw)


# ---- 2. reference sweep -------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("numel", NUMELS)
def test_matches_exact_reference(cfg, numel):
    pdt, sdt, master = CONFIGS[cfg]
    ps, gs, ms, ws = make([(numel,)], pdt, sdt, master, seed=numel)
    expect = run_both(ps, gs, ms, ws, lr=1e-3, weight_decay=0.1)
    assert_matches(ps, ms, ws, expect)


def _ulp(x: torch.Tensor) -> torch.Tensor:
    a = x.abs()
    return torch.nextafter(a, torch.full_like(a, math.inf)) - a


@pytest.mark.parametrize("cfg", list(CONFIGS))
def test_bounds_against_float64(cfg):
    """§4: signs agree outside the band eps_c; p and m within the table's bounds where they agree."""
    pdt, sdt, master = CONFIGS[cfg]
    lr = 1e-3
    ps, gs, ms, ws = make([(20000,)], pdt, sdt, master, seed=1)
    p0, m0, w0, g = ps[0].clone(), ms[0].clone(), None if ws is None else ws[0].clone(), gs[0]
    r64 = ref.lion_step(ps, gs, ms, master_params=ws, lr=lr, weight_decay=0.1, precision="float64")
    fastnorm.lion_step_(ps, gs, ms, master_params=ws, lr=lr, weight_decay=0.1)
    T = torch.float64 if pdt == torch.float64 else torch.float32
    u = 2.0 ** -53 if T == torch.float64 else 2.0 ** -24
    a1m, b1g = (0.9 * m0.double()).abs(), (0.1 * g.double()).abs()
    c_ref = 0.9 * m0.double() + 0.1 * g.double()
    outside = c_ref.abs() > 4 * u * (a1m + b1g)
    x0 = (w0 if master else p0).double()
    if pdt in (torch.float32, torch.float64) or master:
        x_now = (ws[0] if master else ps[0]).double()
        sign_fast = torch.sign(x0 * (1 - lr * 0.1) - x_now)  # the step's direction: +-1, or 0 for no move
        agree = sign_fast == torch.sign(c_ref)
        assert bool(agree[outside].all()), "sign disagrees outside the rounding band"
        p_ref = r64.params[0]
        bound = 2 * _ulp(torch.maximum(p_ref.abs(), torch.full_like(p_ref, lr)).to(T)).double()
        assert bool(((x_now - p_ref).abs() <= bound)[agree].all())
        if master:
            assert bits_equal(ps[0], ws[0].to(pdt))
    else:
        # 16-bit params: p within 1 ulp of P at p_ref wherever c is outside the band.
        d = ulp_distance(ps[0], r64.params[0].to(pdt))
        assert bool((d <= 1)[outside].all())
    m_ref = r64.exp_avgs[0]
    m_bound = 2 * u * ((0.99 * m0.double()).abs() + (0.01 * g.double()).abs())
    if sdt in (torch.float32, torch.float64):
        assert bool(((ms[0].double() - m_ref).abs() <= m_bound + 1e-300).all())
    else:
        assert int(ulp_distance(ms[0], m_ref.to(sdt)).max()) <= 1


@pytest.mark.parametrize("count", [1, 50, 500])
def test_lists_of_many_tensors(count):
    shapes = [((i * 37) % 1100 + 1,) for i in range(count)]
    ps, gs, ms, ws = make(shapes, torch.float32, torch.float32, False, seed=count)
    expect = run_both(ps, gs, ms, ws, lr=1e-3, weight_decay=0.1)
    assert_matches(ps, ms, ws, expect)


def test_zero_dim_channels_last_and_unaligned():
    storage = torch.randn(40001)
    p_un = storage[1:]  # storage_offset 1: unaligned
    g_un = torch.randn(40001)[1:]
    m_store = torch.zeros(40001)
    m_un = m_store[1:]
    p_cl = torch.randn(2, 8, 5, 7).to(memory_format=torch.channels_last)
    g_cl = torch.randn(2, 8, 5, 7).to(memory_format=torch.channels_last)
    m_cl = torch.zeros_like(p_cl)
    p0, g0, m0 = torch.randn(()), torch.randn(()), torch.randn(())
    ps, gs, ms = [p_un, p_cl, p0], [g_un, g_cl, g0], [m_un, m_cl, m0]
    expect = ref.lion_step(ps, gs, ms, lr=1e-3, weight_decay=0.1, precision="exact")
    fastnorm.lion_step_(ps, gs, ms, lr=1e-3, weight_decay=0.1)
    assert_matches(ps, ms, None, expect)
    assert m_store[0] == 0  # nothing outside the view was written


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(list(CONFIGS)[:6]), st.integers(0, 5000)), min_size=0, max_size=8),
       st.booleans(), st.booleans())
def test_fuzz_list_composition(items, cautious, maximize):
    ps, gs, ms = [], [], []
    for k, (cfg, n) in enumerate(items):
        pdt, sdt, _ = CONFIGS[cfg]
        p, g, m, _ = make([(n,)], pdt, sdt, False, seed=k * 1000 + n)
        ps += p
        gs += g
        ms += m
    expect = run_both(ps, gs, ms, None, lr=3e-4, weight_decay=0.05, cautious=cautious, maximize=maximize)
    assert_matches(ps, ms, None, expect)


def test_thread_count_independent():
    ps, gs, ms, _ = make([(300001,), (70000,)], torch.float32, torch.float32, False, seed=3)
    a = clone_all(ps, ms)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fastnorm.lion_step_(a[0], gs, a[1], lr=1e-3, weight_decay=0.1, cautious=True)
        torch.set_num_threads(max(2, old))
        fastnorm.lion_step_(ps, gs, ms, lr=1e-3, weight_decay=0.1, cautious=True)
    finally:
        torch.set_num_threads(old)
    assert all(bits_equal(x, y) for x, y in zip(a[0] + a[1], ps + ms))


# ---- 3. sign --------------------------------------------------------------------------------------------------
def test_sign_zero_nan_inf():
    p = torch.tensor([0.5, -0.5, 0.25, 1.0, float("nan"), 2.0])
    g = torch.tensor([0.0, -0.0, float("nan"), float("inf"), 1.0, 0.0])
    m = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, float("nan")])
    lr = 1e-2
    for policy in ("propagate", "torch"):
        pp, mm = p.clone(), m.clone()
        fastnorm.lion_step_([pp], [g], [mm], lr=lr, nan_policy=policy)
        assert pp[0] == 0.5 and pp[1] == -0.5  # c = +-0: no move
        assert pp[3] == torch.tensor(1.0) - torch.tensor(lr)  # +Inf g gives sign +1
        assert torch.isnan(pp[4])  # NaN p propagates
        assert torch.isnan(mm[2]) and torch.isnan(mm[5])
        if policy == "propagate":
            assert torch.isnan(pp[2]) and torch.isnan(pp[5])
        else:
            assert pp[2] == 0.25 and pp[5] == 2.0  # sign(NaN) = 0: the element freezes


# ---- 5 (op level). AMP scalars -----------------------------------------------------------------------------
def test_found_inf_and_grad_scale():
    ps, gs, ms, ws = make([(1000,), (33,)], torch.bfloat16, torch.float32, True, seed=4)
    before = clone_all(ps, ms, ws)
    fastnorm.lion_step_(ps, gs, ms, master_params=ws, lr=1e-3, weight_decay=0.1, found_inf=torch.tensor(1.0),
                        grad_scale=torch.tensor(8.0))
    for a, b in zip(before[0] + before[1] + before[2], ps + ms + ws):
        assert bits_equal(a, b)
    scaled = [g * 1024 for g in gs]  # a power of two: exact in bf16
    a = clone_all(ps, ms, ws)
    fastnorm.lion_step_(ps, scaled, ms, master_params=ws, lr=1e-3, grad_scale=torch.tensor(1024.0),
                        found_inf=torch.tensor(0.0))
    fastnorm.lion_step_(a[0], gs, a[1], master_params=a[2], lr=1e-3)
    for x, y in zip(ps + ms + ws, a[0] + a[1] + a[2]):
        assert bits_equal(x, y)
    assert torch.equal(scaled[0], gs[0] * 1024)  # grads are not written back


def test_maximize_equals_negated_grad():
    ps, gs, ms, _ = make([(5000,)], torch.float32, torch.float32, False, seed=5)
    a = clone_all(ps, ms)
    fastnorm.lion_step_(ps, gs, ms, lr=1e-3, weight_decay=0.1, maximize=True)
    fastnorm.lion_step_(a[0], [-g for g in gs], a[1], lr=1e-3, weight_decay=0.1)
    assert bits_equal(ps[0], a[0][0]) and bits_equal(ms[0], a[1][0])


@pytest.mark.parametrize("mode,ref_lr", [("paper", None), ("decoupled", 1e-2), ("corrected", 1e-2), ("fixed", None)])
def test_decay_modes_hand_formula(mode, ref_lr):
    lr, wd = 3e-3, 0.2
    delta = {"paper": lr * wd, "decoupled": lr * (wd / 1e-2), "corrected": ((lr * lr) / 1e-2) * wd,
             "fixed": wd}[mode]
    p = torch.full((4,), 2.0)
    g = torch.zeros(4)  # c = 0: only decay acts
    fastnorm.lion_step_([p], [g], [torch.zeros(4)], lr=lr, weight_decay=wd, decay_mode=mode, decay_ref_lr=ref_lr)
    expect = torch.tensor(2.0) * torch.tensor(1.0 - delta, dtype=torch.float32)
    assert torch.equal(p, expect.expand(4))
    # A tensor lr gives the same result as the float.
    p2 = torch.full((4,), 2.0)
    fastnorm.lion_step_([p2], [g], [torch.zeros(4)], lr=torch.tensor(lr, dtype=torch.float64), weight_decay=wd,
                        decay_mode=mode, decay_ref_lr=ref_lr)
    assert torch.equal(p, p2)


# ---- 8. cautious ---------------------------------------------------------------------------------------------
def test_cautious_matches_reference_and_zero_mask():
    ps, gs, ms, _ = make([(40000,), (9,)], torch.float32, torch.float32, False, seed=6, m_scale=1.0)
    expect = run_both(ps, gs, ms, None, lr=1e-3, weight_decay=0.1, cautious=True)
    assert_matches(ps, ms, None, expect)
    # All-zero mask: s*g <= 0 everywhere -> no move beyond decay.
    p = torch.full((100,), 1.0)
    m = torch.full((100,), 1.0)
    g = torch.full((100,), -1e-3)  # c > 0 but g < 0
    fastnorm.lion_step_([p], [g], [m], lr=1e-2, cautious=True)
    assert torch.equal(p, torch.full((100,), 1.0))


@pytest.mark.slow
def test_cautious_count_exact_past_2_24():
    """frac must come from an exact integer count: with n = 2^24 + 3 and count = 2^24 + 1 a float32 count
    would round to 2^24 and change q."""
    n = (1 << 24) + 3
    p = torch.zeros(n)
    m = torch.ones(n)
    g = torch.ones(n)
    g[:2] = -1e-3  # c > 0 everywhere; these two are masked
    fastnorm.lion_step_([p], [g], [m], lr=1.0, cautious=True)
    frac = torch.tensor(((1 << 24) + 1) / n, dtype=torch.float32)
    q = torch.tensor(1.0, dtype=torch.float32) / frac
    assert p[0] == 0 and p[1] == 0
    assert p[-1] == -q
    frac_fp32_count = torch.tensor(float(torch.tensor((1 << 24) + 1, dtype=torch.float32)) / n, dtype=torch.float32)
    assert q != torch.tensor(1.0) / frac_fp32_count or frac_fp32_count == frac


# ---- 9. stochastic rounding --------------------------------------------------------------------------------
def test_stochastic_rounding_bits_and_reproducibility():
    ps, gs, ms, _ = make([(1001,), (64,)], torch.bfloat16, torch.float32, False, seed=8)
    ms2 = [m.clone() for m in ms]
    a = [p.clone() for p in ps]
    b = [p.clone() for p in ps]
    c = [p.clone() for p in ps]
    kw = dict(lr=1e-3, weight_decay=0.1, stochastic_rounding=True, sr_seed=1234)
    expect = ref.lion_step(a, gs, ms, precision="exact", sr_step=5, **kw)
    fastnorm.lion_step_(a, gs, [m.clone() for m in ms], sr_step=5, **kw)
    fastnorm.lion_step_(b, gs, [m.clone() for m in ms], sr_step=torch.tensor(5), **kw)
    fastnorm.lion_step_(c, gs, ms2, sr_step=6, **kw)
    for x, y in zip(a, expect.params):
        assert bits_equal(x, y)
    assert all(bits_equal(x, y) for x, y in zip(a, b))
    assert not all(bits_equal(x, y) for x, y in zip(a, c))


def test_stochastic_rounding_unbiased():
    """The mean over 2000 seeds of SR(x2) lies within 4 sigma of x2."""
    n = 64
    p = (torch.linspace(0.5, 4.0, n)).bfloat16()
    g = torch.randn(n, generator=torch.Generator().manual_seed(0)).bfloat16()
    m = torch.zeros(n)
    lr = 1e-3
    x2 = ref.lion_step([p], [g], [m], lr=lr, precision="float64").params[0]
    acc = torch.zeros(n, dtype=torch.float64)
    sq = torch.zeros(n, dtype=torch.float64)
    seeds = 2000
    for s in range(seeds):
        q = p.clone()
        fastnorm.lion_step_([q], [g], [m.clone()], lr=lr, stochastic_rounding=True, sr_seed=s)
        acc += q.double()
        sq += q.double() ** 2
        assert bool((ulp_distance(q, x2.to(torch.bfloat16)) <= 1).all())
    mean = acc / seeds
    var = (sq / seeds - mean ** 2).clamp_min(0)
    sigma = (var / seeds).sqrt()
    lo_ulp = _ulp(x2.to(torch.bfloat16).float()).double()
    assert bool(((mean - x2).abs() <= 4 * sigma + 1e-3 * lo_ulp).all())


@pytest.mark.parametrize("case", ["fp16", "fp32", "master"])
def test_stochastic_rounding_errors(case):
    if case == "master":
        ps, gs, ms, ws = make([(8,)], torch.bfloat16, torch.float32, True)
        with pytest.raises(RuntimeError, match="stochastic_rounding"):
            fastnorm.lion_step_(ps, gs, ms, master_params=ws, lr=1e-3, stochastic_rounding=True)
        return
    dt = torch.float16 if case == "fp16" else torch.float32
    ps, gs, ms, _ = make([(8,)], dt, torch.float32, False)
    with pytest.raises(RuntimeError, match=r"params\[0\]: expected bfloat16 with stochastic_rounding"):
        fastnorm.lion_step_(ps, gs, ms, lr=1e-3, stochastic_rounding=True)


def test_philox_known_answers_python():
    assert ref.philox4x32_10([0, 0, 0, 0], [0, 0]) == (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)
    m = 0xFFFFFFFF
    assert ref.philox4x32_10([m, m, m, m], [m, m]) == (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)


# ---- 11. layout ------------------------------------------------------------------------------------------------
def test_channels_last_param_with_contiguous_grad_is_copied():
    p = torch.randn(2, 6, 3, 5).to(memory_format=torch.channels_last)
    g = torch.randn(2, 6, 3, 5)  # contiguous: takes the copy path
    m = torch.zeros_like(p)
    expect = ref.lion_step([p], [g], [m], lr=1e-3, weight_decay=0.1, precision="exact")
    fastnorm.lion_step_([p], [g], [m], lr=1e-3, weight_decay=0.1)
    assert_matches([p], [m], None, expect)
    # An expanded (non-dense) grad is copied too.
    p2, m2 = torch.randn(4, 6), torch.zeros(4, 6)
    g2 = torch.randn(1, 6).expand(4, 6)
    expect = ref.lion_step([p2], [g2], [m2], lr=1e-3, precision="exact")
    fastnorm.lion_step_([p2], [g2], [m2], lr=1e-3)
    assert_matches([p2], [m2], None, expect)


# ---- 12. errors ---------------------------------------------------------------------------------------------------
def _errors():
    f, b = torch.float32, torch.bfloat16
    P = lambda *s, dt=f: torch.randn(*s, dtype=dt)  # noqa: E731
    cases = [
        ("lengths", lambda: fastnorm.lion_step_([P(3)], [], [P(3)], lr=1e-3), r"expected equal lengths, got 1, 0, 1"),
        ("grad dtype", lambda: fastnorm.lion_step_([P(3)], [P(3, dt=torch.float64)], [P(3)], lr=1e-3),
         r"grads\[0\]: expected dtype float32"),
        ("state dtype", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3, dt=b)], lr=1e-3), r"exp_avgs\[0\]: expected dtype"),
        ("fp64 state", lambda: fastnorm.lion_step_([P(3, dt=torch.float64)], [P(3, dt=torch.float64)], [P(3)], lr=1e-3),
         r"exp_avgs\[0\]: expected dtype float64, got float32"),
        ("int param", lambda: fastnorm.lion_step_([torch.ones(3, dtype=torch.int32)], [torch.ones(3, dtype=torch.int32)],
                                                  [P(3)], lr=1e-3), r"params\[0\]: expected float32"),
        ("complex", lambda: fastnorm.lion_step_([torch.randn(3, dtype=torch.complex64)], [torch.randn(3, dtype=torch.complex64)],
                                                [torch.randn(3, dtype=torch.complex64)], lr=1e-3), r"view_as_real"),
        ("shape", lambda: fastnorm.lion_step_([P(3)], [P(4)], [P(3)], lr=1e-3), r"grads\[0\]: expected shape \[3\]"),
        ("state strides", lambda: fastnorm.lion_step_([P(3, 4)], [P(3, 4)], [P(4, 3).t()], lr=1e-3),
         r"exp_avgs\[0\]: expected the param's strides \[4, 1\], got \[1, 3\]"),
        ("non-dense", lambda: fastnorm.lion_step_([P(3, 8)[:, ::2]], [P(3, 4)], [P(3, 4)], lr=1e-3),
         r"params\[0\]: expected a dense, non-overlapping tensor"),
        ("overlap", lambda: (lambda x: fastnorm.lion_step_([x[:4]], [P(4)], [x[2:6]], lr=1e-3))(P(8)),
         r"overlap"),
        ("lr", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=-1.0), r"lr: expected a finite value >= 0"),
        ("lr tensor", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=torch.tensor(-1.0)), r"lr"),
        ("lr tensor size", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=torch.ones(2)),
         r"lr_tensor: expected one element, got 2"),
        ("beta1", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3, betas=(1.0, 0.9)), r"beta1: expected a value in \[0, 1\)"),
        ("beta2", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3, betas=(0.9, -0.1)), r"beta2"),
        ("weight_decay", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3, weight_decay=-1.0), r"weight_decay"),
        ("decay_mode", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3, decay_mode="l2"), r"decay_mode"),
        ("decay_ref_lr", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3, decay_mode="decoupled"),
         r"decay_ref_lr"),
        ("cautious_min_frac", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3, cautious_min_frac=0.0),
         r"cautious_min_frac"),
        ("sr_seed", lambda: fastnorm.lion_step_([P(3, dt=b)], [P(3, dt=b)], [P(3)], lr=1e-3, sr_seed=-1), r"sr_seed"),
        ("nan_policy", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3, nan_policy="ignore"), r"nan_policy"),
        ("grad_scale dtype", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3,
                                                         grad_scale=torch.tensor(2.0, dtype=torch.float64)),
         r"grad_scale: expected dtype float32"),
        ("found_inf size", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3, found_inf=torch.zeros(2)),
         r"found_inf: expected one element"),
        ("sr_step dtype", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], lr=1e-3, sr_step=torch.tensor(1.0)),
         r"sr_step: expected dtype int64"),
        ("master dtype", lambda: fastnorm.lion_step_([P(3, dt=b)], [P(3, dt=b)], [P(3)], master_params=[P(3, dt=b)],
                                                     lr=1e-3), r"master_params\[0\]: expected dtype float32"),
        ("master fp32 param", lambda: fastnorm.lion_step_([P(3)], [P(3)], [P(3)], master_params=[P(3)], lr=1e-3),
         r"params\[0\]: expected float16 or bfloat16 with master_params"),
        ("sparse", lambda: fastnorm.lion_step_([P(3).to_sparse()], [P(3).to_sparse()], [P(3).to_sparse()], lr=1e-3),
         r"sparse|layout|Sparse"),
    ]
    return cases


@pytest.mark.parametrize("name,fn,match", _errors(), ids=[c[0] for c in _errors()])
def test_errors(name, fn, match):
    with pytest.raises((RuntimeError, ValueError, TypeError, NotImplementedError), match=match) as e:
        fn()
    if name not in ("decay_mode", "decay_ref_lr", "nan_policy", "sparse"):
        assert "fastnorm.lion_step_" in str(e.value)


def test_requires_grad_under_grad_mode_is_refused():
    p = torch.randn(4, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"torch.no_grad\(\)"):
        torch.ops.fastnorm.lion_step_([p], [torch.randn(4)], [torch.zeros(4)], 1e-3, 0.9, 0.99, 0.0)
    fastnorm.lion_step_([p], [torch.randn(4)], [torch.zeros(4)], lr=1e-3)  # the wrapper runs under no_grad


def test_empty_lists_and_empty_tensors():
    fastnorm.lion_step_([], [], [], lr=1e-3)
    p, g, m = torch.empty(0, 3), torch.empty(0, 3), torch.empty(0, 3)
    fastnorm.lion_step_([p], [g], [m], lr=1e-3)


def test_compile_fullgraph_no_param_sized_copy():
    ps, gs, ms, _ = make([(1000,), (37,)], torch.float32, torch.float32, False, seed=9)
    a = clone_all(ps, ms)
    lr = torch.tensor(1e-3)

    def f(ps, gs, ms, lr):
        fastnorm.lion_step_(ps, gs, ms, lr=lr, weight_decay=0.1)

    torch.compile(f, fullgraph=True)(ps, gs, ms, lr)
    f(a[0], gs, a[1], lr)
    assert all(bits_equal(x, y) for x, y in zip(ps + ms, a[0] + a[1]))


# ---- 18. memory --------------------------------------------------------------------------------------------------
def _vm_hwm_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_peak_memory_growth_under_one_percent():
    n_t, numel = 200, 250_000
    ps = [torch.randn(numel) for _ in range(n_t)]
    gs = [torch.randn(numel) for _ in range(n_t)]
    ms = [torch.zeros(numel) for _ in range(n_t)]
    fastnorm.lion_step_(ps, gs, ms, lr=1e-4, weight_decay=0.1)  # warm-up: touches everything
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pytest.skip("cannot reset VmHWM here")
    base = _vm_hwm_kib()
    fastnorm.lion_step_(ps, gs, ms, lr=1e-4, weight_decay=0.1)
    grew = (_vm_hwm_kib() - base) * 1024
    assert grew <= 0.01 * n_t * numel * 4, f"peak memory grew by {grew} bytes"


# ---- CUDA (skipped without a GPU) --------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("cfg", list(CONFIGS))
@pytest.mark.parametrize("numel", [1, 7, 1023, 32769, 300000])
@pytest.mark.parametrize("extras", ["plain", "cautious", "sr_scale"])
def test_cuda_matches_cpu_bitwise(cfg, numel, extras):
    pdt, sdt, master = CONFIGS[cfg]
    poison_cuda_allocator()
    ps, gs, ms, ws = make([(numel,), (5, 3), (numel + 1,)], pdt, sdt, master, seed=numel)
    kw = dict(lr=1e-3, weight_decay=0.1)
    if extras == "cautious":
        kw["cautious"] = True
    if extras == "sr_scale":
        kw.update(grad_scale=torch.tensor(4.0), found_inf=torch.tensor(0.0), sr_step=torch.tensor(11), sr_seed=99,
                  stochastic_rounding=(pdt == torch.bfloat16 and not master))
    dev = lambda l: None if l is None else [t.cuda() for t in l]  # noqa: E731
    cps, cgs, cms, cws = dev(ps), dev(gs), dev(ms), dev(ws)
    ckw = {k: (v.cuda() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    fastnorm.lion_step_(ps, gs, ms, master_params=ws, **kw)
    fastnorm.lion_step_(cps, cgs, cms, master_params=cws, **ckw)
    for a, b in zip(ps + ms + (ws or []), cps + cms + (cws or [])):
        assert bits_equal(a, b.cpu())


@pytest.mark.cuda
def test_cuda_unaligned_and_tensor_lr_sync_free():
    p = torch.randn(100001, device="cuda")[1:]
    g = torch.randn(100001, device="cuda")[1:]
    m = torch.zeros(100001, device="cuda")[1:]
    pc, gc, mc = p.cpu(), g.cpu(), m.cpu()
    lr = torch.tensor(1e-3, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        fastnorm.lion_step_([p], [g], [m], lr=lr, weight_decay=0.1, grad_scale=torch.tensor(2.0, device="cuda"),
                            found_inf=torch.tensor(0.0, device="cuda"))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    fastnorm.lion_step_([pc], [gc], [mc], lr=1e-3, weight_decay=0.1, grad_scale=torch.tensor(2.0),
                        found_inf=torch.tensor(0.0))
    assert bits_equal(p.cpu(), pc) and bits_equal(m.cpu(), mc)


@pytest.mark.cuda
def test_cuda_launch_count():
    ps = [torch.randn(1024, device="cuda") for _ in range(1000)]
    gs = [torch.randn(1024, device="cuda") for _ in range(1000)]
    ms = [torch.zeros(1024, device="cuda") for _ in range(1000)]
    fastnorm.lion_step_(ps, gs, ms, lr=1e-3)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fastnorm.lion_step_(ps, gs, ms, lr=1e-3)
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert 1 <= len(kernels) <= 3, [e.name for e in kernels]


@pytest.mark.cuda
@pytest.mark.large
def test_cuda_past_2_31_elements():
    n = (1 << 31) + 17
    if torch.cuda.mem_get_info()[0] < 20 * (1 << 30):
        pytest.skip("needs 20 GB free")
    p = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    g = torch.ones(n, dtype=torch.bfloat16, device="cuda")
    m = torch.zeros(n, dtype=torch.bfloat16, device="cuda")
    g[-3:] = -1
    fastnorm.lion_step_([p], [g], [m], lr=2.0 ** -4)
    assert p[-1].item() == 1 + 2.0 ** -4 and p[-4].item() == 1 - 2.0 ** -4
    assert m[-1].item() != 0
